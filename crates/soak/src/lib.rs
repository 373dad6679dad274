//! The soak harness behind `cargo xtask soak`: the emulated engine and the load generator on
//! loopback, as two processes, under many concurrent streams for minutes; their memory and open
//! files are watched.
//!
//! The parent ([`parent`]) starts the engine ([`Programs::server`], `serve --tier baseline`) and the
//! client ([`Programs::client`] with `--client-url` and the round's flags, which runs [`client`]),
//! each through `sh -c 'ulimit -n <hard limit>; exec …'` so that thousands of streams have file
//! descriptors. After the warm-up it samples `/proc/PID/status` (`VmRSS`) and counts
//! `/proc/PID/fd` of both (read with procfs) every `interval_secs`, and writes `soak.json` and
//! `samples.csv`.
//!
//! The client sends rounds of `--round-requests` (default `streams x 5`) requests, at most
//! `streams` in flight, until the time
//! is up (a round's sending stops at the deadline: bounded in time and count); each round's result
//! directory is tallied and removed, so the client keeps no record beyond its round.
//!
//! Verdict (non-zero exit when broken): no request lost (`sent = completed + failed`), none
//! failed, resident memory of each process grew less than `--max-growth-pct` from the start to
//! the end of the sampled window, and open file descriptors did too (flat). "Start" and "end" are
//! the means of the first and the last three samples, so one sample taken between two rounds does
//! not decide the verdict.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

/// What a soak does.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Concurrent streams (requests in flight).
    pub streams: u32,
    /// Length of the whole soak, warm-up included.
    pub minutes: f64,
    /// Seconds before the first sample (the processes reach their working size).
    pub warmup_secs: u64,
    /// Seconds between two samples.
    pub interval_secs: u64,
    /// Allowed growth of resident memory and of open file descriptors, in percent.
    pub max_growth_pct: f64,
    /// Requests per round of the load generator (default: 5 per stream).
    pub round_requests: Option<u64>,
    pub prompt_len: u32,
    pub gen_len: u32,
    /// Where soak.json and samples.csv go (the parent); the client's work directory (the client).
    pub out: PathBuf,
    /// Test only: the load generator leaks memory and descriptors at a steady rate, so that a
    /// test sees the verdict fail on a leak.
    pub plant_leak: bool,
}

/// How the soak's two processes are started: one program, with the arguments that make it the
/// engine, and those that make it the client (followed by `--client-url URL`, `--streams`,
/// `--minutes`, `--round-requests`, `--prompt-len`, `--gen-len`, `--out` and `--plant-leak`).
#[derive(Debug, Clone)]
pub struct Programs {
    pub exe: PathBuf,
    pub server: Vec<String>,
    pub client: Vec<String>,
}

/// Why a soak could not run, or failed its verdict.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error("--streams, --minutes and --interval-secs must be positive")]
    Settings,
    #[error("starting the {name} ({})", exe.display())]
    Start { name: &'static str, exe: PathBuf, source: std::io::Error },
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("{0} is not piped")]
    NoOutput(&'static str),
    #[error("the engine exited before saying where it listens")]
    NoUrl,
    #[error("the engine exited during the soak ({0}); the load generator is stopped")]
    EngineExited(ExitStatus),
    #[error("the load generator ran {0} s past the soak's end; stopped")]
    Overran(u64),
    #[error("the load generator ended ({0}) without its tally")]
    NoTally(ExitStatus),
    #[error("the load generator's tally")]
    Tally(#[source] serde_json::Error),
    #[error("the load generator failed ({0})")]
    ClientFailed(ExitStatus),
    #[error("the round's plan")]
    Plan(#[source] workload::Error),
    #[error(transparent)]
    Results(#[from] loadgen::ResultsError),
    #[error(transparent)]
    Loadgen(#[from] loadgen::Error),
    /// The verdict: each line says what broke (a lost or failed request, growth over the bound).
    #[error("soak failed:\n{}", .0.join("\n"))]
    Broken(Vec<String>),
}

fn check(args: &SoakConfig) -> Result<(), SoakError> {
    if args.streams == 0 || !args.minutes.is_finite() || args.minutes <= 0.0 || args.interval_secs == 0 {
        return Err(SoakError::Settings);
    }
    Ok(())
}

/// What [`SoakConfig::plant_leak`] leaks, every `PLANTED_LEAK.2`: `.0` KiB of touched memory and `.1` open
/// descriptors of `/dev/null`.
const PLANTED_LEAK: (usize, usize, Duration) = (256, 1, Duration::from_millis(100));

/// Starts the planted leak (test only) in this process: a thread that never gives back.
fn plant_leak() {
    std::thread::spawn(|| loop {
        let (kib, fds, every) = PLANTED_LEAK;
        std::mem::forget(vec![1u8; kib * 1024]);
        for _ in 0..fds {
            if let Ok(f) = std::fs::File::open("/dev/null") {
                std::mem::forget(f);
            }
        }
        std::thread::sleep(every);
    });
}

/// What the client reports on its last stdout line (prefixed `soak-client: `).
#[derive(Debug, Default)]
struct ClientTally {
    rounds: u64,
    sent: u64,
    not_sent: u64,
    completed: u64,
    failed: u64,
    /// Records written to requests.jsonl.
    records: u64,
}

const CLIENT_PREFIX: &str = "soak-client: ";

impl ClientTally {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rounds": self.rounds, "sent": self.sent, "not_sent": self.not_sent,
            "completed": self.completed, "failed": self.failed, "records": self.records,
        })
    }

    fn from_json(v: &serde_json::Value) -> ClientTally {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        ClientTally {
            rounds: n("rounds"),
            sent: n("sent"),
            not_sent: n("not_sent"),
            completed: n("completed"),
            failed: n("failed"),
            records: n("records"),
        }
    }
}

/// One sample of a process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t_s: f64,
    rss_kib: u64,
    fds: u64,
}

fn sample(pid: u32, origin: Instant) -> Option<Sample> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let rss_kib = process.status().ok()?.vmrss?;
    let fds = process.fd_count().ok()? as u64;
    Some(Sample { t_s: origin.elapsed().as_secs_f64(), rss_kib, fds })
}

/// Start and end (means of the first and last three samples) and growth in percent.
#[derive(Debug, Clone, Copy)]
struct Growth {
    start: f64,
    end: f64,
    pct: f64,
}

fn growth(values: &[f64]) -> Growth {
    let k = values.len().clamp(1, 3);
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let start = mean(&values[..k.min(values.len())]);
    let end = mean(&values[values.len().saturating_sub(k)..]);
    let pct = if start > 0.0 { (end - start) / start * 100.0 } else { 0.0 };
    Growth { start, end, pct }
}

impl Growth {
    fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "start": self.start, "end": self.end, "growth_pct": self.pct })
    }
}

/// A child started through `sh` with the fd limit raised to the hard limit; killed on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, exe: &Path, args: &[String]) -> Result<Proc, SoakError> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@""#)
            .arg(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| SoakError::Start { name, exe: exe.to_owned(), source })?;
        Ok(Proc { name, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, up to 10 s, then SIGKILL; reaped.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("soak: the {} did not stop within 10 s of SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn parent(args: &SoakConfig, programs: &Programs) -> Result<(), SoakError> {
    check(args)?;
    let exe = &programs.exe;
    let out = args.out.clone();
    std::fs::create_dir_all(&out)
        .map_err(|source| SoakError::Io { what: format!("creating {}", out.display()), source })?;
    // A soak killed before left its last round's records there.
    let _ = std::fs::remove_dir_all(out.join("client"));
    let total = Duration::from_secs_f64(args.minutes * 60.0);

    let mut server = Proc::spawn("engine (serve)", exe, &programs.server)?;
    let url = {
        let stdout = server.child.stdout.take().ok_or(SoakError::NoOutput("the engine's stdout"))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut url = None;
        for line in lines.by_ref() {
            let line = line
                .map_err(|source| SoakError::Io { what: "reading the engine's output".to_owned(), source })?;
            if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.split([';', ' ']).next().unwrap_or("").to_owned());
                break;
            }
        }
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        url.ok_or(SoakError::NoUrl)?
    };
    eprintln!("soak: engine (pid {}) at {url}", server.pid());

    let client_args = vec![
        "--client-url".to_owned(),
        url.clone(),
        "--streams".to_owned(),
        args.streams.to_string(),
        "--minutes".to_owned(),
        args.minutes.to_string(),
        "--round-requests".to_owned(),
        round_requests(args).to_string(),
        "--prompt-len".to_owned(),
        args.prompt_len.to_string(),
        "--gen-len".to_owned(),
        args.gen_len.to_string(),
        "--out".to_owned(),
        out.join("client").display().to_string(),
    ];
    let client_args = [
        programs.client.clone(),
        client_args,
        if args.plant_leak { vec!["--plant-leak".to_owned()] } else { Vec::new() },
    ]
    .concat();
    let origin = Instant::now();
    let mut client = Proc::spawn("load generator", exe, &client_args)?;
    eprintln!(
        "soak: load generator (pid {}): {} streams for {} min",
        client.pid(),
        args.streams,
        args.minutes
    );
    let client_out = client.child.stdout.take().ok_or(SoakError::NoOutput("the load generator's stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut last = None;
        for line in std::io::BufReader::new(client_out).lines().map_while(Result::ok) {
            if let Some(json) = line.strip_prefix(CLIENT_PREFIX) {
                last = Some(json.to_owned());
            }
        }
        last
    });

    let warmup = Duration::from_secs(args.warmup_secs);
    let interval = Duration::from_secs(args.interval_secs);
    let hard_end = total + Duration::from_secs(180);
    let mut server_samples = Vec::new();
    let mut client_samples = Vec::new();
    let mut next = warmup;
    let client_status = loop {
        let waited = client.child.try_wait();
        if let Some(status) = waited
            .map_err(|source| SoakError::Io { what: "waiting for the load generator".to_owned(), source })?
        {
            break status;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(SoakError::EngineExited(status));
        }
        let now = origin.elapsed();
        if now >= hard_end {
            client.stop();
            return Err(SoakError::Overran((now - total).as_secs()));
        }
        if now >= next {
            if let (Some(s), Some(c)) = (sample(server.pid(), origin), sample(client.pid(), origin)) {
                server_samples.push(s);
                client_samples.push(c);
            }
            next += interval;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    server.stop();
    let tally: ClientTally = match reader.join().ok().flatten() {
        Some(json) => ClientTally::from_json(&serde_json::from_str(&json).map_err(SoakError::Tally)?),
        None => return Err(SoakError::NoTally(client_status)),
    };
    if !client_status.success() {
        return Err(SoakError::ClientFailed(client_status));
    }

    let rss = |s: &[Sample]| growth(&s.iter().map(|x| x.rss_kib as f64).collect::<Vec<_>>());
    let fds = |s: &[Sample]| growth(&s.iter().map(|x| x.fds as f64).collect::<Vec<_>>());
    let lost = tally.sent.saturating_sub(tally.completed + tally.failed)
        + tally.records.abs_diff(tally.completed + tally.failed);
    let report = serde_json::json!({
        "streams": args.streams,
        "round_requests": round_requests(args),
        "minutes": args.minutes,
        "warmup_s": args.warmup_secs,
        "samples": server_samples.len(),
        "client": tally.to_json(),
        "lost": lost,
        "engine": { "pid": server.pid(), "rss_kib": rss(&server_samples).to_json(), "fds": fds(&server_samples).to_json() },
        "load_generator": { "pid": client.pid(), "rss_kib": rss(&client_samples).to_json(), "fds": fds(&client_samples).to_json() },
    });
    write_atomic(&out.join("soak.json"), &serde_json::to_string_pretty(&report).map_err(SoakError::Tally)?)?;
    let mut csv = String::from("t_s,engine_rss_kib,engine_fds,loadgen_rss_kib,loadgen_fds\n");
    for (s, c) in server_samples.iter().zip(&client_samples) {
        csv.push_str(&format!("{:.1},{},{},{},{}\n", s.t_s, s.rss_kib, s.fds, c.rss_kib, c.fds));
    }
    write_atomic(&out.join("samples.csv"), &csv)?;

    println!("| streams | minutes | requests | completed | failed | lost |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {lost} |",
        args.streams, args.minutes, tally.sent, tally.completed, tally.failed
    );
    println!();
    println!("| process | RSS start MiB | RSS end MiB | RSS growth | fds start | fds end | fd growth |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, s) in [("engine (serve)", &server_samples), ("load generator", &client_samples)] {
        let (r, f) = (rss(s), fds(s));
        println!(
            "| {name} | {:.1} | {:.1} | {:+.1}% | {:.0} | {:.0} | {:+.1}% |",
            r.start / 1024.0,
            r.end / 1024.0,
            r.pct,
            f.start,
            f.end,
            f.pct
        );
    }
    println!("results: {}", out.display());

    let mut broken = Vec::new();
    if server_samples.len() < 2 {
        broken.push(format!(
            "only {} sample(s) after the {} s warm-up: make --minutes longer",
            server_samples.len(),
            args.warmup_secs
        ));
    }
    if lost > 0 {
        broken.push(format!("{lost} request(s) lost (sent {}, recorded {})", tally.sent, tally.records));
    }
    if tally.failed > 0 {
        broken.push(format!("{} request(s) failed; see the load generator's output", tally.failed));
    }
    for (name, s) in [("engine", &server_samples), ("load generator", &client_samples)] {
        let (r, f) = (rss(s), fds(s));
        if r.pct >= args.max_growth_pct {
            broken
                .push(format!("{name}: resident memory grew {:.1}% (bound {}%)", r.pct, args.max_growth_pct));
        }
        if f.pct >= args.max_growth_pct {
            broken.push(format!("{name}: open files grew {:.1}% (bound {}%)", f.pct, args.max_growth_pct));
        }
    }
    if !broken.is_empty() {
        return Err(SoakError::Broken(broken));
    }
    Ok(())
}

fn write_atomic(path: &Path, text: &str) -> Result<(), SoakError> {
    stats::write_atomic(path, text.as_bytes())
        .map_err(|source| SoakError::Io { what: format!("writing {}", path.display()), source })
}

fn round_requests(args: &SoakConfig) -> u64 {
    args.round_requests.unwrap_or(u64::from(args.streams) * 5).max(1)
}

/// Client mode: rounds of `round_requests` requests against `url` until the time is up, each
/// round's result directory under `args.out` tallied and removed; prints the tally on its last
/// stdout line, which [`parent`] reads.
pub fn client(args: &SoakConfig, url: &str) -> Result<(), SoakError> {
    check(args)?;
    use workload::{ArrivalSpec, LengthDist, PromptFormat, RandomSpec, Schedule, Source, WorkloadSpec};
    let work = args.out.clone();
    if args.plant_leak {
        eprintln!("soak-client: --plant-leak: leaking memory and descriptors (a test of the verdict)");
        plant_leak();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| SoakError::Io { what: "starting tokio".to_owned(), source })?;
    let start = Instant::now();
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let mut tally = ClientTally::default();
    while start.elapsed() < total {
        let left = (total - start.elapsed()).as_secs_f64();
        let spec = WorkloadSpec {
            source: Source::Random(RandomSpec {
                num_requests: round_requests(args),
                prompt_len: LengthDist::fixed(args.prompt_len),
                output_len: LengthDist::fixed(args.gen_len),
                prefix_len: 0,
            }),
            format: PromptFormat::Tokens,
            vocab: Default::default(),
        };
        let arrival = ArrivalSpec {
            schedule: Schedule::Constant { rate: f64::INFINITY },
            max_concurrency: Some(args.streams),
            warmup: 0,
            duration_s: Some(left),
        };
        let plan = workload::build_plan(&spec, &arrival, tally.rounds, None).map_err(SoakError::Plan)?;
        let dir = work.join(format!("round-{}", tally.rounds));
        let mut cfg = loadgen::LoadgenConfig::new(url);
        cfg.progress = false;
        cfg.max_failed_fraction = 1.0;
        let mut writer = loadgen::ResultWriter::in_dir(&dir)?;
        let outcome = rt.block_on(loadgen::run(&plan, &cfg, &mut writer, Instant::now()))?;
        drop(writer);
        let written = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap_or_default();
        tally.records += written.lines().filter(|l| !l.trim().is_empty()).count() as u64;
        tally.rounds += 1;
        tally.sent += outcome.sent;
        tally.not_sent += outcome.not_sent;
        tally.completed += outcome.summary.completed;
        tally.failed += outcome.summary.failed;
        if let Some(first) = outcome.records.iter().find_map(|r| r.error.as_ref()) {
            eprintln!("soak-client: round {}: a failure: {first:?}", tally.rounds);
        }
        drop(outcome);
        std::fs::remove_dir_all(&dir)
            .map_err(|source| SoakError::Io { what: format!("removing {}", dir.display()), source })?;
    }
    println!("{CLIENT_PREFIX}{}", tally.to_json());
    Ok(())
}
