//! Timing-sensitive checks of the load generator, in their own test binary (cargo runs test
//! binaries one after another) and one at a time, so no other test shares the two cores with them.

mod common;

use std::time::Duration;

use common::{config, plan, request, run, start, Behavior};
use stats::{RequestRecord, TokenSource};
use workload::{Limits, Mode, Plan, Prompt};

/// One timing test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Chunks of 4 tokens every 20 ms with continuous usage: 4 tokens per chunk, 5 ms per token.
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
    let itl = out.summary.median_itl_ms;
    assert!((itl - 5.0).abs() <= 1.0, "ITL per token {itl} ms");
    // Without continuous usage, each chunk counts 1 and the final usage still gives 16.
    cfg.continuous_usage = false;
    let (out, _dir) = run(&plan(1, 16, Mode::Open), &cfg).await;
    let r = &out.records[0];
    assert_eq!(r.chunks.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 1, 1, 1]);
    assert_eq!((r.output_tokens, r.token_source), (16, TokenSource::Usage));
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
    // Capped at 1 in flight: requests wait for a slot, and the wait shows as lag.
    p.limits.max_concurrency = Some(1);
    let (out, _dir) = run(&p, &config(&server.url)).await;
    let lags: Vec<f64> = out.records.iter().map(RequestRecord::client_lag).collect();
    assert!(lags[0] < 0.005 && lags[1] > 0.09 && lags[3] > lags[2], "{lags:?}");
    for w in out.records.windows(2) {
        assert!(w[1].sent >= w[0].end, "one at a time");
    }
}
