//! `cargo xtask slurm up [--nodes N] | down`: a real single-host Slurm cluster (Debian's munge,
//! slurmctld and slurmd; one slurmd per emulated node; loopback only) for the tests and for trying
//! `cargo xtask bench --scheduler slurm` on one machine. Needs root. The cluster lives in
//! `$TMPDIR/kvlab-slurm` (or `KVLAB_SLURM_DIR`); every Slurm command needs `SLURM_CONF` pointing
//! at its `etc/slurm.conf`.

use anyhow::Context as _;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SlurmArgs {
    #[command(subcommand)]
    cmd: SlurmCmd,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum SlurmCmd {
    /// Install the packages when missing and start munged, slurmctld and N slurmd (nodes n1..nN).
    Up {
        /// Emulated nodes, each with all of this host's CPUs.
        #[arg(long, default_value_t = 1)]
        nodes: u32,
    },
    /// Cancel the cluster's jobs and stop its daemons (logs are kept).
    Down,
}

pub(crate) fn run(args: SlurmArgs) -> anyhow::Result<()> {
    match args.cmd {
        SlurmCmd::Up { nodes } => {
            let cluster = up(nodes)?;
            println!(
                "slurm: {} node(s) idle after {:.1} s; logs in {}",
                cluster.nodes.len(),
                cluster.startup_s,
                cluster.dir.join("log").display()
            );
            println!("export SLURM_CONF={}", cluster.conf.display());
            Ok(())
        }
        SlurmCmd::Down => down(),
    }
}

/// Starts a cluster of `nodes` nodes in the default directory and waits until every node is idle.
/// The caller exports `SLURM_CONF` (see [`testcluster::ClusterHandle::env`]) to the
/// commands and tests that use it.
pub(crate) fn up(nodes: u32) -> anyhow::Result<testcluster::ClusterHandle> {
    let cfg = testcluster::UpConfig::new(nodes);
    testcluster::up(&cfg)
        .with_context(|| format!("starting a {nodes}-node Slurm cluster in {}", cfg.dir.display()))
}

/// Stops the cluster of the default directory (nothing to do is fine).
pub(crate) fn down() -> anyhow::Result<()> {
    let dir = testcluster::default_dir();
    testcluster::down(&dir).with_context(|| format!("stopping the Slurm cluster in {}", dir.display()))?;
    println!("slurm: down (logs kept in {})", dir.join("log").display());
    Ok(())
}
