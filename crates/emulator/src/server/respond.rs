//! The answers to a request: streamed as server-sent events as its tokens come, or whole at its
//! end.

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::api::{error_response, Kind, StreamOptions};
use super::Progress;

/// The generated text cycles through these characters, one per token.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

pub(crate) struct Out {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) created: u64,
    pub(crate) kind: Kind,
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

pub(crate) fn stream_response(out: Out, rx: watch::Receiver<Progress>, opts: StreamOptions) -> Response {
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

pub(crate) async fn whole_response(out: Out, mut rx: watch::Receiver<Progress>) -> Response {
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
