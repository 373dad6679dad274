//! Time series recorded while a run goes: GPU (NVML), block device, CPU and memory, the engine
//! process tree, and the engine's Prometheus `/metrics`.
//!
//! Every sampler implements [`Sampler`]. A [`SamplerSet`] runs each one on its own thread at an
//! interval (100 ms unless the sampler asks for another) and writes `<dir>/<name>.csv`, whose first
//! column `t` is the number of seconds since the run's origin [`std::time::Instant`] — the clock
//! the per-request records use, so both line up. Files are flushed after every sample, so a run
//! that is killed keeps what it measured. A sampler that fails is stopped with a warning; the
//! others go on. [`SamplerSet::stop`] returns one [`SamplerStatus`] per sampler for `env.json`.
//!
//! | file | sampler | rows per sample |
//! |---|---|---|
//! | `gpu.csv` | [`gpu::NvmlSampler`] | one per GPU |
//! | `disk.csv` | [`disk::DiskSampler`] | one (the device, or the system-wide sum) |
//! | `cpu.csv` | [`cpu::SystemSampler`] | one |
//! | `process.csv` | [`cpu::ProcessSampler`] | one per process of the engine's tree |
//! | `engine.csv` | [`engine::EngineMetricsSampler`] | one per Prometheus sample (long format) |
//!
//! The columns of each file are listed on its sampler and are part of the result format: the
//! report reads them by name.

pub mod cpu;
pub mod disk;
pub mod engine;
pub mod gpu;
mod prom;
mod set;

use std::path::PathBuf;
use std::time::Duration;

pub use crate::prom::{parse_exposition, PromParseError, PromSample};
pub use crate::set::{SampleNow, SamplerSet, SamplerSetConfig, SamplerState, SamplerStatus};

/// One CSV row without its leading `t` cell. Its length equals [`Sampler::columns`]`.len()`.
/// An empty cell means "not available for this row" (e.g. a counter that has no previous value).
pub type Row = Vec<String>;

/// A source of time-series rows.
///
/// Invariants the [`SamplerSet`] relies on and checks:
/// - [`name`](Sampler::name) is a file stem of `[a-z0-9_-]`, unique within a set;
/// - every row returned by [`sample`](Sampler::sample) has exactly `columns().len()` cells;
/// - `sample` is called with non-decreasing `t`, from one thread at a time.
pub trait Sampler: Send {
    /// The file stem of the CSV this sampler writes (`gpu` → `gpu.csv`).
    fn name(&self) -> &str;

    /// The CSV header after the leading `t` column.
    fn columns(&self) -> Vec<String>;

    /// Reads the source once. `t` is seconds since the run's origin; rate samplers compute their
    /// per-second values from the difference between two calls' `t`, and return no rows on their
    /// first call (they have no previous value yet).
    fn sample(&mut self, t: f64) -> Result<Vec<Row>, SamplerError>;

    /// The interval this sampler wants, or `None` for the set's default.
    fn interval(&self) -> Option<Duration> {
        None
    }

    /// A remark recorded in the status, e.g. that the disk sampler fell back to a system-wide sum.
    fn note(&self) -> Option<String> {
        None
    }
}

/// Why a sampler could not be built or could not sample.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The source does not exist on this machine (no NVIDIA driver, no such process, ...). The
    /// lab records it and goes on, unless the user asked for it (`--require-gpu`).
    #[error("{sampler} sampler unavailable: {reason}")]
    Unavailable { sampler: String, reason: String },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CSV file could not be written.
    #[error("writing {}: {source}", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    /// A `/proc` file could not be read or parsed.
    #[error("reading {what}: {source}")]
    Proc {
        what: String,
        #[source]
        source: procfs::ProcError,
    },
    /// An NVML call failed with something other than "not supported".
    #[error("NVML {what}: {source}")]
    Nvml {
        what: String,
        #[source]
        source: nvml_wrapper::error::NvmlError,
    },
    /// The engine's metrics endpoint could not be fetched.
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    /// The engine's metrics text is not valid Prometheus text format.
    #[error("{url}: {source}")]
    Metrics {
        url: String,
        #[source]
        source: PromParseError,
    },
    /// A sampler broke one of the [`Sampler`] invariants.
    #[error("sampler {sampler}: {message}")]
    Invalid { sampler: String, message: String },
}

impl SamplerError {
    /// True for [`SamplerError::Unavailable`]: the source is missing, not broken.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SamplerError::Unavailable { .. })
    }

    pub(crate) fn proc(what: impl Into<String>, source: procfs::ProcError) -> SamplerError {
        SamplerError::Proc { what: what.into(), source }
    }
}

/// Formats a measured value: integers without a fraction, others with 3 decimals, non-finite as
/// an empty cell (the CSV readers treat it as missing).
pub(crate) fn num(v: f64) -> String {
    if !v.is_finite() {
        String::new()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// Per-second rate of a monotonically increasing counter; a counter that went backwards (reset)
/// gives 0.
pub(crate) fn rate(now: u64, before: u64, dt: f64) -> f64 {
    if dt <= 0.0 {
        return f64::NAN;
    }
    now.saturating_sub(before) as f64 / dt
}
