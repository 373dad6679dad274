//! Reports, plots and regression gates over kvlab result directories.
//!
//! - [`RunData::load`] reads a result directory (`summary.json`, `requests.jsonl`, `run.toml`,
//!   `samples/*.csv`).
//! - [`write_report`] writes `report.md`, a self-contained `report.html` (inline SVG, no network)
//!   and `plots/*.svg|png` for one or more runs, and returns the terminal comparison table.
//! - [`compare::Comparison`] sets runs side by side: each summary metric, the delta to the first
//!   run and whether it is beyond noise (seeded bootstrap confidence intervals).
//! - [`regress`] checks summaries against baselines (insta snapshots under `results/baselines/`)
//!   with the thresholds of `configs/regress.toml` (the pinned, deterministic regression
//!   scenario they gate in CI is the emulator's, `emulator::scenario`: this crate reads result
//!   directories and runs no engine).
//!
//! Anything from the emulated engine is labelled "emulated" in titles, legends and tables.

pub mod answer;
pub mod compare;
mod figure;
mod html;
mod markdown;
mod nvtx;
pub mod plots;
pub mod regress;
mod render;
mod result;
mod sources;

use std::path::{Path, PathBuf};

pub use crate::figure::{Figure, Panel, Series, SeriesKind};
pub use crate::result::{parse_summary, read_records, read_summary, RunData, Table};
pub use crate::sources::{tokens_by_source, CounterOrigin};

/// Why a report or a regression check failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("bad glob pattern `{pattern}`: {message}")]
    Glob { pattern: String, message: String },
    #[error("{}: field `{field}` has the wrong type", file.display())]
    Field { file: PathBuf, field: String },
    /// An error in an input file: `FILE:LINE: FIELD: message` (a TOML key, JSON field path or
    /// CSV column; `(top level)` outside any).
    #[error(transparent)]
    Config(#[from] stats::Located),
    #[error("no result directory matches `{0}` (a result directory holds summary.json)")]
    NoMatch(String),
    #[error("baseline `{name}` not found at {} (run with --bless to record it)", path.display())]
    NoBaseline { name: String, path: PathBuf },
    #[error("plot `{name}`: {message}")]
    Plot { name: String, message: String },
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone)]
pub struct ReportOutput {
    pub markdown: PathBuf,
    pub html: PathBuf,
    /// Every plot file, SVG and PNG.
    pub plots: Vec<PathBuf>,
    /// The comparison table for the terminal (tabled).
    pub table: String,
}

/// Writes `report.md`, `report.html` and `plots/` for `runs` into `out` (created if missing).
///
/// The first run is the reference of the comparison. Plots that have no data (a timeline without
/// samples, a sweep of fewer than two request rates) are left out, and the report says so.
pub fn write_report(runs: &[RunData], out: &Path) -> Result<ReportOutput, Error> {
    let io = io_err;
    let plots_dir = out.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(io(&plots_dir))?;
    // The answer's rows each take a bootstrap: computed once, for the figure, markdown and HTML.
    let answer = answer::Answer::of(runs);
    let figures = plots::figures_with(runs, answer.as_ref());
    let comparison = compare::Comparison::new(runs);
    let mut plot_files = Vec::new();
    let mut svgs = Vec::new();
    for figure in &figures {
        let svg = render::svg(figure)?;
        let png = render::png(figure)?;
        let svg_path = plots_dir.join(format!("{}.svg", figure.name));
        let png_path = plots_dir.join(format!("{}.png", figure.name));
        stats::write_atomic(&svg_path, svg.as_bytes()).map_err(io(&svg_path))?;
        stats::write_atomic(&png_path, &png).map_err(io(&png_path))?;
        plot_files.push(svg_path);
        plot_files.push(png_path);
        svgs.push(svg);
    }
    let markdown = out.join("report.md");
    let html = out.join("report.html");
    let md = markdown::render(runs, &comparison, answer.as_ref(), &figures);
    stats::write_atomic(&markdown, md.as_bytes()).map_err(io(&markdown))?;
    let page = html::render(runs, &comparison, answer.as_ref(), &figures, &svgs);
    stats::write_atomic(&html, page.as_bytes()).map_err(io(&html))?;
    Ok(ReportOutput { markdown, html, plots: plot_files, table: comparison.terminal_table() })
}

/// Expands the command line's result directories: each argument is a directory or a glob
/// pattern; a directory without `summary.json` or `requests.jsonl` whose subdirectories have
/// one (an experiment's root) stands for those subdirectories, in name order. Errors on an argument that matches no
/// result directory.
pub fn expand_dirs<S: AsRef<str>>(args: &[S]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for arg in args {
        let arg = arg.as_ref();
        let matches: Vec<PathBuf> = if arg.contains(['*', '?', '[']) {
            let paths = glob::glob(arg)
                .map_err(|e| Error::Glob { pattern: arg.to_owned(), message: e.to_string() })?;
            let mut v: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
            v.sort();
            v
        } else {
            vec![PathBuf::from(arg)]
        };
        let before = out.len();
        for path in matches {
            if is_result_dir(&path) {
                out.push(path);
            } else if path.is_dir() {
                let mut children: Vec<PathBuf> = std::fs::read_dir(&path)
                    .map_err(io_err(&path))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| is_result_dir(p))
                    .collect();
                children.sort();
                out.extend(children);
            }
        }
        if out.len() == before {
            return Err(Error::NoMatch(arg.to_owned()));
        }
    }
    Ok(out)
}

/// A result directory: it has `summary.json`, or at least `requests.jsonl` (a run killed before
/// its summary; [`RunData::load`] reads it as incomplete).
fn is_result_dir(path: &Path) -> bool {
    path.join("summary.json").is_file() || path.join("requests.jsonl").is_file()
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { path, source }
}
