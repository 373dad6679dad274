//! End to end on the emulated engine: `cargo xtask bench --tier T --num-requests 20` through the
//! lab API. The redis tier needs a real redis-server (`KVLAB_REDIS_URL`, exported by
//! `cargo xtask ci`).

use std::path::{Path, PathBuf};

use lab::config::Tier;
use lab::engine::EngineKind;
use lab::run::{bench, BenchOptions};

const TOKEN: &str = "hf_e2ePlantedToken987";

/// A workspace root with the repository's configs and a planted `.env`.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    copy_dir(&repo.join("configs"), &dir.path().join("configs"));
    std::fs::write(dir.path().join(".env"), format!("HF_TOKEN={TOKEN}\n")).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn max_column(csv: &Path, column: &str) -> f64 {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let idx = header.iter().position(|h| *h == column).unwrap_or_else(|| panic!("{column} in {header:?}"));
    lines.filter_map(|l| l.split(',').nth(idx)?.parse::<f64>().ok()).fold(0.0, f64::max)
}

async fn run_tier(tier: Tier, redis_url: Option<String>) -> PathBuf {
    let ws = workspace();
    let mut opts = BenchOptions::new(ws.path(), tier);
    opts.engine = EngineKind::Emulated;
    opts.num_requests = Some(20);
    opts.request_rate = Some(20.0);
    opts.progress = false;
    opts.redis_url = redis_url;
    opts.ready_timeout = std::time::Duration::from_secs(30);
    let start = std::time::Instant::now();
    let reports = bench(&opts).await.unwrap_or_else(|e| panic!("{tier}: {e}"));
    assert!(start.elapsed().as_secs() < 60, "{tier} took {:?}", start.elapsed());
    let r = &reports[0];
    assert!(r.emulated);
    assert_eq!(r.summary.completed, 20, "{tier}");
    assert_eq!(r.summary.failed, 0, "{tier}");
    for f in
        ["run.toml", "env.json", "requests.jsonl", "requests.csv", "summary.json", "engine.log", "report.md"]
    {
        assert!(r.dir.join(f).is_file(), "{tier}: {f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["engine"], "emulated");
    assert_eq!(summary["tier"], tier.as_str());
    assert_eq!(summary["emulated"], true);
    assert!(std::fs::read_to_string(r.dir.join("report.md")).unwrap().contains("EMULATED"));
    assert!(r.summary.cached_tokens_total > 0, "{tier}: a shared-prefix workload hits the cache");
    for f in files(ws.path()) {
        let bytes = std::fs::read(&f).unwrap();
        if f.ends_with(".env") {
            continue;
        }
        assert!(!String::from_utf8_lossy(&bytes).contains(TOKEN), "secret in {}", f.display());
    }
    let dir = r.dir.clone();
    std::mem::forget(ws); // keep the files for the caller's checks
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_tier_writes_every_file_and_the_disk() {
    let dir = run_tier(Tier::Disk, None).await;
    assert!(dir.join("samples/disk.csv").is_file());
    let writes = max_column(&dir.join("samples/disk.csv"), "write_bytes_s");
    let stored: u64 = files(&dir.join("kvcache")).iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(stored > 0, "the disk tier stored nothing");
    assert!(writes > 0.0, "samples/disk.csv shows no writes (stored {stored} bytes)");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_and_cpu_tiers() {
    for tier in [Tier::Baseline, Tier::Cpu] {
        let dir = run_tier(tier, None).await;
        let _ = std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tier_against_redis_server() {
    let url = std::env::var("KVLAB_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "KVLAB_REDIS_URL is not set: this test needs a running redis-server on 127.0.0.1 \
             (`cargo xtask ci` starts one and exports it)"
        )
    });
    let dir = run_tier(Tier::Redis, Some(url)).await;
    let _ = std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());
}
