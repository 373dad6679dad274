//! `cargo xtask loadgen --url URL`: the bundled load generator alone, against any
//! OpenAI-compatible server. The same lifecycle as `bench --engine external`: the result
//! directory, the samplers (the engine's `/metrics` included) and the summary are identical.

use std::time::Duration;

use anyhow::Context as _;

use crate::bench::WorkloadArgs;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LoadgenArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8000 (with or without /v1).
    #[arg(long)]
    url: String,
    /// Model name to request (default: the first one /v1/models lists).
    #[arg(long)]
    model: Option<String>,
    /// The KV tier the server was started with; only recorded (baseline, cpu, disk, redis).
    #[arg(long, default_value = "baseline")]
    tier: String,
    /// The workload's flags (names follow `vllm bench serve`).
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Seconds to wait for the server's /health and /v1/models.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
}

pub(crate) fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let max_failed_fraction = args.workload.max_failed_fraction;
    let opts = options(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let reports = rt.block_on(lab::run::bench(&opts))?;
    Ok(lab::verdict::check_failures(&reports, max_failed_fraction)?)
}

/// The lab's options of a `loadgen` run: an external engine at `--url`.
fn options(args: LoadgenArgs) -> anyhow::Result<lab::run::BenchOptions> {
    let mut opts = lab::run::BenchOptions::new(crate::workspace_root(), args.tier.parse()?);
    opts.engine = engines::EngineKind::External;
    opts.url = Some(args.url);
    opts.model = args.model;
    opts.ready_timeout = Duration::from_secs(args.ready_timeout);
    args.workload.apply(&mut opts);
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: super::LoadgenArgs,
    }

    fn options(argv: &[&str]) -> lab::run::BenchOptions {
        let cmd = Cmd::try_parse_from(std::iter::once("loadgen").chain(argv.iter().copied())).unwrap();
        super::options(cmd.args).unwrap()
    }

    /// `--vocab-size` reaches the lab's options; without it the lab picks the range.
    #[test]
    fn vocab_size_reaches_the_lab() {
        let opts = options(&["--url", "http://127.0.0.1:8000", "--vocab-size", "8192"]);
        assert_eq!(opts.vocab_size, Some(8192));
        assert_eq!(opts.engine, engines::EngineKind::External);
        assert_eq!(options(&["--url", "http://127.0.0.1:8000"]).vocab_size, None);
        let err = Cmd::try_parse_from(["loadgen", "--url", "u", "--vocab-size", "8k"]).err().unwrap();
        assert!(err.to_string().contains("--vocab-size"), "{err}");
    }
}
