//! The emulator's configuration: what engine it pretends to be and which offload tiers it has.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cost::{self, CostModel, Link};
use crate::Error;
use kvcache::{PolicyKind, Tier};

/// Everything that shapes the emulated engine. Read from TOML (`deny_unknown_fields`) or built in
/// code; every field has a default, see [`EmulatorConfig::default`].
///
/// Capacities are in *modelled* KV bytes (as LMCache's `max_local_cpu_size` and
/// `max_local_disk_size`), so they mean the same thing whatever `byte_scale` is; the bytes the
/// tiers actually store are those multiplied by `byte_scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatorConfig {
    /// A model of the built-in registry, e.g. `meta-llama/Llama-3.1-8B-Instruct`.
    pub model: String,
    /// The name `/v1/models` reports and requests must use; defaults to `model`.
    pub served_model_name: Option<String>,
    /// A GPU of the built-in registry: `H100`, `H200`, `A100-80GB`, `L40S`, `L4`.
    pub gpu: String,
    pub scheduler: SchedulerConfig,
    pub offload: OffloadConfig,
    /// Stored bytes per modelled KV byte in the offload tiers (0 < scale <= 1). The real KV of
    /// 10k tokens of an 8B model is 1.3 GB; the default 1/64 stores 20 MB for it. The lab
    /// records this factor in `env.json`.
    pub byte_scale: f64,
    /// Real-time mode only: wall seconds per modelled second (1.0 = real speed; 0.0 = as fast as
    /// possible). Virtual time ignores it.
    pub time_scale: f64,
}

/// vLLM's scheduler knobs, same names and meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub max_model_len: u32,
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    pub gpu_memory_utilization: f64,
    /// Caps the number of GPU KV blocks (vLLM's `num_gpu_blocks_override`).
    pub num_gpu_blocks: Option<u64>,
    pub enable_prefix_caching: bool,
}

/// LMCache-like offload tiers, looked up in order CPU, disk, remote; stores are written through
/// to every configured tier, each evicting on its own with `policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffloadConfig {
    /// LMCache `chunk_size`: tokens per stored chunk (a multiple of the block size).
    pub chunk_tokens: u32,
    /// CPU RAM tier capacity in modelled bytes; 0 = no CPU tier.
    pub cpu_bytes: u64,
    pub disk: Option<DiskTierConfig>,
    pub remote: Option<RemoteTierConfig>,
    /// Eviction policy of every offload tier.
    pub policy: PolicyKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskTierConfig {
    /// Directory of the chunk files (`<key as 16 hex digits>.kv`); created if missing.
    pub dir: PathBuf,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteTierConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    pub bytes: u64,
}

/// The lab's tiers, as `xtask serve --tier` names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierPreset {
    /// GPU prefix cache only.
    Baseline,
    /// LMCache `local_cpu`.
    Cpu,
    /// LMCache `local_disk` (no CPU tier in front, so the disk is what is measured).
    Disk { dir: PathBuf },
    /// LMCache `remote_url` on Redis.
    Redis { url: String },
}

const GIB: u64 = 1 << 30;

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            model: "meta-llama/Llama-3.1-8B-Instruct".to_owned(),
            served_model_name: None,
            gpu: "H100".to_owned(),
            scheduler: SchedulerConfig::default(),
            offload: OffloadConfig::default(),
            byte_scale: 1.0 / 64.0,
            time_scale: 1.0,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_model_len: 32_768,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            block_size: 16,
            gpu_memory_utilization: 0.9,
            num_gpu_blocks: None,
            enable_prefix_caching: true,
        }
    }
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig { chunk_tokens: 256, cpu_bytes: 0, disk: None, remote: None, policy: PolicyKind::Lru }
    }
}

impl EmulatorConfig {
    /// The default engine with the offload tier of `tier` (CPU 32 GiB, disk 64 GiB, Redis 32 GiB
    /// of modelled KV).
    pub fn for_tier(tier: TierPreset) -> Self {
        let mut cfg = EmulatorConfig::default();
        match tier {
            TierPreset::Baseline => {}
            TierPreset::Cpu => cfg.offload.cpu_bytes = 32 * GIB,
            TierPreset::Disk { dir } => cfg.offload.disk = Some(DiskTierConfig { dir, bytes: 64 * GIB }),
            TierPreset::Redis { url } => cfg.offload.remote = Some(RemoteTierConfig { url, bytes: 32 * GIB }),
        }
        cfg
    }

    /// Parses a TOML document; `file` names it in errors (which carry line and field).
    pub fn from_toml(text: &str, file: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::Config(format!("{file}: {e}")))
    }

    /// The model name clients must use.
    pub fn served_name(&self) -> &str {
        self.served_model_name.as_deref().unwrap_or(&self.model)
    }

    pub(crate) fn resolve(&self) -> Result<Resolved, Error> {
        let bad = |field: &str, why: &str| Err(Error::Config(format!("{field}: {why}")));
        let s = &self.scheduler;
        if s.block_size == 0 {
            return bad("scheduler.block_size", "must be > 0");
        }
        if s.max_num_seqs == 0 || s.max_num_batched_tokens == 0 {
            return bad("scheduler.max_num_seqs/max_num_batched_tokens", "must be > 0");
        }
        if !(s.gpu_memory_utilization > 0.0 && s.gpu_memory_utilization <= 1.0) {
            return bad("scheduler.gpu_memory_utilization", "must be in (0, 1]");
        }
        let o = &self.offload;
        if o.chunk_tokens == 0 || !o.chunk_tokens.is_multiple_of(s.block_size) {
            return bad("offload.chunk_tokens", "must be a positive multiple of scheduler.block_size");
        }
        if !(self.byte_scale > 0.0 && self.byte_scale <= 1.0) {
            return bad("byte_scale", "must be in (0, 1]");
        }
        if !(self.time_scale >= 0.0 && self.time_scale.is_finite()) {
            return bad("time_scale", "must be >= 0");
        }
        let cost = CostModel { model: cost::model(&self.model)?, gpu: cost::gpu(&self.gpu)? };
        let block_bytes = cost.kv_bytes(u64::from(s.block_size));
        let free = cost.gpu.mem_bytes * s.gpu_memory_utilization - cost.model.weight_bytes;
        let fit = if free > 0.0 { (free / block_bytes as f64) as u64 } else { 0 };
        let num_gpu_blocks = s.num_gpu_blocks.map_or(fit, |cap| cap.min(fit));
        let min_blocks = u64::from(s.max_model_len.div_ceil(s.block_size));
        if num_gpu_blocks < min_blocks {
            return Err(Error::Config(format!(
                "{} on {} leaves {num_gpu_blocks} KV blocks, fewer than one max_model_len \
                 request needs ({min_blocks}); lower scheduler.max_model_len",
                self.model, self.gpu
            )));
        }
        let chunk_bytes = cost.kv_bytes(u64::from(o.chunk_tokens));
        let stored_chunk_bytes = ((chunk_bytes as f64 * self.byte_scale).ceil() as u64).max(16);
        let mut tiers = Vec::new();
        if o.cpu_bytes > 0 {
            tiers.push(TierSpec {
                tier: Tier::Cpu,
                capacity_chunks: o.cpu_bytes / chunk_bytes,
                link: Link { latency_s: 20e-6, bytes_per_s: cost.gpu.pcie_bw * 0.5 },
            });
        }
        if let Some(d) = &o.disk {
            tiers.push(TierSpec {
                tier: Tier::Disk,
                capacity_chunks: d.bytes / chunk_bytes,
                link: Link { latency_s: 200e-6, bytes_per_s: 5e9 },
            });
        }
        if let Some(r) = &o.remote {
            if !r.url.starts_with("redis://") {
                return bad("offload.remote.url", "must start with redis://");
            }
            tiers.push(TierSpec {
                tier: Tier::Remote,
                capacity_chunks: r.bytes / chunk_bytes,
                link: Link { latency_s: 500e-6, bytes_per_s: 1.25e9 },
            });
        }
        Ok(Resolved { cfg: self.clone(), cost, num_gpu_blocks, chunk_bytes, stored_chunk_bytes, tiers })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TierSpec {
    pub(crate) tier: Tier,
    pub(crate) capacity_chunks: u64,
    pub(crate) link: Link,
}

/// A validated configuration with the derived numbers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    pub(crate) cfg: EmulatorConfig,
    pub(crate) cost: CostModel,
    pub(crate) num_gpu_blocks: u64,
    /// Modelled bytes of one offload chunk.
    pub(crate) chunk_bytes: u64,
    /// Bytes a tier stores per chunk (`chunk_bytes x byte_scale`).
    pub(crate) stored_chunk_bytes: u64,
    pub(crate) tiers: Vec<TierSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str, expect: &str) {
        let got = match EmulatorConfig::from_toml(toml, "emu.toml").and_then(|c| c.resolve()) {
            Ok(r) => format!(
                "blocks={} chunk_bytes={} stored={} tiers={:?}",
                r.num_gpu_blocks,
                r.chunk_bytes,
                r.stored_chunk_bytes,
                r.tiers.iter().map(|t| (t.tier.as_str(), t.capacity_chunks)).collect::<Vec<_>>()
            ),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn resolves_blocks_and_tiers() {
        // (80e9 x 0.9 - 16.06e9) / (16 x 131072) = 26_674 blocks.
        check("", "blocks=26674 chunk_bytes=33554432 stored=524288 tiers=[]");
        check(
            "[scheduler]\nnum_gpu_blocks = 4096\n[offload]\ncpu_bytes = 1073741824\n\
             [offload.disk]\ndir = \"d\"\nbytes = 2147483648\n",
            "blocks=4096 chunk_bytes=33554432 stored=524288 tiers=[(\"cpu\", 32), (\"disk\", 64)]",
        );
        // (24e9 x 0.9 - 16.06e9) / 2 MiB = 2641 blocks, enough for 32768 tokens (2048 blocks).
        check("gpu = \"L4\"", "blocks=2641 chunk_bytes=33554432 stored=524288 tiers=[]");
        check(
            "model = \"meta-llama/Llama-3.1-70B-Instruct\"",
            "emulator config: meta-llama/Llama-3.1-70B-Instruct on H100 leaves 0 KV blocks, fewer \
             than one max_model_len request needs (2048); lower scheduler.max_model_len",
        );
        check(
            "model = \"gpt-5\"",
            "unknown model \"gpt-5\" (known: meta-llama/Llama-3.1-8B-Instruct, \
             Qwen/Qwen2.5-7B-Instruct, meta-llama/Llama-3.2-1B-Instruct, \
             meta-llama/Llama-3.1-70B-Instruct)",
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let err = EmulatorConfig::from_toml("gpu = \"H100\"\n[scheduler]\nmax_num_seq = 3\n", "emu.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("emu.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("max_num_seq"), "{err}");
    }
}
