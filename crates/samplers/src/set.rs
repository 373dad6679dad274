//! Running samplers on background threads and writing their CSV files.

use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{Sampler, SamplerError};

/// Where and how a [`SamplerSet`] runs.
#[derive(Debug, Clone)]
pub struct SamplerSetConfig {
    /// The directory that receives `<name>.csv` (a run's `samples/`); created if missing.
    pub dir: PathBuf,
    /// The run's clock origin: every `t` is seconds since this instant.
    pub origin: Instant,
    /// Interval for samplers that do not ask for their own (100 ms by default).
    pub interval: Duration,
}

impl SamplerSetConfig {
    /// A config with the default 100 ms interval.
    pub fn new(dir: impl Into<PathBuf>, origin: Instant) -> SamplerSetConfig {
        SamplerSetConfig { dir: dir.into(), origin, interval: Duration::from_millis(100) }
    }
}

/// How one sampler ended; serializes into `env.json` as `{"state": "ok" | "failed" | "unavailable", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SamplerState {
    /// Ran until [`SamplerSet::stop`].
    Ok,
    /// Stopped at `t` seconds because of `error`; the rows before it are in the file.
    Failed { t: f64, error: String },
    /// Never ran: the source does not exist here.
    Unavailable { reason: String },
}

impl std::fmt::Display for SamplerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SamplerState::Ok => f.write_str("ok"),
            SamplerState::Failed { t, error } => write!(f, "failed at t={t:.3}s: {error}"),
            SamplerState::Unavailable { reason } => write!(f, "unavailable: {reason}"),
        }
    }
}

/// What one sampler did during a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplerStatus {
    /// The sampler's name, also the file stem.
    pub name: String,
    /// The CSV file name inside the set's directory; `None` when unavailable.
    pub file: Option<String>,
    /// Data rows written (the header not counted).
    pub rows: u64,
    /// The interval it ran at, in milliseconds.
    pub interval_ms: u64,
    /// Ticks skipped because a sample took longer than the interval.
    pub missed_ticks: u64,
    #[serde(flatten)]
    pub state: SamplerState,
    /// The sampler's remark (see [`Sampler::note`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a sampler's thread is told between its ticks.
enum Command {
    /// Take one sample now (besides the ticks) and answer with its `t` once it is written, or
    /// with nothing when the sample failed.
    Sample(mpsc::Sender<Option<f64>>),
    /// Take the last sample and end.
    Stop,
}

struct Running {
    name: String,
    commands: mpsc::Sender<Command>,
    handle: JoinHandle<SamplerStatus>,
}

/// Asks the samplers of a [`SamplerSet`] for a sample now, from any thread, for as long as the
/// set runs ([`SamplerSet::sample_now`]).
#[derive(Clone)]
pub struct SampleNow {
    samplers: Vec<(String, mpsc::Sender<Command>)>,
}

impl SampleNow {
    /// Has the sampler named `name` take a sample at once, and waits until its rows are written:
    /// returns its `t` (seconds since the set's origin, as the file writes it), or `None` when
    /// there is no such sampler, it has stopped, or the sample failed (which stops it).
    /// Blocks: call it off any async runtime's threads (`spawn_blocking`).
    pub fn sample(&self, name: &str) -> Option<f64> {
        let (_, commands) = self.samplers.iter().find(|(n, _)| n == name)?;
        let (tx, rx) = mpsc::channel();
        commands.send(Command::Sample(tx)).ok()?;
        rx.recv().ok().flatten()
    }
}

/// Samplers running on background threads, one thread each.
///
/// Dropping the set stops and joins the threads like [`SamplerSet::stop`], discarding the statuses.
pub struct SamplerSet {
    config: SamplerSetConfig,
    running: Vec<Running>,
    unavailable: Vec<SamplerStatus>,
}

impl SamplerSet {
    /// Creates the output directory; starts nothing yet.
    pub fn new(config: SamplerSetConfig) -> Result<SamplerSet, SamplerError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|source| SamplerError::Io { path: config.dir.clone(), source })?;
        Ok(SamplerSet { config, running: Vec::new(), unavailable: Vec::new() })
    }

    /// Writes the sampler's CSV header and starts sampling on a new thread. The first sample is
    /// taken at once, then one per interval, and a last one at [`stop`](SamplerSet::stop).
    ///
    /// Errors: an invalid or duplicate name, or a file that cannot be created.
    pub fn spawn(&mut self, sampler: Box<dyn Sampler>) -> Result<(), SamplerError> {
        let name = sampler.name().to_owned();
        self.check_name(&name)?;
        let columns = sampler.columns();
        if columns.iter().any(|c| c == "t") {
            return Err(invalid(&name, "column `t` is reserved".to_owned()));
        }
        let interval = sampler.interval().unwrap_or(self.config.interval);
        if interval.is_zero() {
            return Err(invalid(&name, "interval must be positive".to_owned()));
        }
        let path = self.config.dir.join(format!("{name}.csv"));
        let file = File::create(&path).map_err(|source| SamplerError::Io { path: path.clone(), source })?;
        let mut writer = csv::Writer::from_writer(file);
        let csv_err = |source| SamplerError::Csv { path: path.clone(), source };
        writer
            .write_record(std::iter::once("t").chain(columns.iter().map(String::as_str)))
            .map_err(csv_err)?;
        writer.flush().map_err(|source| SamplerError::Io { path: path.clone(), source })?;

        let (commands, commands_rx) = mpsc::channel();
        let worker = Worker {
            sampler,
            writer,
            path,
            width: columns.len(),
            origin: self.config.origin,
            interval,
            commands: commands_rx,
        };
        let handle = std::thread::Builder::new()
            .name(format!("sampler-{name}"))
            .spawn(move || worker.run())
            .map_err(|source| SamplerError::Io { path: self.config.dir.clone(), source })?;
        self.running.push(Running { name, commands, handle });
        Ok(())
    }

    /// A handle that asks the running samplers for a sample between their ticks.
    pub fn sample_now(&self) -> SampleNow {
        SampleNow { samplers: self.running.iter().map(|r| (r.name.clone(), r.commands.clone())).collect() }
    }

    /// Records a sampler that could not be built (usually [`SamplerError::Unavailable`]) so that
    /// [`stop`](SamplerSet::stop) reports it.
    pub fn record_unavailable(&mut self, name: &str, error: &SamplerError) {
        let reason = match error {
            SamplerError::Unavailable { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        self.unavailable.push(SamplerStatus {
            name: name.to_owned(),
            file: None,
            rows: 0,
            interval_ms: 0,
            missed_ticks: 0,
            state: SamplerState::Unavailable { reason },
            note: None,
        });
    }

    /// Stops every sampler (each takes one last sample), joins the threads and returns one status
    /// per sampler: the running ones in the order they were spawned, then the unavailable ones.
    pub fn stop(mut self) -> Vec<SamplerStatus> {
        let mut statuses = self.stop_running();
        statuses.append(&mut self.unavailable);
        statuses
    }

    fn stop_running(&mut self) -> Vec<SamplerStatus> {
        let running = std::mem::take(&mut self.running);
        // Signal every thread before joining any, so they all stop together.
        let handles: Vec<_> = running
            .into_iter()
            .map(|r| {
                // A sampler that has already stopped (failed) no longer listens.
                let _ = r.commands.send(Command::Stop);
                (r.name, r.handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, handle)| {
                // Worker::run catches the sampler's panics; this is for a panic in the set itself.
                handle.join().unwrap_or_else(|_| SamplerStatus {
                    file: Some(format!("{name}.csv")),
                    name,
                    rows: 0,
                    interval_ms: 0,
                    missed_ticks: 0,
                    state: SamplerState::Failed {
                        t: self.config.origin.elapsed().as_secs_f64(),
                        error: "sampler thread panicked".to_owned(),
                    },
                    note: None,
                })
            })
            .collect()
    }

    fn check_name(&self, name: &str) -> Result<(), SamplerError> {
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(invalid(name, "name must be non-empty [a-z0-9_-]".to_owned()));
        }
        let taken = self
            .running
            .iter()
            .map(|r| r.name.as_str())
            .chain(self.unavailable.iter().map(|s| s.name.as_str()));
        if taken.into_iter().any(|n| n == name) {
            return Err(invalid(name, "name already used in this set".to_owned()));
        }
        Ok(())
    }
}

impl Drop for SamplerSet {
    fn drop(&mut self) {
        self.stop_running();
    }
}

fn invalid(sampler: &str, message: String) -> SamplerError {
    SamplerError::Invalid { sampler: sampler.to_owned(), message }
}

struct Worker {
    sampler: Box<dyn Sampler>,
    writer: csv::Writer<File>,
    path: PathBuf,
    width: usize,
    origin: Instant,
    interval: Duration,
    commands: mpsc::Receiver<Command>,
}

impl Worker {
    fn run(mut self) -> SamplerStatus {
        let name = self.sampler.name().to_owned();
        let mut rows = 0u64;
        let mut missed = 0u64;
        let start = Instant::now();
        let mut tick = 0u64;
        let mut last = false;
        let state = loop {
            let t = self.origin.elapsed().as_secs_f64();
            match self.sample_once(t) {
                Ok(n) => rows += n,
                Err(error) => {
                    let error = error.to_string();
                    eprintln!("warning: sampler {name} stopped at t={t:.3}s: {error}");
                    break SamplerState::Failed { t, error };
                }
            }
            if last {
                break SamplerState::Ok;
            }
            let now = Instant::now();
            tick += 1;
            let elapsed_ticks = now.duration_since(start).as_nanos() / self.interval.as_nanos();
            let due = elapsed_ticks as u64 + 1;
            if due > tick {
                missed += due - tick;
                tick = due;
            }
            let next = start + nanos(self.interval.as_nanos() * u128::from(tick));
            // Samples asked for between two ticks are taken at once; the next tick stays due.
            let failed = loop {
                let now = Instant::now();
                match self.commands.recv_timeout(next.saturating_duration_since(now)) {
                    Err(RecvTimeoutError::Timeout) => break None,
                    Ok(Command::Sample(answer)) => {
                        let t = self.origin.elapsed().as_secs_f64();
                        match self.sample_once(t) {
                            Ok(n) => {
                                rows += n;
                                // As the file writes it, so that a reader finds this very row.
                                let _ = answer.send(format!("{t:.6}").parse().ok());
                            }
                            Err(error) => {
                                let _ = answer.send(None);
                                break Some((t, error));
                            }
                        }
                    }
                    Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => {
                        last = true;
                        break None;
                    }
                }
            };
            if let Some((t, error)) = failed {
                let error = error.to_string();
                eprintln!("warning: sampler {name} stopped at t={t:.3}s: {error}");
                break SamplerState::Failed { t, error };
            }
        };
        SamplerStatus {
            file: Some(format!("{name}.csv")),
            note: self.sampler.note(),
            name,
            rows,
            interval_ms: self.interval.as_millis() as u64,
            missed_ticks: missed,
            state,
        }
    }

    /// Samples once, writes and flushes the rows; returns how many were written.
    fn sample_once(&mut self, t: f64) -> Result<u64, SamplerError> {
        let sampler = &mut self.sampler;
        let rows = std::panic::catch_unwind(AssertUnwindSafe(|| sampler.sample(t))).map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            invalid(self.sampler.name(), format!("panicked: {message}"))
        })??;
        let t_cell = format!("{t:.6}");
        for row in &rows {
            if row.len() != self.width {
                return Err(invalid(
                    self.sampler.name(),
                    format!("row has {} cells, header has {}", row.len(), self.width),
                ));
            }
            let record = std::iter::once(t_cell.as_str()).chain(row.iter().map(String::as_str));
            self.writer.write_record(record).map_err(|source| csv_error(&self.path, source))?;
        }
        self.writer.flush().map_err(|source| SamplerError::Io { path: self.path.clone(), source })?;
        Ok(rows.len() as u64)
    }
}

fn csv_error(path: &Path, source: csv::Error) -> SamplerError {
    SamplerError::Csv { path: path.to_owned(), source }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}
