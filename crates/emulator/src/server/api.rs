//! The OpenAI surface: the routes, the request bodies read under the limits and parsed, the
//! OpenAI-style errors, and `generate`, which queues a request and answers it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::check_lengths;
use crate::metrics::{self, RenderInput, TierIo};
use crate::sched::NewRequest;

use super::offload_io::load_offload;
use super::respond::{stream_response, whole_response, Out};
use super::{lock, Progress, Shared};

pub(crate) fn router(sh: Arc<Shared>) -> Router {
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
pub(crate) fn error_response(status: StatusCode, message: &str, param: Option<&str>) -> Response {
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
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
    /// vLLM's: a cumulative `usage` in every chunk.
    #[serde(default)]
    pub(crate) continuous_usage_stats: bool,
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
pub(crate) enum Kind {
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
