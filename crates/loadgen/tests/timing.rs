//! Timing-sensitive checks of the load generator, in their own test binary (cargo runs test
//! binaries one after another) and one at a time, so no other test shares the two cores with them.

mod common;

use std::time::Duration;

use common::{config, plan, request, run, start, Behavior};
use stats::{RequestRecord, TokenSource};
use workload::{Limits, Mode, Plan, Prompt};

/// One timing test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Chunks of 4 tokens every 20 ms with continuous usage: ITL 20 ms a chunk (as `vllm bench
/// serve`), 5 ms a token.
#[tokio::test]
async fn multi_token_chunks_keep_itl_right() {
    let _serial = SERIAL.lock().await;
    let server = start(Behavior {
        ttft: Duration::from_millis(30),
        itl: Duration::from_millis(20),
        tokens_per_chunk: 4,
        ..Default::default()
    });
    let mut cfg = config(&server.url);
    cfg.continuous_usage = true;
    let (out, _dir) = run(&plan(2, 16, Mode::Closed { concurrency: 1 }), &cfg).await;
    for r in &out.records {
        assert_eq!(r.error, None);
        assert_eq!(r.chunks.iter().map(|c| c.1).collect::<Vec<_>>(), [4, 4, 4, 4]);
        assert_eq!((r.output_tokens, r.token_source), (16, TokenSource::Usage));
    }
    let s = &out.summary;
    let (itl, per_token) = (s.median_itl_ms, s.median_itl_per_token_ms);
    assert!((itl - 20.0).abs() <= 4.0, "ITL per chunk {itl} ms");
    assert!((per_token - 5.0).abs() <= 1.0, "ITL per token {per_token} ms");
    assert_eq!(s.itl_per_token_requests, 2);
    // Without continuous usage, each chunk counts 1 and the final usage still gives 16: the
    // chunks' counts are not known, and there is no per-token ITL.
    cfg.continuous_usage = false;
    let (out, _dir) = run(&plan(1, 16, Mode::Open), &cfg).await;
    let r = &out.records[0];
    assert_eq!(r.chunks.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 1, 1, 1]);
    assert_eq!((r.output_tokens, r.token_source), (16, TokenSource::Usage));
    let s = &out.summary;
    assert!((s.median_itl_ms - 20.0).abs() <= 4.0, "ITL per chunk {} ms", s.median_itl_ms);
    assert_eq!((s.itl_per_token_requests, s.median_itl_per_token_ms), (0, 0.0));
}

#[tokio::test]
async fn open_loop_follows_the_schedule() {
    let _serial = SERIAL.lock().await;
    let server = start(Behavior { ttft: Duration::from_millis(150), ..Default::default() });
    let at = |ms| Some(Duration::from_millis(ms));
    let requests = [0, 50, 100, 150]
        .iter()
        .enumerate()
        .map(|(i, &t)| request(i as u64, Prompt::Text("x".into()), 2, at(t)))
        .collect();
    let mut p = Plan { requests, mode: Mode::Open, limits: Limits::default() };
    let (out, _dir) = run(&p, &config(&server.url)).await;
    let base = out.records[0].intended;
    for (r, want) in out.records.iter().zip([0.0, 0.05, 0.1, 0.15]) {
        assert!((r.intended - base - want).abs() < 1e-3, "{r:?}");
        assert!(r.client_lag() < 0.005, "open loop does not wait for responses: lag {}", r.client_lag());
    }
    // Capped at 1 in flight: requests wait for a slot, each until the one before it ended; the
    // wait is queue wait, and only what the client took after it is lag.
    p.limits.max_concurrency = Some(1);
    let (out, _dir) = run(&p, &config(&server.url)).await;
    let waits: Vec<f64> = out.records.iter().map(RequestRecord::queue_wait).collect();
    assert!(out.records[0].queued_until.is_none(), "{:?}", out.records[0]);
    assert!(waits[1] > 0.09 && waits[2] > waits[1] && waits[3] > waits[2], "{waits:?}");
    for w in out.records.windows(2) {
        assert!(w[1].sent >= w[0].end, "one at a time");
        let slot = w[1].queued_until.unwrap_or_default() - w[0].end;
        assert!((0.0..0.02).contains(&slot), "a slot frees when the request before ends: {slot} s");
    }
    for r in &out.records {
        assert!(r.client_lag() < 0.005, "the wait for a slot is not lag: lag {} in {r:?}", r.client_lag());
    }
    let s = &out.summary;
    assert_eq!((s.queued_requests, s.client_limited), (3, false), "{s:?}");
    assert!(s.p99_client_queue_time_ms > 250.0, "{s:?}");
}
