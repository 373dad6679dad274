//! Faults of the filesystems and of the engine, through the lab API:
//!
//! - the result directory's filesystem fills up: a clear error naming the file, and never a
//!   half-written `summary.json` (summaries are written to a temporary file, then renamed);
//! - the disk tier's filesystem fills up: offload writes fail, the engine counts them in its
//!   metrics, every request is served (by recompute), nothing crashes;
//! - the real llama.cpp engine process is killed mid-run: the time is recorded, the requests in
//!   flight end as classified failures, `engine.log` is kept and the run ends in an error.
//!
//! The small filesystems are tmpfs mounts the tests make (`mount -t tmpfs -o size=…`, root), each
//! unmounted by a drop guard; where mount is refused the test fails naming it. The llama.cpp test
//! needs `KVLAB_PYTHON` and `KVLAB_LLAMACPP_MODEL` (`cargo xtask ci` sets both).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use engines::EngineKind;
use lab::error::RunError;
use lab::run::{bench_until, serve_emulated, BenchOptions, ServeOptions};
use schema::config::Tier;

use common::{after_finished, assert_no_secret, processes_mentioning, workspace};

/// A tmpfs of `size` mounted on `dir`; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("this test needs `mount` (to make a small tmpfs): {e}"));
        assert!(
            out.status.success(),
            "`mount -t tmpfs -o size={size} tmpfs {}` was refused ({}): this test needs root to make a \
             small filesystem",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn emulated(root: &Path, out: &Path, n: u32) -> BenchOptions {
    let mut opts = BenchOptions::new(root, Tier::Baseline);
    opts.engine = EngineKind::Emulated;
    opts.workload = Some("random".into());
    opts.prompt_len = Some(256);
    opts.gen_len = Some(64);
    opts.num_requests = Some(n);
    opts.request_rate = Some(f64::INFINITY);
    opts.max_concurrency = Some(16);
    opts.seed = Some(5);
    opts.progress = false;
    opts.out = Some(out.to_owned());
    opts
}

/// The only directory under `out`.
fn only_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_filesystem_full_is_a_clear_error_without_half_written_files() {
    let ws = workspace();
    let out = ws.path().join("results");
    let _fs = Tmpfs::mount(&out, "96k");
    let opts = emulated(ws.path(), &out, 2000);
    let err = bench_until(&opts, std::future::pending()).await.expect_err("the filesystem is full");
    let message = err.to_string();
    assert!(message.contains("No space left on device"), "{message}");
    assert!(message.contains(&out.display().to_string()), "the error names the file: {message}");
    let dir = only_dir(&out);
    for f in common::files(&dir) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "a temporary file was left: {}", f.display());
        if name.ends_with(".json") {
            let text = std::fs::read_to_string(&f).unwrap();
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{} is half-written ({e}):\n{text}", f.display()));
        }
    }
    // What was written is still readable: every line of requests.jsonl but a torn last one.
    let text = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap_or_default();
    let lines =
        stats::parse_json_lines::<stats::RequestRecord>(&text).expect("only the last line may be torn");
    assert!(!lines.items.is_empty(), "some requests finished before the disk was full");
}

/// Lines of a Prometheus text whose name is `metric` and whose labels contain `label`.
fn metric_sum(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_tier_filesystem_full_is_served_by_recompute() {
    let ws = workspace();
    let disk = ws.path().join("kvcache");
    let _fs = Tmpfs::mount(&disk, "1m");
    let serve = ServeOptions {
        root: ws.path().to_owned(),
        tier: Tier::Disk,
        model: None,
        gpu: None,
        port: None,
        redis_url: None,
        disk_dir: Some(disk.clone()),
    };
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve_emulated(&serve, |url| drop(url_tx.send(url.to_owned())), async {
            let _ = stop_rx.await;
        })
        .await
    });
    let Ok(url) = url_rx.await else {
        panic!("the engine did not start: {:?}", server.await.unwrap().err());
    };

    let mut opts = BenchOptions::new(ws.path(), Tier::Disk);
    opts.engine = EngineKind::External;
    opts.url = Some(url.clone());
    opts.workload = Some("random".into());
    opts.prompt_len = Some(4096);
    opts.gen_len = Some(4);
    opts.num_requests = Some(60);
    opts.request_rate = Some(f64::INFINITY);
    opts.max_concurrency = Some(4);
    opts.progress = false;
    opts.out = Some(ws.path().join("results"));
    let reports = bench_until(&opts, std::future::pending()).await.expect("the run completes");
    assert_eq!((reports[0].summary.completed, reports[0].summary.failed), (60, 0), "every request served");
    assert!(reports[0].emulated, "kvlab's emulator behind --engine external is labelled emulated");
    assert!(reports[0].summary.emulated, "summary.json says emulated");

    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    let write_errors = metric_sum(&metrics, "kvlab_tier_write_errors_total", "disk");
    assert!(write_errors > 0.0, "the full disk tier's failed writes are counted:\n{metrics}");
    let health = reqwest::get(format!("{url}/health")).await.unwrap();
    assert!(health.status().is_success(), "the engine still serves");
    eprintln!("disk tier full: {write_errors} failed offload writes, 60 of 60 requests served");
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Options of a llama.cpp run of `n` requests, two at a time.
pub(crate) fn llamacpp(root: &Path, n: u32) -> BenchOptions {
    let mut opts = common::llamacpp_options(root, Tier::Baseline);
    opts.prompt_len = Some(64);
    opts.gen_len = Some(32);
    opts.num_requests = Some(n);
    opts.max_concurrency = Some(2);
    opts.seed = Some(9);
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_engine_killed_mid_run() {
    let ws = workspace();
    let out = ws.path().join("results");
    let opts = llamacpp(ws.path(), 400);
    let watch = out.clone();
    let killer = tokio::spawn(async move {
        after_finished(watch.clone(), 4).await;
        let pids = processes_mentioning(&watch.display().to_string());
        assert!(!pids.is_empty(), "the engine process is running");
        for pid in &pids {
            Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        }
        Instant::now()
    });
    let err = bench_until(&opts, std::future::pending()).await.expect_err("the engine died");
    let killed = killer.await.unwrap();
    eprintln!("the run ended {:.3} s after the engine was killed", killed.elapsed().as_secs_f64());
    let RunError::EngineDied { engine, at_s, log } = &err else { panic!("expected EngineDied, got: {err}") };
    assert_eq!(engine, "llamacpp");
    assert!(killed.elapsed() < Duration::from_secs(20), "the run stopped soon after the engine died");
    let dir = log.parent().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("listening"), "engine.log is kept:\n{text}");
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("env.json")).unwrap()).unwrap();
    assert_eq!(env["engine_exited_at_s"].as_f64(), Some(*at_s));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["engine_exited_at_s"].as_f64(), Some(*at_s));
    let records = common::records(dir);
    assert_eq!(
        summary["completed"].as_u64().unwrap() + summary["failed"].as_u64().unwrap(),
        records.len() as u64
    );
    let ended_after: Vec<&stats::RequestRecord> = records.iter().filter(|r| r.end >= *at_s - 0.5).collect();
    let failed: Vec<&stats::RequestRecord> = records.iter().filter(|r| r.error.is_some()).collect();
    assert!(!failed.is_empty(), "the requests in flight failed: {ended_after:#?}");
    for r in &failed {
        let class = r.error.as_ref().unwrap().class();
        assert!(class == "stream_cut" || class == "connect", "classified: {r:?}");
    }
    assert!(processes_mentioning(&out.display().to_string()).is_empty(), "no engine left running");
    assert_no_secret(ws.path());
}
