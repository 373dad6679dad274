//! The real engine end to end: llama.cpp's server through the pip package xllamacpp, on the
//! generated random-weight model (1 ASCII character = 1 token, so prompt tokens = 1 (BOS) +
//! characters), driven through the lab API like `cargo xtask bench --engine llamacpp`.
//!
//! Needs `KVLAB_PYTHON` (a Python with xllamacpp) and `KVLAB_LLAMACPP_MODEL` (the GGUF file);
//! `cargo xtask ci` creates both and exports them. Without them these tests fail, naming what
//! is missing.

mod common;

use std::path::Path;

use engines::EngineKind;
use lab::error::RunError;
use lab::run::{bench, bench_until, BenchOptions, RunReport};
use schema::config::Tier;

use common::{assert_no_secret, records, workspace};

/// One engine at a time: the tests of this file take turns, so that timings measure one server
/// on the machine's cores rather than three competing ones.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one run sends: a workload of `n` requests of `prompt_len` characters, one at a time.
struct Load {
    tier: Tier,
    workload: &'static str,
    prompt_len: u32,
    n: u32,
}

fn options(root: &Path, load: &Load) -> BenchOptions {
    let mut opts = common::llamacpp_options(root, load.tier);
    opts.workload = Some(load.workload.to_owned());
    opts.prompt_len = Some(load.prompt_len);
    opts.gen_len = Some(8);
    opts.num_requests = Some(load.n);
    opts.max_concurrency = Some(1);
    opts.seed = Some(11);
    opts
}

async fn run(root: &Path, load: &Load) -> RunReport {
    let opts = options(root, load);
    let mut reports = bench(&opts).await.unwrap_or_else(|e| panic!("{} {}: {e}", load.tier, load.workload));
    assert_eq!(reports.len(), 1);
    let r = reports.remove(0);
    let errors: Vec<String> = records(&r.dir)
        .iter()
        .filter_map(|rec| Some(format!("{}: {:?}", rec.id, rec.error.as_ref()?)))
        .collect();
    assert_eq!(
        (r.summary.completed, r.summary.failed),
        (u64::from(load.n), 0),
        "{}: {errors:#?}\nengine.log:\n{}",
        r.dir.display(),
        std::fs::read_to_string(r.dir.join("engine.log")).unwrap_or_default()
    );
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn ttft_ms(r: &stats::RequestRecord) -> f64 {
    (r.first_token.expect("a completed request has a first token") - r.sent) * 1e3
}

/// A full result directory, labelled as a real (not emulated) llama.cpp run, with exact lengths.
fn check_result_dir(r: &RunReport, tier: Tier, prompt_len: u32) {
    assert_eq!(r.engine, EngineKind::Llamacpp);
    assert!(!r.emulated);
    for f in
        ["run.toml", "env.json", "requests.jsonl", "requests.csv", "summary.json", "engine.log", "report.md"]
    {
        assert!(r.dir.join(f).is_file(), "{f} missing in {}", r.dir.display());
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["engine"], "llamacpp");
    assert_eq!(summary["tier"], tier.as_str());
    assert_eq!(summary["emulated"], false);
    assert!(!std::fs::read_to_string(r.dir.join("report.md")).unwrap().contains("EMULATED"));
    let log = std::fs::read_to_string(r.dir.join("engine.log")).unwrap();
    assert!(log.contains("listening"), "engine.log shows no server start:\n{log}");
    for rec in records(&r.dir) {
        assert_eq!(rec.prompt_tokens, Some(prompt_len + 1), "1 BOS + 1 token per character");
        assert_eq!(rec.output_tokens, 8, "the model never stops early");
    }
    assert!(r.dir.join("samples/cpu.csv").is_file(), "samples/cpu.csv missing");
    let engines = common::processes_mentioning(&r.dir.join("serve_llamacpp.py").display().to_string());
    assert!(engines.is_empty(), "engine processes left running: {engines:?}");
}

/// Prefill is real work: a 2048-token prompt takes well over 3x the time to first token of a
/// 128-token one (medians of 5 requests without reuse, host prompt cache off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_grows_with_the_prompt() {
    let _turn = ENGINE.lock().await;
    let ws = workspace();
    let short = Load { tier: Tier::Baseline, workload: "random", prompt_len: 128, n: 5 };
    let long = Load { prompt_len: 2048, ..short };
    let short_run = run(ws.path(), &short).await;
    check_result_dir(&short_run, Tier::Baseline, 128);
    let long_run = run(ws.path(), &long).await;
    check_result_dir(&long_run, Tier::Baseline, 2048);
    let (t_short, t_long) = (short_run.summary.median_ttft_ms, long_run.summary.median_ttft_ms);
    eprintln!("median TTFT: {t_short:.1} ms at 128 tokens, {t_long:.1} ms at 2048");
    assert!(
        t_long >= 3.0 * t_short,
        "median TTFT {t_long:.1} ms at 2048 tokens vs {t_short:.1} ms at 128: prefill does not scale"
    );
    assert_no_secret(ws.path());
}

/// A repeated long prompt hits llama.cpp's prompt cache: usage reports cached tokens, and the
/// requests that hit are at least 3x faster to first token than the cold ones. With the host
/// prompt cache on (cpu tier) every repeat hits, even after another prompt took the slot; with
/// it off (baseline) a prompt that comes back after another one is recomputed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_long_prompt_hits_the_cache() {
    let _turn = ENGINE.lock().await;
    let ws = workspace();
    // 10 requests in 2 groups sharing a 1920-character prefix, in shuffled order.
    let cpu = Load { tier: Tier::Cpu, workload: "shared-prefix", prompt_len: 2048, n: 10 };
    let r = run(ws.path(), &cpu).await;
    check_result_dir(&r, Tier::Cpu, 2048);
    assert!(r.summary.cached_tokens_total > 0, "usage reported no cached tokens");
    let recs = records(&r.dir);
    let is_hit = |rec: &stats::RequestRecord| rec.cached_tokens.unwrap_or(0) >= 1024;
    let hits: Vec<f64> = recs.iter().filter(|rec| is_hit(rec)).map(ttft_ms).collect();
    let cold: Vec<f64> = recs.iter().filter(|rec| !is_hit(rec)).map(ttft_ms).collect();
    assert_eq!((cold.len(), hits.len()), (2, 8), "cpu tier: only the first request of each group is cold");
    let (t_cold, t_hit) = (median(cold), median(hits));
    eprintln!("median TTFT: {t_cold:.1} ms cold, {t_hit:.1} ms with the prefix cached");
    assert!(t_cold >= 3.0 * t_hit, "cold TTFT {t_cold:.1} ms vs cached {t_hit:.1} ms: less than 3x");

    let baseline = Load { tier: Tier::Baseline, ..cpu };
    let b = run(ws.path(), &baseline).await;
    let b_hits = records(&b.dir).iter().filter(|rec| is_hit(rec)).count();
    eprintln!("cache hits: cpu tier 8 of 10, baseline {b_hits} of 10");
    assert!(b_hits < 8, "baseline (host prompt cache off) hit {b_hits} times, as often as the cpu tier");
    assert_no_secret(ws.path());
}

/// Ctrl-C during a real-engine run: the finished requests stay recorded and accounted for, and
/// the llama.cpp process is stopped and reaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_reaps_the_engine() {
    let _turn = ENGINE.lock().await;
    let ws = workspace();
    let load = Load { tier: Tier::Baseline, workload: "random", prompt_len: 1024, n: 200 };
    let opts = options(ws.path(), &load);
    let out = opts.out.clone().unwrap();
    let err = bench_until(&opts, common::after_finished(out, 3)).await.expect_err("the run was interrupted");
    let RunError::Interrupted(dir) = &err else { panic!("expected an interruption, got: {err}") };
    let n = common::assert_partial_accounting(dir);
    assert!((3..200).contains(&n), "{n} finished requests recorded");
    let script = dir.join("serve_llamacpp.py").display().to_string();
    let engines = common::processes_mentioning(&script);
    assert!(engines.is_empty(), "engine processes left running after the interruption: {engines:?}");
}

/// llama.cpp has no disk or remote KV store: those tiers are refused before anything starts.
#[tokio::test]
async fn disk_and_redis_tiers_are_refused() {
    for tier in [Tier::Disk, Tier::Redis] {
        let ws = workspace();
        let mut opts = BenchOptions::new(ws.path(), tier);
        opts.engine = EngineKind::Llamacpp;
        opts.progress = false;
        opts.out = Some(ws.path().join("results"));
        let err = bench(&opts).await.expect_err("llama.cpp cannot express the tier").to_string();
        assert_eq!(
            err,
            format!(
                "engine `llamacpp` failed: llama.cpp cannot express the `{tier}` tier (it has no LMCache disk \
                 or remote store); use --tier baseline (host prompt cache off) or --tier cpu (on), or \
                 --engine emulated"
            )
        );
    }
}
