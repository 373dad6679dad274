//! The trace-driven KV-cache simulator: replays production traces over [`kvcache::TieredCache`]
//! to predict the hit ratio of eviction policies and cache sizes before any GPU is spent.
//!
//! Pure: the caller reads files and passes their text ([`trace::load`]); nothing here does I/O.
//!
//! - [`trace`]: Mooncake / Bailian JSONL and conversation CSVs become a [`SimTrace`] of dense
//!   block keys at an explicit block size (trace, engine and LMCache granularities kept apart);
//! - [`replay()`]: one trace through one set of tiers (write-through, as vLLM with LMCache, or
//!   exclusive: [`TierModel`]); a request hits the run of its leading resident blocks, each
//!   charged to the tier that served it; then touches all of its blocks;
//! - [`sweep()`]: trace x policy x capacity in parallel, plus the learned policy's training and
//!   the conversation-aware grid search;
//! - [`output`]: `sim.csv`, a table, hit-ratio curves as SVG (plotters, through `chart`).

pub mod capacity;
pub mod output;
pub mod replay;
pub mod sweep;
pub mod trace;

pub use crate::capacity::Capacity;
pub use crate::replay::{replay, PolicySpec, ReplayConfig, ReplayResult, TierModel};
pub use crate::sweep::{
    default_capacities, held_out_capacity, learned_report, sweep, tuned_report, LearnedReport, Row,
    SweepConfig, TunedReport,
};
pub use crate::trace::{InputFormat, LoadOptions, SimTrace};

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// A malformed or unusable input: `FILE:LINE: FIELD: message` (line 1 and `(top level)`:
    /// the file as a whole).
    #[error(transparent)]
    Input(stats::Located),
    /// A trace the workload readers rejected.
    #[error(transparent)]
    Trace(#[from] workload::Error),
    /// Parameters that cannot be honoured; the message names the parameter.
    #[error("{0}")]
    Invalid(String),
    /// The hit-ratio chart of a trace could not be drawn (plotters' message).
    #[error("plotting the hit ratios of {trace}: {message}")]
    Plot { trace: String, message: String },
}

impl SimError {
    pub(crate) fn input(file: &str, line: usize, field: &str, message: impl Into<String>) -> SimError {
        SimError::Input(stats::Located::new(file, line, field, message))
    }
}
