//! A real single-host Slurm cluster for tests and demos: Debian's munge, slurmctld and slurmd, one
//! slurmd per emulated node (`n1`..`nN`, the packaged slurmd supports several per host), every
//! daemon on 127.0.0.1 only. Needs root (the daemons run as root, munged as user `munge`).
//!
//! Layout of the cluster directory (default `$TMPDIR/kvlab-slurm`, or `KVLAB_SLURM_DIR`):
//! `etc/slurm.conf` (point `SLURM_CONF` at it), `run/` (pid files, munge socket), `log/`
//! (daemon logs, `jobcomp.txt`), `state/`, `spool/`, `munge/`. [`down`] keeps `log/` and `etc/`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procfs::Current as _;
use rustix::process::{kill_process, Pid, Signal};

/// What went wrong bringing the cluster up, down, or asking it something.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file of the cluster directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A daemon, a package install or a Slurm client failed, or the cluster did not come up.
    #[error("{0}")]
    Failed(String),
}

impl ClusterError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ClusterError {
        ClusterError::Io { path: path.into(), source }
    }
}

type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// The configuration template; `@DIR@`, `@CTLD_PORT@` and `@NODES@` are filled in by [`up`].
pub const SLURM_CONF_TEMPLATE: &str = include_str!("slurm.conf.in");

/// The binaries the cluster needs; missing ones are installed with apt-get.
const BINARIES: &[&str] =
    &["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/bin/setpriv"];

/// How to bring a cluster up. [`UpConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub dir: PathBuf,
    /// Emulated nodes (at least 1).
    pub nodes: u32,
    /// CPUs of each node (default: the host's).
    pub cpus: u32,
    /// Memory of each node in MiB (default: 80 % of the host's RAM / nodes).
    pub mem_mb: u64,
    pub ctld_port: u16,
    /// Node `i` (1-based) listens on `slurmd_port_base + i - 1`.
    pub slurmd_port_base: u16,
    /// Upper bound on waiting for each daemon and for the nodes to become idle.
    pub timeout: Duration,
}

impl UpConfig {
    /// Defaults for `nodes` nodes, in [`default_dir`].
    pub fn new(nodes: u32) -> UpConfig {
        let nodes = nodes.max(1);
        let total_mb = procfs::Meminfo::current().map_or(4096, |m| m.mem_total / (1024 * 1024));
        UpConfig {
            dir: default_dir(),
            nodes,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            mem_mb: (total_mb * 8 / 10 / u64::from(nodes)).max(256),
            ctld_port: 6817,
            slurmd_port_base: 6818,
            timeout: Duration::from_secs(60),
        }
    }
}

/// `KVLAB_SLURM_DIR`, else `$TMPDIR/kvlab-slurm`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KVLAB_SLURM_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    std::env::temp_dir().join("kvlab-slurm")
}

/// A running cluster. Dropping it does not stop it: call [`down`].
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    pub dir: PathBuf,
    /// The rendered configuration: every Slurm client command needs `SLURM_CONF` set to it.
    pub conf: PathBuf,
    /// The node names, `n1`..`nN`.
    pub nodes: Vec<String>,
    /// Seconds from the start of the daemons until every node was idle.
    pub startup_s: f64,
}

impl ClusterHandle {
    /// The cluster of `dir`, when its configuration exists (it may be down).
    pub fn at(dir: &Path) -> ClusterHandle {
        ClusterHandle {
            dir: dir.to_owned(),
            conf: dir.join("etc/slurm.conf"),
            nodes: Vec::new(),
            startup_s: 0.0,
        }
    }

    /// The environment variables clients need: `SLURM_CONF`.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![("SLURM_CONF", self.conf.clone())]
    }
}

/// Installs the packages when missing, renders the configuration, starts munged, slurmctld and
/// one slurmd per node, and waits until every node is idle. Refuses to start when a daemon of an
/// earlier `up` in the same directory is still alive; wipes that directory's earlier state.
pub fn up(cfg: &UpConfig) -> Result<ClusterHandle> {
    if !is_root() {
        return Err(ClusterError::Failed(
            "slurm up: must run as root (the Slurm daemons run as root, munged as user munge)".into(),
        ));
    }
    install_packages()?;
    let dir = &cfg.dir;
    for (pidfile, comm) in daemon_pidfiles(dir) {
        if let Some(pid) = ours(&pidfile, &comm) {
            return Err(ClusterError::Failed(format!(
                "slurm up: {comm} (pid {pid}, {}) is alive: the cluster is already up; run `cargo xtask slurm down` first",
                pidfile.display()
            )));
        }
    }
    let start = Instant::now();
    for sub in ["etc", "run", "log", "state", "spool", "munge"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| ClusterError::io(&p, e))?;
        }
        std::fs::create_dir_all(&p).map_err(|e| ClusterError::io(&p, e))?;
    }
    let nodes: Vec<String> = (1..=cfg.nodes).map(|i| format!("n{i}")).collect();
    for n in &nodes {
        mkdir(&dir.join("spool").join(n))?;
    }
    run_ok(Command::new("chown").args(["munge:munge"]).arg(dir.join("munge")).arg(dir.join("run")))?;
    run_ok(Command::new("chmod").arg("700").arg(dir.join("munge")))?;
    run_ok(Command::new("chmod").arg("755").arg(dir.join("run")))?;
    let key = dir.join("munge/munge.key");
    let mut bytes = vec![0u8; 1024];
    {
        use std::io::Read as _;
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| ClusterError::io("/dev/urandom", e))?;
    }
    std::fs::write(&key, &bytes).map_err(|e| ClusterError::io(&key, e))?;
    run_ok(Command::new("chown").arg("munge:munge").arg(&key))?;
    run_ok(Command::new("chmod").arg("400").arg(&key))?;

    let conf = dir.join("etc/slurm.conf");
    let text = render_conf(dir, cfg);
    std::fs::write(&conf, text).map_err(|e| ClusterError::io(&conf, e))?;
    std::fs::write(dir.join("env.sh"), format!("export SLURM_CONF={}\n", conf.display()))
        .map_err(|e| ClusterError::io(dir.join("env.sh"), e))?;
    let deadline = Instant::now() + cfg.timeout;
    let socket = dir.join("run/munge.socket");

    let munged_args: Vec<String> = vec![
        "--reuid=munge".into(),
        "--regid=munge".into(),
        "--init-groups".into(),
        "/usr/sbin/munged".into(),
        "-F".into(),
        format!("--socket={}", socket.display()),
        format!("--key-file={}", key.display()),
        format!("--pid-file={}", dir.join("run/munged.pid").display()),
        format!("--log-file={}", dir.join("log/munged.log").display()),
        format!("--seed-file={}", dir.join("munge/munged.seed").display()),
    ];
    daemon(dir, "munged", "setpriv", &munged_args)?;
    wait_for(deadline, "munged", &dir.join("log/munged.out"), || {
        Command::new("sh")
            .arg("-c")
            .arg(format!("munge -n --socket='{0}' | unmunge --socket='{0}'", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let conf_s = conf.display().to_string();
    daemon(
        dir,
        "slurmctld",
        "/usr/sbin/slurmctld",
        &["-D".into(), "-i".into(), "-f".into(), conf_s.clone()],
    )?;
    wait_for(deadline, "slurmctld", &dir.join("log/slurmctld.out"), || {
        client(&conf, "scontrol", &["ping"]).is_ok_and(|o| o.contains("is UP"))
    })?;
    for n in &nodes {
        daemon(
            dir,
            &format!("slurmd-{n}"),
            "/usr/sbin/slurmd",
            &["-D".into(), "-f".into(), conf_s.clone(), "-N".into(), n.clone()],
        )?;
    }
    let log = dir.join(format!("log/slurmd-{}.out", nodes[nodes.len() - 1]));
    wait_for(deadline, "every node idle", &log, || {
        client(&conf, "sinfo", &["-h", "-N", "-o", "%N %T"])
            .is_ok_and(|o| o.lines().filter(|l| l.ends_with(" idle")).count() >= nodes.len())
    })?;
    Ok(ClusterHandle { dir: dir.clone(), conf, nodes, startup_s: start.elapsed().as_secs_f64() })
}

/// Cancels the cluster's jobs (waiting up to 20 s for them to leave the queue), then stops every
/// slurmd, slurmctld and munged that [`up`] started in `dir`, found through their pid files (and
/// checked against `/proc/PID/comm`). Logs stay. Doing nothing is not an error.
pub fn down(dir: &Path) -> Result<()> {
    let conf = dir.join("etc/slurm.conf");
    if ours(&dir.join("run/slurmctld.pid"), "slurmctld").is_some() {
        if let Ok(ids) = client(&conf, "squeue", &["-h", "-o", "%A"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = client(&conf, "scancel", &ids);
                let end = Instant::now() + Duration::from_secs(20);
                while Instant::now() < end
                    && client(&conf, "squeue", &["-h"]).is_ok_and(|o| !o.trim().is_empty())
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    let (slurmds, rest): (Vec<_>, Vec<_>) =
        daemon_pidfiles(dir).into_iter().partition(|(_, comm)| comm == "slurmd");
    let pids: Vec<u32> = slurmds.iter().filter_map(|(p, c)| ours(p, c)).collect();
    stop_all(&pids);
    for name in ["slurmctld", "munged"] {
        if let Some((p, c)) = rest.iter().find(|(_, c)| c == name) {
            if let Some(pid) = ours(p, c) {
                stop_all(&[pid]);
            }
        }
    }
    for (p, _) in daemon_pidfiles(dir) {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Simulates the sudden loss of node `node`: SIGKILLs its slurmd, the slurmstepd of every job
/// running on it, and all of their descendants (killing slurmd alone is not a node loss: the
/// steps would finish). Returns the pids killed.
pub fn kill_node(cluster: &ClusterHandle, node: &str) -> Result<Vec<u32>> {
    let pidfile = cluster.dir.join(format!("run/slurmd-{node}.pid"));
    let slurmd = ours(&pidfile, "slurmd")
        .ok_or_else(|| ClusterError::Failed(format!("kill_node: slurmd of {node} is not running")))?;
    let mut pids = vec![slurmd];
    let jobs = client(&cluster.conf, "squeue", &["-h", "-w", node, "-t", "R,CG", "-o", "%A"])?;
    let jobs: Vec<&str> = jobs.split_whitespace().collect();
    for step in procs().into_iter().filter(|(_, comm)| comm == "slurmstepd") {
        let cmdline = i32::try_from(step.0)
            .ok()
            .and_then(|pid| procfs::process::Process::new(pid).ok()?.cmdline().ok())
            .map(|args| args.join(" "))
            .unwrap_or_default();
        if jobs.iter().any(|j| cmdline.starts_with(&format!("slurmstepd: [{j}."))) {
            pids.extend(descendants(step.0));
            pids.push(step.0);
        }
    }
    signal(&pids, Signal::STOP);
    signal(&pids, Signal::KILL);
    Ok(pids)
}

/// Starts the slurmd of `node` again (after [`kill_node`]) and waits up to 20 s until it is idle.
pub fn restart_node(cluster: &ClusterHandle, node: &str) -> Result<()> {
    if ours(&cluster.dir.join(format!("run/slurmd-{node}.pid")), "slurmd").is_none() {
        daemon(
            &cluster.dir,
            &format!("slurmd-{node}"),
            "/usr/sbin/slurmd",
            &["-D".into(), "-f".into(), cluster.conf.display().to_string(), "-N".into(), node.to_owned()],
        )?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    wait_for(
        deadline,
        &format!("node {node} idle"),
        &cluster.dir.join(format!("log/slurmd-{node}.out")),
        || client(&cluster.conf, "sinfo", &["-h", "-n", node, "-o", "%T"]).is_ok_and(|o| o.trim() == "idle"),
    )
}

/// Runs a Slurm client command against the cluster of `conf`; its stdout, or an error with stderr.
pub fn client(conf: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out =
        Command::new(program).args(args).env("SLURM_CONF", conf).stdin(Stdio::null()).output().map_err(
            |e| ClusterError::Failed(format!("{program}: {e} (is Slurm installed? `cargo xtask slurm up`)")),
        )?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ClusterError::Failed(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn render_conf(dir: &Path, cfg: &UpConfig) -> String {
    let mut out = String::new();
    for line in SLURM_CONF_TEMPLATE.lines() {
        if line.starts_with('#') {
            out.push_str(line);
        } else if line == "@NODES@" {
            for i in 1..=cfg.nodes {
                out.push_str(&format!(
                    "NodeName=n{i} NodeHostname=localhost NodeAddr=127.0.0.1 Port={} CPUs={} RealMemory={} State=UNKNOWN\n",
                    u32::from(cfg.slurmd_port_base) + i - 1,
                    cfg.cpus,
                    cfg.mem_mb
                ));
            }
            continue;
        } else {
            out.push_str(
                &line
                    .replace("@DIR@", &dir.display().to_string())
                    .replace("@CTLD_PORT@", &cfg.ctld_port.to_string()),
            );
        }
        out.push('\n');
    }
    out
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = BINARIES.iter().copied().filter(|b| !Path::new(b).exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("slurm up: installing munge slurmctld slurmd slurm-client (missing: {})", missing.join(" "));
    // Keep the packages' own init scripts from starting daemons with the default configuration.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let made_policy = !policy.exists();
    if made_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").map_err(|e| ClusterError::io(policy, e))?;
        run_ok(Command::new("chmod").arg("755").arg(policy))?;
    }
    let result = run_ok(Command::new("apt-get").args(["update", "-qq"])).and_then(|()| {
        run_ok(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(["munge", "slurmctld", "slurmd", "slurm-client", "util-linux"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    if made_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| ClusterError::io(p, e))
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| ClusterError::Failed(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Failed(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Starts `program` in its own session, detached, output to `log/<name>.out`.
fn daemon(dir: &Path, name: &str, program: &str, args: &[String]) -> Result<()> {
    let log = dir.join(format!("log/{name}.out"));
    let out = File::options().create(true).append(true).open(&log).map_err(|e| ClusterError::io(&log, e))?;
    let err = out.try_clone().map_err(|e| ClusterError::io(&log, e))?;
    Command::new("setsid")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| ClusterError::Failed(format!("starting {name} ({program}): {e}")))?;
    Ok(())
}

fn wait_for(deadline: Instant, what: &str, log: &Path, mut ready: impl FnMut() -> bool) -> Result<()> {
    while !ready() {
        if Instant::now() > deadline {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            return Err(ClusterError::Failed(format!(
                "slurm: {what}: not ready in time (the cluster is left as it is; run `cargo xtask slurm down`); \
                 last lines of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Pid files of the daemons of `dir` with the command name each must have.
fn daemon_pidfiles(dir: &Path) -> Vec<(PathBuf, String)> {
    let run = dir.join("run");
    let Ok(entries) = std::fs::read_dir(&run) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let comm = match name.as_str() {
            "munged.pid" => "munged",
            "slurmctld.pid" => "slurmctld",
            n if n.starts_with("slurmd-") && n.ends_with(".pid") => "slurmd",
            _ => continue,
        };
        out.push((e.path(), comm.to_owned()));
    }
    out.sort();
    out
}

/// The pid in `pidfile` when that process is alive and named `comm` (guards against pid reuse).
fn ours(pidfile: &Path, comm: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let stat = stat(pid)?;
    (stat.comm == comm && !matches!(stat.state, 'Z' | 'X')).then_some(pid)
}

/// `/proc/PID/stat`, `None` where there is no such process.
fn stat(pid: u32) -> Option<procfs::process::Stat> {
    procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z')
}

fn signal(pids: &[u32], sig: Signal) {
    for pid in pids.iter().filter_map(|&p| Pid::from_raw(i32::try_from(p).ok()?)) {
        let _ = kill_process(pid, sig);
    }
}

/// SIGTERM, then up to 10 s, then SIGKILL.
fn stop_all(pids: &[u32]) {
    signal(pids, Signal::TERM);
    let end = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    signal(&left, Signal::KILL);
}

/// Every process: (pid, comm).
fn procs() -> Vec<(u32, String)> {
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    all.filter_map(|p| {
        let stat = p.ok()?.stat().ok()?;
        Some((u32::try_from(stat.pid).ok()?, stat.comm))
    })
    .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    u32::try_from(stat(pid)?.ppid).ok()
}

fn descendants(root: u32) -> Vec<u32> {
    let all: Vec<(u32, Option<u32>)> = procs().into_iter().map(|(p, _)| (p, parent_of(p))).collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (child, _) in all.iter().filter(|(_, parent)| *parent == Some(p)) {
            out.push(*child);
            frontier.push(*child);
        }
    }
    out
}
