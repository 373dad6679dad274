//! A sub-millisecond sleep for the load generator's send times and the emulator's step deadlines.
//!
//! tokio's timer wheel has 1 ms ticks and its driver rounds its wait up, so a request released
//! with `tokio::time::sleep_until` goes out 0–2 ms late: that alone would put the client's lag p99
//! above 1 ms. Release times use this sleep instead: one process-wide thread (started on first
//! use, parked when idle) waits for the earliest deadline with `park_timeout` (tens of
//! microseconds late on Linux) and wakes the futures that are due. The load generator uses it once
//! per released request, never per token; the real-time emulator once per step, so that its
//! tokens go out at their modelled time (a step sleeping on tokio's timer ends 0–2 ms late: per
//! token, most of an ITL error budget). Lateness is not carried over: each deadline is an
//! instant, not a duration from the last wake-up. In the lab's process both share the one thread.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::Instant;

/// Completes at `deadline` (not before), typically within 0.1 ms after it; at once when it has
/// passed.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, registered: None }
}

/// The future [`sleep_until`] returns.
pub struct Sleep {
    deadline: Instant,
    /// The waker last handed to the timer thread.
    registered: Option<Waker>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        if self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let Some(timer) = timer() else {
            // No timer thread could be started: fall back to tokio's timer.
            let mut fallback = Box::pin(tokio::time::sleep_until(self.deadline.into()));
            return fallback.as_mut().poll(cx);
        };
        self.registered = Some(cx.waker().clone());
        let earliest = {
            let mut state = timer.state.lock().unwrap_or_else(|e| e.into_inner());
            let earliest = state.heap.peek().is_none_or(|e| self.deadline < e.0.deadline);
            state.seq += 1;
            let entry = Entry { deadline: self.deadline, seq: state.seq, waker: cx.waker().clone() };
            state.heap.push(Reverse(entry));
            earliest
        };
        if earliest {
            timer.thread.unpark();
        }
        Poll::Pending
    }
}

struct Entry {
    deadline: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

struct Timer {
    state: Mutex<State>,
    thread: Thread,
}

fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<Timer>> = OnceLock::new();
    TIMER
        .get_or_init(|| {
            let thread = std::thread::Builder::new().name("loadgen-timer".into()).spawn(run_timer).ok()?;
            Some(Timer { state: Mutex::default(), thread: thread.thread().clone() })
        })
        .as_ref()
}

fn run_timer() {
    // Blocks until the spawning thread has stored the timer.
    let Some(timer) = timer() else { return };
    let mut due = Vec::new();
    loop {
        let now = Instant::now();
        let next = {
            let mut state = timer.state.lock().unwrap_or_else(|e| e.into_inner());
            while state.heap.peek().is_some_and(|e| e.0.deadline <= now) {
                if let Some(Reverse(e)) = state.heap.pop() {
                    due.push(e.waker);
                }
            }
            state.heap.peek().map(|e| e.0.deadline)
        };
        for waker in due.drain(..) {
            waker.wake();
        }
        match next {
            Some(t) => std::thread::park_timeout(t.saturating_duration_since(Instant::now())),
            None => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_at_the_deadline_not_a_tick_later() {
        // Twenty 1.3 ms sleeps off a fixed schedule: each ends after its deadline, and the median
        // lateness is far below tokio's 1 ms tick.
        let start = Instant::now();
        let mut late = Vec::new();
        for k in 1..=20u32 {
            let deadline = start + Duration::from_micros(1300) * k;
            sleep_until(deadline).await;
            let now = Instant::now();
            assert!(now >= deadline);
            late.push(now - deadline);
        }
        late.sort();
        assert!(late[10] < Duration::from_micros(500), "median lateness {:?}", late[10]);
        // A passed deadline completes at once.
        let t = Instant::now();
        sleep_until(start).await;
        assert!(t.elapsed() < Duration::from_millis(1));
    }
}
