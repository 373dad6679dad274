//! `cargo xtask regress [RESULT_DIR...] [--bless]`: summaries against their baselines.
//!
//! Without result directories it runs the pinned scenario (the emulated engine in virtual time,
//! deterministic), writes its result directories and report under `--out`, and checks them
//! against `results/baselines/emulated-pinned-*.snap`. With result directories it checks each
//! against the baseline named in its `run.toml`. Prints the table and fails on any regression.
//! `--bless` records the current numbers as the baselines instead.

use std::path::PathBuf;

use anyhow::Context as _;
use report::regress::{self, Baselines, Subject, Thresholds};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RegressArgs {
    /// Result directories (or globs) to check; none: the pinned emulated scenario.
    pub(crate) dirs: Vec<String>,
    /// Accept the current numbers: write them as the baselines.
    #[arg(long)]
    pub(crate) bless: bool,
    /// The thresholds file.
    #[arg(long, default_value = "configs/regress.toml")]
    pub(crate) config: PathBuf,
    /// The directory of baseline snapshots.
    #[arg(long, default_value = "results/baselines")]
    pub(crate) baselines: PathBuf,
    /// Where the pinned scenario writes its result directories and report.
    #[arg(long, default_value = "results/regress-pinned")]
    pub(crate) out: PathBuf,
}

pub(crate) fn run(args: RegressArgs) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let config = root.join(&args.config);
    let thresholds = Thresholds::load(&config)?;
    let baselines = Baselines::new(root.join(&args.baselines));
    let subjects = if args.dirs.is_empty() {
        pinned_subjects(&root.join(&args.out))?
    } else {
        report::expand_dirs(&args.dirs)?
            .iter()
            .map(|dir| regress::subject_from_dir(dir))
            .collect::<Result<Vec<_>, _>>()?
    };
    if args.bless {
        for subject in &subjects {
            let path = baselines.write(subject, thresholds.decimals)?;
            println!("blessed {}", path.display());
        }
        return Ok(());
    }
    let outcome = regress::check(&subjects, &baselines, &thresholds)?;
    println!("{}", outcome.table());
    if !outcome.passed() {
        anyhow::bail!("regression against the baselines: {}", outcome.summary_line());
    }
    println!("regress: {} baselines, no regression", subjects.len());
    Ok(())
}

/// Runs the pinned scenario, writes its result directories and their report under `out`.
fn pinned_subjects(out: &std::path::Path) -> anyhow::Result<Vec<Subject>> {
    let runs = emulator::scenario::pinned().context("running the pinned scenario")?;
    let (subjects, written) = regress::pinned_subjects(
        out,
        runs.iter().map(|r| {
            let subject = Subject { name: r.name.clone(), summary: r.summary.clone() };
            (subject, |dir: &std::path::Path| r.write_result_dir(dir))
        }),
    )?;
    println!("pinned scenario (emulated, virtual time): report {}", written.html.display());
    Ok(subjects)
}
