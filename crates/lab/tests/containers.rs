//! Engines in containers against the real Docker daemon, and orphan reaping of a killed lab.
//!
//! Needs kvlab's images (`cargo xtask images`; `cargo xtask ci` builds them and sets
//! `KVLAB_DOCKER_IMAGES=1`), and for the tests that kill a lab, the command line's binary
//! (`KVLAB_XTASK_BIN`, set by `cargo xtask ci`). Without them these tests fail, naming what is
//! missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab::config::Tier;
use lab::engine::EngineKind;
use lab::run::{bench, BenchOptions, RunReport};

use common::{assert_no_secret, files, records, workspace, TOKEN};

const IMAGES: &str = "run `cargo xtask images` (it builds kvlab/base, kvlab/lab, kvlab/llamacpp and \
                      kvlab/emulator) and set KVLAB_DOCKER_IMAGES=1; `cargo xtask ci` does both";

/// One container at a time: timings measure one engine on the machine's cores.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Panics, naming `cargo xtask images`, unless the images are announced and `image` exists.
fn require_image(image: &str) {
    assert!(
        std::env::var("KVLAB_DOCKER_IMAGES").is_ok_and(|v| v == "1"),
        "KVLAB_DOCKER_IMAGES is not set: these tests need kvlab's container images; {IMAGES}"
    );
    let out = Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", image]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("image {image} is missing ({}); {IMAGES}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => panic!("cannot run docker ({e}); these tests need the Docker daemon; {IMAGES}"),
    }
}

/// The command line's binary, for tests that kill a lab.
fn xtask_bin() -> PathBuf {
    let bin = std::env::var_os("KVLAB_XTASK_BIN").filter(|v| !v.is_empty()).map(PathBuf::from);
    let bin = bin.unwrap_or_else(|| {
        panic!("KVLAB_XTASK_BIN is not set: this test runs the lab's binary as a child; `cargo xtask ci` sets it")
    });
    assert!(bin.is_file(), "KVLAB_XTASK_BIN={}: no such file", bin.display());
    bin
}

/// Names of containers (running or not) with `label`.
fn containers_with(label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "--all", "--filter", &format!("label={label}"), "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker ps: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn run_id(dir: &Path) -> String {
    let run: toml::Value = toml::from_str(&std::fs::read_to_string(dir.join("run.toml")).unwrap()).unwrap();
    run["run_id"].as_str().unwrap().to_owned()
}

fn options(root: &Path, image: &str, tier: Tier, workload: &str, prompt_len: u32, n: u32) -> BenchOptions {
    let mut opts = BenchOptions::new(root, tier);
    opts.engine = EngineKind::Docker;
    opts.image = Some(image.to_owned());
    opts.workload = Some(workload.to_owned());
    opts.prompt_len = Some(prompt_len);
    opts.gen_len = Some(8);
    opts.num_requests = Some(n);
    opts.request_rate = Some(f64::INFINITY);
    opts.max_concurrency = Some(1);
    opts.seed = Some(11);
    opts.progress = false;
    opts.ready_timeout = Duration::from_secs(120);
    opts.out = Some(root.join("results"));
    opts
}

/// A complete run in a container: every request done, the process launcher's result files, and
/// the container gone afterwards.
async fn run(opts: &BenchOptions) -> RunReport {
    let mut reports = bench(opts).await.unwrap_or_else(|e| panic!("{:?}: {e}", opts.image));
    let r = reports.remove(0);
    let errors: Vec<String> = records(&r.dir)
        .iter()
        .filter_map(|rec| Some(format!("{}: {:?}", rec.id, rec.error.as_ref()?)))
        .collect();
    assert_eq!(
        (r.summary.completed, r.summary.failed),
        (u64::from(opts.num_requests.unwrap()), 0),
        "{}: {errors:#?}\nengine.log:\n{}",
        r.dir.display(),
        std::fs::read_to_string(r.dir.join("engine.log")).unwrap_or_default()
    );
    assert_eq!(r.engine, EngineKind::Docker);
    for f in
        ["run.toml", "env.json", "requests.jsonl", "requests.csv", "summary.json", "engine.log", "report.md"]
    {
        assert!(r.dir.join(f).is_file(), "{f} missing in {}", r.dir.display());
    }
    for f in ["samples/cpu.csv", "samples/disk.csv"] {
        assert!(r.dir.join(f).is_file(), "{f} missing in {}", r.dir.display());
    }
    let id = run_id(&r.dir);
    assert_eq!(containers_with(&format!("kvlab.run-id={id}")), Vec::<String>::new(), "container left behind");
    r
}

fn ttft_ms(r: &stats::RequestRecord) -> f64 {
    (r.first_token.expect("a completed request has a first token") - r.sent) * 1e3
}

/// `--engine docker --image kvlab/llamacpp --tier cpu`: real inference in a container. Prefill
/// grows with the prompt, a repeated prefix hits llama.cpp's prompt cache, the planted HF_TOKEN
/// is in no result file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_image_end_to_end() {
    require_image("kvlab/llamacpp");
    let _turn = ENGINE.lock().await;
    let ws = workspace();
    let short = run(&options(ws.path(), "kvlab/llamacpp", Tier::Cpu, "random", 128, 4)).await;
    let long = run(&options(ws.path(), "kvlab/llamacpp", Tier::Cpu, "random", 2048, 4)).await;
    for rec in records(&long.dir) {
        assert_eq!(rec.prompt_tokens, Some(2049), "text prompts: 1 BOS + 1 token per character");
    }
    assert!(!short.emulated, "real llama.cpp in a container is not emulated");
    let (t_short, t_long) = (short.summary.median_ttft_ms, long.summary.median_ttft_ms);
    eprintln!("container median TTFT: {t_short:.1} ms at 128 tokens, {t_long:.1} ms at 2048");
    assert!(
        t_long >= 3.0 * t_short,
        "TTFT {t_long:.1} ms at 2048 vs {t_short:.1} ms at 128: prefill does not scale"
    );

    let shared = run(&options(ws.path(), "kvlab/llamacpp", Tier::Cpu, "shared-prefix", 2048, 6)).await;
    let recs = records(&shared.dir);
    let hit = |rec: &&stats::RequestRecord| rec.cached_tokens.unwrap_or(0) >= 1024;
    let hits: Vec<f64> = recs.iter().filter(hit).map(ttft_ms).collect();
    let cold: Vec<f64> = recs.iter().filter(|r| !hit(r)).map(ttft_ms).collect();
    assert!(!hits.is_empty() && !cold.is_empty(), "hits {hits:?}, cold {cold:?}");
    let (t_cold, t_hit) =
        (cold.iter().sum::<f64>() / cold.len() as f64, hits.iter().sum::<f64>() / hits.len() as f64);
    eprintln!("container TTFT: {t_cold:.1} ms cold, {t_hit:.1} ms with the prefix cached");
    assert!(t_cold >= 2.0 * t_hit, "a cached prefix is not faster: cold {t_cold:.1} ms, hit {t_hit:.1} ms");

    let env = std::fs::read_to_string(shared.dir.join("engine.env")).unwrap();
    assert!(env.contains("KVLAB_TIER='cpu'") && env.contains("KVLAB_CACHE_RAM_MIB="), "{env}");
    let log = std::fs::read_to_string(shared.dir.join("engine.log")).unwrap();
    assert!(log.contains("--env-file") && log.contains("listening"), "engine.log:\n{log}");
    assert_no_secret(ws.path());
}

/// The emulator image with `--tier disk`: the tier's files land on the host volume and the
/// host's disk sampler sees the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_image_disk_tier_on_a_volume() {
    require_image("kvlab/emulator");
    let _turn = ENGINE.lock().await;
    let ws = workspace();
    let mut opts = options(ws.path(), "kvlab/emulator", Tier::Disk, "shared-prefix", 2048, 20);
    opts.request_rate = Some(20.0);
    opts.max_concurrency = None;
    let r = run(&opts).await;
    let stored: u64 = files(&r.dir.join("kvcache")).iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(stored > 0, "the disk tier stored nothing on the volume");
    let text = std::fs::read_to_string(r.dir.join("samples/disk.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let idx = header.iter().position(|h| *h == "write_bytes_s").unwrap();
    let writes = lines.filter_map(|l| l.split(',').nth(idx)?.parse::<f64>().ok()).fold(0.0, f64::max);
    assert!(writes > 0.0, "samples/disk.csv shows no writes (the volume holds {stored} bytes)");
    assert!(r.summary.cached_tokens_total > 0, "a shared-prefix workload hits the cache");
    // The image's `kvlab.engine=emulated` label keeps its numbers labelled emulated.
    assert!(r.emulated, "an emulator image's run must say emulated");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["emulated"], serde_json::Value::Bool(true), "summary.json of an emulator image");
    assert_no_secret(ws.path());
}

/// Clear errors, nothing left behind: a missing image, a port already taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_and_taken_port_fail_clearly() {
    require_image("kvlab/llamacpp");
    let _turn = ENGINE.lock().await;
    let ws = workspace();
    let opts = options(ws.path(), "kvlab/no-such-image", Tier::Cpu, "random", 64, 1);
    let Err(err) = bench(&opts).await else { panic!("a missing image fails") };
    let err = err.to_string();
    assert!(err.contains("kvlab/no-such-image") && err.contains("cargo xtask images"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut opts = options(ws.path(), "kvlab/llamacpp", Tier::Cpu, "random", 64, 1);
    opts.port = Some(taken.local_addr().unwrap().port());
    let Err(err) = bench(&opts).await else { panic!("a taken port fails") };
    let err = err.to_string();
    assert!(err.contains("is not available") && err.contains("--port"), "{err}");

    // llama.cpp has no disk tier: the image refuses, and the launcher shows its last lines.
    let opts = options(ws.path(), "kvlab/llamacpp", Tier::Disk, "random", 64, 1);
    let Err(err) = bench(&opts).await else { panic!("the disk tier is refused") };
    let err = err.to_string();
    assert!(err.contains("exited at start") && err.contains("cannot express"), "{err}");

    for dir in std::fs::read_dir(ws.path().join("results")).unwrap() {
        let id = run_id(&dir.unwrap().path());
        assert_eq!(containers_with(&format!("kvlab.run-id={id}")), Vec::<String>::new(), "left behind: {id}");
    }
    assert_no_secret(ws.path());
}

/// A lab started as a child process: `bench` with a slow open-loop workload.
struct ChildLab {
    child: std::process::Child,
    out: tempfile::TempDir,
}

impl ChildLab {
    fn start(engine_args: &[&str], env: &[(&str, &str)]) -> ChildLab {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(xtask_bin());
        cmd.args(["bench", "--tier", "cpu", "--workload", "random", "--prompt-len", "64", "--gen-len", "4"])
            .args(["--num-requests", "100000", "--request-rate", "2", "--ready-timeout", "120", "--out"])
            .arg(out.path())
            .args(engine_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out.path().join("stdout.txt")).unwrap())
            .stderr(std::fs::File::create(out.path().join("stderr.txt")).unwrap());
        ChildLab { child: cmd.spawn().unwrap(), out }
    }

    /// Waits until the engine answered requests; returns the run's directory.
    fn wait_serving(&mut self) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the lab exited ({status}): {}", self.output());
            }
            let dirs: Vec<PathBuf> = std::fs::read_dir(self.out.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            if let Some(dir) = dirs.iter().find(|d| !records(d).is_empty()) {
                return dir.clone();
            }
            assert!(Instant::now() < deadline, "no request finished within 180 s: {}", self.output());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.out.path().join(f)).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{}", read("stdout.txt"), read("stderr.txt"))
    }

    fn signal(&mut self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        self.child.wait().unwrap();
    }
}

impl Drop for ChildLab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clean() -> String {
    let out = Command::new(xtask_bin()).arg("clean").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cargo xtask clean failed:\n{text}");
    text
}

/// SIGKILL of the lab leaves its container running (nothing can stop that); `cargo xtask clean`
/// finds it by its labels and removes it. The planted HF_TOKEN reached the container's
/// environment and is in no result file and no line the lab printed. SIGTERM, by contrast, stops
/// and removes the container on the lab's way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_lab_leaves_a_container_that_clean_removes() {
    require_image("kvlab/llamacpp");
    let _turn = ENGINE.lock().await;
    let engine = ["--engine", "docker", "--image", "kvlab/llamacpp"];
    let mut lab = ChildLab::start(&engine, &[("HF_TOKEN", TOKEN)]);
    let dir = lab.wait_serving();
    let id = run_id(&dir);
    let label = format!("kvlab.run-id={id}");
    let names = containers_with(&label);
    assert_eq!(names.len(), 1, "{names:?}");
    let env = Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}", &names[0]])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&env.stdout).contains(&format!("HF_TOKEN={TOKEN}")),
        "the token reaches the engine"
    );
    let owner = format!("kvlab.owner-pid={}", lab.child.id());
    assert_eq!(containers_with(&owner), names, "labelled with its owner");

    lab.signal("-KILL");
    assert_eq!(containers_with(&label), names, "SIGKILL cannot remove it: an orphan");
    let cleaned = clean();
    assert!(cleaned.contains(&names[0]), "clean did not report the container:\n{cleaned}");
    assert_eq!(containers_with(&label), Vec::<String>::new(), "the orphan is still there");
    assert!(!lab.output().contains(TOKEN), "the secret was printed");
    for f in files(lab.out.path()) {
        assert!(
            !std::fs::read_to_string(&f).unwrap_or_default().contains(TOKEN),
            "secret in {}",
            f.display()
        );
    }

    let mut lab = ChildLab::start(&engine, &[]);
    let dir = lab.wait_serving();
    let label = format!("kvlab.run-id={}", run_id(&dir));
    assert_eq!(containers_with(&label).len(), 1);
    lab.signal("-TERM");
    assert_eq!(containers_with(&label), Vec::<String>::new(), "SIGTERM left the container: {}", lab.output());
}

/// SIGKILL of a lab running llama.cpp as a process: the engine survives its lab, `clean` finds
/// it by its record under `.kvlab/engines/` and kills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_lab_leaves_an_engine_process_that_clean_kills() {
    let _turn = ENGINE.lock().await;
    let (python, model) = common::real_engine();
    let (python, model) = (python.display().to_string(), model.display().to_string());
    let engine = ["--engine", "llamacpp", "--python", &python, "--model-path", &model];
    let mut lab = ChildLab::start(&engine, &[]);
    let dir = lab.wait_serving();
    let script = dir.join("serve_llamacpp.py").display().to_string();
    let engines = common::processes_mentioning(&script);
    assert_eq!(engines.len(), 1, "one engine process: {engines:?}");
    lab.signal("-KILL");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(common::processes_mentioning(&script), engines, "the engine outlives a SIGKILLed lab");
    let cleaned = clean();
    assert!(cleaned.contains(&format!("killed engine process {} ", engines[0])), "clean:\n{cleaned}");
    assert_eq!(common::processes_mentioning(&script), Vec::<u32>::new(), "the orphaned engine still runs");
}

/// A daemon that does not answer: a clear message naming it, and no result of a run.
#[test]
fn daemon_not_running_fails_clearly() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(xtask_bin())
        .args([
            "bench",
            "--engine",
            "docker",
            "--image",
            "kvlab/llamacpp",
            "--tier",
            "cpu",
            "--num-requests",
            "1",
        ])
        .arg("--out")
        .arg(out.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("the docker daemon is not running or not reachable"), "{stderr}");
    assert!(stderr.contains("/nonexistent/docker.sock"), "the message says which daemon: {stderr}");
}
