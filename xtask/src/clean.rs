//! `cargo xtask clean`: removes what a killed lab left behind, and nothing a running lab uses.
//!
//! Containers labelled `kvlab.managed=true` whose owning lab is gone are removed; engine processes
//! recorded under `.kvlab/engines/` whose lab is gone are killed. `cargo xtask bench` does the same
//! before it starts.

use anyhow::Result;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CleanArgs {}

pub(crate) fn run(_args: CleanArgs) -> Result<()> {
    let reaped = reap()?;
    if reaped.is_empty() {
        println!("nothing to clean: no orphaned kvlab container or engine process");
    }
    Ok(())
}

/// Reaps orphans, printing each; used by `clean` and at the start of `bench`.
pub(crate) fn reap() -> Result<Vec<engines::orphans::Reaped>> {
    let reaped = engines::orphans::reap_orphans(None)?;
    for r in &reaped {
        eprintln!("kvlab: {r}");
    }
    Ok(reaped)
}
