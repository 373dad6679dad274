//! `report.html`: one self-contained page. Plots are inline SVG, styles inline, no scripts, and a
//! Content-Security-Policy that forbids every fetch, so opening it makes no network request.

use std::fmt::Write as _;

use crate::compare::Comparison;
use crate::figure::Figure;
use crate::markdown::{missing_plots, runs_rows, title, EMULATED_BANNER, RUNS_HEADER};
use crate::RunData;

/// The page's Content-Security-Policy: nothing may be loaded from anywhere.
pub(crate) const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:1000px;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:14px}\
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th:first-child,td:first-child{text-align:left}\
th{background:#f0f0f0}\
.banner{background:#fff3cd;border:1px solid #e0c060;padding:0.6em 1em}\
figure{margin:1.5em 0}svg{max-width:100%;height:auto}";

/// Escapes text for HTML content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    out.push_str("<table>\n<tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// The page; `svgs[i]` is the SVG document of `figures[i]`.
pub(crate) fn render(
    runs: &[RunData],
    comparison: &Comparison,
    answer: Option<&crate::answer::Answer>,
    figures: &[Figure],
    svgs: &[String],
) -> String {
    let title = title(runs);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    if runs.iter().any(|r| r.summary.emulated) {
        let _ = writeln!(out, "<p class=\"banner\">{}</p>", escape(EMULATED_BANNER));
    }
    for run in runs {
        if let Some(why) = &run.incomplete {
            let _ =
                writeln!(out, "<p class=\"banner\">INCOMPLETE: {}: {}</p>", escape(&run.label), escape(why));
        }
    }
    if let Some(crate::answer::Answer { headline, table: rows, .. }) = answer {
        out.push_str("<h2>Does offloading pay?</h2>\n");
        if !headline.is_empty() {
            out.push_str("<ul>\n");
            for line in headline {
                let _ = writeln!(out, "<li>{}</li>", escape(line));
            }
            out.push_str("</ul>\n");
        }
        let header: Vec<String> = crate::answer::HEADER.iter().map(|s| (*s).to_owned()).collect();
        table(&mut out, &header, rows);
        if let Some((figure, svg)) = figures.iter().zip(svgs).find(|(f, _)| f.name == "tiers") {
            let start = svg.find("<svg").unwrap_or(0);
            let _ = write!(out, "<figure id=\"{}\">\n{}\n</figure>\n", escape(&figure.name), &svg[start..]);
        }
    }
    out.push_str("<h2>Runs</h2>\n");
    let header: Vec<String> = RUNS_HEADER.iter().map(|s| (*s).to_owned()).collect();
    let rows: Vec<Vec<String>> = runs_rows(runs).into_iter().map(Vec::from).collect();
    table(&mut out, &header, &rows);
    out.push_str("<h2>Comparison</h2>\n");
    let (header, rows) = comparison.cells();
    table(&mut out, &header, &rows);
    if runs.len() > 1 {
        let _ = writeln!(out, "<p>{}</p>", escape(&crate::compare::noise_legend().replace('`', "")));
    }
    out.push_str("<h2>Plots</h2>\n");
    for (figure, svg) in figures.iter().zip(svgs).filter(|(f, _)| f.name != "tiers") {
        let start = svg.find("<svg").unwrap_or(0);
        let _ = write!(out, "<figure id=\"{}\">\n{}\n</figure>\n", escape(&figure.name), &svg[start..]);
    }
    let missing = missing_plots(figures);
    if !missing.is_empty() {
        out.push_str("<ul>\n");
        for (name, why) in missing {
            let _ = writeln!(out, "<li>no {} plot: {}</li>", escape(name), escape(why));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}
