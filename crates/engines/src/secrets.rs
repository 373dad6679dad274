//! Secrets: `HF_TOKEN` from `.env`. A secret reaches the engine (through `--env-file` or the
//! child's environment) and nothing else: every text the lab writes or prints goes through
//! [`Secrets::redact`].

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// The secrets of a run. Invariant: `Debug` never shows a value.
#[derive(Clone, Default)]
pub struct Secrets {
    hf_token: Option<String>,
    env_file: Option<PathBuf>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("hf_token", &self.hf_token.as_ref().map(|_| "<redacted>"))
            .field("env_file", &self.env_file)
            .finish()
    }
}

impl Secrets {
    /// Reads `HF_TOKEN` from a dotenv file (`KEY=value` lines, `#` comments, optional quotes,
    /// optional `export `). A missing file means no secrets.
    ///
    /// Hand-written rather than dotenvy: dotenvy expands `$VAR` in values, so the token the lab
    /// would redact could differ from the one `docker --env-file` passes (which expands nothing),
    /// and its parse error carries the offending line, which may hold the token; this reader
    /// takes only `HF_TOKEN` and has no error that could echo a line.
    pub fn from_dotenv(path: &Path) -> Result<Secrets> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::default()),
            Err(e) => return Err(EngineError::io(path, e)),
        };
        let mut hf_token = None;
        for line in text.lines() {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                if k.trim() == "HF_TOKEN" && !v.is_empty() {
                    hf_token = Some(v.to_owned());
                }
            }
        }
        Ok(Secrets { hf_token, env_file: Some(path.to_owned()) })
    }

    /// `HF_TOKEN` from the environment of this process, when `.env` has none.
    pub fn with_process_env(mut self) -> Secrets {
        if self.hf_token.is_none() {
            self.hf_token = std::env::var("HF_TOKEN").ok().filter(|v| !v.is_empty());
        }
        self
    }

    pub fn hf_token(&self) -> Option<&str> {
        self.hf_token.as_deref()
    }

    /// The dotenv file, for `--env-file` (the token never goes on a command line).
    pub fn env_file(&self) -> Option<&Path> {
        self.env_file.as_deref().filter(|_| self.hf_token.is_some())
    }

    /// `text` with every secret value replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        match &self.hf_token {
            Some(token) if token.len() >= 4 => text.replace(token.as_str(), "<redacted>"),
            _ => text.to_owned(),
        }
    }
}
