//! Published figures and the cost model's single-request predictions of them (the table of
//! `docs/fidelity.md`, printed by `cargo run -p kvlab-costmodel --example fidelity`).

use serde::Serialize;

use crate::model::{CostModel, TierLink, TtftQuery};
use crate::registry::{Registry, RegistryError};

/// What was published: one value, or a range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Published {
    Value(f64),
    Range(f64, f64),
}

/// One row of the fidelity table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FidelityRow {
    /// Who published the figure.
    pub source: &'static str,
    /// What the figure measures, with the setup the prediction assumes.
    pub figure: &'static str,
    pub unit: &'static str,
    pub published: Published,
    pub predicted: f64,
}

impl FidelityRow {
    /// Relative error of the prediction: against the value, or against the nearer end of a range
    /// (0 inside it). Positive: the model predicts more than published.
    pub fn error(&self) -> f64 {
        match self.published {
            Published::Value(v) => (self.predicted - v) / v,
            Published::Range(lo, _) if self.predicted < lo => (self.predicted - lo) / lo,
            Published::Range(_, hi) if self.predicted > hi => (self.predicted - hi) / hi,
            Published::Range(..) => 0.0,
        }
    }
}

/// vLLM v1's default `max_num_batched_tokens` for the OpenAI server on large GPUs.
const CHUNK_LARGE_GPU: u32 = 8192;
/// The same on GPUs under 70 GiB, such as the L4.
const CHUNK_SMALL_GPU: u32 = 2048;
/// LMCache's default chunk: only full chunks of a prompt are stored.
const LMCACHE_CHUNK: u32 = 256;

fn full_chunks(tokens: u32) -> u32 {
    tokens / LMCACHE_CHUNK * LMCACHE_CHUNK
}

/// Every row, predicted with `reg`'s constants.
pub fn rows(reg: &Registry) -> Result<Vec<FidelityRow>, RegistryError> {
    let cm = |model: &str, gpu: &str| -> Result<CostModel, RegistryError> {
        Ok(CostModel::new(reg.model(model)?, reg.gpu(gpu)?, &reg.cost))
    };
    let ms = 1e3;
    let mut rows = Vec::new();

    // llm-d's latency profile of an 8B model on an H100: TTFT = overhead + per-token x prompt.
    let llama = cm("llama-3-8b", "h100")?;
    let ttft = |n: u32| {
        llama.ttft(&TtftQuery {
            prompt_tokens: n,
            cached_tokens: 0,
            cached_from: None,
            max_num_batched_tokens: CHUNK_LARGE_GPU,
        })
    };
    let (t1, t2) = (ttft(1024), ttft(2048));
    let per_token = (t2 - t1) / 1024.0;
    rows.push(FidelityRow {
        source: "llm-d latency profile",
        figure: "Llama-3-8B on H100: prefill overhead (TTFT intercept, fit on 1k and 2k prompts)",
        unit: "ms",
        published: Published::Range(25.0, 40.0),
        predicted: (t1 - per_token * 1024.0) * ms,
    });
    rows.push(FidelityRow {
        source: "llm-d latency profile",
        figure: "Llama-3-8B on H100: prefill time per prompt token (TTFT slope)",
        unit: "ms",
        published: Published::Range(0.15, 0.30),
        predicted: per_token * ms,
    });
    rows.push(FidelityRow {
        source: "llm-d latency profile",
        figure: "Llama-3-8B on H100: inter-token latency, one sequence at 1k context",
        unit: "ms",
        published: Published::Range(10.0, 15.0),
        predicted: llama.itl(1024) * ms,
    });

    // LMCache, Qwen3-8B (GPU assumed: H100), 46 documents of 10k tokens, one queried again.
    let qwen = cm("qwen3-8b", "h100")?;
    let doc = 10_000;
    let cold = |m: &CostModel, n: u32, chunk: u32| {
        m.ttft(&TtftQuery {
            prompt_tokens: n,
            cached_tokens: 0,
            cached_from: None,
            max_num_batched_tokens: chunk,
        })
    };
    let warm = |m: &CostModel, n: u32, link: TierLink, chunk: u32| {
        m.ttft(&TtftQuery {
            prompt_tokens: n,
            cached_tokens: full_chunks(n),
            cached_from: Some(link),
            max_num_batched_tokens: chunk,
        })
    };
    rows.push(FidelityRow {
        source: "LMCache docs",
        figure: "Qwen3-8B on H100 (assumed), 10k-token document query, no LMCache: TTFT",
        unit: "s",
        published: Published::Value(0.757),
        predicted: cold(&qwen, doc, CHUNK_LARGE_GPU),
    });
    rows.push(FidelityRow {
        source: "LMCache docs",
        figure: "same, with LMCache: 9,984 tokens (full 256-token chunks) loaded from CPU: TTFT",
        unit: "s",
        published: Published::Value(0.185),
        predicted: warm(&qwen, doc, TierLink::Cpu, CHUNK_LARGE_GPU),
    });

    // LMCache CPU offload: 10 prompts of 10k tokens, max_tokens 1, second pass served from CPU.
    // Cold: the prompts' prefills (compute-bound, batching does not help); warm: ten loads over
    // the GPU's one PCIe link, then one step computing the ten 16-token remainders.
    let cold_total = 10.0 * cold(&qwen, doc, CHUNK_LARGE_GPU);
    let hit = full_chunks(doc);
    let loads = 10.0 * qwen.load_time(TierLink::Cpu, qwen.kv_bytes(u64::from(hit)));
    let rest = crate::model::StepShape {
        prefills: vec![crate::model::PrefillChunk { new_tokens: doc - hit, context_tokens: hit }; 10],
        decodes: Vec::new(),
    };
    rows.push(FidelityRow {
        source: "LMCache docs",
        figure: "CPU offload, 10 prompts x 10k tokens, max_tokens 1 (Qwen3-8B on H100 assumed): speedup",
        unit: "x",
        published: Published::Value(7.43),
        predicted: cold_total / (loads + qwen.step_time(&rest)),
    });

    // LMCache disk tier on an L4, 15k-token prompt (model assumed: Qwen3-8B).
    let l4 = cm("qwen3-8b", "l4")?;
    let prompt = 15_000;
    rows.push(FidelityRow {
        source: "LMCache docs",
        figure: "local disk tier, L4, 15k-token prompt (Qwen3-8B assumed), cold: TTFT",
        unit: "s",
        published: Published::Value(6.314),
        predicted: cold(&l4, prompt, CHUNK_SMALL_GPU),
    });
    rows.push(FidelityRow {
        source: "LMCache docs",
        figure: "same, 14,848 tokens loaded from local disk (NVMe link): TTFT",
        unit: "s",
        published: Published::Value(0.148),
        predicted: warm(&l4, prompt, TierLink::Disk, CHUNK_SMALL_GPU),
    });
    Ok(rows)
}

/// The rows as a markdown table.
pub fn markdown(rows: &[FidelityRow]) -> String {
    let mut out =
        String::from("| source | figure | published | predicted | error |\n|---|---|---:|---:|---:|\n");
    for r in rows {
        let fmt = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0}")
            } else if v >= 1.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.3}")
            }
        };
        let published = match r.published {
            Published::Value(v) => format!("{} {}", fmt(v), r.unit),
            Published::Range(lo, hi) => format!("{}–{} {}", fmt(lo), fmt(hi), r.unit),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} {} | {:+.0}% |\n",
            r.source,
            r.figure,
            published,
            fmt(r.predicted),
            r.unit,
            r.error() * 100.0
        ));
    }
    out
}
