//! `cargo xtask soak`: the emulated engine and the load generator on loopback, as two processes,
//! under many concurrent streams for minutes, their memory and open files watched. The harness
//! and its verdict are the `soak` crate's; this module turns the flags into its config and starts
//! it, as the parent (`serve --tier baseline` and this command in client mode as the programs)
//! or, with `--client-url`, as the client.

use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SoakArgs {
    /// Concurrent streams (requests in flight).
    #[arg(long, default_value_t = 2000)]
    streams: u32,
    /// Length of the whole soak, warm-up included.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds before the first sample (the processes reach their working size).
    #[arg(long, default_value_t = 60)]
    warmup_secs: u64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 5)]
    interval_secs: u64,
    /// Allowed growth of resident memory and of open file descriptors, in percent.
    #[arg(long, default_value_t = 10.0)]
    max_growth_pct: f64,
    /// Requests per round of the load generator (default: 5 per stream). Each round opens its
    /// own connections; its records are tallied and dropped at its end.
    #[arg(long)]
    round_requests: Option<u64>,
    /// Prompt length of each request, in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_len: u32,
    /// Output tokens of each request.
    #[arg(long, default_value_t = 16)]
    gen_len: u32,
    /// Where soak.json and samples.csv go (default results/soak_<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Client mode (started by the soak itself): the engine's URL.
    #[arg(long, hide = true)]
    client_url: Option<String>,
    /// Test only: the load generator leaks memory and descriptors at a steady rate, so that a
    /// test sees the verdict fail on a leak.
    #[arg(long, hide = true)]
    plant_leak: bool,
}

pub(crate) fn run(args: SoakArgs) -> anyhow::Result<()> {
    let out = match &args.out {
        Some(o) => o.clone(),
        None if args.client_url.is_some() => anyhow::bail!("client mode needs --out"),
        None => crate::workspace_root().join("results").join(format!("soak_{}", loadgen::timestamp())),
    };
    let cfg = soak::SoakConfig {
        streams: args.streams,
        minutes: args.minutes,
        warmup_secs: args.warmup_secs,
        interval_secs: args.interval_secs,
        max_growth_pct: args.max_growth_pct,
        round_requests: args.round_requests,
        prompt_len: args.prompt_len,
        gen_len: args.gen_len,
        out,
        plant_leak: args.plant_leak,
    };
    match &args.client_url {
        Some(url) => soak::client(&cfg, url)?,
        None => {
            let programs = soak::Programs {
                exe: std::env::current_exe().map_err(|e| anyhow::anyhow!("locating this program: {e}"))?,
                server: ["serve", "--tier", "baseline"].map(str::to_owned).to_vec(),
                client: vec!["soak".to_owned()],
            };
            soak::parent(&cfg, &programs)?;
        }
    }
    Ok(())
}
