//! The "Prefill vs decode (NVTX)" section, for runs profiled with `cargo xtask profile`: time in
//! NVTX ranges by side (the client's per-request ranges, the engine's per-step ranges) and phase,
//! from `profile/nvtx_sum.csv` (written by the lab from `nsys stats --report nvtx_sum`).
//!
//! Runs without that file contribute nothing; the section is left out when no run has one. A
//! file that cannot be read is named with the reason, never a panic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::RunData;

/// The file this section reads, relative to a run directory.
pub(crate) const NVTX_SUM: &str = "profile/nvtx_sum.csv";

/// Time per (side, phase) of one run: `(instances, total ns)`.
type Totals = BTreeMap<(String, String), (u64, f64)>;

/// Reads a run's `profile/nvtx_sum.csv`; `Ok(None)` when the run was not profiled.
fn read(dir: &Path) -> Result<Option<Totals>, String> {
    let path = dir.join(NVTX_SUM);
    if !path.is_file() {
        return Ok(None);
    }
    let mut reader = csv::Reader::from_path(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let headers = reader.headers().map_err(|e| format!("{}: {e}", path.display()))?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("{}: no column `{name}`", path.display()))
    };
    let (side, phase, inst, total) = (col("side")?, col("phase")?, col("instances")?, col("total_ns")?);
    let mut totals = Totals::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| format!("{}:{line}: {e}", path.display()))?;
        let field = |c: usize| rec.get(c).unwrap_or("");
        let n: u64 = field(inst).parse().map_err(|_| {
            format!("{}:{line}: `instances` is not a count: {:?}", path.display(), field(inst))
        })?;
        let t: f64 =
            field(total).parse().ok().filter(|t: &f64| t.is_finite() && *t >= 0.0).ok_or_else(|| {
                format!("{}:{line}: `total_ns` is not a duration: {:?}", path.display(), field(total))
            })?;
        let e = totals.entry((field(side).to_owned(), field(phase).to_owned())).or_insert((0, 0.0));
        e.0 += n;
        e.1 += t;
    }
    Ok(Some(totals))
}

/// The markdown section, or an empty string when no run was profiled.
pub(crate) fn markdown(runs: &[RunData]) -> String {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for run in runs {
        match read(&run.dir) {
            Ok(None) => {}
            Ok(Some(totals)) => rows.push((run.display_label(), totals)),
            Err(why) => problems.push((run.display_label(), why)),
        }
    }
    if rows.is_empty() && problems.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(out, "\n## Prefill vs decode (NVTX)\n");
    let _ = writeln!(
        out,
        "Time inside NVTX ranges, from `{NVTX_SUM}` (Nsight Systems). Client: the load generator's \
         per-request ranges (`prefill` from send to first token, `decode` to the end). Engine: the \
         engine's per-step ranges (`execute_new_N_cached_M`: only new requests = prefill, only \
         continuing = decode, both = mixed). Client ranges of concurrent requests overlap, so their \
         total can exceed the wall time.\n"
    );
    let _ = writeln!(out, "| run | side | phase | instances | total (ms) | share of side |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (label, totals) in &rows {
        let mut side_total: BTreeMap<&str, f64> = BTreeMap::new();
        for ((side, _), (_, t)) in totals {
            *side_total.entry(side.as_str()).or_default() += t;
        }
        let rank = |phase: &str| ["prefill", "decode", "mixed"].iter().position(|p| *p == phase).unwrap_or(3);
        let mut ordered: Vec<_> = totals.iter().filter(|((side, _), _)| side != "other").collect();
        ordered.sort_by_key(|((side, phase), _)| (side.clone(), rank(phase)));
        for ((side, phase), (n, t)) in ordered {
            let share = match side_total.get(side.as_str()) {
                Some(&all) if all > 0.0 => format!("{:.1}%", 100.0 * t / all),
                _ => "-".to_owned(),
            };
            let _ = writeln!(out, "| {label} | {side} | {phase} | {n} | {:.3} | {share} |", t / 1e6);
        }
        if !totals.keys().any(|(side, _)| side != "other") {
            let _ = writeln!(out, "| {label} | - | no prefill/decode ranges captured | 0 | 0.000 | - |");
        }
    }
    for (label, why) in problems {
        let _ = writeln!(out, "\n- `{label}`: the NVTX summary could not be read: {why}");
    }
    out
}
