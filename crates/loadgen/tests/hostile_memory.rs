//! The client's memory in every hostile-server case (`raw/cases.rs`), measured as the growth of
//! this process's peak resident size (`VmHWM`) while the case runs. One test in its own process,
//! so that no other test's allocations count. The servers generate their bodies as they go.

mod common;
mod raw;

use common::{config, plan, run};
use raw::{peak_rss, reset_peak_rss, sse_body, sse_head, start_raw, Step};
use workload::Mode;

/// Peak memory growth allowed in one case, in bytes. Buffering the 10 MB line whole would take
/// at least 10 MB (the event parser keeps two copies); the 1 GB body 16 MiB at its cap.
const BOUND: u64 = 8 << 20;

#[test]
fn every_hostile_case_keeps_memory_bounded() {
    // The runtime, the thread pool and the first connection set up before measuring.
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let warm =
        start_raw(|_| vec![Step::Write(sse_head()), Step::Write(sse_body(2).into_bytes()), Step::Close]);
    let (out, _dir) = rt.block_on(run(&plan(2, 2, Mode::Open), &config(&warm.url)));
    assert_eq!(out.summary.completed, 2);

    let mut report = Vec::new();
    let mut over = Vec::new();
    for case in raw::cases::all() {
        let reset = reset_peak_rss();
        let before = peak_rss();
        rt.block_on(case.check());
        let growth = peak_rss().saturating_sub(before);
        report.push(format!(
            "{}: peak RSS growth {:.1} MiB (peak reset: {reset})",
            case.name,
            growth as f64 / (1 << 20) as f64
        ));
        if growth >= BOUND {
            over.push(format!("{}: {growth} bytes", case.name));
        }
    }
    // Shown with `--nocapture`; the figures for the README's reliability table.
    println!("{}", report.join("\n"));
    assert!(
        over.is_empty(),
        "the peak resident size grew past {BOUND} bytes in: {over:?}\n{}",
        report.join("\n")
    );
}
