//! Real time: the OpenAI-compatible HTTP server and the engine task that steps the core.
//!
//! Limits ([`crate::ServerLimits`]), as a production server has them:
//! - a body larger than `max_body_bytes` gets 413: refused from its `Content-Length` before
//!   any byte is read, or, when streamed without one, as soon as the bytes read pass the limit
//!   (at most the limit is ever buffered; the connection is then closed);
//! - `max_tokens` (or `max_completion_tokens`) above `limits.max_tokens` gets 400;
//! - at most `max_connections` connections are served at once; further ones are not accepted
//!   until one closes, so they wait in the kernel's listen backlog (as Go's `LimitListener` or
//!   a server whose workers are busy), rather than being answered with a storm of errors.
//!
//! Every error, including unknown routes (404) and wrong methods (405), is OpenAI-style JSON:
//! `{"error": {"message", "type", "param", "code"}}`.
//!
//! Conversations: a request's `user` field names its conversation; the turn is the number of
//! requests seen from that user so far (1 = first). The offload tiers' policy sees both.
//!
//! One job per module: here the engine's shared state ([`Server`], what the tasks share, the
//! conversations); `http` the connections (accepting under `max_connections`, graceful stop,
//! lingering close); `api` the OpenAI surface (routes, request parsing and limits, errors,
//! `generate`); `respond` the streamed and whole answers; `engine` the engine loop that steps
//! the core on the model's schedule; `offload_io` the offload tiers' real reads and writes.

mod api;
mod engine;
mod http;
mod offload_io;
mod respond;

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{EmulatorConfig, Resolved};
use crate::offload::{Access, Change, OffloadIndex};
use crate::sched::Core;
use crate::store::Stores;
use crate::Error;

pub(crate) use self::api::error_body;
use self::api::router;
use self::engine::engine_loop;
use self::http::serve_http;
use self::offload_io::writer_loop;

/// What a request's stream sees of its progress (latest value wins: a slow client gets the
/// tokens it missed in one chunk).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Progress {
    tokens: u32,
    done: bool,
    prompt: u32,
    cached: u32,
}

struct EngineState {
    core: Core,
    senders: HashMap<u64, watch::Sender<Progress>>,
    stopped: bool,
    /// The engine is on its schedule: a step is in flight or its next step starts where the last
    /// one ended (`core.now()`), however late the engine woke up. False when it went idle.
    busy: bool,
    /// The earliest arrival of the requests added while the engine was idle: its next step
    /// starts there (not earlier than the last step's end), not when the engine got to it.
    wake_at: Option<f64>,
}

/// Users remembered for turn counting; past this many the memory starts over (turns restart at 1).
const MAX_USERS: usize = 100_000;

/// A conversation, as the `user` field names it.
#[derive(Debug, Clone, Copy)]
struct UserState {
    requests: u32,
    start_s: f64,
}

struct Shared {
    name: String,
    resolved: Resolved,
    state: Mutex<EngineState>,
    wake: Notify,
    index: Mutex<OffloadIndex>,
    stores: Stores,
    writer: mpsc::UnboundedSender<Vec<Change>>,
    next_id: AtomicU64,
    created: u64,
    t0: Instant,
    /// By hash of the `user` string.
    users: Mutex<HashMap<u64, UserState>>,
}

impl Shared {
    /// Model seconds of the wall clock: wall time over `time_scale` (with a `time_scale` of 0,
    /// model time moves only with the steps: the last step's end).
    fn wall_model(&self, core: &Core) -> f64 {
        let scale = self.resolved.cfg.time_scale;
        if scale > 0.0 {
            self.t0.elapsed().as_secs_f64() / scale
        } else {
            core.now()
        }
    }

    /// Model seconds at which a request arriving now arrives: the wall clock's, but never after
    /// the start of the engine's next step while it is on its schedule (a request that comes
    /// while the engine wakes up late from a step is in time for the next one, as it would be
    /// on a GPU that runs its steps back to back).
    fn arrival_now(&self, st: &EngineState) -> f64 {
        let wall = self.wall_model(&st.core);
        if st.busy {
            wall.min(st.core.now())
        } else {
            wall
        }
    }

    /// Counts a request of `user` at model time `now`: its conversation and turn.
    fn access(&self, user: Option<&str>, now: f64) -> Access {
        let Some(user) = user else {
            return Access { time_s: now, session: None, turn: 0, session_start_s: now };
        };
        // Fixed keys: the same user string is the same session for the whole run.
        let mut h = std::hash::DefaultHasher::new();
        user.hash(&mut h);
        let session = h.finish();
        let mut users = lock(&self.users);
        if users.len() >= MAX_USERS && !users.contains_key(&session) {
            users.clear();
        }
        let u = users.entry(session).or_insert(UserState { requests: 0, start_s: now });
        u.requests = u.requests.saturating_add(1);
        Access { time_s: now, session: Some(session), turn: u.requests, session_start_s: u.start_s }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running emulated engine. Dropping it without [`Server::shutdown`] leaves the tasks running
/// until the runtime ends, and the run's Redis keys in Redis.
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Server {
    /// Starts the engine and serves HTTP on `listener` (bind it to 127.0.0.1 unless the user
    /// asked otherwise). Fails only on an invalid config; tier trouble (an unusable disk
    /// directory, Redis away) is counted in `/metrics` and served by recomputation.
    pub async fn start(cfg: &EmulatorConfig, listener: TcpListener) -> Result<Server, Error> {
        let resolved = cfg.resolve()?;
        let run_id = cfg.run_id.clone().unwrap_or_else(fresh_run_id);
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Io { context: "listener address".to_owned(), source })?;
        let (writer, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: cfg.served_name().to_owned(),
            index: Mutex::new(OffloadIndex::new(
                &resolved.tiers,
                cfg.offload.policy,
                cfg.offload.chunk_tokens,
            )),
            stores: Stores::open(&resolved, &run_id),
            state: Mutex::new(EngineState {
                core: Core::new(resolved.clone()),
                senders: HashMap::new(),
                stopped: false,
                busy: false,
                wake_at: None,
            }),
            resolved,
            wake: Notify::new(),
            writer,
            next_id: AtomicU64::new(0),
            t0: Instant::now(),
            created: since_epoch().as_secs(),
            users: Mutex::new(HashMap::new()),
        });
        let engine = tokio::spawn(engine_loop(shared.clone()));
        let writer_task = tokio::spawn(writer_loop(shared.clone(), rx));
        let app = router(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let max_connections = shared.resolved.cfg.limits.max_connections as usize;
        let task = tokio::spawn(async move {
            let sh = shared.clone();
            serve_http(listener, app, max_connections, async move {
                let _ = stopped.await;
                // End the engine first: dropping the senders ends open streams.
                lock(&sh.state).stopped = true;
                sh.wake.notify_one();
            })
            .await;
            lock(&shared.state).stopped = true;
            shared.wake.notify_one();
            let _ = engine.await;
            writer_task.abort();
            let _ = writer_task.await;
            // The run's Redis keys go with it (a failure is counted in the tier's errors).
            shared.stores.cleanup().await;
            Ok(())
        });
        Ok(Server { addr, stop: Some(stop), task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends open streams, waits for the tasks to finish, then deletes the
    /// run's keys from the redis tier (a Redis that fails then is counted in its errors).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(Error::Io {
                context: "http server task".to_owned(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }
}

/// The wall clock, for `created` fields and run ids only: durations come from `Instant`.
#[allow(clippy::disallowed_methods)]
fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// A run id for a server started without one: unique per process and start.
fn fresh_run_id() -> String {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let nanos = since_epoch().as_nanos();
    format!("emulator-{}-{nanos}-{}", std::process::id(), STARTS.fetch_add(1, Relaxed))
}

/// Serves the emulated engine on `listener` until `shutdown` completes.
pub async fn serve(
    cfg: &EmulatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let server = Server::start(cfg, listener).await?;
    shutdown.await;
    server.shutdown().await
}
