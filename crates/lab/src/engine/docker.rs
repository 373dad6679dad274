//! Containers: `vllm-docker` (vLLM + LMCache image) and `docker` (any `--image`), with docker or
//! podman. The container is named and labelled with the run id, publishes its port on 127.0.0.1
//! only, gets `HF_TOKEN` through `--env-file` (never on the command line), and is removed with
//! `docker rm -f` when the run ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::process::{self, CommandLine, Liveness};
use super::vllm::{write_lmcache_yaml, VllmServe};
use super::{
    reserve_port, EngineKind, GpuSelection, Guard, LaunchFuture, LaunchSpec, Launcher, RunningEngine,
};
use crate::error::{LabError, Result};

/// The pinned vLLM + LMCache image.
pub const VLLM_LMCACHE_IMAGE: &str = "lmcache/vllm-openai:v0.3.7";

/// Where the LMCache YAML and the disk tier appear inside the container.
pub const CONTAINER_LMCACHE_YAML: &str = "/etc/kvlab/lmcache.yaml";
pub const CONTAINER_DISK_DIR: &str = "/kvcache";
/// The port the engine listens on inside the container.
pub const CONTAINER_PORT: u16 = 8000;

/// Everything `docker run` needs. Pure data: [`docker_run_args`] turns it into arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerRun {
    /// `docker` or `podman`. Podman gets CDI device flags.
    pub runtime: String,
    pub run_id: String,
    pub image: String,
    pub host_port: u16,
    pub gpus: GpuSelection,
    /// vLLM settings; `None` for a generic `docker` engine image (run with its own command).
    pub vllm: Option<VllmContainer>,
    /// The generated LMCache YAML on the host, mounted read-only.
    pub lmcache_yaml: Option<PathBuf>,
    /// The disk tier's directory on the host, mounted read-write.
    pub disk_dir: Option<PathBuf>,
    /// The dotenv file with HF_TOKEN.
    pub env_file: Option<PathBuf>,
    /// Share the host network (the Redis tier: Redis listens on the host's loopback).
    pub host_network: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VllmContainer {
    pub model: String,
    pub tensor_parallel: u32,
    pub gpu_memory_utilization: f64,
}

/// The container name for a run.
pub fn container_name(run_id: &str) -> String {
    format!("kvlab-{run_id}")
}

/// The arguments after the runtime binary (`docker` / `podman`).
pub fn docker_run_args(run: &DockerRun) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "--detach".into(), "--init".into()];
    a.extend(["--name".into(), container_name(&run.run_id)]);
    a.extend(["--label".into(), format!("kvlab.run-id={}", run.run_id)]);
    a.extend(["--label".into(), "kvlab.managed=true".into()]);
    a.push("--ipc=host".into());
    match (&run.gpus, run.runtime.as_str()) {
        (GpuSelection::All, "podman") => a.extend(["--device".into(), "nvidia.com/gpu=all".into()]),
        (GpuSelection::All, _) => a.extend(["--gpus".into(), "all".into()]),
        (sel, "podman") => {
            for d in sel.device_list().unwrap_or_default().split(',') {
                a.extend(["--device".into(), format!("nvidia.com/gpu={d}")]);
            }
        }
        (sel, _) => {
            a.extend(["--gpus".into(), format!("\"device={}\"", sel.device_list().unwrap_or_default())])
        }
    }
    let container_port = if run.host_network { run.host_port } else { CONTAINER_PORT };
    if run.host_network {
        a.push("--network=host".into());
    } else {
        a.extend(["--publish".into(), format!("127.0.0.1:{}:{CONTAINER_PORT}", run.host_port)]);
    }
    if let Some(yaml) = &run.lmcache_yaml {
        a.extend(["--volume".into(), format!("{}:{CONTAINER_LMCACHE_YAML}:ro", yaml.display())]);
        a.extend(["--env".into(), format!("LMCACHE_CONFIG_FILE={CONTAINER_LMCACHE_YAML}")]);
    }
    if let Some(dir) = &run.disk_dir {
        a.extend(["--volume".into(), format!("{}:{CONTAINER_DISK_DIR}:rw", dir.display())]);
    }
    if let Some(env_file) = &run.env_file {
        a.extend(["--env-file".into(), env_file.display().to_string()]);
    }
    a.push(run.image.clone());
    if let Some(v) = &run.vllm {
        let host = if run.host_network { "127.0.0.1" } else { "0.0.0.0" };
        a.extend(
            VllmServe {
                model: &v.model,
                host,
                port: container_port,
                tensor_parallel: v.tensor_parallel,
                gpu_memory_utilization: v.gpu_memory_utilization,
                lmcache: run.lmcache_yaml.is_some(),
            }
            .args(),
        );
    }
    a
}

/// A running container: `docker rm -f` on stop or drop; `docker logs -f` feeds engine.log.
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
        // `rm -f` sends SIGKILL after the stop signal; give vLLM a chance to exit first.
        let _ = std::process::Command::new(&self.runtime)
            .args(["stop", "--time", "10", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::process::Command::new(&self.runtime)
            .args(["rm", "-f", &self.name])
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
            .args(["inspect", "--format", "{{.State.Running}}", &self.name])
            .output()
            .ok()?;
        let running = String::from_utf8_lossy(&out.stdout).trim() == "true";
        (!running).then(|| "the engine container exited at start".to_owned())
    }
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
            let probe = super::HostProbe::detect();
            let runtime = probe.container_runtime.ok_or_else(|| {
                LabError::launch(
                    engine,
                    "no container runtime: neither `docker` nor `podman` is on PATH; install Docker \
                     (https://docs.docker.com/engine/install/) or Podman, or use --engine emulated",
                )
            })?;
            let vllm = self.kind == EngineKind::VllmDocker;
            if vllm && !probe.nvidia_gpu {
                return Err(LabError::launch(
                    engine,
                    "no NVIDIA GPU found (no nvidia-smi on PATH, no /dev/nvidia0); vLLM needs one. Install the \
                     NVIDIA driver and container toolkit, or use --engine emulated",
                ));
            }
            let image = match (&spec.image, vllm) {
                (Some(i), _) => i.clone(),
                (None, true) => VLLM_LMCACHE_IMAGE.to_owned(),
                (None, false) => return Err(LabError::launch(engine, "--engine docker needs --image IMAGE")),
            };
            let port = reserve_port(engine, spec.port)?;
            let yaml = if vllm { write_lmcache_yaml(spec, CONTAINER_DISK_DIR)? } else { None };
            let run = DockerRun {
                runtime: runtime.clone(),
                run_id: spec.run_id.clone(),
                image,
                host_port: port,
                gpus: spec.gpus.clone(),
                vllm: vllm.then(|| VllmContainer {
                    model: spec.model.clone(),
                    tensor_parallel: spec.tensor_parallel,
                    gpu_memory_utilization: spec.tier.vllm.gpu_memory_utilization,
                }),
                disk_dir: (yaml.is_some() && spec.tier.tier == crate::config::Tier::Disk)
                    .then(|| spec.disk_dir.clone()),
                lmcache_yaml: yaml,
                env_file: spec.secrets.env_file().map(Path::to_owned),
                host_network: spec.tier.tier == crate::config::Tier::Redis,
            };
            let log = spec.run_dir.join("engine.log");
            let cmd = CommandLine {
                program: runtime.clone(),
                args: docker_run_args(&run),
                env: Default::default(),
            };
            std::fs::write(&log, format!("$ {}\n", cmd.display(&spec.secrets)))
                .map_err(|e| LabError::io(&log, e))?;
            let out = tokio::process::Command::new(&runtime)
                .args(&cmd.args)
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| LabError::launch(engine, format!("could not run `{runtime}`: {e}")))?;
            let name = container_name(&spec.run_id);
            let mut guard =
                ContainerGuard { runtime: runtime.clone(), name: name.clone(), logs: None, removed: false };
            if !out.status.success() {
                let stderr = spec.secrets.redact(String::from_utf8_lossy(&out.stderr).trim());
                return Err(LabError::launch(engine, format!("`{runtime} run` failed: {stderr}")));
            }
            let logs = CommandLine {
                program: runtime.clone(),
                args: vec!["logs".into(), "--follow".into(), name],
                env: Default::default(),
            };
            guard.logs = Some(process::spawn("docker", &logs, &log, &spec.secrets)?);
            let base_url = format!("http://127.0.0.1:{port}");
            process::wait_ready(engine, &base_url, spec.ready_timeout, &mut guard, &log, &spec.secrets)
                .await?;
            Ok(RunningEngine { base_url, pid: None, guard: Guard::Container(guard) })
        })
    }
}
