//! Runs side by side: each summary metric, the delta to the first run, and whether the difference
//! is beyond noise.
//!
//! Noise is judged for medians and p99s of TTFT, TPOT, ITL and E2E latency, from the per-request
//! records: a percentile bootstrap of the difference (run − first run), each run resampled with
//! replacement, with a ChaCha8 generator seeded per row and run so reports are reproducible. The
//! difference is beyond noise when its 95% interval excludes 0. Other metrics are shown without a
//! verdict.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stats::{itl_values, RequestRecord, Summary};

use crate::RunData;

/// Resamples per bootstrap (fewer for very large runs, see [`resamples`]).
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Two-sided confidence level of the bootstrap interval.
pub const CONFIDENCE: f64 = 0.95;
/// Seed of the bootstrap generators (mixed with the row and run index).
const SEED: u64 = 0x006b_766c_6162;

/// The metrics of the comparison table, in order: summary field names.
pub const TABLE_METRICS: &[&str] = &[
    "completed",
    "failed",
    "duration",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "cached_tokens_total",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p90_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
    "client_lag_p99_ms",
];

/// A numeric field of a summary by its `summary.json` name; `None` for an unknown or null field.
pub fn metric_value(summary: &Summary, name: &str) -> Option<f64> {
    serde_json::to_value(summary).ok()?.get(name)?.as_f64()
}

/// Whether a difference is beyond noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    /// The bootstrap interval of the difference excludes 0.
    Beyond,
    /// The interval includes 0.
    Within,
    /// No per-request distribution behind this metric (or too few requests).
    Untested,
}

/// The difference of one run to the first.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// `value - first`.
    pub abs: f64,
    /// `abs / first`; `None` when the first is 0.
    pub rel: Option<f64>,
    /// The bootstrap interval of the difference, where tested.
    pub ci: Option<(f64, f64)>,
    pub noise: Noise,
}

/// One metric across runs. `values` and `deltas` have one entry per run; `deltas[0]` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub metric: &'static str,
    pub values: Vec<Option<f64>>,
    pub deltas: Vec<Option<Delta>>,
}

/// The comparison table of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Display labels of the runs ("(emulated)" included).
    pub runs: Vec<String>,
    pub rows: Vec<Row>,
}

/// The per-request quantity and percentile behind a summary metric, for the bootstrap.
/// The per-request values of a run behind a metric, in ms.
type Values = fn(&RunData) -> Vec<f64>;

fn distribution(metric: &str) -> Option<(Values, f64)> {
    let (quantity, p) = metric.strip_suffix("_ms")?.split_once('_').map(|(stat, q)| (q, stat))?;
    let p = match p {
        "median" | "p50" => 50.0,
        "p99" => 99.0,
        _ => return None,
    };
    let values: Values = match quantity {
        "ttft" => |run| run.completed().map(|r| r.ttft() * 1e3).collect(),
        "tpot" => |run| run.completed().filter_map(RequestRecord::tpot).map(|v| v * 1e3).collect(),
        "itl" => |run| run.completed().flat_map(itl_values).map(|v| v * 1e3).collect(),
        "e2el" => |run| run.completed().map(|r| r.e2el() * 1e3).collect(),
        _ => return None,
    };
    Some((values, p))
}

impl Comparison {
    /// Compares `runs` with the first.
    pub fn new(runs: &[RunData]) -> Comparison {
        let labels = runs.iter().map(RunData::display_label).collect();
        let rows = TABLE_METRICS
            .iter()
            .enumerate()
            .map(|(row_index, &metric)| {
                let values: Vec<Option<f64>> =
                    runs.iter().map(|r| metric_value(&r.summary, metric)).collect();
                let dist = distribution(metric);
                let first_values = dist.map(|(f, _)| runs.first().map(f).unwrap_or_default());
                let deltas = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let (Some(first), Some(v)) = (values[0], *v) else { return None };
                        if i == 0 {
                            return None;
                        }
                        let abs = v - first;
                        let rel = (first != 0.0).then(|| abs / first);
                        let ci = match (dist, &first_values) {
                            (Some((f, p)), Some(a)) => {
                                let seed = SEED ^ ((row_index as u64) << 32) ^ i as u64;
                                bootstrap_diff_ci(a, &f(&runs[i]), p, seed)
                            }
                            _ => None,
                        };
                        let noise = match ci {
                            Some((lo, hi)) if lo > 0.0 || hi < 0.0 => Noise::Beyond,
                            Some(_) => Noise::Within,
                            None => Noise::Untested,
                        };
                        Some(Delta { abs, rel, ci, noise })
                    })
                    .collect();
                Row { metric, values, deltas }
            })
            .filter(|row| row.values.iter().any(Option::is_some))
            .collect();
        Comparison { runs: labels, rows }
    }

    /// Cells of the table: metric, each run's value, and for each run after the first its delta.
    pub(crate) fn cells(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut header = vec!["metric".to_owned()];
        header.extend(self.runs.iter().cloned());
        header.extend(self.runs.iter().skip(1).map(|r| format!("Δ {r}")));
        let rows = self
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![row.metric.to_owned()];
                cells.extend(
                    row.values.iter().map(|v| v.map_or_else(|| "—".to_owned(), |v| fmt_value(row.metric, v))),
                );
                cells.extend(
                    row.deltas
                        .iter()
                        .skip(1)
                        .map(|d| d.as_ref().map_or_else(|| "—".to_owned(), |d| fmt_delta(row.metric, d))),
                );
                cells
            })
            .collect();
        (header, rows)
    }

    /// A markdown table, with a legend of the noise marks.
    pub fn markdown(&self) -> String {
        let (header, rows) = self.cells();
        let mut out = format!("| {} |\n", header.join(" | "));
        out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
        for row in rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        if self.runs.len() > 1 {
            out.push_str(&format!("\n{}\n", noise_legend()));
        }
        out
    }

    /// The table for the terminal.
    pub fn terminal_table(&self) -> String {
        let (header, rows) = self.cells();
        let mut builder = tabled::builder::Builder::default();
        builder.push_record(header);
        for row in rows {
            builder.push_record(row);
        }
        let mut table = builder.build();
        table.with(tabled::settings::Style::sharp());
        let mut out = table.to_string();
        if self.runs.len() > 1 {
            out.push('\n');
            out.push_str(&noise_legend());
        }
        out
    }
}

pub(crate) fn noise_legend() -> String {
    format!(
        "`*` beyond noise, `~` within noise: the {:.0}% bootstrap interval ({} resamples) of the difference \
         excludes / includes 0 (medians and p99s only).",
        CONFIDENCE * 100.0,
        BOOTSTRAP_RESAMPLES
    )
}

/// Counts as integers, everything else with two decimals.
pub(crate) fn fmt_value(metric: &str, v: f64) -> String {
    if matches!(metric, "completed" | "failed" | "cached_tokens_total" | "sent") {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_delta(metric: &str, d: &Delta) -> String {
    let mark = match d.noise {
        Noise::Beyond => " *",
        Noise::Within => " ~",
        Noise::Untested => "",
    };
    let abs = fmt_value(metric, d.abs);
    let sign = if d.abs >= 0.0 && !abs.starts_with('-') { "+" } else { "" };
    match d.rel {
        Some(rel) => format!("{sign}{abs} ({:+.1}%){mark}", rel * 100.0),
        None => format!("{sign}{abs}{mark}"),
    }
}

/// Resamples for samples of sizes `n` and `m`: [`BOOTSTRAP_RESAMPLES`], fewer (at least 200) when
/// the samples are so large that each resample would cost more than ~50k element draws.
fn resamples(n: usize, m: usize) -> usize {
    let per = (n + m).max(1);
    (50_000_000 / per).clamp(200, BOOTSTRAP_RESAMPLES)
}

/// The [`CONFIDENCE`] percentile-bootstrap interval of `percentile(b, p) - percentile(a, p)`;
/// `None` when either sample has fewer than 2 values.
pub fn bootstrap_diff_ci(a: &[f64], b: &[f64], p: f64, seed: u64) -> Option<(f64, f64)> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = resamples(a.len(), b.len());
    let mut buf_a = vec![0.0; a.len()];
    let mut buf_b = vec![0.0; b.len()];
    let mut diffs = Vec::with_capacity(n);
    for _ in 0..n {
        let qa = resampled_percentile(a, &mut buf_a, p, &mut rng);
        let qb = resampled_percentile(b, &mut buf_b, p, &mut rng);
        diffs.push(qb - qa);
    }
    let tail = (1.0 - CONFIDENCE) / 2.0 * 100.0;
    Some((stats::percentile(&diffs, tail), stats::percentile(&diffs, 100.0 - tail)))
}

/// The [`CONFIDENCE`] percentile-bootstrap interval of `percentile(values, p)`; `None` with
/// fewer than 2 values.
pub fn bootstrap_ci(values: &[f64], p: f64, seed: u64) -> Option<(f64, f64)> {
    if values.len() < 2 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = resamples(values.len(), 0);
    let mut buf = vec![0.0; values.len()];
    let qs: Vec<f64> = (0..n).map(|_| resampled_percentile(values, &mut buf, p, &mut rng)).collect();
    let tail = (1.0 - CONFIDENCE) / 2.0 * 100.0;
    Some((stats::percentile(&qs, tail), stats::percentile(&qs, 100.0 - tail)))
}

/// Percentile `p` (numpy's linear interpolation) of a resample of `values`, in O(n).
fn resampled_percentile(values: &[f64], buf: &mut [f64], p: f64, rng: &mut ChaCha8Rng) -> f64 {
    for slot in buf.iter_mut() {
        *slot = values[rng.gen_range(0..values.len())];
    }
    let rank = p / 100.0 * (buf.len() - 1) as f64;
    let k = rank.floor() as usize;
    let (_, &mut lo, rest) = buf.select_nth_unstable_by(k, f64::total_cmp);
    let frac = rank - k as f64;
    if frac == 0.0 || rest.is_empty() {
        return lo;
    }
    let hi = rest.iter().copied().fold(f64::INFINITY, f64::min);
    lo + (hi - lo) * frac
}
