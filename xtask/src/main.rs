//! `cargo xtask`: kvlab's one command line. Thin glue over the library crates: parse flags, call
//! a crate, print. One module per subcommand.

mod bench;
mod ci;
mod clean;
mod fuzz;
mod images;
mod loadgen;
mod profile;
mod regress;
mod report;
mod serve;
mod sim;
mod slurm;
mod soak;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: the engine and the load generator open and close
/// thousands of connections, and glibc's per-thread arenas keep growing across such rounds
/// (`cargo xtask soak` measures it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kvlab: measure LLM serving engines with KV-cache offload")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One tiered experiment (or an experiment matrix): engine, workload, samplers, result directory.
    Bench(bench::BenchArgs),
    /// The load generator alone, against any OpenAI-compatible server.
    Loadgen(loadgen::LoadgenArgs),
    /// The emulated engine alone, on 127.0.0.1.
    Serve(serve::ServeArgs),
    /// The same run as `bench`, under Nsight Systems with NVTX prefill/decode ranges.
    Profile(profile::ProfileArgs),
    /// Trace-driven cache simulation: hit ratios of eviction policies and capacities.
    Sim(sim::SimArgs),
    /// The emulated engine and the load generator under many streams for minutes: memory, files, losses.
    Soak(soak::SoakArgs),
    /// report.md, report.html and plots/ for result directories, and a comparison table.
    Report(report::ReportArgs),
    /// Summaries against baselines; with no argument, the pinned emulated scenario.
    Regress(regress::RegressArgs),
    /// A real single-host Slurm cluster (several slurmd on loopback), for tests and trials.
    Slurm(slurm::SlurmArgs),
    /// Fuzz the parsers of outside input with cargo-fuzz (`--list` names the targets).
    Fuzz(fuzz::FuzzArgs),
    /// kvlab's OCI images, built here (base, lab, llamacpp, emulator; vllm-lmcache when named).
    Images(images::ImagesArgs),
    /// Remove containers and engine processes a killed lab left behind.
    Clean(clean::CleanArgs),
    /// Every test, with the services the tests need (fmt, clippy, the whole test suite).
    Ci(ci::CiArgs),
}

/// The workspace root: configs/, .env and results/ are found from here.
pub(crate) fn workspace_root() -> std::path::PathBuf {
    // In kvlab's images the program lives outside the checkout: KVLAB_ROOT says where configs/ is.
    if let Some(root) = std::env::var_os("KVLAB_ROOT") {
        return root.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_owned)
        .unwrap_or_else(|| std::path::PathBuf::from("."))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Engine processes are recorded here, so a later run can reap them if this one is killed.
    engines::orphans::set_registry_dir(workspace_root().join(".kvlab/engines"));
    let result = match cli.cmd {
        Cmd::Bench(args) => bench::run(args),
        Cmd::Serve(args) => serve::run(args),
        Cmd::Loadgen(args) => loadgen::run(args),
        Cmd::Profile(args) => profile::run(args),
        Cmd::Sim(args) => sim::run(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Report(args) => report::run(args),
        Cmd::Regress(args) => regress::run(args),
        Cmd::Slurm(args) => slurm::run(args),
        Cmd::Fuzz(args) => fuzz::run(args),
        Cmd::Images(args) => images::run(args),
        Cmd::Clean(args) => clean::run(args),
        Cmd::Ci(args) => ci::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
