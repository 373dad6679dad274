//! The run lifecycle: resolve → write run.toml/env.json → start engine and samplers → drive the
//! workload → stop everything → summary, report. One result directory per run
//! (`<out>/<label>_<YYYYmmdd-HHMMSS>/`); an experiment writes one per point plus `index.json`.
//!
//! Invariants of a result directory, whatever stops the run:
//! - `requests.jsonl` is append-only, one line per finished request, flushed per record: a
//!   SIGKILL leaves every finished request and at most one torn last line, which every reader
//!   skips with a warning ([`stats::parse_json_lines`]).
//! - `run.toml`, `env.json`, `summary.json`, `requests.csv` and `index.json` are written whole or
//!   not at all ([`write_atomic`]: a temporary file, then a rename), so a full disk gives an
//!   error naming the file and never a half-written summary.
//! - SIGINT and SIGTERM ([`stop_signal`]) stop a run the same way: no new request, the engine
//!   stopped and reaped, a summary over what finished marked `"interrupted": true`.
//! - An engine process that dies mid-run is noticed within [`ENGINE_POLL`] (or when the drive
//!   ends, whichever is first): the time is recorded
//!   (`engine_exited_at_s` in `env.json` and `summary.json`), the requests in flight end as
//!   classified failures, `engine.log` stays, and the run ends in [`RunError::EngineDied`].
//! - Every duration is measured on [`Instant`] (monotonic); wall-clock time only names things.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use crate::adapters::write_atomic;
use crate::adapters::{self, WorkloadRequest};
use crate::error::{Result, RunError};
pub use crate::resolved::ResolvedRun;
use engines::secrets::Secrets;
use engines::{
    self, ContainerSettings, EmulatorSettings, EngineKind, EngineSettings, GpuSelection, HostProbe,
    LaunchSpec, LlamacppSettings, RunningEngine,
};
use schema::config::{Experiment, Point, Tier, TierConfig};
use schema::error::ConfigError;
use schema::lmcache::LmcacheConfig;

pub use engines::DEFAULT_REDIS_URL;
/// The model when none is given: a name of the model registry (`configs/models.toml`); vLLM is
/// given its Hugging Face id.
pub const DEFAULT_MODEL: &str = "llama-3-8b";
/// The model `--engine vllm` serves on a machine without an NVIDIA GPU when none is named: the
/// lab's generated tiny Llama (configs/models.toml), a local folder that `cargo xtask ci` makes.
pub const VLLM_CPU_MODEL: &str = "tiny-llama-hf";
/// vLLM's cache on the CPU build when the run gives no size: 40 blocks of 128 tokens, small
/// enough that a workload's reuse outgrows it and the offload tiers serve hits.
pub const VLLM_CPU_DEFAULT_BLOCKS: u64 = 40;
/// Tokens of one KV block on vLLM's CPU build (its default there).
pub const VLLM_CPU_BLOCK_TOKENS: u64 = 128;
/// The default workload: reuse-heavy, so offload tiers see traffic.
pub const DEFAULT_WORKLOAD: &str = "shared-prefix";
/// Version of `run.toml` and `env.json`.
pub const RUN_FORMAT_VERSION: u32 = 1;

/// Everything `bench` takes: the command-line flags. Build with [`BenchOptions::new`].
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The workspace root: `configs/`, `.env`, `.venv`, `.kvlab/` are found under it.
    pub root: PathBuf,
    pub tier: Tier,
    /// Tiers to compare (`--tier baseline,cpu,disk`): two or more run the same requests on each
    /// tier, one after another, into one result root with `index.json` and one report. Empty (or
    /// one): `tier` alone.
    pub tiers: Vec<Tier>,
    pub engine: EngineKind,
    pub model: Option<String>,
    pub workload: Option<String>,
    /// Run a whole experiment matrix instead of one run.
    pub experiment: Option<PathBuf>,
    pub prompt_len: Option<u32>,
    pub gen_len: Option<u32>,
    pub num_requests: Option<u32>,
    pub request_rate: Option<f64>,
    pub burstiness: Option<f64>,
    pub max_concurrency: Option<u32>,
    pub seed: Option<u64>,
    pub label: Option<String>,
    /// Parent of the result directories (default `<root>/results`).
    pub out: Option<PathBuf>,
    pub url: Option<String>,
    pub image: Option<String>,
    /// GPU type for the emulator's cost model (`H100`, ...).
    pub gpu: Option<String>,
    pub gpus: GpuSelection,
    /// SLOs in `vllm bench serve` form (`ttft:300 tpot:50`).
    pub goodput: Option<String>,
    /// Refuse to run without an NVIDIA GPU (so nothing is silently emulated).
    pub require_gpu: bool,
    /// The GPUs `--gpus` is checked against and `--require-gpu` needs; `None`: what NVML counts.
    pub gpu_inventory: Option<engines::GpuInventory>,
    pub port: Option<u16>,
    pub redis_url: Option<String>,
    /// llama.cpp: GGUF file and Python with xllamacpp.
    pub model_path: Option<PathBuf>,
    pub python: Option<PathBuf>,
    /// vLLM's Python (`KVLAB_VLLM_PYTHON`, else the lab's venv `.kvlab/vllm-venv` when it
    /// exists); `None`: `vllm serve` from PATH.
    pub vllm_python: Option<PathBuf>,
    /// The folder of the lab's generated model for vLLM (`KVLAB_VLLM_MODEL`, else
    /// `.kvlab/models/tiny-llama-hf`).
    pub vllm_model_dir: Option<PathBuf>,
    /// How LMCache is attached to vLLM (`--lmcache-mode`).
    pub lmcache_mode: engines::vllm::LmcacheMode,
    /// The engine's GPU KV cache in blocks (vLLM's `--num-gpu-blocks-override`, the emulator's
    /// `num_gpu_blocks`), for every tier (`--gpu-blocks`); a baseline point's `cache_sizes`
    /// sets it too.
    pub gpu_blocks: Option<u64>,
    /// The emulator's KV block size in tokens (`--block-size`), to run the cache of a given vLLM.
    pub block_size: Option<u32>,
    /// The served model's vocabulary size (`--vocab-size`): prompt token ids are drawn below it
    /// (see [`workload::Vocab::within`]), whatever the registry says of the model. `None`: the
    /// registry model's vocabulary where the lab knows it, else the default range.
    pub vocab_size: Option<u32>,
    pub ready_timeout: Duration,
    /// Show the load generator's progress bar.
    pub progress: bool,
    /// What the run is instrumented with (`cargo xtask profile`: the wrapper of the engine's
    /// command under Nsight Systems and the capture range around the workload); `None`: nothing.
    pub instruments: Option<engines::Instruments>,
}

impl BenchOptions {
    /// Defaults for everything but the root and the tier; environment variables
    /// (`KVLAB_REDIS_URL`, `KVLAB_PYTHON`, `KVLAB_LLAMACPP_MODEL`) fill what they name.
    pub fn new(root: impl Into<PathBuf>, tier: Tier) -> BenchOptions {
        let root: PathBuf = root.into();
        let lab_venv = root.join(".kvlab/vllm-venv/bin/python");
        BenchOptions {
            root,
            tier,
            tiers: Vec::new(),
            engine: EngineKind::Auto,
            model: None,
            workload: None,
            experiment: None,
            prompt_len: None,
            gen_len: None,
            num_requests: None,
            request_rate: None,
            burstiness: None,
            max_concurrency: None,
            seed: None,
            label: None,
            out: None,
            url: None,
            image: None,
            gpu: None,
            gpus: GpuSelection::All,
            goodput: None,
            require_gpu: false,
            gpu_inventory: None,
            port: None,
            redis_url: std::env::var("KVLAB_REDIS_URL").ok().filter(|v| !v.is_empty()),
            python: std::env::var_os("KVLAB_PYTHON").map(PathBuf::from),
            model_path: std::env::var_os("KVLAB_LLAMACPP_MODEL").map(PathBuf::from),
            vllm_python: std::env::var_os("KVLAB_VLLM_PYTHON")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| lab_venv.is_file().then_some(lab_venv)),
            vllm_model_dir: std::env::var_os("KVLAB_VLLM_MODEL").map(PathBuf::from),
            lmcache_mode: engines::vllm::LmcacheMode::Auto,
            gpu_blocks: None,
            block_size: None,
            vocab_size: None,
            ready_timeout: Duration::from_secs(600),
            progress: true,
            instruments: None,
        }
    }
}

/// What one finished run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub dir: PathBuf,
    pub engine: EngineKind,
    pub emulated: bool,
    pub summary: stats::Summary,
    /// The summary table as `vllm bench serve` prints it (labelled EMULATED when it is).
    pub table: String,
    /// The point's `time_limit` ended the run while requests were in flight (they are recorded
    /// as failed with class `interrupted`; `"time_limit_reached": true` in summary.json).
    pub time_limit_reached: bool,
    /// What to do about the run's failed requests, where the lab recognises why they failed
    /// (a server refusing the prompts' token ids: `--vocab-size`); printed after the table.
    pub hint: Option<String>,
}

/// Runs the bench: one run, or every point of `--experiment` (then also `index.json`).
/// Prints each summary table and the result directory. Ctrl-C interrupts it as
/// [`bench_until`] describes.
pub async fn bench(opts: &BenchOptions) -> Result<Vec<RunReport>> {
    bench_until(opts, stop_signal()).await
}

pub use engines::signals::stop_signal;

/// How often a running engine's process is checked for having exited.
pub const ENGINE_POLL: Duration = Duration::from_millis(100);
/// After the engine died: how long the requests in flight get to end (and be classified).
const CRASH_GRACE: Duration = Duration::from_secs(2);
/// After a stop: how long the load generator gets to record the requests in flight as
/// interrupted (it takes milliseconds; the bound keeps a stop within its 5 s promise).
const STOP_GRACE: Duration = Duration::from_secs(2);

/// [`bench`], interrupted when `shutdown` resolves (SIGINT or SIGTERM for the command line).
///
/// On interruption: no new request is sent, the engine is stopped and reaped, and the result
/// directory keeps every finished request in `requests.jsonl`, with `requests.csv` and a
/// `summary.json` over exactly those records (`completed + failed` = lines of
/// `requests.jsonl`) and `"interrupted": true` in `env.json`. Requests still in flight at that
/// moment end at once and are recorded as failed with class `interrupted` (their chunks so far
/// kept), so every request sent has its record. Returns [`RunError::Interrupted`] naming the
/// directory.
pub async fn bench_until(
    opts: &BenchOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Vec<RunReport>> {
    let stop = CancellationToken::new();
    let work = bench_points(opts, &stop);
    tokio::pin!(work);
    tokio::pin!(shutdown);
    tokio::select! {
        r = &mut work => r,
        () = &mut shutdown => {
            stop.cancel();
            work.await
        }
    }
}

async fn bench_points(opts: &BenchOptions, stop: &CancellationToken) -> Result<Vec<RunReport>> {
    // A flag that every point would refuse is refused once, before any point runs.
    run_vocab(opts.vocab_size, None, false)?;
    let exp = match &opts.experiment {
        Some(path) => Experiment::load(path)?,
        None if opts.tiers.len() > 1 => tier_comparison(opts)?,
        None => {
            let point = point_from_flags(opts)?;
            let report = run_point(opts, &point, None, None, stop).await?;
            return Ok(vec![report]);
        }
    };
    check_points(opts, &exp, &HostProbe::detect())?;
    let out = out_dir(opts);
    let root = out.join(format!("{}_{}", sanitize(&exp.name), timestamp()));
    std::fs::create_dir_all(&root).map_err(|e| RunError::io(&root, e))?;
    let reports = run_points(opts, &exp, &root, stop).await?;
    // One report over every point of the root: the answer (TTFT and token sources by tier)
    // first.
    let runs: std::result::Result<Vec<_>, _> =
        reports.iter().map(|r| report::RunData::load(&r.dir)).collect();
    match runs.and_then(|runs| report::write_report(&runs, &root)) {
        Ok(written) => {
            println!("{}", written.table);
            println!("report: {}", written.markdown.display());
        }
        Err(e) => eprintln!("warning: the report over {} could not be written: {e}", root.display()),
    }
    Ok(reports)
}

/// `--tier a,b,c` without an experiment file: the flags' point on each tier, in the order given
/// (same seed, so the same requests).
fn tier_comparison(opts: &BenchOptions) -> Result<Experiment> {
    let mut points = Vec::new();
    for &tier in &opts.tiers {
        let mut point = point_from_flags(opts)?;
        point.tier = tier;
        points.push(point);
    }
    Ok(Experiment::from_points("tiers", "the same requests on each tier", points))
}

/// Runs the points of `exp` one after another into `root`, keeping `index.json` current.
async fn run_points(
    opts: &BenchOptions,
    exp: &Experiment,
    root: &Path,
    stop: &CancellationToken,
) -> Result<Vec<RunReport>> {
    let root = root.to_path_buf();
    let mut reports = Vec::new();
    let mut index = Vec::new();
    for (i, point) in exp.points.iter().enumerate() {
        let mut point = point.clone();
        apply_flag_overrides(opts, &mut point);
        eprintln!("kvlab: experiment {}: point {}/{}", exp.name, i + 1, exp.points.len());
        if stop.is_cancelled() {
            return Err(RunError::Interrupted(root));
        }
        let ctx = PointCtx { experiment: &exp.name, root: &root, index: i, exact_dir: None, env_extra: None };
        let result = run_point(opts, &point, Some(ctx), exp.lmcache.as_ref(), stop).await;
        let entry = match &result {
            Ok(r) => serde_json::json!({
                "point": i, "dir": r.dir.file_name().map(|f| f.to_string_lossy().into_owned()),
                "model": point.model, "tier": point.tier, "workload": point.workload,
                "request_rate": json_rate(point.request_rate), "cache_size": point.cache_size,
                "engine": r.engine, "emulated": r.emulated, "completed": r.summary.completed,
                "failed": r.summary.failed,
            }),
            Err(e) => serde_json::json!({
                "point": i, "model": point.model, "tier": point.tier, "workload": point.workload,
                "request_rate": json_rate(point.request_rate), "cache_size": point.cache_size,
                "error": e.to_string(),
            }),
        };
        index.push(entry);
        let index_json =
            serde_json::json!({ "v": RUN_FORMAT_VERSION, "experiment": exp.name, "points": index });
        write(&root.join("index.json"), &serde_json::to_string_pretty(&index_json).unwrap_or_default())?;
        match result {
            Ok(r) => reports.push(r),
            Err(e @ RunError::Interrupted(_)) => return Err(e),
            Err(e) => eprintln!("kvlab: point {} failed: {e}", i + 1),
        }
    }
    if reports.is_empty() {
        return Err(RunError::AllPointsFailed { experiment: exp.name.clone(), root });
    }
    Ok(reports)
}

/// Before any point runs: every point's engine knows its model (the model registry for the
/// engines that need one). The error is at the model's entry in `matrix.models`.
fn check_points(opts: &BenchOptions, exp: &Experiment, probe: &HostProbe) -> Result<()> {
    if opts.model.is_some() {
        // `--model` replaces the file's models; run_point checks the flag's.
        return Ok(());
    }
    for point in &exp.points {
        let (engine, _) = probe.choose(point_engine(opts, point)?);
        if let Err(e) = resolve_model(engine, &point.model) {
            return Err(exp.model_error(&point.model, &schema::config::strip_invalid(e)).into());
        }
    }
    Ok(())
}

/// The engine a point asks for: `--engine` unless it is `auto`, then the point's `engine`.
fn point_engine(opts: &BenchOptions, point: &Point) -> Result<EngineKind> {
    match &point.engine {
        Some(e) if opts.engine == EngineKind::Auto => Ok(e.parse()?),
        _ => Ok(opts.engine),
    }
}

pub fn json_rate(r: f64) -> serde_json::Value {
    if r.is_finite() {
        serde_json::json!(r)
    } else {
        serde_json::json!("inf")
    }
}

fn point_from_flags(opts: &BenchOptions) -> Result<Point> {
    let workload = opts.workload.clone().unwrap_or_else(|| DEFAULT_WORKLOAD.to_owned());
    schema::config::check_workload(&workload).map_err(RunError::invalid)?;
    let mut point = Point {
        model: opts.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
        tier: opts.tier,
        workload,
        request_rate: 4.0,
        cache_size: None,
        gpu_blocks: None,
        num_prompts: None,
        time_limit_s: None,
        prompt_len: None,
        gen_len: None,
        burstiness: None,
        max_concurrency: None,
        seed: None,
        warmup: None,
        mock_decoding: false,
        conversation_aware_eviction: false,
        goodput: None,
        engine: None,
        gpu: None,
    };
    apply_flag_overrides(opts, &mut point);
    Ok(point)
}

/// Flags given on the command line win over the experiment file.
pub fn apply_flag_overrides(opts: &BenchOptions, p: &mut Point) {
    if let Some(m) = &opts.model {
        p.model = m.clone();
    }
    if let Some(w) = &opts.workload {
        p.workload = w.clone();
    }
    macro_rules! set {
        ($($o:ident => $f:ident),*) => { $( if let Some(v) = opts.$o.clone() { p.$f = Some(v); } )* };
    }
    set!(num_requests => num_prompts, prompt_len => prompt_len, gen_len => gen_len,
         burstiness => burstiness, max_concurrency => max_concurrency, seed => seed,
         goodput => goodput, gpu => gpu);
    if let Some(r) = opts.request_rate {
        p.request_rate = r;
    }
}

/// The label of point `index` of an experiment: `<experiment>-<index>-<tier>-<workload>`.
pub fn point_label(experiment: &str, index: usize, point: &Point) -> String {
    format!("{}-{index:03}-{}-{}", sanitize(experiment), point.tier, sanitize(&point.workload))
}

pub fn out_dir(opts: &BenchOptions) -> PathBuf {
    opts.out.clone().unwrap_or_else(|| opts.root.join("results"))
}

pub fn timestamp() -> String {
    loadgen::timestamp()
}

pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect()
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes())
}

/// What tells the lab that its engine died.
enum EngineWatch {
    /// The engine's process and its sidecars (name, pid, log): one gone or a zombie.
    Processes(Vec<(String, u32, PathBuf)>),
    /// An engine the lab did not start (`external`): `GET /health` refused twice in a row (an
    /// answer of any status, or none yet, counts as alive).
    Health(String, PathBuf),
    Nothing,
}

/// Resolves at `origin + limit` seconds with the limit; never without one.
async fn time_limit(limit: Option<f64>, origin: Instant) -> f64 {
    match limit {
        Some(s) => {
            tokio::time::sleep_until((origin + Duration::from_secs_f64(s)).into()).await;
            s
        }
        None => std::future::pending().await,
    }
}

/// Resolves with the run-clock time (seconds since `origin`) at which the engine (or one of its
/// sidecars) was seen gone, with the process's name and log; never when there is nothing to
/// watch.
async fn engine_exit(watch: EngineWatch, origin: Instant) -> (f64, String, PathBuf) {
    match watch {
        EngineWatch::Nothing => std::future::pending().await,
        EngineWatch::Processes(procs) => loop {
            if let Some((who, _, log)) =
                procs.iter().find(|(_, pid, _)| engines::orphans::process_exited(*pid))
            {
                return (origin.elapsed().as_secs_f64(), who.clone(), log.clone());
            }
            tokio::time::sleep(ENGINE_POLL).await;
        },
        EngineWatch::Health(base, log) => {
            let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(2)).build() else {
                return std::future::pending().await;
            };
            let url = format!("{}/health", base.trim_end_matches('/').trim_end_matches("/v1"));
            let mut first_refused: Option<(Instant, u32)> = None;
            loop {
                let asked = Instant::now();
                first_refused = match client.get(&url).send().await {
                    Err(e) if e.is_connect() => {
                        let (at, n) = first_refused.unwrap_or((asked, 0));
                        if n + 1 >= 2 {
                            return (at.duration_since(origin).as_secs_f64(), "external".to_owned(), log);
                        }
                        Some((at, n + 1))
                    }
                    _ => None,
                };
                tokio::time::sleep(ENGINE_POLL * 3).await;
            }
        }
    }
}

/// Resolves with the run-clock time at which the Redis at `url` stopped accepting connections
/// (twice in a row, 250 ms apart); never while it answers.
async fn store_lost(url: String, origin: Instant) -> f64 {
    let node = url.trim_start_matches("redis://").rsplit('@').next().unwrap_or_default();
    let node = node.split('/').next().unwrap_or_default().to_owned();
    let mut first_refused: Option<f64> = None;
    loop {
        let at = origin.elapsed().as_secs_f64();
        let refused = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&node))
            .await
            .map_or(true, |r| r.is_err());
        first_refused = match (refused, first_refused) {
            (true, Some(first)) => return first,
            (true, None) => Some(at),
            (false, _) => None,
        };
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A fresh directory `<parent>/<name>`, suffixed `-2`, `-3`, … if it exists.
fn fresh_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(parent).map_err(|e| RunError::io(parent, e))?;
    for i in 1.. {
        let dir = if i == 1 { parent.join(name) } else { parent.join(format!("{name}-{i}")) };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(RunError::io(&dir, e)),
        }
    }
    unreachable!("an unbounded loop returns")
}

/// Where a model runs: its name as the engine knows it and the GPUs it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ModelPlacement {
    /// The name the engine serves (a registry name resolves to its Hugging Face id for vLLM).
    pub served_name: String,
    /// The registry entry, when the registry knows the model.
    pub registry_name: Option<String>,
    pub tensor_parallel: u32,
    pub pipeline_parallel: u32,
}

impl ModelPlacement {
    /// GPUs the model needs: tensor parallel x pipeline parallel.
    pub fn gpus(&self) -> u32 {
        self.tensor_parallel * self.pipeline_parallel
    }
}

/// Resolves a model for an engine through the built-in model registry (`configs/models.toml`,
/// looked up by registry name or Hugging Face id, ignoring ASCII case, first match wins as in
/// the emulator).
///
/// - `emulated`, `vllm`, `vllm-docker`, `docker`: the registry must know the model (the error
///   lists the known ones); it gives the parallelism. vLLM and containers are given the Hugging
///   Face id; the emulator is given the name as written (it resolves it in the same registry).
/// - `llamacpp`, `external`: the model is a local GGUF file or whatever the server serves: 1 GPU,
///   no lookup.
pub fn resolve_model(engine: EngineKind, model: &str) -> schema::error::Result<ModelPlacement> {
    let unplaced = || ModelPlacement {
        served_name: model.to_owned(),
        registry_name: None,
        tensor_parallel: 1,
        pipeline_parallel: 1,
    };
    if matches!(engine, EngineKind::Llamacpp | EngineKind::External) {
        return Ok(unplaced());
    }
    let Some(spec) = registry_entry(model) else {
        let registry = costmodel::Registry::builtin();
        let known: Vec<String> =
            registry.models.iter().map(|m| format!("{} ({})", m.name, m.hf_id)).collect();
        return Err(ConfigError::Invalid(format!(
            "unknown model `{model}` for engine `{engine}`; the model registry (configs/models.toml) knows: {}",
            known.join(", ")
        )));
    };
    let served_name = match engine {
        EngineKind::Emulated | EngineKind::Auto => model.to_owned(),
        _ => spec.hf_id.clone(),
    };
    Ok(ModelPlacement {
        served_name,
        registry_name: Some(spec.name.clone()),
        tensor_parallel: spec.tensor_parallel,
        pipeline_parallel: spec.pipeline_parallel,
    })
}

/// The registry's entry for `model`, by registry name or Hugging Face id, ignoring ASCII case
/// (first match wins, as in the emulator).
fn registry_entry(model: &str) -> Option<costmodel::ModelSpec> {
    costmodel::Registry::builtin()
        .models
        .into_iter()
        .find(|m| m.name.eq_ignore_ascii_case(model) || m.hf_id.eq_ignore_ascii_case(model))
}

/// The token ids a run draws, `start..end` (`None`: the workload's default range): below
/// `--vocab-size` when it is given; else below the vocabulary of `model`, the registry's entry
/// for the model the engine serves, where it is smaller than the default range. An emulated
/// engine knows every id: only `--vocab-size` narrows its range. Both go through
/// [`workload::Vocab::within`], so that every engine, launched or external, draws the same ids
/// for the same model.
pub(crate) fn run_vocab(
    vocab_size: Option<u32>,
    model: Option<&costmodel::ModelSpec>,
    emulated: bool,
) -> Result<Option<(u32, u32)>> {
    let within = |n: u32| workload::Vocab::within(n).map(|v| (v.start, v.end));
    match vocab_size {
        Some(n) => within(n).map(Some).ok_or_else(|| {
            RunError::invalid(format!(
                "--vocab-size {n}: the model's vocabulary must have at least {} tokens",
                workload::Vocab::MIN_VOCAB_SIZE
            ))
        }),
        None => Ok(model
            .filter(|m| !emulated && m.vocab_size < workload::Vocab::default().end)
            .and_then(|m| within(m.vocab_size))),
    }
}

/// Tokens of one KV block: vLLM's default block size on CUDA, and the emulator's.
pub(crate) const KV_BLOCK_TOKENS: u64 = 16;

/// Where an experiment's cache size goes, for every engine.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CacheSizing {
    /// Baseline: the GPU's KV blocks (the emulator's `num_gpu_blocks`, vLLM's
    /// `--num-gpu-blocks-override`).
    pub(crate) gpu_blocks: Option<u64>,
    /// Offload tiers: the emulator's offload capacity in bytes.
    pub(crate) offload_bytes: Option<u64>,
    /// cpu and disk: LMCache's size key and its value in GB.
    pub(crate) lmcache: Option<(&'static str, f64)>,
}

/// The one mapping of a point's `cache_sizes` entry onto the engines' settings: the GPU cache
/// (in blocks of [`KV_BLOCK_TOKENS`] tokens of `model`'s KV) for baseline, the offload store for
/// cpu, disk and redis. A model outside the registry (llama.cpp, external) has no block size:
/// its baseline cache size is refused.
pub(crate) fn cache_sizing(tier: Tier, bytes: Option<u64>, model: Option<&str>) -> Result<CacheSizing> {
    let Some(bytes) = bytes else { return Ok(CacheSizing::default()) };
    let gb = bytes as f64 / 1e9;
    Ok(match tier {
        Tier::Baseline => {
            let registry = costmodel::Registry::builtin();
            let Some(spec) = model.and_then(|m| registry.model(m).ok()) else {
                return Err(RunError::invalid(format!(
                    "cache_sizes on the baseline tier size the GPU's KV cache in blocks of a registry                      model, and model `{}` is not one (configs/models.toml); drop cache_sizes for it",
                    model.unwrap_or("?")
                )));
            };
            let block = spec.kv_bytes(KV_BLOCK_TOKENS);
            let blocks = bytes / block.max(1);
            if blocks == 0 {
                return Err(RunError::invalid(format!(
                    "cache size of {bytes} bytes is less than one KV block of `{}` ({block} bytes)",
                    spec.name
                )));
            }
            CacheSizing { gpu_blocks: Some(blocks), ..CacheSizing::default() }
        }
        Tier::Cpu => CacheSizing {
            offload_bytes: Some(bytes),
            lmcache: Some(("max_local_cpu_size", gb)),
            gpu_blocks: None,
        },
        Tier::Disk => CacheSizing {
            offload_bytes: Some(bytes),
            lmcache: Some(("max_local_disk_size", gb)),
            gpu_blocks: None,
        },
        // LMCache's remote store has no size of its own: the emulator's Redis tier has.
        Tier::Redis => CacheSizing { offload_bytes: Some(bytes), ..CacheSizing::default() },
    })
}

/// Where a point of an experiment goes.
pub struct PointCtx<'a> {
    pub experiment: &'a str,
    /// The experiment's result root.
    pub root: &'a Path,
    pub index: usize,
    /// Write into exactly this (new, empty) directory instead of a fresh `<label>_<time>` one.
    pub exact_dir: Option<&'a Path>,
    /// Merged into env.json (the scheduler's job, task and node).
    pub env_extra: Option<(&'static str, serde_json::Value)>,
}

/// Runs one point as a sequence of phases: [`resolve`] it (engine, tier, model, cache sizes;
/// refusals before anything is written), make its [`result_dir`] (`run.toml`), [`launch`] the
/// engine, [`drive`] the workload while watching the engine, its sidecars and the tier's store,
/// and [`finalize`] (`env.json`, the summary, the report).
pub async fn run_point(
    opts: &BenchOptions,
    point: &Point,
    experiment: Option<PointCtx<'_>>,
    exp_lmcache: Option<&LmcacheConfig>,
    stop: &CancellationToken,
) -> Result<RunReport> {
    let experiment = experiment.as_ref();
    let resolution = resolve(opts, point, experiment, exp_lmcache, stop).await?;
    let mut run = result_dir(opts, point, experiment, resolution)?;
    let (running, capture) = launch(opts, &mut run, stop).await?;
    let driven = drive(opts, &run, &running, capture, stop).await;
    finalize(run, running, driven).await
}

/// A point resolved before anything is written: the output of [`resolve`].
struct Resolution {
    secrets: Secrets,
    probe: HostProbe,
    /// The engine that runs, with what only its launcher reads.
    engine: EngineSettings,
    /// Why this engine (`--engine auto`'s choice, or the request).
    reason: String,
    gpus: GpuSelection,
    image_traits: engines::docker::ImageTraits,
    emulated: bool,
    tier: TierConfig,
    /// The tier's LMCache settings with the experiment's and the cache size's.
    lmcache: Option<LmcacheConfig>,
    /// The model as the engine serves it.
    model: String,
    placement: ModelPlacement,
    sizing: CacheSizing,
    /// The token ids the workload draws ([`run_vocab`]).
    vocab: Option<(u32, u32)>,
    label: String,
    /// The redis tier's Redis (with credentials), when the tier is redis.
    tier_redis: Option<String>,
    /// A vLLM run's own Redis database on the redis tier.
    lmcache_db: Option<engines::lmcache_redis::LmcacheDb>,
}

/// A point's result directory with `run.toml` written: the output of [`result_dir`].
struct PreparedRun {
    dir: PathBuf,
    disk_dir: PathBuf,
    resolved: ResolvedRun,
    spec: LaunchSpec,
    plan: workload::Plan,
    summary_cfg: stats::SummaryConfig,
    /// The Redis the engine is given (the claimed database's URL on the redis tier).
    redis_url: Option<String>,
    /// `env.json` as far as it is known before the engine starts.
    env: serde_json::Value,
    secrets: Secrets,
    engine_kind: EngineKind,
    emulated: bool,
    tier: Tier,
    time_limit_s: Option<f64>,
    /// Emptied and released when dropped: after the engine has stopped.
    lmcache_db: Option<engines::lmcache_redis::LmcacheDb>,
}

/// What driving the workload gave: the output of [`drive`].
struct Driven {
    result: Result<adapters::DriveOutcome>,
    /// When the engine or a sidecar was seen gone (run clock), and which.
    engine_died_at: Option<f64>,
    died_process: Option<String>,
    time_limit_reached: bool,
    sampler_status: serde_json::Value,
    by_source: Option<std::collections::BTreeMap<String, u64>>,
    /// The engine's scrape that `by_source` counts from (run clock), for a run with warm-up
    /// requests: the end of the warm-up.
    counters_from_s: Option<f64>,
    /// When the redis tier's store stopped answering (run clock).
    store_lost_at_s: Option<f64>,
}

/// Resolves a point against the host, the tier, the registry and the flags: the engine that
/// runs and why, its GPUs, model and cache sizes, the label; a container engine's preflight and
/// the redis tier's database are checked and claimed here, so that a refused run leaves no
/// result directory behind.
async fn resolve(
    opts: &BenchOptions,
    point: &Point,
    experiment: Option<&PointCtx<'_>>,
    exp_lmcache: Option<&LmcacheConfig>,
    stop: &CancellationToken,
) -> Result<Resolution> {
    let secrets = Secrets::from_dotenv(&opts.root.join(".env"))?.with_process_env();
    let probe = HostProbe::detect();
    let (engine_kind, reason) = probe.choose(point_engine(opts, point)?);
    let inventory = opts.gpu_inventory.clone().unwrap_or_else(engines::GpuInventory::detect);
    if opts.require_gpu {
        inventory.require()?;
    }
    let gpus = inventory.resolve(&opts.gpus)?;
    if opts.require_gpu && matches!(engine_kind, EngineKind::Emulated | EngineKind::External) {
        return Err(RunError::invalid(format!(
            "--require-gpu: engine `{engine_kind}` does not measure a GPU; use --engine vllm-docker or vllm"
        )));
    }
    // Only the emulated engine evicts by conversation (kvcache's policy): refuse it before
    // anything starts for every other engine.
    if point.conversation_aware_eviction && engine_kind != EngineKind::Emulated {
        return Err(RunError::invalid(format!(
            "conversation_aware_eviction = true: engine `{engine_kind}` has no conversation-aware \
             eviction (only the emulated engine does, through kvcache's policy); set it to false \
             or use --engine emulated"
        )));
    }
    eprintln!("kvlab: {reason}");
    // An engine image says what it holds: the emulator in a container is still emulated.
    let image_traits = match (engine_kind, opts.image.as_deref()) {
        (EngineKind::Docker | EngineKind::VllmDocker, Some(image)) => engines::docker::image_traits(image),
        _ => engines::docker::ImageTraits::default(),
    };
    // So does a server: kvlab's emulator behind `--engine external` says it is one; and what it
    // serves is the model a run without `--model` requests.
    let external = match (engine_kind, opts.url.as_deref()) {
        (EngineKind::External, Some(url)) => engines::probe_external(url).await,
        _ => engines::ExternalServer::default(),
    };
    let emulated = engine_kind == EngineKind::Emulated || image_traits.emulated || external.emulated;

    let configs = opts.root.join("configs");
    let tier = TierConfig::load(&configs, point.tier)?;
    let mut lmcache = tier.lmcache.clone();
    if let (Some(base), Some(extra)) = (lmcache.as_mut(), exp_lmcache) {
        for (k, v) in extra.entries() {
            base.set(
                k,
                v.clone(),
                schema::lmcache::Origin { file: "experiment", line: 0, table: Some("lmcache") },
            )?;
        }
    }
    let model = match (engine_kind, &opts.model_path) {
        (EngineKind::Llamacpp, Some(path)) if opts.model.is_none() => {
            path.file_stem().map_or("tiny".to_owned(), |s| s.to_string_lossy().into_owned())
        }
        (EngineKind::Llamacpp, None) if opts.model.is_none() => "tiny".to_owned(),
        (EngineKind::Vllm | EngineKind::VllmDocker, _)
            if opts.model.is_none()
                && (engine_kind == EngineKind::Vllm || image_traits.cpu)
                && !probe.nvidia_gpu
                && point.model == DEFAULT_MODEL =>
        {
            eprintln!(
                "kvlab: no NVIDIA GPU, so vLLM's CPU build serves the lab's tiny model `{VLLM_CPU_MODEL}` \
                 (pass --model to choose another)"
            );
            VLLM_CPU_MODEL.to_owned()
        }
        (EngineKind::External, _) if opts.model.is_none() && opts.experiment.is_none() => {
            external.first_model.clone().unwrap_or_else(|| point.model.clone())
        }
        _ => point.model.clone(),
    };
    let placement = resolve_model(engine_kind, &model)?;
    engines::check_gpu_count(&model, placement.gpus(), &gpus)?;
    let mut sizing = cache_sizing(point.tier, point.cache_size, placement.registry_name.as_deref())?;
    let registry_model = placement
        .registry_name
        .as_deref()
        .and_then(|name| costmodel::Registry::builtin().model(name).ok().cloned());
    // The registry places no external server's model, but knows its vocabulary when the server
    // serves one of its models (by name or Hugging Face id).
    let served = match engine_kind {
        EngineKind::External => registry_entry(&model),
        _ => registry_model.clone(),
    };
    let vocab = run_vocab(opts.vocab_size, served.as_ref(), emulated)?;
    // vLLM's CPU build: the local process without a GPU, or an image that says it is one.
    let vllm_cpu = (engine_kind == EngineKind::Vllm && !probe.nvidia_gpu)
        || (engine_kind == EngineKind::VllmDocker && image_traits.cpu);
    sizing.gpu_blocks = opts.gpu_blocks.or(point.gpu_blocks).or(sizing.gpu_blocks).or_else(|| {
        (vllm_cpu && placement.registry_name.as_deref() == Some(VLLM_CPU_MODEL))
            .then_some(VLLM_CPU_DEFAULT_BLOCKS)
    });
    use engines::vllm::LmcacheMode;
    // `auto` follows the build that runs: vLLM's CPU build (the process without a GPU, or the
    // CPU image on any host) gets LMCache's server, a GPU build the in-process connector.
    let lmcache_mode = (matches!(engine_kind, EngineKind::Vllm | EngineKind::VllmDocker)
        && point.tier != Tier::Baseline)
        .then(|| opts.lmcache_mode.resolve(probe.nvidia_gpu && !vllm_cpu));
    if lmcache_mode == Some(LmcacheMode::Mp) && engine_kind == EngineKind::VllmDocker && !image_traits.cpu {
        return Err(RunError::invalid(
            "--lmcache-mode mp with --engine vllm-docker needs an image that starts LMCache's server \
             beside vLLM (kvlab/vllm-cpu, label kvlab.device=cpu); use --lmcache-mode in-process, or \
             --engine vllm"
                .to_owned(),
        ));
    }
    if let (Some(l), Some((key, gb))) = (lmcache.as_mut(), sizing.lmcache) {
        let origin = schema::lmcache::Origin { file: "cache_sizes", line: 0, table: Some("lmcache") };
        l.set(key, schema::lmcache::LmValue::Float(gb), origin)?;
    }
    let model = placement.served_name.clone();

    let label = opts.label.clone().map_or_else(
        || match experiment {
            Some(ctx) => point_label(ctx.experiment, ctx.index, point),
            None => format!("{}-{}", point.tier, engine_kind),
        },
        |l| match experiment {
            Some(ctx) => format!("{}-{:03}", sanitize(&l), ctx.index),
            None => sanitize(&l),
        },
    );
    // A container engine's runtime, daemon, image and port are checked before the run's
    // directory exists: a refused run leaves nothing behind.
    if matches!(engine_kind, EngineKind::Docker | EngineKind::VllmDocker) {
        tokio::select! {
            r = engines::docker::preflight(engine_kind, opts.image.as_deref(), opts.port) => { r?; }
            () = stop.cancelled() => {
                let parent = experiment.map_or_else(|| out_dir(opts), |ctx| ctx.root.to_path_buf());
                return Err(RunError::Interrupted(parent));
            }
        }
    }
    // LMCache has no key prefix: a vLLM run on the redis tier gets an empty Redis database of
    // its own, claimed before the run's directory exists (a refused run leaves nothing behind),
    // and emptied and released when this function returns, after the engine has stopped.
    let tier_redis = (point.tier == Tier::Redis)
        .then(|| opts.redis_url.clone().unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned()));
    let lmcache_db = match (&tier_redis, engine_kind) {
        (Some(url), EngineKind::Vllm | EngineKind::VllmDocker) => {
            let url = url.clone();
            let claimant = format!("{label}-{}", std::process::id());
            let claim = tokio::task::spawn_blocking(move || {
                engines::lmcache_redis::LmcacheDb::claim(&url, &claimant)
            });
            Some(
                claim
                    .await
                    .map_err(|source| RunError::Join { what: "claiming a Redis database", source })??,
            )
        }
        _ => None,
    };
    let vllm = || engines::vllm::VllmRunSettings {
        python: opts.vllm_python.clone(),
        model_dir: (placement.registry_name.as_deref() == Some(VLLM_CPU_MODEL)).then(|| {
            opts.vllm_model_dir.clone().unwrap_or_else(|| opts.root.join(".kvlab/models/tiny-llama-hf"))
        }),
        lmcache_mode,
        cpu: vllm_cpu,
        cache_dir: Some(opts.root.join(".kvlab/cache")),
        max_model_len: registry_model.as_ref().filter(|_| vllm_cpu).map(|m| m.max_model_len),
        // Twice the blocks the run asks for, in vLLM's CPU blocks, at least 16 MiB.
        kv_cache_bytes: match (&registry_model, sizing.gpu_blocks) {
            (Some(m), Some(blocks)) if vllm_cpu => {
                Some((blocks * VLLM_CPU_BLOCK_TOKENS * m.kv_bytes(1) * 2).max(16 << 20))
            }
            _ => None,
        },
        l1_cap_gb: Some(engines::vllm::l1_cap_gb()),
    };
    let container = || ContainerSettings {
        image: opts.image.clone(),
        gpu_type: point.gpu.clone(),
        seed: point.seed.unwrap_or(0),
    };
    let engine = match engine_kind {
        EngineKind::Auto | EngineKind::Emulated => EngineSettings::Emulated(EmulatorSettings {
            offload_bytes: sizing.offload_bytes,
            conversation_aware_eviction: point.conversation_aware_eviction,
            block_size: opts.block_size,
            gpu_type: point.gpu.clone(),
        }),
        EngineKind::Llamacpp => EngineSettings::Llamacpp(LlamacppSettings {
            model: opts.model_path.clone().or_else(|| {
                let p = opts.root.join(".kvlab/models/tiny.gguf");
                p.is_file().then_some(p)
            }),
            python: opts.python.clone().or_else(|| {
                let p = opts.root.join(".venv/bin/python");
                p.is_file().then_some(p)
            }),
        }),
        EngineKind::Vllm => EngineSettings::Vllm(vllm()),
        EngineKind::VllmDocker => EngineSettings::VllmDocker { container: container(), vllm: vllm() },
        EngineKind::Docker => EngineSettings::Docker(container()),
        EngineKind::External => EngineSettings::External { url: opts.url.clone() },
    };
    Ok(Resolution {
        secrets,
        probe,
        engine,
        reason,
        gpus,
        image_traits,
        emulated,
        tier,
        lmcache,
        model,
        placement,
        sizing,
        vocab,
        label,
        tier_redis,
        lmcache_db,
    })
}

/// Makes the point's result directory and writes `run.toml` (the resolved run, the contract
/// that reports read); builds the workload's plan, the summary's settings, the engine's launch
/// spec and `env.json`'s first fields.
fn result_dir(
    opts: &BenchOptions,
    point: &Point,
    experiment: Option<&PointCtx<'_>>,
    resolution: Resolution,
) -> Result<PreparedRun> {
    let Resolution {
        secrets,
        probe,
        engine,
        reason,
        gpus,
        image_traits,
        emulated,
        tier,
        lmcache,
        model,
        placement,
        sizing,
        vocab,
        label,
        tier_redis,
        lmcache_db,
    } = resolution;
    let engine_kind = engine.kind();
    let vllm_cpu = engine.vllm().is_some_and(|v| v.cpu);
    let tp = placement.tensor_parallel;
    let dir = match experiment {
        Some(PointCtx { exact_dir: Some(dir), .. }) => {
            std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
            dir.to_path_buf()
        }
        Some(ctx) => fresh_dir(ctx.root, &format!("{label}_{}", timestamp()))?,
        None => fresh_dir(&out_dir(opts), &format!("{label}_{}", timestamp()))?,
    };
    let run_id = format!(
        "{}-{}",
        dir.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    )
    .to_lowercase();
    let disk_dir = dir.join("kvcache");
    std::fs::create_dir_all(&disk_dir).map_err(|e| RunError::io(&disk_dir, e))?;
    std::fs::create_dir_all(dir.join("samples")).map_err(|e| RunError::io(dir.join("samples"), e))?;

    let workload = WorkloadRequest {
        workload: point.workload.clone(),
        num_requests: point.num_prompts.unwrap_or(100),
        prompt_len: point.prompt_len.unwrap_or(2048),
        gen_len: if point.mock_decoding { 1 } else { point.gen_len.unwrap_or(32) },
        request_rate: point.request_rate,
        burstiness: point.burstiness.unwrap_or(1.0),
        max_concurrency: point.max_concurrency,
        warmup: point.warmup.unwrap_or(0),
        time_limit_s: point.time_limit_s,
        seed: point.seed.unwrap_or(0),
        text_prompts: engine_kind == EngineKind::Llamacpp || image_traits.text_prompts,
        vocab,
        // The engine's cache as the tier, the engine and the command line (`--gpu-blocks`,
        // `--block-size`) set it, not as an experiment's point varies it (`matrix.gpu_blocks`,
        // a baseline cache size): a sweep over the cache keeps one workload, and the emulator
        // given vLLM's blocks gets vLLM's workload.
        gpu_cache_tokens: if engine_kind == EngineKind::Emulated {
            let block = opts.block_size.map_or(KV_BLOCK_TOKENS, u64::from);
            opts.gpu_blocks.or(tier.emulator.num_gpu_blocks).map(|b| b * block)
        } else if vllm_cpu && placement.registry_name.as_deref() == Some(VLLM_CPU_MODEL) {
            Some(opts.gpu_blocks.unwrap_or(VLLM_CPU_DEFAULT_BLOCKS) * VLLM_CPU_BLOCK_TOKENS)
        } else {
            opts.gpu_blocks.map(|b| b * KV_BLOCK_TOKENS)
        },
    };
    let redis_url = lmcache_db.as_ref().map(|db| db.url()).or(tier_redis);
    let resolved = ResolvedRun {
        v: RUN_FORMAT_VERSION,
        label: label.clone(),
        run_id: run_id.clone(),
        engine: engine_kind,
        engine_reason: reason.clone(),
        emulated,
        tier: point.tier,
        model: model.clone(),
        gpu: point.gpu.clone(),
        gpus: gpus.clone(),
        tensor_parallel: tp,
        pipeline_parallel: placement.pipeline_parallel,
        registry_model: placement.registry_name.clone(),
        workload: workload.clone(),
        mock_decoding: point.mock_decoding,
        conversation_aware_eviction: point.conversation_aware_eviction,
        cache_size_bytes: point.cache_size,
        num_gpu_blocks: sizing.gpu_blocks,
        lmcache_mode: engine.vllm().and_then(|v| v.lmcache_mode),
        goodput: point.goodput.clone(),
        url: opts.url.clone(),
        image: opts.image.clone(),
        disk_dir: disk_dir.clone(),
        redis_url: redis_url.as_deref().map(engines::without_credentials),
        tier_config: tier.clone(),
        lmcache: lmcache.clone(),
        experiment: experiment.map(|ctx| ctx.experiment.to_owned()),
    };
    let run_toml = toml::to_string(&resolved)
        .map_err(|source| RunError::Toml { what: "run.toml".to_owned(), source })?;
    write(&dir.join("run.toml"), &secrets.redact(&run_toml))?;

    let plan = adapters::build_plan(&workload)?;
    let slo = point
        .goodput
        .as_deref()
        .map(schema::config::parse_goodput)
        .transpose()
        .map_err(|e| RunError::invalid(format!("--goodput: {e}")))?;
    let summary_cfg = stats::SummaryConfig {
        engine: engine_kind.to_string(),
        tier: point.tier.to_string(),
        emulated,
        slo,
        ..Default::default()
    };

    let spec = LaunchSpec {
        run_id,
        run_dir: dir.clone(),
        tier: tier.clone(),
        lmcache,
        disk_dir: disk_dir.clone(),
        model: model.clone(),
        tensor_parallel: tp,
        pipeline_parallel: placement.pipeline_parallel,
        gpus: gpus.clone(),
        port: opts.port,
        secrets: secrets.clone(),
        ready_timeout: opts.ready_timeout,
        wrapper: opts.instruments.as_ref().map(|i| i.wrapper.clone()),
        gpu_blocks: sizing.gpu_blocks,
        redis_url: redis_url.clone(),
        engine,
    };
    if let Some(dir) =
        spec.engine.vllm().and_then(|v| v.model_dir.as_ref()).filter(|d| !d.join("config.json").is_file())
    {
        return Err(RunError::invalid(format!(
            "model `{VLLM_CPU_MODEL}` is generated by the lab and {} has none; `cargo xtask ci` makes it \
             (with the vLLM venv), or point KVLAB_VLLM_MODEL at such a folder",
            dir.display()
        )));
    }

    let mut env = env_json(&resolved, &probe, &tier, &opts.root);
    env["engine_version"] = engines::engine_version(&spec, &probe);
    if let Some((key, value)) = experiment.and_then(|ctx| ctx.env_extra.clone()) {
        env[key] = value;
    }
    Ok(PreparedRun {
        dir,
        disk_dir,
        resolved,
        spec,
        plan,
        summary_cfg,
        redis_url,
        env,
        secrets,
        engine_kind,
        emulated,
        tier: point.tier,
        time_limit_s: workload.time_limit_s,
        lmcache_db,
    })
}

/// Starts the engine (its launcher waits until it is ready) and begins the run's hook (a profiled
/// run's capture).
/// An engine that cannot start leaves `env.json` saying why.
async fn launch(
    opts: &BenchOptions,
    run: &mut PreparedRun,
    stop: &CancellationToken,
) -> Result<(RunningEngine, Option<Box<dyn engines::HookSpan>>)> {
    let PreparedRun { engine_kind, spec, dir, env, secrets, .. } = run;
    let launcher = engines::launcher(*engine_kind);
    let running = tokio::select! {
        r = launcher.start(spec) => r.map_err(RunError::from),
        () = stop.cancelled() => Err(RunError::Interrupted(dir.clone())),
    };
    let running = match running {
        Ok(r) => r,
        Err(e) => {
            env["error"] = serde_json::json!(secrets.redact(&e.to_string()));
            if let RunError::Interrupted(_) = &e {
                env["interrupted"] = serde_json::json!(true);
            }
            write(
                &dir.join("env.json"),
                &secrets.redact(&serde_json::to_string_pretty(&env).unwrap_or_default()),
            )?;
            return Err(e);
        }
    };
    eprintln!("kvlab: {engine_kind} engine ready at {}", running.base_url);
    // Profiled runs: the capture range spans the workload, not the engine's start.
    let Some(hook) = opts.instruments.as_ref().map(|i| &i.hook) else { return Ok((running, None)) };
    match hook.begin(spec, &running.base_url).await {
        Ok(span) => Ok((running, Some(span))),
        Err(e) => {
            let _ = running.stop().await;
            Err(e.into())
        }
    }
}

/// Drives the workload against the running engine, with the samplers, until it ends, the run
/// stops, the point's time limit passes or the engine (or a sidecar) dies; watches the redis
/// tier's store; ends the run's hook (a profiled run's capture) and stops the samplers.
async fn drive(
    opts: &BenchOptions,
    run: &PreparedRun,
    running: &RunningEngine,
    capture: Option<Box<dyn engines::HookSpan>>,
    stop: &CancellationToken,
) -> Driven {
    let PreparedRun {
        engine_kind,
        dir,
        disk_dir,
        plan,
        summary_cfg,
        redis_url,
        spec,
        tier,
        time_limit_s,
        ..
    } = run;
    let engine_kind = *engine_kind;
    let model = &spec.model;
    let origin = Instant::now();
    // The redis tier's store is outside the engine: if it goes away the engine serves on by
    // recompute, so the run goes on, and the time it was lost is recorded.
    let store_watch = (*tier == Tier::Redis && !running.in_process())
        .then(|| redis_url.clone())
        .flatten()
        .map(|url| tokio::spawn(store_lost(url, origin)));
    let pid = if running.in_process() { None } else { running.pid };
    let (samplers, samplers_failed) = match adapters::start_samplers(
        &dir.join("samples"),
        origin,
        disk_dir,
        pid,
        Some(format!("{}/metrics", running.base_url)),
        &running.sidecars(),
    ) {
        Ok(samplers) => (Some(samplers), None),
        Err(e) => (None, Some(e)),
    };
    // The engine's own process (not the lab's, for the in-process emulator) is watched: if it
    // dies, the run stops once the requests in flight have ended.
    let engine_log = dir.join("engine.log");
    let watched = match (running.in_process(), running.pid) {
        (true, _) => EngineWatch::Nothing,
        (false, Some(pid)) => EngineWatch::Processes(
            std::iter::once((engine_kind.to_string(), pid, engine_log.clone()))
                .chain(
                    running.sidecars().into_iter().filter_map(|s| Some((s.name.to_owned(), s.pid?, s.log))),
                )
                .collect(),
        ),
        (false, None) if engine_kind == EngineKind::External => {
            EngineWatch::Health(running.base_url.clone(), engine_log.clone())
        }
        (false, None) => EngineWatch::Nothing,
    };
    let watched_pids = match &watched {
        EngineWatch::Processes(procs) => procs.clone(),
        _ => Vec::new(),
    };
    let mut engine_died_at = None;
    let mut died_process: Option<String> = None;
    let mut time_limit_reached = false;
    // Cancelled by a stop, or at the time limit: the load generator records what is in flight.
    let drive_stop = stop.child_token();
    // With warm-up requests, the engine is scraped between them and the measured ones: the
    // counters' deltas (the prompt tokens by source) count from there.
    let warmup_scrape: std::sync::Arc<std::sync::Mutex<Option<f64>>> = std::sync::Arc::default();
    let on_measured_start = samplers.as_ref().filter(|_| plan.limits.warmup > 0).map(|samplers| {
        let now = samplers.sample_now();
        let scraped = std::sync::Arc::clone(&warmup_scrape);
        let hook: loadgen::MeasuredStartHook = std::sync::Arc::new(move || {
            let now = now.clone();
            let scraped = std::sync::Arc::clone(&scraped);
            Box::pin(async move {
                let t = tokio::task::spawn_blocking(move || now.sample("engine")).await.ok().flatten();
                *scraped.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = t;
            })
        });
        hook
    });
    let driven = match samplers_failed {
        None => {
            let drive = adapters::Drive {
                on_measured_start,
                plan,
                base_url: &running.base_url,
                model,
                summary: summary_cfg.clone(),
                dir,
                origin,
                progress: opts.progress,
                stop: drive_stop.clone(),
            }
            .run();
            tokio::pin!(drive);
            tokio::select! {
                // A stop ends the drive at once too (its in-flight requests end as interrupted).
                r = &mut drive => match r {
                    Ok(_) if stop.is_cancelled() => Err(RunError::Interrupted(dir.clone())),
                    r => r,
                },
                () = stop.cancelled() => {
                    // The load generator saw the stop too: it sends nothing more and records
                    // the requests in flight as interrupted; the partial summary is made below.
                    let _ = tokio::time::timeout(STOP_GRACE, &mut drive).await;
                    Err(RunError::Interrupted(dir.clone()))
                }
                limit = time_limit(*time_limit_s, origin) => {
                    // A deadline, not only the end of arrivals: requests still streaming end now
                    // and are recorded as interrupted, as on a stop; the run itself succeeds.
                    time_limit_reached = true;
                    eprintln!(
                        "kvlab: the time limit of {limit} s was reached; the requests in flight are \
                         recorded as interrupted"
                    );
                    drive_stop.cancel();
                    match tokio::time::timeout(STOP_GRACE, &mut drive).await {
                        Ok(r) => r,
                        Err(_) => Err(RunError::LoadgenStuck { grace_s: STOP_GRACE.as_secs() }),
                    }
                }
                (at, who, log) = engine_exit(watched, origin) => {
                    engine_died_at = Some(at);
                    eprintln!(
                        "kvlab: the {who} process exited {at:.3} s into the run; the requests in flight \
                         are recorded as failed; see {}",
                        log.display()
                    );
                    died_process = Some(who.clone());
                    let died = || RunError::EngineDied { engine: who.clone(), at_s: at, log: log.clone() };
                    tokio::select! {
                        r = &mut drive => r.and_then(|_| Err(died())),
                        () = tokio::time::sleep(CRASH_GRACE) => Err(died()),
                        () = stop.cancelled() => Err(RunError::Interrupted(dir.clone())),
                    }
                }
            }
        }
        Some(e) => Err(RunError::Samplers(e)),
    };
    // Requests to a dead engine fail fast: the drive may end before the watcher's next look.
    let gone = watched_pids.iter().find(|(_, pid, _)| engines::orphans::process_exited(*pid)).cloned();
    let driven = match (driven, gone) {
        (Ok(_), Some((who, _, log))) if engine_died_at.is_none() => {
            let at = origin.elapsed().as_secs_f64();
            engine_died_at = Some(at);
            eprintln!("kvlab: the {who} process exited by {at:.3} s into the run");
            died_process = Some(who.clone());
            Err(RunError::EngineDied { engine: who, at_s: at, log })
        }
        (driven, _) => driven,
    };
    let ended = match capture {
        Some(span) => span.end(spec).await,
        None => Ok(()),
    };
    let driven = match ended {
        Ok(()) => driven,
        Err(e) => driven.and(Err(e.into())),
    };
    let sampler_status = samplers.map(|s| s.stop()).unwrap_or(serde_json::Value::Null);
    // Where the prompt tokens came from (GPU cache, each offload tier, computed), from the
    // engine's counters: the samplers took their last scrape as they stopped.
    let origin = if engine_kind == EngineKind::External {
        report::CounterOrigin::FirstScrape
    } else {
        report::CounterOrigin::EngineStart
    };
    let counters_from_s = *warmup_scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let by_source = match (plan.limits.warmup, counters_from_s) {
        (0, _) => adapters::tokens_by_source(dir, *tier, origin),
        (_, Some(at)) => adapters::tokens_by_source(dir, *tier, report::CounterOrigin::Scrape(at)),
        // No scrape at the end of the warm-up: the counters cannot be split from it.
        (_, None) => None,
    };
    let mut store_lost_at_s = None;
    if let Some(watch) = store_watch {
        if watch.is_finished() {
            store_lost_at_s = watch.await.ok();
        } else {
            watch.abort();
        }
    }
    Driven {
        result: driven,
        engine_died_at,
        died_process,
        time_limit_reached,
        sampler_status,
        by_source,
        counters_from_s,
        store_lost_at_s,
    }
}

/// Stops the engine and finishes the result directory: `env.json` (errors, the engine's death,
/// an interruption, the store's loss), the summary over what finished when the run did not
/// end normally, the prompt tokens by source, and the report.
async fn finalize(run: PreparedRun, running: RunningEngine, driven: Driven) -> Result<RunReport> {
    let PreparedRun {
        dir,
        resolved,
        summary_cfg,
        mut env,
        secrets,
        engine_kind,
        emulated,
        time_limit_s,
        lmcache_db,
        ..
    } = run;
    let Driven {
        result: driven,
        engine_died_at,
        died_process,
        time_limit_reached,
        sampler_status,
        by_source,
        counters_from_s,
        store_lost_at_s,
    } = driven;
    let mut marks = serde_json::Map::new();
    if let Some(at) = store_lost_at_s {
        eprintln!(
            "kvlab: the redis tier's store stopped answering {at:.3} s into the run; the engine \
             served what followed without it"
        );
        env["tier_store_lost_at_s"] = serde_json::json!(at);
        marks.insert("tier_store_lost_at_s".into(), serde_json::json!(at));
    }
    if let Err(e) = &driven {
        env["error"] = serde_json::json!(secrets.redact(&e.to_string()));
    }
    if let Some(at) = engine_died_at {
        env["engine_exited_at_s"] = serde_json::json!(at);
        marks.insert("engine_exited_at_s".into(), serde_json::json!(at));
        if let Some(who) = &died_process {
            // Which process of the engine exited: the engine itself, or a sidecar (`lmcache`).
            env["exited_process"] = serde_json::json!(who);
            marks.insert("exited_process".into(), serde_json::json!(who));
        }
    }
    if let Err(RunError::Interrupted(_)) = &driven {
        env["interrupted"] = serde_json::json!(true);
        marks.insert("interrupted".into(), serde_json::json!(true));
    }
    if driven.is_ok() && time_limit_reached {
        env["time_limit_reached"] = serde_json::json!(true);
        marks.insert("time_limit_reached".into(), serde_json::json!(true));
        marks.insert("time_limit_s".into(), serde_json::json!(time_limit_s));
    }
    // `summary.json`, written once, whole, before the engine is stopped (which can take a while):
    // a run that did not end normally (its marks say how) is summarized over the records that
    // `requests.jsonl` holds; the prompt tokens by source join a summary that is not an error's.
    let summary = match driven {
        Err(e) => {
            if !marks.is_empty() {
                let written = adapters::finish_partial(&dir, &summary_cfg, &marks, None)
                    .and_then(|(_, file)| adapters::write_summary(&dir, &file));
                if let Err(e) = written {
                    env["partial_results_error"] = serde_json::json!(secrets.redact(&e.to_string()));
                }
            }
            Err(e)
        }
        Ok(outcome) => {
            let hint = outcome.hint.map(|h| secrets.redact(&h));
            let finished = if marks.is_empty() {
                Ok((outcome.summary, outcome.file))
            } else {
                // summary.json says when the time limit was reached or the store was lost, as
                // env.json does.
                adapters::finish_partial(&dir, &summary_cfg, &marks, Some(&outcome.file))
            };
            finished.and_then(|(mut summary, mut file)| {
                if let Some(sources) = by_source {
                    file["prompt_tokens_by_source"] = serde_json::json!(sources);
                    summary.prompt_tokens_by_source = Some(sources);
                }
                if let Some(at) = counters_from_s {
                    file["engine_counters_from_s"] = serde_json::json!(at);
                }
                adapters::write_summary(&dir, &file)?;
                Ok((summary, hint))
            })
        }
    };
    let stopped = running.stop().await;
    // The engine's temporary files (vLLM's TMPDIR: IPC sockets, scratch) go with it.
    let _ = std::fs::remove_dir_all(dir.join("tmp"));
    env["samplers"] = sampler_status;
    write(&dir.join("env.json"), &secrets.redact(&serde_json::to_string_pretty(&env).unwrap_or_default()))?;
    let (summary, hint) = summary?;
    stopped?;

    let table = stats::render_table(&summary);
    // The full report (report.md, report.html, plots/) from the files just written; the short
    // report stands in when it cannot be made, so a run never ends without one.
    let full = report::RunData::load(&dir).and_then(|data| report::write_report(&[data], &dir));
    if let Err(e) = full {
        eprintln!("warning: the full report could not be written ({e}); report.md is the short one");
        write(
            &dir.join("report.md"),
            &secrets.redact(&crate::report::report_md(&resolved, &summary, &table)),
        )?;
    }
    println!("{}", secrets.redact(&table));
    if time_limit_reached {
        println!(
            "time limit of {} s reached: {} requests were still in flight and are recorded as interrupted",
            time_limit_s.unwrap_or_default(),
            summary.failed_by_class.get("interrupted").copied().unwrap_or(0)
        );
    }
    if let Some(hint) = &hint {
        println!("{hint}");
    }
    println!("results: {}", dir.display());
    // The redis tier's database is emptied and released now that the engine has stopped.
    drop(lmcache_db);
    Ok(RunReport { dir, engine: engine_kind, emulated, summary, table, time_limit_reached, hint })
}

/// `env.json`: revision of the workspace `root`, tool versions, GPU, host, engine.
fn env_json(run: &ResolvedRun, probe: &HostProbe, tier: &TierConfig, root: &Path) -> serde_json::Value {
    let version = |cmd: &str, arg: &str| -> Option<String> {
        let out = std::process::Command::new(cmd).arg(arg).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_owned())
    };
    serde_json::json!({
        "v": RUN_FORMAT_VERSION,
        "git_revision": std::process::Command::new("git").arg("-C").arg(root).args(["rev-parse", "HEAD"])
            .output().ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        "kvlab_version": env!("CARGO_PKG_VERSION"),
        "tools": {
            "rustc": version("rustc", "--version"),
            "docker": probe.container_runtime.as_deref().and_then(|r| version(r, "--version")),
            "nvidia_smi": version("nvidia-smi", "--version"),
        },
        "gpu": adapters::gpu_info(),
        "host": {
            "hostname": std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        },
        "engine": run.engine,
        "engine_reason": run.engine_reason,
        "emulated": run.emulated,
        "tier": run.tier,
        "probe": probe,
        "emulator_byte_scale": run.emulated.then_some(tier.emulator.byte_scale),
    })
}

/// The run id a planned command shows (the real one is the result directory's name and the pid).
pub const PLANNED_RUN_ID: &str = "<run-id>";

/// The launch spec of a flags-only run (no experiment file) with its result directory at
/// `run_dir`, as `bench` would resolve it: the tier's configuration, the model's placement from
/// the registry, the secrets of `.env` and the environment.
pub fn planned_spec(opts: &BenchOptions, engine: EngineKind, run_dir: &Path) -> Result<LaunchSpec> {
    let tier = TierConfig::load(&opts.root.join("configs"), opts.tier)?;
    let model = opts.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let placement = resolve_model(engine, &model)?;
    let redis_url = (opts.tier == Tier::Redis)
        .then(|| opts.redis_url.clone().unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned()));
    let mut settings = EngineSettings::new(engine);
    match &mut settings {
        EngineSettings::Emulated(emulator) => emulator.gpu_type = opts.gpu.clone(),
        EngineSettings::Llamacpp(llamacpp) => {
            llamacpp.model = opts.model_path.clone();
            llamacpp.python = opts.python.clone();
        }
        EngineSettings::Vllm(vllm) => *vllm = planned_vllm(opts),
        EngineSettings::VllmDocker { container, vllm } => {
            *container = planned_container(opts);
            *vllm = planned_vllm(opts);
        }
        EngineSettings::Docker(container) => *container = planned_container(opts),
        EngineSettings::External { url } => *url = opts.url.clone(),
    }
    Ok(LaunchSpec {
        run_id: PLANNED_RUN_ID.to_owned(),
        run_dir: run_dir.to_path_buf(),
        lmcache: tier.lmcache.clone(),
        tier,
        disk_dir: run_dir.join("kvcache"),
        model: placement.served_name,
        tensor_parallel: placement.tensor_parallel,
        pipeline_parallel: placement.pipeline_parallel,
        gpus: opts.gpus.clone(),
        port: opts.port,
        secrets: Secrets::from_dotenv(&opts.root.join(".env"))?.with_process_env(),
        ready_timeout: opts.ready_timeout,
        wrapper: opts.instruments.as_ref().map(|i| i.wrapper.clone()),
        gpu_blocks: None,
        redis_url,
        engine: settings,
    })
}

/// A planned run's vLLM: its Python, LMCache in process (a GPU machine's).
fn planned_vllm(opts: &BenchOptions) -> engines::vllm::VllmRunSettings {
    engines::vllm::VllmRunSettings {
        python: opts.vllm_python.clone(),
        lmcache_mode: Some(engines::vllm::LmcacheMode::InProcess),
        ..Default::default()
    }
}

/// A planned run's container: its image, and the seed and GPU type its `engine.env` passes.
fn planned_container(opts: &BenchOptions) -> ContainerSettings {
    ContainerSettings { image: opts.image.clone(), gpu_type: opts.gpu.clone(), seed: opts.seed.unwrap_or(0) }
}

/// Options of `serve`: the emulated engine alone.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub root: PathBuf,
    pub tier: Tier,
    pub model: Option<String>,
    pub gpu: Option<String>,
    pub port: Option<u16>,
    pub redis_url: Option<String>,
    /// Where the disk tier's files go (default `<root>/.kvlab/serve/kvcache`).
    pub disk_dir: Option<PathBuf>,
}

/// Runs the emulated engine until SIGINT or SIGTERM (or until `stop` resolves); `on_ready` gets
/// its URL.
pub async fn serve_emulated(
    opts: &ServeOptions,
    on_ready: impl FnOnce(&str),
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let tier = TierConfig::load(&opts.root.join("configs"), opts.tier)?;
    let state = opts.root.join(".kvlab").join("serve");
    let disk_dir = opts.disk_dir.clone().unwrap_or_else(|| state.join("kvcache"));
    std::fs::create_dir_all(&disk_dir).map_err(|e| RunError::io(&disk_dir, e))?;
    std::fs::create_dir_all(&state).map_err(|e| RunError::io(&state, e))?;
    let spec = LaunchSpec {
        run_id: format!("serve-{}", std::process::id()),
        run_dir: state.clone(),
        lmcache: tier.lmcache.clone(),
        tier,
        disk_dir,
        model: opts.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
        tensor_parallel: 1,
        pipeline_parallel: 1,
        gpus: GpuSelection::All,
        port: opts.port,
        secrets: Secrets::default(),
        ready_timeout: Duration::from_secs(30),
        wrapper: None,
        gpu_blocks: None,
        redis_url: Some(opts.redis_url.clone().unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned())),
        engine: EngineSettings::Emulated(EmulatorSettings {
            gpu_type: opts.gpu.clone(),
            ..Default::default()
        }),
    };
    let running = engines::launcher(EngineKind::Emulated).start(&spec).await?;
    on_ready(&running.base_url);
    tokio::select! {
        () = stop_signal() => {}
        _ = stop => {}
    }
    Ok(running.stop().await?)
}
