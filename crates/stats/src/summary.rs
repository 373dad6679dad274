//! `summary.json`: aggregate statistics over a run's request records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{RequestRecord, Slo, TokenSource, SUMMARY_VERSION};

/// What [`summarize`] needs besides the records.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryConfig {
    /// Engine name (`"emulated"`, `"vllm-docker"`, ...), copied into the summary.
    pub engine: String,
    /// Tier name (`"baseline"`, `"cpu"`, `"disk"`, `"redis"`), copied into the summary.
    pub tier: String,
    /// True when the numbers come from kvlab's emulated engine; every rendering says so.
    pub emulated: bool,
    /// Service-level objectives for goodput; `None` (or an empty [`Slo`]) leaves
    /// `request_goodput` null, as `vllm bench serve` without `--goodput`.
    pub slo: Option<Slo>,
    /// The run is flagged `client_limited` when its p99 client lag exceeds this many ms, or
    /// [`SummaryConfig::client_lag_gap_fraction`] of the schedule's mean gap if that is longer.
    pub client_lag_threshold_ms: f64,
    /// The fraction of the mean gap between intended send times (open loop: `1 / rate`) that a
    /// client may be late, at p99, and still keep its schedule: 10 ms late on a send every
    /// 250 ms leaves the offered rate as it was.
    pub client_lag_gap_fraction: f64,
}

impl Default for SummaryConfig {
    fn default() -> Self {
        SummaryConfig {
            engine: String::new(),
            tier: String::new(),
            emulated: false,
            slo: None,
            client_lag_threshold_ms: 10.0,
            client_lag_gap_fraction: 0.1,
        }
    }
}

/// Where the output token counts of the completed requests came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputTokenSource {
    /// Every completed request reported `usage`.
    Usage,
    /// Every completed request was counted from its chunks.
    Chunks,
    /// Some of each.
    Mixed,
    /// No request completed.
    None,
}

impl OutputTokenSource {
    /// The serialized name: `"usage"`, `"chunks"`, `"mixed"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputTokenSource::Usage => "usage",
            OutputTokenSource::Chunks => "chunks",
            OutputTokenSource::Mixed => "mixed",
            OutputTokenSource::None => "none",
        }
    }
}

/// The `summary.json` format (version [`SUMMARY_VERSION`]).
///
/// Invariants: `completed + failed == sent`; `sent` and every statistic exclude warm-up requests
/// (counted in `warmup_excluded`); latency statistics cover completed requests only and are 0
/// when none completed. Latencies are in milliseconds, `duration` in seconds, throughputs per
/// second of `duration`. TPOT statistics cover requests with more than one output token.
///
/// `*_itl_ms` are `vllm bench serve`'s: one value per content chunk after the first, the gap
/// since the previous one ([`itl_values`]), whatever the chunk's token count. `*_itl_per_token_ms`
/// split each gap over the chunk's tokens ([`itl_per_token_values`]), over the requests whose
/// chunks' token counts are known (`itl_per_token_requests` of them). Fields added after the
/// first release of the format read as 0 from older files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub v: u32,
    pub engine: String,
    pub tier: String,
    pub emulated: bool,
    /// Non-warm-up requests sent.
    pub sent: u64,
    pub completed: u64,
    pub failed: u64,
    /// Warm-up requests (completed or not), excluded from everything else.
    pub warmup_excluded: u64,
    /// Failure class (see `RequestError::class`) → count, over non-warm-up requests.
    pub failed_by_class: BTreeMap<String, u64>,
    /// Seconds from the first non-warm-up send to the last non-warm-up end.
    pub duration: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub cached_tokens_total: u64,
    pub request_throughput: f64,
    /// Completed requests meeting every SLO, per second; `None` without SLOs.
    pub request_goodput: Option<f64>,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub max_concurrent_requests: u64,
    pub mean_ttft_ms: f64,
    pub median_ttft_ms: f64,
    pub std_ttft_ms: f64,
    pub p50_ttft_ms: f64,
    pub p90_ttft_ms: f64,
    pub p95_ttft_ms: f64,
    pub p99_ttft_ms: f64,
    pub mean_tpot_ms: f64,
    pub median_tpot_ms: f64,
    pub std_tpot_ms: f64,
    pub p50_tpot_ms: f64,
    pub p90_tpot_ms: f64,
    pub p95_tpot_ms: f64,
    pub p99_tpot_ms: f64,
    pub mean_itl_ms: f64,
    pub median_itl_ms: f64,
    pub std_itl_ms: f64,
    pub p50_itl_ms: f64,
    pub p90_itl_ms: f64,
    pub p95_itl_ms: f64,
    pub p99_itl_ms: f64,
    /// Completed requests whose chunks' token counts are known: the per-token ITL's sample.
    #[serde(default)]
    pub itl_per_token_requests: u64,
    #[serde(default)]
    pub mean_itl_per_token_ms: f64,
    #[serde(default)]
    pub median_itl_per_token_ms: f64,
    #[serde(default)]
    pub std_itl_per_token_ms: f64,
    #[serde(default)]
    pub p50_itl_per_token_ms: f64,
    #[serde(default)]
    pub p90_itl_per_token_ms: f64,
    #[serde(default)]
    pub p95_itl_per_token_ms: f64,
    #[serde(default)]
    pub p99_itl_per_token_ms: f64,
    pub mean_e2el_ms: f64,
    pub median_e2el_ms: f64,
    pub std_e2el_ms: f64,
    pub p50_e2el_ms: f64,
    pub p90_e2el_ms: f64,
    pub p95_e2el_ms: f64,
    pub p99_e2el_ms: f64,
    /// How late the client sent each non-warm-up request, in ms: `sent - intended`, less the
    /// wait for a concurrency slot ([`RequestRecord::client_lag`]).
    pub client_lag_mean_ms: f64,
    pub client_lag_p50_ms: f64,
    pub client_lag_p99_ms: f64,
    pub client_lag_max_ms: f64,
    /// The bound on `client_lag_p99_ms` this run was held to: the configured threshold, or the
    /// configured fraction of the schedule's mean gap between intended sends if that is longer.
    #[serde(default)]
    pub client_lag_threshold_ms: f64,
    /// The client, not the server, limited the rate: it did not keep its schedule (lag p99
    /// above `client_lag_threshold_ms`). The wait for a slot under `max_concurrency` is not lag.
    pub client_limited: bool,
    /// Non-warm-up requests that were due while `max_concurrency` requests were in flight and
    /// waited for a slot.
    #[serde(default)]
    pub queued_requests: u64,
    /// The wait for a concurrency slot (`max_concurrency`), over completed requests (0 for
    /// those that did not wait), in ms: `queued_until - intended`
    /// ([`RequestRecord::queue_wait`]). `vllm bench serve`'s `client_queue_time` (its wait for
    /// its concurrency semaphore, which it reports with `--max-concurrency` when asked for it in
    /// `--percentile-metrics`).
    #[serde(default)]
    pub mean_client_queue_time_ms: f64,
    #[serde(default)]
    pub median_client_queue_time_ms: f64,
    #[serde(default)]
    pub std_client_queue_time_ms: f64,
    #[serde(default)]
    pub p50_client_queue_time_ms: f64,
    #[serde(default)]
    pub p90_client_queue_time_ms: f64,
    #[serde(default)]
    pub p95_client_queue_time_ms: f64,
    #[serde(default)]
    pub p99_client_queue_time_ms: f64,
    pub output_token_source: OutputTokenSource,
    /// Prompt tokens by where the engine found them, from its counters over the run (warm-up
    /// included): `computed`, `gpu` (its own prefix cache), and one entry per offload tier that
    /// served hits (`cpu`, `disk`, `redis`). Absent when the engine does not count them (the
    /// summary of the load generator alone, llama.cpp). See `report::tokens_by_source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_by_source: Option<BTreeMap<String, u64>>,
}

/// Percentile `p` (0..=100) of `values` with numpy's default (linear) interpolation:
/// rank `p/100 * (n-1)` between the neighbouring order statistics. 0 for an empty slice.
/// `values` need not be sorted; NaNs sort last.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_sorted(&sorted, p)
}

fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Arithmetic mean; 0 for an empty slice.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Population standard deviation (numpy's default, `ddof = 0`); 0 for an empty slice.
pub fn std_dev(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let m = mean(values);
    (values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / values.len() as f64).sqrt()
}

/// Inter-token latencies of one record as `vllm bench serve` has them, in seconds: one per
/// content chunk after the first, the time since the previous content chunk, whatever the
/// number of tokens the chunk carries. The first content chunk ends the TTFT and yields none.
/// Chunks recorded with 0 tokens are ignored.
pub fn itl_values(record: &RequestRecord) -> Vec<f64> {
    let times: Vec<f64> = record.chunks.iter().filter(|(_, k)| *k > 0).map(|&(t, _)| t).collect();
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Inter-token latencies of one record per token, in seconds, or `None` when its chunks' token
/// counts are not known: each content chunk after the first carrying `k` tokens contributes
/// `k` values of `gap / k` (the first chunk's tokens, TTFT's, none).
///
/// The counts are known when the server's `usage` confirms them: the chunks' tokens add up to
/// its `completion_tokens`. A client that asked for usage in every chunk (vLLM's
/// `continuous_usage_stats`) has each chunk's count from it; without that every chunk is
/// counted as one token, which usage confirms only when the server sent one token a chunk.
pub fn itl_per_token_values(record: &RequestRecord) -> Option<Vec<f64>> {
    let counted: u64 = record.chunks.iter().map(|&(_, k)| u64::from(k)).sum();
    if record.token_source != TokenSource::Usage || counted != u64::from(record.output_tokens) {
        return None;
    }
    let mut out = Vec::new();
    let mut last: Option<f64> = None;
    for &(t, k) in record.chunks.iter().filter(|(_, k)| *k > 0) {
        if let Some(prev) = last {
            let share = (t - prev) / f64::from(k);
            out.extend(std::iter::repeat_n(share, k as usize));
        }
        last = Some(t);
    }
    Some(out)
}

/// Mean gap between consecutive intended send times of `records`, in seconds (0 for fewer
/// than two, or all at once).
fn mean_gap(records: &[&RequestRecord]) -> f64 {
    let first = records.iter().map(|r| r.intended).reduce(f64::min);
    let last = records.iter().map(|r| r.intended).reduce(f64::max);
    match (first, last) {
        (Some(first), Some(last)) if records.len() > 1 => (last - first) / (records.len() - 1) as f64,
        _ => 0.0,
    }
}

struct Dist {
    mean: f64,
    median: f64,
    std: f64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
}

impl Dist {
    /// Statistics of `seconds`, reported in milliseconds.
    fn of_ms(seconds: &[f64]) -> Dist {
        let mut ms: Vec<f64> = seconds.iter().map(|s| s * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let p = |q| percentile_sorted(&ms, q);
        Dist {
            mean: mean(&ms),
            median: p(50.0),
            std: std_dev(&ms),
            p50: p(50.0),
            p90: p(90.0),
            p95: p(95.0),
            p99: p(99.0),
        }
    }
}

/// Peak number of requests in flight (intervals `[sent, end)`).
fn max_concurrency(records: &[&RequestRecord]) -> u64 {
    let mut events: Vec<(f64, i64)> = records.iter().flat_map(|r| [(r.sent, 1), (r.end, -1)]).collect();
    // Ends before starts at equal times: a request that ends as another starts does not overlap.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut now = 0i64;
    let mut peak = 0i64;
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    peak as u64
}

/// Summarize a run. See [`Summary`] for the invariants. Never fails: an empty or all-failed run
/// gives zeros with `completed == 0`.
pub fn summarize(records: &[RequestRecord], cfg: &SummaryConfig) -> Summary {
    let (warmup, measured): (Vec<&RequestRecord>, Vec<&RequestRecord>) =
        records.iter().partition(|r| r.warmup);
    let completed: Vec<&RequestRecord> = measured.iter().copied().filter(|r| r.error.is_none()).collect();

    let mut failed_by_class = BTreeMap::new();
    for error in measured.iter().filter_map(|r| r.error.as_ref()) {
        *failed_by_class.entry(error.class().to_string()).or_insert(0) += 1;
    }

    let duration = match (
        measured.iter().map(|r| r.sent).reduce(f64::min),
        measured.iter().map(|r| r.end).reduce(f64::max),
    ) {
        (Some(first), Some(last)) => (last - first).max(0.0),
        _ => 0.0,
    };
    let per_second = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };

    let total_input_tokens: u64 = completed.iter().map(|r| u64::from(r.prompt_tokens.unwrap_or(0))).sum();
    let total_output_tokens: u64 = completed.iter().map(|r| u64::from(r.output_tokens)).sum();
    let cached_tokens_total: u64 = completed.iter().map(|r| u64::from(r.cached_tokens.unwrap_or(0))).sum();

    let ttfts: Vec<f64> = completed.iter().map(|r| r.ttft()).collect();
    let tpots: Vec<f64> = completed.iter().filter_map(|r| r.tpot()).collect();
    let itls: Vec<f64> = completed.iter().flat_map(|r| itl_values(r)).collect();
    let per_token: Vec<Vec<f64>> = completed.iter().filter_map(|r| itl_per_token_values(r)).collect();
    let itl_per_token = Dist::of_ms(&per_token.concat());
    let e2els: Vec<f64> = completed.iter().map(|r| r.e2el()).collect();
    let (ttft, tpot, itl, e2el) =
        (Dist::of_ms(&ttfts), Dist::of_ms(&tpots), Dist::of_ms(&itls), Dist::of_ms(&e2els));

    let mut lags: Vec<f64> = measured.iter().map(|r| r.client_lag() * 1000.0).collect();
    lags.sort_by(f64::total_cmp);
    let client_lag_p99_ms = percentile_sorted(&lags, 99.0);
    let client_lag_threshold_ms =
        cfg.client_lag_threshold_ms.max(cfg.client_lag_gap_fraction * mean_gap(&measured) * 1000.0);
    let waits: Vec<f64> = completed.iter().map(|r| r.queue_wait()).collect();
    let queue = Dist::of_ms(&waits);

    let request_goodput = cfg.slo.as_ref().filter(|slo| !slo.is_empty()).map(|slo| {
        let good = completed.iter().filter(|r| slo.is_met_by(r)).count();
        per_second(good as f64)
    });

    let output_token_source = {
        let usage = completed.iter().filter(|r| r.token_source == TokenSource::Usage).count();
        match (usage, completed.len() - usage) {
            (0, 0) => OutputTokenSource::None,
            (_, 0) => OutputTokenSource::Usage,
            (0, _) => OutputTokenSource::Chunks,
            _ => OutputTokenSource::Mixed,
        }
    };

    Summary {
        v: SUMMARY_VERSION,
        engine: cfg.engine.clone(),
        tier: cfg.tier.clone(),
        emulated: cfg.emulated,
        sent: measured.len() as u64,
        completed: completed.len() as u64,
        failed: (measured.len() - completed.len()) as u64,
        warmup_excluded: warmup.len() as u64,
        failed_by_class,
        duration,
        total_input_tokens,
        total_output_tokens,
        cached_tokens_total,
        request_throughput: per_second(completed.len() as f64),
        request_goodput,
        output_throughput: per_second(total_output_tokens as f64),
        total_token_throughput: per_second((total_input_tokens + total_output_tokens) as f64),
        max_concurrent_requests: max_concurrency(&measured),
        mean_ttft_ms: ttft.mean,
        median_ttft_ms: ttft.median,
        std_ttft_ms: ttft.std,
        p50_ttft_ms: ttft.p50,
        p90_ttft_ms: ttft.p90,
        p95_ttft_ms: ttft.p95,
        p99_ttft_ms: ttft.p99,
        mean_tpot_ms: tpot.mean,
        median_tpot_ms: tpot.median,
        std_tpot_ms: tpot.std,
        p50_tpot_ms: tpot.p50,
        p90_tpot_ms: tpot.p90,
        p95_tpot_ms: tpot.p95,
        p99_tpot_ms: tpot.p99,
        mean_itl_ms: itl.mean,
        median_itl_ms: itl.median,
        std_itl_ms: itl.std,
        p50_itl_ms: itl.p50,
        p90_itl_ms: itl.p90,
        p95_itl_ms: itl.p95,
        p99_itl_ms: itl.p99,
        itl_per_token_requests: per_token.len() as u64,
        mean_itl_per_token_ms: itl_per_token.mean,
        median_itl_per_token_ms: itl_per_token.median,
        std_itl_per_token_ms: itl_per_token.std,
        p50_itl_per_token_ms: itl_per_token.p50,
        p90_itl_per_token_ms: itl_per_token.p90,
        p95_itl_per_token_ms: itl_per_token.p95,
        p99_itl_per_token_ms: itl_per_token.p99,
        mean_e2el_ms: e2el.mean,
        median_e2el_ms: e2el.median,
        std_e2el_ms: e2el.std,
        p50_e2el_ms: e2el.p50,
        p90_e2el_ms: e2el.p90,
        p95_e2el_ms: e2el.p95,
        p99_e2el_ms: e2el.p99,
        client_lag_mean_ms: mean(&lags),
        client_lag_p50_ms: percentile_sorted(&lags, 50.0),
        client_lag_p99_ms,
        client_lag_max_ms: lags.last().copied().unwrap_or(0.0),
        client_lag_threshold_ms,
        client_limited: client_lag_p99_ms > client_lag_threshold_ms,
        queued_requests: measured.iter().filter(|r| r.queued_until.is_some()).count() as u64,
        mean_client_queue_time_ms: queue.mean,
        median_client_queue_time_ms: queue.median,
        std_client_queue_time_ms: queue.std,
        p50_client_queue_time_ms: queue.p50,
        p90_client_queue_time_ms: queue.p90,
        p95_client_queue_time_ms: queue.p95,
        p99_client_queue_time_ms: queue.p99,
        output_token_source,
        prompt_tokens_by_source: None,
    }
}
