//! One profiled run from start to end, around the lab's run itself (which the caller runs): the
//! commands ([`Plan`], printed by `profile --dry-run`), nsys running the lab's own program again
//! with the run inside it ([`Plan::wrap_lab`]), the report moved into the run's `profile/`, then
//! `nsys stats` and the run's report written again with its "Prefill vs decode (NVTX)" section
//! ([`finish`]).
//!
//! [`Placement::WrapsLab`]: the program runs again as `profile --inside-nsys FILE <flags>`,
//! built with the `nvtx` feature, and writes its result directory to FILE ([`hand_off`]) for the
//! process that started nsys. [`Placement::InContainer`]: nsys runs in the engine's container and
//! writes into the run's `profile/` directly; the caller runs the lab and then [`finish`].

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use engines::secrets::Secrets;
use engines::{CommandLine, HostProbe, LaunchSpec};

use crate::{Placement, StatsHost};

/// Where the run's result directory stands in printed commands (it is made when the run starts).
pub const RESULT_DIR: &str = "<result dir>";

/// Why a profiled run, or what follows it, failed. Each message is what the command line prints.
#[derive(Debug, thiserror::Error)]
pub enum NsysRunError {
    /// A file, a directory or a program failed; `what` says which.
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    /// `cargo build --features nvtx` failed.
    #[error(
        "building with the `nvtx` feature failed ({0}); it needs libclang (apt-get install libclang-dev, \
         or `nix develop`)"
    )]
    Build(ExitStatus),
    /// The plan has no nsys command: its engine is not profiled by wrapping the lab.
    #[error("no nsys command for this engine")]
    NoNsysCommand,
    /// The profiled run failed; its results are kept.
    #[error("the profiled run failed ({status}); its results are in {}", dir.display())]
    RunFailed { status: ExitStatus, dir: PathBuf },
    /// `nsys stats` or its parsing failed.
    #[error(transparent)]
    Stats(#[from] crate::ProfileError),
    /// The run's report could not be read or written again.
    #[error(transparent)]
    Report(#[from] report::Error),
}

type Result<T, E = NsysRunError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NsysRunError {
    let what = what.into();
    move |source| NsysRunError::Io { what, source }
}

/// The lab's own program, which nsys runs again with the run inside it
/// ([`Placement::WrapsLab`]).
#[derive(Debug, Clone)]
pub struct LabProgram {
    /// The workspace root: `cargo build` runs there, into its `target/` (or `CARGO_TARGET_DIR`).
    pub workspace: PathBuf,
    /// Whether the running program has NVTX ranges (its `nvtx` feature); if not, the plan
    /// builds it with them first.
    pub nvtx: bool,
    /// The running program's command line: its arguments after `profile` are the run's.
    pub argv: Vec<String>,
}

/// The commands of a profile, for `--dry-run` and for running them.
#[derive(Debug)]
pub struct Plan {
    /// `cargo build --features nvtx` when this program was built without NVTX ranges.
    build: Option<Vec<String>>,
    /// `nsys profile ... <exe> profile --inside-nsys FILE <flags>` (nsys runs the lab).
    nsys: Option<CommandLine>,
    /// The engine's own command as its launcher runs it: vllm-docker's `docker run ...` with nsys
    /// inside, or process vLLM's `vllm serve ...` (printed only; the launcher builds it again
    /// from the same functions when the run starts).
    engine: Option<CommandLine>,
    /// `nsys stats ...`, with `<result dir>` standing for the run's directory.
    stats: CommandLine,
    secrets: Secrets,
    staging: PathBuf,
    handoff: PathBuf,
    workspace: PathBuf,
}

impl Plan {
    /// The plan of a run whose launch spec, planned with [`RESULT_DIR`] as its directory, is
    /// `spec`: nsys's report is staged under `out_parent` until the run has a directory.
    pub fn new(
        spec: &LaunchSpec,
        placement: Placement,
        port: Option<u16>,
        out_parent: &Path,
        probe: &HostProbe,
        lab: &LabProgram,
    ) -> Result<Plan> {
        let engine = spec.engine.kind();
        let staging = out_parent.join(format!(".profile-{}", std::process::id()));
        let handoff = staging.join("result-dir");
        let placeholder = PathBuf::from(RESULT_DIR).join("profile");
        let runtime = probe.container_runtime.clone().unwrap_or_else(|| "docker".to_owned());
        let port = match port {
            Some(p) => p,
            None => std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map_err(io("choosing a free port on 127.0.0.1"))?
                .port(),
        };
        let engine_cmd = crate::planned_engine_command(spec, &runtime, port);
        let secrets = spec.secrets.clone();
        let (build, nsys, stats) = match placement {
            Placement::WrapsLab => {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map_or_else(|| lab.workspace.join("target"), PathBuf::from);
                let (build, exe) = if lab.nvtx {
                    let exe = std::env::current_exe().unwrap_or_else(|_| target.join("release/xtask"));
                    (None, exe)
                } else {
                    let nvtx_target = target.join("nvtx");
                    let build = vec![
                        "cargo".to_owned(),
                        "build".to_owned(),
                        "--release".to_owned(),
                        "--package".to_owned(),
                        "xtask".to_owned(),
                        "--features".to_owned(),
                        "nvtx".to_owned(),
                        "--target-dir".to_owned(),
                        nvtx_target.display().to_string(),
                    ];
                    (Some(build), nvtx_target.join("release/xtask"))
                };
                let mut child_args =
                    vec!["profile".to_owned(), "--inside-nsys".to_owned(), handoff.display().to_string()];
                child_args.extend(passthrough_args(&lab.argv));
                let nsys = crate::lab_command(
                    engine,
                    "nsys",
                    &exe.display().to_string(),
                    &child_args,
                    &staging.join(crate::LAB_REPORT).display().to_string(),
                );
                let stats = crate::stats_command(
                    &StatsHost::Host { nsys: "nsys".to_owned() },
                    &placeholder,
                    crate::LAB_REPORT,
                );
                (build, Some(nsys), stats)
            }
            Placement::InContainer => {
                let image = spec.engine.container().and_then(|c| c.image.clone()).unwrap_or_default();
                let stats = crate::stats_command(
                    &StatsHost::Container { runtime, image },
                    &placeholder,
                    crate::ENGINE_REPORT,
                );
                (None, None, stats)
            }
        };
        Ok(Plan {
            build,
            nsys,
            engine: engine_cmd,
            stats,
            secrets,
            staging,
            handoff,
            workspace: lab.workspace.clone(),
        })
    }

    /// The commands as `--dry-run` prints them, each under a comment saying what it does.
    pub fn display(&self) -> Vec<String> {
        let line = |cmd: &CommandLine| crate::shell_line(cmd, &self.secrets);
        let mut lines = Vec::new();
        if let Some(build) = &self.build {
            lines.push(format!("# build with NVTX ranges (needs libclang)\n{}", build.join(" ")));
        }
        if let Some(nsys) = &self.nsys {
            lines.push(format!("# the run under Nsight Systems\n{}", line(nsys)));
        }
        match (&self.engine, &self.nsys) {
            (Some(engine), Some(_)) => lines.push(format!(
                "# the engine, started by the run as its child (traced by nsys), on a free port\n{}",
                line(engine)
            )),
            (Some(engine), None) => lines.push(format!(
                "# the engine container, started by the run: nsys inside it writes into {RESULT_DIR}/profile/\n{}",
                line(engine)
            )),
            (None, _) => {}
        }
        if self.nsys.is_some() {
            lines.push(format!(
                "# then: move {} into {RESULT_DIR}/profile/",
                self.staging.join(format!("{}.nsys-rep", crate::LAB_REPORT)).display()
            ));
        }
        lines.push(format!(
            "# summaries, parsed into {RESULT_DIR}/profile/{}\n{}",
            crate::NVTX_SUM_CSV,
            line(&self.stats)
        ));
        lines
    }

    /// [`Placement::WrapsLab`]: builds the program with NVTX ranges when it has none, runs it
    /// under nsys, moves the report into the run's `profile/` and [`finish`]es.
    pub fn wrap_lab(&self) -> Result<()> {
        std::fs::create_dir_all(&self.staging).map_err(io(self.staging.display().to_string()))?;
        let cleanup = Staging(self.staging.clone());
        if let Some(build) = &self.build {
            eprintln!("kvlab: building kvlab with NVTX ranges: {}", build.join(" "));
            let status = std::process::Command::new(&build[0])
                .args(&build[1..])
                .current_dir(&self.workspace)
                .status()
                .map_err(io("running cargo"))?;
            if !status.success() {
                return Err(NsysRunError::Build(status));
            }
        }
        let nsys = self.nsys.as_ref().ok_or(NsysRunError::NoNsysCommand)?;
        eprintln!("kvlab: {}", nsys.display(&Secrets::default()));
        let status = std::process::Command::new(&nsys.program)
            .args(&nsys.args)
            .envs(&nsys.env)
            .status()
            .map_err(io(format!("could not run `{}`; {}", nsys.program, crate::INSTALL_NSYS)))?;
        let dir = std::fs::read_to_string(&self.handoff).map(|s| PathBuf::from(s.trim())).map_err(io(
            format!("the profiled run ended ({status}) without a result directory; see its output above"),
        ))?;
        let profile_dir = dir.join("profile");
        std::fs::create_dir_all(&profile_dir).map_err(io(profile_dir.display().to_string()))?;
        let name = format!("{}.nsys-rep", crate::LAB_REPORT);
        let from = self.staging.join(&name);
        move_file(&from, &profile_dir.join(&name))?;
        drop(cleanup);
        finish(&dir, &StatsHost::Host { nsys: "nsys".to_owned() }, crate::LAB_REPORT)?;
        if !status.success() {
            return Err(NsysRunError::RunFailed { status, dir });
        }
        Ok(())
    }
}

/// The program's arguments after `profile`, without `--dry-run`.
fn passthrough_args(argv: &[String]) -> Vec<String> {
    let start = argv.iter().position(|a| a == "profile").map_or(argv.len(), |i| i + 1);
    argv[start..].iter().filter(|a| a.as_str() != "--dry-run").cloned().collect()
}

/// Under nsys: writes the run's directory `dir` to `handoff` for the process that started nsys.
pub fn hand_off(handoff: &Path, dir: &Path) -> Result<()> {
    std::fs::write(handoff, dir.display().to_string()).map_err(io(handoff.display().to_string()))
}

/// `nsys stats` into `profile/nvtx_sum.csv`, then the report again (with its NVTX section).
pub fn finish(dir: &Path, host: &StatsHost, report: &str) -> Result<()> {
    let summary = crate::summarize(host, &dir.join("profile"), report)?;
    let data = report::RunData::load(dir)?;
    report::write_report(&[data], dir)?;
    println!("profile: {}", summary.report.display());
    println!("nvtx summary: {}", dir.join("profile").join(crate::NVTX_SUM_CSV).display());
    Ok(())
}

fn move_file(from: &Path, to: &Path) -> Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map_err(io(format!("{}: nsys wrote no report (did the capture range start?)", from.display())))?;
    let _ = std::fs::remove_file(from);
    Ok(())
}

/// The staging directory nsys writes into, removed on every way out.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_gets_the_flags_after_profile_without_dry_run() {
        let argv: Vec<String> = ["xtask", "profile", "--engine", "emulated", "--dry-run", "--tier", "cpu"]
            .map(String::from)
            .into();
        assert_eq!(passthrough_args(&argv), ["--engine", "emulated", "--tier", "cpu"]);
        assert!(passthrough_args(&["xtask".to_owned()]).is_empty());
    }

    #[test]
    fn a_missing_report_names_the_file_and_the_capture_range() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("kvlab.nsys-rep");
        let err = move_file(&from, &tmp.path().join("to.nsys-rep")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: nsys wrote no report (did the capture range start?)", from.display())
        );
        assert!(std::error::Error::source(&err).is_some(), "the I/O error is its cause");
    }
}
