//! `cargo xtask bench`: one tiered run (or an experiment matrix) → a result directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use scaleout::follow;

/// Flags of `cargo xtask bench` (names follow `vllm bench serve` where they overlap).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// KV tier: baseline, cpu, disk, redis (alias scalability). A comma-separated list
    /// (`baseline,cpu,disk`) runs the same requests on each tier into one result root, with one
    /// report that compares them.
    #[arg(long, default_value = "disk")]
    pub(crate) tier: String,
    /// auto (vllm-docker with an NVIDIA GPU and docker/podman, else emulated), emulated,
    /// vllm-docker, docker, vllm, llamacpp, external.
    #[arg(long, default_value = "auto")]
    pub(crate) engine: String,
    /// The model to serve and request (configs/models.toml names the emulator's); default: the
    /// lab's default model (llamacpp: the tiny GGUF).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Run every point of an experiment file (configs/experiments/*.toml).
    #[arg(long)]
    pub(crate) experiment: Option<PathBuf>,
    /// The workload's flags (names follow `vllm bench serve`).
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
    /// The engine's URL (--engine external).
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Container image (--engine docker needs one; --engine vllm-docker defaults to the lab's
    /// kvlab/vllm-lmcache:latest, vLLM + LMCache pinned, built by `cargo xtask images vllm-lmcache`).
    #[arg(long)]
    pub(crate) image: Option<String>,
    /// GPU type for the emulator's cost model (configs/gpus.toml: H100, H200, A100-80G, L40S, L4).
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
    /// The Redis server of the redis tier (redis://HOST:PORT); each vLLM run gets a database of
    /// its own.
    #[arg(long, env = "KVLAB_REDIS_URL")]
    pub(crate) redis_url: Option<String>,
    /// GGUF model for --engine llamacpp.
    #[arg(long, env = "KVLAB_LLAMACPP_MODEL")]
    pub(crate) model_path: Option<PathBuf>,
    /// Python with xllamacpp for --engine llamacpp (default .venv/bin/python).
    #[arg(long, env = "KVLAB_PYTHON")]
    pub(crate) python: Option<PathBuf>,
    /// Python with vLLM and LMCache for --engine vllm (default: the lab's venv .kvlab/vllm-venv,
    /// made by `cargo xtask ci`, else `vllm` on PATH).
    #[arg(long, env = "KVLAB_VLLM_PYTHON")]
    pub(crate) vllm_python: Option<PathBuf>,
    /// How --engine vllm attaches LMCache: mp (LMCache's server beside vLLM, LMCacheMPConnector),
    /// in-process (LMCacheConnectorV1 with the tier's YAML), auto (mp without an NVIDIA GPU,
    /// in-process with one).
    #[arg(long, default_value = "auto")]
    pub(crate) lmcache_mode: String,
    /// The engine's GPU KV cache in blocks, on every tier (vLLM's --num-gpu-blocks-override, the
    /// emulator's num_gpu_blocks); default: what fits (vLLM's CPU build with the lab's tiny
    /// model: 40 blocks of 128 tokens, so that reuse outgrows it).
    #[arg(long)]
    pub(crate) gpu_blocks: Option<u64>,
    /// The emulated engine's KV block size in tokens (default 16, vLLM's on CUDA; vLLM's CPU build
    /// uses 128), to emulate the cache of a given vLLM.
    #[arg(long)]
    pub(crate) block_size: Option<u32>,
    /// Seconds to wait for the engine to become ready.
    #[arg(long, default_value_t = 600)]
    pub(crate) ready_timeout: u64,
    /// Boxed: the scheduler flags would make every subcommand as large as `bench`.
    #[command(flatten)]
    pub(crate) scheduler: Box<SchedulerArgs>,
}

/// Where an experiment runs: here, one point after another (`local`), or as a Slurm job array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scheduler {
    Local,
    Slurm,
    /// Write a Kubernetes Indexed Job for the plan (`--emit DIR`); nothing is run.
    K8s,
}

/// Flags of `--scheduler slurm` (each wins over the experiment's `[slurm]` table).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SchedulerArgs {
    /// local runs the points here, one after another; slurm submits them as one job array.
    #[arg(long, value_enum, default_value = "local")]
    pub(crate) scheduler: Scheduler,
    /// Submit, print the job id and return without waiting.
    #[arg(long)]
    pub(crate) detach: bool,
    /// Watch a submitted Slurm run again (its result root).
    #[arg(long, value_name = "ROOT", conflicts_with_all = ["resume", "experiment"])]
    pub(crate) attach: Option<PathBuf>,
    /// Submit again only the points of ROOT that are missing or failed.
    #[arg(long, value_name = "ROOT", conflicts_with = "experiment")]
    pub(crate) resume: Option<PathBuf>,
    /// On Ctrl-C, cancel the run's jobs with scancel without asking.
    #[arg(long)]
    pub(crate) cancel_on_interrupt: bool,
    /// Slurm partition to submit to (sbatch --partition).
    #[arg(long)]
    pub(crate) partition: Option<String>,
    /// Slurm account to charge (sbatch --account).
    #[arg(long)]
    pub(crate) account: Option<String>,
    /// Slurm quality of service (sbatch --qos).
    #[arg(long)]
    pub(crate) qos: Option<String>,
    /// At most this many array tasks at once (`--array=...%N`).
    #[arg(long)]
    pub(crate) max_parallel: Option<u32>,
    /// Pack this many points into one array task (for points of a few seconds).
    #[arg(long)]
    pub(crate) points_per_task: Option<u32>,
    /// CPUs of one array task (sbatch --cpus-per-task).
    #[arg(long)]
    pub(crate) cpus_per_task: Option<u32>,
    /// Memory per task in Slurm's syntax (16G).
    #[arg(long)]
    pub(crate) mem: Option<String>,
    /// GPUs of one node (default: from sinfo's gres).
    #[arg(long)]
    pub(crate) gpus_per_node: Option<u32>,
    /// --scheduler k8s: write the result root (plan, runner) and job.yaml under DIR.
    #[arg(long, value_name = "DIR")]
    pub(crate) emit: Option<PathBuf>,
    /// --scheduler k8s: the pod's image (holds the engines).
    #[arg(long, default_value = "kvlab-lab:latest")]
    pub(crate) pod_image: String,
    /// --scheduler k8s: the ReadWriteMany PersistentVolumeClaim that holds the result root.
    #[arg(long, default_value = "kvlab-results")]
    pub(crate) results_claim: String,
    /// --scheduler k8s: where the claim is mounted in the pod.
    #[arg(long, default_value = "/results")]
    pub(crate) mount_path: String,
    /// Per-point runner of an array task: the result root of the plan.
    #[arg(long, hide = true, requires = "index")]
    pub(crate) root: Option<PathBuf>,
    /// Per-point runner of an array task: the point's index in plan.json.
    #[arg(long, hide = true, requires = "root")]
    pub(crate) index: Option<usize>,
}

/// Workload flags shared by `bench` and `loadgen` (names follow `vllm bench serve`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkloadArgs {
    /// shared-prefix (default), multi-turn, random.
    #[arg(long)]
    pub(crate) workload: Option<String>,
    /// Prompt length in tokens (default: the workload's).
    #[arg(long)]
    pub(crate) prompt_len: Option<u32>,
    /// Output tokens per request (default: the workload's).
    #[arg(long)]
    pub(crate) gen_len: Option<u32>,
    /// Requests to send (default: the workload's).
    #[arg(long)]
    pub(crate) num_requests: Option<u32>,
    /// Requests per second; `inf` sends all at once.
    #[arg(long)]
    pub(crate) request_rate: Option<f64>,
    /// Burstiness of the arrivals (gamma shape; 1 is Poisson, below 1 burstier).
    #[arg(long)]
    pub(crate) burstiness: Option<f64>,
    /// At most this many requests in flight; the wait for a slot is reported as client queue time.
    #[arg(long)]
    pub(crate) max_concurrency: Option<u32>,
    /// Seed of the workload and the arrivals: the same seed, the same requests.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// A label for the result directory's name and the report.
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
    /// The served model's vocabulary size: prompt token ids are drawn below it (default: the
    /// registry model's, where the model is one of configs/models.toml, else ids 1000..30000).
    #[arg(long, value_name = "N")]
    pub(crate) vocab_size: Option<u32>,
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
        opts.vocab_size = self.vocab_size;
    }
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let sched = (*args.scheduler).clone();
    if let (Some(root), Some(index)) = (&sched.root, sched.index) {
        return rt
            .block_on(scaleout::slurm::run_planned_point(root, index, scaleout::slurm::terminated()))
            .with_context(|| format!("point {index} of {}", root.join("plan.json").display()));
    }
    let watch =
        scaleout::slurm::WatchConfig { cancel_on_interrupt: sched.cancel_on_interrupt, ..Default::default() };
    if let Some(root) = &sched.attach {
        return Ok(rt.block_on(follow::attach(root, &watch))?);
    }
    if let Some(root) = &sched.resume {
        let submitted = scaleout::slurm::resume(root)?;
        return Ok(rt.block_on(follow::follow_resumed(&submitted, sched.detach, &watch))?);
    }
    if sched.scheduler != Scheduler::Local {
        let max_failed_fraction = args.workload.max_failed_fraction;
        let opts = options(args)?;
        let cfg = scaleout::slurm::SubmitConfig {
            flags: schema::config::SlurmSettings {
                partition: sched.partition.clone(),
                account: sched.account.clone(),
                qos: sched.qos.clone(),
                cpus_per_task: sched.cpus_per_task,
                mem: sched.mem.clone(),
                max_parallel: sched.max_parallel,
                points_per_task: sched.points_per_task,
                gpus_per_node: sched.gpus_per_node,
                time_margin_s: None,
            },
            runner: scaleout::slurm::Runner {
                exe: std::env::current_exe()
                    .context("locating this program to copy it into the result root")?,
                args: vec!["bench".to_owned()],
            },
            max_failed_fraction,
        };
        if sched.scheduler == Scheduler::K8s {
            let emit = sched.emit.clone().context("--scheduler k8s needs --emit DIR")?;
            let pod = scaleout::k8s::PodSettings {
                image: sched.pod_image.clone(),
                results_claim: sched.results_claim.clone(),
                mount_path: sched.mount_path.clone(),
            };
            scaleout::k8s::emit(opts, &cfg, &pod, &emit)?;
            return Ok(());
        }
        let submitted = scaleout::slurm::submit(&opts, &cfg)?;
        return Ok(rt.block_on(follow::follow(&submitted, sched.detach, &watch))?);
    }
    let max_failed_fraction = args.workload.max_failed_fraction;
    let opts = options(args)?;
    // What a killed lab left behind (containers, engine processes) goes first.
    crate::clean::reap()?;
    let reports = rt.block_on(lab::run::bench(&opts))?;
    if reports.len() > 1 {
        println!(
            "{} runs; index.json in {}",
            reports.len(),
            reports[0].dir.parent().unwrap_or(Path::new(".")).display()
        );
    }
    Ok(lab::verdict::check_failures(&reports, max_failed_fraction)?)
}

pub(crate) fn options(args: BenchArgs) -> anyhow::Result<lab::run::BenchOptions> {
    let tiers = args
        .tier
        .split(',')
        .map(|t| t.trim().parse::<schema::config::Tier>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--tier {}", args.tier))?;
    let mut opts = lab::run::BenchOptions::new(crate::workspace_root(), tiers[0]);
    if tiers.len() > 1 {
        anyhow::ensure!(
            args.experiment.is_none(),
            "--tier {}: a list of tiers compares them without an experiment file; an experiment \
             lists its tiers in matrix.tiers",
            args.tier
        );
        opts.tiers = tiers;
    }
    opts.engine = args.engine.parse()?;
    opts.model = args.model;
    opts.experiment = args.experiment;
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
    opts.vllm_python = args.vllm_python.or(opts.vllm_python);
    opts.lmcache_mode = args.lmcache_mode.parse()?;
    opts.gpu_blocks = args.gpu_blocks;
    opts.block_size = args.block_size;
    opts.ready_timeout = Duration::from_secs(args.ready_timeout);
    Ok(opts)
}
