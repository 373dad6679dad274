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
/// ready at 0 and `concurrency` slots. Requests that would be sent after `limits.duration` are
/// not sent (no record), nor are their dependents.
///
/// The offload tiers hold metadata only here: hits cost their modelled load time, no bytes
/// move. Their policy sees each request's session and turn from the plan (`meta`), as the
/// real-time server derives them from the API's `user` field. Deterministic: the same config and plan give the same records, bit for bit.
pub fn run_virtual(cfg: &EmulatorConfig, plan: &Plan) -> Result<Vec<RequestRecord>, Error> {
    let resolved = cfg.resolve()?;
    let max_model_len = resolved.cfg.scheduler.max_model_len;
    let chunk_tokens = resolved.cfg.offload.chunk_tokens;
    let mut offload = OffloadIndex::new(&resolved.tiers, cfg.offload.policy, chunk_tokens);
    let mut core = Core::new(resolved);

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
    let deadline = plan.limits.duration.map(|d| d.as_secs_f64());

    let mut records: Vec<Option<RequestRecord>> = vec![None; n];
    let mut intended = vec![0.0f64; n];
    let mut blocked: VecDeque<usize> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut now = 0.0f64;
    // When each session's first request was sent (model seconds).
    let mut session_start: HashMap<u64, f64> = HashMap::new();

    loop {
        // Send everything ready by `now`, slots permitting.
        while let Some(&Ready { t, idx }) = heap.peek() {
            if t > now {
                break;
            }
            heap.pop();
            intended[idx] = t;
            blocked.push_back(idx);
        }
        while let Some(&idx) = blocked.front() {
            if cap.is_some_and(|c| in_flight >= c) {
                break;
            }
            blocked.pop_front();
            if deadline.is_some_and(|d| now > d) {
                continue;
            }
            let r = &plan.requests[idx];
            let tokens = prompt_tokens(&r.prompt);
            let prompt_len = tokens.len() as u32;
            let mut rec = RequestRecord {
                v: RECORD_VERSION,
                id: r.id,
                warmup: r.id < u64::from(plan.limits.warmup),
                intended: if matches!(plan.mode, Mode::Closed { .. }) { now } else { intended[idx] },
                sent: now,
                queued_until: None,
                first_byte: Some(now),
                first_token: None,
                end: now,
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
            if let Err(message) = check_lengths(prompt_len, r.max_tokens, max_model_len) {
                rec.prompt_tokens = None;
                rec.error =
                    Some(RequestError::HttpStatus { status: 400, body: crate::server::error_body(&message) });
                records[idx] = Some(rec);
                for &c in &children[idx] {
                    let think = plan.requests[c].depends_on.map_or(0.0, |d| d.think_time.as_secs_f64());
                    heap.push(Ready { t: now + think, idx: c });
                }
                continue;
            }
            let chunk_keys = if offload.is_empty() {
                Vec::new()
            } else {
                kvcache::chunk_keys(chunk_tokens, &tokens, false)
            };
            let access = Access {
                time_s: now,
                session: r.meta.session,
                turn: r.meta.turn.unwrap_or(0),
                session_start_s: r.meta.session.map_or(now, |s| *session_start.entry(s).or_insert(now)),
            };
            let offload_hits = offload.lookup(&chunk_keys, &access);
            let block_hashes = core.block_hashes(&tokens);
            core.add(NewRequest {
                id: r.id,
                prompt_len,
                block_hashes,
                max_tokens: r.max_tokens,
                arrival: now,
                chunk_keys,
                offload_hits,
                access,
            });
            records[idx] = Some(rec);
            in_flight += 1;
        }

        let Some(out) = core.step(now) else {
            // Idle: jump to the next arrival, or stop.
            match heap.peek() {
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
            let rec = records[id as usize].as_mut().expect("emitted request was sent");
            rec.chunks.push((end, 1));
            if count == 1 {
                rec.first_token = Some(end);
            }
        }
        for (_, keys, access) in &out.stores {
            offload.store(keys, access);
        }
        for f in &out.finished {
            let idx = f.id as usize;
            let rec = records[idx].as_mut().expect("finished request was sent");
            rec.end = end;
            rec.output_tokens = f.output_tokens;
            rec.prompt_tokens = Some(f.prompt_tokens);
            rec.cached_tokens = Some(f.cached_tokens);
            in_flight -= 1;
            for &c in &children[idx] {
                let think = plan.requests[c].depends_on.map_or(0.0, |d| d.think_time.as_secs_f64());
                heap.push(Ready { t: end + think, idx: c });
            }
        }
        now = end;
    }
    Ok(records.into_iter().flatten().collect())
}
