//! Runs: the lifecycle of a run and its result directory, and an experiment's points run one
//! after another. This is what `cargo xtask bench` and `cargo xtask serve` drive (the
//! `scaleout` crate runs the same points on Slurm or Kubernetes).
//!
//! The entry points are [`run::bench`] (one run, or a whole experiment matrix; [`run::bench_until`]
//! takes the shutdown signal as a future) and [`run::serve_emulated`]. What a run is asked to do
//! comes from the `schema` crate; engines start behind the `engines` crate's `Launcher` seam;
//! every engine the lab starts listens on 127.0.0.1 and is stopped and reaped on exit, error or
//! Ctrl-C.

pub mod error;
pub mod report;
mod resolved;
pub mod run;
pub mod verdict;

mod adapters;

pub use adapters::WorkloadRequest;
