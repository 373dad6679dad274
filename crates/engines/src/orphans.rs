//! Orphans: engines whose lab is gone (killed with SIGKILL, crashed, machine lost power).
//!
//! Every container the lab starts carries labels naming its run and its owner: `kvlab.run-id`,
//! `kvlab.managed=true`, `kvlab.owner-pid`, `kvlab.owner-start` (the owner's start time in clock
//! ticks since boot, field 22 of `/proc/PID/stat`) and `kvlab.owner-boot` (the kernel's boot id).
//! Every process the lab spawns is recorded in a small JSON file under the registry directory
//! (`.kvlab/engines/` of the workspace), removed when the lab stops the process.
//!
//! Invariants:
//! - An owner is alive only if the boot id is this boot's and a process with that pid *and* that
//!   start time exists: a reused pid is never mistaken for the lab.
//! - [`reap_orphans`] touches only what a dead owner left: a running lab's engines are kept.
//! - A recorded engine process is killed only if its own start time still matches the record;
//!   a stale record whose pid was reused is just deleted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::signals::{signal, signal_group, Signal};

/// Label keys on every container the lab starts.
pub const LABEL_RUN_ID: &str = "kvlab.run-id";
pub const LABEL_MANAGED: &str = "kvlab.managed";
pub const LABEL_OWNER_PID: &str = "kvlab.owner-pid";
pub const LABEL_OWNER_START: &str = "kvlab.owner-start";
pub const LABEL_OWNER_BOOT: &str = "kvlab.owner-boot";

/// The process that owns an engine: pid, start time and boot id together identify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Clock ticks after boot when the process started (`/proc/PID/stat`, field 22).
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id`; empty where unknown.
    pub boot_id: String,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner { pid, start_time: process_start_time(pid).unwrap_or(0), boot_id: boot_id() }
    }

    /// Whether the owner still runs (same boot, same pid, same start time).
    pub fn is_alive(&self) -> bool {
        self.boot_id == boot_id() && process_start_time(self.pid) == Some(self.start_time)
    }

    /// The container labels naming this owner.
    pub fn labels(&self) -> [(&'static str, String); 3] {
        [
            (LABEL_OWNER_PID, self.pid.to_string()),
            (LABEL_OWNER_START, self.start_time.to_string()),
            (LABEL_OWNER_BOOT, self.boot_id.clone()),
        ]
    }
}

/// The start time of a process (field 22 of `/proc/PID/stat`), `None` if there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_time)
}

/// Whether process `pid` is gone or has exited (a zombie waiting for its parent to reap it).
pub fn process_exited(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|s| s.exited())
}

/// The fields of `/proc/PID/stat` the lab reads, in one read.
struct ProcStat {
    /// Field 3: `R`, `S`, ... `Z` (zombie), `X` (dead).
    state: char,
    /// Field 5: the process group.
    pgrp: u32,
    /// Field 22: clock ticks after boot when the process started.
    start_time: u64,
}

impl ProcStat {
    fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    Some(ProcStat { state: stat.state, pgrp: u32::try_from(stat.pgrp).ok()?, start_time: stat.starttime })
}

/// The live (not zombie) processes of process group `pgid`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    all.filter_map(|p| u32::try_from(p.ok()?.pid).ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.pgrp == pgid && !s.exited()))
        .collect()
}

/// SIGTERM to group `pgid`, up to `grace` for its processes to exit, then SIGKILL and up to
/// 5 s more. Returns whether the group is empty (zombies aside) at the end.
///
/// A process group id cannot be given to a new process while the group has members, so a
/// group with members is still the engine's.
pub(crate) fn stop_group(pgid: u32, grace: Duration) -> bool {
    if group_members(pgid).is_empty() {
        return true;
    }
    signal_group(pgid, Signal::TERM);
    if wait_group_empty(pgid, grace) {
        return true;
    }
    signal_group(pgid, Signal::KILL);
    wait_group_empty(pgid, Duration::from_secs(5))
}

fn wait_group_empty(pgid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if group_members(pgid).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn boot_id() -> String {
    procfs::sys::kernel::random::boot_id().map(|s| s.trim().to_owned()).unwrap_or_default()
}

static REGISTRY: OnceLock<PathBuf> = OnceLock::new();

/// Sets where engine processes are recorded (once per process; the command line sets
/// `<workspace>/.kvlab/engines`). Without it, processes are not recorded.
pub fn set_registry_dir(dir: PathBuf) {
    let _ = REGISTRY.set(dir);
}

/// The registry directory, if one was set.
pub fn registry_dir() -> Option<&'static Path> {
    REGISTRY.get().map(PathBuf::as_path)
}

/// One recorded engine process (`<registry>/<pid>-<start>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRecord {
    pub pid: u32,
    pub start_time: u64,
    /// The program, for messages.
    pub program: String,
    pub owner: Owner,
}

/// Records a spawned process; returns the record's path (removed by [`unregister`]).
pub(crate) fn register(pid: u32, program: &str) -> Option<PathBuf> {
    let dir = registry_dir()?;
    std::fs::create_dir_all(dir).ok()?;
    let record = EngineRecord {
        pid,
        start_time: process_start_time(pid).unwrap_or(0),
        program: program.to_owned(),
        owner: Owner::current(),
    };
    let path = dir.join(format!("{}-{}.json", record.pid, record.start_time));
    std::fs::write(&path, serde_json::to_string(&record).ok()?).ok()?;
    Some(path)
}

/// Removes a record written by [`register`].
pub(crate) fn unregister(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Something [`reap_orphans`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reaped {
    /// `container` or `process`.
    pub kind: &'static str,
    /// The container name, or `PID (program)`.
    pub what: String,
    /// The run the container served (empty for processes).
    pub run_id: String,
    pub owner_pid: u32,
}

impl std::fmt::Display for Reaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            "container" => write!(
                f,
                "removed container {} of run {} (its lab, pid {}, is gone)",
                self.what, self.run_id, self.owner_pid
            ),
            _ => write!(f, "killed engine process {} (its lab, pid {}, is gone)", self.what, self.owner_pid),
        }
    }
}

/// Removes the containers and kills the engine processes whose lab is gone: containers of every
/// container runtime on PATH whose daemon answers, processes recorded under `registry` (or the
/// registry set with [`set_registry_dir`]).
pub fn reap_orphans(registry: Option<&Path>) -> Result<Vec<Reaped>> {
    let mut reaped = Vec::new();
    for runtime in ["docker", "podman"] {
        if super::find_on_path(runtime).is_some() {
            reaped.extend(reap_containers(runtime)?);
        }
    }
    if let Some(dir) = registry.or(registry_dir()) {
        reaped.extend(reap_processes(dir)?);
    }
    Ok(reaped)
}

/// The containers of `runtime` with `kvlab.managed=true` whose owner is gone, removed.
/// A runtime whose daemon does not answer has nothing to reap.
fn reap_containers(runtime: &str) -> Result<Vec<Reaped>> {
    let format = format!(
        "{{{{.Names}}}}\t{{{{.Label \"{LABEL_RUN_ID}\"}}}}\t{{{{.Label \"{LABEL_OWNER_PID}\"}}}}\t\
         {{{{.Label \"{LABEL_OWNER_START}\"}}}}\t{{{{.Label \"{LABEL_OWNER_BOOT}\"}}}}"
    );
    let out = std::process::Command::new(runtime)
        .args(["ps", "--all", "--filter", &format!("label={LABEL_MANAGED}=true"), "--format", &format])
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else { return Ok(Vec::new()) };
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let mut reaped = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, run_id, pid, start, boot] = f[..] else { continue };
        let (Ok(pid), Ok(start_time)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            // Not started by a lab that labels its owner: not ours to judge.
            continue;
        };
        let owner = Owner { pid, start_time, boot_id: boot.to_owned() };
        if owner.is_alive() {
            continue;
        }
        let rm = std::process::Command::new(runtime)
            .args(["rm", "--force", name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| EngineError::launch(runtime, format!("could not run `{runtime} rm`: {e}")))?;
        if !rm.status.success() {
            return Err(EngineError::launch(
                runtime,
                format!(
                    "could not remove the orphaned container {name}: {}",
                    String::from_utf8_lossy(&rm.stderr).trim()
                ),
            ));
        }
        reaped.push(Reaped {
            kind: "container",
            what: name.to_owned(),
            run_id: run_id.to_owned(),
            owner_pid: pid,
        });
    }
    Ok(reaped)
}

/// The recorded processes whose owner is gone: SIGTERM, up to 5 s, SIGKILL; records deleted.
fn reap_processes(dir: &Path) -> Result<Vec<Reaped>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EngineError::io(dir, e)),
    };
    let mut reaped = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(record) =
            std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<EngineRecord>(&t).ok())
        else {
            // Unreadable (half-written by a lab killed mid-write): nothing can be identified.
            unregister(&path);
            continue;
        };
        if record.owner.is_alive() {
            continue;
        }
        let same_boot = record.owner.boot_id == boot_id();
        if same_boot && process_start_time(record.pid) == Some(record.start_time) {
            match proc_stat(record.pid) {
                // The engine leads its own group: it goes with its workers.
                Some(s) if s.pgrp == record.pid => {
                    stop_group(record.pid, Duration::from_secs(5));
                }
                _ => kill_and_wait(record.pid, record.start_time),
            }
            reaped.push(Reaped {
                kind: "process",
                what: format!("{} ({})", record.pid, record.program),
                run_id: String::new(),
                owner_pid: record.owner.pid,
            });
        }
        unregister(&path);
    }
    Ok(reaped)
}

/// Whether the process is gone, replaced by another with its pid, or a zombie (which no signal
/// can remove but its parent's reaper).
fn gone(pid: u32, start_time: u64) -> bool {
    proc_stat(pid).is_none_or(|s| s.start_time != start_time || s.exited())
}

fn kill_and_wait(pid: u32, start_time: u64) {
    signal(pid, Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid, start_time) {
        if Instant::now() > deadline {
            signal(pid, Signal::KILL);
            let hard = Instant::now() + Duration::from_secs(5);
            while !gone(pid, start_time) && Instant::now() < hard {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
