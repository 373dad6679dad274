//! The registry files: the shipped ones parse, and bad input gets an error naming file, line and
//! key.

use costmodel::{Registry, RegistryError};

const MODEL: &str = r#"[[model]]
name = "m"
hf_id = "org/m"
tensor_parallel = 1
pipeline_parallel = 1
max_model_len = 4096
vocab_size = 1000
params = 1000000
weight_dtype_bytes = 2
hidden_size = 64
num_attention_heads = 4
[model.kv]
layers = 2
kv_heads = 4
head_dim = 16
dtype_bytes = 2
"#;

fn gpus_text() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/gpus.toml"))
        .expect("configs/gpus.toml is readable")
}

/// Parses `text` as a models file (`kind` "models") or a GPUs file ("gpus") and renders the
/// outcome: the error message, or the names parsed.
fn parse(kind: &str, text: &str) -> String {
    let result = match kind {
        "models" => Registry::parse_models(text, "models.toml")
            .map(|ms| ms.iter().map(|m| m.name.clone()).collect::<Vec<_>>()),
        "gpus" => Registry::parse_gpus(text, "gpus.toml")
            .map(|g| g.gpus.iter().map(|g| g.name.clone()).collect::<Vec<_>>()),
        other => panic!("unknown kind {other}"),
    };
    match result {
        Ok(names) => format!("ok: {}", names.join(", ")),
        Err(e) => format!("error: {e}"),
    }
}

/// Data-driven: each case edits a valid file and states the outcome.
fn check(kind: &str, text: &str, expect: &str) {
    assert_eq!(parse(kind, text), expect, "input:\n{text}");
}

#[test]
fn valid_files_parse() {
    check("models", MODEL, "ok: m");
    check("gpus", &gpus_text(), "ok: a100-80g, h100, h200, l4, l40s");
}

#[test]
fn model_errors_name_file_line_and_key() {
    check(
        "models",
        &MODEL.replace("params = 1000000", "params = 1000000\nexperts = 8"),
        "error: models.toml:9: model[0].experts: unknown field `experts`, expected one of \
         `name`, `hf_id`, `tensor_parallel`, `pipeline_parallel`, `max_model_len`, `vocab_size`, \
         `params`, `active_params`, `weight_dtype_bytes`, `hidden_size`, `num_attention_heads`, `kv` (column 1)",
    );
    check(
        "models",
        &MODEL.replace("head_dim = 16", "head_dim = \"16\""),
        "error: models.toml:15: model[0].kv.head_dim: invalid type: string \"16\", expected u32 (column 12)",
    );
    check(
        "models",
        &MODEL.replace("tensor_parallel = 1", "tensor_parallel = 0"),
        "error: models.toml:4: model[0].tensor_parallel: must be at least 1",
    );
    check(
        "models",
        &MODEL.replace("layers = 2", "layers = 0"),
        "error: models.toml:13: model[0].kv.layers: must be at least 1",
    );
    check(
        "models",
        &MODEL.replace("params = 1000000", "params = 1000000\nactive_params = 2000000"),
        "error: models.toml:9: model[0].active_params: must be between 1 and `params`",
    );
    check(
        "models",
        &format!("{MODEL}\n{MODEL}"),
        "error: models.toml:19: model[1].name: model `m` is defined twice",
    );
    check(
        "models",
        &MODEL.replace("vocab_size = 1000\n", ""),
        "error: models.toml:1: model[0]: missing field `vocab_size` (column 1)",
    );
    check(
        "models",
        &MODEL.replace("hf_id = \"org/m\"", "hf_id = org/m"),
        "error: models.toml:3: (top level): invalid string\nexpected `\"`, `'` (column 9)",
    );
}

#[test]
fn gpu_errors_name_file_line_and_key() {
    let g = gpus_text();
    check(
        "gpus",
        &g.replacen("bandwidth_efficiency = 0.60", "bandwidth_efficiency = 1.5", 2),
        &format!(
            // Two GPUs are wrong; the first in file order is reported.
            "error: gpus.toml:{}: gpu[0].bandwidth_efficiency: must be in (0, 1]",
            line_of(&g, "bandwidth_efficiency = 0.60", 0)
        ),
    );
    check(
        "gpus",
        &g.replacen("bf16_tflops = 989 ", "bf16_tflops = -989 ", 1),
        &format!(
            "error: gpus.toml:{}: gpu[1].bf16_tflops: must be a positive number",
            line_of(&g, "bf16_tflops = 989 ", 0)
        ),
    );
    check(
        "gpus",
        &g.replacen("latency_us = 200.0", "latency_us = -1.0", 1),
        &format!(
            "error: gpus.toml:{}: cost.remote.latency_us: must be 0 or a positive number",
            line_of(&g, "latency_us = 200.0", 0)
        ),
    );
    check(
        "gpus",
        &g.replacen("nvlink_gbs = 600", "nvlink_gbs = 600\nnvswitch = true", 1),
        &format!(
            "error: gpus.toml:{}: gpu[0].nvswitch: unknown field `nvswitch`, expected one of \
             `name`, `memory_gib`, `bf16_tflops`, `memory_bandwidth_gbs`, `pcie_gen`, `pcie_gbs`, \
             `nvlink_gbs`, `compute_efficiency`, `bandwidth_efficiency`, `pcie_efficiency` (column 1)",
            line_of(&g, "nvlink_gbs = 600", 0) + 1
        ),
    );
}

/// 1-based line of the `nth` line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with(prefix))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .expect("prefix present")
}

#[test]
fn builtin_registry_matches_the_files_and_the_lab_models() {
    let reg = Registry::builtin();
    let summary: Vec<String> = reg
        .models
        .iter()
        .map(|m| {
            format!(
                "{}: {} GPU(s), {} weight bytes, {} KV bytes/token, max_model_len {}",
                m.name,
                m.gpus(),
                m.weight_bytes(),
                m.kv.bytes_per_token(),
                m.max_model_len
            )
        })
        .chain(reg.gpus.iter().map(|g| {
            format!(
                "{}: {} GiB, {} TFLOP/s, {} GB/s, PCIe gen{} {} GB/s, NVLink {} GB/s",
                g.name,
                g.memory_gib,
                g.bf16_tflops,
                g.memory_bandwidth_gbs,
                g.pcie_gen,
                g.pcie_gbs,
                g.nvlink_gbs
            )
        }))
        .collect();
    insta::assert_snapshot!("builtin_registry", summary.join("\n"));

    // The tiny model matches the lab's tiny llama.cpp GGUF.
    let tiny = reg.model("tiny-llama").unwrap();
    assert_eq!(
        (tiny.hidden_size, tiny.kv.layers, tiny.num_attention_heads, tiny.vocab_size, tiny.max_model_len),
        (64, 2, 4, 354, 4096)
    );
    // Lookup by Hugging Face id, and a clear error for unknown names.
    assert_eq!(reg.model("Qwen/Qwen3-8B").unwrap().name, "qwen3-8b");
    assert_eq!(
        reg.gpu("b200").unwrap_err(),
        RegistryError::Unknown {
            what: "GPU",
            name: "b200".into(),
            known: "a100-80g, h100, h200, l4, l40s".into()
        }
    );
}
