//! Experiments: configuration schema, tiers, engine launchers, the run lifecycle and result
//! directories. This is what `cargo xtask bench` and `cargo xtask serve` drive.
//!
//! The entry points are [`run::bench`] (one run, or a whole experiment matrix; [`run::bench_until`]
//! takes the shutdown signal as a future) and [`run::serve_emulated`]. Engines start behind the [`engine::Launcher`] seam; every engine the
//! lab starts listens on 127.0.0.1 and is stopped and reaped on exit, error or Ctrl-C.

pub mod config;
pub mod engine;
pub mod error;
pub mod k8s;
pub mod lmcache;
pub mod profile;
pub mod report;
pub mod run;
pub mod secrets;
pub mod slurm;

mod adapters;

pub use adapters::WorkloadRequest;
