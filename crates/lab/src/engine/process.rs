//! Engine processes: spawn with output to `engine.log`, wait for readiness, stop and reap.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::error::{LabError, Result};
use crate::secrets::Secrets;

/// A command line: program, arguments and extra environment. `env` values are given to the
/// child only; [`CommandLine::display`] shows secret values redacted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CommandLine {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl CommandLine {
    /// The command as a shell-like line for logs, secrets redacted.
    pub fn display(&self, secrets: &Secrets) -> String {
        let mut parts: Vec<String> = self.env.keys().map(|k| format!("{k}=…")).collect();
        parts.push(self.program.clone());
        parts.extend(self.args.iter().map(|a| {
            if a.contains([' ', '"', '{']) {
                format!("'{a}'")
            } else {
                a.clone()
            }
        }));
        secrets.redact(&parts.join(" "))
    }
}

/// A child process the lab owns. Dropping it kills the child (SIGKILL) and reaps it.
pub(crate) struct ProcessGuard {
    engine: &'static str,
    child: Child,
    /// The orphan-registry record of the child, removed once it is reaped.
    record: Option<std::path::PathBuf>,
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        // The child is killed on drop (`kill_on_drop`), so its record goes too.
        if let Some(record) = self.record.take() {
            super::orphans::unregister(&record);
        }
    }
}

impl ProcessGuard {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, up to 10 s for the process to exit, then SIGKILL; always reaps.
    pub(crate) async fn stop(mut self) -> Result<()> {
        let stopped = self.stop_child().await;
        if let Some(record) = self.record.take() {
            super::orphans::unregister(&record);
        }
        stopped
    }

    async fn stop_child(&mut self) -> Result<()> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Ok(());
        }
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.start_kill();
                self.child
                    .wait()
                    .await
                    .map(drop)
                    .map_err(|e| LabError::launch(self.engine, format!("could not reap the engine: {e}")))
            }
        }
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log`, in its own working directory.
pub(crate) fn spawn(
    engine: &'static str,
    cmd: &CommandLine,
    log: &Path,
    secrets: &Secrets,
) -> Result<ProcessGuard> {
    use std::io::Write as _;
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| LabError::io(log, e))?;
    let _ = writeln!(file, "$ {}", cmd.display(secrets));
    let err_file = file.try_clone().map_err(|e| LabError::io(log, e))?;
    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .envs(&cmd.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err_file))
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            format!("`{}` was not found; install it or put it on PATH", cmd.program)
        } else {
            format!("could not start `{}`: {e}", cmd.program)
        };
        LabError::launch(engine, hint)
    })?;
    let record = child.id().and_then(|pid| super::orphans::register(pid, &cmd.program));
    Ok(ProcessGuard { engine, child, record })
}

/// The last `n` lines of a log file, secrets redacted.
pub(crate) fn log_tail(log: &Path, n: usize, secrets: &Secrets) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    secrets.redact(&tail)
}

/// How readiness is checked: something that may die while we wait.
pub(crate) trait Liveness {
    /// `Some(description)` once the engine has exited.
    fn exited(&mut self) -> Option<String>;
}

impl Liveness for ProcessGuard {
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("the engine exited at start ({status})")),
            Ok(None) => None,
            Err(e) => Some(format!("the engine could not be waited for: {e}")),
        }
    }
}

/// Polls `/health` then `/v1/models` until both answer 200, the engine dies, or `timeout` passes.
pub(crate) async fn wait_ready(
    engine: &str,
    base_url: &str,
    timeout: Duration,
    live: &mut (dyn Liveness + Send),
    log: &Path,
    secrets: &Secrets,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(|e| LabError::launch(engine, e.to_string()))?;
    let start = Instant::now();
    loop {
        if let Some(why) = live.exited() {
            return Err(LabError::launch(
                engine,
                format!("{why}; last lines of {}:\n{}", log.display(), log_tail(log, 20, secrets)),
            ));
        }
        if ok(&client, &format!("{base_url}/health")).await
            && ok(&client, &format!("{base_url}/v1/models")).await
        {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(LabError::launch(
                engine,
                format!(
                    "not ready after {:.0} s ({base_url}/health and /v1/models); last lines of {}:\n{}",
                    timeout.as_secs_f64(),
                    log.display(),
                    log_tail(log, 20, secrets)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ok(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
}
