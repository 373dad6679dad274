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
/// spaced arrivals; the first `warmup` excluded. At 256 the warm-up is two rounds (512 requests):
/// the in-flight count wanders above its first peak for a while, and each new high opens a
/// connection whose set-up (connect, accept) is not the client's timing error.
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

/// Whether `m` is within 2 ms everywhere it must be; the misses otherwise.
///
/// Medians are checked against the nominal 80 ms / 20 ms; the tails against what the server
/// really did (the client's error), because on a loaded machine the server's own timer runs late
/// in the tail and that is not the client's measurement error. The absolute p90s are printed.
fn misses(concurrency: u32, m: &Measured) -> Vec<String> {
    let mut out = Vec::new();
    let mut within = |what: &str, got: f64, want: f64| {
        if (got - want).abs() > 2.0 {
            out.push(format!("concurrency {concurrency}: {what} {got:.2} ms, want {want} ± 2 ms"));
        }
    };
    within("median TTFT", m.ttft[0], 80.0);
    within("median ITL", m.itl[0], 20.0);
    within("median TTFT error", m.ttft_error[0], 0.0);
    within("p90 TTFT error", m.ttft_error[1], 0.0);
    within("median chunk error", m.chunk_error[0], 0.0);
    within("p90 chunk error", m.chunk_error[1], 0.0);
    out
}

/// Each level gets up to five attempts: other processes on a small shared machine can take the
/// client's core for milliseconds, which only ever adds error; an attempt within the bounds shows
/// the client measures right. Every attempt is printed.
#[tokio::test]
async fn ttft_and_itl_within_2ms_at_concurrency_1_and_256() {
    let mut report = String::new();
    let mut failures = Vec::new();
    for (concurrency, n, warmup) in [(1, 22, 2), (256, 1280, 512)] {
        let mut last = Vec::new();
        for attempt in 1..=5 {
            let m = measure(concurrency, n, warmup).await;
            report += &format!(
                "concurrency {concurrency} (attempt {attempt}): TTFT median {:.2} p90 {:.2} ms, ITL median {:.2} p90 {:.2} ms; \
                 client error: TTFT median {:.2} p90 {:.2} ms, chunk timestamps median {:.2} p90 {:.2} ms\n",
                m.ttft[0], m.ttft[1], m.itl[0], m.itl[1], m.ttft_error[0], m.ttft_error[1], m.chunk_error[0], m.chunk_error[1],
            );
            last = misses(concurrency, &m);
            if last.is_empty() {
                break;
            }
        }
        failures.extend(last);
    }
    eprint!("{report}");
    assert!(failures.is_empty(), "{}\n{report}", failures.join("\n"));
}
