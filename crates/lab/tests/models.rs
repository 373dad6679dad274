//! Models and GPUs: tensor parallelism comes from the model registry, a model that needs more
//! GPUs than it is given is refused, unknown names list the known ones.

mod common;

use engines::{EngineKind, GpuSelection};
use lab::run::{bench, resolve_model, BenchOptions};
use schema::config::Tier;

/// `engine model` → the placement (`served_name tp=N pp=M registry=R`) or the error.
fn check(input: &str, expect: &str) {
    let (engine, model) = input.split_once(' ').unwrap();
    let got = match resolve_model(engine.parse().unwrap(), model) {
        Ok(p) => format!(
            "{} tp={} pp={} registry={}",
            p.served_name,
            p.tensor_parallel,
            p.pipeline_parallel,
            p.registry_name.as_deref().unwrap_or("-")
        ),
        Err(e) => e.to_string(),
    };
    assert_eq!(got, expect, "{input}");
}

#[test]
fn placement_from_the_registry() {
    check("vllm llama-3-70b-tp8", "meta-llama/Meta-Llama-3-70B-Instruct tp=8 pp=1 registry=llama-3-70b-tp8");
    check(
        "vllm-docker llama-3-70b-tp4",
        "meta-llama/Meta-Llama-3-70B-Instruct tp=4 pp=1 registry=llama-3-70b-tp4",
    );
    check("docker Qwen/Qwen3-8B", "Qwen/Qwen3-8B tp=1 pp=1 registry=qwen3-8b");
    check("emulated llama-3-70b-tp8", "llama-3-70b-tp8 tp=8 pp=1 registry=llama-3-70b-tp8");
    check("emulated Mistral-7B", "Mistral-7B tp=1 pp=1 registry=mistral-7b");
    // Two entries share the 70B's id: the first (TP 4) wins, as in the emulator.
    check(
        "vllm meta-llama/meta-llama-3-70b-instruct",
        "meta-llama/Meta-Llama-3-70B-Instruct tp=4 pp=1 registry=llama-3-70b-tp4",
    );
    check("llamacpp tiny", "tiny tp=1 pp=1 registry=-");
    check("external whatever/served", "whatever/served tp=1 pp=1 registry=-");
}

#[test]
fn unknown_model_lists_the_known_ones() {
    let emulated =
        "invalid configuration: unknown model `meta-llama/Llama-3.1-8B-Instruct` for engine `emulated`;";
    let got =
        resolve_model(EngineKind::Emulated, "meta-llama/Llama-3.1-8B-Instruct").unwrap_err().to_string();
    assert!(got.starts_with(emulated), "{got}");
    check(
        "vllm gpt-5",
        "invalid configuration: unknown model `gpt-5` for engine `vllm`; the model registry \
         (configs/models.toml) knows: llama-3-8b (meta-llama/Meta-Llama-3-8B-Instruct), llama-3-70b-tp4 \
         (meta-llama/Meta-Llama-3-70B-Instruct), llama-3-70b-tp8 (meta-llama/Meta-Llama-3-70B-Instruct), \
         qwen3-8b (Qwen/Qwen3-8B), mistral-7b (mistralai/Mistral-7B-Instruct-v0.3), tiny-llama \
         (kvlab/tiny-llama-gguf), tiny-llama-hf (kvlab/tiny-llama-hf)",
    );
}

/// A model that needs 8 GPUs given 2 is refused before anything starts (no engine is needed:
/// the refusal comes first), and nothing but run bookkeeping is written.
#[tokio::test]
async fn too_few_gpus_are_refused() {
    for engine in [EngineKind::Vllm, EngineKind::VllmDocker, EngineKind::Emulated] {
        let ws = common::workspace();
        let mut opts = BenchOptions::new(ws.path(), Tier::Cpu);
        opts.engine = engine;
        opts.model = Some("llama-3-70b-tp8".to_owned());
        opts.gpus = GpuSelection::Count(2);
        opts.progress = false;
        let err = bench(&opts).await.expect_err("2 GPUs cannot hold a TP 8 model").to_string();
        assert_eq!(
            err,
            "invalid configuration: model `llama-3-70b-tp8` needs 8 GPUs (tensor x pipeline parallel) but only 2 \
             were given; pass --gpus 8 or a device list",
            "{engine}"
        );
        assert!(!ws.path().join("results").exists(), "{engine}: a result directory was created");
    }
}

/// An unknown model for vLLM fails through `bench` with the registry's names.
#[tokio::test]
async fn unknown_model_through_bench() {
    let ws = common::workspace();
    let mut opts = BenchOptions::new(ws.path(), Tier::Baseline);
    opts.engine = EngineKind::Vllm;
    opts.model = Some("llama-4-900b".to_owned());
    let err = bench(&opts).await.expect_err("unknown model").to_string();
    assert!(
        err.starts_with("invalid configuration: unknown model `llama-4-900b` for engine `vllm`"),
        "{err}"
    );
    assert!(err.contains("llama-3-70b-tp8 (meta-llama/Meta-Llama-3-70B-Instruct)"), "{err}");
}
