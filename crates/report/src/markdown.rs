//! `report.md`.

use std::fmt::Write as _;

use crate::compare::Comparison;
use crate::figure::Figure;
use crate::RunData;

/// The report title: the run labels, and "(EMULATED)" when any run is emulated.
pub(crate) fn title(runs: &[RunData]) -> String {
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    let tag = if runs.iter().any(|r| r.summary.emulated) { " (EMULATED)" } else { "" };
    format!("kvlab report: {}{tag}", labels.join(" vs "))
}

pub(crate) const EMULATED_BANNER: &str = "Runs marked emulated come from kvlab's emulated engine (a cost \
     model, not a GPU): they are not measurements of a real engine.";

/// One row per run: label, engine, tier, counts, directory name.
pub(crate) fn runs_rows(runs: &[RunData]) -> Vec<[String; 7]> {
    runs.iter()
        .map(|r| {
            let s = &r.summary;
            let failed = if s.failed_by_class.is_empty() {
                s.failed.to_string()
            } else {
                let classes: Vec<String> =
                    s.failed_by_class.iter().map(|(c, n)| format!("{c}: {n}")).collect();
                format!("{} ({})", s.failed, classes.join(", "))
            };
            let rate = r.request_rate.map_or_else(|| "inf".to_owned(), |x| format!("{x}"));
            [
                r.display_label(),
                s.engine.clone(),
                s.tier.clone(),
                rate,
                s.completed.to_string(),
                failed,
                r.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            ]
        })
        .collect()
}

pub(crate) const RUNS_HEADER: [&str; 7] =
    ["run", "engine", "tier", "request rate (req/s)", "completed", "failed", "directory"];

/// Why a standard plot is absent, for the plots that were left out.
pub(crate) fn missing_plots(figures: &[Figure]) -> Vec<(&'static str, &'static str)> {
    let has = |name: &str| figures.iter().any(|f| f.name == name);
    let mut out = Vec::new();
    for (name, why) in [
        (
            "ttft_vs_prompt_len",
            "fewer than three prompt lengths among the completed requests (see ttft_over_time)",
        ),
        ("ttft_cdf", "no completed request"),
        ("itl_cdf", "no request with two or more output chunks"),
        ("sweep", "needs runs of one engine and tier at two or more request rates"),
    ] {
        if !has(name) {
            out.push((name, why));
        }
    }
    out
}

pub(crate) fn render(
    runs: &[RunData],
    comparison: &Comparison,
    answer: Option<&crate::answer::Answer>,
    figures: &[Figure],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", title(runs));
    if runs.iter().any(|r| r.summary.emulated) {
        let _ = writeln!(out, "> {EMULATED_BANNER}\n");
    }
    for run in runs {
        if let Some(why) = &run.incomplete {
            let _ = writeln!(out, "> **INCOMPLETE**: `{}`: {why}\n", run.label);
        }
    }
    let tiers = figures.iter().find(|f| f.name == "tiers").map(|f| f.name.as_str());
    out.push_str(&crate::answer::markdown(answer, tiers));
    let _ = writeln!(out, "## Runs\n");
    let _ = writeln!(out, "| {} |", RUNS_HEADER.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(RUNS_HEADER.len()));
    for row in runs_rows(runs) {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let _ = writeln!(out, "\n## Comparison\n");
    if runs.len() > 1 {
        let _ = writeln!(out, "Deltas are to the first run, `{}`.\n", comparison.runs[0]);
    }
    out.push_str(&comparison.markdown());
    let _ = writeln!(out, "\n## Plots\n");
    for figure in figures.iter().filter(|f| f.name != "tiers") {
        let _ = writeln!(out, "### {}\n", figure.title);
        let _ = writeln!(out, "![{}](plots/{}.svg)\n", figure.title, figure.name);
    }
    for (name, why) in missing_plots(figures) {
        let _ = writeln!(out, "- no `{name}` plot: {why}");
    }
    out.push_str(&crate::nvtx::markdown(runs));
    out
}
