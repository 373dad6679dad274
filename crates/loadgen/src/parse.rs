//! The parsers of what a server sends, reachable without a network: for fuzz targets and
//! property tests. They run the very code the client runs on a live response.

use bytes::Bytes;
use futures_util::FutureExt;
use stats::{RequestError, TokenSource};

use crate::chunk::Chunk;
use crate::client::{follow, Caps, GuardedBody, Partial};
use crate::config::LoadgenConfig;

/// What the client makes of one streamed response body.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamReport {
    /// Output tokens, and where the count came from (as in a request record).
    pub output_tokens: u32,
    pub token_source: TokenSource,
    /// Content chunks seen (token arrivals).
    pub content_chunks: usize,
    pub prompt_tokens: Option<u32>,
    pub cached_tokens: Option<u32>,
    /// `[DONE]` was seen.
    pub done: bool,
    /// `None`: the request would be completed.
    pub error: Option<RequestError>,
}

/// Parses a `text/event-stream` response body that arrives in `reads` (one item per socket
/// read), with the caps of `cfg` (`max_event_bytes`, `max_body_bytes`), as the client does for
/// a 200 answer. Never panics; how the body is split into reads does not change the result,
/// except which cap message a body over a cap gets.
pub fn sse_stream(reads: &[&[u8]], cfg: &LoadgenConfig) -> StreamReport {
    let items: Vec<Result<Bytes, std::convert::Infallible>> =
        reads.iter().map(|r| Ok(Bytes::copy_from_slice(r))).collect();
    let body = GuardedBody::new(futures_util::stream::iter(items), Caps::of(cfg), None);
    let mut st = Partial::new(0, tokio::time::Instant::now());
    // The body is in memory and there is no timer: the future completes on its first poll.
    let error = match follow(body, &mut st).now_or_never() {
        Some(r) => r.err(),
        None => Some(RequestError::StreamCut { message: "the in-memory body did not complete".into() }),
    };
    let (output_tokens, token_source) = st.output_tokens();
    StreamReport {
        output_tokens,
        token_source,
        content_chunks: st.chunks.len(),
        prompt_tokens: st.prompt_tokens,
        cached_tokens: st.cached_tokens,
        done: st.done,
        error,
    }
}

/// The parts of one OpenAI streaming chunk (the `data` of one event) the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkReport {
    /// `choices[0]` is a token arrival: generated text, or an empty completion text that does
    /// not carry the `finish_reason` (a role-only chat delta is not one).
    pub has_content: bool,
    /// `choices[0].finish_reason` is set.
    pub is_finished: bool,
    pub completion_tokens: Option<u32>,
    pub prompt_tokens: Option<u32>,
    pub cached_tokens: Option<u32>,
    /// An `{"error": ...}` event.
    pub is_error: bool,
}

/// Parses one completion or chat chunk as the client does; the error is serde_json's message
/// (with its line and column).
pub fn chunk(data: &str) -> Result<ChunkReport, String> {
    Chunk::parse(data).map(|c| report(&c)).map_err(|e| e.to_string())
}

/// [`chunk`] by serde's derive alone, without the scanner that answers first for the usual
/// shapes: the same result on every input, at serde's speed (the baseline of the benchmark).
pub fn chunk_serde(data: &str) -> Result<ChunkReport, String> {
    Chunk::parse_serde(data).map(|c| report(&c)).map_err(|e| e.to_string())
}

fn report(c: &Chunk) -> ChunkReport {
    let usage = c.usage.as_ref();
    ChunkReport {
        has_content: c.has_content(),
        is_finished: c.is_finished(),
        completion_tokens: usage.and_then(|u| u.completion_tokens),
        prompt_tokens: usage.and_then(|u| u.prompt_tokens),
        cached_tokens: usage.and_then(|u| u.prompt_tokens_details.as_ref()).and_then(|d| d.cached_tokens),
        is_error: c.error.is_some(),
    }
}
