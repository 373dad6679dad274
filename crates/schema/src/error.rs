//! The schema's error type: what reading an experiment, a tier or a flag can go wrong with.

use std::path::PathBuf;

/// A configuration that cannot be used. Messages are meant for the person at the terminal: they
/// name the file, line and key of a file's error, and the flag or field of a value's.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration or input file is malformed (unknown key, wrong type, bad value):
    /// `FILE:LINE: FIELD: message`.
    #[error(transparent)]
    Config(#[from] stats::Located),
    /// A value is invalid where no position in a file is known: a flag or a setting. The message
    /// names the flag or field first (`--gpus 4 asks for ...`, `cache_sizes on the baseline tier
    /// ...`, `--goodput: ...`), as a file's error names its field.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl ConfigError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ConfigError {
        ConfigError::Io { path: path.into(), source }
    }

    /// An error on `field` at byte `offset` of `text`, the content of `file`.
    pub fn at(
        file: &str,
        text: &str,
        offset: usize,
        field: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError::Config(stats::Located::at(file, text, offset, field, message))
    }

    /// An error on `field` at `line` of `file`.
    pub fn config(
        file: &str,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Config(stats::Located::new(file, line, field, message))
    }
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
