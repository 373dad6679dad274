//! Allocation of every parser of outside input is bounded by a small multiple of the input: a
//! counting global allocator measures the peak bytes live while one parser runs on one generated
//! input (valid files grown by repetition, then edited by [`testkit::edits`]) and checks
//! `peak <= K * input_len + C`.
//!
//! The parsers are those of the fuzz targets (`fuzz/fuzz_targets/`): the experiment, tier,
//! registry and LMCache files, the three trace formats, the SSE body and the OpenAI chunk,
//! `summary.json` and `requests.jsonl` records, the thresholds and baselines of `regress`, the
//! Prometheus text. One test runs them all on
//! one thread, so no other test's allocations are counted.
#![allow(unsafe_code)] // the counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use proptest::prelude::*;
use testkit::edits;

/// Peak bytes live while parsing, per byte of input (the largest seen: about 7.3, the Azure
/// trace parser).
const K: usize = 12;
/// Fixed allowance: the parsers' own tables and buffers, whatever the input (the largest seen
/// for inputs under 4 KiB: about 32 KiB).
const C: usize = 64 * 1024;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes allocated by `f` beyond what was live when it started.
fn peak_of(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    f();
    PEAK.load(Relaxed).saturating_sub(base)
}

type Parser = fn(&str);

fn repo(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (name, valid seed text, whether repeating it stays the same kind of file, parser).
fn parsers() -> Vec<(&'static str, String, bool, Parser)> {
    use schema::config::{Experiment, Tier, TierConfig};
    use workload::{ParseOptions, Trace, TraceFormat};
    let chunk = r#"{"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"a","finish_reason":null}],"usage":null}"#;
    let record = r#"{"v":1,"id":7,"warmup":false,"intended":0.5,"sent":0.5,"first_byte":0.6,"first_token":0.61,"end":0.9,"chunks":[[0.61,1],[0.7,1],[0.8,1]],"prompt_tokens":64,"output_tokens":3,"cached_tokens":16,"token_source":"usage","error":null}"#;
    let summary =
        serde_json::to_string_pretty(&stats::summarize(&[], &stats::SummaryConfig::default())).unwrap();
    vec![
        ("experiment_toml", repo("configs/experiments/smoke.toml"), false, |t| {
            let _ = Experiment::parse("exp.toml", t);
        }),
        ("tier_toml", repo("configs/tiers/disk.toml"), false, |t| {
            for tier in Tier::ALL {
                let _ = TierConfig::parse(tier, "tier.toml", t);
            }
        }),
        ("registry_toml(models)", repo("configs/models.toml"), false, |t| {
            let _ = costmodel::Registry::parse_models(t, "models.toml");
        }),
        ("registry_toml(gpus)", repo("configs/gpus.toml"), false, |t| {
            let _ = costmodel::Registry::parse_gpus(t, "gpus.toml");
        }),
        ("lmcache_yaml", repo("configs/lmcache/disk.yaml"), false, |t| {
            let _ = schema::lmcache::LmcacheConfig::check_yaml("lm.yaml", t);
        }),
        ("trace_mooncake", repo("crates/workload/tests/fixtures/mooncake_small.jsonl"), true, |t| {
            for skip_bad_lines in [false, true] {
                let _ = Trace::parse(TraceFormat::Mooncake, t, "t.jsonl", &ParseOptions { skip_bad_lines });
            }
        }),
        ("trace_bailian", repo("crates/workload/tests/fixtures/bailian_small.jsonl"), true, |t| {
            for skip_bad_lines in [false, true] {
                let _ = Trace::parse(TraceFormat::Bailian, t, "t.jsonl", &ParseOptions { skip_bad_lines });
            }
        }),
        ("trace_azure", repo("crates/workload/tests/fixtures/azure_small.csv"), true, |t| {
            for skip_bad_lines in [false, true] {
                let _ = Trace::parse(TraceFormat::Azure, t, "t.csv", &ParseOptions { skip_bad_lines });
            }
        }),
        ("sse_stream", format!("data: {chunk}\n\n"), true, |t| {
            let cfg = loadgen::LoadgenConfig::new("http://127.0.0.1:1");
            let _ = loadgen::parse::sse_stream(&[t.as_bytes()], &cfg);
        }),
        ("openai_chunk", chunk.to_owned(), false, |t| {
            let _ = loadgen::parse::chunk(t);
        }),
        ("summary_json", summary, false, |t| {
            let _ = report::parse_summary(t, Path::new("summary.json"));
        }),
        ("thresholds_toml", repo("configs/regress.toml"), false, |t| {
            let _ = report::regress::Thresholds::parse(t, Path::new("regress.toml"));
        }),
        ("baseline_snap", repo("results/baselines/emulated-pinned-cpu.snap"), false, |t| {
            let _ = report::regress::Baselines::parse(t, Path::new("b.snap"));
        }),
        ("requests_jsonl", format!("{record}\n"), true, |t| {
            let _ = stats::parse_json_lines::<stats::RequestRecord>(t);
        }),
        (
            "prometheus_text",
            "# HELP kvlab_requests_total Requests.\n# TYPE kvlab_requests_total counter\nkvlab_requests_total{tier=\"disk\",model=\"m\"} 12\nvllm:num_requests_running 3\n".to_owned(),
            true,
            |t| {
                let _ = samplers::parse_exposition(t);
            },
        ),
    ]
}

/// Per parser, printed at the end (`--nocapture`): the largest peak for small inputs (where `C`
/// dominates) and the largest `peak / len` for large ones (where `K` does).
#[test]
fn every_parser_allocates_at_most_k_times_its_input_plus_c() {
    let mut worst: Vec<(&str, usize, f64)> = Vec::new();
    for (name, seed, repeatable, parse) in parsers() {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let reps = if repeatable { 1usize..4000 } else { 1usize..2 };
        // (largest peak for an input under 4 KiB, largest peak/len for one of 16 KiB or more).
        let seen = std::cell::Cell::new((0usize, 0f64));
        runner
            .run(&(reps, proptest::collection::vec(edits::edit(), 0..3)), |(reps, edit_list)| {
                let mut text = seed.repeat(reps);
                for e in &edit_list {
                    text = edits::apply(&text, e).0;
                }
                let len = text.len();
                let peak = peak_of(|| parse(&text));
                let (small, slope) = seen.get();
                if len < 4096 {
                    seen.set((small.max(peak), slope));
                } else if len >= 16 * 1024 {
                    seen.set((small, slope.max(peak as f64 / len as f64)));
                }
                prop_assert!(
                    peak <= K * len + C,
                    "{name}: {peak} bytes allocated for {len} bytes of input (bound {K} x len + {C})"
                );
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (small, slope) = seen.get();
        worst.push((name, small, slope));
    }
    for (name, small, slope) in &worst {
        eprintln!(
            "{name:24} peak under 4 KiB of input: {small:>7} B; peak/len at 16 KiB or more: {slope:.2}"
        );
    }
}
