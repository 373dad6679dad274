//! What each fuzz target checks, one function for all of them: the fuzz targets call it (each
//! includes this file with `#[path]`), and so does the workspace test that runs every seed of
//! `fuzz/corpus/` in `cargo xtask ci` (`crates/lab/tests/fuzz_corpus.rs`), so a crash the fuzzer
//! found, saved as a seed, is a regression test.
//!
//! The property, per parser: no panic, and an error about a file is `FILE:LINE: FIELD: message`
//! with a line that exists (`testkit::located::check`, the check the property tests use too).
#![allow(dead_code)] // each fuzz target uses one entry

use std::path::Path;

use workload::{ParseOptions, Trace, TraceFormat};

/// Every target, by the name of its `[[bin]]` in `fuzz/Cargo.toml`.
pub(crate) const TARGETS: &[&str] = &[
    "sse_stream",
    "openai_chunk",
    "trace_mooncake",
    "trace_bailian",
    "trace_azure",
    "experiment_toml",
    "tier_toml",
    "registry_toml",
    "lmcache_yaml",
    "summary_json",
    "prometheus_text",
    "thresholds_toml",
    "baseline_snap",
];

/// Runs `target`'s check on one input; panics where the property does not hold.
pub(crate) fn check(target: &str, data: &[u8]) {
    if target == "sse_stream" {
        return sse_stream(data);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    match target {
        "openai_chunk" => {
            if let Err(e) = loadgen::parse::chunk(text) {
                assert!(e.contains(" line ") && e.contains(" column "), "{e}");
            }
        }
        "trace_mooncake" => trace(TraceFormat::Mooncake, "trace.jsonl", text),
        "trace_bailian" => trace(TraceFormat::Bailian, "trace.jsonl", text),
        "trace_azure" => trace(TraceFormat::Azure, "trace.csv", text),
        "experiment_toml" => {
            if let Err(e) = schema::config::Experiment::parse("exp.toml", text) {
                located(&e, "exp.toml", text);
            }
        }
        "tier_toml" => {
            for tier in schema::config::Tier::ALL {
                if let Err(e) = schema::config::TierConfig::parse(tier, "tier.toml", text) {
                    located(&e, "tier.toml", text);
                }
            }
        }
        "registry_toml" => {
            if let Err(e) = costmodel::Registry::parse_models(text, "models.toml") {
                located(&e, "models.toml", text);
            }
            if let Err(e) = costmodel::Registry::parse_gpus(text, "gpus.toml") {
                located(&e, "gpus.toml", text);
            }
        }
        "lmcache_yaml" => {
            if let Err(e) = schema::lmcache::LmcacheConfig::check_yaml("lm.yaml", text) {
                located(&e, "lm.yaml", text);
            }
        }
        "summary_json" => {
            if let Err(e) = report::parse_summary(text, Path::new("summary.json")) {
                located(&e, "summary.json", text);
            }
            if let Err(e) = stats::parse_json_lines::<stats::RequestRecord>(text) {
                located(&e.in_file("requests.jsonl"), "requests.jsonl", text);
            }
        }
        "prometheus_text" => {
            if let Err(e) = samplers::parse_exposition(text) {
                assert!(e.line >= 1 && e.line <= text.lines().count(), "{e}");
                assert!(!e.field.is_empty() && !e.message.is_empty(), "{e}");
            }
        }
        "thresholds_toml" => {
            if let Err(e) = report::regress::Thresholds::parse(text, Path::new("regress.toml")) {
                located(&e, "regress.toml", text);
            }
        }
        "baseline_snap" => {
            if let Err(e) = report::regress::Baselines::parse(text, Path::new("b.snap")) {
                located(&e, "b.snap", text);
            }
        }
        other => panic!("no check for fuzz target `{other}`"),
    }
}

/// The SSE body: parsing it whole and split into reads gives the same result; tiny caps never
/// panic. The first byte chooses the split (every `seed % 7 + 1` bytes) and the caps.
fn sse_stream(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else { return };
    let cfg = loadgen::LoadgenConfig::new("http://127.0.0.1:1");
    let whole = loadgen::parse::sse_stream(&[body], &cfg);
    let step = usize::from(seed % 7) + 1;
    let reads: Vec<&[u8]> = body.chunks(step).collect();
    let split = loadgen::parse::sse_stream(&reads, &cfg);
    assert_eq!(whole, split, "split every {step} bytes");
    let mut small = cfg;
    small.max_event_bytes = usize::from(seed);
    small.max_body_bytes = u64::from(seed) * 4;
    let _ = loadgen::parse::sse_stream(&reads, &small);
}

/// A trace reader, strict and skipping bad lines.
fn trace(format: TraceFormat, file: &str, text: &str) {
    for skip_bad_lines in [false, true] {
        if let Err(e) = Trace::parse(format, text, file, &ParseOptions { skip_bad_lines }) {
            located(&e, file, text);
        }
    }
}

/// `e` is `file:LINE: FIELD: message`, LINE within the text (or one past its end).
fn located(e: &dyn std::fmt::Display, file: &str, text: &str) {
    if let Err(failure) = testkit::located::check(&e.to_string(), file, text) {
        panic!("{failure}");
    }
}
