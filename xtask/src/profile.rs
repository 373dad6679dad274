//! `cargo xtask profile [bench flags]`: the same run as `bench`, under Nsight Systems.
//!
//! Engines in-process or started as processes (emulated, llamacpp, vllm): nsys runs this program
//! again (`profile --inside-nsys FILE ...`), built with the `nvtx` feature, so the client's and the
//! engine's NVTX ranges share one timeline; the report is moved into `<result dir>/profile/` when
//! that process has exited. vllm-docker: nsys runs inside the container (the lab's image carries
//! it) and writes into `<result dir>/profile/` directly. Then `nsys stats` gives the NVTX and CUDA
//! kernel summaries (`profile/nvtx_sum.csv`), and the report is written again with its "Prefill
//! vs decode (NVTX)" section. `--dry-run` prints the commands and runs nothing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use engines::{EngineKind, HostProbe};
use profile::{Placement, ProfileSpec, StatsHost};

/// Flags of `cargo xtask profile`: those of `bench`, and these.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ProfileArgs {
    #[command(flatten)]
    bench: crate::bench::BenchArgs,
    /// Print the exact commands (build, nsys profile, nsys stats) and run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Set by `profile` itself when it runs under nsys: write the result directory to FILE.
    #[arg(long, hide = true, value_name = "FILE")]
    inside_nsys: Option<PathBuf>,
}

pub(crate) fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let sched = &args.bench.scheduler;
    if args.bench.experiment.is_some()
        || sched.scheduler != crate::bench::Scheduler::Local
        || sched.attach.is_some()
        || sched.resume.is_some()
    {
        bail!(
            "profile runs one point on this machine (one Nsight Systems report per run): pass the point's \
             flags (--tier, --engine, --workload, ...) instead of --experiment or --scheduler"
        );
    }
    let probe = HostProbe::detect();
    let (engine, reason) = probe.choose(args.bench.engine.parse()?);
    let placement = profile::placement(engine)?;
    if let Some(handoff) = &args.inside_nsys {
        return inside(args.bench.clone(), engine, handoff);
    }
    let root = crate::workspace_root();
    let out_parent = args.bench.workload.out.clone().unwrap_or_else(|| root.join("results"));
    // vllm-docker: the lab's image, which carries nsys (the upstream vLLM image has none).
    let image =
        args.bench.image.clone().or_else(|| engines::docker::default_image(engine)).unwrap_or_default();
    let mut opts = crate::bench::options(args.bench.clone())?;
    opts.engine = engine;
    opts.image = Some(image.clone()).filter(|i| !i.is_empty());
    opts.instruments = Some(ProfileSpec { placement }.instruments());
    let plan = Plan::new(&opts, placement, &root, &out_parent, &probe)?;
    if args.dry_run {
        eprintln!("kvlab: {reason}");
        for line in plan.display() {
            println!("{line}");
        }
        return Ok(());
    }
    profile::preflight(engine, &probe, &image)?;
    eprintln!("kvlab: {reason}");
    match placement {
        Placement::WrapsLab => wraps_lab(&plan),
        Placement::InContainer => {
            in_container(&opts, args.bench.workload.max_failed_fraction, &probe, &image)
        }
    }
}

/// Where the run's result directory stands in printed commands (it is made when the run starts).
const RESULT_DIR: &str = "<result dir>";

/// The commands of a profile, for `--dry-run` and for running them.
struct Plan {
    /// `cargo build --features nvtx` when this program was built without NVTX ranges.
    build: Option<Vec<String>>,
    /// `nsys profile ... <exe> profile --inside-nsys FILE <flags>` (nsys runs the lab).
    nsys: Option<profile::CommandLine>,
    /// The engine's own command as its launcher runs it: vllm-docker's `docker run ...` with nsys
    /// inside, or process vLLM's `vllm serve ...` (printed only; the launcher builds it again
    /// from the same functions when the run starts).
    engine: Option<profile::CommandLine>,
    /// `nsys stats ...`, with `<result dir>` standing for the run's directory.
    stats: profile::CommandLine,
    secrets: engines::secrets::Secrets,
    staging: PathBuf,
    handoff: PathBuf,
}

impl Plan {
    fn new(
        opts: &lab::run::BenchOptions,
        placement: Placement,
        root: &Path,
        out_parent: &Path,
        probe: &HostProbe,
    ) -> anyhow::Result<Plan> {
        let engine = opts.engine;
        let staging = out_parent.join(format!(".profile-{}", std::process::id()));
        let handoff = staging.join("result-dir");
        let result_dir = PathBuf::from(RESULT_DIR);
        let placeholder = result_dir.join("profile");
        let spec = lab::run::planned_spec(opts, engine, &result_dir)?;
        let runtime = probe.container_runtime.clone().unwrap_or_else(|| "docker".to_owned());
        let port = match opts.port {
            Some(p) => p,
            None => std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .context("choosing a free port on 127.0.0.1")?
                .port(),
        };
        let engine_cmd = profile::planned_engine_command(&spec, &runtime, port);
        let secrets = spec.secrets.clone();
        Ok(match placement {
            Placement::WrapsLab => {
                let target =
                    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
                let (build, exe) = if cfg!(feature = "nvtx") {
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
                child_args.extend(passthrough_args());
                let nsys = profile::lab_command(
                    engine,
                    "nsys",
                    &exe.display().to_string(),
                    &child_args,
                    &staging.join(profile::LAB_REPORT).display().to_string(),
                );
                let stats = profile::stats_command(
                    &StatsHost::Host { nsys: "nsys".to_owned() },
                    &placeholder,
                    profile::LAB_REPORT,
                );
                Plan { build, nsys: Some(nsys), engine: engine_cmd, stats, secrets, staging, handoff }
            }
            Placement::InContainer => {
                let image = spec.engine.container().and_then(|c| c.image.clone()).unwrap_or_default();
                let stats = profile::stats_command(
                    &StatsHost::Container { runtime, image },
                    &placeholder,
                    profile::ENGINE_REPORT,
                );
                Plan { build: None, nsys: None, engine: engine_cmd, stats, secrets, staging, handoff }
            }
        })
    }

    fn display(&self) -> Vec<String> {
        let line = |cmd: &profile::CommandLine| profile::shell_line(cmd, &self.secrets);
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
                self.staging.join(format!("{}.nsys-rep", profile::LAB_REPORT)).display()
            ));
        }
        lines.push(format!(
            "# summaries, parsed into {RESULT_DIR}/profile/{}\n{}",
            profile::NVTX_SUM_CSV,
            line(&self.stats)
        ));
        lines
    }
}

/// This program's flags after `profile`, without `--dry-run`.
fn passthrough_args() -> Vec<String> {
    let argv: Vec<String> = std::env::args().collect();
    let start = argv.iter().position(|a| a == "profile").map_or(argv.len(), |i| i + 1);
    argv[start..].iter().filter(|a| a.as_str() != "--dry-run").cloned().collect()
}

/// Under nsys: the run itself; its directory goes to `handoff` for the process that started nsys.
fn inside(bench: crate::bench::BenchArgs, engine: EngineKind, handoff: &Path) -> anyhow::Result<()> {
    if !loadgen::nvtx::ENABLED {
        eprintln!(
            "warning: this build has no NVTX ranges (the `nvtx` feature); the timeline has no client ranges"
        );
    }
    let max_failed = bench.workload.max_failed_fraction;
    let mut opts = crate::bench::options(bench)?;
    opts.engine = engine;
    opts.instruments = Some(ProfileSpec { placement: Placement::WrapsLab }.instruments());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let result = rt.block_on(lab::run::bench(&opts));
    let reports = result?;
    let dir = &reports.first().context("the run produced no result directory")?.dir;
    std::fs::write(handoff, dir.display().to_string()).with_context(|| handoff.display().to_string())?;
    crate::bench::check_failures(&reports, max_failed)
}

fn wraps_lab(plan: &Plan) -> anyhow::Result<()> {
    std::fs::create_dir_all(&plan.staging).with_context(|| plan.staging.display().to_string())?;
    let cleanup = Staging(plan.staging.clone());
    if let Some(build) = &plan.build {
        eprintln!("kvlab: building kvlab with NVTX ranges: {}", build.join(" "));
        let status = std::process::Command::new(&build[0])
            .args(&build[1..])
            .current_dir(crate::workspace_root())
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!(
                "building with the `nvtx` feature failed ({status}); it needs libclang (apt-get install \
                 libclang-dev, or `nix develop`)"
            );
        }
    }
    let nsys = plan.nsys.as_ref().context("no nsys command for this engine")?;
    eprintln!("kvlab: {}", nsys.display(&engines::secrets::Secrets::default()));
    let status = std::process::Command::new(&nsys.program)
        .args(&nsys.args)
        .envs(&nsys.env)
        .status()
        .with_context(|| format!("could not run `{}`; {}", nsys.program, profile::INSTALL_NSYS))?;
    let dir = std::fs::read_to_string(&plan.handoff).map(|s| PathBuf::from(s.trim())).with_context(|| {
        format!("the profiled run ended ({status}) without a result directory; see its output above")
    })?;
    let profile_dir = dir.join("profile");
    std::fs::create_dir_all(&profile_dir).with_context(|| profile_dir.display().to_string())?;
    let name = format!("{}.nsys-rep", profile::LAB_REPORT);
    let from = plan.staging.join(&name);
    move_file(&from, &profile_dir.join(&name))?;
    drop(cleanup);
    finish(&dir, &StatsHost::Host { nsys: "nsys".to_owned() }, profile::LAB_REPORT)?;
    if !status.success() {
        bail!("the profiled run failed ({status}); its results are in {}", dir.display());
    }
    Ok(())
}

fn in_container(
    opts: &lab::run::BenchOptions,
    max_failed: f64,
    probe: &HostProbe,
    image: &str,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let reports = rt.block_on(lab::run::bench(opts))?;
    let dir = reports.first().context("the run produced no result directory")?.dir.clone();
    let runtime = probe.container_runtime.clone().unwrap_or_else(|| "docker".to_owned());
    finish(&dir, &StatsHost::Container { runtime, image: image.to_owned() }, profile::ENGINE_REPORT)?;
    crate::bench::check_failures(&reports, max_failed)
}

/// `nsys stats` into `profile/nvtx_sum.csv`, then the report again (with its NVTX section).
fn finish(dir: &Path, host: &StatsHost, report: &str) -> anyhow::Result<()> {
    let summary = profile::summarize(host, &dir.join("profile"), report)?;
    let data = report::RunData::load(dir)?;
    report::write_report(&[data], dir)?;
    println!("profile: {}", summary.report.display());
    println!("nvtx summary: {}", dir.join("profile").join(profile::NVTX_SUM_CSV).display());
    Ok(())
}

fn move_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).with_context(|| {
        format!("{}: nsys wrote no report (did the capture range start?)", from.display())
    })?;
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
