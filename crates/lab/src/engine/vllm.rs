//! vLLM: `vllm serve` with LMCache, as a local process or (through [`super::docker`]) a container.

use std::path::Path;

use super::process::{self, CommandLine};
use super::{reserve_port, GpuSelection, Guard, LaunchFuture, LaunchSpec, Launcher, RunningEngine};
use crate::error::{LabError, Result};

/// The KV connector vLLM uses for LMCache.
pub const KV_TRANSFER_CONFIG: &str = r#"{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}"#;

/// What `vllm serve` needs, independent of where it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct VllmServe<'a> {
    pub model: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub tensor_parallel: u32,
    pub pipeline_parallel: u32,
    pub gpu_memory_utilization: f64,
    /// With LMCache: the connector is configured.
    pub lmcache: bool,
    /// `--num-gpu-blocks-override` (a baseline point's cache size); `None`: what fits the GPU.
    pub gpu_blocks: Option<u64>,
}

impl VllmServe<'_> {
    /// The arguments after `vllm serve`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--model".to_owned(),
            self.model.to_owned(),
            "--host".to_owned(),
            self.host.to_owned(),
            "--port".to_owned(),
            self.port.to_string(),
            "--tensor-parallel-size".to_owned(),
            self.tensor_parallel.to_string(),
            "--pipeline-parallel-size".to_owned(),
            self.pipeline_parallel.to_string(),
            "--gpu-memory-utilization".to_owned(),
            format!("{}", self.gpu_memory_utilization),
        ];
        if self.lmcache {
            args.push("--kv-transfer-config".to_owned());
            args.push(KV_TRANSFER_CONFIG.to_owned());
        }
        if let Some(n) = self.gpu_blocks {
            args.push("--num-gpu-blocks-override".to_owned());
            args.push(n.to_string());
        }
        args
    }
}

/// The local-process command: `vllm serve …` with `LMCACHE_CONFIG_FILE`, `CUDA_VISIBLE_DEVICES`
/// and `HF_TOKEN` in the environment (never in argv).
pub fn vllm_process_command(
    serve: &VllmServe<'_>,
    lmcache_yaml: Option<&Path>,
    gpus: &GpuSelection,
    hf_token: Option<&str>,
) -> CommandLine {
    let mut env = process::engine_env(gpus, hf_token);
    if let Some(yaml) = lmcache_yaml {
        env.insert("LMCACHE_CONFIG_FILE".to_owned(), yaml.display().to_string());
    }
    let mut args = vec!["serve".to_owned()];
    args.extend(serve.args());
    CommandLine { program: "vllm".to_owned(), args, env }
}

/// Writes the LMCache YAML of a spec into the run directory; returns its path.
///
/// `{disk_dir}` becomes `disk_dir` (the host path, or the container's mount point) and
/// `{redis_url}` the run's Redis URL.
pub(crate) fn write_lmcache_yaml(spec: &LaunchSpec, disk_dir: &str) -> Result<Option<std::path::PathBuf>> {
    let Some(lmcache) = &spec.lmcache else { return Ok(None) };
    let mut lmcache = lmcache.clone();
    lmcache.substitute(disk_dir, spec.emulator.redis_url.as_deref().unwrap_or(crate::run::DEFAULT_REDIS_URL));
    let path = spec.run_dir.join("lmcache.yaml");
    std::fs::write(&path, lmcache.to_yaml()).map_err(|e| LabError::io(&path, e))?;
    Ok(Some(path))
}

pub(crate) struct VllmLauncher;

impl Launcher for VllmLauncher {
    fn name(&self) -> &'static str {
        "vllm"
    }

    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> LaunchFuture<'a> {
        Box::pin(async move {
            if super::find_on_path("vllm").is_none() {
                return Err(LabError::launch(
                    "vllm",
                    "`vllm` is not on PATH; install it (`pip install vllm lmcache`, or `nix develop`), or use \
                     --engine vllm-docker",
                ));
            }
            let port = reserve_port("vllm", spec.port)?;
            let yaml = write_lmcache_yaml(spec, &spec.disk_dir.display().to_string())?;
            let serve = VllmServe {
                model: &spec.model,
                host: "127.0.0.1",
                port,
                tensor_parallel: spec.tensor_parallel,
                pipeline_parallel: spec.pipeline_parallel,
                gpu_memory_utilization: spec.tier.vllm.gpu_memory_utilization,
                lmcache: yaml.is_some(),
                gpu_blocks: spec.emulator.gpu_blocks,
            };
            let mut cmd = vllm_process_command(&serve, yaml.as_deref(), &spec.gpus, spec.secrets.hf_token());
            cmd.args.extend(crate::profile::vllm_process_args(spec));
            let log = spec.run_dir.join("engine.log");
            let mut guard = process::spawn("vllm", &cmd, &log, &spec.secrets)?;
            let base_url = format!("http://127.0.0.1:{port}");
            process::wait_ready("vllm", &base_url, spec.ready_timeout, &mut guard, &log, &spec.secrets)
                .await?;
            Ok(RunningEngine { base_url, pid: guard.pid(), guard: Guard::Process(guard) })
        })
    }
}
