//! The names a run is configured with: which engine serves it and which GPUs it is given.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{ConfigError, Result};

/// Which engine serves the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// vllm-docker where an NVIDIA GPU and a container runtime are found, else emulated.
    Auto,
    Emulated,
    VllmDocker,
    Docker,
    Vllm,
    Llamacpp,
    External,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::Emulated => "emulated",
            EngineKind::VllmDocker => "vllm-docker",
            EngineKind::Docker => "docker",
            EngineKind::Vllm => "vllm",
            EngineKind::Llamacpp => "llamacpp",
            EngineKind::External => "external",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngineKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<EngineKind> {
        Ok(match s {
            "auto" => EngineKind::Auto,
            "emulated" => EngineKind::Emulated,
            "vllm-docker" => EngineKind::VllmDocker,
            "docker" => EngineKind::Docker,
            "vllm" => EngineKind::Vllm,
            "llamacpp" => EngineKind::Llamacpp,
            "external" => EngineKind::External,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown engine `{other}`; expected auto, emulated, vllm-docker, docker, vllm, llamacpp or external"
                )))
            }
        })
    }
}

/// GPUs given to the engine: `--gpus N` or a device list `--gpus 0,2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum GpuSelection {
    /// Whatever the engine sees (all GPUs for containers).
    All,
    Count(u32),
    Devices(Vec<u32>),
}

impl GpuSelection {
    /// How many GPUs this selection gives, if known.
    pub fn count(&self) -> Option<u32> {
        match self {
            GpuSelection::All => None,
            GpuSelection::Count(n) => Some(*n),
            GpuSelection::Devices(d) => Some(d.len() as u32),
        }
    }

    /// The selection as `--gpus` takes it.
    pub fn flag(&self) -> String {
        match self {
            GpuSelection::All => "all".to_owned(),
            GpuSelection::Count(n) => n.to_string(),
            GpuSelection::Devices(d) => d.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
        }
    }

    /// The device ids (`CUDA_VISIBLE_DEVICES`), if the selection names them.
    pub fn device_list(&self) -> Option<String> {
        match self {
            GpuSelection::All => None,
            GpuSelection::Count(n) => Some((0..*n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
            GpuSelection::Devices(d) => Some(d.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
        }
    }
}

impl FromStr for GpuSelection {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<GpuSelection> {
        let bad = || {
            ConfigError::Invalid(format!("--gpus `{s}`: expected `all`, a count (2) or a device list (0,2)"))
        };
        if s == "all" {
            return Ok(GpuSelection::All);
        }
        if s.contains(',') {
            let devices = s.split(',').map(|d| d.trim().parse::<u32>()).collect::<Result<Vec<_>, _>>();
            return devices.map(GpuSelection::Devices).map_err(|_| bad());
        }
        let n: u32 = s.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        Ok(GpuSelection::Count(n))
    }
}
