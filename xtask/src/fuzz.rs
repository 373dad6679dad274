//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (one per parser of outside input), run
//! with cargo-fuzz, one at a time.
//!
//! - `cargo xtask fuzz --list` prints the target names, one a line, read from `fuzz/Cargo.toml`
//!   (cargo-fuzz is not needed for that).
//! - `cargo xtask fuzz [TARGET] [--time SECS]` fuzzes TARGET (all targets, one after another,
//!   when none is named) for SECS seconds each, then prints a table of executions and crashes.
//!   It fails when a target crashed; the crashing input is in `fuzz/artifacts/<target>/`.
//!
//! Stable toolchain: cargo-fuzz passes `-Z` flags (the address sanitizer) to rustc, which only a
//! nightly compiler accepts; `RUSTC_BOOTSTRAP=1` lets the pinned stable compiler accept them, so
//! no nightly toolchain is needed. cargo-fuzz itself: `cargo install cargo-fuzz --locked`.
//!
//! Corpus: the seeds committed in `fuzz/corpus/<target>/` are read; what the fuzzer finds goes
//! to `fuzz/target/corpus/<target>/` (ignored), so a run leaves the checkout clean.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub(crate) struct FuzzArgs {
    /// The target to fuzz (see `--list`); all of them, one after another, when omitted.
    target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Print the target names, one a line, and exit.
    #[arg(long)]
    list: bool,
}

/// What one target's run did.
struct Outcome {
    target: String,
    /// Seconds libFuzzer ran (its `Done N runs in S second(s)`), without the build.
    seconds: Option<u64>,
    executions: Option<u64>,
    crash: Option<String>,
}

pub(crate) fn run(args: FuzzArgs) -> Result<()> {
    let fuzz_dir = crate::workspace_root().join("fuzz");
    let manifest = fuzz_dir.join("Cargo.toml");
    let text =
        std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let targets = target_names(&text);
    if args.list {
        for t in &targets {
            println!("{t}");
        }
        return Ok(());
    }
    let selected: Vec<String> = match &args.target {
        Some(t) if targets.contains(t) => vec![t.clone()],
        Some(t) => bail!("unknown fuzz target `{t}`; known: {}", targets.join(", ")),
        None => targets,
    };
    check_cargo_fuzz()?;
    eprintln!("building the fuzz targets");
    let status = cargo_fuzz(&fuzz_dir).arg("build").status().context("running `cargo fuzz build`")?;
    if !status.success() {
        bail!("`cargo fuzz build` failed ({status})");
    }
    let mut outcomes = Vec::new();
    for target in &selected {
        outcomes.push(fuzz_one(&fuzz_dir, target, args.time)?);
    }
    println!();
    println!("{}", table(&outcomes, args.time));
    let crashed: Vec<&str> =
        outcomes.iter().filter(|o| o.crash.is_some()).map(|o| o.target.as_str()).collect();
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {} (inputs in fuzz/artifacts/)", crashed.join(", "));
    }
    Ok(())
}

/// The `name` of every `[[bin]]` table, in file order.
fn target_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
            continue;
        }
        if !in_bin {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if key.trim() == "name" {
                names.push(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    names
}

fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg("fuzz").current_dir(fuzz_dir).env("RUSTC_BOOTSTRAP", "1");
    c
}

fn check_cargo_fuzz() -> Result<()> {
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("cargo-fuzz is not installed: run `cargo install cargo-fuzz --locked`");
    }
    Ok(())
}

/// Runs one target for `secs` seconds, echoing libFuzzer's output, and reads its outcome.
fn fuzz_one(fuzz_dir: &Path, target: &str, secs: u64) -> Result<Outcome> {
    let work = fuzz_dir.join("target").join("corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let seeds = fuzz_dir.join("corpus").join(target);
    eprintln!("fuzzing {target} for {secs} s");
    let mut child = cargo_fuzz(fuzz_dir)
        .arg("run")
        .arg(target)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running `cargo fuzz run {target}`"))?;
    let mut executions = None;
    let mut seconds = None;
    let mut crash = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading the fuzzer's output")?;
            eprintln!("{line}");
            if let Some(n) = parse_executions(&line) {
                executions = Some(n);
            }
            if let Some(secs) = parse_done_seconds(&line) {
                seconds = Some(secs);
            }
            if let Some(path) = line.split("Test unit written to ").nth(1) {
                let path = Path::new(path.trim());
                crash = Some(path.strip_prefix(fuzz_dir).unwrap_or(path).display().to_string());
            }
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if !status.success() && crash.is_none() {
        crash = Some(format!("the fuzzer exited with {status}"));
    }
    Ok(Outcome { target: target.to_owned(), seconds, executions, crash })
}

/// Executions from libFuzzer's `stat::number_of_executed_units: N` or `Done N runs in ...`.
fn parse_executions(line: &str) -> Option<u64> {
    if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
        return n.trim().parse().ok();
    }
    line.strip_prefix("Done ")?.split(' ').next()?.parse().ok()
}

/// The seconds of libFuzzer's `Done N runs in S second(s)`.
fn parse_done_seconds(line: &str) -> Option<u64> {
    line.strip_prefix("Done ")?.split(" runs in ").nth(1)?.split(' ').next()?.parse().ok()
}

/// A Markdown table for the README's reliability section.
fn table(outcomes: &[Outcome], secs: u64) -> String {
    let mut out = format!(
        "Fuzzing, {secs} s per target (`cargo xtask fuzz --time {secs}`):\n\n| target | seconds | executions | crashes |\n|---|---:|---:|---:|\n"
    );
    for o in outcomes {
        let execs = o.executions.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let crashes = o.crash.as_ref().map_or_else(|| "0".to_owned(), |c| format!("1 ({c})"));
        let secs = o.seconds.map_or_else(|| "?".to_owned(), |s| s.to_string());
        out.push_str(&format!("| {} | {secs} | {execs} | {crashes} |\n", o.target));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_the_bin_tables() {
        let manifest = "[package]\nname = \"kvlab-fuzz\"\n\n[[bin]]\nname = \"a\"\npath = \"x.rs\"\n\n[dependencies]\nname = \"no\"\n\n[[bin]]\nname = \"b\"\n";
        assert_eq!(target_names(manifest), ["a", "b"]);
        let real = include_str!("../../fuzz/Cargo.toml");
        let names = target_names(real);
        assert!(names.contains(&"sse_stream".to_owned()) && names.len() >= 10, "{names:?}");
        for n in &names {
            let seeds = crate::workspace_root().join("fuzz/corpus").join(n);
            assert!(seeds.read_dir().is_ok_and(|mut d| d.next().is_some()), "no seed corpus for {n}");
        }
    }

    #[test]
    fn libfuzzer_lines() {
        assert_eq!(parse_executions("Done 1234567 runs in 61 second(s)"), Some(1_234_567));
        assert_eq!(parse_executions("stat::number_of_executed_units: 42"), Some(42));
        assert_eq!(parse_executions("#2 INITED cov: 10"), None);
        assert_eq!(parse_done_seconds("Done 1234567 runs in 61 second(s)"), Some(61));
        assert_eq!(parse_done_seconds("#2 INITED cov: 10"), None);
    }
}
