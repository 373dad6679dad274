//! Renderings of sweep rows: `sim.csv`, a text table and hit-ratio curves (SVG).

use std::fmt::Write;

use crate::sweep::Row;

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

const COLORS: [&str; 8] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Token hit ratio against capacity (log scale when capacities span more than a decade), one
/// line per policy, `belady` dashed, for the rows of trace `trace`. Unbounded capacities are
/// left out of the curve.
pub fn svg(rows: &[Row], trace: &str) -> String {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.trace == trace && r.capacity_blocks != u64::MAX && r.capacity_blocks > 0)
        .collect();
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 60.0, 150.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let min = rows.iter().map(|r| r.capacity_blocks).min().unwrap_or(1) as f64;
    let max = rows.iter().map(|r| r.capacity_blocks).max().unwrap_or(1) as f64;
    let log = max / min > 10.0;
    let xpos = |c: u64| {
        let c = c as f64;
        let f = if max <= min {
            0.5
        } else if log {
            (c.ln() - min.ln()) / (max.ln() - min.ln())
        } else {
            (c - min) / (max - min)
        };
        left + f * pw
    };
    let ypos = |r: f64| top + (1.0 - r) * ph;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">Token hit ratio vs capacity: {}</text>"#,
        left + pw / 2.0,
        escape(trace.rsplit('/').next().unwrap_or(trace))
    );
    for i in 0..=5 {
        let r = f64::from(i) / 5.0;
        let y = ypos(r);
        let _ = writeln!(out, r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##, left + pw);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{:.0}%</text>"#,
            left - 6.0,
            y + 4.0,
            r * 100.0
        );
    }
    let mut caps: Vec<u64> = rows.iter().map(|r| r.capacity_blocks).collect();
    caps.sort_unstable();
    caps.dedup();
    for c in &caps {
        let x = xpos(*c);
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle" font-size="10">{c}</text>"#,
            top + ph + 14.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">capacity (blocks{})</text>"#,
        left + pw / 2.0,
        h - 12.0,
        if log { ", log scale" } else { "" }
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let mut policies: Vec<&str> = Vec::new();
    for r in &rows {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    for (i, p) in policies.iter().enumerate() {
        let mut pts: Vec<(u64, f64)> = rows
            .iter()
            .filter(|r| r.policy == *p)
            .map(|r| (r.capacity_blocks, r.result.token_hit_ratio()))
            .collect();
        pts.sort_by_key(|p| p.0);
        let color = COLORS[i % COLORS.len()];
        let dash = if *p == "belady" { r#" stroke-dasharray="6 4""# } else { "" };
        let path: Vec<String> = pts.iter().map(|(c, r)| format!("{:.1},{:.1}", xpos(*c), ypos(*r))).collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        );
        let ly = top + 16.0 * i as f64 + 8.0;
        let lx = left + pw + 10.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(p)
        );
    }
    out.push_str("</svg>\n");
    out
}
