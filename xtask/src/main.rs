//! `cargo xtask`: kvlab's one command line. Thin glue over the library crates: parse flags, call
//! a crate, print. One module per subcommand.

mod ci;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kvlab: measure LLM serving engines with KV-cache offload")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every test, with the services the tests need (fmt, clippy, the whole test suite).
    Ci(ci::CiArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
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
