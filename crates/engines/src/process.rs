//! Engine processes: spawn with output to `engine.log`, wait for readiness, stop and reap.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::error::{EngineError, Result};
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

/// How long an engine's process group gets to exit after SIGTERM before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// The environment every engine process gets from the run: the chosen GPUs
/// (`CUDA_VISIBLE_DEVICES`, where the selection names them) and `HF_TOKEN` (from `.env`; the
/// environment is the only place a secret goes, never argv).
pub(crate) fn engine_env(gpus: &super::GpuSelection, hf_token: Option<&str>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(devices) = gpus.device_list() {
        env.insert("CUDA_VISIBLE_DEVICES".to_owned(), devices);
    }
    if let Some(token) = hf_token {
        env.insert("HF_TOKEN".to_owned(), token.to_owned());
    }
    env
}

/// A child process the lab owns, leading its own process group (the engine's workers, such as
/// vLLM's EngineCore or Python's multiprocessing children, are in it too). Dropping it kills the
/// whole group (SIGKILL) and reaps the child.
pub(crate) struct ProcessGuard {
    engine: &'static str,
    child: Child,
    /// The process group: the child's pid. `None` once the group has been stopped.
    pgid: Option<u32>,
    /// The orphan-registry record of the child, removed once it is reaped.
    record: Option<std::path::PathBuf>,
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        // The child itself is killed on drop (`kill_on_drop`); its group goes with it.
        if let Some(pgid) = self.pgid.take() {
            if !super::orphans::group_members(pgid).is_empty() {
                crate::signals::signal_group(pgid, crate::signals::Signal::KILL);
            }
        }
        if let Some(record) = self.record.take() {
            super::orphans::unregister(&record);
        }
    }
}

impl ProcessGuard {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM to the engine's process group, up to [`STOP_GRACE`] for every process of it to
    /// exit, then SIGKILL; always reaps the child.
    pub(crate) async fn stop(mut self) -> Result<()> {
        let stopped = self.stop_group(STOP_GRACE).await;
        if let Some(record) = self.record.take() {
            super::orphans::unregister(&record);
        }
        stopped
    }

    async fn stop_group(&mut self, grace: Duration) -> Result<()> {
        let engine = self.engine;
        let failed = |what: String| EngineError::launch(engine, what);
        if let Some(pgid) = self.pgid.take() {
            let empty = tokio::task::spawn_blocking(move || super::orphans::stop_group(pgid, grace))
                .await
                .unwrap_or(false);
            if !empty {
                let _ = self.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                return Err(failed(format!(
                    "processes of the engine's process group {pgid} survived SIGKILL: {:?}",
                    super::orphans::group_members(pgid)
                )));
            }
        }
        // The child led the group: it has exited, and is reaped here.
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(failed(format!("could not reap the engine: {e}"))),
            Err(_) => {
                let _ = self.child.start_kill();
                self.child
                    .wait()
                    .await
                    .map(drop)
                    .map_err(|e| failed(format!("could not reap the engine: {e}")))
            }
        }
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log`, in a process group of its own
/// (so that stopping it stops the processes it starts).
pub(crate) fn spawn(
    engine: &'static str,
    cmd: &CommandLine,
    log: &Path,
    secrets: &Secrets,
) -> Result<ProcessGuard> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| EngineError::io(log, e))?;
    let _ = writeln!(file, "$ {}", cmd.display(secrets));
    let err_file = file.try_clone().map_err(|e| EngineError::io(log, e))?;
    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .envs(&cmd.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err_file))
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            format!("`{}` was not found; install it or put it on PATH", cmd.program)
        } else {
            format!("could not start `{}`: {e}", cmd.program)
        };
        EngineError::launch(engine, hint)
    })?;
    let pgid = child.id();
    let record = pgid.and_then(|pid| super::orphans::register(pid, &cmd.program));
    Ok(ProcessGuard { engine, child, pgid, record })
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
    let urls = [format!("{base_url}/health"), format!("{base_url}/v1/models")];
    wait_for(engine, &urls, timeout, live, log, secrets).await
}

/// Polls one URL until it answers 200, the process dies, or `timeout` passes (a sidecar's
/// readiness: LMCache's server answers on its `/metrics` once it serves).
pub(crate) async fn wait_ready_at(
    engine: &str,
    url: &str,
    timeout: Duration,
    live: &mut (dyn Liveness + Send),
    log: &Path,
    secrets: &Secrets,
) -> Result<()> {
    wait_for(engine, &[url.to_owned()], timeout, live, log, secrets).await
}

async fn wait_for(
    engine: &str,
    urls: &[String],
    timeout: Duration,
    live: &mut (dyn Liveness + Send),
    log: &Path,
    secrets: &Secrets,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(|e| EngineError::launch(engine, e.to_string()))?;
    let start = Instant::now();
    loop {
        if let Some(why) = live.exited() {
            return Err(EngineError::launch(
                engine,
                format!("{why}; last lines of {}:\n{}", log.display(), log_tail(log, 20, secrets)),
            ));
        }
        let mut all = true;
        for url in urls {
            if !ok(&client, url).await {
                all = false;
                break;
            }
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(EngineError::launch(
                engine,
                format!(
                    "not ready after {:.0} s ({}); a slow engine (model download, load, compilation) may \
                     need longer: raise the limit with --ready-timeout SECONDS; last lines of {}:\n{}",
                    timeout.as_secs_f64(),
                    urls.join(" and "),
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
