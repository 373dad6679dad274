//! Real time: the OpenAI-compatible HTTP server and the engine task that steps the core.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kvcache::{BlockHash, Tier};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{EmulatorConfig, Resolved};
use crate::metrics::{self, RenderInput, TierIo};
use crate::offload::{Change, OffloadIndex};
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
}

impl Shared {
    /// Model seconds now: wall time over `time_scale`, never before the last step's end.
    fn model_now(&self, core: &Core) -> f64 {
        let scale = self.resolved.cfg.time_scale;
        let wall = if scale > 0.0 { self.t0.elapsed().as_secs_f64() / scale } else { 0.0 };
        wall.max(core.now())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running emulated engine. Dropping it without [`Server::shutdown`] leaves the tasks running
/// until the runtime ends.
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
            stores: Stores::open(&resolved),
            state: Mutex::new(EngineState {
                core: Core::new(resolved.clone()),
                senders: HashMap::new(),
                stopped: false,
            }),
            resolved,
            wake: Notify::new(),
            writer,
            next_id: AtomicU64::new(0),
            t0: Instant::now(),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        });
        let engine = tokio::spawn(engine_loop(shared.clone()));
        let writer_task = tokio::spawn(writer_loop(shared.clone(), rx));
        let app = router(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let sh = shared.clone();
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
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
            result.map_err(|source| Error::Io { context: "http server".to_owned(), source })
        });
        Ok(Server { addr, stop: Some(stop), task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends open streams, and waits for the tasks to finish.
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

/// Steps the core: sleep each step's modelled duration, then publish its tokens.
async fn engine_loop(sh: Arc<Shared>) {
    let scale = sh.resolved.cfg.time_scale;
    let t0 = sh.t0;
    let mut emitted: Vec<(u64, u32)> = Vec::new();
    let mut finished = Vec::new();
    loop {
        let wake = sh.wake.notified();
        let end = {
            let mut st = lock(&sh.state);
            if st.stopped {
                st.senders.clear();
                return;
            }
            let now = sh.model_now(&st.core);
            match st.core.step(now) {
                Some(out) => {
                    emitted.clear();
                    emitted.extend_from_slice(&out.emitted);
                    finished.clear();
                    finished.extend_from_slice(&out.finished);
                    if !out.stores.is_empty() {
                        let mut index = lock(&sh.index);
                        let changes: Vec<Change> =
                            out.stores.iter().flat_map(|(_, k)| index.store(k)).collect();
                        let _ = sh.writer.send(changes);
                    }
                    Some(out.end)
                }
                None => None,
            }
        };
        let Some(end) = end else {
            wake.await;
            continue;
        };
        if scale > 0.0 {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(end * scale)).into()).await;
        } else {
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
        .layer(axum::middleware::map_response(|mut res: Response| async move {
            res.headers_mut().insert("x-kvlab-engine", HeaderValue::from_static("emulated"));
            res
        }))
        .with_state(sh)
}

/// An OpenAI-style error body.
pub(crate) fn error_body(message: &str) -> String {
    json!({"error": {"message": message, "type": "BadRequestError", "param": null, "code": 400}}).to_string()
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let typ = if status == StatusCode::NOT_FOUND { "NotFoundError" } else { "BadRequestError" };
    let body = json!({"error": {"message": message, "type": typ, "param": null, "code": status.as_u16()}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn models(State(sh): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": sh.name,
            "object": "model",
            "created": sh.created,
            "owned_by": "kvlab-emulated",
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
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// A refused request: its status and message.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.0, &self.1)
    }
}

fn parse(sh: &Shared, body: &[u8], kind: Kind) -> Result<(GenRequest, Vec<u32>), ApiError> {
    let bad = |m: &str| ApiError(StatusCode::BAD_REQUEST, m.to_owned());
    let req: GenRequest =
        serde_json::from_slice(body).map_err(|e| bad(&format!("invalid request body: {e}")))?;
    if let Some(m) = &req.model {
        if *m != sh.name {
            return Err(ApiError(StatusCode::NOT_FOUND, format!("The model `{m}` does not exist.")));
        }
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is supported"));
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

async fn tokenize(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("invalid request body: {e}")),
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

async fn completions(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    generate(sh, &body, Kind::Completion).await
}

async fn chat_completions(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    generate(sh, &body, Kind::Chat).await
}

/// Reads the prompt's offload hits for real, chunk by chunk, beyond the GPU prefix hit; stops
/// at the first chunk that is missing or fails (a failure is a counted tier error, and the
/// chunk is forgotten so it is stored again).
async fn load_offload(sh: &Shared, keys: &[BlockHash], gpu_hit: u32) -> Vec<Tier> {
    let mut hits = lock(&sh.index).lookup(keys);
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
    let prompt_len = tokens.len() as u32;
    let max_tokens = req
        .max_tokens
        .or(req.max_completion_tokens)
        .unwrap_or_else(|| max_model_len.saturating_sub(prompt_len));
    if let Err(m) = check_lengths(prompt_len, max_tokens, max_model_len) {
        return error_response(StatusCode::BAD_REQUEST, &m);
    }
    if req.min_tokens > max_tokens {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!("min_tokens ({}) must be at most max_tokens ({max_tokens})", req.min_tokens),
        );
    }
    let id = sh.next_id.fetch_add(1, Relaxed);
    let (block_hashes, gpu_hit) = {
        let st = lock(&sh.state);
        let h = st.core.block_hashes(&tokens);
        let hit = st.core.gpu_hit_tokens(&h);
        (h, hit)
    };
    let chunk_keys = if sh.resolved.tiers.is_empty() {
        Vec::new()
    } else {
        kvcache::chunk_keys(sh.resolved.cfg.offload.chunk_tokens, &tokens, false)
    };
    let offload_hits =
        if chunk_keys.is_empty() { Vec::new() } else { load_offload(&sh, &chunk_keys, gpu_hit).await };
    drop(tokens);
    let (tx, rx) = watch::channel(Progress { prompt: prompt_len, ..Progress::default() });
    {
        let mut st = lock(&sh.state);
        if st.stopped {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "the engine is shutting down");
        }
        let arrival = sh.model_now(&st.core);
        st.core.add(NewRequest {
            id,
            prompt_len,
            block_hashes,
            max_tokens,
            arrival,
            chunk_keys,
            offload_hits,
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
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "the engine stopped");
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
