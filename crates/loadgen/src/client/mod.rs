//! One streaming request, from body to [`RequestRecord`](stats::RequestRecord).
//!
//! The hot path: per-request state lives in the request's future, chunk times go into a `Vec`
//! sized for `max_tokens`, chunk JSON is parsed without copying text, and nothing is sent
//! anywhere per token. The response body is cut at SSE event boundaries before the event parser
//! ([`crate::sse`]) sees it, and the usual event is parsed in place, as a slice of the read.
//!
//! One job per module:
//! - here: the [`Client`] of a run (its HTTP client, model and settings), connections opened in
//!   the warm-up, the model discovered by `GET /v1/models`;
//! - `request`: what is sent ([`Endpoint`](request::Endpoint), the JSON body, [`Prepared`] requests, prompt block
//!   hashes), built before the clock;
//! - `h1`: the HTTP/1.1 client of plain `http://` roots (chosen once per run; anything else,
//!   such as user info in the URL, goes through reqwest): the request written and its response
//!   read by the request's own future, on the worker's kept-alive connections; `chunked`: its
//!   chunked-body decoder;
//! - `exchange`: one request's HTTP exchange ([`Client::send`]), its timeouts, the one retry on a
//!   stale connection, the stop token;
//! - `wire`: when the request went on the wire (the body that stamps the time it is taken);
//! - `guarded`: the response body guarded ([`GuardedBody`]: stall timer, size caps, UTF-8, line
//!   ends) and cut at line boundaries for the event parser;
//! - `stream`: the event stream followed to its end ([`follow`]), each event parsed as a chunk;
//! - `record`: what is known of a response so far ([`Partial`]: the chunk records, usage), and
//!   the [`RequestRecord`](stats::RequestRecord) it ends in;
//! - `error`: failures classified into [`stats::RequestError`], with their messages.

mod chunked;
mod error;
mod exchange;
mod guarded;
mod h1;
mod record;
mod request;
mod stream;
mod wire;

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::Deserialize;

use crate::config::{Api, LoadgenConfig};
use crate::Error;

use self::error::{chain, excerpt, secs, BODY_EXCERPT};
pub(crate) use self::exchange::Timing;
pub(crate) use self::guarded::{Caps, GuardedBody};
use self::h1::H1;
pub(crate) use self::record::Partial;
use self::request::Endpoint;
pub(crate) use self::request::Prepared;
pub(crate) use self::stream::follow;
use self::wire::Wire;

/// Longest `GET /v1/models` answer read, in bytes.
const MAX_MODELS_BODY: usize = 1 << 20;

/// The part of the configuration a request needs, with the model resolved. Each worker thread
/// has its own (see [`Client::for_worker`]), so that its connections live on its runtime.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// The streaming requests' client, when the root is a plain `http://host:port`.
    h1: Option<H1>,
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
            h1: H1::new(root),
            completions_url: format!("{root}{}", Endpoint::Completions.path()),
            chat_url: format!("{root}{}", Endpoint::Chat.path()),
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
        Ok(Client { http: http_client()?, h1: self.h1.as_ref().map(H1::fresh_pool), ..self.clone() })
    }

    /// Opens up to `n` connections (as many concurrent `GET /v1/models`, each read to its end)
    /// and leaves them idle in the pool; returns how many answered. Any HTTP answer counts: the
    /// connection is open.
    pub(crate) async fn open_connections(&self, n: usize) -> u64 {
        let url = self.completions_url.replace("/v1/completions", "/v1/models");
        let h1_request = self
            .h1
            .as_ref()
            .map(|h1| h1.render("GET", "/v1/models", self.auth.as_ref().map(HeaderValue::as_bytes), None));
        let (url, h1_request) = (&url, &h1_request);
        let mut answers: futures_util::stream::FuturesUnordered<_> = (0..n)
            .map(|_| async move {
                let answer = async {
                    // Read to the end (bounded) so that the connection goes back to the pool.
                    match (&self.h1, h1_request) {
                        (Some(h1), Some(request)) => {
                            drain_bounded(h1.send(request, true, &Wire::default()).await.ok()?.body).await
                        }
                        _ => {
                            let mut req = self.http.get(url.as_str());
                            if let Some(auth) = &self.auth {
                                req = req.header(AUTHORIZATION, auth.clone());
                            }
                            drain_bounded(req.send().await.ok()?.bytes_stream()).await
                        }
                    }
                    Some(())
                };
                tokio::time::timeout(self.stall_timeout, answer).await.ok().flatten()
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

/// Reads a body to its end, or to [`MAX_MODELS_BODY`] bytes, or to its first error.
async fn drain_bounded<E>(mut body: impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin) {
    let mut read = 0usize;
    while let Some(Ok(piece)) = body.next().await {
        read += piece.len();
        if read > MAX_MODELS_BODY {
            break;
        }
    }
}
