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
use profile::{nsys_run, Placement, ProfileSpec, StatsHost};

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
    let spec = lab::run::planned_spec(&opts, engine, Path::new(nsys_run::RESULT_DIR))?;
    let lab = nsys_run::LabProgram {
        workspace: root,
        nvtx: cfg!(feature = "nvtx"),
        argv: std::env::args().collect(),
    };
    let plan = nsys_run::Plan::new(&spec, placement, opts.port, &out_parent, &probe, &lab)?;
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
        Placement::WrapsLab => Ok(plan.wrap_lab()?),
        Placement::InContainer => {
            in_container(&opts, args.bench.workload.max_failed_fraction, &probe, &image)
        }
    }
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
    nsys_run::hand_off(handoff, dir)?;
    Ok(lab::verdict::check_failures(&reports, max_failed)?)
}

/// vllm-docker: the run (nsys in the engine's container), then the summaries and the report.
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
    nsys_run::finish(
        &dir,
        &StatsHost::Container { runtime, image: image.to_owned() },
        profile::ENGINE_REPORT,
    )?;
    Ok(lab::verdict::check_failures(&reports, max_failed)?)
}
