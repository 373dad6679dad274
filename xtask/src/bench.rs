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
    /// Run every point of an experiment file (configs/experiments/*.toml).
    #[arg(long)]
    pub(crate) experiment: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
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

/// Workload flags shared by `bench` and `loadgen` (names follow `vllm bench serve`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkloadArgs {
    /// shared-prefix (default), multi-turn, random.
    #[arg(long)]
    pub(crate) workload: Option<String>,
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
    /// SLOs for goodput, e.g. "ttft:300 tpot:50" (milliseconds).
    #[arg(long)]
    pub(crate) goodput: Option<String>,
    /// Exit non-zero when more than this fraction of the requests failed (0: any failure).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) max_failed_fraction: f64,
}

impl WorkloadArgs {
    pub(crate) fn apply(self, opts: &mut lab::run::BenchOptions) {
        opts.workload = self.workload;
        opts.prompt_len = self.prompt_len;
        opts.gen_len = self.gen_len;
        opts.num_requests = self.num_requests;
        opts.request_rate = self.request_rate;
        opts.burstiness = self.burstiness;
        opts.max_concurrency = self.max_concurrency;
        opts.seed = self.seed;
        opts.label = self.label;
        opts.out = self.out;
        opts.goodput = self.goodput;
    }
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut opts = lab::run::BenchOptions::new(crate::workspace_root(), args.tier.parse()?);
    opts.engine = args.engine.parse()?;
    opts.model = args.model;
    opts.experiment = args.experiment;
    let max_failed_fraction = args.workload.max_failed_fraction;
    args.workload.apply(&mut opts);
    opts.url = args.url;
    opts.image = args.image;
    opts.gpu = args.gpu;
    opts.gpus = args.gpus.parse()?;
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
    check_failures(&reports, max_failed_fraction)
}

/// Unlike `vllm bench serve`, a run where requests failed never looks like a success: the exit
/// code is non-zero when the failed fraction of any run exceeds `max_failed_fraction`.
pub(crate) fn check_failures(
    reports: &[lab::run::RunReport],
    max_failed_fraction: f64,
) -> anyhow::Result<()> {
    for report in reports {
        let s = &report.summary;
        let sent = s.completed + s.failed;
        let fraction = if sent == 0 { 1.0 } else { s.failed as f64 / sent as f64 };
        if sent == 0 || fraction > max_failed_fraction {
            anyhow::bail!(
                "{}: {} of {} requests failed (allowed fraction {}); records are in {}",
                report.dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                s.failed,
                sent,
                max_failed_fraction,
                report.dir.join("requests.jsonl").display()
            );
        }
    }
    Ok(())
}
