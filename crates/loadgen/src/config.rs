//! What the load generator needs to know besides the plan.

use std::fmt;
use std::time::Duration;

/// Default [`LoadgenConfig::max_event_bytes`]: 1 MiB (a 100k-token prompt echoed back is about
/// 600 KB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;
/// Default [`LoadgenConfig::max_body_bytes`]: 256 MiB (a 128k-token stream with usage in every
/// chunk is about 50 MB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 256 << 20;

/// Which OpenAI endpoint requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// Chosen per request from its prompt: token IDs and text go to `/v1/completions`, chat
    /// messages to `/v1/chat/completions`.
    #[default]
    Auto,
    /// `/v1/completions`; a chat prompt is refused before anything is sent.
    Completions,
    /// `/v1/chat/completions`; a text prompt becomes one user message, token IDs are refused.
    Chat,
}

/// Whether a run's connections are open before its clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connections {
    /// A warm-up phase before the run clock starts opens the connections the run will use
    /// (closed loop: its concurrency; open loop: `max_concurrency`, or without one the requests
    /// due in the schedule's first second, at most [`MAX_WARM_CONNECTIONS`]), so that connection
    /// set-up is not counted as the server's latency. Recorded in `summary.json`
    /// (`connection_warmup`).
    #[default]
    Warm,
    /// Every connection is opened by the request that needs it, and its set-up counts in that
    /// request's TTFT (the cold-client view).
    Cold,
}

/// Whether [`crate::run`] writes `summary.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SummaryOutput {
    /// At the end of the run, atomically.
    #[default]
    Write,
    /// Not at all: the caller writes it once, with what it adds
    /// ([`crate::RunOutcome::summary_json`] is what would have been written).
    Caller,
}

/// Called once, between the warm-up requests and the measured ones: every warm-up request has
/// ended, and no measured request goes out before the future it returns has completed (the lab
/// reads the engine's counters there, so that the run's deltas count the measured requests only).
pub type MeasuredStartHook =
    std::sync::Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// Most connections the warm-up opens for an open loop without `max_concurrency`.
pub const MAX_WARM_CONNECTIONS: usize = 1024;

/// How to reach the engine and how to judge the run.
///
/// Build with [`LoadgenConfig::new`] and adjust fields; the defaults suit vLLM and the emulator.
#[derive(Clone)]
pub struct LoadgenConfig {
    /// `http://host:port`, with or without a trailing `/v1`. Plain HTTP only (engines under test
    /// listen on loopback or a private network).
    pub base_url: String,
    pub api: Api,
    /// The `model` field. `None`: the first model of `GET /v1/models`.
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer ...` when set; never logged, printed or recorded.
    pub api_key: Option<String>,
    /// Whole-request limit, from send to the end of the stream. Failure class `timeout`.
    pub request_timeout: Duration,
    /// Longest silence allowed while waiting for headers or between two reads of the body.
    /// Failure class `timeout`. Must exceed the longest prefill the run expects.
    pub stall_timeout: Duration,
    /// Longest SSE event (or line) accepted, in bytes, counted from the previous blank line. A
    /// longer one fails the request as `malformed_event` without being buffered whole.
    pub max_event_bytes: usize,
    /// Longest response body accepted, in bytes. A longer one fails the request as
    /// `malformed_event` as soon as the cap is passed (the rest is never read).
    pub max_body_bytes: u64,
    /// Send `ignore_eos: true`, so the engine generates exactly `max_tokens`.
    pub ignore_eos: bool,
    /// Send `min_tokens = max_tokens` (vLLM and the emulator take it; others ignore it).
    pub send_min_tokens: bool,
    /// Ask for `stream_options.continuous_usage_stats` (vLLM): a cumulative usage in every chunk,
    /// which gives the exact token count of chunks that carry several tokens.
    pub continuous_usage: bool,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Worker threads, each with its own runtime and connections, merging their records at the
    /// end (as oha does). `None`: one per core this process may run on (its CPU affinity), at
    /// most one per request slot.
    pub threads: Option<usize>,
    /// Open the connections before the run clock starts, or not.
    pub connections: Connections,
    /// The run fails when more than this fraction of the (non-warm-up) requests sent failed.
    /// A run with no completed request fails whatever this is.
    pub max_failed_fraction: f64,
    /// Engine, tier and SLOs for `summary.json`.
    pub summary: stats::SummaryConfig,
    /// Cancelled: the run stops. Nothing more is sent, and the requests in flight end at once as
    /// failed with class `interrupted` (their chunks so far kept), so that every request sent
    /// still has a record.
    pub stop: Option<tokio_util::sync::CancellationToken>,
    /// Called at the end of the warm-up requests (a plan with `Limits::warmup > 0`), before the
    /// first measured request (see [`MeasuredStartHook`]).
    pub on_measured_start: Option<MeasuredStartHook>,
    /// Whether the run writes `summary.json`.
    pub summary_file: SummaryOutput,
}

impl LoadgenConfig {
    /// Defaults: automatic API, discovered model, 30 min request timeout, 5 min stall timeout,
    /// events up to [`DEFAULT_MAX_EVENT_BYTES`], bodies up to [`DEFAULT_MAX_BODY_BYTES`],
    /// `ignore_eos` and `min_tokens` sent, no continuous usage, progress bar on, one worker per
    /// core, warm connections, no failure tolerated.
    pub fn new(base_url: impl Into<String>) -> LoadgenConfig {
        LoadgenConfig {
            base_url: base_url.into(),
            api: Api::Auto,
            model: None,
            api_key: None,
            request_timeout: Duration::from_secs(30 * 60),
            stall_timeout: Duration::from_secs(5 * 60),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            ignore_eos: true,
            send_min_tokens: true,
            continuous_usage: false,
            progress: true,
            threads: None,
            connections: Connections::Warm,
            max_failed_fraction: 0.0,
            summary: stats::SummaryConfig::default(),
            stop: None,
            on_measured_start: None,
            summary_file: SummaryOutput::Write,
        }
    }

    /// The base URL without a trailing `/` or `/v1`: endpoints are appended as `/v1/...`.
    pub fn root_url(&self) -> Result<&str, crate::Error> {
        let url = self.base_url.trim_end_matches('/');
        let url = url.strip_suffix("/v1").unwrap_or(url);
        let bad = |reason: &str| crate::Error::BaseUrl { url: self.base_url.clone(), reason: reason.into() };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad(if url.starts_with("https://") {
                "https is not supported; engines under test are reached over plain http"
            } else {
                "expected http://host:port"
            })
        })?;
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(bad("expected http://host:port"));
        }
        Ok(url)
    }
}

impl fmt::Debug for LoadgenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadgenConfig")
            .field("base_url", &self.base_url)
            .field("api", &self.api)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("ignore_eos", &self.ignore_eos)
            .field("send_min_tokens", &self.send_min_tokens)
            .field("continuous_usage", &self.continuous_usage)
            .field("progress", &self.progress)
            .field("threads", &self.threads)
            .field("connections", &self.connections)
            .field("max_failed_fraction", &self.max_failed_fraction)
            .field("summary", &self.summary)
            .field("on_measured_start", &self.on_measured_start.as_ref().map(|_| "<hook>"))
            .field("summary_file", &self.summary_file)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(base: &str, expect: &str) {
        let cfg = LoadgenConfig::new(base);
        let got = match cfg.root_url() {
            Ok(u) => u.to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn base_urls() {
        check("http://127.0.0.1:8000", "http://127.0.0.1:8000");
        check("http://127.0.0.1:8000/", "http://127.0.0.1:8000");
        check("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000");
        check("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000");
        check("https://x", "invalid base URL \"https://x\": https is not supported; engines under test are reached over plain http");
        check("127.0.0.1:8000", "invalid base URL \"127.0.0.1:8000\": expected http://host:port");
        check("http://", "invalid base URL \"http://\": expected http://host:port");
    }

    #[test]
    fn debug_redacts_api_key() {
        let mut cfg = LoadgenConfig::new("http://127.0.0.1:1");
        cfg.api_key = Some("sk-secret-value".into());
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sk-secret-value"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
