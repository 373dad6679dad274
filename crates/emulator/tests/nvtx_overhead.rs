//! The load generator's NVTX ranges cost nothing measurable: the same closed-loop workload
//! against the emulated engine, with the per-request ranges on and off, gives the same TTFT and
//! ITL (the median over alternating runs of each run's mean) within noise. Built with the `nvtx` feature (as `cargo xtask ci` builds the tests),
//! the ranges are real NVTX calls, and the test's build asserts that they are compiled in;
//! without it both runs have none and only the on/off switch is exercised.

mod common;

// With the feature on, the load generator's ranges must really be compiled in (the emulator's
// `nvtx` feature turns on loadgen's), or both runs below would be without ranges: checked when
// the test is built.
#[cfg(feature = "nvtx")]
const _: () = assert!(loadgen::nvtx::ENABLED, "emulator/nvtx is on but loadgen::nvtx::ENABLED is false");

use std::time::Instant;

use common::*;
use emulator::EmulatorConfig;
use workload::{Limits, Mode, Plan, Prompt, Request, RequestMeta};

fn plan() -> Plan {
    let requests = (0..48u64)
        .map(|i| Request {
            id: i,
            prompt_len: 512,
            // Distinct prompts: no prefix reuse, so every request costs the same prefill.
            prompt: Prompt::Tokens(
                (0..512u32).map(|t| t.wrapping_mul(7919) ^ (i as u32 + 1) << 20).collect(),
            ),
            max_tokens: 16,
            send_at: None,
            depends_on: None,
            meta: RequestMeta::default(),
        })
        .collect();
    Plan { requests, mode: Mode::Closed { concurrency: 4 }, limits: Limits::default() }
}

async fn means(base: &str, ranges: bool) -> (f64, f64) {
    loadgen::nvtx::set_request_ranges(ranges);
    let out = tempfile::tempdir().unwrap();
    let mut sink = loadgen::ResultWriter::in_dir(out.path()).unwrap();
    let mut lg = loadgen::LoadgenConfig::new(base.to_owned());
    lg.progress = false;
    let outcome = loadgen::run(&plan(), &lg, &mut sink, Instant::now()).await.unwrap();
    assert_eq!(outcome.summary.completed, 48, "{:?}", outcome.summary);
    (outcome.summary.mean_ttft_ms, outcome.summary.mean_itl_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ranges_do_not_change_latencies() {
    let mut cfg = fast(EmulatorConfig::default());
    // A modelled second lasts 20 ms: steps of a few modelled ms take tens of microseconds,
    // long against an NVTX call and short enough for a quick test.
    cfg.time_scale = 0.02;
    let server = start(&cfg).await;
    let base = format!("http://{}", server.local_addr());
    // A warm-up run, then alternate so that drift hits both sides alike. The median of the
    // runs on each side, not their mean: one run slowed by the machine's other work (a build
    // beside the tests) must not decide the comparison.
    means(&base, true).await;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        on.push(means(&base, true).await);
        off.push(means(&base, false).await);
    }
    loadgen::nvtx::set_request_ranges(true);
    let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(f).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let (ttft_on, ttft_off) = (median(&on, |m| m.0), median(&off, |m| m.0));
    let (itl_on, itl_off) = (median(&on, |m| m.1), median(&off, |m| m.1));
    eprintln!(
        "nvtx compiled in: {}; ttft on/off {ttft_on:.3}/{ttft_off:.3} ms (ratio {:.3}); itl on/off \
         {itl_on:.3}/{itl_off:.3} ms (ratio {:.3})",
        loadgen::nvtx::ENABLED,
        ttft_on / ttft_off,
        itl_on / itl_off
    );
    assert!(ttft_off > 0.0 && itl_off > 0.0, "the runs measured nothing: {on:?} {off:?}");
    // Noise on a shared 2-core machine: 15% or half a millisecond, whichever is larger.
    let close = |a: f64, b: f64| (a - b).abs() <= (0.15 * b).max(0.5);
    assert!(close(ttft_on, ttft_off), "TTFT with ranges {ttft_on:.3} ms, without {ttft_off:.3} ms");
    assert!(close(itl_on, itl_off), "ITL with ranges {itl_on:.3} ms, without {itl_off:.3} ms");
    server.shutdown().await.unwrap();
}
