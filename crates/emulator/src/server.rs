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

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use kvcache::{BlockHash, Tier};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::config::{EmulatorConfig, Resolved};
use crate::metrics::{self, RenderInput, TierIo};
use crate::offload::{Access, Change, OffloadIndex};
use crate::sched::{Core, NewRequest};
use crate::store::{Read, Stores};
use crate::{check_lengths, Error};

/// The generated text cycles through these characters, one per token.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

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

/// Serves `app` on `listener` until `stop` completes, then lets open connections finish (they
/// are told to close after their current request) and returns when all have closed. At most
/// `max_connections` connections are open at once: past that, accepting waits for one to close.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    // Each connection task holds a receiver: all have ended when `closed` resolves.
    let (close_tx, close_rx) = watch::channel(());
    let (signal_tx, signal_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let tcp = tokio::select! {
            c = listener.accept() => match c {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        // Out of file descriptors, most likely: wait for some to close.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // As uvicorn (asyncio) does: without it, a response written in two parts waits for the
        // client's delayed ACK (40 ms) and every streamed token can be held back by Nagle.
        let _ = tcp.set_nodelay(true);
        // A second handle on the socket outlives hyper's, for the lingering close below.
        let Some((tcp, linger)) = with_second_handle(tcp) else { continue };
        let service = TowerToHyperService::new(app.clone());
        let mut signal = signal_rx.clone();
        let close = close_rx.clone();
        tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // The only change is to `true` (or the sender went away): stop either way.
                _ = signal.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            lingering_close(linger).await;
            drop(permit);
            drop(close);
        });
    }
    drop(listener);
    let _ = signal_tx.send(true);
    drop(close_rx);
    close_tx.closed().await;
}

/// The stream for hyper, and a duplicate handle on the same socket that keeps it open after
/// hyper drops its own (`None` when the socket cannot be duplicated: the connection is dropped).
fn with_second_handle(tcp: tokio::net::TcpStream) -> Option<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std = tcp.into_std().ok()?;
    let second = std.try_clone().ok()?;
    Some((tokio::net::TcpStream::from_std(std).ok()?, second))
}

/// Lingering close, as nginx and Apache do it: when the client is still sending (a body the
/// server refused with 413 without reading it), read and discard for up to a second before
/// closing. Closing a socket with unread input sends a reset, which can destroy the response
/// before the client reads it. A connection with nothing pending closes at once.
async fn lingering_close(sock: std::net::TcpStream) {
    use std::io::Read as _;
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 16 * 1024];
    // The handle is non-blocking: `WouldBlock` means nothing is pending.
    match (&sock).read(&mut buf) {
        Ok(n) if n > 0 => {}
        _ => return,
    }
    let Ok(mut tcp) = tokio::net::TcpStream::from_std(sock) else { return };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
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

/// Steps the core on the model's schedule and publishes each step's tokens at its modelled end
/// (scaled by `time_scale`, with [`crate::timer`]'s precise sleep). While there is work, a step
/// starts where the last one ended, however late the engine woke up: lateness is not added to
/// model time, and a late step does not push the later ones (they run back to back until the
/// schedule is caught up). From idle, a step starts at the earliest arrival of the requests that
/// woke the engine.
async fn engine_loop(sh: Arc<Shared>) {
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
            crate::timer::sleep_until(deadline).await;
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

/// Applies store changes to the tiers in order; a failed write is forgotten by the index.
async fn writer_loop(sh: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Vec<Change>>) {
    while let Some(changes) = rx.recv().await {
        for c in changes {
            if !sh.stores.apply(c).await {
                if let Change::Write(tier, key) = c {
                    lock(&sh.index).remove(tier, key);
                }
            }
        }
    }
}

fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics_text))
        .route("/tokenize", post(tokenize))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "Not Found", None) })
        .method_not_allowed_fallback(|| async {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", None)
        })
        .layer(axum::middleware::map_response(|mut res: Response| async move {
            res.headers_mut().insert(crate::ENGINE_HEADER, HeaderValue::from_static("emulated"));
            res
        }))
        .with_state(sh)
}

/// An OpenAI-style error body.
pub(crate) fn error_body(message: &str) -> String {
    json!({"error": {"message": message, "type": "BadRequestError", "param": null, "code": 400}}).to_string()
}

/// An OpenAI-style error response; `param` names the offending field, if one.
fn error_response(status: StatusCode, message: &str, param: Option<&str>) -> Response {
    let typ = match status {
        StatusCode::NOT_FOUND => "NotFoundError",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowedError",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeError",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
        _ => "BadRequestError",
    };
    let body = json!({"error": {"message": message, "type": typ, "param": param, "code": status.as_u16()}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn models(State(sh): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": sh.name,
            "object": "model",
            "created": sh.created,
            "owned_by": crate::OWNED_BY,
            "root": sh.resolved.hf_id,
            "parent": null,
            "max_model_len": sh.resolved.cfg.scheduler.max_model_len,
        }]
    }))
    .into_response()
}

async fn metrics_text(State(sh): State<Arc<Shared>>) -> Response {
    let tiers: Vec<TierIo> = {
        let index = lock(&sh.index);
        sh.resolved.tiers.iter().map(|t| sh.stores.io(t.tier, index.len(t.tier))).collect()
    };
    let body = {
        let st = lock(&sh.state);
        metrics::render(&RenderInput {
            model: &sh.name,
            byte_scale: sh.resolved.cfg.byte_scale,
            engine: &st.core.metrics,
            gauges: st.core.gauges(),
            tiers: &tiers,
        })
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptIn {
    Text(String),
    Tokens(Vec<u32>),
    Other(#[allow(dead_code)] serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ContentIn {
    Text(String),
    Parts(Vec<PartIn>),
}

#[derive(Debug, Deserialize)]
struct PartIn {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    #[allow(dead_code)]
    role: String,
    #[serde(default)]
    content: Option<ContentIn>,
}

#[derive(Debug, Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
    /// vLLM's: a cumulative `usage` in every chunk.
    #[serde(default)]
    continuous_usage_stats: bool,
}

/// The fields of both endpoints; unknown fields are ignored as vLLM does.
#[derive(Debug, Deserialize)]
struct GenRequest {
    model: Option<String>,
    prompt: Option<PromptIn>,
    messages: Option<Vec<MessageIn>>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    min_tokens: u32,
    #[serde(default)]
    #[allow(dead_code)]
    ignore_eos: bool,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    /// OpenAI's end-user id: the conversation, for the offload tiers' policy.
    #[serde(default)]
    user: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// A refused request: its status, message and the offending field.
struct ApiError(StatusCode, String, Option<&'static str>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.0, &self.1, self.2)
    }
}

/// Reads a request body of at most `limit` bytes; a larger one is refused (413) without
/// reading more than `limit` bytes of it.
async fn read_body(req: Request, limit: u64) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is larger than the server's limit of {limit} bytes."),
            None,
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut stream = req.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError(StatusCode::BAD_REQUEST, format!("could not read the request body: {e}"), None)
        })?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse(sh: &Shared, body: &[u8], kind: Kind) -> Result<(GenRequest, Vec<u32>), ApiError> {
    let bad = |m: &str| ApiError(StatusCode::BAD_REQUEST, m.to_owned(), None);
    let req: GenRequest =
        serde_json::from_slice(body).map_err(|e| bad(&format!("invalid request body: {e}")))?;
    if let Some(m) = &req.model {
        if *m != sh.name {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("The model `{m}` does not exist."),
                Some("model"),
            ));
        }
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError(StatusCode::BAD_REQUEST, "only n = 1 is supported".to_owned(), Some("n")));
    }
    let tokens = match kind {
        Kind::Completion => match &req.prompt {
            Some(PromptIn::Text(s)) => s.bytes().map(u32::from).collect(),
            Some(PromptIn::Tokens(t)) => t.clone(),
            Some(PromptIn::Other(_)) => {
                return Err(bad("field `prompt` must be a string or an array of token ids (batched prompts \
                     are not supported)"))
            }
            None => return Err(bad("field `prompt` is required")),
        },
        Kind::Chat => match &req.messages {
            Some(msgs) => msgs
                .iter()
                .flat_map(|m| match &m.content {
                    Some(ContentIn::Text(s)) => s.bytes().map(u32::from).collect::<Vec<_>>(),
                    Some(ContentIn::Parts(p)) => p
                        .iter()
                        .filter_map(|p| p.text.as_deref())
                        .flat_map(|s| s.bytes().map(u32::from))
                        .collect(),
                    None => Vec::new(),
                })
                .collect(),
            None => return Err(bad("field `messages` is required")),
        },
    };
    Ok((req, tokens))
}

async fn tokenize(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let body = match read_body(req, sh.resolved.cfg.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_response(StatusCode::BAD_REQUEST, &format!("invalid request body: {e}"), None)
        }
    };
    let kind = if v.get("messages").is_some() { Kind::Chat } else { Kind::Completion };
    match parse(&sh, &body, kind) {
        Ok((_, tokens)) => axum::Json(json!({
            "count": tokens.len(),
            "max_model_len": sh.resolved.cfg.scheduler.max_model_len,
            "tokens": tokens,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn completions(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    match read_body(req, sh.resolved.cfg.limits.max_body_bytes).await {
        Ok(body) => generate(sh, &body, Kind::Completion).await,
        Err(e) => e.into_response(),
    }
}

async fn chat_completions(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    match read_body(req, sh.resolved.cfg.limits.max_body_bytes).await {
        Ok(body) => generate(sh, &body, Kind::Chat).await,
        Err(e) => e.into_response(),
    }
}

/// Reads the prompt's offload hits for real, chunk by chunk, beyond the GPU prefix hit; stops
/// at the first chunk that is missing or fails (a failure is a counted tier error, and the
/// chunk is forgotten so it is stored again).
///
/// The reads run on the wall clock, not the model's: the request's model clock has started at
/// its arrival, and the step that takes it charges the modelled load time of these chunks. They
/// overlap the request's modelled wait and load, and delay it only when they outlast them.
async fn load_offload(sh: &Shared, keys: &[BlockHash], gpu_hit: u32, access: &Access) -> Vec<Tier> {
    let mut hits = lock(&sh.index).lookup(keys, access);
    let chunk = sh.resolved.cfg.offload.chunk_tokens;
    let first = (gpu_hit / chunk) as usize;
    for c in first..hits.len() {
        match sh.stores.read(hits[c], keys[c]).await {
            Read::Ok => {}
            Read::Missing | Read::Failed => {
                lock(&sh.index).remove(hits[c], keys[c]);
                hits.truncate(c);
                break;
            }
        }
    }
    hits
}

async fn generate(sh: Arc<Shared>, body: &[u8], kind: Kind) -> Response {
    let (req, tokens) = match parse(&sh, body, kind) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let max_model_len = sh.resolved.cfg.scheduler.max_model_len;
    let cap = sh.resolved.cfg.limits.max_tokens;
    let prompt_len = tokens.len() as u32;
    let asked = req
        .max_tokens
        .map(|n| (n, "max_tokens"))
        .or(req.max_completion_tokens.map(|n| (n, "max_completion_tokens")));
    if let Some((n, field)) = asked.filter(|&(n, _)| n > cap) {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!("{field} ({n}) is larger than this server's limit of {cap} tokens."),
            Some(field),
        );
    }
    let max_tokens = asked.map_or_else(|| max_model_len.saturating_sub(prompt_len).min(cap), |(n, _)| n);
    if let Err(m) = check_lengths(prompt_len, max_tokens, max_model_len) {
        return error_response(StatusCode::BAD_REQUEST, &m, None);
    }
    if req.min_tokens > max_tokens {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!("min_tokens ({}) must be at most max_tokens ({max_tokens})", req.min_tokens),
            Some("min_tokens"),
        );
    }
    let id = sh.next_id.fetch_add(1, Relaxed);
    // The request's model clock starts here, before the offload reads below.
    let (block_hashes, gpu_hit, arrival) = {
        let st = lock(&sh.state);
        let arrival = sh.arrival_now(&st);
        let h = st.core.block_hashes(&tokens);
        let hit = st.core.gpu_hit_tokens(&h);
        (h, hit, arrival)
    };
    let access = sh.access(req.user.as_deref(), arrival);
    let chunk_keys = if sh.resolved.tiers.is_empty() {
        Vec::new()
    } else {
        kvcache::chunk_keys(sh.resolved.cfg.offload.chunk_tokens, &tokens, false)
    };
    let offload_hits = if chunk_keys.is_empty() {
        Vec::new()
    } else {
        load_offload(&sh, &chunk_keys, gpu_hit, &access).await
    };
    drop(tokens);
    let (tx, rx) = watch::channel(Progress { prompt: prompt_len, ..Progress::default() });
    {
        let mut st = lock(&sh.state);
        if st.stopped {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "the engine is shutting down", None);
        }
        if !st.busy {
            st.wake_at = Some(st.wake_at.map_or(arrival, |w| w.min(arrival)));
        }
        st.core.add(NewRequest {
            id,
            prompt_len,
            block_hashes,
            max_tokens,
            arrival,
            chunk_keys,
            offload_hits,
            access,
        });
        st.senders.insert(id, tx);
    }
    sh.wake.notify_one();
    let out = Out {
        id: format!("{}-{id}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }),
        model: sh.name.clone(),
        created: sh.created,
        kind,
    };
    if req.stream {
        let opts = req.stream_options.unwrap_or_default();
        stream_response(out, rx, opts)
    } else {
        whole_response(out, rx).await
    }
}

struct Out {
    id: String,
    model: String,
    created: u64,
    kind: Kind,
}

fn text(from: u32, to: u32) -> String {
    (from..to).map(|i| char::from(ALPHABET[i as usize % ALPHABET.len()])).collect()
}

fn usage(p: &Progress) -> Value {
    json!({
        "prompt_tokens": p.prompt,
        "completion_tokens": p.tokens,
        "total_tokens": p.prompt + p.tokens,
        "prompt_tokens_details": {"cached_tokens": p.cached},
    })
}

impl Out {
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null,
                             "finish_reason": finish, "stop_reason": null}],
            }),
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null,
                                 "finish_reason": finish}],
                })
            }
        }
    }

    fn usage_chunk(&self, p: &Progress) -> Value {
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": [], "usage": usage(p)})
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

enum Phase {
    Start,
    Tokens,
    Usage,
    Done,
    End,
}

fn stream_response(out: Out, rx: watch::Receiver<Progress>, opts: StreamOptions) -> Response {
    let include_usage = opts.include_usage;
    let continuous = opts.continuous_usage_stats;
    let state = (out, rx, 0u32, Phase::Start, Progress::default());
    let stream = futures_util::stream::unfold(state, move |(out, mut rx, sent, phase, last)| async move {
        match phase {
            Phase::Start if out.kind == Kind::Chat => {
                let b = sse(&out.chunk(Some(""), true, None));
                Some((Ok::<_, std::io::Error>(b), (out, rx, sent, Phase::Tokens, last)))
            }
            Phase::Start | Phase::Tokens => loop {
                let p = *rx.borrow_and_update();
                if p.tokens > sent {
                    let t = text(sent, p.tokens);
                    let finish = p.done.then_some("length");
                    let mut chunk = out.chunk(Some(&t), false, finish);
                    if continuous {
                        chunk["usage"] = usage(&p);
                    }
                    let b = sse(&chunk);
                    let next = if p.done {
                        if include_usage {
                            Phase::Usage
                        } else {
                            Phase::Done
                        }
                    } else {
                        Phase::Tokens
                    };
                    return Some((Ok(b), (out, rx, p.tokens, next, p)));
                }
                if p.done {
                    let next = if include_usage { Phase::Usage } else { Phase::Done };
                    let b = sse(&out.chunk(None, false, Some("length")));
                    return Some((Ok(b), (out, rx, sent, next, p)));
                }
                if rx.changed().await.is_err() {
                    // The engine stopped: end the stream without [DONE] (a cut stream).
                    return None;
                }
            },
            Phase::Usage => {
                let b = sse(&out.usage_chunk(&last));
                Some((Ok(b), (out, rx, sent, Phase::Done, last)))
            }
            Phase::Done => {
                Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), (out, rx, sent, Phase::End, last)))
            }
            Phase::End => None,
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn whole_response(out: Out, mut rx: watch::Receiver<Progress>) -> Response {
    let p = loop {
        let p = *rx.borrow_and_update();
        if p.done {
            break p;
        }
        if rx.changed().await.is_err() {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "the engine stopped", None);
        }
    };
    let t = text(0, p.tokens);
    let body = match out.kind {
        Kind::Completion => json!({
            "id": out.id, "object": "text_completion", "created": out.created, "model": out.model,
            "choices": [{"index": 0, "text": t, "logprobs": null, "finish_reason": "length",
                         "stop_reason": null}],
            "usage": usage(&p),
        }),
        Kind::Chat => json!({
            "id": out.id, "object": "chat.completion", "created": out.created, "model": out.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": t},
                         "logprobs": null, "finish_reason": "length"}],
            "usage": usage(&p),
        }),
    };
    axum::Json(body).into_response()
}
