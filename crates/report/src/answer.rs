//! The report's first section: does offloading pay on these runs, and by how much?
//!
//! Runs are grouped by what must match for a fair comparison (engine, emulated or not, request
//! rate, GPU cache blocks); within a group, each tier's run is set against the group's baseline
//! run: median TTFT with its 95% bootstrap interval, the ratio to baseline with the interval of
//! the difference, and where the prompt tokens came from (`summary.json`
//! `prompt_tokens_by_source`).

use std::collections::BTreeMap;

use crate::compare::{bootstrap_ci, bootstrap_diff_ci};
use crate::RunData;

/// Seed of the answer's bootstrap intervals (mixed with the run index).
const SEED: u64 = 0x616e_7377_6572;

/// One run's line of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct TierRow {
    /// Index into the report's runs.
    pub run: usize,
    pub label: String,
    pub tier: String,
    pub median_ttft_ms: f64,
    /// 95% interval of the median TTFT.
    pub ci_ms: Option<(f64, f64)>,
    /// Against the baseline run of its group: (median ratio, 95% interval of the difference in ms).
    pub vs_baseline: Option<(f64, Option<(f64, f64)>)>,
    /// Percent of the prompt tokens by source (`computed`, `gpu`, tiers).
    pub sources_pct: Option<BTreeMap<String, f64>>,
}

fn ttfts_ms(run: &RunData) -> Vec<f64> {
    run.completed().map(|r| r.ttft() * 1e3).collect()
}

/// The group key of a run: runs compared with each other share it.
fn group(run: &RunData) -> (String, bool, Option<u64>, Option<u64>) {
    (run.summary.engine.clone(), run.summary.emulated, run.request_rate.map(f64::to_bits), run.gpu_blocks)
}

/// One row per run, in the runs' order.
pub fn tier_rows(runs: &[RunData]) -> Vec<TierRow> {
    let baselines: BTreeMap<_, usize> = runs
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, r)| r.summary.tier == "baseline")
        .map(|(i, r)| (group(r), i))
        .collect();
    runs.iter()
        .enumerate()
        .map(|(i, run)| {
            let ttft = ttfts_ms(run);
            let median = stats::percentile(&ttft, 50.0);
            let vs_baseline = baselines.get(&group(run)).filter(|&&b| b != i).and_then(|&b| {
                let base = ttfts_ms(&runs[b]);
                let base_median = stats::percentile(&base, 50.0);
                (base_median > 0.0 && !ttft.is_empty())
                    .then(|| (median / base_median, bootstrap_diff_ci(&base, &ttft, 50.0, SEED ^ i as u64)))
            });
            let sources_pct = run.summary.prompt_tokens_by_source.as_ref().map(|s| {
                let total: u64 = s.values().sum();
                s.iter()
                    .map(|(k, &v)| {
                        (k.clone(), if total == 0 { 0.0 } else { v as f64 * 100.0 / total as f64 })
                    })
                    .collect()
            });
            TierRow {
                run: i,
                label: run.display_label(),
                tier: run.summary.tier.clone(),
                median_ttft_ms: median,
                ci_ms: bootstrap_ci(&ttft, 50.0, SEED ^ i as u64),
                vs_baseline,
                sources_pct,
            }
        })
        .collect()
}

/// Whether the report leads with the answer: two tiers to compare, or a run that knows where its
/// prompt tokens came from.
pub(crate) fn applies(runs: &[RunData]) -> bool {
    let mut tiers: Vec<&str> = runs.iter().map(|r| r.summary.tier.as_str()).collect();
    tiers.sort_unstable();
    tiers.dedup();
    tiers.len() > 1 || runs.iter().any(|r| r.summary.prompt_tokens_by_source.is_some())
}

pub(crate) const HEADER: [&str; 6] = [
    "run",
    "tier",
    "median TTFT (ms) [95% CI]",
    "vs baseline (difference, 95% CI)",
    "prompt tokens from an offload tier",
    "from GPU cache / computed",
];

/// The answer of one report, computed once (each row's bootstrap included) and read by its
/// figure, its markdown and its HTML.
pub(crate) struct Answer {
    pub(crate) rows: Vec<TierRow>,
    /// The headline sentences.
    pub(crate) headline: Vec<String>,
    /// The table's cells, under [`HEADER`].
    pub(crate) table: Vec<Vec<String>>,
}

impl Answer {
    /// `None` where the report does not lead with an answer ([`applies`]).
    pub(crate) fn of(runs: &[RunData]) -> Option<Answer> {
        if !applies(runs) {
            return None;
        }
        let rows = tier_rows(runs);
        let (headline, table) = cells(&rows);
        Some(Answer { rows, headline, table })
    }
}

/// The answer's table cells and its headline sentences.
fn cells(rows: &[TierRow]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut headline = Vec::new();
    let table = rows
        .iter()
        .map(|r| {
            let ci = r.ci_ms.map_or_else(String::new, |(lo, hi)| format!(" [{lo:.1}, {hi:.1}]"));
            let vs = match r.vs_baseline {
                None if r.tier == "baseline" => "reference".to_owned(),
                None => "no baseline run to compare".to_owned(),
                Some((ratio, ci)) => {
                    let verdict = match ci {
                        Some((lo, hi)) if hi < 0.0 => {
                            format!("faster, beyond noise ({lo:+.1} to {hi:+.1} ms)")
                        }
                        Some((lo, hi)) if lo > 0.0 => {
                            format!("slower, beyond noise ({lo:+.1} to {hi:+.1} ms)")
                        }
                        Some((lo, hi)) => format!("within noise ({lo:+.1} to {hi:+.1} ms)"),
                        None => "too few requests to tell".to_owned(),
                    };
                    format!("{ratio:.2}x: {verdict}")
                }
            };
            let (tier_pct, rest) = match &r.sources_pct {
                None => ("not counted by the engine".to_owned(), "-".to_owned()),
                Some(s) => {
                    let tiers: Vec<String> = s
                        .iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "computed" | "gpu"))
                        .map(|(k, v)| format!("{k} {v:.1}%"))
                        .collect();
                    let get = |k: &str| s.get(k).copied().unwrap_or(0.0);
                    (
                        if tiers.is_empty() { "none".to_owned() } else { tiers.join(", ") },
                        format!("{:.1}% / {:.1}%", get("gpu"), get("computed")),
                    )
                }
            };
            if let Some((ratio, ci)) = r.vs_baseline {
                let pct = (ratio - 1.0).abs() * 100.0;
                let how = match ci {
                    Some((_, hi)) if hi < 0.0 => format!("pays: median TTFT {pct:.0}% lower than baseline"),
                    Some((lo, _)) if lo > 0.0 => {
                        format!("does not pay: median TTFT {pct:.0}% higher than baseline")
                    }
                    _ => format!("makes no difference beyond noise (median TTFT {ratio:.2}x of baseline)"),
                };
                let served = r.sources_pct.as_ref().map(|s| {
                    let pct: f64 = s
                        .iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "computed" | "gpu"))
                        .map(|(_, v)| v)
                        .sum();
                    format!("; {pct:.1}% of its prompt tokens came from the tier")
                });
                headline.push(format!(
                    "{}: offloading to {} {how}{}.",
                    r.label,
                    r.tier,
                    served.unwrap_or_default()
                ));
            }
            vec![r.label.clone(), r.tier.clone(), format!("{:.1}{ci}", r.median_ttft_ms), vs, tier_pct, rest]
        })
        .collect();
    (headline, table)
}

/// The markdown section (empty when there is no answer); `figure`: the tier figure's file stem.
pub(crate) fn markdown(answer: Option<&Answer>, figure: Option<&str>) -> String {
    use std::fmt::Write as _;
    let Some(Answer { headline, table: rows, .. }) = answer else {
        return String::new();
    };
    let mut out = String::from("## Does offloading pay?\n\n");
    for line in headline {
        let _ = writeln!(out, "- {line}");
    }
    if !headline.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "| {} |", HEADER.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADER.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push_str(
        "\nIntervals: 95% percentile bootstrap over the run's requests. A tier is set against the \
         baseline run of the same engine, request rate and GPU cache size. Token sources are the \
         engine's counters (vLLM's `prompt_tokens_by_source`).\n",
    );
    if let Some(name) = figure {
        let _ = writeln!(out, "\n![TTFT and prompt tokens by tier](plots/{name}.svg)");
    }
    out.push('\n');
    out
}
