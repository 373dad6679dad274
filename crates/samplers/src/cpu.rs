//! CPU and memory: the whole system (`/proc/stat`, `/proc/meminfo`) and the engine's processes
//! (`/proc/<pid>/stat`, `/proc/<pid>/io`).

use std::collections::{HashMap, HashSet};

use procfs::process::Process;
use procfs::{Current, CurrentSI, KernelStats, Meminfo};

use crate::{num, rate, Row, Sampler, SamplerError};

/// Cumulative CPU ticks of the whole system.
#[derive(Debug, Clone, Copy)]
struct SystemTicks {
    user: u64,
    system: u64,
    iowait: u64,
    idle: u64,
    total: u64,
    cpus: usize,
}

/// Samples system-wide CPU use and memory.
///
/// Writes `cpu.csv`, one row per sample (none on the first, which sets the baseline):
///
/// | column | unit |
/// |---|---|
/// | `cpu_pct` | % of all CPUs busy (not idle, not iowait), 0–100 |
/// | `user_pct` | % in user mode (nice and guest included) |
/// | `system_pct` | % in kernel mode (irq and softirq included) |
/// | `iowait_pct` | % idle waiting for I/O |
/// | `cpu_cores` | busy CPUs: `cpu_pct / 100 ×` the number of CPUs |
/// | `mem_total_bytes` | `MemTotal` |
/// | `mem_used_bytes` | `MemTotal − MemAvailable` |
/// | `mem_available_bytes` | `MemAvailable` (`MemFree + Buffers + Cached` on kernels without it) |
#[derive(Debug, Default)]
pub struct SystemSampler {
    previous: Option<SystemTicks>,
}

impl SystemSampler {
    pub fn new() -> SystemSampler {
        SystemSampler::default()
    }
}

fn system_ticks() -> Result<SystemTicks, SamplerError> {
    let stats = KernelStats::current().map_err(|e| SamplerError::proc("/proc/stat", e))?;
    let c = &stats.total;
    let opt = |v: Option<u64>| v.unwrap_or(0);
    let iowait = opt(c.iowait);
    let system = c.system + opt(c.irq) + opt(c.softirq);
    let user = c.user + c.nice;
    Ok(SystemTicks {
        user,
        system,
        iowait,
        idle: c.idle,
        total: user + system + iowait + c.idle + opt(c.steal),
        cpus: stats.cpu_time.len().max(1),
    })
}

impl Sampler for SystemSampler {
    fn name(&self) -> &str {
        "cpu"
    }

    fn columns(&self) -> Vec<String> {
        [
            "cpu_pct",
            "user_pct",
            "system_pct",
            "iowait_pct",
            "cpu_cores",
            "mem_total_bytes",
            "mem_used_bytes",
            "mem_available_bytes",
        ]
        .map(String::from)
        .to_vec()
    }

    fn sample(&mut self, _t: f64) -> Result<Vec<Row>, SamplerError> {
        let now = system_ticks()?;
        let mem = Meminfo::current().map_err(|e| SamplerError::proc("/proc/meminfo", e))?;
        let Some(before) = self.previous.replace(now) else { return Ok(Vec::new()) };
        let total = now.total.saturating_sub(before.total) as f64;
        let pct = |a: u64, b: u64| if total > 0.0 { a.saturating_sub(b) as f64 * 100.0 / total } else { 0.0 };
        let idle = pct(now.idle, before.idle) + pct(now.iowait, before.iowait);
        let busy = if total > 0.0 { (100.0 - idle).max(0.0) } else { 0.0 };
        let available = mem.mem_available.unwrap_or(mem.mem_free + mem.buffers + mem.cached);
        Ok(vec![vec![
            num(busy),
            num(pct(now.user, before.user)),
            num(pct(now.system, before.system)),
            num(pct(now.iowait, before.iowait)),
            num(busy / 100.0 * now.cpus as f64),
            num(mem.mem_total as f64),
            num(mem.mem_total.saturating_sub(available) as f64),
            num(available as f64),
        ]])
    }
}

/// Which processes a [`ProcessSampler`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessScope {
    /// The process alone.
    Process,
    /// The process and all its descendants, found anew at every sample (engines fork workers:
    /// vLLM's engine core, tensor-parallel ranks).
    Tree,
}

/// What a [`ProcessSampler`] follows.
#[derive(Debug, Clone, Copy)]
pub struct ProcessConfig {
    /// The engine's process id.
    pub pid: i32,
    pub scope: ProcessScope,
}

#[derive(Debug, Clone, Copy)]
struct ProcSnapshot {
    starttime: u64,
    cpu_ticks: u64,
    io: Option<procfs::process::Io>,
}

/// Samples the engine's process (or process tree): CPU, resident memory and I/O.
///
/// Writes `process.csv`, one row per live process per sample:
///
/// | column | unit |
/// |---|---|
/// | `pid` | process id |
/// | `comm` | process name (`/proc/<pid>/stat`) |
/// | `cpu_cores` | CPUs used: (utime + stime) ticks per second / ticks per second; 1.0 = one core |
/// | `rss_bytes` | resident set size |
/// | `read_bytes_s` | bytes/s the process caused to be read from storage (`read_bytes`) |
/// | `write_bytes_s` | bytes/s the process caused to be written to storage (`write_bytes`) |
/// | `rchar_s` | bytes/s passed to read-like syscalls, page cache hits included (`rchar`) |
/// | `wchar_s` | bytes/s passed to write-like syscalls (`wchar`) |
///
/// Rate cells are empty the first time a process is seen, and the I/O cells are empty when
/// `/proc/<pid>/io` is not readable (another user's process; the note says so). The sampler
/// fails when the root process is gone.
pub struct ProcessSampler {
    config: ProcessConfig,
    previous: HashMap<i32, ProcSnapshot>,
    last_t: f64,
    ticks_per_second: f64,
    io_note: Option<String>,
}

impl ProcessSampler {
    /// Checks that the process exists and whether its I/O counters are readable.
    pub fn new(config: ProcessConfig) -> Result<ProcessSampler, SamplerError> {
        let root = open(config.pid)?;
        root.stat().map_err(|e| stat_error(config.pid, e))?;
        let io_note = root.io().err().map(|e| format!("I/O columns empty: /proc/{}/io: {e}", config.pid));
        Ok(ProcessSampler {
            config,
            previous: HashMap::new(),
            last_t: f64::NAN,
            ticks_per_second: procfs::ticks_per_second() as f64,
            io_note,
        })
    }

    /// The root pid and, for [`ProcessScope::Tree`], every descendant alive now.
    fn pids(&self) -> Result<Vec<i32>, SamplerError> {
        let root = self.config.pid;
        if self.config.scope == ProcessScope::Process {
            return Ok(vec![root]);
        }
        let all = procfs::process::all_processes().map_err(|e| SamplerError::proc("/proc", e))?;
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in all.flatten() {
            // A process that exits while we scan is simply not part of this sample.
            if let Ok(stat) = p.stat() {
                children.entry(stat.ppid).or_default().push(stat.pid);
            }
        }
        let mut seen = HashSet::from([root]);
        let mut out = vec![root];
        let mut i = 0;
        while let Some(&pid) = out.get(i) {
            for &child in children.get(&pid).into_iter().flatten() {
                if seen.insert(child) {
                    out.push(child);
                }
            }
            i += 1;
        }
        Ok(out)
    }
}

fn open(pid: i32) -> Result<Process, SamplerError> {
    Process::new(pid).map_err(|e| stat_error(pid, e))
}

fn stat_error(pid: i32, e: procfs::ProcError) -> SamplerError {
    SamplerError::proc(format!("/proc/{pid}/stat (the engine process)"), e)
}

impl Sampler for ProcessSampler {
    fn name(&self) -> &str {
        "process"
    }

    fn columns(&self) -> Vec<String> {
        ["pid", "comm", "cpu_cores", "rss_bytes", "read_bytes_s", "write_bytes_s", "rchar_s", "wchar_s"]
            .map(String::from)
            .to_vec()
    }

    fn note(&self) -> Option<String> {
        self.io_note.clone()
    }

    fn sample(&mut self, t: f64) -> Result<Vec<Row>, SamplerError> {
        let dt = t - self.last_t;
        let page_size = procfs::page_size();
        let mut rows = Vec::new();
        let mut current = HashMap::new();
        for pid in self.pids()? {
            let is_root = pid == self.config.pid;
            let stat = match Process::new(pid).and_then(|p| Ok((p.stat()?, p.io().ok()))) {
                Ok(s) => s,
                Err(e) if is_root => return Err(stat_error(pid, e)),
                Err(_) => continue, // a worker that exited during the sample
            };
            let (stat, io) = stat;
            let snap = ProcSnapshot { starttime: stat.starttime, cpu_ticks: stat.utime + stat.stime, io };
            let before = self.previous.get(&pid).filter(|b| b.starttime == snap.starttime);
            let empty = || String::new();
            let cpu = before
                .map_or_else(empty, |b| num(rate(snap.cpu_ticks, b.cpu_ticks, dt) / self.ticks_per_second));
            let io_rates: [String; 4] = match (before.and_then(|b| b.io), snap.io) {
                (Some(b), Some(n)) => [
                    num(rate(n.read_bytes, b.read_bytes, dt)),
                    num(rate(n.write_bytes, b.write_bytes, dt)),
                    num(rate(n.rchar, b.rchar, dt)),
                    num(rate(n.wchar, b.wchar, dt)),
                ],
                _ => Default::default(),
            };
            let mut row = vec![pid.to_string(), stat.comm.clone(), cpu, num((stat.rss * page_size) as f64)];
            row.extend(io_rates);
            rows.push(row);
            current.insert(pid, snap);
        }
        self.previous = current;
        self.last_t = t;
        Ok(rows)
    }
}
