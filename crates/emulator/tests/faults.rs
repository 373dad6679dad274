//! Tier faults: requests are served by recomputation, errors are counted, the engine goes on.

mod common;

use common::*;
use emulator::{EmulatorConfig, TierPreset};
use testkit::services::redis_url;

const DISK: &str = "tier=\"disk\"";
const REMOTE: &str = "tier=\"remote\"";

/// Documents 0..n then document 0 again (its head still on the GPU, its tail only in the tier).
async fn rounds(base: &str, docs: u32) -> Vec<u64> {
    let mut cached = Vec::new();
    for (i, d) in (0..docs).chain([0]).enumerate() {
        cached.push(document(base, d, i as u32).await);
    }
    cached
}

/// One 2048-token document as request `i`; its cached tokens.
async fn document(base: &str, d: u32, i: u32) -> u64 {
    let (text, usage) = complete(base, &doc_prompt(d, 2048, i), 8).await;
    assert_eq!(text, "abcdefgh");
    usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn unusable_disk_directory() {
    // Tests run as root, so a 0555 directory is still writable: use a path under a regular file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let cfg = fast(EmulatorConfig::for_tier(TierPreset::Disk { dir: file.join("kv") }));
    let server = start(&cfg).await;
    let base = format!("http://{}", server.local_addr());
    let cached = rounds(&base, 3).await;
    // Nothing could be stored, so the repeat only finds what the GPU kept.
    assert!(cached[3] < 2048, "{cached:?}");
    let m = wait_metrics(&base, "write errors", |m| metric(m, "kvlab_tier_errors_total", DISK) >= 24.0).await;
    assert_eq!(metric(&m, "kvlab_tier_written_bytes_total", DISK), 0.0);
    assert_eq!(metric(&m, "vllm:external_prefix_cache_hits_total", ""), 0.0);
    assert_eq!(metric(&m, "vllm:request_success_total", ""), 4.0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn full_disk_and_corrupt_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv");
    let cfg = fast(EmulatorConfig::for_tier(TierPreset::Disk { dir: kv.clone() }));
    let server = start(&cfg).await;
    let base = format!("http://{}", server.local_addr());
    rounds(&base, 3).await;
    wait_metrics(&base, "24 chunk files", |m| {
        metric(m, "kvlab_tier_written_bytes_total", DISK) >= 24.0 * 524_288.0
    })
    .await;
    // Every chunk file becomes /dev/full: reads return zeros (corrupt), writes fail with ENOSPC.
    let mut files = 0;
    for entry in std::fs::read_dir(&kv).unwrap() {
        let path = entry.unwrap().path();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        files += 1;
    }
    assert_eq!(files, 24);
    // A background store still in flight at the swap may fail too (seen on a loaded machine):
    // let it land, then count from there.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = metric(&metrics(&base).await, "kvlab_tier_errors_total", DISK);
    assert!(before <= 1.0, "{before} errors before any request touched a corrupt chunk");
    let (text, usage) = complete(&base, &doc_prompt(1, 2048, 99), 8).await;
    assert_eq!(text, "abcdefgh");
    // The corrupt chunk was recomputed, not loaded.
    assert!(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() < 2048);
    // One failed read, then the rewrite of that chunk hits ENOSPC.
    let m = wait_metrics(&base, "read and write errors", |m| {
        metric(m, "kvlab_tier_errors_total", DISK) >= before + 2.0
    })
    .await;
    assert_eq!(metric(&m, "vllm:request_success_total", ""), 5.0);
    // The engine keeps serving.
    let (text, _) = complete(&base, &doc_prompt(7, 100, 0), 3).await;
    assert_eq!(text, "abc");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn redis_going_away_mid_run() {
    let mut redis = PrivateRedis::start();
    let cfg = fast(EmulatorConfig::for_tier(TierPreset::Redis { url: redis.url.clone() }));
    let server = start(&cfg).await;
    let base = format!("http://{}", server.local_addr());
    for d in 0..3 {
        document(&base, d, d).await;
    }
    // Stores run in the background: on a loaded machine the repeat could overtake them.
    wait_metrics(&base, "stores in Redis", |m| {
        metric(m, "kvlab_tier_written_bytes_total", REMOTE) >= 24.0 * 524_288.0
    })
    .await;
    let repeat = document(&base, 0, 3).await;
    assert!(repeat >= 2048, "document 0 comes back from Redis: {repeat} cached tokens");
    assert_eq!(metric(&metrics(&base).await, "kvlab_tier_errors_total", REMOTE), 0.0);
    redis.kill();
    // Document 1's tail is only in Redis: the read fails, the request is recomputed.
    let (text, usage) = complete(&base, &doc_prompt(1, 2048, 50), 8).await;
    assert_eq!(text, "abcdefgh");
    assert!(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() < 2048);
    let (text, _) = complete(&base, &doc_prompt(9, 2048, 51), 8).await;
    assert_eq!(text, "abcdefgh");
    let m =
        wait_metrics(&base, "redis errors", |m| metric(m, "kvlab_tier_errors_total", REMOTE) >= 2.0).await;
    assert_eq!(metric(&m, "vllm:request_success_total", ""), 6.0);
    server.shutdown().await.unwrap();
}

const WRITTEN: &str = "kvlab_tier_written_bytes_total";

fn failures(m: &str) -> f64 {
    metric(m, "kvlab_tier_read_errors_total", REMOTE) + metric(m, "kvlab_tier_write_errors_total", REMOTE)
}

/// 150 requests, one every 20 ms, over three 2048-token documents: about 3 s of load.
fn steady_plan() -> workload::Plan {
    use workload::{Limits, Mode, Plan, Prompt, Request, RequestMeta};
    let requests = (0..150u32)
        .map(|i| {
            let tokens = doc_prompt(i % 3, 2048, i);
            Request {
                id: u64::from(i),
                prompt_len: tokens.len() as u32,
                prompt: Prompt::Tokens(tokens),
                max_tokens: 8,
                send_at: Some(std::time::Duration::from_millis(u64::from(i) * 20)),
                depends_on: None,
                meta: RequestMeta::default(),
            }
        })
        .collect();
    Plan { requests, mode: Mode::Open, limits: Limits::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_run() {
    let mut redis = PrivateRedis::start();
    let cfg = fast(EmulatorConfig::for_tier(TierPreset::Redis { url: redis.url.clone() }));
    let server = start(&cfg).await;
    let base = format!("http://{}", server.local_addr());
    let load = {
        let base = base.clone();
        tokio::spawn(async move {
            let out = tempfile::tempdir().unwrap();
            let mut sink = loadgen::ResultWriter::in_dir(out.path()).unwrap();
            let mut lg = loadgen::LoadgenConfig::new(base);
            lg.progress = false;
            loadgen::run(&steady_plan(), &lg, &mut sink, std::time::Instant::now()).await.unwrap()
        })
    };
    wait_metrics(&base, "stores in Redis", |m| metric(m, WRITTEN, REMOTE) > 0.0).await;
    redis.kill();
    let down = wait_metrics(&base, "failed loads or stores", |m| failures(m) >= 1.0).await;
    redis.restart();
    let written_at_restart = metric(&metrics(&base).await, WRITTEN, REMOTE);
    let outcome = load.await.unwrap();
    // Every request was served, by recomputation while Redis was away.
    assert_eq!(outcome.summary.completed + outcome.summary.failed, 150);
    assert_eq!(outcome.summary.failed, 0, "{:?}", outcome.failure_message());
    assert!(!engine_busy(&base).await);
    // The reconnect works: stores land in the new Redis.
    let m =
        wait_metrics(&base, "stores after the restart", |m| metric(m, WRITTEN, REMOTE) > written_at_restart)
            .await;
    assert!(!redis_keys(&redis.url, "kvlab:").await.is_empty(), "nothing stored after the restart");
    let fails = failures(&m);
    assert!(fails >= failures(&down), "{m}");
    assert_eq!(metric(&m, "kvlab_tier_errors_total", REMOTE), fails, "every error is a load or a store");
    eprintln!(
        "redis restart: {fails} failed loads/stores, {} bytes written before the restart, {} after",
        written_at_restart,
        metric(&m, WRITTEN, REMOTE) - written_at_restart
    );
    server.shutdown().await.unwrap();
    // The run's keys are gone with it.
    assert_eq!(redis_keys(&redis.url, "kvlab:").await, Vec::<String>::new());
}

/// Whether requests are running or waiting in the engine.
async fn engine_busy(base: &str) -> bool {
    let m = metrics(base).await;
    metric(&m, "vllm:num_requests_running", "") + metric(&m, "vllm:num_requests_waiting", "") > 0.0
}

#[tokio::test]
// The wall clock only makes the key prefix unique across test processes.
#[allow(clippy::disallowed_methods)]
async fn runs_sharing_one_redis_keep_to_their_own_keys() {
    let url = redis_url();
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let run = |name: &str| {
        let mut cfg = fast(EmulatorConfig::for_tier(TierPreset::Redis { url: url.clone() }));
        cfg.run_id = Some(format!("{name}-{unique}"));
        cfg
    };
    let (a, b) = (run("a"), run("b"));
    let prefix = |cfg: &EmulatorConfig| format!("kvlab:{}:", cfg.run_id.as_deref().unwrap());
    let sa = start(&a).await;
    let sb = start(&b).await;
    let base_a = format!("http://{}", sa.local_addr());
    let base_b = format!("http://{}", sb.local_addr());
    // The same prompts on both: A first, then B finds nothing of A's in Redis.
    let cached_a = rounds(&base_a, 3).await;
    wait_metrics(&base_a, "A's stores", |m| metric(m, WRITTEN, REMOTE) >= 24.0 * 524_288.0).await;
    let cached_b = rounds(&base_b, 3).await;
    // B's first round finds nothing: A's blocks are not B's.
    assert_eq!((&cached_a[..3], &cached_b[..3]), (&[0, 0, 0][..], &[0, 0, 0][..]));
    wait_metrics(&base_b, "B's stores", |m| metric(m, WRITTEN, REMOTE) >= 24.0 * 524_288.0).await;
    assert_eq!(redis_keys(&url, &prefix(&a)).await.len(), 24);
    assert_eq!(redis_keys(&url, &prefix(&b)).await.len(), 24);
    // A stops: its keys go, B's stay and still serve B.
    sa.shutdown().await.unwrap();
    assert_eq!(redis_keys(&url, &prefix(&a)).await, Vec::<String>::new());
    assert_eq!(redis_keys(&url, &prefix(&b)).await.len(), 24);
    let (_, usage) = complete(&base_b, &doc_prompt(1, 2048, 77), 8).await;
    assert!(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() >= 2048, "{usage}");
    let m = metrics(&base_b).await;
    assert_eq!(metric(&m, "kvlab_tier_errors_total", REMOTE), 0.0);
    sb.shutdown().await.unwrap();
    assert_eq!(redis_keys(&url, &prefix(&b)).await, Vec::<String>::new());
}
