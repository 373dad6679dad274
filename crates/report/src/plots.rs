//! The plots of a report, as [`Figure`]s built from runs (pure: no drawing, no I/O).
//!
//! | file stem | what |
//! |---|---|
//! | `tiers` | the answer, first: per run, median TTFT with its 95% interval, and prompt tokens by source (computed, GPU cache, each offload tier); when runs of two tiers, or token sources, are there |
//! | `offload_pays` | median TTFT against the GPU's KV cache size, one line per tier: where offloading starts to pay; only with two or more sizes |
//! | `ttft_over_time` | TTFT of each request against its send time, with the median per time bin; instead of the two plots against prompt length when the runs have fewer than three prompt lengths |
//! | `ttft_vs_prompt_len` | TTFT against prompt length: per run its requests (points) and the median per prompt-length bin (line) |
//! | `e2el_vs_prompt_len` | end-to-end latency against prompt length, the same way |
//! | `ttft_cdf`, `itl_cdf` | empirical CDFs per run |
//! | `sweep` | throughput and TTFT (p50, p99) against the configured request rate, one series per engine and tier; only with two or more rates |
//! | `timeline_<n>` | one per run, on the run's clock: PCIe TX/RX, disk read/write, GPU utilisation, engine KV usage and prefix-cache hit rate (the panels with samples), and requests in flight with arrivals and completions marked |

use std::collections::BTreeMap;

use stats::{itl_values, percentile};

use crate::figure::{Figure, Panel, Series, SeriesKind};
use crate::RunData;

/// Every figure of a report for `runs`, in report order. Figures without data are left out.
pub fn figures(runs: &[RunData]) -> Vec<Figure> {
    figures_with(runs, crate::answer::Answer::of(runs).as_ref())
}

/// [`figures`] with the report's answer already computed.
pub(crate) fn figures_with(runs: &[RunData], answer: Option<&crate::answer::Answer>) -> Vec<Figure> {
    let mut out: Vec<Figure> = answer.map(|a| tiers(runs, &a.rows)).into_iter().collect();
    out.extend(offload_pays(runs));
    // Against prompt length only where the runs have lengths to compare; else over the run.
    if distinct_prompt_lengths(runs) >= MIN_LENGTHS {
        out.push(latency_vs_prompt(runs, "ttft_vs_prompt_len", "TTFT vs prompt length", "TTFT (ms)", |r| {
            r.ttft()
        }));
        out.push(latency_vs_prompt(
            runs,
            "e2el_vs_prompt_len",
            "E2E latency vs prompt length",
            "E2E latency (ms)",
            |r| r.e2el(),
        ));
    } else {
        out.push(ttft_over_time(runs));
    }
    out.extend([
        cdf(runs, "ttft_cdf", "TTFT CDF", ("TTFT (ms)", "fraction of requests"), |run| {
            run.completed().map(|r| r.ttft() * 1e3).collect()
        }),
        cdf(runs, "itl_cdf", "ITL CDF", ("inter-token latency (ms)", "fraction of token gaps"), |run| {
            run.completed().flat_map(itl_values).map(|v| v * 1e3).collect()
        }),
    ]);
    out.extend(sweep(runs));
    out.extend(runs.iter().enumerate().map(|(i, run)| timeline(run, i)));
    out.retain(|f| f.series_count() > 0);
    out
}

/// " (emulated)" when any run is emulated, for titles.
fn emulated_suffix<'a>(runs: impl IntoIterator<Item = &'a RunData>) -> &'static str {
    if runs.into_iter().any(|r| r.summary.emulated) {
        " (emulated)"
    } else {
        ""
    }
}

/// Requests per run as points, plus the median of each prompt-length bin as a line.
fn latency_vs_prompt(
    runs: &[RunData],
    name: &str,
    title: &str,
    y_label: &str,
    latency: fn(&stats::RequestRecord) -> f64,
) -> Figure {
    let axes = ("prompt length (tokens)", y_label);
    scatter_with_median(runs, name, title, axes, |r| Some((f64::from(r.prompt_tokens?), latency(r) * 1e3)))
}

/// Each run's completed requests as points (`point`: x and y of a request, or none), with the
/// median of each x bin as a line.
fn scatter_with_median(
    runs: &[RunData],
    name: &str,
    title: &str,
    (x_label, y_label): (&str, &str),
    point: impl Fn(&stats::RequestRecord) -> Option<(f64, f64)>,
) -> Figure {
    let mut series = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let points: Vec<(f64, f64)> = run.completed().filter_map(&point).collect();
        if points.is_empty() {
            continue;
        }
        let label = run.display_label();
        series.push(Series {
            label: format!("{label} median"),
            kind: SeriesKind::Line,
            color: i,
            points: binned_median(&points),
        });
        series.push(Series { label, kind: SeriesKind::Points, color: i, points });
    }
    Figure {
        name: name.to_owned(),
        title: format!("{title}{}", emulated_suffix(runs)),
        panels: vec![Panel {
            title: String::new(),
            x_label: x_label.to_owned(),
            y_label: y_label.to_owned(),
            series,
        }],
        shared_x: false,
        x_range: None,
    }
}

/// Plots against prompt length need this many distinct lengths (with fewer, a vertical stripe).
pub(crate) const MIN_LENGTHS: usize = 3;

fn distinct_prompt_lengths(runs: &[RunData]) -> usize {
    let mut lengths: Vec<u32> =
        runs.iter().flat_map(|r| r.completed().filter_map(|q| q.prompt_tokens)).collect();
    lengths.sort_unstable();
    lengths.dedup();
    lengths.len()
}

/// TTFT of each request against when it was sent, per run, with the median per time bin: the
/// cache warming, a tier starting to serve, queues building.
fn ttft_over_time(runs: &[RunData]) -> Figure {
    let axes = ("sent at (s since run start)", "TTFT (ms)");
    scatter_with_median(runs, "ttft_over_time", "TTFT over the run", axes, |r| Some((r.sent, r.ttft() * 1e3)))
}

/// The answer's picture: per run (x: its number in the report's run table), the median TTFT
/// with its 95% interval, and where its prompt tokens came from.
fn tiers(runs: &[RunData], rows: &[crate::answer::TierRow]) -> Figure {
    let suffix = emulated_suffix(runs);
    let mut ttft = Vec::new();
    for r in rows {
        let x = (r.run + 1) as f64;
        let s = &runs[r.run].summary;
        let name =
            if s.emulated { format!("{} (emulated)", r.tier) } else { format!("{} ({})", r.tier, s.engine) };
        let name = if rows.iter().filter(|o| o.tier == r.tier).count() > 1 {
            format!("{name} #{}", r.run + 1)
        } else {
            name
        };
        ttft.push(Series {
            label: format!("{name}: median {:.1} ms", r.median_ttft_ms),
            kind: SeriesKind::Points,
            color: r.run,
            points: vec![(x, r.median_ttft_ms)],
        });
        if let Some((lo, hi)) = r.ci_ms {
            ttft.push(Series {
                label: format!("{name}: 95% CI"),
                kind: SeriesKind::Line,
                color: r.run,
                points: vec![(x, lo), (x, hi)],
            });
        }
    }
    let mut by_source: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        for (source, pct) in r.sources_pct.iter().flatten() {
            by_source.entry(source.clone()).or_default().push(((r.run + 1) as f64, *pct));
        }
    }
    let sources = by_source
        .into_iter()
        .enumerate()
        .map(|(i, (source, points))| Series {
            label: format!("{source}{suffix}"),
            kind: SeriesKind::Points,
            color: rows.len() + i,
            points,
        })
        .collect();
    Figure {
        name: "tiers".to_owned(),
        // Runs 1..n on the left, the legend on the right.
        x_range: Some((0.5, runs.len() as f64 + 0.5 + (runs.len() as f64 * 0.8).max(1.5))),
        title: format!("Does offloading pay? TTFT and prompt tokens by tier{suffix}"),
        panels: vec![
            Panel {
                title: "median TTFT with its 95% interval".to_owned(),
                x_label: "run (number in the report's run table)".to_owned(),
                y_label: "TTFT (ms)".to_owned(),
                series: ttft,
            },
            Panel {
                title: "prompt tokens by source".to_owned(),
                x_label: "run (number in the report's run table)".to_owned(),
                y_label: "% of prompt tokens".to_owned(),
                series: sources,
            },
        ],
        shared_x: true,
    }
}

/// Median TTFT against the GPU cache size, one line per engine and tier: where the offload
/// tiers start to beat the baseline. `None` unless a tier has runs at two or more sizes.
fn offload_pays(runs: &[RunData]) -> Option<Figure> {
    let mut groups: BTreeMap<(String, String, bool), Vec<&RunData>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.gpu_blocks.is_some()) {
        let s = &run.summary;
        groups.entry((s.tier.clone(), s.engine.clone(), s.emulated)).or_default().push(run);
    }
    groups.retain(|_, v| {
        let mut sizes: Vec<u64> = v.iter().filter_map(|r| r.gpu_blocks).collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes.len() >= 2
    });
    if groups.is_empty() {
        return None;
    }
    let series = groups
        .into_iter()
        .enumerate()
        .map(|(i, ((tier, engine, emulated), mut group))| {
            group.sort_by_key(|r| r.gpu_blocks);
            Series {
                label: if emulated {
                    format!("{tier} (emulated) median")
                } else {
                    format!("{tier} ({engine}) median")
                },
                kind: SeriesKind::Line,
                color: i,
                points: group
                    .iter()
                    .map(|r| {
                        let ttft: Vec<f64> = r.completed().map(|q| q.ttft() * 1e3).collect();
                        (r.gpu_blocks.unwrap_or(0) as f64, percentile(&ttft, 50.0))
                    })
                    .collect(),
            }
        })
        .collect();
    Some(Figure {
        name: "offload_pays".to_owned(),
        title: format!("Where offloading starts to pay{}", emulated_suffix(runs)),
        panels: vec![Panel {
            title: "median TTFT against the GPU's KV cache".to_owned(),
            x_label: "GPU KV cache (blocks)".to_owned(),
            y_label: "TTFT (ms)".to_owned(),
            series,
        }],
        shared_x: false,
        x_range: None,
    })
}

/// Bins of at most this many distinct prompt lengths get one point each; more are grouped into
/// this many bins of equal count.
const MAX_BINS: usize = 12;

/// The median latency per prompt-length bin, at the bin's median prompt length.
pub(crate) fn binned_median(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut by_x: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for &(x, y) in points {
        by_x.entry(x.to_bits()).or_default().push(y);
    }
    if by_x.len() <= MAX_BINS {
        let mut out: Vec<(f64, f64)> =
            by_x.into_iter().map(|(x, ys)| (f64::from_bits(x), percentile(&ys, 50.0))).collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        return out;
    }
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let per_bin = sorted.len().div_ceil(MAX_BINS);
    sorted
        .chunks(per_bin)
        .map(|bin| {
            let xs: Vec<f64> = bin.iter().map(|p| p.0).collect();
            let ys: Vec<f64> = bin.iter().map(|p| p.1).collect();
            (percentile(&xs, 50.0), percentile(&ys, 50.0))
        })
        .collect()
}

fn cdf(
    runs: &[RunData],
    name: &str,
    title: &str,
    (x_label, y_label): (&str, &str),
    values: fn(&RunData) -> Vec<f64>,
) -> Figure {
    let series = runs
        .iter()
        .enumerate()
        .filter_map(|(i, run)| {
            let points = cdf_points(values(run));
            (!points.is_empty()).then(|| Series {
                label: run.display_label(),
                kind: SeriesKind::Step,
                color: i,
                points,
            })
        })
        .collect();
    Figure {
        name: name.to_owned(),
        title: format!("{title}{}", emulated_suffix(runs)),
        panels: vec![Panel {
            title: String::new(),
            x_label: x_label.to_owned(),
            y_label: y_label.to_owned(),
            series,
        }],
        shared_x: false,
        x_range: None,
    }
}

/// Points of the empirical CDF: `(v_i, i / n)` for sorted values (1-based `i`), at most 2000
/// points (every k-th; the last is always kept).
pub(crate) fn cdf_points(mut values: Vec<f64>) -> Vec<(f64, f64)> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let step = n.div_ceil(2000).max(1);
    values
        .iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) % step == 0 || *i == n - 1)
        .map(|(i, &v)| (v, (i + 1) as f64 / n as f64))
        .collect()
}

/// Throughput and TTFT against the configured request rate, one line per engine and tier.
/// `None` unless some engine and tier has runs at two or more finite rates.
fn sweep(runs: &[RunData]) -> Option<Figure> {
    let mut groups: BTreeMap<(String, String, bool), Vec<&RunData>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.request_rate.is_some()) {
        let s = &run.summary;
        groups.entry((s.engine.clone(), s.tier.clone(), s.emulated)).or_default().push(run);
    }
    groups.retain(|_, v| {
        let mut rates: Vec<u64> = v.iter().filter_map(|r| r.request_rate.map(f64::to_bits)).collect();
        rates.sort_unstable();
        rates.dedup();
        rates.len() >= 2
    });
    if groups.is_empty() {
        return None;
    }
    let mut throughput = Vec::new();
    let mut ttft = Vec::new();
    for (i, ((engine, tier, emulated), mut group)) in groups.into_iter().enumerate() {
        group.sort_by(|a, b| a.request_rate.unwrap_or(0.0).total_cmp(&b.request_rate.unwrap_or(0.0)));
        let label = format!("{tier} {engine}{}", if emulated { " (emulated)" } else { "" });
        let line = |f: fn(&stats::Summary) -> f64| -> Vec<(f64, f64)> {
            group.iter().map(|r| (r.request_rate.unwrap_or(0.0), f(&r.summary))).collect()
        };
        throughput.push(Series {
            label: format!("{label} req/s"),
            kind: SeriesKind::Line,
            color: i,
            points: line(|s| s.request_throughput),
        });
        ttft.push(Series {
            label: format!("{label} p50"),
            kind: SeriesKind::Line,
            color: i,
            points: line(|s| s.p50_ttft_ms),
        });
        ttft.push(Series {
            label: format!("{label} p99"),
            kind: SeriesKind::Dashed,
            color: i,
            points: line(|s| s.p99_ttft_ms),
        });
    }
    Some(Figure {
        name: "sweep".to_owned(),
        title: format!("Request-rate sweep{}", emulated_suffix(runs)),
        panels: vec![
            Panel {
                title: "throughput".to_owned(),
                x_label: "request rate (req/s)".to_owned(),
                y_label: "completed req/s".to_owned(),
                series: throughput,
            },
            Panel {
                title: "TTFT".to_owned(),
                x_label: "request rate (req/s)".to_owned(),
                y_label: "TTFT (ms)".to_owned(),
                series: ttft,
            },
        ],
        shared_x: true,
        x_range: None,
    })
}

/// Per-interval ratio of two cumulative counters, in percent: `Δnum / Δden` between successive
/// scrapes where the denominator moved.
pub(crate) fn counter_ratio_pct(num: &[(f64, f64)], den: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let den: BTreeMap<u64, f64> = den.iter().map(|&(t, v)| (t.to_bits(), v)).collect();
    let joined: Vec<(f64, f64, f64)> =
        num.iter().filter_map(|&(t, n)| den.get(&t.to_bits()).map(|&d| (t, n, d))).collect();
    joined
        .windows(2)
        .filter_map(|w| {
            let (dn, dd) = (w[1].1 - w[0].1, w[1].2 - w[0].2);
            (dd > 0.0).then(|| (w[1].0, (dn / dd * 100.0).clamp(0.0, 100.0)))
        })
        .collect()
}

/// Requests in flight over time: +1 at each send, -1 at each end.
pub(crate) fn in_flight(run: &RunData) -> Vec<(f64, f64)> {
    let mut events: Vec<(f64, i32)> = run.records.iter().flat_map(|r| [(r.sent, 1), (r.end, -1)]).collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut n = 0;
    let mut out = vec![(0.0, 0.0)];
    for (t, d) in events {
        n += d;
        out.push((t, f64::from(n)));
    }
    out
}

fn timeline(run: &RunData, index: usize) -> Figure {
    let mut panels = Vec::new();
    let series = |label: &str, kind, color, points: Vec<(f64, f64)>| Series {
        label: label.to_owned(),
        kind,
        color,
        points,
    };
    let panel = |title: &str, y_label: &str, series: Vec<Series>| Panel {
        title: title.to_owned(),
        x_label: "time since run start (s)".to_owned(),
        y_label: y_label.to_owned(),
        series: series.into_iter().filter(|s| !s.points.is_empty()).collect(),
    };
    if let Some(gpu) = run.samples.get("gpu") {
        let mb = |v: Vec<(f64, f64)>| v.into_iter().map(|(t, kb)| (t, kb / 1e3)).collect();
        panels.push(panel(
            "PCIe",
            "MB/s",
            vec![
                series("PCIe TX", SeriesKind::Line, 0, mb(gpu.series_combined("pcie_tx_kb_s", false))),
                series("PCIe RX", SeriesKind::Dashed, 1, mb(gpu.series_combined("pcie_rx_kb_s", false))),
            ],
        ));
        panels.push(panel(
            "GPU utilisation",
            "%",
            vec![series("GPU util", SeriesKind::Line, 2, gpu.series_combined("gpu_util_pct", true))],
        ));
    }
    if let Some(disk) = run.samples.get("disk") {
        let mb = |v: Vec<(f64, f64)>| v.into_iter().map(|(t, b)| (t, b / 1e6)).collect();
        panels.push(panel(
            "disk",
            "MB/s",
            vec![
                series("disk read", SeriesKind::Line, 3, mb(disk.series("read_bytes_s"))),
                series("disk write", SeriesKind::Dashed, 4, mb(disk.series("write_bytes_s"))),
            ],
        ));
    }
    if let Some(engine) = run.samples.get("engine") {
        let usage: Vec<(f64, f64)> =
            engine.metric("vllm:kv_cache_usage_perc").into_iter().map(|(t, v)| (t, v * 100.0)).collect();
        let hits = counter_ratio_pct(
            &engine.metric("vllm:prefix_cache_hits_total"),
            &engine.metric("vllm:prefix_cache_queries_total"),
        );
        let external = counter_ratio_pct(
            &engine.metric("vllm:external_prefix_cache_hits_total"),
            &engine.metric("vllm:external_prefix_cache_queries_total"),
        );
        panels.push(panel(
            "engine KV cache",
            "%",
            vec![
                series("KV usage", SeriesKind::Line, 5, usage),
                series("prefix-cache hit rate", SeriesKind::Dashed, 6, hits),
                series("offload hit rate", SeriesKind::Dashed, 7, external),
            ],
        ));
    }
    panels.retain(|p| !p.series.is_empty());
    panels.push(panel(
        "requests",
        "requests",
        vec![
            series("in flight", SeriesKind::Step, 0, in_flight(run)),
            series("arrivals", SeriesKind::Ticks, 1, run.records.iter().map(|r| (r.sent, 0.0)).collect()),
            series("completions", SeriesKind::Ticks, 2, run.records.iter().map(|r| (r.end, 1.0)).collect()),
        ],
    ));
    Figure {
        name: format!("timeline_{index}"),
        title: format!("Timeline of {}", run.display_label()),
        panels,
        shared_x: true,
        x_range: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check(f, input, expect)`: a pure series transformation gives exactly `expect`.
    fn check<I: ?Sized>(f: impl Fn(&I) -> Vec<(f64, f64)>, input: &I, expect: &[(f64, f64)]) {
        assert_eq!(f(input), expect);
    }

    #[test]
    fn medians_per_prompt_length() {
        // Few distinct lengths: one point each, at the length.
        check(
            binned_median,
            &[(100.0, 5.0), (100.0, 1.0), (100.0, 3.0), (50.0, 2.0)][..],
            &[(50.0, 2.0), (100.0, 3.0)],
        );
        // Many distinct lengths: MAX_BINS bins of equal count, at their median length.
        let many: Vec<(f64, f64)> = (0..24).map(|i| (f64::from(i), f64::from(i * 10))).collect();
        let bins = binned_median(&many);
        assert_eq!(bins.len(), MAX_BINS);
        assert_eq!(bins[0], (0.5, 5.0));
        assert_eq!(bins[11], (22.5, 225.0));
    }

    #[test]
    fn cdf_steps() {
        check(
            |v: &[f64]| cdf_points(v.to_vec()),
            &[3.0, 1.0, 2.0, f64::NAN][..],
            &[(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)],
        );
        assert!(cdf_points(Vec::new()).is_empty());
        let thinned = cdf_points((0..10_000).map(f64::from).collect());
        assert_eq!(thinned.len(), 2000);
        assert_eq!(thinned.last(), Some(&(9999.0, 1.0)));
    }

    #[test]
    fn hit_rate_from_cumulative_counters() {
        let hits = [(1.0, 0.0), (2.0, 30.0), (3.0, 30.0), (4.0, 90.0)];
        let queries = [(1.0, 0.0), (2.0, 100.0), (3.0, 100.0), (4.0, 200.0)];
        // The interval without queries (2..3) has no rate.
        check(|_: &()| counter_ratio_pct(&hits, &queries), &(), &[(2.0, 30.0), (4.0, 60.0)]);
    }
}
