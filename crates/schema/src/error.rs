//! The lab's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the lab. Messages are meant for the person at the terminal:
/// they name the file, line and key for configuration errors, and what is missing and how to
/// get it for launch errors.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A configuration or input file is malformed (unknown key, wrong type, bad value):
    /// `FILE:LINE: FIELD: message`.
    #[error(transparent)]
    Config(#[from] stats::Located),
    /// A configuration value is invalid where no position is known (for example a flag).
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An engine could not be started, or died, or never became ready.
    #[error("engine `{engine}` failed: {message}")]
    Launch { engine: String, message: String },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Another crate (loadgen, samplers, emulator) reported an error.
    #[error("{0}")]
    Other(String),
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
