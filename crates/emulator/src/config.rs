//! The emulator's configuration: what engine it pretends to be and which offload tiers it has.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use costmodel::{CostModel, LinkSpec, TierLink};
use kvcache::{PolicyKind, Tier};

use crate::cost;
use crate::Error;

/// Everything that shapes the emulated engine. Read from TOML (`deny_unknown_fields`) or built in
/// code; every field has a default, see [`EmulatorConfig::default`].
///
/// Capacities are in *modelled* KV bytes (as LMCache's `max_local_cpu_size` and
/// `max_local_disk_size`), so they mean the same thing whatever `byte_scale` is; the bytes the
/// tiers actually store are those multiplied by `byte_scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatorConfig {
    /// A model of the built-in registry (`configs/models.toml`), by name (`llama-3-8b`) or
    /// Hugging Face id (`meta-llama/Meta-Llama-3-8B-Instruct`), case-insensitive. Its
    /// tensor-parallel degree sets how many GPUs the engine has.
    pub model: String,
    /// The name `/v1/models` reports and requests must use; defaults to `model`.
    pub served_model_name: Option<String>,
    /// A GPU of the built-in registry (`configs/gpus.toml`), case-insensitive: `h100`, `h200`,
    /// `a100-80g`, `l40s`, `l4`.
    pub gpu: String,
    pub scheduler: SchedulerConfig,
    pub offload: OffloadConfig,
    /// Overrides of the registry's disk and remote links (`[cost.disk]`, `[cost.remote]` of
    /// `gpus.toml`), e.g. the network to a particular Redis.
    pub links: LinkOverrides,
    /// Stored bytes per modelled KV byte in the offload tiers (0 < scale <= 1). The real KV of
    /// 10k tokens of an 8B model is 1.3 GB; the default 1/64 stores 20 MB for it. The lab
    /// records this factor in `env.json`.
    pub byte_scale: f64,
    /// Real-time mode only: wall seconds per modelled second (1.0 = real speed; 0.0 = as fast as
    /// possible). Virtual time ignores it.
    pub time_scale: f64,
    /// The run's id (the lab's run id). The redis tier keeps its chunks under
    /// `kvlab:{run_id}:` and deletes that prefix when the server shuts down, so runs sharing one
    /// Redis never see each other's blocks. `None`: a fresh id per server start.
    pub run_id: Option<String>,
    /// Real-time mode only: what the HTTP server accepts.
    pub limits: ServerLimits,
}

/// The HTTP server's limits. Requests over a limit are refused with an OpenAI-style JSON error;
/// connections over `max_connections` wait in the listen backlog (see [`crate::Server`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Largest request body in bytes (413 beyond it); a larger body is never read whole.
    pub max_body_bytes: u64,
    /// Largest `max_tokens` (or `max_completion_tokens`) accepted (400 beyond it); 0 (the
    /// default) = `scheduler.max_model_len`.
    pub max_tokens: u32,
    /// Connections served at once; more wait until one closes.
    pub max_connections: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { max_body_bytes: 8 << 20, max_tokens: 0, max_connections: 4096 }
    }
}

/// vLLM's scheduler knobs, same names and meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Longest prompt + output accepted; 0 (the default) = the model's `max_model_len` from the
    /// registry, as vLLM without `--max-model-len`. A larger value is accepted (as vLLM with
    /// `VLLM_ALLOW_LONG_MAX_MODEL_LEN=1`): the cost model extrapolates.
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

/// Links that replace the registry's; `None` keeps the registry's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkOverrides {
    /// Local disk into host memory (the disk tier).
    pub disk: Option<LinkSpec>,
    /// Network into host memory (the remote tier).
    pub remote: Option<LinkSpec>,
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
            model: "llama-3-8b".to_owned(),
            served_model_name: None,
            gpu: "h100".to_owned(),
            scheduler: SchedulerConfig::default(),
            offload: OffloadConfig::default(),
            links: LinkOverrides::default(),
            byte_scale: 1.0 / 64.0,
            time_scale: 1.0,
            run_id: None,
            limits: ServerLimits::default(),
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_model_len: 0,
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
        stats::parse_toml(text).map_err(|e| Error::Config(e.in_file(file).to_string()))
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
        if self.run_id.as_deref() == Some("") {
            return bad("run_id", "must not be empty");
        }
        let l = &self.limits;
        if l.max_body_bytes == 0 || l.max_connections == 0 {
            return bad("limits.max_body_bytes/max_connections", "must be > 0");
        }
        let registry = cost::registry();
        let model = cost::model(registry, &self.model)?;
        let gpu = cost::gpu(registry, &self.gpu)?;
        for (field, link) in [("links.disk", &self.links.disk), ("links.remote", &self.links.remote)] {
            if let Some(l) = link {
                if !(l.bandwidth_gbs.is_finite() && l.bandwidth_gbs > 0.0) {
                    return bad(&format!("{field}.bandwidth_gbs"), "must be a positive number");
                }
                if !(l.latency_us.is_finite() && l.latency_us >= 0.0) {
                    return bad(&format!("{field}.latency_us"), "must be 0 or a positive number");
                }
            }
        }
        let mut params = registry.cost;
        params.disk = self.links.disk.unwrap_or(params.disk);
        params.remote = self.links.remote.unwrap_or(params.remote);
        let cost = CostModel::new(model, gpu, &params);
        let mut cfg = self.clone();
        if cfg.scheduler.max_model_len == 0 {
            cfg.scheduler.max_model_len = model.max_model_len;
        }
        let max_model_len = cfg.scheduler.max_model_len;
        if cfg.limits.max_tokens == 0 {
            cfg.limits.max_tokens = max_model_len;
        }
        let block_bytes = cost.kv_bytes(u64::from(s.block_size));
        // vLLM: each GPU keeps `gpu_memory_utilization` of its memory, less its share of the
        // weights, for KV; the blocks of the whole group hold every GPU's share of a token.
        let gpus = f64::from(model.gpus().max(1));
        let memory = gpus * gpu.memory_gib * GIB as f64;
        let free = memory * s.gpu_memory_utilization - model.weight_bytes() as f64;
        let fit = if free > 0.0 && block_bytes > 0 { (free / block_bytes as f64) as u64 } else { 0 };
        let num_gpu_blocks = s.num_gpu_blocks.map_or(fit, |cap| cap.min(fit));
        let min_blocks = u64::from(max_model_len.div_ceil(s.block_size));
        if num_gpu_blocks < min_blocks {
            return Err(Error::Config(format!(
                "{} on {} leaves {num_gpu_blocks} KV blocks, fewer than one max_model_len \
                 request needs ({min_blocks}); lower scheduler.max_model_len",
                model.name, gpu.name
            )));
        }
        let chunk_bytes = cost.kv_bytes(u64::from(o.chunk_tokens));
        let stored_chunk_bytes = ((chunk_bytes as f64 * self.byte_scale).ceil() as u64).max(16);
        let mut tiers = Vec::new();
        if o.cpu_bytes > 0 {
            tiers.push(TierSpec { tier: Tier::Cpu, capacity_chunks: o.cpu_bytes / chunk_bytes });
        }
        if let Some(d) = &o.disk {
            tiers.push(TierSpec { tier: Tier::Disk, capacity_chunks: d.bytes / chunk_bytes });
        }
        if let Some(r) = &o.remote {
            if !r.url.starts_with("redis://") {
                return bad("offload.remote.url", "must start with redis://");
            }
            tiers.push(TierSpec { tier: Tier::Remote, capacity_chunks: r.bytes / chunk_bytes });
        }
        Ok(Resolved {
            cfg,
            hf_id: model.hf_id.clone(),
            cost,
            num_gpu_blocks,
            chunk_bytes,
            stored_chunk_bytes,
            tiers,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TierSpec {
    pub(crate) tier: Tier,
    pub(crate) capacity_chunks: u64,
}

impl TierSpec {
    /// The cost model's link of this tier.
    pub(crate) fn link(&self) -> TierLink {
        match self.tier {
            Tier::Gpu | Tier::Cpu => TierLink::Cpu,
            Tier::Disk => TierLink::Disk,
            Tier::Remote => TierLink::Remote,
        }
    }
}

/// A validated configuration with the derived numbers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    /// The configuration, `scheduler.max_model_len` and `limits.max_tokens` resolved (never 0).
    pub(crate) cfg: EmulatorConfig,
    /// The model's Hugging Face id.
    pub(crate) hf_id: String,
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
                "{} max_model_len={} blocks={} chunk_bytes={} stored={} tiers={:?}",
                r.hf_id,
                r.cfg.scheduler.max_model_len,
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
        // (80 GiB x 0.9 - 16.06e9 B of weights) / (16 tokens x 128 KiB) = 29_205 blocks; the
        // registry's max_model_len (8192) when none is set.
        check(
            "",
            "meta-llama/Meta-Llama-3-8B-Instruct max_model_len=8192 blocks=29205 chunk_bytes=33554432 \
             stored=524288 tiers=[]",
        );
        check(
            "[scheduler]\nnum_gpu_blocks = 4096\nmax_model_len = 16384\n[offload]\ncpu_bytes = 1073741824\n\
             [offload.disk]\ndir = \"d\"\nbytes = 2147483648\n",
            "meta-llama/Meta-Llama-3-8B-Instruct max_model_len=16384 blocks=4096 chunk_bytes=33554432 \
             stored=524288 tiers=[(\"cpu\", 32), (\"disk\", 64)]",
        );
        // (24 GiB x 0.9 - 16.06e9) / 2 MiB = 3400 blocks.
        check(
            "gpu = \"L4\"",
            "meta-llama/Meta-Llama-3-8B-Instruct max_model_len=8192 blocks=3400 chunk_bytes=33554432 \
             stored=524288 tiers=[]",
        );
        // TP 4: (4 x 80 GiB x 0.9 - 141.1e9) / (16 x 320 KiB) = 32_068 blocks.
        check(
            "model = \"llama-3-70b-tp4\"",
            "meta-llama/Meta-Llama-3-70B-Instruct max_model_len=8192 blocks=32068 chunk_bytes=83886080 \
             stored=1310720 tiers=[]",
        );
        check(
            "model = \"llama-3-70b-tp4\"\ngpu = \"l4\"",
            "emulator config: llama-3-70b-tp4 on l4 leaves 0 KV blocks, fewer than one max_model_len \
             request needs (512); lower scheduler.max_model_len",
        );
        check(
            "model = \"gpt-5\"",
            "unknown model \"gpt-5\" (known: llama-3-8b, llama-3-70b-tp4, llama-3-70b-tp8, qwen3-8b, \
             mistral-7b, tiny-llama, tiny-llama-hf)",
        );
        check(
            "[links.remote]\nbandwidth_gbs = 0.0\nlatency_us = 10.0\n",
            "emulator config: links.remote.bandwidth_gbs: must be a positive number",
        );
    }

    #[test]
    fn link_overrides_replace_the_registry_s_links() {
        let gb = 1_000_000_000;
        let time = |toml: &str, link| {
            let r = EmulatorConfig::from_toml(toml, "emu.toml").and_then(|c| c.resolve()).unwrap();
            r.cost.load_time(link, gb)
        };
        let slow = "[links.remote]\nbandwidth_gbs = 1.0\nlatency_us = 0.0\n";
        // The registry's 25 GbE (3.125 GB/s) against 1 GB/s: 2.2 s more for 1 GB over the
        // network; the PCIe part and the other tiers are unchanged.
        let delta = time(slow, TierLink::Remote) - time("", TierLink::Remote);
        assert!((delta - (1.0 - 1.0 / 3.125 - 200e-6)).abs() < 1e-9, "{delta}");
        assert_eq!(time(slow, TierLink::Disk), time("", TierLink::Disk));
        assert_eq!(time(slow, TierLink::Cpu), time("", TierLink::Cpu));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let err = EmulatorConfig::from_toml("gpu = \"H100\"\n[scheduler]\nmax_num_seq = 3\n", "emu.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("emulator config: emu.toml:3: scheduler.max_num_seq: unknown field"),
            "{err}"
        );
    }
}
