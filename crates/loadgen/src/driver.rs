//! The driver: releases the plan's requests on time and collects their records.
//!
//! Each worker's loop owns its part of the schedule. Every request waits in a queue ordered by
//! its intended send time: open-loop requests at `start + send_at`, closed-loop requests at
//! `start` (the cap of `concurrency` in flight makes them go out one as another finishes), and a
//! dependent request (the next turn of a session) at its parent's end plus its think time, queued
//! when the parent finishes. A due request goes out at once unless `max_concurrency` requests are
//! in flight (with several workers, each holds its share of the slots, and a due request goes to
//! whichever worker has one free); then it waits for a slot, and the record says when it got one
//! (`queued_until`: when the worker saw a request of its own end), so that the wait is reported
//! as queue wait and only the client's delay after it as lag. The clock never waits on a response
//! otherwise: no coordinated omission.
//!
//! A dependent request is sent even when its parent failed (its prompt is already fixed by the
//! plan, and the server's behaviour on the next turn is still worth measuring); a request whose
//! parent was never sent (duration limit) is not sent either.
//!
//! The plan is sent by worker threads (one per core by default, as oha does), each with its own
//! current-thread runtime, connection pool and share of the concurrency: a request's future and
//! its connection's task run on the same thread, and nothing crosses threads per token. The
//! requests that depend on none wait in one shared queue in send-time order; a worker with a free
//! slot takes the next one when it is due, so the workers balance themselves. A session's later
//! turns stay on the worker that sent its first. Bodies are serialized and prompts hashed before
//! the clock starts; each finished request's record goes, in a batch per wake-up, to a writer
//! thread that appends it to `requests.jsonl` (and draws the progress bar), so nothing on the
//! thread that takes timestamps formats or writes. The records are merged at the end.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;
use stats::{RequestRecord, Summary};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use workload::{Mode, Plan};

use crate::client::{Client, Prepared, Timing};
use crate::config::{Connections, LoadgenConfig, SummaryOutput, MAX_WARM_CONNECTIONS};
use crate::progress::Progress;
use crate::results::{RequestsFile, ResultWriter, ResultsError, SUMMARY_JSON};
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
    /// The warm-up phase ([`Connections::Warm`]), `None` for cold connections.
    pub connection_warmup: Option<ConnectionWarmup>,
    /// Worker threads the run used.
    pub threads: usize,
    /// When the measured requests' phase began (seconds since the run's origin): every warm-up
    /// request had ended and [`LoadgenConfig::on_measured_start`] had returned. `None` for a plan
    /// without warm-up requests, or a run that stopped before its warm-up ended.
    pub measured_start_s: Option<f64>,
}

impl RunOutcome {
    /// What `summary.json` holds: the summary with `vllm bench serve`'s names, the connection
    /// warm-up and the client's threads (written by [`crate::run`] unless
    /// [`LoadgenConfig::summary_file`] leaves it to the caller).
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::to_value(SummaryFile {
            summary: &self.summary,
            connection_warmup: self.connection_warmup.as_ref(),
            client_threads: self.threads,
        })
        .unwrap_or(serde_json::Value::Null)
    }

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
    let mut client = Client::connect(cfg).await?;
    let n = plan.requests.len();
    let limit = |c: u32| usize::try_from(c).unwrap_or(usize::MAX).max(1);
    let max_concurrency = plan.limits.max_concurrency.map_or(usize::MAX, limit);
    let (cap, closed) = match plan.mode {
        Mode::Open => (max_concurrency, false),
        Mode::Closed { concurrency } => (limit(concurrency).min(max_concurrency), true),
    };
    let shared = Arc::new(Shared::new(plan, &client, closed, cfg.threads.unwrap_or_else(cores)));
    let threads = worker_count(cfg.threads, cap, shared.roots.iter().map(Vec::len).sum());
    let warm = match cfg.connections {
        Connections::Warm => shared.warm_connections(cap, closed),
        Connections::Cold => 0,
    };
    // The run's own stop: the caller's, and a failed write of the records.
    let stop = cfg.stop.as_ref().map_or_else(CancellationToken::new, CancellationToken::child_token);
    client.set_stop(stop.clone());

    let (records_tx, records_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // If this future is dropped before the writer is done (a caller that gave up on the run),
    // the run stops and the writer appends nothing more: what the caller then reads of
    // `requests.jsonl` stays the run's whole record.
    let mut abandon =
        Abandon { gate: Arc::new(std::sync::Mutex::new(false)), stop: stop.clone(), armed: true };
    let writer = RecordWriter {
        file: sink.take_requests()?,
        records: records_rx,
        progress: Progress::new(n as u64, cfg.progress),
        shared: Arc::clone(&shared),
        stop: stop.clone(),
        abandoned: Arc::clone(&abandon.gate),
    };
    std::thread::Builder::new()
        .name("loadgen-writer".into())
        .spawn(move || {
            let _ = done_tx.send(writer.run());
        })
        .map_err(Error::Threads)?;

    // The end of the warm-up: the last worker to finish its warm-up requests says so, and the
    // workers wait for the measured phase's start, given once the caller's hook has returned.
    let (warmed_tx, warmed_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::watch::channel(None);
    let gated = shared.warmup > 0;
    let sync = Arc::new(StartLine {
        barrier: Barrier::new(threads),
        start: OnceLock::new(),
        warming: AtomicUsize::new(threads),
        warmed: std::sync::Mutex::new(Some(warmed_tx)),
        go: go_rx,
    });
    let mut handles = Vec::with_capacity(threads);
    for k in 0..threads {
        let worker = Worker {
            client: client.for_worker()?,
            shared: Arc::clone(&shared),
            sync: Arc::clone(&sync),
            records: records_tx.clone(),
            cap: share(cap, threads, k),
            warm: share(warm, threads, k),
            origin: Instant::from_std(origin),
            stop: stop.clone(),
        };
        let spawned = std::thread::Builder::new().name(format!("loadgen-{k}")).spawn(move || worker.run());
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The workers started wait at the start line for ever: give them their missing
                // peers' turns (nothing is sent: the run stops first).
                stop.cancel();
                for _ in k..threads {
                    sync.barrier.wait();
                }
                return Err(Error::Threads(e));
            }
        }
    }
    drop(records_tx);
    let gate = async {
        if !gated || warmed_rx.await.is_err() {
            return None;
        }
        // A stopped run sends nothing more: no measured phase to mark.
        let stopped = stop.is_cancelled();
        if let (Some(hook), false) = (&cfg.on_measured_start, stopped) {
            hook().await;
        }
        let now = Instant::now();
        let _ = go_tx.send(Some(now));
        (!stopped).then(|| now.into_std().saturating_duration_since(origin).as_secs_f64())
    };
    let (measured_start_s, written) = tokio::join!(gate, done_rx);
    let written = written.map_err(|_| Error::Threads(std::io::Error::other("the record writer stopped")))?;
    abandon.armed = false;
    let mut warmups = Vec::with_capacity(threads);
    for h in handles {
        warmups
            .push(h.join().map_err(|_| Error::Threads(std::io::Error::other("a worker thread panicked")))?);
    }
    sink.restore_requests(written.file);
    if let Some(e) = written.error {
        return Err(e.into());
    }
    let mut records = written.records;
    records.sort_by_key(|r| r.id);
    sink.write_csv(&records)?;
    let summary = stats::summarize(&records, &cfg.summary);
    let connection_warmup = (cfg.connections == Connections::Warm).then(|| ConnectionWarmup {
        connections: warmups.iter().map(|w| w.0).sum(),
        seconds: warmups.iter().map(|w| w.1).fold(0.0, f64::max),
    });
    let sent = records.len() as u64;
    let outcome = RunOutcome {
        records,
        summary,
        model: client.model().to_string(),
        sent,
        not_sent: n as u64 - sent,
        max_failed_fraction: cfg.max_failed_fraction,
        connection_warmup,
        threads,
        measured_start_s,
    };
    if cfg.summary_file == SummaryOutput::Write {
        sink.write_json(SUMMARY_JSON, &outcome.summary_json())?;
    }
    Ok(outcome)
}

/// What the warm-up phase did before the run clock started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ConnectionWarmup {
    /// Connections opened (answered) before the first request.
    pub connections: u64,
    /// How long opening them took (the slowest worker).
    pub seconds: f64,
}

/// `summary.json`: the summary with `vllm bench serve`'s names, and how the client ran.
#[derive(Serialize)]
struct SummaryFile<'a> {
    #[serde(flatten)]
    summary: &'a Summary,
    /// `null` when the run's connections were cold ([`Connections::Cold`]).
    connection_warmup: Option<&'a ConnectionWarmup>,
    client_threads: usize,
}

/// One per core this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Workers: as configured (or one per core), no more than request slots or first requests.
fn worker_count(configured: Option<usize>, cap: usize, roots: usize) -> usize {
    configured.unwrap_or_else(cores).min(cap).min(roots).max(1)
}

/// Worker `k`'s part of `total` split over `workers`.
fn share(total: usize, workers: usize, k: usize) -> usize {
    total / workers + usize::from(k < total % workers)
}

/// The warm-up requests' phase, then the measured requests'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup = 0,
    Measured = 1,
}

/// What every worker reads: the prepared requests and the order they go out in.
struct Shared {
    prepared: Vec<Prepared>,
    /// Per [`Phase`]: the requests that depend on none, by intended send time (closed loop: all
    /// at the start).
    roots: [Vec<(Duration, usize)>; 2],
    /// Per [`Phase`]: the next root to send; a worker takes one by moving it on.
    next_root: [AtomicUsize; 2],
    /// The requests that depend on each request, with their think time.
    children: Vec<Vec<(usize, Duration)>>,
    is_root: Vec<bool>,
    closed: bool,
    warmup: u64,
    duration: Option<Duration>,
}

impl Shared {
    /// Serializes every body and hashes every prompt now, before the run clock starts, on up to
    /// `threads` threads.
    fn new(plan: &Plan, client: &Client, closed: bool, threads: usize) -> Shared {
        let n = plan.requests.len();
        let mut children: Vec<Vec<(usize, Duration)>> = vec![Vec::new(); n];
        let mut is_root = vec![true; n];
        for (i, r) in plan.requests.iter().enumerate() {
            if let Some(dep) = r.depends_on {
                children[dep.parent as usize].push((i, dep.think_time));
                is_root[i] = false;
            }
        }
        let warmup = u64::from(plan.limits.warmup);
        let mut roots: [Vec<(Duration, usize)>; 2] = [Vec::new(), Vec::new()];
        for (i, r) in plan.requests.iter().enumerate().filter(|(_, r)| r.depends_on.is_none()) {
            let at = if closed { Duration::ZERO } else { r.send_at.unwrap_or_default() };
            let phase = if r.id < warmup { Phase::Warmup } else { Phase::Measured };
            roots[phase as usize].push((at, i));
        }
        roots.iter_mut().for_each(|r| r.sort());
        let per = n.div_ceil(threads.max(1)).max(256);
        let prepared = std::thread::scope(|scope| {
            let parts: Vec<_> = plan
                .requests
                .chunks(per)
                .map(|part| {
                    scope.spawn(move || part.iter().map(|r| Prepared::new(client, r)).collect::<Vec<_>>())
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        Shared {
            prepared,
            roots,
            next_root: [AtomicUsize::new(0), AtomicUsize::new(0)],
            children,
            is_root,
            closed,
            warmup,
            duration: plan.limits.duration,
        }
    }

    /// Connections the run will use (see [`Connections::Warm`]).
    fn warm_connections(&self, cap: usize, closed: bool) -> usize {
        let wanted = if closed || cap != usize::MAX {
            cap
        } else {
            // The busier first second of either phase (each starts its schedule afresh).
            let first_second =
                |r: &[(Duration, usize)]| r.partition_point(|&(at, _)| at < Duration::from_secs(1));
            self.roots.iter().map(|r| first_second(r)).max().unwrap_or(0).min(MAX_WARM_CONNECTIONS)
        };
        wanted.min(self.roots.iter().map(Vec::len).max().unwrap_or(0))
    }

    /// The phase's next root not yet taken: its position and when it is due, its planned time
    /// after `start`.
    fn peek_root(&self, phase: Phase, start: Instant) -> Option<(usize, Instant)> {
        let pos = self.next_root[phase as usize].load(Ordering::Acquire);
        self.roots[phase as usize].get(pos).map(|&(at, _)| (pos, start + at))
    }

    /// Takes the phase's root at `pos`, unless another worker took it first.
    fn take_root(&self, phase: Phase, pos: usize) -> bool {
        self.next_root[phase as usize]
            .compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Where the workers wait for each other after the connection warm-up, and the run clock's
/// start; then, after the warm-up requests, the measured phase's start.
struct StartLine {
    barrier: Barrier,
    start: OnceLock<Instant>,
    /// Workers still sending warm-up requests; the last one to finish tells [`run`] (`warmed`).
    warming: AtomicUsize,
    warmed: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// The measured phase's start, once [`run`] gives it.
    go: tokio::sync::watch::Receiver<Option<Instant>>,
}

impl StartLine {
    /// One worker has ended its warm-up requests; the last one tells [`run`].
    fn warmup_ended(&self) {
        if self.warming.fetch_sub(1, Ordering::AcqRel) == 1 {
            let warmed = self.warmed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some(tx) = warmed {
                let _ = tx.send(());
            }
        }
    }

    /// Waits (without blocking the worker's thread) until every worker has ended its warm-up
    /// requests and [`run`] has started the measured phase; returns its start.
    async fn measured_start(&self) -> Instant {
        self.warmup_ended();
        let mut go = self.go.clone();
        // A run that gave up drops its sender: nothing more is sent then (its stop is cancelled).
        let start = go.wait_for(Option::is_some).await.ok().and_then(|s| *s);
        start.unwrap_or_else(Instant::now)
    }
}

/// One worker thread: its own current-thread runtime and connections; takes roots from the
/// shared queue while it has free slots, and runs the turns that follow its own requests.
struct Worker {
    client: Client,
    shared: Arc<Shared>,
    sync: Arc<StartLine>,
    records: std::sync::mpsc::Sender<Vec<RequestRecord>>,
    cap: usize,
    warm: usize,
    origin: Instant,
    stop: CancellationToken,
}

impl Worker {
    /// Connections warmed and the seconds it took.
    fn run(self) -> (u64, f64) {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            // Out of tokio's cooperative budget: the worker's one task drives every request of
            // its thread, so after 128 socket operations in one poll the budget would turn the
            // rest of them Pending until the next round: a request stamped sent but written
            // later, a token read late. Its fairness is not needed on a thread of its own; the
            // task still yields when its sockets have nothing.
            Ok(rt) => rt.block_on(tokio::task::unconstrained(self.drive())),
            Err(_) => {
                // Without a runtime this worker sends nothing; the others still start.
                self.stop.cancel();
                self.sync.barrier.wait();
                self.sync.warmup_ended();
                (0, 0.0)
            }
        }
    }

    async fn drive(self) -> (u64, f64) {
        let warm_start = Instant::now();
        let opened = if self.warm > 0 { self.client.open_connections(self.warm).await } else { 0 };
        let warm_secs = warm_start.elapsed().as_secs_f64();
        // Blocks this worker's thread, which has nothing else to do until every worker is warm.
        self.sync.barrier.wait();
        let start = *self.sync.start.get_or_init(Instant::now);
        let shared = &*self.shared;
        let mut queues = Queues { pending: BinaryHeap::new(), later: BinaryHeap::new(), sending: true };
        if shared.warmup > 0 {
            // The warm-up requests first, every one of them ended before a measured one goes out:
            // what the engine counted by then (the caller's hook reads it) is the warm-up's alone.
            let stop_at = shared.duration.map(|d| start + d);
            // A worker that panics in its warm-up still counts as done, so the others go on.
            let guard = WarmupEnd(&self.sync);
            self.send_phase(Phase::Warmup, start, stop_at, &mut queues).await;
            std::mem::forget(guard);
            let measured = self.sync.measured_start().await;
            // The measured schedule keeps its planned times, later by however long the warm-up
            // ran past the first measured root's; so does the duration limit. A measured turn
            // whose warm-up parent has ended is due its think time after it, or now.
            let first = shared.roots[Phase::Measured as usize].first().map_or(Duration::ZERO, |r| r.0);
            let delay = measured.saturating_duration_since(start + first);
            for Reverse((at, i)) in std::mem::take(&mut queues.later) {
                queues.pending.push(Reverse((at.max(measured), i)));
            }
            let stop_at = shared.duration.map(|d| start + delay + d);
            self.send_phase(Phase::Measured, start + delay, stop_at, &mut queues).await;
        } else {
            let stop_at = shared.duration.map(|d| start + d);
            self.send_phase(Phase::Measured, start, stop_at, &mut queues).await;
        }
        (opened, warm_secs)
    }

    /// Sends the phase's roots (due at `start` plus their planned time) and the turns that
    /// follow them, until none is left in flight or to send. In the warm-up, a measured turn that
    /// follows a warm-up request waits in `later`.
    async fn send_phase(&self, phase: Phase, start: Instant, stop_at: Option<Instant>, q: &mut Queues) {
        let shared = &*self.shared;
        let client = &self.client;
        let mut in_flight = FuturesUnordered::new();
        let mut batch: Vec<RequestRecord> = Vec::new();
        // Since when every slot of this worker has been taken, and when the last request of its
        // own that ended was seen: a request due in between waited for a slot until then.
        let mut full_since: Option<Instant> = None;
        let mut freed: Option<Instant> = None;
        let stopped = self.stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let now = Instant::now();
            if q.sending && (stop_at.is_some_and(|s| now >= s) || self.stop.is_cancelled()) {
                q.sending = false;
                q.pending.clear();
                q.later.clear();
            }
            // The earliest of the shared queue's next root and this worker's next turn goes
            // first, when due and a slot is free.
            let mut wake = None;
            while q.sending && in_flight.len() < self.cap {
                let local = q.pending.peek().map(|&Reverse(t)| t);
                let root =
                    shared.peek_root(phase, start).filter(|&(_, at)| local.is_none_or(|(t, _)| at <= t));
                let (at, i) = match (root, local) {
                    (Some((_, at)), _) | (None, Some((at, _))) if at > now => {
                        wake = Some(at);
                        break;
                    }
                    (Some((pos, at)), _) => {
                        if !shared.take_root(phase, pos) {
                            continue;
                        }
                        (at, shared.roots[phase as usize][pos].1)
                    }
                    (None, Some((at, i))) => {
                        q.pending.pop();
                        (at, i)
                    }
                    (None, None) => break,
                };
                let req = &shared.prepared[i];
                let queued_until = match (full_since, freed) {
                    (Some(full), Some(freed)) if at < freed && full <= freed => Some(freed),
                    _ => None,
                };
                let timing = Timing {
                    intended: at,
                    queued_until,
                    origin: self.origin,
                    warmup: req.id < shared.warmup,
                    intended_is_sent: shared.closed && shared.is_root[i],
                };
                in_flight.push(client.send(req, timing));
            }
            if in_flight.len() < self.cap {
                full_since = None;
            } else if full_since.is_none() || freed.is_some() {
                full_since = Some(Instant::now());
            }
            freed = None;
            let roots_left = shared.peek_root(phase, start).is_some();
            if in_flight.is_empty() && q.pending.is_empty() && (!q.sending || !roots_left) {
                break;
            }
            let wake = wake.map(|w| stop_at.map_or(w, |s| s.min(w)));
            tokio::select! {
                biased;
                Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                    freed = Some(Instant::now());
                    let mut on_record = |r: RequestRecord| {
                        let end = self.origin + Duration::from_secs_f64(r.end.max(0.0));
                        for &(c, think) in &shared.children[r.id as usize] {
                            let measured = shared.prepared[c].id >= shared.warmup;
                            let queue = if phase == Phase::Warmup && measured { &mut q.later } else { &mut q.pending };
                            queue.push(Reverse((end + think, c)));
                        }
                        batch.push(r);
                    };
                    on_record(first);
                    while let Some(Some(r)) = in_flight.next().now_or_never() {
                        on_record(r);
                    }
                    // Never blocks; the writer thread formats and writes.
                    let _ = self.records.send(std::mem::take(&mut batch));
                }
                () = sleep_until_opt(wake), if wake.is_some() => {}
                // In-flight requests see the stop themselves; this wakes a loop waiting to send.
                () = &mut stopped, if q.sending => {}
            }
        }
    }
}

/// Says the worker's warm-up ended if it is dropped (a panic) before the worker says so itself.
struct WarmupEnd<'a>(&'a StartLine);

impl Drop for WarmupEnd<'_> {
    fn drop(&mut self) {
        self.0.warmup_ended();
    }
}

/// A worker's turns waiting for their time, and whether it still sends.
struct Queues {
    /// Turns of the current phase whose parent has ended, by due time.
    pending: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Measured turns whose warm-up parent has ended, held until the measured phase.
    later: BinaryHeap<Reverse<(Instant, usize)>>,
    /// False once the run was stopped or its duration passed.
    sending: bool,
}

/// The writer thread: adds each record's prompt blocks, updates the progress bar and appends
/// the records to `requests.jsonl`, flushed, every [`WRITE_EVERY`] (waking the workers' core
/// a hundred times a second, not once per request).
struct RecordWriter {
    file: RequestsFile,
    records: std::sync::mpsc::Receiver<Vec<RequestRecord>>,
    progress: Progress,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Set when [`run`]'s future was dropped: nothing more is appended (held while appending).
    abandoned: Arc<std::sync::Mutex<bool>>,
}

/// Dropped with [`run`]'s future before the writer is done: stops the run, and closes the
/// writer's gate, waiting for an append in progress, so no record lands after the caller moved on.
struct Abandon {
    gate: Arc<std::sync::Mutex<bool>>,
    stop: CancellationToken,
    armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            *self.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
            self.stop.cancel();
        }
    }
}

/// How often the writer thread takes the records that finished.
const WRITE_EVERY: Duration = Duration::from_millis(10);

/// Records formatted and written between two yields of the writer thread.
const WRITE_SLICE: usize = 32;

/// What the writer thread hands back at the end.
struct Written {
    records: Vec<RequestRecord>,
    file: RequestsFile,
    /// The first write that failed; the run was stopped then.
    error: Option<ResultsError>,
}

impl RecordWriter {
    fn run(mut self) -> Written {
        let mut records = Vec::with_capacity(self.shared.prepared.len());
        let mut error = None;
        let mut open = true;
        while open {
            std::thread::sleep(WRITE_EVERY);
            let first = records.len();
            loop {
                match self.records.try_recv() {
                    Ok(batch) => records.extend(batch),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let new = &mut records[first..];
            for r in new.iter_mut() {
                r.prompt_blocks = Some(self.shared.prepared[r.id as usize].blocks.clone());
                self.progress.on_record(r);
            }
            // In slices, yielding between them: where the writer shares a core with a worker,
            // the worker's timestamps wait for one slice at most, not for a whole burst.
            for slice in new.chunks(WRITE_SLICE) {
                let abandoned = self.abandoned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if error.is_none() && !*abandoned {
                    if let Err(e) = self.file.append(slice) {
                        error = Some(e);
                        self.stop.cancel();
                    }
                }
                drop(abandoned);
                std::thread::yield_now();
            }
        }
        self.progress.finish();
        Written { records, file: self.file, error }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    if let Some(at) = at {
        timer::sleep_until(at.into_std()).await;
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
