//! What it means: per-request records, summaries, percentiles, goodput.
//!
//! Pure but for one function: no I/O except [`write_atomic`], the one way every result file but
//! the append-only `requests.jsonl` is written (by the load generator, the lab and the report).
//! [`RequestRecord`] is the `requests.jsonl` line format and [`Summary`] the `summary.json`
//! format; both are versioned file-format boundaries. Summary field names follow `vllm bench
//! serve` so existing notebooks keep working.
//!
//! Entry points: [`summarize`] (records → [`Summary`]), [`Slo::parse`] (the `--goodput` syntax),
//! [`render_table`] (terminal table), [`csv_header`] / [`csv_row`] (the `requests.csv` table) and
//! [`percentile`] (numpy's default linear interpolation).

mod csv_row;
pub mod jsonl;
mod located;
mod slo;
mod summary;
mod table;
mod write;

use serde::{Deserialize, Serialize};

pub use crate::csv_row::{csv_header, csv_row};
pub use crate::jsonl::{
    parse_json, parse_json_lines, parse_json_lines_skipping, shown_field, split_torn_tail, JsonLines,
    JsonlError, TextError, TornLine,
};
pub use crate::located::{line_col, parse_toml, Located};
pub use crate::slo::{Slo, SloError};
pub use crate::summary::{
    itl_per_token_values, itl_values, mean, percentile, std_dev, summarize, OutputTokenSource, Summary,
    SummaryConfig,
};
pub use crate::table::render_table;
pub use crate::write::write_atomic;

/// Version of the `requests.jsonl` line format.
pub const RECORD_VERSION: u32 = 1;
/// Version of the `summary.json` format.
pub const SUMMARY_VERSION: u32 = 1;

/// One finished request: one line of `requests.jsonl`.
///
/// All times are seconds on the run clock (0 = the run's start, see `RunClock` in the caller);
/// samplers use the same clock, so records and time series line up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub v: u32,
    pub id: u64,
    /// Excluded from statistics (warm-up).
    #[serde(default)]
    pub warmup: bool,
    /// When the schedule wanted it sent (open loop); equals `sent` in closed loop.
    pub intended: f64,
    /// When the request was actually written to the socket.
    pub sent: f64,
    /// When a request that was due while `max_concurrency` requests were in flight got its
    /// slot (a request in flight ended); `None` when it did not wait for one. The wait,
    /// `queued_until - intended`, is the run's own cap at work, not client lag
    /// ([`RequestRecord::queue_wait`], [`RequestRecord::client_lag`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_until: Option<f64>,
    /// First response byte (headers).
    pub first_byte: Option<f64>,
    /// First content token (a role-only chat chunk is not a token).
    pub first_token: Option<f64>,
    /// When the stream ended (or the failure was detected).
    pub end: f64,
    /// Content chunks: (time, tokens in that chunk).
    #[serde(default)]
    pub chunks: Vec<(f64, u32)>,
    pub prompt_tokens: Option<u32>,
    pub output_tokens: u32,
    pub cached_tokens: Option<u32>,
    /// Where `output_tokens` came from.
    pub token_source: TokenSource,
    /// `None` for a completed request.
    pub error: Option<RequestError>,
    /// Session / turn / group of the workload request, copied through for analysis.
    #[serde(default)]
    pub session: Option<u64>,
    #[serde(default)]
    pub turn: Option<u32>,
    /// The prompt's chained block hashes, 16 tokens a block (full blocks only; kvcache's default
    /// hash over the token ids, text as one token per byte), so a run can be replayed by the
    /// cache simulator at other capacities. Absent where the writer did not know the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_blocks: Option<Vec<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The server's `usage.completion_tokens`.
    Usage,
    /// Counted from content chunks (the server sent no usage).
    Chunks,
}

impl TokenSource {
    /// The serialized name: `"usage"` or `"chunks"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Usage => "usage",
            TokenSource::Chunks => "chunks",
        }
    }
}

/// Why a request failed. Every request sent ends completed or with exactly one of these.
/// `Interrupted`: the run was stopped (Ctrl-C, SIGTERM) while the request was in flight; its
/// chunks so far are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum RequestError {
    Connect { message: String },
    HttpStatus { status: u16, body: String },
    StreamCut { message: String },
    MalformedEvent { message: String },
    Timeout { message: String },
    Interrupted { message: String },
}

impl RequestError {
    /// The failure class, as serialized in the `class` tag (`"http_status"`, `"timeout"`, ...).
    /// Keys of [`Summary::failed_by_class`].
    pub fn class(&self) -> &'static str {
        match self {
            RequestError::Connect { .. } => "connect",
            RequestError::HttpStatus { .. } => "http_status",
            RequestError::StreamCut { .. } => "stream_cut",
            RequestError::MalformedEvent { .. } => "malformed_event",
            RequestError::Timeout { .. } => "timeout",
            RequestError::Interrupted { .. } => "interrupted",
        }
    }

    /// A one-line human-readable detail (`"503: overloaded"` for an HTTP status).
    pub fn detail(&self) -> String {
        match self {
            RequestError::HttpStatus { status, body } => format!("{status}: {body}"),
            RequestError::Connect { message }
            | RequestError::StreamCut { message }
            | RequestError::MalformedEvent { message }
            | RequestError::Timeout { message }
            | RequestError::Interrupted { message } => message.clone(),
        }
    }
}

impl RequestRecord {
    /// Time to first token in seconds: `first_token - sent`. A completed request that produced no
    /// token has no first token; its TTFT is its end-to-end latency.
    pub fn ttft(&self) -> f64 {
        self.first_token.unwrap_or(self.end) - self.sent
    }

    /// End-to-end latency in seconds: `end - sent`.
    pub fn e2el(&self) -> f64 {
        self.end - self.sent
    }

    /// Time per output token in seconds, `(e2el - ttft) / (output_tokens - 1)`, defined only for
    /// more than one output token (as `vllm bench serve`).
    pub fn tpot(&self) -> Option<f64> {
        (self.output_tokens > 1).then(|| (self.e2el() - self.ttft()) / f64::from(self.output_tokens - 1))
    }

    /// Client lag in seconds: how late the client sent the request, `sent - intended`, less
    /// the wait for a concurrency slot ([`RequestRecord::queue_wait`]): the client's own delay.
    pub fn client_lag(&self) -> f64 {
        self.sent - self.queued_until.map_or(self.intended, |q| q.max(self.intended))
    }

    /// Seconds the request waited for a concurrency slot (`max_concurrency`) after its
    /// intended send time; 0 when it did not wait.
    pub fn queue_wait(&self) -> f64 {
        self.queued_until.map_or(0.0, |q| (q - self.intended).max(0.0))
    }
}
