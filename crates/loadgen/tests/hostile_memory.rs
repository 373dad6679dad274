//! The client's memory against a 10 MB SSE line and a 1 GB body, measured as the growth of
//! this process's peak resident size (`VmHWM`). One test in its own process, so that no other
//! test's allocations count. The servers generate their bodies as they go.

mod common;
mod raw;

use std::time::{Duration, Instant};

use common::{config, plan, run};
use raw::{peak_rss, reset_peak_rss, sse_head, start_raw, Step};
use workload::Mode;

/// Peak memory growth allowed while a capped answer is read, in bytes. Buffering the 10 MB line
/// whole would take at least 10 MB (the event parser keeps two copies); the 1 GB body 1 GB.
const BOUND: u64 = 8 << 20;

#[test]
fn capped_answers_keep_memory_bounded() {
    // The runtime, the thread pool and the first connection set up before measuring.
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let warm =
        start_raw(|_| vec![Step::Write(sse_head()), Step::Write(raw::sse_body(2).into_bytes()), Step::Close]);
    let (out, _dir) = rt.block_on(run(&plan(2, 2, Mode::Open), &config(&warm.url)));
    assert_eq!(out.summary.completed, 2);

    let line_10mb = |_| {
        vec![
            Step::Write(sse_head()),
            Step::Write(b"data: ".to_vec()),
            Step::Repeat(vec![b'x'; 64 << 10], 160),
            Step::Close,
        ]
    };
    let event =
        format!("data: {{\"choices\":[{{\"text\":\"{}\"}}]}}\n\n", "t".repeat((64 << 10) - 32)).into_bytes();
    let body_1gb = move |_| {
        vec![Step::Write(sse_head()), Step::Repeat(event.clone(), (1 << 30) / (64 << 10)), Step::Close]
    };

    let cases: [(&str, raw::Script, u64, &str); 2] = [
        (
            "10 MB line",
            std::sync::Arc::new(line_10mb),
            loadgen::DEFAULT_MAX_BODY_BYTES,
            "malformed_event: an SSE event longer than the cap of 1048576 bytes",
        ),
        (
            "1 GB body",
            std::sync::Arc::new(body_1gb),
            64 << 20,
            "malformed_event: a response body longer than the cap of 67108864 bytes",
        ),
    ];
    let mut report = Vec::new();
    for (name, script, max_body, expect) in cases {
        let server = start_raw(move |r| script(r));
        let mut cfg = config(&server.url);
        cfg.max_body_bytes = max_body;
        cfg.stall_timeout = Duration::from_secs(5);
        let reset = reset_peak_rss();
        let before = peak_rss();
        let started = Instant::now();
        let (out, _dir) = rt.block_on(run(&plan(1, 2, Mode::Open), &cfg));
        let growth = peak_rss().saturating_sub(before);
        let elapsed = started.elapsed();
        let written = server.written.load(std::sync::atomic::Ordering::Relaxed);
        drop(server);
        report.push(format!(
            "{name}: peak RSS growth {:.1} MiB (peak reset: {reset}), server wrote {:.1} MiB, {:.2} s",
            growth as f64 / (1 << 20) as f64,
            written as f64 / (1 << 20) as f64,
            elapsed.as_secs_f64()
        ));
        assert!(growth < BOUND, "{name}: the peak resident size grew by {growth} bytes");
        let r = &out.records[0];
        let e = r.error.as_ref().expect("failed");
        assert_eq!(format!("{}: {}", e.class(), e.detail()), expect, "{name}");
        assert_eq!((out.sent, out.summary.failed), (1, 1), "{name}");
        assert!(
            written < 2 * max_body.min(1 << 30),
            "{name}: the cap stopped the transfer early ({written} bytes)"
        );
        assert!(elapsed < Duration::from_secs(30), "{name}: {elapsed:?}");
    }
    // Shown with `--nocapture`; the figures for the README's reliability table.
    println!("{}", report.join("\n"));
}
