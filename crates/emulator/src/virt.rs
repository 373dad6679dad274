//! Virtual time: a discrete-event replay of a whole plan, no sockets, no clock.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use stats::{RequestError, RequestRecord, TokenSource, RECORD_VERSION};
use workload::{Mode, Plan};

use crate::config::EmulatorConfig;
use crate::offload::{Access, OffloadIndex};
use crate::sched::{Core, NewRequest};
use crate::{check_lengths, prompt_tokens, Error};

/// A request becoming ready to send at `t`; earliest first, then lowest index.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ready {
    t: f64,
    idx: usize,
}

impl Eq for Ready {}

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        other.t.total_cmp(&self.t).then_with(|| other.idx.cmp(&self.idx))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Replays `plan` against the emulated engine in virtual time and returns one record per request
/// sent, ordered by id, exactly as the load generator would write them: times in seconds from 0
/// (the run's start), one chunk of one token per token, `first_byte` = `sent` (a streaming server
/// sends headers at once), usage-based token counts. A request the server would refuse (empty,
/// or longer than `max_model_len`) gets an `http_status` 400 record.
///
/// Open loop sends each request at its `send_at` (or `think_time` after its parent finished),
/// queueing behind `max_concurrency`; closed loop is the same with every independent request
/// ready at 0 and `concurrency` slots. A request's clock starts when it is sent: at its intended
/// time, or when a slot frees if it had to wait for one (the client's lag, as the load
/// generator's). One sent while a step runs waits in the engine's queue for that step to end,
/// as in the real-time server, and that wait is part of its TTFT. Requests that would be sent
/// after `limits.duration` are not sent (no record), nor are their dependents.
///
/// The offload tiers hold metadata only here: hits cost their modelled load time, no bytes
/// move. Their policy sees each request's session and turn from the plan (`meta`), as the
/// real-time server derives them from the API's `user` field. Deterministic: the same config and plan give the same records, bit for bit.
pub fn run_virtual(cfg: &EmulatorConfig, plan: &Plan) -> Result<Vec<RequestRecord>, Error> {
    let resolved = cfg.resolve()?;
    let n = plan.requests.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut heap = BinaryHeap::new();
    for (i, r) in plan.requests.iter().enumerate() {
        if r.id != i as u64 {
            return Err(Error::Plan {
                id: r.id,
                message: format!("is at index {i}; a plan's ids must equal their index"),
            });
        }
        match (&r.depends_on, plan.mode) {
            (Some(d), _) => {
                let p = d.parent as usize;
                if p >= i {
                    return Err(Error::Plan {
                        id: r.id,
                        message: format!("depends on request {p}, which is not earlier"),
                    });
                }
                children[p].push(i);
            }
            (None, Mode::Open) => heap.push(Ready { t: r.send_at.map_or(0.0, |d| d.as_secs_f64()), idx: i }),
            (None, Mode::Closed { .. }) => heap.push(Ready { t: 0.0, idx: i }),
        }
    }
    let cap = match plan.mode {
        Mode::Closed { concurrency } => Some(concurrency.max(1) as usize),
        Mode::Open => None,
    };
    let cap = match (cap, plan.limits.max_concurrency) {
        (Some(a), Some(b)) => Some(a.min(b.max(1) as usize)),
        (a, b) => a.or(b.map(|b| b.max(1) as usize)),
    };
    let mut replay = Replay {
        plan,
        max_model_len: resolved.cfg.scheduler.max_model_len,
        chunk_tokens: resolved.cfg.offload.chunk_tokens,
        offload: OffloadIndex::new(&resolved.tiers, cfg.offload.policy, resolved.cfg.offload.chunk_tokens),
        core: Core::new(resolved),
        children,
        heap,
        cap,
        deadline: plan.limits.duration.map(|d| d.as_secs_f64()),
        records: vec![None; n],
        blocked: VecDeque::new(),
        in_flight: 0,
        session_start: HashMap::new(),
    };
    let mut now = 0.0f64;
    let mut finished = Vec::new();
    let mut stores = Vec::new();

    loop {
        // Send everything ready by `now`, slots permitting (a slot freed at `now`).
        replay.admit(now, true, now);
        let Some(out) = replay.core.step(now) else {
            // Idle: jump to the next arrival, or stop.
            match replay.heap.peek() {
                Some(next) => {
                    now = next.t.max(now);
                    continue;
                }
                // Nothing in flight frees a slot: `blocked` is empty here.
                None => break,
            }
        };
        let end = out.end;
        for &(id, count) in &out.emitted {
            let rec = replay.records[id as usize].as_mut().expect("emitted request was sent");
            rec.chunks.push((end, 1));
            if count == 1 {
                rec.first_token = Some(end);
            }
        }
        finished.clear();
        finished.extend_from_slice(&out.finished);
        stores.clear();
        stores.extend(out.stores.iter().map(|(_, keys, access)| (keys.clone(), *access)));
        // Requests that arrive while the step runs are sent then, at their own time: they queue
        // until the step ends (the step in progress does not take them), and see the offload
        // tiers as they were before the step's stores. Slots are those of the step's start.
        replay.admit(end, false, now);
        for (keys, access) in &stores {
            replay.offload.store(keys, access);
        }
        for f in &finished {
            let idx = f.id as usize;
            let rec = replay.records[idx].as_mut().expect("finished request was sent");
            rec.end = end;
            rec.output_tokens = f.output_tokens;
            rec.prompt_tokens = Some(f.prompt_tokens);
            rec.cached_tokens = Some(f.cached_tokens);
            replay.in_flight -= 1;
            replay.release_children(idx, end);
        }
        now = end;
    }
    Ok(replay.records.into_iter().flatten().collect())
}

/// The replay's state between steps.
struct Replay<'p> {
    plan: &'p Plan,
    max_model_len: u32,
    chunk_tokens: u32,
    offload: OffloadIndex,
    core: Core,
    children: Vec<Vec<usize>>,
    /// Requests not yet ready or not yet looked at, by ready time.
    heap: BinaryHeap<Ready>,
    /// Ready requests waiting for a slot (`cap`), in order, with their ready time.
    blocked: VecDeque<Ready>,
    cap: Option<usize>,
    deadline: Option<f64>,
    records: Vec<Option<RequestRecord>>,
    in_flight: usize,
    /// When each session's first request was sent (model seconds).
    session_start: HashMap<u64, f64>,
}

impl Replay<'_> {
    /// Sends the requests ready by `until` (`inclusive`: up to and including it; else before
    /// it), in order of readiness, slots permitting. Each is sent at the time it became ready,
    /// or at `free_since` (when a slot last freed) if that is later.
    fn admit(&mut self, until: f64, inclusive: bool, free_since: f64) {
        while let Some(&ready) = self.heap.peek() {
            if ready.t > until || (!inclusive && ready.t == until) {
                break;
            }
            self.heap.pop();
            self.blocked.push_back(ready);
        }
        while let Some(&Ready { t, idx }) = self.blocked.front() {
            if self.cap.is_some_and(|c| self.in_flight >= c) {
                break;
            }
            self.blocked.pop_front();
            self.send(idx, t, t.max(free_since));
        }
    }

    /// Children of `idx` become ready `think_time` after `at`.
    fn release_children(&mut self, idx: usize, at: f64) {
        for &c in &self.children[idx] {
            let think = self.plan.requests[c].depends_on.map_or(0.0, |d| d.think_time.as_secs_f64());
            self.heap.push(Ready { t: at + think, idx: c });
        }
    }

    /// Sends request `idx`, ready at `ready`, at `sent`: its record starts, the engine queues it.
    fn send(&mut self, idx: usize, ready: f64, sent: f64) {
        if self.deadline.is_some_and(|d| sent > d) {
            return;
        }
        let plan = self.plan;
        let r = &plan.requests[idx];
        let tokens = prompt_tokens(&r.prompt);
        let prompt_len = tokens.len() as u32;
        let mut rec = RequestRecord {
            v: RECORD_VERSION,
            id: r.id,
            warmup: r.id < u64::from(plan.limits.warmup),
            intended: if matches!(plan.mode, Mode::Closed { .. }) { sent } else { ready },
            sent,
            // An open-loop request that waited for a `max_concurrency` slot got it when it was sent.
            queued_until: (matches!(plan.mode, Mode::Open) && sent > ready).then_some(sent),
            first_byte: Some(sent),
            first_token: None,
            end: sent,
            chunks: Vec::with_capacity(r.max_tokens as usize),
            prompt_tokens: Some(prompt_len),
            output_tokens: 0,
            cached_tokens: None,
            token_source: TokenSource::Usage,
            error: None,
            session: r.meta.session,
            turn: r.meta.turn,
            prompt_blocks: None,
        };
        if let Err(message) = check_lengths(prompt_len, r.max_tokens, self.max_model_len) {
            rec.prompt_tokens = None;
            rec.error =
                Some(RequestError::HttpStatus { status: 400, body: crate::server::error_body(&message) });
            self.records[idx] = Some(rec);
            self.release_children(idx, sent);
            return;
        }
        let chunk_keys = if self.offload.is_empty() {
            Vec::new()
        } else {
            kvcache::chunk_keys(self.chunk_tokens, &tokens, false)
        };
        let access = Access {
            time_s: sent,
            session: r.meta.session,
            turn: r.meta.turn.unwrap_or(0),
            session_start_s: r.meta.session.map_or(sent, |s| *self.session_start.entry(s).or_insert(sent)),
        };
        let offload_hits = self.offload.lookup(&chunk_keys, &access);
        let block_hashes = self.core.block_hashes(&tokens);
        self.core.add(NewRequest {
            id: r.id,
            prompt_len,
            block_hashes,
            max_tokens: r.max_tokens,
            arrival: sent,
            chunk_keys,
            offload_hits,
            access,
        });
        self.records[idx] = Some(rec);
        self.in_flight += 1;
    }
}
