//! Renderings of sweep rows: `sim.csv`, a text table and hit-ratio curves (SVG, plotters).

use std::fmt::Write;

use crate::sweep::Row;
use crate::SimError;

/// The header of `sim.csv`.
pub const CSV_HEADER: &str = "trace,policy,capacity,capacity_blocks,block_size,requests,block_hit_ratio,\
token_hit_ratio,mean_request_token_hit_ratio,tier_hits_gpu,tier_hits_cpu,tier_hits_disk,tier_hits_remote,\
prefill_tokens_saved,ttft_saved_s";

fn capacity_blocks(n: u64) -> String {
    if n == u64::MAX {
        "inf".to_owned()
    } else {
        n.to_string()
    }
}

/// Quotes a CSV field when it needs it.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `sim.csv`: one line per row; tier hits are in blocks; an unbounded capacity is `inf`.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in rows {
        let x = &r.result;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{:.6},{:.6},{:.6},{},{},{},{},{},{}",
            field(&r.trace),
            r.policy,
            r.capacity,
            capacity_blocks(r.capacity_blocks),
            r.block_size,
            x.requests,
            x.block_hit_ratio(),
            x.token_hit_ratio(),
            x.mean_request_token_hit_ratio,
            x.tier_hit_blocks[0],
            x.tier_hit_blocks[1],
            x.tier_hit_blocks[2],
            x.tier_hit_blocks[3],
            x.prefill_tokens_saved,
            x.ttft_saved_s.map_or(String::new(), |s| format!("{s:.3}")),
        );
    }
    out
}

/// A fixed-width table for the terminal.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<20} {:>12} {:>12} {:>9} {:>9} {:>14} {:>12}",
        "trace", "policy", "capacity", "blocks", "block hit", "token hit", "prefill saved", "TTFT saved s"
    );
    for r in rows {
        let x = &r.result;
        let name = r.trace.rsplit('/').next().unwrap_or(&r.trace);
        let _ = writeln!(
            out,
            "{:<28} {:<20} {:>12} {:>12} {:>8.2}% {:>8.2}% {:>14} {:>12}",
            name,
            r.policy,
            r.capacity,
            capacity_blocks(r.capacity_blocks),
            100.0 * x.block_hit_ratio(),
            100.0 * x.token_hit_ratio(),
            x.prefill_tokens_saved,
            x.ttft_saved_s.map_or("-".to_owned(), |s| format!("{s:.1}")),
        );
    }
    out
}

/// Token hit ratio against capacity (log scale when capacities span more than a decade), one
/// line per policy, `belady` dashed, for the rows of trace `trace`, drawn with plotters
/// ([`chart::LineChart`]). Unbounded capacities are left out of the curve.
pub fn svg(rows: &[Row], trace: &str) -> Result<String, SimError> {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.trace == trace && r.capacity_blocks != u64::MAX && r.capacity_blocks > 0)
        .collect();
    let min = rows.iter().map(|r| r.capacity_blocks).min().unwrap_or(1) as f64;
    let max = rows.iter().map(|r| r.capacity_blocks).max().unwrap_or(1) as f64;
    let log = max / min > 10.0;
    let mut policies: Vec<&str> = Vec::new();
    for r in &rows {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let lines = policies
        .iter()
        .map(|p| {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.policy == *p)
                .map(|r| (r.capacity_blocks as f64, r.result.token_hit_ratio()))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let stroke = if *p == "belady" { chart::Stroke::Dashed } else { chart::Stroke::Solid };
            chart::Line { label: (*p).to_owned(), points, stroke }
        })
        .collect();
    let figure = chart::LineChart {
        title: format!("Token hit ratio vs capacity: {}", trace.rsplit('/').next().unwrap_or(trace)),
        x_label: format!("capacity (blocks{})", if log { ", log scale" } else { "" }),
        y_label: "token hit ratio".to_owned(),
        x_scale: if log { chart::Scale::Log } else { chart::Scale::Linear },
        x_ticks: chart::Ticks::Whole,
        y_range: Some((0.0, 1.0)),
        y_ticks: chart::Ticks::Percent,
        size: (720, 420),
        lines,
    };
    figure.svg().map_err(|message| SimError::Plot { trace: trace.to_owned(), message })
}

/// What `sim.json` holds besides its definitions: the sweep and what it was asked.
#[derive(Debug, Clone, Copy)]
pub struct JsonInputs<'a> {
    pub swept_tier: kvcache::Tier,
    pub tier_model: crate::TierModel,
    pub capacities: &'a [crate::Capacity],
    pub model: Option<&'a str>,
    pub gpu: Option<&'a str>,
    pub traces: &'a [crate::SimTrace],
    pub rows: &'a [Row],
    pub learned: &'a [crate::LearnedReport],
    pub tuned: &'a [crate::TunedReport],
}

/// `sim.json` (version 1): the sweep, its inputs, and what each ratio means.
pub fn json(i: &JsonInputs<'_>) -> serde_json::Value {
    serde_json::json!({
        "v": 1,
        "swept_tier": i.swept_tier,
        "tier_model": i.tier_model,
        "capacities": i.capacities.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "model": i.model,
        "gpu": i.gpu,
        "traces": i.traces,
        "rows": i.rows,
        "learned": i.learned,
        "tuned": i.tuned,
        "definitions": {
            "block_hit_ratio": "pooled: leading resident blocks over queried blocks, over all requests",
            "token_hit_ratio": "pooled: hit tokens over prompt tokens (a prompt's last block may be partial)",
            "mean_request_token_hit_ratio": "mean over requests of each request's token hit ratio",
            "prefill_tokens_saved": "hit tokens, at most prompt - 1 per request",
            "ttft_saved_s": "sum over requests of the cost model's TTFT without cache minus with the hit, alone on the engine",
        },
    })
}

/// The file name of a trace's hit-ratio curves: `hit_ratio_<stem>.svg`, the stem the trace's
/// file name with every character but letters and digits made `_`.
pub fn svg_name(trace: &str) -> String {
    let stem: String = trace
        .rsplit('/')
        .next()
        .unwrap_or(trace)
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect();
    format!("hit_ratio_{stem}.svg")
}
