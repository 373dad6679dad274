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

use engines::EngineKind;
use lab::run::{bench, BenchOptions, RunReport};
use schema::config::Tier;

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

/// Names of the containers a lab with pid `owner` started (`kvlab.managed=true`), running or not.
fn managed_containers_of(owner: u32) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "--all", "--filter", "label=kvlab.managed=true", "--filter"])
        .arg(format!("label=kvlab.owner-pid={owner}"))
        .args(["--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker ps: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// The secret env-files (`--env-file`) a lab with pid `owner` left in `tmp`: they live only while
/// the container is created.
fn env_files_of(tmp: &Path, owner: u32) -> Vec<PathBuf> {
    let suffix = format!("-{owner}.env");
    std::fs::read_dir(tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("kvlab-") && name.ends_with(&suffix)
        })
        .collect()
}

/// The entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// A docker image's id (`None`: not here).
fn image_id(image: &str) -> Option<String> {
    let out =
        Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", image]).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
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

/// A container this test runs itself (not through the lab): removed when the test ends, however.
struct TestContainer(String);

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "--force", &self.0]).output();
    }
}

/// The lab's own image runs the load generator (`kvlab loadgen`, the image's entrypoint) against
/// an emulated engine on the host's loopback: every request completes, and the result directory
/// it writes on the mounted volume is complete and says emulated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_image_runs_the_load_generator() {
    use std::os::unix::fs::MetadataExt as _;
    require_image("kvlab/lab");
    let _turn = ENGINE.lock().await;
    let cfg = emulator::EmulatorConfig { time_scale: 0.01, ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = emulator::Server::start(&cfg, listener).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    let out = tempfile::tempdir().unwrap();
    let meta = std::fs::metadata(out.path()).unwrap();
    let name = format!("kvlab-test-lab-image-{}", std::process::id());
    let _container = TestContainer(name.clone());
    let run = tokio::process::Command::new("docker")
        .args(["run", "--rm", "--network=host", "--name", &name, "--label", "kvlab.test=lab-image"])
        .arg("--user")
        .arg(format!("{}:{}", meta.uid(), meta.gid()))
        .arg("--volume")
        .arg(format!("{}:/results", out.path().display()))
        .args(["kvlab/lab", "loadgen", "--url", &url, "--workload", "random", "--prompt-len", "64"])
        .args(["--gen-len", "8", "--num-requests", "12", "--request-rate", "inf", "--seed", "5"])
        .args(["--label", "in-container", "--out", "/results"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    server.shutdown().await.unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "kvlab/lab loadgen failed:\n{said}");
    let dirs = entries(out.path());
    assert_eq!(dirs.len(), 1, "one result directory on the volume: {dirs:?}\n{said}");
    let dir = &dirs[0];
    assert!(dir.file_name().unwrap().to_string_lossy().starts_with("in-container_"), "{}", dir.display());
    let in_container = format!("results: /results/{}", dir.file_name().unwrap().to_string_lossy());
    assert!(said.contains(&in_container), "the lab names its directory as it sees it:\n{said}");
    for f in ["run.toml", "env.json", "requests.jsonl", "requests.csv", "summary.json", "report.md"] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    let recs = records(dir);
    assert_eq!(recs.len(), 12, "{said}");
    assert!(recs.iter().all(|r| r.error.is_none() && r.first_token.is_some()), "{recs:#?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary["completed"].as_u64(), summary["failed"].as_u64()), (Some(12), Some(0)), "{summary}");
    assert!(summary["output_throughput"].as_f64().unwrap() > 0.0, "{summary}");
    assert_eq!(summary["emulated"], serde_json::Value::Bool(true), "the engine said emulated: {summary}");
    assert_eq!(containers_with("kvlab.test=lab-image"), Vec::<String>::new(), "--rm left the container");
}

/// `cargo xtask images base` with the recipe unchanged reuses the image it made: reported cached,
/// no debootstrap, the same image id under both its tags. (That another recipe has another hash,
/// so a changed input is built anew, are the unit tests `base_hash_covers_every_input` of the
/// lab and `base_cache_holds_only_for_the_same_inputs` of xtask.)
#[test]
fn base_image_is_reused_when_its_inputs_are_unchanged() {
    require_image("kvlab/base:bookworm");
    let recipe = images::BaseRecipe::default();
    let before = image_id(&recipe.tag());
    assert_eq!(image_id(&recipe.hash_tag()), before, "{} is tagged with its inputs' hash", recipe.tag());
    let started = Instant::now();
    let out = Command::new(xtask_bin()).args(["images", "base"]).stdin(Stdio::null()).output().unwrap();
    let took = started.elapsed();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("{} is up to date ({})", recipe.tag(), recipe.hash_tag())), "{said}");
    assert!(said.contains("image kvlab/base: ") && said.contains(" (cached), "), "{said}");
    assert!(!said.contains("debootstrap"), "the base was rebuilt:\n{said}");
    assert_eq!(image_id(&recipe.tag()), before, "the base's image id changed:\n{said}");
    assert!(took < Duration::from_secs(30), "a cached base took {took:?}:\n{said}");
}

/// Every image built here is within its size budget (`KvlabImage::size_budget`, recorded in
/// containers/README.md); `cargo xtask ci` checks the same after it builds them.
#[test]
fn images_are_within_their_size_budgets() {
    use images::{check_size_budgets, BaseRecipe, KvlabImage, SizeBudget as _};
    let mut sizes = Vec::new();
    for image in [KvlabImage::Base, KvlabImage::Lab, KvlabImage::Llamacpp, KvlabImage::Emulator] {
        let tag = if image == KvlabImage::Base { BaseRecipe::default().tag() } else { image.latest() };
        require_image(&tag);
        let out = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Size}}", &tag])
            .output()
            .unwrap();
        let size: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        eprintln!("{tag}: {:.1} MB of {:.0}", size as f64 / 1e6, image.size_budget().unwrap() as f64 / 1e6);
        sizes.push((image, size));
    }
    check_size_budgets(&sizes).unwrap_or_else(|e| panic!("{e}"));
}

/// Clear errors, nothing left behind: a missing image (kvlab's, which is built and never pulled,
/// or another, whose pull fails on this daemon), a port already taken, both refused before the
/// run's directory exists; and an engine that refuses the tier, whose directory keeps its log. In
/// every case no container of this lab and no secret env-file remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_container_runs_fail_clearly_and_leave_nothing() {
    require_image("kvlab/llamacpp");
    let _turn = ENGINE.lock().await;
    let ws = workspace();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let other = "example.invalid/kvlab-test/no-such-image:1";
    let pull = format!("`docker pull {other}` failed");
    struct Case<'a> {
        what: &'a str,
        image: &'a str,
        tier: Tier,
        port: Option<u16>,
        says: Vec<&'a str>,
        /// Whether the run got as far as its result directory (the engine ran and refused).
        dir_kept: bool,
    }
    let cases = [
        Case {
            what: "a kvlab image that is not built",
            image: "kvlab/no-such-image",
            tier: Tier::Cpu,
            port: None,
            says: vec![
                "`kvlab/no-such-image` is not present locally",
                "not pulled",
                "run `cargo xtask images`",
            ],
            dir_kept: false,
        },
        Case {
            what: "a tag of a kvlab image that is not built",
            image: "kvlab/emulator:no-such-tag",
            tier: Tier::Cpu,
            port: None,
            says: vec![
                "`kvlab/emulator:no-such-tag` is not present locally",
                "`cargo xtask images emulator`",
            ],
            dir_kept: false,
        },
        Case {
            what: "another image, which this daemon cannot pull",
            image: other,
            tier: Tier::Cpu,
            port: None,
            says: vec!["is not present locally", "cannot pull it", &pull, "docker load --input"],
            dir_kept: false,
        },
        Case {
            what: "a port already taken",
            image: "kvlab/llamacpp",
            tier: Tier::Cpu,
            port: Some(taken_port),
            says: vec!["is not available", "--port"],
            dir_kept: false,
        },
        Case {
            // llama.cpp has no disk tier: the image refuses, and the launcher shows its last lines.
            what: "an engine that refuses the tier",
            image: "kvlab/llamacpp",
            tier: Tier::Disk,
            port: None,
            says: vec!["exited at start", "cannot express"],
            dir_kept: true,
        },
    ];
    let me = std::process::id();
    for (i, case) in cases.iter().enumerate() {
        let mut opts = options(ws.path(), case.image, case.tier, "random", 64, 1);
        opts.port = case.port;
        opts.out = Some(ws.path().join(format!("results-{i}")));
        let Err(err) = bench(&opts).await else { panic!("{}: the run started", case.what) };
        let err = err.to_string();
        for want in &case.says {
            assert!(err.contains(want), "{}: `{want}` missing from: {err}", case.what);
        }
        let dirs = entries(opts.out.as_ref().unwrap());
        if case.dir_kept {
            assert_eq!(dirs.len(), 1, "{}: {dirs:?}", case.what);
            let id = run_id(&dirs[0]);
            assert_eq!(containers_with(&format!("kvlab.run-id={id}")), Vec::<String>::new(), "{}", case.what);
            let log = std::fs::read_to_string(dirs[0].join("engine.log")).unwrap();
            assert!(log.contains("--env-file"), "{}: the container got the token file:\n{log}", case.what);
        } else {
            assert_eq!(dirs, Vec::<PathBuf>::new(), "{}: refused before the run, yet it wrote", case.what);
        }
        assert_eq!(managed_containers_of(me), Vec::<String>::new(), "{}: a container is left", case.what);
        assert_eq!(env_files_of(&std::env::temp_dir(), me), Vec::<PathBuf>::new(), "{}: env-file", case.what);
    }
    drop(taken);
    assert_no_secret(ws.path());
}

/// A lab started as a child process: `bench` with a slow open-loop workload, its own temporary
/// directory (`TMPDIR`, where the secret env-file would be).
struct ChildLab {
    child: std::process::Child,
    out: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl ChildLab {
    fn start(engine_args: &[&str], env: &[(&str, &str)]) -> ChildLab {
        let out = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(xtask_bin());
        cmd.env("TMPDIR", tmp.path());
        cmd.args(["bench", "--tier", "cpu", "--workload", "random", "--prompt-len", "64", "--gen-len", "4"])
            .args(["--num-requests", "100000", "--request-rate", "2", "--ready-timeout", "120", "--out"])
            .arg(out.path())
            .args(engine_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out.path().join("stdout.txt")).unwrap())
            .stderr(std::fs::File::create(out.path().join("stderr.txt")).unwrap());
        ChildLab { child: cmd.spawn().unwrap(), out, tmp }
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

    /// Sends `sig`; returns how long the lab took to exit, and how.
    fn signal(&mut self, sig: &str) -> (Duration, std::process::ExitStatus) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        let sent = Instant::now();
        let status = self.child.wait().unwrap();
        (sent.elapsed(), status)
    }
}

impl Drop for ChildLab {
    /// A test that fails midway leaves no lab and no container of it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for name in managed_containers_of(self.child.id()) {
            let _ = Command::new("docker").args(["rm", "--force", &name]).output();
        }
    }
}

fn clean() -> String {
    let out = Command::new(xtask_bin()).arg("clean").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cargo xtask clean failed:\n{text}");
    text
}

/// `bench` with the emulated engine: quick, and it reaps orphans before it starts.
const QUICK_BENCH: &[&str] = &[
    "bench",
    "--engine",
    "emulated",
    "--tier",
    "cpu",
    "--workload",
    "random",
    "--prompt-len",
    "16",
    "--gen-len",
    "2",
    "--num-requests",
    "2",
    "--request-rate",
    "inf",
];

/// SIGKILL of the lab leaves its container running (nothing can stop that); the next command
/// that reaps, `cargo xtask clean` or the next `cargo xtask bench` (any engine), finds it by its
/// labels, removes it and says so. The planted HF_TOKEN reached the container's environment, and
/// is in no result file, no line the lab printed, and no file left in its temporary directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_lab_leaves_a_container_that_the_next_command_removes() {
    require_image("kvlab/llamacpp");
    let _turn = ENGINE.lock().await;
    let engine = ["--engine", "docker", "--image", "kvlab/llamacpp"];
    // (the command after the SIGKILL, its arguments)
    let reapers: [(&str, &[&str]); 2] = [("clean", &["clean"]), ("the next bench", QUICK_BENCH)];
    for (reaper, args) in reapers {
        let mut lab = ChildLab::start(&engine, &[("HF_TOKEN", TOKEN)]);
        let dir = lab.wait_serving();
        let id = run_id(&dir);
        let label = format!("kvlab.run-id={id}");
        let names = containers_with(&label);
        assert_eq!(names.len(), 1, "{reaper}: {names:?}");
        let env = Command::new("docker")
            .args(["inspect", "--format", "{{json .Config.Env}}", &names[0]])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&env.stdout).contains(&format!("HF_TOKEN={TOKEN}")),
            "the token reaches the engine"
        );
        assert_eq!(entries(lab.tmp.path()), Vec::<PathBuf>::new(), "the env-file outlived the start");
        let owner = format!("kvlab.owner-pid={}", lab.child.id());
        assert_eq!(containers_with(&owner), names, "labelled with its owner");

        lab.signal("-KILL");
        assert_eq!(containers_with(&label), names, "SIGKILL cannot remove it: an orphan");
        let next_out = tempfile::tempdir().unwrap();
        let mut next = Command::new(xtask_bin());
        next.args(args);
        if args[0] == "bench" {
            next.arg("--out").arg(next_out.path());
        }
        let out = next.output().unwrap();
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{reaper} failed:\n{said}");
        assert!(
            said.contains(&format!("removed container {} of run {id}", names[0])),
            "{reaper} did not report the orphan it removed:\n{said}"
        );
        assert_eq!(containers_with(&label), Vec::<String>::new(), "{reaper}: the orphan is still there");
        assert!(!lab.output().contains(TOKEN) && !said.contains(TOKEN), "the secret was printed");
        for f in files(lab.out.path()).into_iter().chain(files(next_out.path())) {
            assert!(
                !std::fs::read_to_string(&f).unwrap_or_default().contains(TOKEN),
                "secret in {}",
                f.display()
            );
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C) of a lab running a container: the lab exits within 5 s, the
/// container is stopped and removed, and the summary over what finished says interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_signals_remove_the_container() {
    require_image("kvlab/llamacpp");
    let _turn = ENGINE.lock().await;
    let engine = ["--engine", "docker", "--image", "kvlab/llamacpp"];
    for sig in ["-TERM", "-INT"] {
        let mut lab = ChildLab::start(&engine, &[]);
        let dir = lab.wait_serving();
        let label = format!("kvlab.run-id={}", run_id(&dir));
        assert_eq!(containers_with(&label).len(), 1, "{sig}");
        let (took, status) = lab.signal(sig);
        eprintln!("{sig}: the lab stopped in {:.2} s", took.as_secs_f64());
        assert!(took <= Duration::from_secs(5), "{sig}: the lab took {took:?} to stop: {}", lab.output());
        assert!(!status.success(), "{sig}: an interrupted run exits non-zero: {}", lab.output());
        assert_eq!(
            containers_with(&label),
            Vec::<String>::new(),
            "{sig} left the container: {}",
            lab.output()
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["interrupted"], serde_json::Value::Bool(true), "{sig}: {summary}");
        let done = summary["completed"].as_u64().unwrap() + summary["failed"].as_u64().unwrap();
        assert_eq!(done as usize, records(&dir).len(), "{sig}: the summary covers every record");
        assert!(summary["completed"].as_u64().unwrap() >= 1, "{sig}: {summary}");
    }
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

/// A daemon that does not answer: a clear message naming it, and nothing left behind: no result
/// directory, no container, no secret env-file.
#[test]
fn daemon_not_running_fails_clearly() {
    let out = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(xtask_bin())
        .args(["bench", "--engine", "docker", "--image", "kvlab/llamacpp", "--tier", "cpu"])
        .args(["--num-requests", "1", "--out"])
        .arg(out.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("HF_TOKEN", TOKEN)
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let run = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("the docker daemon is not running or not reachable"), "{stderr}");
    assert!(stderr.contains("/nonexistent/docker.sock"), "the message says which daemon: {stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");
    assert_eq!(entries(out.path()), Vec::<PathBuf>::new(), "a refused run wrote a result directory");
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new(), "a file (the secret env-file?) was left");
    // The real daemon (this test's DOCKER_HOST) has no container of that lab.
    assert_eq!(managed_containers_of(pid), Vec::<String>::new(), "a container was left");
}
