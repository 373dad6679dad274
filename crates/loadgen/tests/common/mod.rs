//! A scripted OpenAI-compatible streaming server for the load generator's tests and benchmark.
//!
//! It runs on its own thread and runtime (so its timing does not depend on the client's), on
//! 127.0.0.1 with a free port, and answers `/v1/completions`, `/v1/chat/completions` and
//! `/v1/models`. Each request generates `max_tokens` tokens: the first content chunk `ttft` after
//! the request arrived, then one chunk every `itl`, each carrying `tokens_per_chunk` tokens.
//! `Fault` makes it misbehave.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream;
use serde_json::{json, Value};

use loadgen::{LoadgenConfig, ResultWriter, RunOutcome};
use tokio::time::Instant;
use workload::{Limits, Mode, Plan, Prompt, Request, RequestMeta};

pub const MODEL: &str = "test-model";

pub fn request(id: u64, prompt: Prompt, max_tokens: u32, send_at: Option<Duration>) -> Request {
    let prompt_len = match &prompt {
        Prompt::Tokens(t) => t.len() as u32,
        Prompt::Text(t) => t.len() as u32,
        Prompt::Chat(m) => m.iter().map(|m| m.content.len() as u32).sum(),
    };
    Request { id, prompt, prompt_len, max_tokens, send_at, depends_on: None, meta: RequestMeta::default() }
}

/// `n` token-prompt requests of `max_tokens`, all due at once.
pub fn plan(n: u64, max_tokens: u32, mode: Mode) -> Plan {
    Plan {
        requests: (0..n)
            .map(|i| request(i, Prompt::Tokens(vec![1, 2, 3, i as u32]), max_tokens, None))
            .collect(),
        mode,
        limits: Limits::default(),
    }
}

pub fn config(url: &str) -> LoadgenConfig {
    let mut cfg = LoadgenConfig::new(url);
    cfg.model = Some(MODEL.into());
    cfg.progress = false;
    cfg.stall_timeout = Duration::from_secs(10);
    cfg.request_timeout = Duration::from_secs(60);
    cfg
}

pub async fn run(plan: &Plan, cfg: &LoadgenConfig) -> (RunOutcome, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut sink = ResultWriter::in_dir(tmp.path()).expect("result dir");
    let out = loadgen::run(plan, cfg, &mut sink, std::time::Instant::now()).await.expect("run");
    (out, tmp)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// Answer with this status and a 2,000-byte body.
    Status(u16),
    /// Reset the connection after this many content chunks.
    DropAfter(u32),
    /// Send an event that is not JSON after this many content chunks.
    MalformedAfter(u32),
    /// Send `{"error": ...}` after this many content chunks.
    ErrorEventAfter(u32),
    /// Send nothing more, keeping the connection open, after this many content chunks.
    StallAfter(u32),
    /// Hold the response headers back forever.
    StallHeaders,
    /// End the body cleanly after this many content chunks, without finish_reason or [DONE].
    EndAfter(u32),
}

#[derive(Debug, Clone)]
pub struct Behavior {
    pub ttft: Duration,
    pub itl: Duration,
    pub tokens_per_chunk: u32,
    /// Honour `stream_options` (final usage, continuous usage); false: never send usage.
    pub usage: bool,
    /// Report this many cached prompt tokens in usage.
    pub cached_tokens: Option<u32>,
    /// Echo the prompt (as text) in the first content chunk: one very long event.
    pub echo: bool,
    /// SSE events per body frame (a zero-delay server batches them).
    pub events_per_frame: usize,
    pub fault: Fault,
    /// The fault applies only to requests with this `max_tokens` (all when `None`).
    pub fault_if_max_tokens: Option<u32>,
    /// Record when each request arrived and when each content frame left (ground truth).
    pub trace: Option<Trace>,
    /// Time frames within ~0.1 ms (one timer thread) instead of tokio's 1 ms wheel.
    pub precise_timer: bool,
}

/// Per request (keyed by the last prompt token, which [`plan`] sets to the request id): arrival
/// and the instants content frames were handed to the connection.
pub type Trace =
    Arc<std::sync::Mutex<std::collections::HashMap<u64, (std::time::Instant, Vec<std::time::Instant>)>>>;

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            ttft: Duration::ZERO,
            itl: Duration::ZERO,
            tokens_per_chunk: 1,
            usage: true,
            cached_tokens: None,
            echo: false,
            events_per_frame: 1,
            fault: Fault::None,
            fault_if_max_tokens: None,
            trace: None,
            precise_timer: false,
        }
    }
}

pub struct TestServer {
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a server with `b` on 127.0.0.1 (free port), on its own thread.
pub fn start(b: Behavior) -> TestServer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.set_nonblocking(true).expect("nonblocking listener");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let b = Arc::new(b);
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server runtime");
        rt.block_on(async move {
            let app = Router::new()
                .route("/v1/completions", post(completions))
                .route("/v1/chat/completions", post(chat))
                .route("/v1/models", get(models))
                .layer(DefaultBodyLimit::disable())
                .with_state(b);
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            tokio::select! {
                r = axum::serve(listener, app) => r.expect("test server"),
                _ = rx => {}
            }
        });
        // Dropping the runtime drops every connection, stalled ones included.
    });
    TestServer { url, shutdown: Some(tx), thread: Some(thread) }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn refused_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let url = format!("http://{}", l.local_addr().expect("local addr"));
    drop(l);
    url
}

async fn models() -> impl IntoResponse {
    axum::Json(json!({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
}

async fn completions(State(b): State<Arc<Behavior>>, body: Bytes) -> Response {
    respond(&b, &body, false).await
}

async fn chat(State(b): State<Arc<Behavior>>, body: Bytes) -> Response {
    respond(&b, &body, true).await
}

struct Req {
    last_token: Option<u64>,
    prompt_tokens: u32,
    prompt_text: String,
    max_tokens: u32,
    include_usage: bool,
    continuous: bool,
}

fn parse(body: &[u8]) -> Result<Req, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if v["model"] != MODEL {
        return Err(format!("unknown model {}", v["model"]));
    }
    if v["stream"] != true {
        return Err("stream must be true".into());
    }
    let (prompt_tokens, prompt_text) = match (&v["prompt"], &v["messages"]) {
        (Value::Array(t), _) => {
            (t.len() as u32, t.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" "))
        }
        (Value::String(s), _) => (s.len() as u32, s.clone()),
        (_, Value::Array(m)) => {
            let text: String = m.iter().filter_map(|m| m["content"].as_str()).collect();
            (text.len() as u32, text)
        }
        _ => return Err("no prompt".into()),
    };
    let max_tokens = v["max_tokens"].as_u64().ok_or("no max_tokens")? as u32;
    Ok(Req {
        prompt_tokens,
        last_token: v["prompt"].as_array().and_then(|t| t.last()).and_then(Value::as_u64),
        prompt_text,
        max_tokens,
        include_usage: v["stream_options"]["include_usage"] == true,
        continuous: v["stream_options"]["continuous_usage_stats"] == true,
    })
}

async fn respond(b: &Behavior, body: &[u8], chat: bool) -> Response {
    let start = Instant::now();
    let req = match parse(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let fault = match b.fault_if_max_tokens {
        Some(n) if n != req.max_tokens => Fault::None,
        _ => b.fault,
    };
    if fault == Fault::StallHeaders {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if let Fault::Status(code) = fault {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, format!("status {code}: {}", "x".repeat(2000))).into_response();
    }
    let events = script(b, &req, chat, fault);
    let trace = match (&b.trace, req.last_token) {
        (Some(t), Some(id)) => {
            t.lock().expect("trace").insert(id, (start.into_std(), Vec::new()));
            Some((t.clone(), id))
        }
        _ => None,
    };
    let b = b.clone();
    let stream = stream::unfold((events, 0usize), move |(events, i)| {
        let b = b.clone();
        let trace = trace.clone();
        async move {
            if i >= events.len() {
                return None;
            }
            let mut frame = Vec::new();
            let mut j = i;
            while j < events.len() && (j == i || j - i < b.events_per_frame) {
                match &events[j] {
                    Step::At(offset, text) => {
                        if !offset.is_zero() {
                            if j > i {
                                break;
                            }
                            if b.precise_timer {
                                precise_sleep_until((start + *offset).into_std()).await;
                            } else {
                                tokio::time::sleep_until(start + *offset).await;
                            }
                        }
                        frame.extend_from_slice(text.as_bytes());
                    }
                    Step::Drop => {
                        if j > i {
                            break;
                        }
                        return Some((
                            Err(std::io::Error::other("dropped by the test server")),
                            (events, j + 1),
                        ));
                    }
                    Step::Stall => {
                        if j > i {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
                j += 1;
            }
            if let Some((t, id)) = &trace {
                if let Some(e) = t.lock().expect("trace").get_mut(id) {
                    e.1.push(std::time::Instant::now());
                }
            }
            Some((Ok(Bytes::from(frame)), (events, j)))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("response")
}

enum Step {
    /// Send this text at `start + offset` (zero: immediately).
    At(Duration, String),
    Drop,
    Stall,
}

fn script(b: &Behavior, req: &Req, chat: bool, fault: Fault) -> Vec<Step> {
    // Plain `format!` rather than `json!`: the server must stay cheap next to the client.
    let mut out = Vec::new();
    let usage = |completion: u32| {
        let cached = b
            .cached_tokens
            .map(|c| format!(r#","prompt_tokens_details":{{"cached_tokens":{c}}}"#))
            .unwrap_or_default();
        format!(
            r#"{{"prompt_tokens":{},"completion_tokens":{completion},"total_tokens":{}{cached}}}"#,
            req.prompt_tokens,
            req.prompt_tokens + completion
        )
    };
    if chat {
        out.push(Step::At(
            Duration::ZERO,
            r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#.to_string()
                + "\n\n",
        ));
    }
    let k = b.tokens_per_chunk.max(1);
    let n_chunks = req.max_tokens.div_ceil(k);
    let mut done_tokens = 0;
    for j in 0..n_chunks {
        if let Fault::DropAfter(n)
        | Fault::MalformedAfter(n)
        | Fault::ErrorEventAfter(n)
        | Fault::StallAfter(n)
        | Fault::EndAfter(n) = fault
        {
            if j == n {
                match fault {
                    Fault::DropAfter(_) => out.push(Step::Drop),
                    Fault::MalformedAfter(_) => {
                        out.push(Step::At(Duration::ZERO, "data: {\"choices\": [{\"text\": \"a\"\n\n".into()))
                    }
                    Fault::ErrorEventAfter(_) => out.push(Step::At(
                        Duration::ZERO,
                        "data: {\"error\":{\"object\":\"error\",\"message\":\"engine died\",\"code\":500}}\n\n".into(),
                    )),
                    Fault::StallAfter(_) => out.push(Step::Stall),
                    _ => {}
                }
                return out;
            }
        }
        let tokens = k.min(req.max_tokens - done_tokens);
        done_tokens += tokens;
        let mut text = "t".repeat(tokens as usize);
        if j == 0 && b.echo {
            text = serde_json::to_string(&format!("{}{text}", req.prompt_text)).expect("string");
            text = text[1..text.len() - 1].to_string();
        }
        let finish = if done_tokens == req.max_tokens { r#""length""# } else { "null" };
        let usage = if b.usage && req.continuous { usage(done_tokens) } else { "null".into() };
        let event = if chat {
            format!(
                r#"data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"{MODEL}","choices":[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":{finish}}}],"usage":{usage}}}"#
            )
        } else {
            format!(
                r#"data: {{"id":"cmpl-1","object":"text_completion","model":"{MODEL}","choices":[{{"index":0,"text":"{text}","logprobs":null,"finish_reason":{finish}}}],"usage":{usage}}}"#
            )
        };
        out.push(Step::At(b.ttft + b.itl * j, event + "\n\n"));
    }
    if b.usage && req.include_usage {
        out.push(Step::At(
            Duration::ZERO,
            format!("data: {{\"id\":\"cmpl-1\",\"choices\":[],\"usage\":{}}}\n\n", usage(req.max_tokens)),
        ));
    }
    out.push(Step::At(Duration::ZERO, "data: [DONE]\n\n".into()));
    out
}

/// Sleeps until `deadline` within about 0.1 ms: tokio's timer wheel has 1 ms ticks and wakes up
/// to 1-2 ms late, which would be the server's error, not the client's. One thread parks until
/// the earliest deadline and wakes the futures that are due.
fn precise_sleep_until(deadline: std::time::Instant) -> PreciseSleep {
    PreciseSleep { deadline }
}

struct PreciseSleep {
    deadline: std::time::Instant,
}

impl std::future::Future for PreciseSleep {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if std::time::Instant::now() >= self.deadline {
            return std::task::Poll::Ready(());
        }
        let timer = timer();
        let mut heap = timer.heap.lock().expect("timer heap");
        let earliest = heap.peek().is_none_or(|e| self.deadline < e.0 .0);
        let seq = timer.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        heap.push(std::cmp::Reverse((self.deadline, seq, WakerEntry(cx.waker().clone()))));
        drop(heap);
        if earliest {
            timer.thread.unpark();
        }
        std::task::Poll::Pending
    }
}

struct WakerEntry(std::task::Waker);
impl PartialEq for WakerEntry {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for WakerEntry {}
impl PartialOrd for WakerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for WakerEntry {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

type Entry = std::cmp::Reverse<(std::time::Instant, u64, WakerEntry)>;

struct Timer {
    heap: std::sync::Mutex<std::collections::BinaryHeap<Entry>>,
    seq: std::sync::atomic::AtomicU64,
    thread: std::thread::Thread,
}

fn timer() -> &'static Timer {
    static TIMER: std::sync::OnceLock<Timer> = std::sync::OnceLock::new();
    TIMER.get_or_init(|| {
        let thread = std::thread::Builder::new()
            .name("precise-timer".into())
            .spawn(|| loop {
                let timer = timer();
                let now = std::time::Instant::now();
                let mut due = Vec::new();
                let next = {
                    let mut heap = timer.heap.lock().expect("timer heap");
                    while heap.peek().is_some_and(|e| e.0 .0 <= now) {
                        due.push(heap.pop().expect("peeked").0 .2);
                    }
                    heap.peek().map(|e| e.0 .0)
                };
                for w in due {
                    w.0.wake();
                }
                match next {
                    Some(t) => {
                        std::thread::park_timeout(t.saturating_duration_since(std::time::Instant::now()))
                    }
                    None => std::thread::park(),
                }
            })
            .expect("timer thread")
            .thread()
            .clone();
        Timer { heap: Default::default(), seq: Default::default(), thread }
    })
}
