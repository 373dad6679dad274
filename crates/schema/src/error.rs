//! The lab's error type.

use std::path::PathBuf;

use crate::EngineKind;

/// Everything that can go wrong in the lab. Messages are meant for the person at the terminal:
/// they name the file, line and key for configuration errors, and what is missing and how to
/// get it for launch errors.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A configuration or input file is malformed (unknown key, wrong type, bad value):
    /// `FILE:LINE: FIELD: message`.
    #[error(transparent)]
    Config(#[from] stats::Located),
    /// A value is invalid where no position in a file is known: a flag or a setting. The message
    /// names the flag or field first (`--gpus 4 asks for ...`, `cache_sizes on the baseline tier
    /// ...`, `--goodput: ...`), as a file's error names its field.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An engine could not be started, or died, or never became ready.
    #[error("engine `{engine}` failed: {message}")]
    Launch { engine: String, message: String },
    /// A launcher was given the launch spec of another engine kind.
    #[error("the `{launcher}` launcher was given the launch spec of engine `{given}`")]
    WrongEngine { launcher: EngineKind, given: EngineKind },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// JSON that could not be written or read back (`what`: the file or the record).
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// TOML that could not be written (`what`: the file).
    #[error("{what}: {source}")]
    Toml {
        what: String,
        #[source]
        source: toml::ser::Error,
    },
    /// CSV that could not be written (`what`: the file).
    #[error("{what}: {source}")]
    Csv {
        what: String,
        #[source]
        source: csv::Error,
    },
    /// The load generator could not carry out the run.
    #[error(transparent)]
    Loadgen(#[from] loadgen::Error),
    /// The load generator's result files could not be opened.
    #[error(transparent)]
    Results(#[from] loadgen::ResultsError),
    /// The samplers could not be started.
    #[error("samplers: {0}")]
    Samplers(#[from] samplers::SamplerError),
    /// A task the lab waited on (`what`) panicked or was cancelled.
    #[error("{what}: {source}")]
    Join {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// At a point's time limit, the load generator did not stop within its grace.
    #[error("the load generator did not stop within {grace_s} s of the time limit")]
    LoadgenStuck { grace_s: u64 },
    /// Every point of an experiment failed; each point's error is in its `env.json`.
    #[error("every point of {experiment} failed; see {}", root.display())]
    AllPointsFailed { experiment: String, root: PathBuf },
    /// A scheduler (Slurm's `sbatch`, `squeue`, `scancel`) failed or answered what kvlab cannot
    /// use, or a run under it failed; the message says which command and what it said.
    #[error("{0}")]
    Scheduler(String),
    /// The engine's process exited during the run: `at_s` seconds on the run clock. The requests
    /// in flight are recorded as failed; `log` (`engine.log`) is kept.
    #[error(
        "engine `{engine}` exited {at_s:.3} s into the run; the requests in flight are recorded as failed \
         and the summary covers what finished; its log: {}",
        log.display()
    )]
    EngineDied { engine: String, at_s: f64, log: PathBuf },
    /// The run was interrupted (SIGINT or SIGTERM); what was written is kept.
    #[error("interrupted; the partial results are kept in {}", .0.display())]
    Interrupted(PathBuf),
}

impl LabError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LabError {
        LabError::Io { path: path.into(), source }
    }

    pub fn launch(engine: &str, message: impl Into<String>) -> LabError {
        LabError::Launch { engine: engine.to_owned(), message: message.into() }
    }

    /// An error on `field` at byte `offset` of `text`, the content of `file`.
    pub fn at(
        file: &str,
        text: &str,
        offset: usize,
        field: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> LabError {
        LabError::Config(stats::Located::at(file, text, offset, field, message))
    }

    /// An error on `field` at `line` of `file`.
    pub fn config(file: &str, line: usize, field: impl Into<String>, message: impl Into<String>) -> LabError {
        LabError::Config(stats::Located::new(file, line, field, message))
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;
