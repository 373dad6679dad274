//! `cargo xtask bench`: one tiered run (or an experiment matrix) → a result directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// Flags of `cargo xtask bench` (names follow `vllm bench serve` where they overlap).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// KV tier: baseline, cpu, disk, redis (alias scalability).
    #[arg(long, default_value = "disk")]
    pub(crate) tier: String,
    /// auto (vllm-docker with an NVIDIA GPU and docker/podman, else emulated), emulated,
    /// vllm-docker, docker, vllm, llamacpp, external.
    #[arg(long, default_value = "auto")]
    pub(crate) engine: String,
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// shared-prefix (default), multi-turn, random.
    #[arg(long, conflicts_with = "experiment")]
    pub(crate) workload: Option<String>,
    /// Run every point of an experiment file (configs/experiments/*.toml).
    #[arg(long)]
    pub(crate) experiment: Option<PathBuf>,
    #[arg(long)]
    pub(crate) prompt_len: Option<u32>,
    #[arg(long)]
    pub(crate) gen_len: Option<u32>,
    #[arg(long)]
    pub(crate) num_requests: Option<u32>,
    /// Requests per second; `inf` sends all at once.
    #[arg(long)]
    pub(crate) request_rate: Option<f64>,
    #[arg(long)]
    pub(crate) burstiness: Option<f64>,
    #[arg(long)]
    pub(crate) max_concurrency: Option<u32>,
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Parent directory of the result directories (default: results/).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// The engine's URL (--engine external).
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Container image (--engine docker; overrides the pinned vLLM + LMCache image).
    #[arg(long)]
    pub(crate) image: Option<String>,
    /// GPU type for the emulator's cost model (H100, H200, A100-80GB, L40S, L4).
    #[arg(long)]
    pub(crate) gpu: Option<String>,
    /// GPUs for the engine: a count (2) or a device list (0,2); default all.
    #[arg(long, default_value = "all")]
    pub(crate) gpus: String,
    /// SLOs for goodput, e.g. "ttft:300 tpot:50" (milliseconds).
    #[arg(long)]
    pub(crate) goodput: Option<String>,
    /// Fail instead of running without an NVIDIA GPU.
    #[arg(long)]
    pub(crate) require_gpu: bool,
    /// Port on 127.0.0.1 for the engine (default: a free one).
    #[arg(long)]
    pub(crate) port: Option<u16>,
    #[arg(long, env = "KVLAB_REDIS_URL")]
    pub(crate) redis_url: Option<String>,
    /// GGUF model for --engine llamacpp.
    #[arg(long, env = "KVLAB_LLAMACPP_MODEL")]
    pub(crate) model_path: Option<PathBuf>,
    /// Python with xllamacpp for --engine llamacpp (default .venv/bin/python).
    #[arg(long, env = "KVLAB_PYTHON")]
    pub(crate) python: Option<PathBuf>,
    /// Seconds to wait for the engine to become ready.
    #[arg(long, default_value_t = 600)]
    pub(crate) ready_timeout: u64,
}


pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut opts = lab::run::BenchOptions::new(crate::workspace_root(), args.tier.parse()?);
    opts.engine = args.engine.parse()?;
    opts.model = args.model;
    opts.workload = args.workload;
    opts.experiment = args.experiment;
    opts.prompt_len = args.prompt_len;
    opts.gen_len = args.gen_len;
    opts.num_requests = args.num_requests;
    opts.request_rate = args.request_rate;
    opts.burstiness = args.burstiness;
    opts.max_concurrency = args.max_concurrency;
    opts.seed = args.seed;
    opts.label = args.label;
    opts.out = args.out;
    opts.url = args.url;
    opts.image = args.image;
    opts.gpu = args.gpu;
    opts.gpus = args.gpus.parse()?;
    opts.goodput = args.goodput;
    opts.require_gpu = args.require_gpu;
    opts.port = args.port;
    opts.redis_url = args.redis_url.or(opts.redis_url);
    opts.model_path = args.model_path.or(opts.model_path);
    opts.python = args.python.or(opts.python);
    opts.ready_timeout = Duration::from_secs(args.ready_timeout);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let reports = rt.block_on(lab::run::bench(&opts))?;
    if reports.len() > 1 {
        println!(
            "{} runs; index.json in {}",
            reports.len(),
            reports[0].dir.parent().unwrap_or(Path::new(".")).display()
        );
    }
    Ok(())
}
