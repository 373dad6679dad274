//! `report.md`: a short markdown summary of one run.

use std::fmt::Write as _;

use crate::resolved::ResolvedRun;

/// The markdown report of a run. Emulated runs say so in the title and in a banner.
pub fn report_md(run: &ResolvedRun, s: &stats::Summary, table: &str) -> String {
    let mut out = String::new();
    let tag = if run.emulated { " (EMULATED)" } else { "" };
    let _ = writeln!(out, "# kvlab run `{}`{tag}\n", run.label);
    if run.emulated {
        let _ = writeln!(
            out,
            "> These numbers come from kvlab's **emulated** engine (a cost model, not a GPU). They are \
             not measurements of a real engine.\n"
        );
    }
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| engine | {} |", run.engine);
    let _ = writeln!(out, "| tier | {} |", run.tier);
    let _ = writeln!(out, "| model | {} |", run.model);
    let _ = writeln!(
        out,
        "| workload | {} ({} requests, prompt {} tokens, output {} tokens) |",
        run.workload.workload, run.workload.num_requests, run.workload.prompt_len, run.workload.gen_len
    );
    let rate = if run.workload.request_rate.is_finite() {
        format!("{}", run.workload.request_rate)
    } else {
        "inf".into()
    };
    let _ = writeln!(out, "| request rate | {rate} req/s |");
    let _ = writeln!(out, "| completed / failed | {} / {} |", s.completed, s.failed);
    let _ = writeln!(out, "| TTFT mean / p99 | {:.2} / {:.2} ms |", s.mean_ttft_ms, s.p99_ttft_ms);
    let _ = writeln!(out, "| TPOT mean / p99 | {:.2} / {:.2} ms |", s.mean_tpot_ms, s.p99_tpot_ms);
    let _ = writeln!(out, "| cached prompt tokens | {} of {} |", s.cached_tokens_total, s.total_input_tokens);
    let _ = writeln!(out, "\n```\n{}\n```\n", table.trim_end());
    let _ = writeln!(out, "Files: `requests.jsonl`, `requests.csv`, `summary.json`, `samples/*.csv`, `engine.log`, `run.toml`, `env.json`.");
    out
}
