//! The cost model: how long a scheduler step and a KV load from an offload tier take.
//!
//! A roofline model: a step is bound by compute (2 FLOPs per parameter per token plus attention)
//! or by memory traffic (weights once per step plus the KV read by attention), whichever is
//! slower, plus a fixed per-step overhead. A tier load is a latency plus bytes over the tier's
//! bandwidth. The model and GPU tables are kvlab's built-in registry entries.

use crate::Error;

/// KV bytes per token: 2 (K and V) x layers x kv_heads x head_dim x dtype bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ModelSpec {
    pub(crate) name: &'static str,
    pub(crate) params: f64,
    pub(crate) weight_bytes: f64,
    pub(crate) layers: u32,
    /// num_attention_heads x head_dim.
    pub(crate) hidden: u32,
    pub(crate) kv_heads: u32,
    pub(crate) head_dim: u32,
    pub(crate) dtype_bytes: u32,
}

impl ModelSpec {
    pub(crate) fn kv_bytes_per_token(&self) -> u64 {
        2 * u64::from(self.layers)
            * u64::from(self.kv_heads)
            * u64::from(self.head_dim)
            * u64::from(self.dtype_bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GpuSpec {
    pub(crate) name: &'static str,
    pub(crate) mem_bytes: f64,
    /// Dense bf16 FLOP/s.
    pub(crate) flops: f64,
    /// HBM bytes/s.
    pub(crate) hbm_bw: f64,
    /// Host-to-device bytes/s actually reached (pinned memory).
    pub(crate) pcie_bw: f64,
}

const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "meta-llama/Llama-3.1-8B-Instruct",
        params: 8.03e9,
        weight_bytes: 16.06e9,
        layers: 32,
        hidden: 4096,
        kv_heads: 8,
        head_dim: 128,
        dtype_bytes: 2,
    },
    ModelSpec {
        name: "Qwen/Qwen2.5-7B-Instruct",
        params: 7.62e9,
        weight_bytes: 15.23e9,
        layers: 28,
        hidden: 3584,
        kv_heads: 4,
        head_dim: 128,
        dtype_bytes: 2,
    },
    ModelSpec {
        name: "meta-llama/Llama-3.2-1B-Instruct",
        params: 1.24e9,
        weight_bytes: 2.47e9,
        layers: 16,
        hidden: 2048,
        kv_heads: 8,
        head_dim: 64,
        dtype_bytes: 2,
    },
    ModelSpec {
        name: "meta-llama/Llama-3.1-70B-Instruct",
        params: 70.6e9,
        weight_bytes: 141.1e9,
        layers: 80,
        hidden: 8192,
        kv_heads: 8,
        head_dim: 128,
        dtype_bytes: 2,
    },
];

const GPUS: &[GpuSpec] = &[
    GpuSpec { name: "H100", mem_bytes: 80e9, flops: 989e12, hbm_bw: 3.35e12, pcie_bw: 50e9 },
    GpuSpec { name: "H200", mem_bytes: 141e9, flops: 989e12, hbm_bw: 4.8e12, pcie_bw: 50e9 },
    GpuSpec { name: "A100-80GB", mem_bytes: 80e9, flops: 312e12, hbm_bw: 2.0e12, pcie_bw: 25e9 },
    GpuSpec { name: "L40S", mem_bytes: 48e9, flops: 362e12, hbm_bw: 0.864e12, pcie_bw: 25e9 },
    GpuSpec { name: "L4", mem_bytes: 24e9, flops: 121e12, hbm_bw: 0.3e12, pcie_bw: 25e9 },
];

pub(crate) fn model(name: &str) -> Result<ModelSpec, Error> {
    MODELS.iter().find(|m| m.name.eq_ignore_ascii_case(name)).copied().ok_or_else(|| Error::UnknownName {
        what: "model",
        name: name.to_owned(),
        known: MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
    })
}

pub(crate) fn gpu(name: &str) -> Result<GpuSpec, Error> {
    GPUS.iter().find(|g| g.name.eq_ignore_ascii_case(name)).copied().ok_or_else(|| Error::UnknownName {
        what: "gpu",
        name: name.to_owned(),
        known: GPUS.iter().map(|g| g.name).collect::<Vec<_>>().join(", "),
    })
}

/// A link between an offload tier and GPU memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Link {
    pub(crate) latency_s: f64,
    pub(crate) bytes_per_s: f64,
}

impl Link {
    pub(crate) fn time(&self, bytes: u64) -> f64 {
        self.latency_s + bytes as f64 / self.bytes_per_s
    }
}

/// Fraction of peak FLOP/s a forward pass reaches.
const MFU: f64 = 0.5;
/// Fraction of peak HBM bandwidth reached.
const MBU: f64 = 0.8;
/// Scheduler + sampling + launch overhead per step.
const STEP_OVERHEAD_S: f64 = 0.002;

/// What one step runs: prefill chunks and decode sequences.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct StepShape {
    /// New tokens computed this step (prefill chunk tokens plus one per decode).
    pub(crate) tokens: u64,
    /// Sum over new tokens of the context each one attends to.
    pub(crate) attn_pairs: f64,
    /// KV tokens read by attention this step.
    pub(crate) kv_read_tokens: u64,
}

impl StepShape {
    /// A chunk of `n` new tokens after `ctx` tokens already in the cache.
    pub(crate) fn add(&mut self, ctx: u64, n: u64) {
        self.tokens += n;
        // Token j (0-based) attends to ctx + j + 1 tokens.
        self.attn_pairs += n as f64 * (ctx as f64 + (n as f64 + 1.0) / 2.0);
        self.kv_read_tokens += ctx + n;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CostModel {
    pub(crate) model: ModelSpec,
    pub(crate) gpu: GpuSpec,
}

impl CostModel {
    /// Seconds for one step of this shape (0 for an empty step).
    pub(crate) fn step_time(&self, s: &StepShape) -> f64 {
        if s.tokens == 0 {
            return 0.0;
        }
        let m = &self.model;
        let flops =
            2.0 * m.params * s.tokens as f64 + 4.0 * f64::from(m.layers) * f64::from(m.hidden) * s.attn_pairs;
        let bytes = m.weight_bytes + (m.kv_bytes_per_token() * s.kv_read_tokens) as f64;
        let compute = flops / (self.gpu.flops * MFU);
        let memory = bytes / (self.gpu.hbm_bw * MBU);
        STEP_OVERHEAD_S + compute.max(memory)
    }

    pub(crate) fn kv_bytes(&self, tokens: u64) -> u64 {
        self.model.kv_bytes_per_token() * tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_is_memory_bound_and_prefill_compute_bound() {
        let cm = CostModel {
            model: model("meta-llama/Llama-3.1-8B-Instruct").unwrap(),
            gpu: gpu("h100").unwrap(),
        };
        assert_eq!(cm.model.kv_bytes_per_token(), 131_072);
        let mut decode = StepShape::default();
        decode.add(1000, 1);
        let t_decode = cm.step_time(&decode);
        // Weights over 80% of 3.35 TB/s: about 6 ms, plus overhead.
        assert!((0.007..0.01).contains(&t_decode), "{t_decode}");
        let mut prefill = StepShape::default();
        prefill.add(0, 8192);
        let t_prefill = cm.step_time(&prefill);
        assert!((0.25..0.4).contains(&t_prefill), "{t_prefill}");
        // Attention makes a later chunk of the same size dearer.
        let mut late = StepShape::default();
        late.add(32_768, 8192);
        assert!(cm.step_time(&late) > 1.5 * t_prefill);
    }
}
