//! The lab's error type: what a run can go wrong with, over the configuration's and the engine's.

use std::path::PathBuf;

use engines::error::EngineError;
use schema::error::ConfigError;

/// Everything that can end a run or an experiment. Messages are meant for the person at the
/// terminal: the configuration's and the engine's errors are passed on as they are.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The experiment, a tier or a flag is invalid, or a file could not be read or written.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine could not be started or used.
    #[error(transparent)]
    Engine(#[from] EngineError),
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

impl RunError {
    /// A file that could not be read or written ([`ConfigError::Io`]).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> RunError {
        RunError::Config(ConfigError::io(path, source))
    }

    /// An invalid setting ([`ConfigError::Invalid`]); the message names the flag or field first.
    pub fn invalid(message: impl Into<String>) -> RunError {
        RunError::Config(ConfigError::Invalid(message.into()))
    }
}

pub type Result<T, E = RunError> = std::result::Result<T, E>;
