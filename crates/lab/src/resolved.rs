//! `run.toml`: the resolved run, the contract between a run and whatever reads its result
//! directory (the report, a Slurm point's index).

use std::path::PathBuf;

use engines::vllm::LmcacheMode;
use engines::{EngineKind, GpuSelection};
use schema::config::{Tier, TierConfig};
use schema::lmcache::LmcacheConfig;
use serde::Serialize;

use crate::adapters::WorkloadRequest;

/// The resolved configuration of one run: `run.toml`. No secret is ever part of it.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedRun {
    pub v: u32,
    pub label: String,
    pub run_id: String,
    pub engine: EngineKind,
    pub engine_reason: String,
    pub emulated: bool,
    pub tier: Tier,
    pub model: String,
    pub gpu: Option<String>,
    pub gpus: GpuSelection,
    pub tensor_parallel: u32,
    pub pipeline_parallel: u32,
    /// The model's entry in the model registry, when it has one.
    pub registry_model: Option<String>,
    pub workload: WorkloadRequest,
    pub mock_decoding: bool,
    pub conversation_aware_eviction: bool,
    pub cache_size_bytes: Option<u64>,
    /// The GPU KV blocks the cache size gives on the baseline tier (the emulator's
    /// `num_gpu_blocks`, vLLM's `--num-gpu-blocks-override`).
    pub num_gpu_blocks: Option<u64>,
    /// vLLM runs on an offload tier: how LMCache was attached (`mp`, `in-process`); absent
    /// otherwise (the baseline tier runs no connector).
    pub lmcache_mode: Option<LmcacheMode>,
    pub goodput: Option<String>,
    pub url: Option<String>,
    pub image: Option<String>,
    pub disk_dir: PathBuf,
    /// The Redis of the redis tier, without user name or password.
    pub redis_url: Option<String>,
    pub tier_config: TierConfig,
    pub lmcache: Option<LmcacheConfig>,
    pub experiment: Option<String>,
}
