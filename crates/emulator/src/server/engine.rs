//! The engine loop: steps the core on the model's schedule and publishes each step's tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Progress, Shared};
use crate::offload::Change;

/// Steps the core on the model's schedule and publishes each step's tokens at its modelled end
/// (scaled by `time_scale`, with [`timer`]'s precise sleep). While there is work, a step
/// starts where the last one ended, however late the engine woke up: lateness is not added to
/// model time, and a late step does not push the later ones (they run back to back until the
/// schedule is caught up). From idle, a step starts at the earliest arrival of the requests that
/// woke the engine.
pub(crate) async fn engine_loop(sh: Arc<Shared>) {
    let scale = sh.resolved.cfg.time_scale;
    let t0 = sh.t0;
    let mut emitted: Vec<(u64, u32)> = Vec::new();
    let mut finished = Vec::new();
    // The NVTX range of the step in flight: from its scheduling to the publication of its tokens.
    let mut step_range: Option<crate::nvtx::StepRange> = None;
    loop {
        if let Some(range) = step_range.take() {
            range.end();
        }
        let wake = sh.wake.notified();
        let end = {
            let mut st = lock(&sh.state);
            if st.stopped {
                st.senders.clear();
                return;
            }
            let start = if st.busy {
                st.core.now()
            } else {
                let wall = sh.wall_model(&st.core);
                st.wake_at.take().map_or(wall, |a| a.min(wall)).max(st.core.now())
            };
            let end = match st.core.step(start) {
                Some(out) => {
                    step_range = Some(crate::nvtx::StepRange::start(out.new_reqs, out.cached_reqs));
                    emitted.clear();
                    emitted.extend_from_slice(&out.emitted);
                    finished.clear();
                    finished.extend_from_slice(&out.finished);
                    if !out.stores.is_empty() {
                        let mut index = lock(&sh.index);
                        let changes: Vec<Change> =
                            out.stores.iter().flat_map(|(_, k, a)| index.store(k, a)).collect();
                        let _ = sh.writer.send(changes);
                    }
                    Some(out.end)
                }
                None => None,
            };
            st.busy = end.is_some();
            st.wake_at = None;
            end
        };
        let Some(end) = end else {
            wake.await;
            continue;
        };
        let deadline = t0 + Duration::from_secs_f64(end * scale);
        if scale > 0.0 && Instant::now() < deadline {
            timer::sleep_until(deadline).await;
        } else {
            // Behind the schedule (or as fast as possible): let the connections run between steps.
            tokio::task::yield_now().await;
        }
        let mut st = lock(&sh.state);
        let st = &mut *st;
        for &(id, tokens) in &emitted {
            if let Some(tx) = st.senders.get(&id) {
                if tx.is_closed() {
                    st.senders.remove(&id);
                    st.core.abort(id);
                    continue;
                }
                tx.send_modify(|p| p.tokens = tokens);
            }
        }
        for f in &finished {
            if let Some(tx) = st.senders.remove(&f.id) {
                tx.send_replace(Progress {
                    tokens: f.output_tokens,
                    done: true,
                    prompt: f.prompt_tokens,
                    cached: f.cached_tokens,
                });
            }
        }
    }
}
