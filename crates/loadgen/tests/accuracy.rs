//! Measurement accuracy against a server with a known timing: first token 80 ms after the request
//! arrives, then one every 20 ms. Alone in its test binary, so no other test shares the cores.
//!
//! The server also records when it really handed each frame to its connection (same monotonic
//! clock), which separates the client's error (send → arrival, and frame → timestamp) from the
//! server's own lateness on a busy machine.

mod common;

use std::time::{Duration, Instant};

use common::{config, plan, start, Behavior, Trace};
use loadgen::ResultWriter;
use stats::percentile;
use workload::Mode;

struct Measured {
    /// Summary TTFT and ITL: median, p90 (ms).
    ttft: [f64; 2],
    itl: [f64; 2],
    /// Client error: measured TTFT minus the server's actual TTFT (arrival → first frame), and
    /// client timestamp of each chunk minus the instant the server sent it: median, p90 (ms).
    ttft_error: [f64; 2],
    chunk_error: [f64; 2],
}

fn median_p90(mut v: Vec<f64>) -> [f64; 2] {
    v.sort_by(f64::total_cmp);
    [percentile(&v, 50.0), percentile(&v, 90.0)]
}

/// `n` requests of 8 tokens (220 ms each) with about `concurrency` in flight: open loop, evenly
/// spaced arrivals; the first `warmup` excluded. The run's connections are opened before its
/// clock starts (the default warm-up phase); the first round is still left out, as the server's
/// own tasks start cold.
async fn measure(concurrency: u32, n: u64, warmup: u32) -> Measured {
    let trace = Trace::default();
    let server = start(Behavior {
        ttft: Duration::from_millis(80),
        itl: Duration::from_millis(20),
        trace: Some(trace.clone()),
        precise_timer: true,
        ..Default::default()
    });
    let mut p = plan(n, 8, Mode::Open);
    let spacing = Duration::from_millis(230) / concurrency;
    for (i, r) in p.requests.iter_mut().enumerate() {
        r.send_at = Some(spacing * i as u32);
    }
    p.limits.warmup = warmup;
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = ResultWriter::in_dir(tmp.path()).unwrap();
    let origin = Instant::now();
    let out = loadgen::run(&p, &config(&server.url), &mut sink, origin).await.expect("run");
    let s = &out.summary;
    assert_eq!((s.completed, s.failed), (n - u64::from(warmup), 0), "{:?}", s.failed_by_class);

    let at = |secs: f64| origin + Duration::from_secs_f64(secs);
    let trace = trace.lock().unwrap();
    let (mut ttft_error, mut chunk_error) = (Vec::new(), Vec::new());
    for r in out.records.iter().filter(|r| !r.warmup) {
        let (arrival, frames) = &trace[&r.id];
        let server_ttft = frames[0].duration_since(*arrival).as_secs_f64();
        ttft_error.push((r.ttft() - server_ttft) * 1e3);
        for (&(t, _), frame) in r.chunks.iter().zip(frames) {
            chunk_error.push(at(t).saturating_duration_since(*frame).as_secs_f64() * 1e3);
        }
    }
    Measured {
        ttft: [s.median_ttft_ms, s.p90_ttft_ms],
        itl: [s.median_itl_ms, s.p90_itl_ms],
        ttft_error: median_p90(ttft_error),
        chunk_error: median_p90(chunk_error),
    }
}

/// Whether `m` is within bounds; the misses otherwise.
///
/// Medians are checked against the nominal 80 ms / 20 ms, within 2 ms; the client's error (what
/// it measured minus what the server really did) within 2 ms at the median and 5 ms at p90 (one
/// attempt on a shared machine). The absolute p90s are printed.
fn misses(concurrency: u32, m: &Measured) -> Vec<String> {
    let mut out = Vec::new();
    let mut within = |what: &str, got: f64, want: f64, bound: f64| {
        if (got - want).abs() > bound {
            out.push(format!("concurrency {concurrency}: {what} {got:.2} ms, want {want} ± {bound} ms"));
        }
    };
    within("median TTFT", m.ttft[0], 80.0, 2.0);
    within("median ITL", m.itl[0], 20.0, 2.0);
    within("median TTFT error", m.ttft_error[0], 0.0, 2.0);
    within("p90 TTFT error", m.ttft_error[1], 0.0, 5.0);
    within("median chunk error", m.chunk_error[0], 0.0, 2.0);
    within("p90 chunk error", m.chunk_error[1], 0.0, 5.0);
    out
}

/// One attempt per level, no retry: a guard against gross errors (a burst of connection set-ups,
/// a timestamp taken behind blocking work), with bounds that hold on a small shared machine where
/// other processes take the client's core for milliseconds. The precise figures (p50 and p99
/// errors at 1, 100 and 500 streams, against the kernel's receive times) come from
/// `benches/loadbench.rs`, not from a timed test. Every figure is printed.
#[tokio::test]
async fn ttft_and_itl_within_2ms_at_concurrency_1_and_256() {
    let mut report = String::new();
    let mut failures = Vec::new();
    for (concurrency, n, warmup) in [(1, 22, 2), (256, 1280, 256)] {
        let m = measure(concurrency, n, warmup).await;
        report += &format!(
            "concurrency {concurrency}: TTFT median {:.2} p90 {:.2} ms, ITL median {:.2} p90 {:.2} ms; \
             client error: TTFT median {:.2} p90 {:.2} ms, chunk timestamps median {:.2} p90 {:.2} ms\n",
            m.ttft[0],
            m.ttft[1],
            m.itl[0],
            m.itl[1],
            m.ttft_error[0],
            m.ttft_error[1],
            m.chunk_error[0],
            m.chunk_error[1],
        );
        failures.extend(misses(concurrency, &m));
    }
    eprint!("{report}");
    assert!(failures.is_empty(), "{}\n{report}", failures.join("\n"));
}
