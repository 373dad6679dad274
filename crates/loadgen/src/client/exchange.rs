//! One request's HTTP exchange: sent, its response headers awaited under the stall timeout,
//! once more on a fresh connection when it met a stale one, its status and content type checked,
//! its stream followed; the total timeout and the stop token around it all.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use stats::{RequestError, RequestRecord};
use tokio::time::Instant;

use super::error::{chain, excerpt, is_stale_connection, read_excerpt, secs, SendError, EVENT_EXCERPT};
use super::guarded::GuardedBody;
use super::h1::H1;
use super::record::Partial;
use super::request::{Endpoint, Prepared};
use super::stream::follow;
use super::wire::{StampedBody, Wire};
use super::Client;

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
    /// Sends `req` and follows its stream to the end. Never fails: a failure is classified in
    /// the record's `error`.
    pub(crate) async fn send(&self, req: &Prepared, when: Timing) -> RequestRecord {
        let mut st = Partial::new(req.max_tokens, when.origin);
        let started = Instant::now();
        let exchange = tokio::time::timeout(self.request_timeout, self.exchange(req, &mut st));
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

    async fn exchange(&self, req: &Prepared, st: &mut Partial) -> Result<(), RequestError> {
        let url = match req.endpoint {
            Endpoint::Completions => &self.completions_url,
            Endpoint::Chat => &self.chat_url,
        };
        match (&self.h1, req.h1_request()) {
            (Some(h1), Some(request)) => self.exchange_h1(h1, url, request, st).await,
            _ => self.exchange_reqwest(url, req, st).await,
        }
    }

    /// The exchange on the worker's own HTTP/1.1 connections: `request` is the whole request,
    /// rendered before the clock.
    async fn exchange_h1(
        &self,
        h1: &H1,
        url: &str,
        request: &[u8],
        st: &mut Partial,
    ) -> Result<(), RequestError> {
        // A server may close a kept-alive connection after a response while still advertising
        // keep-alive (llama.cpp's server does; vLLM closes idle ones after 5 s). A request that
        // went out on such a connection fails before any response byte; it is sent once more on
        // a fresh connection, as browsers do. Any other failure is final.
        let mut fresh = false;
        let resp = loop {
            let wire = Wire::default();
            st.wire = Some(Arc::clone(&wire));
            match tokio::time::timeout(self.stall_timeout, h1.send(request, fresh, &wire)).await {
                Err(_) => return Err(self.headers_timeout()),
                Ok(Err(e)) if e.stale && !fresh => fresh = true,
                Ok(Err(e)) => {
                    return Err(RequestError::Connect {
                        message: format!("error sending request for url ({url}): {}", e.cause),
                    })
                }
                Ok(Ok(resp)) => break resp,
            }
        };
        st.first_byte = Some(st.secs(Instant::now()));
        self.answered(resp.status, resp.retry_after, resp.content_type, resp.body, st).await
    }

    /// The exchange through reqwest.
    async fn exchange_reqwest(
        &self,
        url: &str,
        req: &Prepared,
        st: &mut Partial,
    ) -> Result<(), RequestError> {
        let request = || {
            let (body, wire) = StampedBody::body(req.body());
            let mut builder = self.http.post(url).header(CONTENT_TYPE, "application/json").body(body);
            if let Some(auth) = &self.auth {
                builder = builder.header(AUTHORIZATION, auth.clone());
            }
            (builder, wire)
        };
        // The one retry on a stale connection, as in [`Client::exchange_h1`].
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
            Err(e) if e.is_timeout() => return Err(self.headers_timeout()),
            Err(e) => return Err(RequestError::Connect { message: chain(&e) }),
            Ok(resp) => resp,
        };
        st.first_byte = Some(st.secs(Instant::now()));
        let status = resp.status().as_u16();
        let retry_after = header_text(resp.headers().get(RETRY_AFTER));
        let content_type = header_text(resp.headers().get(CONTENT_TYPE));
        self.answered(status, retry_after, content_type, Box::pin(resp.bytes_stream()), st).await
    }

    fn headers_timeout(&self) -> RequestError {
        RequestError::Timeout {
            message: format!("no response headers within the stall timeout of {}", secs(self.stall_timeout)),
        }
    }

    /// The response after its head: its status and content type checked, its stream followed.
    async fn answered<S, E>(
        &self,
        status: u16,
        retry_after: Option<String>,
        content_type: Option<String>,
        body: S,
        st: &mut Partial,
    ) -> Result<(), RequestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::error::Error,
    {
        let mut body = GuardedBody::new(body, self.caps, Some(self.stall_timeout));
        if !(200..300).contains(&status) {
            // No retry, whatever Retry-After says: a benchmark must not hide overload.
            let text = read_excerpt(&mut body).await;
            let body = match retry_after {
                Some(after) => format!("[Retry-After: {}] {text}", excerpt(&after, 64)),
                None => text,
            };
            return Err(RequestError::HttpStatus { status, body });
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

/// A header's value as text, if it is text.
fn header_text(v: Option<&HeaderValue>) -> Option<String> {
    v.and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// `text/event-stream`, with or without parameters, in any case.
fn is_event_stream(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
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
