//! The cost model: time of an engine step and of a KV load, from first principles (FLOPs over
//! compute, bytes over bandwidth) scaled by efficiencies.

use serde::{Deserialize, Serialize};

use crate::registry::{CostParams, GpuSpec, LinkSpec, ModelSpec};

/// Seconds, as `f64`. All arithmetic is deterministic (no clocks, no randomness).
pub type Seconds = f64;

/// A slice of one request's prompt computed in a step (vLLM v1 chunked prefill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefillChunk {
    /// Prompt tokens computed in this step.
    pub new_tokens: u32,
    /// Tokens already in the KV cache before this chunk (earlier chunks and prefix-cache hits).
    pub context_tokens: u32,
}

/// What one engine step computes: prefill chunks and one new token for each decoding sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepShape {
    pub prefills: Vec<PrefillChunk>,
    /// The context length (tokens in the KV cache) of each decoding sequence.
    pub decodes: Vec<u32>,
}

impl StepShape {
    /// Tokens that go through the model in this step.
    pub fn tokens(&self) -> u64 {
        self.prefills.iter().map(|p| u64::from(p.new_tokens)).sum::<u64>() + self.decodes.len() as u64
    }
}

/// Where a KV load comes from (the GPU prefix cache needs no load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierLink {
    /// Host memory over PCIe.
    Cpu,
    /// Local disk into host memory, then PCIe.
    Disk,
    /// Remote store over the network into host memory, then PCIe.
    Remote,
}

/// The parts of a step's time; `total_s = max(compute_s, memory_s) + comm_s + overhead_s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepBreakdown {
    /// FLOPs over the effective compute of the tensor-parallel group.
    pub compute_s: Seconds,
    /// Bytes of weights and KV read or written over effective memory bandwidth, per GPU.
    pub memory_s: Seconds,
    /// Tensor-parallel all-reduces.
    pub comm_s: Seconds,
    /// Fixed step (and prefill) overheads.
    pub overhead_s: Seconds,
    pub total_s: Seconds,
}

/// One request alone on the engine, for [`CostModel::ttft`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtftQuery {
    pub prompt_tokens: u32,
    /// Leading prompt tokens whose KV is cached (not recomputed).
    pub cached_tokens: u32,
    /// Where the cached KV is loaded from; `None`: the GPU prefix cache (no load).
    pub cached_from: Option<TierLink>,
    /// vLLM's `max_num_batched_tokens`: the prompt is computed in chunks of at most this many.
    pub max_num_batched_tokens: u32,
}

/// Step and load times of one model on one GPU type.
///
/// Invariants: every time is finite and non-negative for any input; more work never takes less
/// time (monotone in tokens, context and bytes); an empty step takes 0.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    tp: f64,
    layers: f64,
    hidden: f64,
    attn_width: f64,
    active_params: f64,
    weight_bytes_per_gpu: f64,
    kv_bytes_per_token: f64,
    /// FLOP/s of one GPU, efficiency applied.
    flops: f64,
    /// Bytes/s of one GPU's memory, efficiency applied.
    mem_bw: f64,
    /// Bytes/s host->device of one GPU, efficiency applied.
    pcie_bw: f64,
    /// Bytes/s between the GPUs of the tensor-parallel group.
    tp_link_bw: f64,
    step_overhead: Seconds,
    prefill_overhead: Seconds,
    allreduce_latency: Seconds,
    cpu_latency: Seconds,
    disk: LinkSpec,
    remote: LinkSpec,
}

const GIGA: f64 = 1e9;
const TERA: f64 = 1e12;
/// Activations cross the all-reduce in bf16.
const ACTIVATION_BYTES: f64 = 2.0;

impl CostModel {
    /// The cost model of `model` on GPUs of type `gpu` (its tensor-parallel group of
    /// `model.tensor_parallel` GPUs). Pipeline parallelism does not shorten a step (stages run
    /// one after another for one batch) and is not modelled further.
    pub fn new(model: &ModelSpec, gpu: &GpuSpec, params: &CostParams) -> CostModel {
        let tp = f64::from(model.tensor_parallel.max(1));
        let tp_link = if gpu.nvlink_gbs > 0.0 { gpu.nvlink_gbs } else { gpu.pcie_gbs };
        CostModel {
            tp,
            layers: f64::from(model.kv.layers),
            hidden: f64::from(model.hidden_size),
            attn_width: f64::from(model.num_attention_heads) * f64::from(model.kv.head_dim),
            active_params: model.active_params() as f64,
            weight_bytes_per_gpu: model.weight_bytes() as f64 / tp,
            kv_bytes_per_token: model.kv.bytes_per_token() as f64,
            flops: gpu.bf16_tflops * TERA * gpu.compute_efficiency,
            mem_bw: gpu.memory_bandwidth_gbs * GIGA * gpu.bandwidth_efficiency,
            pcie_bw: gpu.pcie_gbs * GIGA * gpu.pcie_efficiency,
            tp_link_bw: tp_link * GIGA,
            step_overhead: params.step_overhead_ms / 1e3,
            prefill_overhead: params.prefill_overhead_ms / 1e3,
            allreduce_latency: params.allreduce_latency_us / 1e6,
            cpu_latency: params.cpu_latency_us / 1e6,
            disk: params.disk,
            remote: params.remote,
        }
    }

    /// Time of one engine step: a roofline `max(compute, memory)` plus all-reduces and fixed
    /// overheads. Prefill chunks are compute-bound (2 x active params x tokens, plus attention
    /// 4 x layers x attention width x new tokens x mean context); decodes are bandwidth-bound
    /// (weights per GPU plus every sequence's KV read); a mixed step (vLLM v1) pays for its
    /// tokens together in one forward pass. An empty step takes 0.
    pub fn step_time(&self, step: &StepShape) -> Seconds {
        self.step_breakdown(step).total_s
    }

    /// [`CostModel::step_time`] with its parts.
    pub fn step_breakdown(&self, step: &StepShape) -> StepBreakdown {
        let tokens = step.tokens() as f64;
        if tokens == 0.0 {
            return StepBreakdown {
                compute_s: 0.0,
                memory_s: 0.0,
                comm_s: 0.0,
                overhead_s: 0.0,
                total_s: 0.0,
            };
        }
        // Attention: QK^T and AV, 2 FLOPs per multiply-add each, over the visible context.
        // A prefill chunk's token i sees context + i + 1 tokens (causal mask).
        let mut attn_pairs = 0.0; // sum over new tokens of the context they attend to
        let mut kv_read_tokens = 0.0;
        for p in &step.prefills {
            let (new, ctx) = (f64::from(p.new_tokens), f64::from(p.context_tokens));
            attn_pairs += new * (ctx + (new + 1.0) / 2.0);
            kv_read_tokens += ctx + new;
        }
        for &ctx in &step.decodes {
            let ctx = f64::from(ctx);
            attn_pairs += ctx + 1.0;
            kv_read_tokens += ctx + 1.0;
        }
        let flops = 2.0 * self.active_params * tokens + 4.0 * self.layers * self.attn_width * attn_pairs;
        let compute_s = flops / (self.tp * self.flops);
        let bytes = self.weight_bytes_per_gpu + kv_read_tokens * self.kv_bytes_per_token / self.tp;
        let memory_s = bytes / self.mem_bw;
        let comm_s = if self.tp > 1.0 {
            // Two ring all-reduces of the activations per layer.
            let msg = tokens * self.hidden * ACTIVATION_BYTES;
            let per = 2.0 * (self.tp - 1.0) / self.tp * msg / self.tp_link_bw + self.allreduce_latency;
            2.0 * self.layers * per
        } else {
            0.0
        };
        let overhead_s = self.step_overhead
            + if step.prefills.iter().any(|p| p.new_tokens > 0) { self.prefill_overhead } else { 0.0 };
        StepBreakdown {
            compute_s,
            memory_s,
            comm_s,
            overhead_s,
            total_s: compute_s.max(memory_s) + comm_s + overhead_s,
        }
    }

    /// Time to bring `bytes` of KV (all GPUs of the group together) from `link` into GPU memory.
    /// Each GPU of a tensor-parallel group loads its share over its own PCIe link; disk and
    /// network reads land in host memory first (one after the other, not overlapped). Zero
    /// bytes take 0.
    pub fn load_time(&self, link: TierLink, bytes: u64) -> Seconds {
        if bytes == 0 {
            return 0.0;
        }
        let bytes = bytes as f64;
        let pcie = bytes / self.tp / self.pcie_bw;
        let staged = |l: &LinkSpec| l.latency_us / 1e6 + bytes / (l.bandwidth_gbs * GIGA);
        match link {
            TierLink::Cpu => self.cpu_latency + pcie,
            TierLink::Disk => staged(&self.disk) + pcie,
            TierLink::Remote => staged(&self.remote) + pcie,
        }
    }

    /// Time to write `bytes` of KV from GPU memory to `link`: the same paths as
    /// [`CostModel::load_time`], in the other direction.
    pub fn store_time(&self, link: TierLink, bytes: u64) -> Seconds {
        self.load_time(link, bytes)
    }

    /// Bytes of KV for `tokens` tokens (all GPUs together).
    pub fn kv_bytes(&self, tokens: u64) -> u64 {
        (tokens as f64 * self.kv_bytes_per_token) as u64
    }

    /// Time to first token of one request alone on the engine (no queueing): load the cached
    /// prefix (if it is not in GPU memory), then compute the rest of the prompt in chunks of
    /// `max_num_batched_tokens`. At least one token is always computed (vLLM recomputes the
    /// last prompt token even on a full hit), so `cached_tokens` is capped at `prompt - 1`.
    pub fn ttft(&self, q: &TtftQuery) -> Seconds {
        let cached = q.cached_tokens.min(q.prompt_tokens.saturating_sub(1));
        let load = match q.cached_from {
            Some(link) => self.load_time(link, self.kv_bytes(u64::from(cached))),
            None => 0.0,
        };
        let chunk = q.max_num_batched_tokens.max(1);
        let mut done = cached;
        let mut t = load;
        while done < q.prompt_tokens {
            let new = chunk.min(q.prompt_tokens - done);
            let step = StepShape {
                prefills: vec![PrefillChunk { new_tokens: new, context_tokens: done }],
                decodes: Vec::new(),
            };
            t += self.step_time(&step);
            done += new;
        }
        t
    }

    /// Inter-token latency of one sequence decoding alone at context `context_tokens`.
    pub fn itl(&self, context_tokens: u32) -> Seconds {
        self.step_time(&StepShape { prefills: Vec::new(), decodes: vec![context_tokens] })
    }
}
