//! The progress bar: requests done, current rate, median TTFT. Updated once per finished request,
//! redrawn at most a few times a second; hidden when disabled or when stderr is not a terminal.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stats::RequestRecord;

/// How often the message (rate, median TTFT) is recomputed.
const REFRESH: Duration = Duration::from_millis(250);

pub(crate) struct Progress {
    bar: ProgressBar,
    ttfts_ms: Vec<f64>,
    failed: u64,
    started: Instant,
    last_refresh: Instant,
}

impl Progress {
    pub(crate) fn new(total: u64, enabled: bool) -> Progress {
        let bar = if enabled {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4))
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} requests  {msg}") {
            bar.set_style(style);
        }
        let now = Instant::now();
        Progress { bar, ttfts_ms: Vec::new(), failed: 0, started: now, last_refresh: now }
    }

    pub(crate) fn on_record(&mut self, r: &RequestRecord) {
        if self.bar.is_hidden() {
            return;
        }
        match r.error {
            None => self.ttfts_ms.push(r.ttft() * 1000.0),
            Some(_) => self.failed += 1,
        }
        self.bar.inc(1);
        let now = Instant::now();
        if now.duration_since(self.last_refresh) >= REFRESH {
            self.last_refresh = now;
            let message = self.message(now);
            self.bar.set_message(message);
        }
    }

    fn message(&mut self, now: Instant) -> String {
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let rate = if elapsed > 0.0 { self.bar.position() as f64 / elapsed } else { 0.0 };
        let median = if self.ttfts_ms.is_empty() {
            "-".to_string()
        } else {
            let mid = self.ttfts_ms.len() / 2;
            let (_, m, _) = self.ttfts_ms.select_nth_unstable_by(mid, f64::total_cmp);
            format!("{m:.0} ms")
        };
        format!("{rate:.1} req/s  median TTFT {median}  failed {}", self.failed)
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
