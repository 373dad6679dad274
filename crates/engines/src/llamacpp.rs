//! llama.cpp: real inference on CPU (or GPU) through `llama-server` on PATH, or the pip package
//! `xllamacpp` via an embedded launcher script written into the run directory.
//!
//! Tiers: `baseline` = host prompt cache off (`cache_ram_mib` 0), `cpu` = on. `disk` and `redis`
//! have no llama.cpp equivalent and are refused.

use std::path::{Path, PathBuf};

use super::process::{self, CommandLine};
use super::{reserve_port, GpuSelection, Guard, LaunchFuture, LaunchSpec, Launcher, RunningEngine};
use crate::error::{EngineError, Result};

/// The launcher script for xllamacpp, written into the run directory.
pub const SERVE_SCRIPT: &str = include_str!("../python/serve_llamacpp.py");
/// The tiny-model generator (used by `cargo xtask ci` to make `.kvlab/models/tiny.gguf`).
pub const GEN_MODEL_SCRIPT: &str = include_str!("../python/gen_model.py");
/// The xllamacpp version the launcher script is written for (`CommonParams` changes between releases).
pub const XLLAMACPP_VERSION: &str = "2026.10.11549";

/// The command that prepares a Python environment for this engine.
pub fn setup_hint() -> String {
    format!(
        "python3 -m venv .venv && .venv/bin/pip install xllamacpp=={XLLAMACPP_VERSION} gguf numpy \
         (or set KVLAB_PYTHON to a Python that has them)"
    )
}

/// How the server is started.
#[derive(Debug, Clone, PartialEq)]
pub enum LlamacppRuntime {
    /// `llama-server` found on PATH.
    Binary(PathBuf),
    /// A Python with xllamacpp; the script path is where the launcher writes [`SERVE_SCRIPT`].
    Python { python: PathBuf, script: PathBuf },
}

/// Server settings derived from the tier.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamacppServe<'a> {
    pub model_path: &'a Path,
    pub alias: &'a str,
    pub port: u16,
    pub ctx: u32,
    pub parallel: u32,
    pub threads: u32,
    pub cache_ram_mib: u64,
}

/// The command line for a runtime, with `CUDA_VISIBLE_DEVICES` for the chosen GPUs and
/// `HF_TOKEN` (llama.cpp reads it to download gated models) in its environment.
pub fn llamacpp_command(
    runtime: &LlamacppRuntime,
    s: &LlamacppServe<'_>,
    gpus: &GpuSelection,
    hf_token: Option<&str>,
) -> CommandLine {
    let (program, mut args) = match runtime {
        LlamacppRuntime::Binary(bin) => (
            bin.display().to_string(),
            vec![
                "--model".to_owned(),
                s.model_path.display().to_string(),
                "--host".to_owned(),
                "127.0.0.1".to_owned(),
                "--port".to_owned(),
                s.port.to_string(),
                "--ctx-size".to_owned(),
                s.ctx.to_string(),
                "--parallel".to_owned(),
                s.parallel.to_string(),
                "--threads".to_owned(),
                s.threads.to_string(),
                "--cache-ram".to_owned(),
                s.cache_ram_mib.to_string(),
                "--metrics".to_owned(),
            ],
        ),
        LlamacppRuntime::Python { python, script } => (
            python.display().to_string(),
            vec![
                script.display().to_string(),
                s.model_path.display().to_string(),
                "--port".to_owned(),
                s.port.to_string(),
                "--ctx".to_owned(),
                s.ctx.to_string(),
                "--parallel".to_owned(),
                s.parallel.to_string(),
                "--threads".to_owned(),
                s.threads.to_string(),
                "--cache-ram-mib".to_owned(),
                s.cache_ram_mib.to_string(),
            ],
        ),
    };
    args.extend(["--alias".to_owned(), s.alias.to_owned()]);
    CommandLine { program, args, env: process::engine_env(gpus, hf_token) }
}

/// Refuses tiers llama.cpp cannot express; returns the host prompt cache size.
pub fn cache_ram_for(tier: &crate::config::TierConfig) -> Result<u64> {
    if !tier.llamacpp.supported {
        return Err(EngineError::launch(
            "llamacpp",
            format!(
                "llama.cpp cannot express the `{}` tier (it has no LMCache disk or remote store); use --tier \
                 baseline (host prompt cache off) or --tier cpu (on), or --engine emulated",
                tier.tier
            ),
        ));
    }
    Ok(tier.llamacpp.cache_ram_mib)
}

pub(crate) struct LlamacppLauncher;

impl Launcher for LlamacppLauncher {
    fn name(&self) -> &'static str {
        "llamacpp"
    }

    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> LaunchFuture<'a> {
        Box::pin(async move {
            let super::EngineSettings::Llamacpp(settings) = &spec.engine else {
                return Err(EngineError::WrongEngine {
                    launcher: super::EngineKind::Llamacpp,
                    given: spec.kind(),
                });
            };
            let cache_ram_mib = cache_ram_for(&spec.tier)?;
            let model_path = settings.model.as_deref().ok_or_else(|| {
                EngineError::launch(
                    "llamacpp",
                    "no GGUF model: pass --model-path FILE.gguf or set KVLAB_LLAMACPP_MODEL; `cargo xtask ci` \
                     generates .kvlab/models/tiny.gguf",
                )
            })?;
            if !model_path.is_file() {
                return Err(EngineError::launch(
                    "llamacpp",
                    format!(
                        "model file {} does not exist; generate the tiny test model with \
                         `.venv/bin/python crates/engines/python/gen_model.py {}`",
                        model_path.display(),
                        model_path.display()
                    ),
                ));
            }
            let runtime = match (&settings.python, super::find_on_path("llama-server")) {
                (Some(python), _) => {
                    let script = spec.run_dir.join("serve_llamacpp.py");
                    std::fs::write(&script, SERVE_SCRIPT).map_err(|e| EngineError::io(&script, e))?;
                    LlamacppRuntime::Python { python: python.clone(), script }
                }
                (None, Some(bin)) => LlamacppRuntime::Binary(bin),
                (None, None) => {
                    return Err(EngineError::launch(
                        "llamacpp",
                        format!(
                            "neither a Python with xllamacpp nor `llama-server` on PATH was found; {}",
                            setup_hint()
                        ),
                    ))
                }
            };
            let port = reserve_port("llamacpp", spec.port)?;
            let alias = &spec.model;
            let serve =
                LlamacppServe { model_path, alias, port, ctx: 8192, parallel: 1, threads: 2, cache_ram_mib };
            let cmd = llamacpp_command(&runtime, &serve, &spec.gpus, spec.secrets.hf_token());
            let log = spec.run_dir.join("engine.log");
            let mut guard = process::spawn("llamacpp", &cmd, &log, &spec.secrets)?;
            let base_url = format!("http://127.0.0.1:{port}");
            process::wait_ready("llamacpp", &base_url, spec.ready_timeout, &mut guard, &log, &spec.secrets)
                .await?;
            Ok(RunningEngine {
                base_url,
                pid: guard.pid(),
                guard: Guard::Process(guard),
                sidecars: Vec::new(),
            })
        })
    }
}
