//! What to send: synthetic generators, multi-turn sessions, trace readers and arrival schedules.
//!
//! Pure: no I/O, no clocks. Trace readers take the file's text (and its name, for errors); the
//! caller reads the file. The same seed and configuration give byte-identical [`Plan`]s.
//!
//! The central type is [`Plan`]: an ordered list of [`Request`]s, each with its prompt, its output
//! length and *when* it may be sent (an intended offset from the start of the run, or "after that
//! other request finished, plus think time"), plus the [`Limits`] the driver must respect.

//!
//! Entry point: describe the workload with a [`WorkloadSpec`] and its timing with an
//! [`ArrivalSpec`] (both serde, e.g. from an experiment TOML), parse the trace if the source is
//! one ([`TraceSpec::parse`] / [`Trace::parse`]), then call [`build_plan`].

mod build;
mod spec;
mod trace;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::build::build_plan;
pub use crate::spec::{
    ArrivalSpec, LengthDist, PromptFormat, RagSpec, RandomSpec, Schedule, SecondsDist, SessionsSpec,
    SharedPrefixSpec, Source, TraceSpec, Vocab, WorkloadSpec,
};
pub use crate::trace::{ParseOptions, Trace, TraceEntry, TraceFormat};

/// Why a workload could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A malformed trace line: `trace.jsonl:17: hash_ids: expected an array` (line 1 and
    /// `(top level)`: the file as a whole).
    #[error(transparent)]
    Trace(stats::Located),
    /// Parameters that cannot be honoured; the message names the field.
    #[error("invalid workload: {0}")]
    Invalid(String),
    /// The source is a trace but [`build_plan`] got no parsed trace.
    #[error("the workload source is a trace: parse it and pass it to build_plan")]
    TraceMissing,
}

/// A whole workload, ready for a driver (the load generator, or the emulator in virtual time).
///
/// Invariant: `requests[i].id == i as u64`; a [`Dependency`] always points to an earlier index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub requests: Vec<Request>,
    pub mode: Mode,
    pub limits: Limits,
}

/// How requests are released.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// Open loop: each request goes out at its [`Request::send_at`], whatever the server does
    /// (no coordinated omission). `max_concurrency` in [`Limits`] may still cap in-flight requests.
    Open,
    /// Closed loop: `concurrency` workers, each sends its next request when the previous finished.
    Closed { concurrency: u32 },
}

/// Caps that apply to any mode.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// At most this many requests in flight (None: unbounded in open loop).
    pub max_concurrency: Option<u32>,
    /// Stop sending new requests after this long (requests in flight still finish).
    pub duration: Option<Duration>,
    /// The first `warmup` requests are sent and recorded but flagged, and excluded from statistics.
    pub warmup: u32,
}

/// One request to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub prompt: Prompt,
    /// Exact number of prompt tokens (token-ID prompts), or the emulator's 1-byte-per-token count.
    pub prompt_len: u32,
    /// Tokens to generate (`max_tokens`; with `ignore_eos` the server produces exactly this many).
    pub max_tokens: u32,
    /// Intended send time as an offset from the run's start (open loop). `None` in closed loop
    /// and for requests that depend on another.
    pub send_at: Option<Duration>,
    /// For multi-turn sessions: sent `think_time` after request `parent` finished.
    pub depends_on: Option<Dependency>,
    /// Where the request came from (session, turn, prefix group, trace line).
    pub meta: RequestMeta,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    /// Index into [`Plan::requests`], always smaller than this request's index.
    pub parent: u64,
    pub think_time: Duration,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RequestMeta {
    pub session: Option<u64>,
    pub turn: Option<u32>,
    pub group: Option<u64>,
    /// 1-based line of the trace this request came from.
    pub trace_line: Option<u64>,
}

/// The prompt as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Prompt {
    /// Token IDs for `/v1/completions` (`"prompt": [1, 2, 3]`): exact lengths, no tokenizer.
    Tokens(Vec<u32>),
    /// Plain text for `/v1/completions`.
    Text(String),
    /// Messages for `/v1/chat/completions`.
    Chat(Vec<ChatMessage>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}
