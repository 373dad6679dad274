//! `cargo xtask serve`: the emulated engine alone, until Ctrl-C.

use anyhow::Context as _;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServeArgs {
    /// KV tier: baseline, cpu, disk, redis (alias scalability).
    #[arg(long, default_value = "disk")]
    pub(crate) tier: String,
    /// Model from the registry (configs/models.toml) whose cost the emulator models.
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// GPU type for the cost model (H100, H200, A100-80GB, L40S, L4).
    #[arg(long)]
    pub(crate) gpu: Option<String>,
    /// Port on 127.0.0.1 (default: a free one).
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// The Redis server of the redis tier (redis://HOST:PORT).
    #[arg(long, env = "KVLAB_REDIS_URL")]
    pub(crate) redis_url: Option<String>,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let opts = lab::run::ServeOptions {
        root: crate::workspace_root(),
        tier: args.tier.parse()?,
        model: args.model,
        gpu: args.gpu,
        port: args.port,
        redis_url: args.redis_url,
        disk_dir: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    rt.block_on(lab::run::serve_emulated(
        &opts,
        |url| println!("emulated engine (EMULATED numbers) listening on {url}; Ctrl-C stops it"),
        std::future::pending(),
    ))?;
    Ok(())
}
