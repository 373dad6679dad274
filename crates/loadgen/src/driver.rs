//! The driver: releases the plan's requests on time and collects their records.
//!
//! One loop owns the schedule. Every request waits in one queue ordered by its intended send
//! time: open-loop requests at `start + send_at`, closed-loop requests at `start` (the cap of
//! `concurrency` in flight makes them go out one as another finishes), and a dependent request
//! (the next turn of a session) at its parent's end plus its think time, queued when the parent
//! finishes. A due request goes out at once unless `max_concurrency` requests are in flight; then
//! it waits for a slot and its lag (actual minus intended send time) shows the wait. The clock
//! never waits on a response otherwise: no coordinated omission.
//!
//! A dependent request is sent even when its parent failed (its prompt is already fixed by the
//! plan, and the server's behaviour on the next turn is still worth measuring); a request whose
//! parent was never sent (duration limit) is not sent either.
//!
//! In-flight requests are futures polled by the calling task (the HTTP connections run as tasks
//! of the runtime); each ends in one record, which is appended to `requests.jsonl` at once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use stats::{RequestRecord, Summary};
use tokio::time::Instant;
use workload::{Mode, Plan};

use crate::client::{Client, Timing};
use crate::config::LoadgenConfig;
use crate::progress::Progress;
use crate::results::{ResultWriter, SUMMARY_JSON};
use crate::Error;

/// What a run did.
///
/// Invariant: `records.len() == sent` and `sent + not_sent == plan.requests.len()`; every
/// record is either completed (`error == None`) or failed with one classified error.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// One per request sent, ordered by request id.
    pub records: Vec<RequestRecord>,
    /// What `summary.json` holds (warm-up requests excluded).
    pub summary: Summary,
    /// The model the requests named.
    pub model: String,
    /// Requests sent, warm-up included.
    pub sent: u64,
    /// Requests not sent because `Limits::duration` had passed (or their parent was not sent).
    pub not_sent: u64,
    /// The configured tolerance, copied for [`RunOutcome::is_success`].
    pub max_failed_fraction: f64,
}

impl RunOutcome {
    /// Failed fraction of the non-warm-up requests sent; 1 when none was sent.
    pub fn failed_fraction(&self) -> f64 {
        if self.summary.sent == 0 {
            return 1.0;
        }
        self.summary.failed as f64 / self.summary.sent as f64
    }

    /// True when at least one non-warm-up request completed and the failed fraction is at most
    /// `max_failed_fraction`. A run where everything failed (or nothing was measured) is never a
    /// success.
    pub fn is_success(&self) -> bool {
        self.summary.completed > 0 && self.failed_fraction() <= self.max_failed_fraction
    }

    /// Why the run is not a success (for the command line's error), or `None` for a success.
    pub fn failure_message(&self) -> Option<String> {
        if self.is_success() {
            return None;
        }
        let s = &self.summary;
        if s.sent == 0 {
            return Some(
                "no measured request was sent (all warm-up, or stopped by the duration limit)".into(),
            );
        }
        let classes: Vec<String> =
            s.failed_by_class.iter().map(|(class, n)| format!("{class} {n}")).collect();
        Some(format!(
            "{} of {} requests failed ({:.1}%, allowed {:.1}%){}{}",
            s.failed,
            s.sent,
            100.0 * self.failed_fraction(),
            100.0 * self.max_failed_fraction,
            if classes.is_empty() { "" } else { ": " },
            classes.join(", "),
        ))
    }
}

pub(crate) async fn run(
    plan: &Plan,
    cfg: &LoadgenConfig,
    sink: &mut ResultWriter,
    origin: std::time::Instant,
) -> Result<RunOutcome, Error> {
    validate(plan, cfg)?;
    let client = Client::connect(cfg).await?;
    let origin = Instant::from_std(origin);
    let n = plan.requests.len();

    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, r) in plan.requests.iter().enumerate() {
        if let Some(dep) = r.depends_on {
            children[dep.parent as usize].push(i);
        }
    }
    let limit = |c: u32| usize::try_from(c).unwrap_or(usize::MAX).max(1);
    let max_concurrency = plan.limits.max_concurrency.map_or(usize::MAX, limit);
    let (cap, closed) = match plan.mode {
        Mode::Open => (max_concurrency, false),
        Mode::Closed { concurrency } => (limit(concurrency).min(max_concurrency), true),
    };

    let start = Instant::now();
    let stop_at = plan.limits.duration.map(|d| start + d);
    let mut pending: BinaryHeap<Reverse<(Instant, usize)>> = plan
        .requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.depends_on.is_none())
        .map(|(i, r)| {
            let offset = if closed { Duration::ZERO } else { r.send_at.unwrap_or_default() };
            Reverse((start + offset, i))
        })
        .collect();

    let mut progress = Progress::new(n as u64, cfg.progress);
    let mut in_flight = FuturesUnordered::new();
    let mut records: Vec<RequestRecord> = Vec::with_capacity(n);
    let mut batch: Vec<RequestRecord> = Vec::new();
    let mut sent = 0u64;
    // Without a stop, a token nobody cancels. One waiter for the whole run (polling a finished
    // `WaitForCancellationFuture` again is allowed: it checks the token first).
    let stop = cfg.stop.clone().unwrap_or_default();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let now = Instant::now();
        if stop_at.is_some_and(|s| now >= s) || stop.is_cancelled() {
            pending.clear();
        }
        while in_flight.len() < cap {
            let Some(&Reverse((at, i))) = pending.peek() else { break };
            if at > now {
                break;
            }
            pending.pop();
            let req = &plan.requests[i];
            let timing = Timing {
                intended: at,
                origin,
                warmup: req.id < u64::from(plan.limits.warmup),
                intended_is_sent: closed && req.depends_on.is_none(),
            };
            in_flight.push(client.send(req, timing));
            sent += 1;
        }
        if in_flight.is_empty() && pending.is_empty() {
            break;
        }
        let wake = match (pending.peek(), in_flight.len() < cap) {
            (Some(Reverse((at, _))), true) => Some(stop_at.map_or(*at, |s| s.min(*at))),
            _ => None,
        };
        tokio::select! {
            biased;
            Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                let mut on_record = |r: RequestRecord| {
                    let end = origin + Duration::from_secs_f64(r.end.max(0.0));
                    for &c in &children[r.id as usize] {
                        let think = plan.requests[c].depends_on.map(|d| d.think_time).unwrap_or_default();
                        pending.push(Reverse((end + think, c)));
                    }
                    progress.on_record(&r);
                    batch.push(r);
                };
                on_record(first);
                while let Some(Some(r)) = in_flight.next().now_or_never() {
                    on_record(r);
                }
                sink.append(&batch)?;
                records.append(&mut batch);
            }
            () = sleep_until_opt(wake), if wake.is_some() => {}
            // In-flight requests see the stop themselves; this wakes a loop waiting to send.
            () = &mut stopped, if !pending.is_empty() => {}
        }
    }
    progress.finish();

    records.sort_by_key(|r| r.id);
    sink.write_csv(&records)?;
    let summary = stats::summarize(&records, &cfg.summary);
    sink.write_json(SUMMARY_JSON, &summary)?;
    Ok(RunOutcome {
        records,
        summary,
        model: client.model().to_string(),
        sent,
        not_sent: n as u64 - sent,
        max_failed_fraction: cfg.max_failed_fraction,
    })
}

async fn sleep_until_opt(at: Option<Instant>) {
    if let Some(at) = at {
        crate::timer::sleep_until(at.into_std()).await;
    }
}

/// Checks what [`run`] relies on before anything is sent.
fn validate(plan: &Plan, cfg: &LoadgenConfig) -> Result<(), Error> {
    if plan.requests.is_empty() {
        return Err(Error::EmptyPlan);
    }
    cfg.root_url()?;
    for (i, r) in plan.requests.iter().enumerate() {
        let fail = |reason: String| Err(Error::Plan { id: r.id, reason });
        if r.id != i as u64 {
            return fail(format!("found at index {i}; request ids must equal their index"));
        }
        if let Some(dep) = r.depends_on {
            if dep.parent >= r.id {
                return fail(format!("depends on request {}, which does not come before it", dep.parent));
            }
        }
        if let Err(reason) = Client::endpoint(cfg.api, &r.prompt) {
            return fail(reason.to_string());
        }
    }
    Ok(())
}
