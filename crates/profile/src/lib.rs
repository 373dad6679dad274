//! Profiling a run under Nsight Systems (`cargo xtask profile`): the `nsys` command lines, the
//! capture range around the workload, `nsys stats` and its CSV, parsed into
//! `profile/nvtx_sum.csv`.
//!
//! Neither the engines nor the lab import this crate: the caller of a profiled run gives its
//! [`ProfileSpec::instruments`] to the run, the launchers' [`engines::CommandWrapper`] (process
//! vLLM's profiler flags, nsys in vLLM's container, the run's `profile/` made before the engine
//! starts) and the run's [`engines::RunHook`], which brackets its workload with a
//! [`WorkloadCapture`].
//!
//! Where nsys runs ([`Placement`]):
//! - [`Placement::WrapsLab`] (emulated, llamacpp, vllm): nsys runs the lab's own process, so
//!   the client's NVTX ranges and the engine's are on one timeline. The emulator is in-process;
//!   process engines are children, traced with `--trace-fork-before-exec=true`. The report is
//!   written when the lab exits, so the caller that started nsys runs [`summarize`] afterwards.
//! - [`Placement::InContainer`] (vllm-docker): nsys runs inside the engine's container (the
//!   lab's vLLM image carries it), writing into the run's `profile/` through a mount; it shuts
//!   the engine down when the capture ends, and [`WorkloadCapture::end`] waits for the container
//!   to exit so the report is complete before the container is removed.
//!
//! The capture range is the workload, not model loading:
//! - vLLM: `--capture-range=cudaProfilerApi`; vLLM runs with its CUDA profiler
//!   (`--profiler-config '{"profiler":"cuda"}'`), which starts and stops on `POST /start_profile`
//!   and `/stop_profile` ([`WorkloadCapture`] sends them) and wraps every engine step in an NVTX
//!   range `execute_new_{N}_cached_{M}`.
//! - Emulated and llama.cpp: `--capture-range=nvtx --nvtx-capture=workload`; the lab opens the
//!   push/pop range `workload` around the load generator ([`loadgen::nvtx::WorkloadRange`]).
//!
//! Invariants: command construction is pure (snapshot-tested per engine and tier); parsing never
//! panics on outside input and names the file, line and column it rejects; no secret reaches a
//! command line (HF_TOKEN goes through the container's `--env-file` or the environment).

pub mod nsys_run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use engines::docker::{ContainerFiles, ContainerHost, DockerRun, KvlabImage};
use engines::error::EngineError;
use engines::secrets::Secrets;
use engines::shell::quote;
pub use engines::CommandLine;
use engines::{
    CommandWrapper, EngineKind, HookFuture, HookSpan, HostProbe, Instruments, LaunchSpec, RunHook,
};
use schema::error::{ConfigError, Result};

/// What nsys traces.
pub const NSYS_TRACE: &str = "cuda,nvtx,osrt";
/// vLLM's profiler configuration: its CUDA profiler (cudaProfilerStart/Stop plus per-step NVTX).
pub const VLLM_PROFILER_CONFIG: &str = r#"{"profiler":"cuda"}"#;
/// The NVTX range the client opens around the workload (the capture range without CUDA).
pub const WORKLOAD_RANGE: &str = loadgen::nvtx::WORKLOAD_RANGE;
/// Where the run's `profile/` appears inside the engine's container.
pub const CONTAINER_PROFILE_DIR: &str = "/kvlab-profile";
/// The report's base name when nsys runs the lab (`profile/kvlab.nsys-rep`).
pub const LAB_REPORT: &str = "kvlab";
/// The report's base name when nsys runs in the container (`profile/engine.nsys-rep`).
pub const ENGINE_REPORT: &str = "engine";
/// The `nsys stats` reports parsed into the result directory.
pub const STATS_REPORTS: [&str; 2] = ["nvtx_sum", "cuda_gpu_kern_sum"];
/// The parsed NVTX summary in the result directory.
pub const NVTX_SUM_CSV: &str = "nvtx_sum.csv";
/// The parsed GPU kernel summary in the result directory.
pub const KERN_SUM_CSV: &str = "cuda_gpu_kern_sum.csv";
/// How to get nsys, for messages.
pub const INSTALL_NSYS: &str = "`nix develop` provides it (cudaPackages.nsight_systems); elsewhere install \
     NVIDIA Nsight Systems and put `nsys` on PATH";

/// How a run is profiled; given to the run through [`ProfileSpec::instruments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProfileSpec {
    pub placement: Placement,
}

/// Where nsys runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// nsys runs the lab's process; engines are in-process or its children.
    WrapsLab,
    /// nsys runs inside the engine's container.
    InContainer,
}

/// What starts and stops the collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Capture {
    /// The CUDA profiler API (vLLM's `/start_profile`, `/stop_profile`).
    CudaProfilerApi,
    /// A push/pop NVTX range of this name.
    Nvtx(String),
}

/// What nsys does when the capture range ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CaptureEnd {
    /// Stop collecting; the application goes on (the report is written when it exits).
    Stop,
    /// Stop collecting and shut the application down (the engine in its container).
    StopShutdown,
}

/// One `nsys profile` invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NsysProfile {
    pub capture: Capture,
    pub end: CaptureEnd,
    /// The report's path without `.nsys-rep`.
    pub output: String,
}

/// How an engine is profiled, or why it cannot be.
pub fn placement(engine: EngineKind) -> Result<Placement> {
    match engine {
        EngineKind::Emulated | EngineKind::Llamacpp | EngineKind::Vllm => Ok(Placement::WrapsLab),
        EngineKind::VllmDocker => Ok(Placement::InContainer),
        EngineKind::Docker => Err(ConfigError::Invalid(
            "profile: --engine docker runs an image kvlab knows nothing of, so it cannot put nsys in it; \
             profile vLLM with --engine vllm-docker (the lab's image carries nsys) or --engine vllm"
                .to_owned(),
        )),
        EngineKind::External => Err(ConfigError::Invalid(
            "profile: an external engine is not started by kvlab, so nsys cannot wrap it; run the engine \
             under `nsys profile` yourself, or use --engine vllm / vllm-docker / llamacpp / emulated"
                .to_owned(),
        )),
        EngineKind::Auto => Err(ConfigError::Invalid(
            "profile: resolve --engine auto before choosing where nsys runs".to_owned(),
        )),
    }
}

/// The capture range of an engine: vLLM's CUDA profiler, else the client's workload range.
pub fn capture(engine: EngineKind) -> Capture {
    match engine {
        EngineKind::Vllm | EngineKind::VllmDocker => Capture::CudaProfilerApi,
        _ => Capture::Nvtx(WORKLOAD_RANGE.to_owned()),
    }
}

/// The arguments after `nsys`: `profile --trace=... --output=...` (the program to run follows).
pub fn nsys_profile_args(p: &NsysProfile) -> Vec<String> {
    let mut a = vec![
        "profile".to_owned(),
        format!("--trace={NSYS_TRACE}"),
        "--trace-fork-before-exec=true".to_owned(),
        "--cuda-graph-trace=node".to_owned(),
    ];
    match &p.capture {
        Capture::CudaProfilerApi => a.push("--capture-range=cudaProfilerApi".to_owned()),
        Capture::Nvtx(range) => {
            a.push("--capture-range=nvtx".to_owned());
            a.push(format!("--nvtx-capture={range}"));
        }
    }
    a.push(format!(
        "--capture-range-end={}",
        match p.end {
            CaptureEnd::Stop => "stop",
            CaptureEnd::StopShutdown => "stop-shutdown",
        }
    ));
    a.push(format!("--output={}", p.output));
    a.push("--force-overwrite=true".to_owned());
    a
}

/// The environment nsys needs: an NVTX capture range on a plain (unregistered) string needs
/// `NSYS_NVTX_PROFILER_REGISTER_ONLY=0`.
pub fn nsys_env(capture: &Capture) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Capture::Nvtx(_) = capture {
        env.insert("NSYS_NVTX_PROFILER_REGISTER_ONLY".to_owned(), "0".to_owned());
    }
    env
}

/// [`Placement::WrapsLab`]: `nsys profile ... <exe> <args...>`, the report at `<output>.nsys-rep`.
pub fn lab_command(engine: EngineKind, nsys: &str, exe: &str, args: &[String], output: &str) -> CommandLine {
    let p = NsysProfile { capture: capture(engine), end: CaptureEnd::Stop, output: output.to_owned() };
    let mut a = nsys_profile_args(&p);
    a.push(exe.to_owned());
    a.extend(args.iter().cloned());
    CommandLine { program: nsys.to_owned(), args: a, env: nsys_env(&p.capture) }
}

/// The arguments vLLM needs to be profiled: its CUDA profiler.
pub fn vllm_args() -> [String; 2] {
    ["--profiler-config".to_owned(), VLLM_PROFILER_CONFIG.to_owned()]
}

/// What process vLLM is given beyond its command line: its profiler arguments when the run is
/// profiled (the [`CommandWrapper`] hook of [`ProfileSpec`]).
pub fn vllm_process_args(spec: &LaunchSpec) -> Vec<String> {
    spec.wrapper.as_ref().map(|w| w.process_args()).unwrap_or_default()
}

impl ProfileSpec {
    /// What a profiled run is instrumented with: this profile as the launchers' command wrapper
    /// and as the run's hook around its workload.
    pub fn instruments(self) -> Instruments {
        Instruments { wrapper: std::sync::Arc::new(self), hook: std::sync::Arc::new(self) }
    }
}

/// The run's hook under a profile: the capture range spans the workload ([`WorkloadCapture`]).
impl RunHook for ProfileSpec {
    fn begin<'a>(&'a self, spec: &'a LaunchSpec, base_url: &'a str) -> HookFuture<'a, Box<dyn HookSpan>> {
        Box::pin(async move {
            let capture = WorkloadCapture::begin(Some(self), spec, base_url).await?;
            Ok(Box::new(capture) as Box<dyn HookSpan>)
        })
    }
}

impl HookSpan for WorkloadCapture {
    fn end<'a>(self: Box<Self>, spec: &'a LaunchSpec) -> HookFuture<'a, ()> {
        Box::pin(WorkloadCapture::end(*self, spec.kind(), spec.ready_timeout))
    }
}

/// The launchers' hooks under a profile: process vLLM gets its profiler's arguments, a container
/// run gets nsys around vLLM when nsys runs in the container, and the run's `profile/` is made
/// before the engine starts.
impl CommandWrapper for ProfileSpec {
    fn prepare(&self, run_dir: &Path) -> Result<(), EngineError> {
        prepare(Some(self), run_dir)
    }
    fn process_args(&self) -> Vec<String> {
        vllm_args().to_vec()
    }
    fn container_args(&self, args: Vec<String>, image: &str, run_dir: &Path) -> Vec<String> {
        container_args(args, image, Some(self), run_dir)
    }
}

/// The launcher hook of `vllm-docker`: rewrites `docker run` arguments so that nsys runs vLLM
/// inside the container. Unchanged when the run is not profiled or nsys runs elsewhere.
///
/// Before the image: `--entrypoint nsys` and the run's `profile/` mounted at
/// [`CONTAINER_PROFILE_DIR`]; after it: `profile ... vllm serve` ahead of vLLM's arguments, and
/// vLLM's profiler configuration at the end.
pub fn container_args(
    args: Vec<String>,
    image: &str,
    profile: Option<&ProfileSpec>,
    run_dir: &Path,
) -> Vec<String> {
    if profile.map(|p| p.placement) != Some(Placement::InContainer) {
        return args;
    }
    let Some(at) = args.iter().position(|a| a == image) else {
        return args;
    };
    let p = NsysProfile {
        capture: Capture::CudaProfilerApi,
        end: CaptureEnd::StopShutdown,
        output: format!("{CONTAINER_PROFILE_DIR}/{ENGINE_REPORT}"),
    };
    let mut out: Vec<String> = args[..at].to_vec();
    out.extend(["--entrypoint".to_owned(), "nsys".to_owned()]);
    out.extend([
        "--volume".to_owned(),
        format!("{}:{CONTAINER_PROFILE_DIR}:rw", run_dir.join("profile").display()),
    ]);
    out.push(image.to_owned());
    out.extend(nsys_profile_args(&p));
    out.extend(["vllm".to_owned(), "serve".to_owned()]);
    out.extend(args[at + 1..].iter().cloned());
    out.extend(vllm_args());
    out
}

/// The container command of a run: `<runtime> run ...` with nsys wrapped around vLLM when the
/// run is profiled in the container. The launcher runs exactly this; `profile --dry-run` prints
/// it.
pub fn container_command(run: &DockerRun, profile: Option<&ProfileSpec>, run_dir: &Path) -> CommandLine {
    engines::docker::container_command(run, profile.map(|p| p as &dyn CommandWrapper), run_dir)
}

/// The arguments after `nsys` for the NVTX and CUDA kernel summaries of `report` as CSV files
/// `<prefix>_nvtx_sum.csv` and `<prefix>_cuda_gpu_kern_sum.csv`.
pub fn stats_args(report: &str, prefix: &str) -> Vec<String> {
    vec![
        "stats".to_owned(),
        format!("--report={}", STATS_REPORTS.join(",")),
        "--format=csv".to_owned(),
        "--force-export=true".to_owned(),
        "--force-overwrite=true".to_owned(),
        format!("--output={prefix}"),
        report.to_owned(),
    ]
}

/// Where `nsys stats` runs: on the host, or in the engine's image (its nsys wrote the report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StatsHost {
    /// `nsys` on this host.
    Host { nsys: String },
    /// `<runtime> run --rm --entrypoint nsys -v profile:/kvlab-profile <image> stats ...`.
    Container { runtime: String, image: String },
}

/// The `nsys stats` command for a run's `profile/` directory and the report's base name.
pub fn stats_command(host: &StatsHost, profile_dir: &Path, report: &str) -> CommandLine {
    match host {
        StatsHost::Host { nsys } => {
            let rep = profile_dir.join(format!("{report}.nsys-rep"));
            let prefix = profile_dir.join("stats");
            CommandLine {
                program: nsys.clone(),
                args: stats_args(&rep.display().to_string(), &prefix.display().to_string()),
                env: BTreeMap::new(),
            }
        }
        StatsHost::Container { runtime, image } => {
            let mut args = vec![
                "run".to_owned(),
                "--rm".to_owned(),
                "--entrypoint".to_owned(),
                "nsys".to_owned(),
                "--volume".to_owned(),
                format!("{}:{CONTAINER_PROFILE_DIR}:rw", profile_dir.display()),
                image.clone(),
            ];
            args.extend(stats_args(
                &format!("{CONTAINER_PROFILE_DIR}/{report}.nsys-rep"),
                &format!("{CONTAINER_PROFILE_DIR}/stats"),
            ));
            CommandLine { program: runtime.clone(), args, env: BTreeMap::new() }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Planning (`profile --dry-run`): the engine's command as its launcher would run it.

/// The engine's command under the profile, as its launcher runs it on `port`: vllm-docker's
/// `<runtime> run ...` with nsys inside (always with the GPU flags: its launcher refuses a host
/// without a GPU), or process vLLM's `vllm serve ...` with its profiler on. `None` for engines in
/// the lab's process. Secrets appear only as `--env-file PATH` or in the environment.
pub fn planned_engine_command(spec: &LaunchSpec, runtime: &str, port: u16) -> Option<CommandLine> {
    let lmcache_yaml = spec.lmcache.is_some().then(|| spec.run_dir.join("lmcache.yaml"));
    match spec.kind() {
        EngineKind::VllmDocker => {
            let image = spec.engine.container().and_then(|c| c.image.clone());
            let image = image.or_else(|| engines::docker::default_image(EngineKind::VllmDocker))?;
            let run = engines::docker::docker_run(
                spec,
                ContainerHost { runtime, nvidia_gpu: true, owner: engines::orphans::Owner::current() },
                image,
                port,
                ContainerFiles {
                    lmcache_yaml,
                    engine_env: Some(spec.run_dir.join("engine.env")),
                    env_file: spec.secrets.hf_token().map(|_| engines::docker::secret_env_path(&spec.run_id)),
                    lmcache_mp_port: None,
                },
            );
            Some(engines::docker::container_command(&run, spec.wrapper.as_deref(), &spec.run_dir))
        }
        EngineKind::Vllm => {
            let serve = engines::vllm::VllmServe {
                model: &spec.model,
                host: "127.0.0.1",
                port,
                tensor_parallel: spec.tensor_parallel,
                pipeline_parallel: spec.pipeline_parallel,
                gpu_memory_utilization: spec.tier.vllm.gpu_memory_utilization,
                connector: if lmcache_yaml.is_some() {
                    engines::vllm::Connector::InProcess
                } else {
                    engines::vllm::Connector::None
                },
                gpu_blocks: spec.gpu_blocks,
                served_name: None,
                cpu: false,
                max_model_len: None,
                kv_cache_bytes: None,
            };
            let mut cmd = engines::vllm::vllm_process_command(
                &serve,
                spec.engine.vllm().and_then(|v| v.python.as_deref()),
                lmcache_yaml.as_deref(),
                &spec.gpus,
                spec.secrets.hf_token(),
            );
            cmd.args.extend(vllm_process_args(spec));
            Some(cmd)
        }
        _ => None,
    }
}

/// A command as one shell line with its environment (`KEY=value ...`), every secret value
/// shown as `<redacted>`: what `--dry-run` prints.
pub fn shell_line(cmd: &CommandLine, secrets: &Secrets) -> String {
    let mut parts: Vec<String> = cmd.env.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
    parts.push(quote(&cmd.program));
    parts.extend(cmd.args.iter().map(|a| quote(a)));
    secrets.redact(&parts.join(" "))
}

// ---------------------------------------------------------------------------------------------
// Parsing `nsys stats --format csv`.

/// Which side of the timeline a range belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The load generator's per-request ranges.
    Client,
    /// The engine's per-step ranges (vLLM, or the emulator named like vLLM).
    Engine,
    /// Anything else (the workload range, ranges of other libraries).
    Other,
}

/// Which phase a range measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Prefill,
    Decode,
    /// An engine step with both new and continuing requests.
    Mixed,
    Other,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Engine => "engine",
            Side::Other => "other",
        }
    }
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
            Phase::Mixed => "mixed",
            Phase::Other => "other",
        }
    }
}

/// Side and phase of an NVTX range name as `nsys stats` shows it (a leading `:` or
/// `domain:` is ignored).
///
/// - `prefill`, `decode`: the client's per-request ranges.
/// - `execute_new_{N}_cached_{M}` (vLLM's CUDA profiler mode, the emulator):
///   prefill when only new requests ran, decode when only continuing ones, else mixed.
/// - `execute_context_{N}({T})_generation_{M}({T})` (vLLM's torch profiler mode): the same by
///   the request counts.
pub fn classify(range: &str) -> (Side, Phase) {
    let name = range.rsplit(':').next().unwrap_or(range).trim();
    match name {
        "prefill" => return (Side::Client, Phase::Prefill),
        "decode" => return (Side::Client, Phase::Decode),
        _ => {}
    }
    let mix = |new: u64, cont: u64| match (new > 0, cont > 0) {
        (true, false) => Phase::Prefill,
        (false, true) => Phase::Decode,
        (true, true) => Phase::Mixed,
        (false, false) => Phase::Other,
    };
    if let Some(rest) = name.strip_prefix("execute_new_") {
        if let Some((new, cached)) = rest.split_once("_cached_") {
            if let (Ok(n), Ok(c)) = (new.parse::<u64>(), cached.parse::<u64>()) {
                return (Side::Engine, mix(n, c));
            }
        }
    }
    if let Some(rest) = name.strip_prefix("execute_context_") {
        let count = |s: &str| s.split('(').next().and_then(|n| n.parse::<u64>().ok());
        if let Some((ctx, generation)) = rest.split_once("_generation_") {
            if let (Some(n), Some(g)) = (count(ctx), count(generation)) {
                return (Side::Engine, mix(n, g));
            }
        }
    }
    (Side::Other, Phase::Other)
}

/// One row of `nvtx_sum`, classified: a line of `profile/nvtx_sum.csv`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NvtxRow {
    pub range: String,
    pub side: Side,
    pub phase: Phase,
    /// `StartEnd` or `PushPop` (empty where the nsys version has no Style column).
    pub style: String,
    pub instances: u64,
    pub total_ns: f64,
    pub avg_ns: f64,
    pub med_ns: Option<f64>,
    pub min_ns: f64,
    pub max_ns: f64,
}

/// One row of `cuda_gpu_kern_sum`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelRow {
    pub name: String,
    pub instances: u64,
    pub total_ns: f64,
    pub avg_ns: f64,
    pub min_ns: f64,
    pub max_ns: f64,
}

/// A parsed CSV table: its header and records, with 1-based line numbers.
struct Table<'a> {
    file: &'a str,
    /// The header's 1-based line (after any notices nsys printed first).
    header_line: usize,
    header: Vec<String>,
    rows: Vec<(usize, csv::StringRecord)>,
}

impl<'a> Table<'a> {
    /// Parses `text`, skipping anything before the header line (nsys prints notices such as
    /// "Processing [...] with [...]" first); the header is the first line starting with a
    /// quoted or plain `Time`.
    fn parse(file: &'a str, text: &str) -> Result<Table<'a>> {
        let start = text
            .lines()
            .position(|l| {
                let l = l.trim_start_matches('\u{feff}').trim_start_matches('"');
                l.starts_with("Time")
            })
            .ok_or_else(|| {
                ConfigError::config(
                    file,
                    1,
                    "(header)",
                    "no header line starting with `Time` (is this `nsys stats --format csv` output?)",
                )
            })?;
        let body: String = text.lines().skip(start).collect::<Vec<_>>().join("\n");
        let mut reader =
            csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(body.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| ConfigError::config(file, start + 1, "(header)", e.to_string()))?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        let mut rows = Vec::new();
        for rec in reader.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map_or(start + 1, |p| start + p.line() as usize);
                ConfigError::config(file, line, "(row)", e.to_string())
            })?;
            let line = rec.position().map_or(0, |p| start + p.line() as usize);
            rows.push((line, rec));
        }
        Ok(Table { file, header_line: start + 1, header, rows })
    }

    /// The index of the first column whose name is one of `names` (nsys renamed columns
    /// between versions: `Avg (ns)` was `Average`).
    fn col(&self, names: &[&str]) -> Result<usize> {
        self.header.iter().position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n))).ok_or_else(|| {
            ConfigError::config(
                self.file,
                self.header_line,
                "(header)",
                format!("no column {} in the header ({})", names.join(" / "), self.header.join(", ")),
            )
        })
    }

    fn opt_col(&self, names: &[&str]) -> Option<usize> {
        self.col(names).ok()
    }

    fn num(&self, line: usize, rec: &csv::StringRecord, col: usize) -> Result<f64> {
        let raw = rec.get(col).unwrap_or("").trim();
        let cleaned: String = raw.chars().filter(|c| *c != ',' && *c != '_').collect();
        cleaned.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| {
            ConfigError::config(
                self.file,
                line,
                self.header[col].as_str(),
                format!("expected a non-negative number, found {raw:?} (column {})", col + 1),
            )
        })
    }

    fn count(&self, line: usize, rec: &csv::StringRecord, col: usize) -> Result<u64> {
        let v = self.num(line, rec, col)?;
        if v.fract() != 0.0 || v > u64::MAX as f64 {
            return Err(ConfigError::config(
                self.file,
                line,
                self.header[col].as_str(),
                format!("expected a whole count, found {v} (column {})", col + 1),
            ));
        }
        Ok(v as u64)
    }
}

const TOTAL: &[&str] = &["Total Time (ns)", "Total Time"];
const INSTANCES: &[&str] = &["Instances", "Count", "Num Calls"];
const AVG: &[&str] = &["Avg (ns)", "Average (ns)", "Average"];
const MED: &[&str] = &["Med (ns)", "Median (ns)", "Median"];
const MIN: &[&str] = &["Min (ns)", "Minimum (ns)", "Minimum"];
const MAX: &[&str] = &["Max (ns)", "Maximum (ns)", "Maximum"];

/// Parses `nsys stats --report nvtx_sum --format csv` output; `file` names it in errors.
pub fn parse_nvtx_sum(file: &str, text: &str) -> Result<Vec<NvtxRow>> {
    let t = Table::parse(file, text)?;
    let (total, inst, avg, min, max) =
        (t.col(TOTAL)?, t.col(INSTANCES)?, t.col(AVG)?, t.col(MIN)?, t.col(MAX)?);
    let range = t.col(&["Range", "Name"])?;
    let (med, style) = (t.opt_col(MED), t.opt_col(&["Style"]));
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, rec) in &t.rows {
        let name = rec.get(range).unwrap_or("").trim().to_owned();
        let (side, phase) = classify(&name);
        out.push(NvtxRow {
            side,
            phase,
            style: style.and_then(|c| rec.get(c)).unwrap_or("").trim().to_owned(),
            instances: t.count(*line, rec, inst)?,
            total_ns: t.num(*line, rec, total)?,
            avg_ns: t.num(*line, rec, avg)?,
            med_ns: med.map(|c| t.num(*line, rec, c)).transpose()?,
            min_ns: t.num(*line, rec, min)?,
            max_ns: t.num(*line, rec, max)?,
            range: name,
        });
    }
    Ok(out)
}

/// Parses `nsys stats --report cuda_gpu_kern_sum --format csv` output.
pub fn parse_kern_sum(file: &str, text: &str) -> Result<Vec<KernelRow>> {
    let t = Table::parse(file, text)?;
    let (total, inst, avg, min, max) =
        (t.col(TOTAL)?, t.col(INSTANCES)?, t.col(AVG)?, t.col(MIN)?, t.col(MAX)?);
    let name = t.col(&["Name"])?;
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, rec) in &t.rows {
        out.push(KernelRow {
            name: rec.get(name).unwrap_or("").trim().to_owned(),
            instances: t.count(*line, rec, inst)?,
            total_ns: t.num(*line, rec, total)?,
            avg_ns: t.num(*line, rec, avg)?,
            min_ns: t.num(*line, rec, min)?,
            max_ns: t.num(*line, rec, max)?,
        });
    }
    Ok(out)
}

/// Writes rows as CSV (`profile/nvtx_sum.csv`, `profile/cuda_gpu_kern_sum.csv`).
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), ProfileError> {
    let csv_err = |source| ProfileError::Csv { path: path.to_path_buf(), source };
    let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
    for row in rows {
        w.serialize(row).map_err(csv_err)?;
    }
    Ok(w.flush().map_err(|e| ConfigError::io(path, e))?)
}

/// Why the profile's summaries could not be made ([`summarize`], [`write_csv`]).
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// nsys wrote no report: the capture range never started, or nsys failed.
    #[error(
        "{}: no Nsight Systems report; nsys collected nothing (did the capture range start? see engine.log)",
        report.display()
    )]
    NoReport { report: PathBuf },
    /// `nsys stats` could not be started.
    #[error("could not run `{program}` for nsys stats: {source}")]
    StatsSpawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// `nsys stats` ran and failed; its output is in `log`.
    #[error("`nsys stats` failed ({status}); its output is in {}", log.display())]
    StatsFailed { status: std::process::ExitStatus, log: PathBuf },
    /// A summary could not be written as CSV.
    #[error("{}: {source}", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    /// A file could not be read or written, or `nsys stats`' CSV is malformed (`FILE:LINE: FIELD:
    /// message`).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

// ---------------------------------------------------------------------------------------------
// I/O around the run.

/// The capture around a workload: opened by [`WorkloadCapture::begin`] before the load
/// generator starts, closed by [`WorkloadCapture::end`] after it finished.
#[derive(Debug)]
pub struct WorkloadCapture {
    kind: CaptureKind,
}

#[derive(Debug)]
enum CaptureKind {
    None,
    /// The client's `workload` NVTX range.
    Nvtx(#[allow(dead_code)] loadgen::nvtx::WorkloadRange),
    /// vLLM's profiler: `POST /stop_profile` at the end; the container (if any) to wait for.
    Vllm {
        base_url: String,
        container: Option<(String, String)>,
    },
}

impl WorkloadCapture {
    /// Starts the capture for `spec`'s engine under `profile` (nothing when the run is not
    /// profiled).
    pub async fn begin(
        profile: Option<&ProfileSpec>,
        spec: &LaunchSpec,
        base_url: &str,
    ) -> Result<WorkloadCapture, EngineError> {
        let Some(profile) = profile else { return Ok(WorkloadCapture { kind: CaptureKind::None }) };
        let kind = match capture(spec.kind()) {
            Capture::Nvtx(_) => CaptureKind::Nvtx(loadgen::nvtx::WorkloadRange::start()),
            Capture::CudaProfilerApi => {
                post(spec.kind(), base_url, "/start_profile").await?;
                let container = (profile.placement == Placement::InContainer).then(|| {
                    (
                        engines::HostProbe::detect().container_runtime.unwrap_or_else(|| "docker".to_owned()),
                        engines::docker::container_name(&spec.run_id),
                    )
                });
                CaptureKind::Vllm { base_url: base_url.to_owned(), container }
            }
        };
        Ok(WorkloadCapture { kind })
    }

    /// Ends the capture. In a container, nsys then shuts vLLM down and writes its report: this
    /// waits (up to `wait`) for the container to exit so that the report is complete.
    pub async fn end(self, engine: EngineKind, wait: Duration) -> Result<(), EngineError> {
        match self.kind {
            CaptureKind::None | CaptureKind::Nvtx(_) => Ok(()),
            CaptureKind::Vllm { base_url, container } => {
                post(engine, &base_url, "/stop_profile").await?;
                if let Some((runtime, name)) = container {
                    let waited = tokio::time::timeout(
                        wait,
                        tokio::process::Command::new(&runtime)
                            .args(["wait", &name])
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null())
                            .status(),
                    )
                    .await;
                    if waited.is_err() {
                        return Err(EngineError::launch(
                            engine.as_str(),
                            format!(
                                "nsys did not finish its report within {} s after the capture ended; the \
                                 container {name} is removed and its report may be incomplete",
                                wait.as_secs()
                            ),
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

async fn post(engine: EngineKind, base_url: &str, path: &str) -> Result<(), EngineError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| EngineError::launch(engine.as_str(), e.to_string()))?;
    let url = format!("{base_url}{path}");
    let resp = client.post(&url).send().await.map_err(|e| {
        EngineError::launch(
            engine.as_str(),
            format!("POST {url} failed ({e}); vLLM's profiler could not be driven"),
        )
    })?;
    if !resp.status().is_success() {
        return Err(EngineError::launch(
            engine.as_str(),
            format!(
                "POST {url} answered {}: vLLM was not started with its CUDA profiler (--profiler-config \
                 {VLLM_PROFILER_CONFIG}; vLLM 0.13 or later)",
                resp.status()
            ),
        ));
    }
    Ok(())
}

/// What [`summarize`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileSummary {
    pub report: PathBuf,
    pub nvtx: Vec<NvtxRow>,
    pub kernels: Vec<KernelRow>,
}

/// After the capture: `nsys stats` on `profile/<report>.nsys-rep`, parsed into
/// `profile/nvtx_sum.csv` and `profile/cuda_gpu_kern_sum.csv`. A report without CUDA kernels
/// (the emulator, llama.cpp on CPU) has no kernel summary: that is not an error.
pub fn summarize(host: &StatsHost, profile_dir: &Path, report: &str) -> Result<ProfileSummary, ProfileError> {
    let rep = profile_dir.join(format!("{report}.nsys-rep"));
    if !rep.is_file() {
        return Err(ProfileError::NoReport { report: rep });
    }
    let cmd = stats_command(host, profile_dir, report);
    let out = std::process::Command::new(&cmd.program)
        .args(&cmd.args)
        .output()
        .map_err(|source| ProfileError::StatsSpawn { program: cmd.program.clone(), source })?;
    std::fs::write(profile_dir.join("stats.log"), [out.stdout.as_slice(), out.stderr.as_slice()].concat())
        .map_err(|e| ConfigError::io(profile_dir.join("stats.log"), e))?;
    if !out.status.success() {
        return Err(ProfileError::StatsFailed { status: out.status, log: profile_dir.join("stats.log") });
    }
    let read = |name: &str| -> Result<Option<(PathBuf, String)>> {
        let path = profile_dir.join(format!("stats_{name}.csv"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some((path, text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConfigError::io(path, e)),
        }
    };
    let nvtx = match read("nvtx_sum")? {
        Some((path, text)) => parse_nvtx_sum(&path.display().to_string(), &text)?,
        None => Vec::new(),
    };
    let kernels = match read("cuda_gpu_kern_sum")? {
        Some((path, text)) => parse_kern_sum(&path.display().to_string(), &text)?,
        None => Vec::new(),
    };
    write_csv(&profile_dir.join(NVTX_SUM_CSV), &nvtx)?;
    write_csv(&profile_dir.join(KERN_SUM_CSV), &kernels)?;
    Ok(ProfileSummary { report: rep, nvtx, kernels })
}

/// Refuses a profile that cannot work, saying what to install: nsys on the host (or in the
/// engine's image for vllm-docker), a GPU for vLLM.
pub fn preflight(engine: EngineKind, probe: &HostProbe, image: &str) -> Result<()> {
    let needs_gpu = matches!(engine, EngineKind::Vllm | EngineKind::VllmDocker);
    if needs_gpu && !probe.nvidia_gpu {
        return Err(ConfigError::Invalid(format!(
            "profile --engine {engine}: no NVIDIA GPU was found (no nvidia-smi on PATH, no /dev/nvidia0); \
             vLLM needs one. Install the NVIDIA driver (`nix develop` makes NVML find the host's, and \
             provides nsys), or rehearse the pipeline on a machine without a GPU with --engine emulated"
        )));
    }
    match placement(engine)? {
        Placement::WrapsLab => {
            if engines::find_on_path("nsys").is_none() {
                return Err(ConfigError::Invalid(format!(
                    "profile: `nsys` (Nsight Systems) is not on PATH; {INSTALL_NSYS}"
                )));
            }
        }
        Placement::InContainer => {
            let runtime = probe.container_runtime.as_deref().ok_or_else(|| {
                ConfigError::Invalid(
                    "profile --engine vllm-docker: neither docker nor podman is on PATH; install one, or \
                     profile --engine vllm from `nix develop`, which provides nsys"
                        .to_owned(),
                )
            })?;
            image_has_nsys(runtime, image)?;
        }
    }
    Ok(())
}

/// The image exists here and has `nsys`: `<runtime> image inspect`, then `<runtime> run --rm
/// --entrypoint nsys IMAGE --version`.
fn image_has_nsys(runtime: &str, image: &str) -> Result<()> {
    let lab_image = KvlabImage::VllmLmcache.latest();
    let build = format!(
        "`cargo xtask images vllm-lmcache` builds the lab's image {lab_image} (vLLM + LMCache + Nsight \
         Systems; profile's default), or pass an image with nsys through --image; or profile --engine \
         vllm from `nix develop`, which provides nsys"
    );
    let quiet = |args: &[&str]| {
        std::process::Command::new(runtime)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
    };
    let inspect = quiet(&["image", "inspect", "--format", "{{.Id}}", image]).map_err(|e| {
        ConfigError::Invalid(format!("profile --engine vllm-docker: could not run `{runtime}`: {e}"))
    })?;
    if !inspect.status.success() {
        return Err(ConfigError::Invalid(format!(
            "profile --engine vllm-docker: the image {image} is not here (`{runtime} image inspect` failed); {build}"
        )));
    }
    let version = quiet(&["run", "--rm", "--entrypoint", "nsys", image, "--version"]).map_err(|e| {
        ConfigError::Invalid(format!("profile --engine vllm-docker: could not run `{runtime}`: {e}"))
    })?;
    if !version.status.success() {
        let why = String::from_utf8_lossy(&version.stderr);
        let why = why.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_owned();
        return Err(ConfigError::Invalid(format!(
            "profile --engine vllm-docker: the image {image} has no `nsys` (`{runtime} run --entrypoint nsys \
             {image} --version` failed: {why}); nsys runs inside the engine's container. {build}"
        )));
    }
    Ok(())
}

/// Creates the run's `profile/` directory when the run is profiled. The container mounts it,
/// and the engine image may run as an unprivileged user (the lab's vLLM image does): it is made
/// writable for that user.
pub fn prepare(profile: Option<&ProfileSpec>, run_dir: &Path) -> Result<(), EngineError> {
    let Some(profile) = profile else { return Ok(()) };
    let dir = run_dir.join("profile");
    std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
    if profile.placement == Placement::InContainer {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| EngineError::io(&dir, e))?;
    }
    Ok(())
}
