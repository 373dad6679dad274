//! `cargo xtask report RESULT_DIR... [--out DIR]`: report.md, report.html and plots/ for one or
//! more result directories, and the comparison table on the terminal.

use std::path::PathBuf;

use anyhow::Context as _;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReportArgs {
    /// Result directories or glob patterns (quoted globs are expanded here); a directory holding
    /// result directories (an experiment's root) stands for all of them. The first is the
    /// reference of the comparison.
    #[arg(required = true)]
    pub(crate) dirs: Vec<String>,
    /// Where to write the report (default: the result directory itself for one run, the common
    /// parent directory for several).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

pub(crate) fn run(args: ReportArgs) -> anyhow::Result<()> {
    let dirs = report::expand_dirs(&args.dirs)?;
    let runs = dirs
        .iter()
        .map(|dir| report::RunData::load(dir))
        .collect::<Result<Vec<_>, _>>()
        .context("reading the result directories")?;
    let out = match args.out {
        Some(out) => out,
        None => default_out(&dirs)?,
    };
    let written = report::write_report(&runs, &out)?;
    println!("{}", written.table);
    println!("report: {}", written.markdown.display());
    println!("html:   {}", written.html.display());
    println!("plots:  {} files in {}", written.plots.len(), out.join("plots").display());
    Ok(())
}

/// One directory: itself. Several: their common parent, when they have one.
fn default_out(dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if let [one] = dirs {
        return Ok(one.clone());
    }
    let parent = dirs[0].parent().map(std::path::Path::to_path_buf);
    match parent {
        Some(p) if dirs.iter().all(|d| d.parent() == Some(p.as_path())) => Ok(p),
        _ => anyhow::bail!("the result directories have no common parent directory: pass --out DIR"),
    }
}
