//! Step and load times: hand-checked values, shapes (compute- vs bandwidth-bound), monotonicity,
//! and the fidelity table.

use costmodel::fidelity::{self, Published};
use costmodel::{
    CostModel, CostParams, GpuSpec, LinkSpec, ModelSpec, PrefillChunk, Registry, StepShape, TierLink,
    TtftQuery,
};

/// A round-number GPU and model so expected times can be derived by hand.
fn toy() -> (ModelSpec, GpuSpec, CostParams) {
    let model = ModelSpec {
        name: "toy".into(),
        hf_id: "toy/toy".into(),
        tensor_parallel: 1,
        pipeline_parallel: 1,
        max_model_len: 100_000,
        vocab_size: 1000,
        params: 1_000_000_000, // 1e9 params, 2 bytes each = 2 GB of weights
        active_params: None,
        weight_dtype_bytes: 2,
        hidden_size: 1000,
        num_attention_heads: 10,
        kv: costmodel::KvGeometry { layers: 10, kv_heads: 5, head_dim: 100, dtype_bytes: 2 },
    };
    let gpu = GpuSpec {
        name: "toy".into(),
        memory_gib: 10.0,
        bf16_tflops: 100.0, // 1e14 FLOP/s at efficiency 1
        memory_bandwidth_gbs: 1000.0,
        pcie_gen: 4,
        pcie_gbs: 10.0,
        nvlink_gbs: 100.0,
        compute_efficiency: 1.0,
        bandwidth_efficiency: 1.0,
        pcie_efficiency: 1.0,
    };
    let params = CostParams {
        step_overhead_ms: 1.0,
        prefill_overhead_ms: 2.0,
        allreduce_latency_us: 10.0,
        cpu_latency_us: 100.0,
        disk: LinkSpec { bandwidth_gbs: 2.0, latency_us: 1000.0 },
        remote: LinkSpec { bandwidth_gbs: 1.0, latency_us: 500.0 },
    };
    (model, gpu, params)
}

fn prefill(new_tokens: u32, context_tokens: u32) -> PrefillChunk {
    PrefillChunk { new_tokens, context_tokens }
}

/// Data-driven: step shapes and their expected breakdown in ms (compute, memory, comm,
/// overhead, total), derived by hand in the comments.
fn check(cm: &CostModel, step: StepShape, expect_ms: [f64; 5]) {
    let b = cm.step_breakdown(&step);
    let got = [b.compute_s, b.memory_s, b.comm_s, b.overhead_s, b.total_s].map(|s| s * 1e3);
    for (g, e) in got.iter().zip(expect_ms) {
        assert!((g - e).abs() <= 1e-9 * e.abs().max(1.0), "{step:?}: got {got:?}, expected {expect_ms:?}");
    }
    assert_eq!(cm.step_time(&step), b.total_s);
}

#[test]
fn step_times_match_hand_derivations() {
    let (model, gpu, params) = toy();
    let cm = CostModel::new(&model, &gpu, &params);
    // KV bytes per token: 2 x 10 x 5 x 100 x 2 = 20,000. Attention width 10 x 100 = 1,000.
    check(&cm, StepShape::default(), [0.0; 5]);
    // One decode at context 999: FLOPs 2e9 x 1 + 4 x 10 x 1000 x 1000 = 2.04e9 -> 0.0204 ms;
    // bytes 2e9 + 1000 x 20,000 = 2.02e9 -> 2.02 ms; overhead 1 ms; total 3.02 ms.
    check(&cm, StepShape { prefills: vec![], decodes: vec![999] }, [0.0204, 2.02, 0.0, 1.0, 3.02]);
    // A 1000-token prefill from scratch: FLOPs 2e12 + 4e4 x 1000 x 500.5 = 2.02002e12
    // -> 20.2002 ms; bytes 2e9 + 1000 x 20,000 -> 2.02 ms; overhead 1 + 2 ms.
    check(
        &cm,
        StepShape { prefills: vec![prefill(1000, 0)], decodes: vec![] },
        [20.2002, 2.02, 0.0, 3.0, 23.2002],
    );
    // Mixed: that prefill (context 1000) and two decodes at 999: 1002 tokens.
    // FLOPs 2e9 x 1002 + 4e4 x (1000 x 1500.5 + 2 x 1000) = 2.004e12 + 6.01e10 = 2.0641e12
    // bytes 2e9 + (2000 + 2000) x 20,000 = 2.08e9.
    check(
        &cm,
        StepShape { prefills: vec![prefill(1000, 1000)], decodes: vec![999, 999] },
        [20.641, 2.08, 0.0, 3.0, 23.641],
    );
    // Tensor parallel 2 over NVLink 100 GB/s: compute and memory halve; each layer does two
    // ring all-reduces of 1 token x 1000 x 2 bytes, each 2 x (2 - 1) / 2 x 2000 B / 1e11 B/s
    // + 10 us = 10.02 us: 20.04 us per layer, x 10 layers = 0.2004 ms.
    let tp2 = CostModel::new(&ModelSpec { tensor_parallel: 2, ..model.clone() }, &gpu, &params);
    check(&tp2, StepShape { prefills: vec![], decodes: vec![999] }, [0.0102, 1.01, 0.2004, 1.0, 2.2104]);
}

#[test]
fn load_times_match_hand_derivations() {
    let (model, gpu, params) = toy();
    let cm = CostModel::new(&model, &gpu, &params);
    let gb = 1_000_000_000;
    // CPU: 100 us + 1 GB / 10 GB/s.
    assert!((cm.load_time(TierLink::Cpu, gb) - 0.1001).abs() < 1e-12);
    // Disk: 1 ms + 1 GB / 2 GB/s, then PCIe 0.1 s.
    assert!((cm.load_time(TierLink::Disk, gb) - 0.601).abs() < 1e-12);
    // Remote: 0.5 ms + 1 GB / 1 GB/s, then PCIe 0.1 s.
    assert!((cm.load_time(TierLink::Remote, gb) - 1.1005).abs() < 1e-12);
    assert_eq!(cm.load_time(TierLink::Remote, 0), 0.0);
    assert_eq!(cm.store_time(TierLink::Disk, gb), cm.load_time(TierLink::Disk, gb));
    // Each GPU of a TP group loads its share over its own link: PCIe part halves.
    let tp2 = CostModel::new(&ModelSpec { tensor_parallel: 2, ..model }, &gpu, &params);
    assert!((tp2.load_time(TierLink::Cpu, gb) - 0.0501).abs() < 1e-12);
    assert_eq!(cm.kv_bytes(3), 60_000);
}

#[test]
fn ttft_chunks_the_prompt_and_loads_the_cached_prefix() {
    let (model, gpu, params) = toy();
    let cm = CostModel::new(&model, &gpu, &params);
    let q = |prompt, cached, from, chunk| TtftQuery {
        prompt_tokens: prompt,
        cached_tokens: cached,
        cached_from: from,
        max_num_batched_tokens: chunk,
    };
    // One chunk: the same as the step.
    let one = cm.step_time(&StepShape { prefills: vec![prefill(1000, 0)], decodes: vec![] });
    assert_eq!(cm.ttft(&q(1000, 0, None, 8192)), one);
    // Two chunks of 500: the second sees the first as context.
    let two = cm.step_time(&StepShape { prefills: vec![prefill(500, 0)], decodes: vec![] })
        + cm.step_time(&StepShape { prefills: vec![prefill(500, 500)], decodes: vec![] });
    assert_eq!(cm.ttft(&q(1000, 0, None, 500)), two);
    // A GPU prefix hit costs no load; a CPU hit loads 900 tokens x 20,000 bytes.
    let rest = cm.step_time(&StepShape { prefills: vec![prefill(100, 900)], decodes: vec![] });
    assert_eq!(cm.ttft(&q(1000, 900, None, 8192)), rest);
    let load = cm.load_time(TierLink::Cpu, 900 * 20_000);
    assert_eq!(cm.ttft(&q(1000, 900, Some(TierLink::Cpu), 8192)), load + rest);
    // A full hit still computes the last token.
    let last = cm.step_time(&StepShape { prefills: vec![prefill(1, 999)], decodes: vec![] });
    assert_eq!(cm.ttft(&q(1000, 1000, None, 8192)), last);
    assert_eq!(cm.ttft(&q(0, 0, None, 8192)), 0.0);
}

#[test]
fn prefill_is_compute_bound_and_decode_bandwidth_bound_on_every_builtin_pair() {
    let reg = Registry::builtin();
    for model in &reg.models {
        for gpu in &reg.gpus {
            let cm = CostModel::new(model, gpu, &reg.cost);
            let long = cm.step_breakdown(&StepShape { prefills: vec![prefill(4096, 0)], decodes: vec![] });
            let dec = cm.step_breakdown(&StepShape { prefills: vec![], decodes: vec![2048; 8] });
            if !model.name.starts_with("tiny-llama") {
                assert!(long.compute_s > long.memory_s, "{} on {}: {long:?}", model.name, gpu.name);
                assert!(dec.memory_s > dec.compute_s, "{} on {}: {dec:?}", model.name, gpu.name);
            }
            // Monotone: more tokens, more context, more sequences, more bytes never cost less.
            let mut prev = 0.0;
            for n in [1, 16, 256, 1024, 4096] {
                let t = cm.step_time(&StepShape { prefills: vec![prefill(n, 1000)], decodes: vec![100; 4] });
                assert!(t >= prev && t.is_finite(), "{} on {}", model.name, gpu.name);
                prev = t;
            }
            let mut prev = 0.0;
            for b in [0u64, 1, 1 << 20, 1 << 30] {
                for link in [TierLink::Cpu, TierLink::Disk, TierLink::Remote] {
                    assert!(cm.load_time(link, b) >= 0.0);
                }
                let t = cm.load_time(TierLink::Disk, b);
                assert!(t >= prev);
                prev = t;
            }
            assert!(cm.load_time(TierLink::Cpu, 1 << 30) < cm.load_time(TierLink::Disk, 1 << 30));
            assert!(cm.load_time(TierLink::Disk, 1 << 30) < cm.load_time(TierLink::Remote, 1 << 30));
        }
    }
    // The tiny model is cheap: a decode step is the step overhead plus microseconds.
    let tiny = CostModel::new(reg.model("tiny-llama").unwrap(), reg.gpu("h100").unwrap(), &reg.cost);
    let t = tiny.itl(1000);
    assert!(t < reg.cost.step_overhead_ms / 1e3 + 1e-5, "{t}");
    // TP 8 decodes a 70B model faster than TP 4.
    let h100 = reg.gpu("h100").unwrap();
    let tp4 = CostModel::new(reg.model("llama-3-70b-tp4").unwrap(), h100, &reg.cost);
    let tp8 = CostModel::new(reg.model("llama-3-70b-tp8").unwrap(), h100, &reg.cost);
    assert!(tp8.itl(1024) < tp4.itl(1024));
}

/// Rows allowed to miss the 25% target, with the reason (also written in docs/fidelity.md).
const DOCUMENTED_MISSES: [(&str, &str); 2] = [
    (
        "Llama-3-8B on H100: prefill time per prompt token (TTFT slope)",
        "contradicts LMCache's Qwen3-8B 10k-token TTFT on the same GPU class",
    ),
    (
        "same, 14,848 tokens loaded from local disk (NVMe link): TTFT",
        "the published run read from the page cache and overlapped the copies",
    ),
];

#[test]
fn fidelity_rows_are_within_25_percent_or_documented() {
    let rows = fidelity::rows(&Registry::builtin()).unwrap();
    assert_eq!(rows.len(), 8);
    for r in &rows {
        let documented = DOCUMENTED_MISSES.iter().any(|(f, _)| *f == r.figure);
        let within = r.error().abs() <= 0.25;
        assert!(within || documented, "{} misses by {:+.0}%", r.figure, r.error() * 100.0);
        assert!(!(within && documented), "{} is now within 25%: drop it from the misses", r.figure);
        assert!(r.predicted.is_finite() && r.predicted > 0.0);
    }
    // The error of a range is measured from its nearer end.
    let mut r = rows[0].clone();
    r.published = Published::Range(10.0, 20.0);
    r.predicted = 15.0;
    assert_eq!(r.error(), 0.0);
    r.predicted = 25.0;
    assert_eq!(r.error(), 0.25);
    r.predicted = 5.0;
    assert_eq!(r.error(), -0.5);
}

#[test]
fn docs_fidelity_md_holds_the_current_table() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/fidelity.md"))
        .expect("docs/fidelity.md is readable");
    let table = fidelity::markdown(&fidelity::rows(&Registry::builtin()).unwrap());
    assert!(
        doc.contains(&table),
        "docs/fidelity.md is out of date; paste the output of \
         `cargo run -p kvlab-costmodel --example fidelity`:\n{table}"
    );
}
