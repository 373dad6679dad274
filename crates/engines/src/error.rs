//! The engines' error type: what starting, stopping or describing an engine can go wrong with.

use std::path::PathBuf;

use schema::error::ConfigError;
use schema::EngineKind;

/// An engine that could not be started or used. Messages say what is missing and how to get it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's settings are invalid: a flag, a tier, the GPUs asked for.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An engine could not be started, or died, or never became ready.
    #[error("engine `{engine}` failed: {message}")]
    Launch { engine: String, message: String },
    /// A launcher was given the launch spec of another engine kind.
    #[error("the `{launcher}` launcher was given the launch spec of engine `{given}`")]
    WrongEngine { launcher: EngineKind, given: EngineKind },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// JSON that could not be written or read back (`what`: the record).
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> EngineError {
        EngineError::Io { path: path.into(), source }
    }

    pub fn launch(engine: &str, message: impl Into<String>) -> EngineError {
        EngineError::Launch { engine: engine.to_owned(), message: message.into() }
    }

    /// An invalid setting ([`ConfigError::Invalid`]); the message names the flag or field first.
    pub fn invalid(message: impl Into<String>) -> EngineError {
        EngineError::Config(ConfigError::Invalid(message.into()))
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
