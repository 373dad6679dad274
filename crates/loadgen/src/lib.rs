//! How to send it: the bundled load generator.
//!
//! An OpenAI-compatible streaming client (`/v1/completions` with token-ID or text prompts,
//! `/v1/chat/completions`), an open- or closed-loop driver that follows a [`workload::Plan`], and
//! the result directory writer ([`ResultWriter`]) that the lab reuses.
//!
//! Entry point: [`run`]. It sends every request of the plan, writes one line per finished request
//! to `requests.jsonl` as it finishes (so a killed run keeps what finished), then `requests.csv`
//! and `summary.json`, and returns a [`RunOutcome`].
//!
//! The parsers of what a server sends (the SSE body and the OpenAI chunks) are reachable alone,
//! without a network, in [`parse`], for fuzz targets and property tests.
//!
//! Invariants:
//! - Every request sent ends in exactly one record, completed or failed with a classified
//!   [`stats::RequestError`]: `sent == completed + failed`. Requests the duration limit kept from
//!   being sent are counted in [`RunOutcome::not_sent`] and have no record.
//! - Open loop: each request's intended send time is the schedule's; the client's lag (actual
//!   minus intended) is in every record. A request that waited for a slot under
//!   `max_concurrency` records when it got one (`queued_until`): the wait is queue wait, and the
//!   lag counts from then.
//! - All record times are seconds since the `origin` the caller passes (the run clock).
//!
//! Failure classes: `connect` (no response: refused, reset before headers), `http_status` (a
//! non-2xx answer, with the first 512 bytes of its body, prefixed by `[Retry-After: ...]` when
//! the server sent one; never retried, so that overload shows), `stream_cut` (the body broke off, ended
//! before `[DONE]`/`finish_reason`, or carried an `{"error": ...}` event), `malformed_event` (an
//! event that is not UTF-8, SSE or the expected JSON; an event over
//! [`LoadgenConfig::max_event_bytes`] or a body over [`LoadgenConfig::max_body_bytes`], cut off
//! without being buffered whole; a 200 answer that is not `text/event-stream`), `timeout` (the total request timeout, or
//! the stall timeout while waiting for headers or between two reads).
//!
//! Output tokens come from the final `usage` chunk ([`stats::TokenSource::Usage`]); a server that
//! sends none gets its content chunks counted ([`stats::TokenSource::Chunks`]). A chunk carries
//! one token unless a cumulative usage in every chunk (continuous usage) says it carries more.
//!
//! Multi-turn: a request with a dependency is released its think time after its parent ended,
//! also when the parent failed (its prompt is fixed by the plan, and the engine's answer to the
//! next turn is still worth measuring); it is not sent when its parent was not.

mod chunk;
mod client;
mod config;
mod driver;
pub mod nvtx;
pub mod parse;
mod progress;
mod results;
mod sse;

use std::time::Instant;

pub use crate::config::{
    Api, Connections, LoadgenConfig, MeasuredStartHook, SummaryOutput, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_EVENT_BYTES, MAX_WARM_CONNECTIONS,
};
pub use crate::driver::{ConnectionWarmup, RunOutcome};
pub use crate::results::{timestamp, ResultWriter, ResultsError};

/// Why a run could not be carried out. Failures of single requests are not errors: they are
/// classified in their records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL is not an `http://host:port[/v1]` URL.
    #[error("invalid base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    /// No model was configured and `GET /v1/models` did not name one.
    #[error("no model configured and none discovered from {url}: {reason}")]
    ModelDiscovery { url: String, reason: String },
    /// The plan cannot be sent as configured (for example token IDs to the chat API).
    #[error("request {id}: {reason}")]
    Plan { id: u64, reason: String },
    /// The plan has no requests.
    #[error("the plan has no requests")]
    EmptyPlan,
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A worker or writer thread could not be started, or ended abnormally.
    #[error("load generator threads: {0}")]
    Threads(#[source] std::io::Error),
    /// Writing a result file failed; the records written before stay in the directory.
    #[error(transparent)]
    Results(#[from] ResultsError),
}

/// Sends `plan` to the engine at `cfg.base_url` and records every request into `sink`.
///
/// Times in records are seconds since `origin` (the run clock shared with the samplers);
/// `origin` must not be later than the call. The schedule (`Request::send_at`, `Limits::duration`)
/// starts when the model is known, the bodies are prepared and the warm-up phase has opened the
/// connections ([`LoadgenConfig::connections`]). Can be awaited on any tokio runtime: the
/// requests are sent by [`LoadgenConfig::threads`] worker threads, each with its own
/// current-thread runtime and connections (request futures and connection tasks on one thread),
/// and the records are written by a writer thread; the calling task only waits for them.
///
/// The plan's warm-up requests (`Limits::warmup`) go first, on the schedule's clock; the measured
/// ones wait until every warm-up request has ended (and [`LoadgenConfig::on_measured_start`] has
/// returned), and keep their planned times from then on, later by however long the warm-up ran
/// past the first one's planned time (the duration limit moves with them). A measured turn of a
/// session whose parent was a warm-up request is due its think time after its parent, or at the
/// measured phase's start if that is later.
///
/// Writes `requests.jsonl` (as requests finish), `requests.csv` and `summary.json` (at the end,
/// unless [`LoadgenConfig::summary_file`] leaves it to the caller) into `sink`'s directory. Returns an error only for a run that cannot be carried out or a write
/// error; check [`RunOutcome::is_success`] for the failed-fraction verdict.
pub async fn run(
    plan: &workload::Plan,
    cfg: &LoadgenConfig,
    sink: &mut ResultWriter,
    origin: Instant,
) -> Result<RunOutcome, Error> {
    driver::run(plan, cfg, sink, origin).await
}
