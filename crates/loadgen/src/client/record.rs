//! What is known about one response so far ([`Partial`]): its times, its chunk records
//! (arrival time, tokens), its usage; and the [`RequestRecord`] it ends in.

use stats::{RequestError, RequestRecord, TokenSource, RECORD_VERSION};
use tokio::time::Instant;

use super::exchange::Timing;
use super::request::Prepared;
use super::wire::Wire;
use crate::chunk::Chunk;

/// Chunk vectors are preallocated to `max_tokens`, up to this many entries.
const MAX_PREALLOC: usize = 1 << 16;

/// What is known about one response so far. Lives in the request's future.
pub(crate) struct Partial {
    origin: Instant,
    pub(crate) first_byte: Option<f64>,
    first_token: Option<f64>,
    pub(crate) end: Option<Instant>,
    pub(crate) chunks: Vec<(f64, u32)>,
    /// Cumulative `completion_tokens` of the last chunk that had usage.
    last_completion: Option<u32>,
    pub(crate) prompt_tokens: Option<u32>,
    pub(crate) cached_tokens: Option<u32>,
    pub(crate) done: bool,
    pub(crate) finish_reason: bool,
    /// When the request's body was taken to be written.
    pub(crate) wire: Option<Wire>,
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

    pub(crate) fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// A content chunk counts `k` tokens: the growth of a cumulative usage when the server sends
    /// one in every chunk (continuous usage; for the first content chunk, its whole count),
    /// otherwise 1. Never 0, so every content chunk is a token arrival.
    pub(crate) fn on_chunk(&mut self, chunk: &Chunk, now: Instant) {
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
    pub(crate) fn finish(
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
