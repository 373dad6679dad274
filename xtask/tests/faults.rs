//! Faults against the real command line: `cargo xtask bench` as a child process stopped by
//! SIGTERM, SIGINT and SIGKILL, an engine process killed mid-run, and what `report` and `sim`
//! make of the partial directory. The tests also read `/proc` while the run is live: no socket of
//! the run listens beyond 127.0.0.1, and a planted HF_TOKEN is on no command line or output.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::live::{cmdlines_containing, files_under, listening_sockets, LOOPBACK_HEX};

const TOKEN: &str = "hf_faultsPlantedToken4242";

fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.env("HF_TOKEN", TOKEN).env_remove("KVLAB_REDIS_URL");
    cmd
}

/// A child killed (and reaped) on drop, its output collected on [`Run::finish`].
struct Run {
    child: Child,
}

impl Run {
    fn spawn(cmd: &mut Command) -> Run {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Run { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args(["-s", sig, &self.pid().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -s {sig}");
    }

    /// Waits up to `limit` for the exit; returns (exit success, stdout + stderr, time waited).
    fn finish(mut self, limit: Duration) -> (Option<i32>, String, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
                self.child.stderr.take().unwrap().read_to_string(&mut out).unwrap();
                return (status.code(), out, start.elapsed());
            }
            assert!(start.elapsed() < limit, "the process did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The one result directory under `out`, once it holds `n` finished requests.
fn wait_for_records(out: &Path, n: usize, limit: Duration) -> PathBuf {
    let start = Instant::now();
    loop {
        let dirs: Vec<PathBuf> = std::fs::read_dir(out)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        for dir in dirs {
            let lines =
                std::fs::read_to_string(dir.join("requests.jsonl")).unwrap_or_default().lines().count();
            if lines >= n {
                return dir;
            }
        }
        assert!(
            start.elapsed() < limit,
            "fewer than {n} requests finished under {} in {limit:?}",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bench_args(out: &Path, label: &str, n: u32, rate: u32) -> Vec<String> {
    [
        "bench",
        "--engine",
        "emulated",
        "--tier",
        "baseline",
        "--workload",
        "random",
        "--prompt-len",
        "64",
        "--gen-len",
        "8",
        "--num-requests",
        &n.to_string(),
        "--request-rate",
        &rate.to_string(),
        "--seed",
        "3",
        "--label",
        label,
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Checks an interrupted directory: the summary counts exactly the records and says interrupted.
fn assert_interrupted(dir: &Path) {
    let lines = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap().lines().count() as u64;
    let summary = json(&dir.join("summary.json"));
    assert_eq!(summary["interrupted"], true, "summary.json: {summary}");
    let counted = summary["completed"].as_u64().unwrap() + summary["failed"].as_u64().unwrap();
    assert_eq!(counted, lines, "completed + failed = lines of requests.jsonl");
    assert_eq!(json(&dir.join("env.json"))["interrupted"], true);
}

/// SIGTERM and SIGINT stop a live run within 5 s, with a summary of what finished: with the
/// in-process emulated engine, and with a llama.cpp engine process, which is stopped too.
#[test]
fn sigterm_and_sigint_stop_a_run_within_5_s() {
    require_llamacpp();
    for (engine, tier) in [("emulated", "baseline"), ("llamacpp", "cpu")] {
        for sig in ["TERM", "INT"] {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("out");
            let mut args = bench_args(&out, sig, 100_000, if engine == "emulated" { 50 } else { 5 });
            args[2] = engine.to_owned();
            args[4] = tier.to_owned();
            let run = Run::spawn(xtask().args(&args));
            let lab = run.pid();
            let dir = wait_for_records(&out, 3, Duration::from_secs(180));
            let engines = recorded_engines(lab);
            assert_eq!(engines.len(), usize::from(engine != "emulated"), "{engine}: {engines:?}");
            let sent = Instant::now();
            run.signal(sig);
            let (code, output, waited) = run.finish(Duration::from_secs(30));
            eprintln!(
                "{engine}, SIG{sig}: the run stopped {:.3} s after the signal",
                sent.elapsed().as_secs_f64()
            );
            assert!(
                waited < Duration::from_secs(5),
                "{engine}, SIG{sig}: stopped after {waited:?}\n{output}"
            );
            for (record, pid) in engines {
                assert!(!running(pid), "{engine}, SIG{sig}: the engine process {pid} is stopped");
                assert!(!record.exists(), "{engine}, SIG{sig}: its record is removed");
            }
            assert_ne!(code, Some(0), "an interrupted run exits non-zero\n{output}");
            assert!(output.contains("interrupted"), "{engine}, SIG{sig}: {output}");
            assert_interrupted(&dir);
            assert!(!output.contains(TOKEN));
        }
    }
}

/// SIGKILL mid-run: `requests.jsonl` keeps every finished request; a torn last line is skipped
/// with a warning by `report` (which marks the run incomplete), `regress` and `sim`.
#[test]
fn sigkill_leaves_a_directory_that_report_and_sim_read() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = Run::spawn(xtask().args(bench_args(&out, "killed", 100_000, 50)));
    let dir = wait_for_records(&out, 10, Duration::from_secs(120));
    run.signal("KILL");
    let _ = run.finish(Duration::from_secs(10));
    assert!(!dir.join("summary.json").exists(), "a killed run wrote no summary");
    let text = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap();
    assert!(text.ends_with('\n'));
    let whole = text.lines().count();
    // What a kill in the middle of a write leaves.
    std::fs::write(dir.join("requests.jsonl"), format!("{text}{{\"v\":1,\"id\":99999,\"warm")).unwrap();

    let report = xtask().args(["report", &dir.display().to_string()]).output().unwrap();
    let output =
        format!("{}{}", String::from_utf8_lossy(&report.stdout), String::from_utf8_lossy(&report.stderr));
    assert!(report.status.success(), "{output}");
    assert!(output.contains("torn last line"), "{output}");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("INCOMPLETE"), "{md}");
    assert!(md.contains(&format!("{whole} requests that finished")), "{md}");

    // regress checks the partial directory on the summary computed from its records.
    let baselines = tmp.path().join("baselines");
    for extra in [&["--bless"][..], &[][..]] {
        let regress = xtask()
            .args(["regress", &dir.display().to_string(), "--baselines"])
            .arg(&baselines)
            .args(extra)
            .output()
            .unwrap();
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&regress.stdout),
            String::from_utf8_lossy(&regress.stderr)
        );
        assert!(regress.status.success(), "regress {extra:?}: {output}");
        assert!(output.contains("torn last line"), "regress {extra:?}: {output}");
    }
    assert_eq!(std::fs::read_dir(&baselines).unwrap().count(), 1, "one baseline blessed");

    let sim_out = tmp.path().join("sim");
    let sim = xtask()
        .args(["sim", "--trace", &dir.join("requests.jsonl").display().to_string(), "--out"])
        .arg(&sim_out)
        .output()
        .unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&sim.stdout), String::from_utf8_lossy(&sim.stderr));
    assert!(sim.status.success(), "{output}");
    assert!(output.contains("torn last line"), "{output}");
}

/// The engine (`serve`, a separate process, driven with `--engine external`) is killed mid-run:
/// the run notices, records when, classifies the requests in flight and exits non-zero.
#[test]
fn engine_killed_mid_run_is_recorded_and_fails_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut serve = Run::spawn(xtask().args(["serve", "--tier", "baseline"]));
    let mut stdout = serve.child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let url = loop {
        let mut b = [0u8; 1];
        assert_eq!(stdout.read(&mut b).unwrap(), 1, "serve exited: {}", String::from_utf8_lossy(&seen));
        seen.push(b[0]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(rest) = text.split("listening on ").nth(1) {
            if let Some(url) = rest.split(';').next().filter(|_| rest.contains(';')) {
                break url.to_owned();
            }
        }
    };
    let out = tmp.path().join("out");
    let mut args = bench_args(&out, "crash", 100_000, 50);
    args[2] = "external".to_owned();
    args.extend(["--url".to_owned(), url]);
    let bench = Run::spawn(xtask().args(&args));
    let dir = wait_for_records(&out, 10, Duration::from_secs(120));
    let killed = Instant::now();
    serve.signal("KILL");
    let (code, output, _) = bench.finish(Duration::from_secs(30));
    eprintln!("the run ended {:.3} s after the engine was killed", killed.elapsed().as_secs_f64());
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("exited") && output.contains("into the run"), "{output}");
    let env = json(&dir.join("env.json"));
    let at = env["engine_exited_at_s"].as_f64().unwrap_or_else(|| panic!("env.json: {env}"));
    let summary = json(&dir.join("summary.json"));
    assert_eq!(summary["engine_exited_at_s"].as_f64(), Some(at));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("requests.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let counted = summary["completed"].as_u64().unwrap() + summary["failed"].as_u64().unwrap();
    assert_eq!(counted, records.len() as u64);
    let failed: Vec<&serde_json::Value> = records.iter().filter(|r| !r["error"].is_null()).collect();
    assert!(!failed.is_empty(), "the requests after the crash failed");
    for r in &failed {
        let class = r["error"]["class"].as_str().unwrap_or_default();
        assert!(["connect", "stream_cut"].contains(&class), "classified as connect or stream_cut: {r}");
    }
    assert!(dir.join("engine.log").is_file(), "engine.log is kept");
}

/// During a live run: every server of the run listens on 127.0.0.1 only, and the planted
/// HF_TOKEN is on no process's command line, in no output and in no result file.
#[test]
fn a_live_run_listens_on_loopback_and_keeps_the_token_out() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = Run::spawn(xtask().args(bench_args(&out, "secure", 100_000, 50)));
    let dir = wait_for_records(&out, 5, Duration::from_secs(120));
    let sockets = listening_sockets(run.pid());
    assert!(!sockets.is_empty(), "the in-process engine listens");
    for (addr, port) in &sockets {
        assert_eq!(addr, LOOPBACK_HEX, "port {port} listens on {addr}, not 127.0.0.1");
    }
    assert_eq!(cmdlines_containing(TOKEN), Vec::<PathBuf>::new(), "HF_TOKEN on these command lines");
    run.signal("TERM");
    let (_, output, _) = run.finish(Duration::from_secs(30));
    assert!(!output.contains(TOKEN), "HF_TOKEN in the output");
    for f in files_under(&dir) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        assert!(!text.contains(TOKEN), "HF_TOKEN in {}", f.display());
    }
}

/// The llama.cpp engine (a Python with xllamacpp and the generated GGUF model) the tests get
/// from `cargo xtask ci`.
fn require_llamacpp() {
    for var in ["KVLAB_PYTHON", "KVLAB_LLAMACPP_MODEL"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is unset: this test needs the llama.cpp engine (a Python venv with xllamacpp and \
             the generated GGUF model), which `cargo xtask ci` sets up"
        );
    }
}

/// Whether `pid` runs (exists and is not a zombie waiting for a reaper).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The engine processes the lab `lab` recorded under the workspace's `.kvlab/engines/`: (record, pid).
fn recorded_engines(lab: u32) -> Vec<(PathBuf, u32)> {
    let registry = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.kvlab/engines");
    std::fs::read_dir(registry)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|path| {
            let record: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
            let pid = record["pid"].as_u64()? as u32;
            (record["owner"]["pid"].as_u64()? == u64::from(lab)).then_some((path, pid))
        })
        .collect()
}

/// SIGKILL leaves the lab's engine process (llama.cpp) running; the next `bench` finds it by
/// its record and kills it before it starts, and says so.
#[test]
fn the_next_bench_reaps_the_engine_of_a_killed_lab() {
    require_llamacpp();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut args = bench_args(&out, "orphaned", 100_000, 5);
    args[2] = "llamacpp".to_owned();
    args[4] = "cpu".to_owned();
    let run = Run::spawn(xtask().args(&args));
    let lab = run.pid();
    wait_for_records(&out, 2, Duration::from_secs(180));
    let engines = recorded_engines(lab);
    assert_eq!(engines.len(), 1, "one engine process recorded for lab {lab}: {engines:?}");
    let (record, engine) = engines[0].clone();
    run.signal("KILL");
    let _ = run.finish(Duration::from_secs(10));
    assert!(running(engine), "the engine {engine} outlives its killed lab (what the next run must reap)");

    let next = xtask().args(bench_args(&tmp.path().join("next"), "next", 5, 50)).output().unwrap();
    let output =
        format!("{}{}", String::from_utf8_lossy(&next.stdout), String::from_utf8_lossy(&next.stderr));
    let killed = std::time::Instant::now();
    while running(engine) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(engine), "the next bench killed the orphaned engine {engine}\n{output}");
    assert!(next.status.success(), "{output}");
    assert!(
        output.contains(&format!("killed engine process {engine} "))
            && output.contains(&format!("(its lab, pid {lab}, is gone)")),
        "the next bench names what it reaped\n{output}"
    );
    assert!(!record.exists(), "the record {} is removed", record.display());
    assert!(!output.contains(TOKEN));
}
