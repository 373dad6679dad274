//! One streaming request, from body to [`RequestRecord`].
//!
//! The hot path: per-request state lives in the request's future, chunk times go into a `Vec`
//! sized for `max_tokens`, chunk JSON is parsed without copying text, and nothing is sent
//! anywhere per token. The response body is cut at SSE event boundaries before the event parser
//! ([`crate::sse`]) sees it, and the usual event is parsed in place, as a slice of the read.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use stats::{RequestError, RequestRecord, TokenSource, RECORD_VERSION};
use tokio::time::{Instant, Sleep};
use workload::{ChatMessage, Prompt, Request};

use crate::chunk::Chunk;
use crate::config::{Api, LoadgenConfig};
use crate::sse::{Events, NotUtf8};
use crate::Error;

/// Longest HTTP error body excerpt kept in a record, in bytes.
const BODY_EXCERPT: usize = 512;
/// Longest excerpt of a bad event kept in an error message, in bytes.
const EVENT_EXCERPT: usize = 200;
/// Longest `GET /v1/models` answer read, in bytes.
const MAX_MODELS_BODY: usize = 1 << 20;
/// Chunk vectors are preallocated to `max_tokens`, up to this many entries.
const MAX_PREALLOC: usize = 1 << 16;

/// The endpoint a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Completions,
    Chat,
}

/// The part of the configuration a request needs, with the model resolved. Each worker thread
/// has its own (see [`Client::for_worker`]), so that its connections live on its runtime.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    completions_url: String,
    chat_url: String,
    model: String,
    api: Api,
    auth: Option<HeaderValue>,
    request_timeout: Duration,
    stall_timeout: Duration,
    caps: Caps,
    ignore_eos: bool,
    send_min_tokens: bool,
    continuous_usage: bool,
    stop: Option<tokio_util::sync::CancellationToken>,
}

/// When a request is sent, relative to what, and how it is flagged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// When the schedule wanted it sent.
    pub(crate) intended: Instant,
    /// When a request that was due while every slot was taken got one (see the driver).
    pub(crate) queued_until: Option<Instant>,
    /// The run clock's zero.
    pub(crate) origin: Instant,
    pub(crate) warmup: bool,
    /// Closed loop: the intended time is the actual send time.
    pub(crate) intended_is_sent: bool,
}

impl Client {
    /// Builds the HTTP client and resolves the model (asking `GET /v1/models` when unset).
    pub(crate) async fn connect(cfg: &LoadgenConfig) -> Result<Client, Error> {
        let root = cfg.root_url()?;
        let http = http_client()?;
        let auth = match &cfg.api_key {
            Some(key) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| Error::BaseUrl {
                        url: cfg.base_url.clone(),
                        reason: "the API key is not a valid header value".into(),
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let model = match &cfg.model {
            Some(m) => m.clone(),
            None => discover_model(&http, root, auth.as_ref(), cfg.stall_timeout).await?,
        };
        Ok(Client {
            http,
            completions_url: format!("{root}/v1/completions"),
            chat_url: format!("{root}/v1/chat/completions"),
            model,
            api: cfg.api,
            auth,
            request_timeout: cfg.request_timeout,
            stall_timeout: cfg.stall_timeout,
            caps: Caps::of(cfg),
            ignore_eos: cfg.ignore_eos,
            send_min_tokens: cfg.send_min_tokens,
            continuous_usage: cfg.continuous_usage,
            stop: cfg.stop.clone(),
        })
    }

    /// The same client with a connection pool of its own, for a worker thread: connections
    /// are driven by the runtime that opened them, so each worker must open its own.
    pub(crate) fn for_worker(&self) -> Result<Client, Error> {
        Ok(Client { http: http_client()?, ..self.clone() })
    }

    /// Opens up to `n` connections (as many concurrent `GET /v1/models`, each read to its end)
    /// and leaves them idle in the pool; returns how many answered. Any HTTP answer counts: the
    /// connection is open.
    pub(crate) async fn open_connections(&self, n: usize) -> u64 {
        let url = self.completions_url.replace("/v1/completions", "/v1/models");
        let mut answers: futures_util::stream::FuturesUnordered<_> = (0..n)
            .map(|_| {
                let mut req = self.http.get(url.as_str());
                if let Some(auth) = &self.auth {
                    req = req.header(AUTHORIZATION, auth.clone());
                }
                async move {
                    let resp = tokio::time::timeout(self.stall_timeout, req.send()).await.ok()?.ok()?;
                    // Read to the end (bounded) so that the connection goes back to the pool.
                    let mut body = resp.bytes_stream();
                    let mut read = 0usize;
                    while let Some(Ok(piece)) = body.next().await {
                        read += piece.len();
                        if read > MAX_MODELS_BODY {
                            break;
                        }
                    }
                    Some(())
                }
            })
            .collect();
        let mut opened = 0;
        while let Some(answer) = answers.next().await {
            opened += u64::from(answer.is_some());
        }
        opened
    }

    /// Requests in flight end as `interrupted` when `stop` is cancelled.
    pub(crate) fn set_stop(&mut self, stop: tokio_util::sync::CancellationToken) {
        self.stop = Some(stop);
    }

    /// The model requests name.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// Where `prompt` goes under the configured [`Api`], or why it cannot be sent.
    pub(crate) fn endpoint(api: Api, prompt: &Prompt) -> Result<Endpoint, &'static str> {
        match (api, prompt) {
            (Api::Auto | Api::Completions, Prompt::Tokens(_) | Prompt::Text(_)) => Ok(Endpoint::Completions),
            (Api::Auto | Api::Chat, Prompt::Chat(_)) | (Api::Chat, Prompt::Text(_)) => Ok(Endpoint::Chat),
            (Api::Completions, Prompt::Chat(_)) => {
                Err("a chat prompt cannot go to /v1/completions (use the chat API)")
            }
            (Api::Chat, Prompt::Tokens(_)) => {
                Err("a token-ID prompt cannot go to /v1/chat/completions (use the completions API)")
            }
        }
    }

    /// The JSON body of `req`. The plan was validated, so the endpoint is known to exist.
    pub(crate) fn body(&self, req: &Request) -> Vec<u8> {
        let endpoint = Client::endpoint(self.api, &req.prompt).unwrap_or(Endpoint::Completions);
        let (prompt, messages) = match (&req.prompt, endpoint) {
            (Prompt::Tokens(t), _) => (Some(PromptField::Tokens(t)), None),
            (Prompt::Text(t), Endpoint::Completions) => (Some(PromptField::Text(t)), None),
            (Prompt::Text(t), Endpoint::Chat) => {
                (None, Some(Messages::User([UserMessage { role: "user", content: t }])))
            }
            (Prompt::Chat(m), _) => (None, Some(Messages::Chat(m))),
        };
        // OpenAI's end-user id names the conversation, for engines that evict by it.
        let user = req.meta.session.map(|s| format!("session-{s}"));
        let body = Body {
            model: &self.model,
            prompt,
            messages,
            max_tokens: req.max_tokens,
            min_tokens: self.send_min_tokens.then_some(req.max_tokens),
            ignore_eos: self.ignore_eos.then_some(true),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
                continuous_usage_stats: self.continuous_usage,
            },
            user,
        };
        // Serializing plain structs, string slices and integers into a Vec cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Sends `req` and follows its stream to the end. Never fails: a failure is classified in
    /// the record's `error`.
    pub(crate) async fn send(&self, req: &Prepared, when: Timing) -> RequestRecord {
        let url = match req.endpoint {
            Endpoint::Completions => &self.completions_url,
            Endpoint::Chat => &self.chat_url,
        };
        let request = || {
            let (body, wire) = StampedBody::body(req.body.clone());
            let mut builder =
                self.http.post(url.as_str()).header(CONTENT_TYPE, "application/json").body(body);
            if let Some(auth) = &self.auth {
                builder = builder.header(AUTHORIZATION, auth.clone());
            }
            (builder, wire)
        };

        let mut st = Partial::new(req.max_tokens, when.origin);
        let started = Instant::now();
        let exchange = tokio::time::timeout(self.request_timeout, self.exchange(request, &mut st));
        let outcome = match &self.stop {
            Some(stop) => until_stopped(exchange, stop).await,
            None => Some(exchange.await),
        };
        let result = match outcome {
            Some(Ok(r)) => r,
            // The stream was complete; only the drain after `[DONE]` was cut short.
            Some(Err(_)) | None if st.done => Ok(()),
            Some(Err(_)) => Err(RequestError::Timeout {
                message: format!("request exceeded the total timeout of {}", secs(self.request_timeout)),
            }),
            None => Err(RequestError::Interrupted {
                message: "the run was stopped while this request was in flight".to_owned(),
            }),
        };
        let end = st.end.unwrap_or_else(Instant::now);
        // Sent: when the connection took the body to write it (the request went on the wire
        // then), not when this future started; a request that never got that far, when it did.
        let sent = st.wire.as_ref().and_then(|w| w.get().copied()).unwrap_or(started);
        st.finish(req, when, sent, end, result.err())
    }

    async fn exchange(
        &self,
        request: impl Fn() -> (reqwest::RequestBuilder, Wire),
        st: &mut Partial,
    ) -> Result<(), RequestError> {
        // A server may close a kept-alive connection after a response while still advertising
        // keep-alive (llama.cpp's server does; vLLM closes idle ones after 5 s). A request that
        // went out on such a connection fails before any response byte; it is sent once more on
        // a fresh connection, as browsers do. Any other failure is final.
        let (builder, wire) = request();
        st.wire = Some(wire);
        let resp = match self.response(builder).await {
            Err(e) if is_stale_connection(&e) => {
                let (builder, wire) = request();
                st.wire = Some(wire);
                self.response(builder).await
            }
            other => other,
        };
        let resp = match resp {
            Err(e) if e.is_timeout() => {
                return Err(RequestError::Timeout {
                    message: format!(
                        "no response headers within the stall timeout of {}",
                        secs(self.stall_timeout)
                    ),
                })
            }
            Err(e) => return Err(RequestError::Connect { message: chain(&e) }),
            Ok(resp) => resp,
        };
        st.first_byte = Some(st.secs(Instant::now()));
        let status = resp.status();
        let retry_after = header_text(resp.headers().get(RETRY_AFTER));
        let content_type = header_text(resp.headers().get(CONTENT_TYPE));
        let mut body = GuardedBody::new(Box::pin(resp.bytes_stream()), self.caps, Some(self.stall_timeout));
        if !status.is_success() {
            // No retry, whatever Retry-After says: a benchmark must not hide overload.
            let text = read_excerpt(&mut body).await;
            let body = match retry_after {
                Some(after) => format!("[Retry-After: {}] {text}", excerpt(&after, 64)),
                None => text,
            };
            return Err(RequestError::HttpStatus { status: status.as_u16(), body });
        }
        if let Some(ct) = content_type.filter(|ct| !is_event_stream(ct)) {
            let text = read_excerpt(&mut body).await;
            return Err(RequestError::MalformedEvent {
                message: format!(
                    "expected an event stream (text/event-stream), got {:?}: {}",
                    excerpt(&ct, 64),
                    excerpt(&text, EVENT_EXCERPT)
                ),
            });
        }
        follow(body, st).await
    }

    /// Sends and waits for the response headers, at most the stall timeout.
    async fn response(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response, SendError> {
        match tokio::time::timeout(self.stall_timeout, builder.send()).await {
            Err(_) => Err(SendError::HeadersTimeout),
            Ok(Err(e)) => Err(SendError::Http(e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// `GET /v1/models` → the first model's id.
async fn discover_model(
    http: &reqwest::Client,
    root: &str,
    auth: Option<&HeaderValue>,
    timeout: Duration,
) -> Result<String, Error> {
    #[derive(Deserialize)]
    struct Models {
        data: Vec<Model>,
    }
    #[derive(Deserialize)]
    struct Model {
        id: String,
    }
    let url = format!("{root}/v1/models");
    let fail = |reason: String| Error::ModelDiscovery { url: url.clone(), reason };
    let mut req = http.get(&url);
    if let Some(auth) = auth {
        req = req.header(AUTHORIZATION, auth.clone());
    }
    let fetch = async {
        let resp = req.send().await.map_err(|e| chain(&e))?;
        let status = resp.status();
        // Read under a cap: a hostile server could answer with an endless body.
        let mut body = resp.bytes_stream();
        let mut bytes = Vec::new();
        while let Some(piece) = body.next().await {
            bytes.extend_from_slice(&piece.map_err(|e| chain(&e))?);
            if bytes.len() > MAX_MODELS_BODY {
                return Err(format!("the answer is longer than {MAX_MODELS_BODY} bytes"));
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", excerpt(&text, BODY_EXCERPT)));
        }
        let models: Models = serde_json::from_str(&text).map_err(|e| format!("unexpected answer: {e}"))?;
        models.data.into_iter().next().map(|m| m.id).ok_or_else(|| "the server lists no model".to_string())
    };
    match tokio::time::timeout(timeout, fetch).await {
        Ok(r) => r.map_err(fail),
        Err(_) => Err(fail(format!("no answer within {}", secs(timeout)))),
    }
}

/// What is known about one response so far. Lives in the request's future.
pub(crate) struct Partial {
    origin: Instant,
    first_byte: Option<f64>,
    first_token: Option<f64>,
    end: Option<Instant>,
    pub(crate) chunks: Vec<(f64, u32)>,
    /// Cumulative `completion_tokens` of the last chunk that had usage.
    last_completion: Option<u32>,
    pub(crate) prompt_tokens: Option<u32>,
    pub(crate) cached_tokens: Option<u32>,
    pub(crate) done: bool,
    finish_reason: bool,
    /// When the request's body was taken to be written.
    wire: Option<Wire>,
    /// The request's `prefill`/`decode` NVTX range (empty without the `nvtx` feature).
    phase: crate::nvtx::RequestRange,
}

impl Partial {
    pub(crate) fn new(max_tokens: u32, origin: Instant) -> Partial {
        Partial {
            origin,
            first_byte: None,
            first_token: None,
            end: None,
            chunks: Vec::with_capacity((max_tokens as usize).min(MAX_PREALLOC)),
            last_completion: None,
            prompt_tokens: None,
            cached_tokens: None,
            done: false,
            finish_reason: false,
            wire: None,
            phase: crate::nvtx::RequestRange::start(),
        }
    }

    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// A content chunk counts `k` tokens: the growth of a cumulative usage when the server sends
    /// one in every chunk (continuous usage; for the first content chunk, its whole count),
    /// otherwise 1. Never 0, so every content chunk is a token arrival.
    fn on_chunk(&mut self, chunk: &Chunk, now: Instant) {
        let completion = chunk.usage.as_ref().and_then(|u| u.completion_tokens);
        if chunk.has_content() {
            let k = match (completion, self.last_completion) {
                (Some(c), Some(prev)) => c.saturating_sub(prev),
                (Some(c), None) if self.chunks.is_empty() => c,
                _ => 1,
            };
            let t = self.secs(now);
            if self.first_token.is_none() {
                self.phase.first_token();
            }
            self.first_token.get_or_insert(t);
            self.chunks.push((t, k.max(1)));
        }
        if let Some(usage) = &chunk.usage {
            self.prompt_tokens = usage.prompt_tokens.or(self.prompt_tokens);
            self.cached_tokens =
                usage.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).or(self.cached_tokens);
        }
        if completion.is_some() {
            self.last_completion = completion;
        }
        self.finish_reason |= chunk.is_finished();
    }

    /// Output tokens: the last usage's count, or the content chunks' (see [`Partial::on_chunk`]).
    pub(crate) fn output_tokens(&self) -> (u32, TokenSource) {
        match self.last_completion {
            Some(n) => (n, TokenSource::Usage),
            None => {
                (self.chunks.iter().map(|&(_, k)| k).fold(0u32, u32::saturating_add), TokenSource::Chunks)
            }
        }
    }

    /// The record, without `prompt_blocks` (the writer thread adds them).
    fn finish(
        self,
        req: &Prepared,
        when: Timing,
        sent: Instant,
        end: Instant,
        error: Option<RequestError>,
    ) -> RequestRecord {
        let sent_s = self.secs(sent);
        let (output_tokens, token_source) = self.output_tokens();
        let prompt_tokens = self.prompt_tokens.or(req.known_prompt_tokens);
        RequestRecord {
            v: RECORD_VERSION,
            id: req.id,
            warmup: when.warmup,
            intended: if when.intended_is_sent { sent_s } else { self.secs(when.intended) },
            sent: sent_s,
            queued_until: when.queued_until.filter(|_| !when.intended_is_sent).map(|q| self.secs(q)),
            first_byte: self.first_byte,
            first_token: self.first_token,
            end: self.secs(end),
            prompt_tokens,
            output_tokens,
            cached_tokens: self.cached_tokens,
            token_source,
            error,
            session: req.session,
            turn: req.turn,
            prompt_blocks: None,
            chunks: self.chunks,
        }
    }
}

/// A request ready to go: its body serialized and its prompt hashed when the run was prepared,
/// so that nothing of it is computed on the path that takes timestamps.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) id: u64,
    pub(crate) endpoint: Endpoint,
    pub(crate) body: Bytes,
    pub(crate) max_tokens: u32,
    /// A token-ID prompt's length: the prompt tokens when the server reports none.
    pub(crate) known_prompt_tokens: Option<u32>,
    pub(crate) session: Option<u64>,
    pub(crate) turn: Option<u32>,
    /// The record's `prompt_blocks`.
    pub(crate) blocks: Vec<u64>,
}

impl Prepared {
    pub(crate) fn new(client: &Client, req: &Request) -> Prepared {
        Prepared {
            id: req.id,
            endpoint: Client::endpoint(client.api, &req.prompt).unwrap_or(Endpoint::Completions),
            body: Bytes::from(client.body(req)),
            max_tokens: req.max_tokens,
            known_prompt_tokens: match req.prompt {
                Prompt::Tokens(_) => Some(req.prompt_len),
                Prompt::Text(_) | Prompt::Chat(_) => None,
            },
            session: req.meta.session,
            turn: req.meta.turn,
            blocks: prompt_blocks(&req.prompt),
        }
    }
}

/// When a request's body was taken by its connection to be written.
type Wire = Arc<OnceLock<Instant>>;

/// A request body that notes when the connection first asks for it: hyper writes the head and
/// the body in the same turn, right after, so this is when the request goes on the wire. The
/// client's own work before that (building the request, queueing it for its connection) is not
/// counted as the server's latency.
struct StampedBody {
    data: Option<Bytes>,
    len: u64,
    wire: Wire,
}

impl StampedBody {
    fn body(data: Bytes) -> (reqwest::Body, Wire) {
        let wire = Wire::default();
        let body = StampedBody { len: data.len() as u64, data: Some(data), wire: Arc::clone(&wire) };
        (reqwest::Body::wrap(body), wire)
    }
}

impl http_body::Body for StampedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let _ = self.wire.set(Instant::now());
        Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// The HTTP client of one worker: HTTP/1.1 (one stream per connection, as engines are measured),
/// no proxy, no Nagle, every idle connection kept.
fn http_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .map_err(Error::Client)
}

/// The prompt's chained 16-token block hashes, as the cache simulator replays them: token ids as
/// they are; text and chat content as one token per byte (the emulator's tokenizer).
fn prompt_blocks(prompt: &Prompt) -> Vec<u64> {
    let tokens: Vec<u32> = match prompt {
        Prompt::Tokens(t) => t.clone(),
        Prompt::Text(t) => t.bytes().map(u32::from).collect(),
        Prompt::Chat(messages) => {
            messages.iter().flat_map(|m| m.role.bytes().chain(m.content.bytes())).map(u32::from).collect()
        }
    };
    kvcache::block_hashes(&kvcache::HashConfig::default(), &tokens, None).into_iter().map(|h| h.0).collect()
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<PromptField<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Messages<'a>>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_eos: Option<bool>,
    stream: bool,
    stream_options: StreamOptions,
    /// The request's session, when the plan has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PromptField<'a> {
    Tokens(&'a [u32]),
    Text(&'a str),
}

#[derive(Serialize)]
#[serde(untagged)]
enum Messages<'a> {
    Chat(&'a [ChatMessage]),
    User([UserMessage<'a>; 1]),
}

#[derive(Serialize)]
struct UserMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    continuous_usage_stats: bool,
}

/// The size caps of a response body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub(crate) max_event_bytes: usize,
    pub(crate) max_body_bytes: u64,
}

impl Caps {
    pub(crate) fn of(cfg: &LoadgenConfig) -> Caps {
        Caps { max_event_bytes: cfg.max_event_bytes, max_body_bytes: cfg.max_body_bytes }
    }
}

/// Why the body stream failed.
#[derive(Debug)]
pub(crate) enum BodyError<E> {
    Http(E),
    /// No byte for the stall timeout.
    Stall(Duration),
    /// More than `max_event_bytes` since the last blank line.
    EventTooLarge(usize),
    /// More than `max_body_bytes` in all.
    BodyTooLarge(u64),
    /// Bytes that are not UTF-8 (an incomplete character at a read's end is not an error).
    Utf8,
}

impl<E: std::fmt::Display> std::fmt::Display for BodyError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Http(e) => e.fmt(f),
            BodyError::Stall(_) => f.write_str("stall timeout"),
            BodyError::EventTooLarge(cap) => write!(f, "an SSE event longer than the cap of {cap} bytes"),
            BodyError::BodyTooLarge(cap) => write!(f, "a response body longer than the cap of {cap} bytes"),
            BodyError::Utf8 => f.write_str("invalid UTF-8 in the event stream"),
        }
    }
}

/// The SSE line structure seen so far, carried across reads.
#[derive(Debug, Clone, Copy)]
struct Lines {
    /// The last byte ended a line (or nothing came yet): a line end now is a blank line.
    at_line_start: bool,
    /// The last byte was `\r`: a `\n` now belongs to it.
    after_cr: bool,
}

impl Lines {
    /// The length of the next piece of `buf`: through the end of its first line and of the blank
    /// line right after it (an event's end), or through a blank line, or all of `buf`. Also says
    /// whether the piece ends an event. Each byte is looked at once.
    fn cut(&mut self, buf: &[u8]) -> Cut {
        if self.after_cr && buf.first() == Some(&b'\n') {
            // The `\n` of a `\r\n` cut by the end of a read: a piece of its own (empty once
            // line ends are normalized).
            self.after_cr = false;
            return Cut { len: 1, event_end: false, saw_cr: false };
        }
        let mut i = 0;
        let mut ended_a_line = false;
        let mut saw_cr = false;
        while i < buf.len() {
            let b = buf[i];
            if b == b'\n' && self.after_cr {
                self.after_cr = false;
                i += 1;
                continue;
            }
            if b == b'\n' || b == b'\r' {
                let blank = self.at_line_start;
                self.at_line_start = true;
                self.after_cr = b == b'\r';
                saw_cr |= self.after_cr;
                i += 1;
                if blank {
                    if self.after_cr && buf.get(i) == Some(&b'\n') {
                        self.after_cr = false;
                        i += 1;
                    }
                    return Cut { len: i, event_end: true, saw_cr };
                }
                ended_a_line = true;
                continue;
            }
            if ended_a_line {
                return Cut { len: i, event_end: false, saw_cr };
            }
            self.at_line_start = false;
            self.after_cr = false;
            i += buf[i..].iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(buf.len() - i);
        }
        Cut { len: i, event_end: false, saw_cr }
    }
}

/// Where [`Lines::cut`] cuts.
struct Cut {
    len: usize,
    /// The piece ends with a blank line: an event's end.
    event_end: bool,
    /// The piece holds a `\r`.
    saw_cr: bool,
}

/// `piece` with every line end (`\r\n`, `\r`, `\n`) as `\n`; `cr_before`: the byte before
/// it was a `\r` (so a leading `\n` belongs to it). The event parser waits after a `\r` for
/// the byte that tells whether a `\n` follows; with `\n` only, what is complete is parsed at
/// once, however the body was split into reads.
fn normalize_line_ends(piece: &[u8], cr_before: bool) -> Bytes {
    let mut out = Vec::with_capacity(piece.len());
    let mut prev_cr = cr_before;
    for &b in piece {
        match b {
            b'\r' => out.push(b'\n'),
            b'\n' if prev_cr => {}
            b => out.push(b),
        }
        prev_cr = b == b'\r';
    }
    Bytes::from(out)
}

/// The response body with a stall timer (no byte for `stall` ends it with
/// [`BodyError::Stall`]), size caps, UTF-8 validation and line ends normalized to `\n`, cut so
/// that each item holds at most one line and the blank line after it: the event parser never
/// copies a long buffer per line, and never holds more than `max_event_bytes` (plus one read).
pub(crate) struct GuardedBody<S> {
    inner: S,
    pending: Bytes,
    caps: Caps,
    lines: Lines,
    event_bytes: usize,
    body_bytes: u64,
    /// The bytes of a UTF-8 character cut by the end of a read.
    utf8_carry: ([u8; 4], usize),
    stall: Duration,
    last_byte: Instant,
    /// Armed at a deadline no later than `last_byte + stall`; moved forward only when it fires,
    /// so a fast stream does not touch the timer wheel per read. `None`: no stall timeout (the
    /// body is in memory).
    timer: Option<Pin<Box<Sleep>>>,
    failed: bool,
}

impl<S> GuardedBody<S> {
    /// `stall: None` needs no runtime (for a body that is already in memory).
    pub(crate) fn new(inner: S, caps: Caps, stall: Option<Duration>) -> GuardedBody<S> {
        let now = Instant::now();
        GuardedBody {
            inner,
            pending: Bytes::new(),
            caps,
            lines: Lines { at_line_start: true, after_cr: false },
            event_bytes: 0,
            body_bytes: 0,
            utf8_carry: ([0; 4], 0),
            stall: stall.unwrap_or(Duration::MAX),
            last_byte: now,
            timer: stall.map(|stall| Box::pin(tokio::time::sleep_until(now + stall))),
            failed: false,
        }
    }

    /// The next piece of `pending`, or the cap it passes.
    fn next_piece<E>(&mut self) -> Result<Bytes, BodyError<E>> {
        let cr_before = self.lines.after_cr;
        let cut = self.lines.cut(&self.pending);
        self.event_bytes = self.event_bytes.saturating_add(cut.len);
        if self.event_bytes > self.caps.max_event_bytes {
            return Err(BodyError::EventTooLarge(self.caps.max_event_bytes));
        }
        if cut.event_end {
            self.event_bytes = 0;
        }
        let piece = self.pending.split_to(cut.len);
        // Checked per piece, not per read: the events before a bad byte count the same however
        // the body was split into reads.
        if !self.check_utf8(&piece) {
            return Err(BodyError::Utf8);
        }
        if cut.saw_cr || (cr_before && piece.first() == Some(&b'\n')) {
            return Ok(normalize_line_ends(&piece, cr_before));
        }
        Ok(piece)
    }

    /// Checks that `bytes`, after what came before, is UTF-8 so far.
    fn check_utf8(&mut self, mut bytes: &[u8]) -> bool {
        let (carry, len) = &mut self.utf8_carry;
        if *len > 0 {
            let width = match carry[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - *len).min(bytes.len());
            carry[*len..*len + take].copy_from_slice(&bytes[..take]);
            *len += take;
            bytes = &bytes[take..];
            match std::str::from_utf8(&carry[..*len]) {
                Ok(_) => *len = 0,
                Err(e) if e.error_len().is_none() && bytes.is_empty() => return true,
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                carry[..tail.len()].copy_from_slice(tail);
                *len = tail.len();
                true
            }
            Err(_) => false,
        }
    }
}

impl<S, E> Stream for GuardedBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, BodyError<E>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        if this.pending.is_empty() {
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    this.last_byte = Instant::now();
                    this.body_bytes = this.body_bytes.saturating_add(bytes.len() as u64);
                    if this.body_bytes > this.caps.max_body_bytes {
                        this.failed = true;
                        return Poll::Ready(Some(Err(BodyError::BodyTooLarge(this.caps.max_body_bytes))));
                    }
                    this.pending = bytes;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(BodyError::Http(e)))),
                Poll::Ready(None) => {
                    if this.utf8_carry.1 > 0 {
                        this.failed = true;
                        return Poll::Ready(Some(Err(BodyError::Utf8)));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    let Some(timer) = this.timer.as_mut() else { return Poll::Pending };
                    loop {
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        let deadline = this.last_byte + this.stall;
                        if Instant::now() >= deadline {
                            return Poll::Ready(Some(Err(BodyError::Stall(this.stall))));
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
            }
        }
        let piece = this.next_piece();
        this.failed = piece.is_err();
        Poll::Ready(Some(piece))
    }
}

/// Events after `[DONE]` read at most, in bytes, so that the connection can go back to the pool.
const DRAIN_AFTER_DONE: usize = 64 << 10;

/// Follows an event stream to its end, recording into `st`.
pub(crate) async fn follow<S, E>(mut body: GuardedBody<S>, st: &mut Partial) -> Result<(), RequestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: StdError,
{
    let mut events = Events::default();
    let mut drained = 0usize;
    while let Some(piece) = body.next().await {
        let now = Instant::now();
        let piece = match piece {
            Ok(piece) => piece,
            // Whatever fails after `[DONE]` does not change the result.
            Err(_) if st.done => break,
            Err(e) => return Err(classify(e)),
        };
        let mut failed = None;
        let go_on = events
            .feed(&piece, |data| {
                if st.done {
                    // Drained after `[DONE]` so the connection goes back to the pool; what comes
                    // now does not change the result, and is not read for long.
                    drained += data.len() + 1;
                    return drained < DRAIN_AFTER_DONE;
                }
                match on_event(st, data, now) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .map_err(|NotUtf8| RequestError::MalformedEvent {
                message: "invalid UTF-8 in the event stream".into(),
            });
        if let Some(e) = failed {
            return Err(e);
        }
        match go_on {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) if st.done => break,
            Err(e) => return Err(e),
        }
    }
    if !st.done && !st.finish_reason {
        return Err(RequestError::StreamCut {
            message: "the stream ended before [DONE] and before any finish_reason".into(),
        });
    }
    Ok(())
}

/// One event's data, before `[DONE]`.
fn on_event(st: &mut Partial, data: &str, now: Instant) -> Result<(), RequestError> {
    if data == "[DONE]" {
        st.done = true;
        st.end = Some(now);
        return Ok(());
    }
    let chunk = Chunk::parse(data).map_err(|e| RequestError::MalformedEvent {
        message: format!("{e} in event {:?}", excerpt(data, EVENT_EXCERPT)),
    })?;
    if chunk.error.is_some() {
        return Err(RequestError::StreamCut {
            message: format!("server sent an error event: {}", excerpt(data, EVENT_EXCERPT)),
        });
    }
    st.on_chunk(&chunk, now);
    Ok(())
}

fn classify<E: StdError>(e: BodyError<E>) -> RequestError {
    match e {
        BodyError::Stall(stall) => {
            RequestError::Timeout { message: format!("no data for the stall timeout of {}", secs(stall)) }
        }
        BodyError::Http(e) => RequestError::StreamCut { message: chain(&e) },
        e @ (BodyError::EventTooLarge(_) | BodyError::BodyTooLarge(_)) => {
            RequestError::MalformedEvent { message: e.to_string() }
        }
        BodyError::Utf8 => {
            RequestError::MalformedEvent { message: "invalid UTF-8 in the event stream".into() }
        }
    }
}

/// A header's value as text, if it is text.
fn header_text(v: Option<&HeaderValue>) -> Option<String> {
    v.and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// `text/event-stream`, with or without parameters, in any case.
fn is_event_stream(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The first [`BODY_EXCERPT`] bytes of an error body (as text), whatever else happens.
async fn read_excerpt<S, E>(body: &mut GuardedBody<S>) -> String
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let mut buf = Vec::new();
    while buf.len() < BODY_EXCERPT {
        match body.next().await {
            Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
            Some(Err(_)) | None => break,
        }
    }
    excerpt(&String::from_utf8_lossy(&buf), BODY_EXCERPT).to_string()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn excerpt(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An error and its sources, `: `-separated (reqwest hides the cause in the sources).
/// Why no response headers arrived.
#[derive(Debug)]
enum SendError {
    HeadersTimeout,
    Http(reqwest::Error),
}

impl SendError {
    fn is_timeout(&self) -> bool {
        matches!(self, SendError::HeadersTimeout)
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::HeadersTimeout => f.write_str("no response headers within the stall timeout"),
            SendError::Http(e) => e.fmt(f),
        }
    }
}

impl StdError for SendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SendError::HeadersTimeout => None,
            SendError::Http(e) => e.source(),
        }
    }
}

/// The connection was closed or reset before any part of the response arrived (hyper's
/// "incomplete message", or ECONNRESET / EPIPE while sending): the request met a connection the
/// server had already given up. A refused connection is not stale: it is not retried.
fn is_stale_connection(e: &SendError) -> bool {
    use std::io::ErrorKind;
    let mut source = e.source();
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_incomplete_message()) {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            );
        }
        source = s.source();
    }
    false
}

fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// `fut`'s output, or `None` once `stop` is cancelled (`fut` first when both are ready).
///
/// Unlike `select!` with `stop.cancelled()`, which takes the token's waiter lock on every poll
/// (every chunk), this registers with the token once per request, and again only if the waker
/// changes; other polls cost an atomic load.
async fn until_stopped<F: std::future::Future>(
    fut: F,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cancelled = std::pin::pin!(stop.cancelled());
    let mut registered: Option<std::task::Waker> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(out));
        }
        if stop.is_cancelled() {
            return std::task::Poll::Ready(None);
        }
        if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            if cancelled.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
            registered = Some(cx.waker().clone());
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_at_char_boundaries() {
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(excerpt("abcdef", 3), "abc");
        assert_eq!(excerpt("aé", 2), "a");
        assert_eq!(excerpt("", 0), "");
    }

    fn body_of(api: Api, prompt: Prompt, cfg: impl FnOnce(&mut LoadgenConfig)) -> String {
        body_with(api, prompt, Default::default(), cfg)
    }

    fn body_with(
        api: Api,
        prompt: Prompt,
        meta: workload::RequestMeta,
        cfg: impl FnOnce(&mut LoadgenConfig),
    ) -> String {
        let mut c = LoadgenConfig::new("http://127.0.0.1:1");
        c.api = api;
        cfg(&mut c);
        let client = Client {
            http: reqwest::Client::new(),
            completions_url: String::new(),
            chat_url: String::new(),
            model: "m".into(),
            api: c.api,
            auth: None,
            request_timeout: c.request_timeout,
            stall_timeout: c.stall_timeout,
            caps: Caps::of(&c),
            ignore_eos: c.ignore_eos,
            send_min_tokens: c.send_min_tokens,
            continuous_usage: c.continuous_usage,
            stop: None,
        };
        let req =
            Request { id: 0, prompt, prompt_len: 3, max_tokens: 4, send_at: None, depends_on: None, meta };
        String::from_utf8(client.body(&req)).unwrap()
    }

    #[test]
    fn bodies() {
        insta::assert_snapshot!(body_of(Api::Auto, Prompt::Tokens(vec![1, 2, 3]), |_| ()), @r#"{"model":"m","prompt":[1,2,3],"max_tokens":4,"min_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#);
        insta::assert_snapshot!(body_of(Api::Completions, Prompt::Text("a\"b".into()), |c| {
            c.ignore_eos = false;
            c.send_min_tokens = false;
            c.continuous_usage = true;
        }), @r#"{"model":"m","prompt":"a\"b","max_tokens":4,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#);
        insta::assert_snapshot!(body_of(Api::Chat, Prompt::Text("hi".into()), |_| ()), @r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"min_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#);
        insta::assert_snapshot!(body_of(Api::Auto, Prompt::Chat(vec![ChatMessage { role: "system".into(), content: "s".into() }, ChatMessage { role: "user".into(), content: "u".into() }]), |_| ()), @r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"max_tokens":4,"min_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#);
        // A request of a session names it in OpenAI's `user` field.
        let meta = workload::RequestMeta { session: Some(7), turn: Some(2), ..Default::default() };
        insta::assert_snapshot!(body_with(Api::Auto, Prompt::Tokens(vec![1]), meta, |_| ()), @r#"{"model":"m","prompt":[1],"max_tokens":4,"min_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true},"user":"session-7"}"#);
    }

    #[test]
    fn endpoints() {
        let tokens = Prompt::Tokens(vec![1]);
        let text = Prompt::Text("t".into());
        let chat = Prompt::Chat(vec![]);
        assert_eq!(Client::endpoint(Api::Auto, &tokens), Ok(Endpoint::Completions));
        assert_eq!(Client::endpoint(Api::Auto, &text), Ok(Endpoint::Completions));
        assert_eq!(Client::endpoint(Api::Auto, &chat), Ok(Endpoint::Chat));
        assert_eq!(Client::endpoint(Api::Chat, &text), Ok(Endpoint::Chat));
        assert!(Client::endpoint(Api::Chat, &tokens).is_err());
        assert!(Client::endpoint(Api::Completions, &chat).is_err());
    }
}
