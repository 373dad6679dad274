//! The model and GPU registry and the cost model: how long a prefill step, a decode step and a
//! KV-tier load take for a given model on a given GPU.
//!
//! Pure: the registry is parsed from TOML text the caller read (`configs/models.toml`,
//! `configs/gpus.toml`); errors name the file, line and key. Shared by the emulator (real and
//! virtual time), the simulator (estimated TTFT saved) and the lab (validation, GPU counts).

use serde::{Deserialize, Serialize};

pub mod fidelity;
mod model;
mod registry;

pub use model::{CostModel, PrefillChunk, Seconds, StepBreakdown, StepShape, TierLink, TtftQuery};
pub use registry::{CostParams, GpuSpec, GpusFile, LinkSpec, ModelSpec, Registry, RegistryError};

/// KV-cache geometry of a model: what one token of KV costs in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvGeometry {
    pub layers: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    /// Bytes per element (2 for fp16/bf16, 1 for fp8).
    pub dtype_bytes: u32,
}

impl KvGeometry {
    /// 2 (K and V) x layers x kv_heads x head_dim x dtype bytes.
    pub fn bytes_per_token(&self) -> u64 {
        2 * self.layers as u64 * self.kv_heads as u64 * self.head_dim as u64 * self.dtype_bytes as u64
    }
}
