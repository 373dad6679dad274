//! Tier faults: requests are served by recomputation, errors are counted, the engine goes on.

mod common;

use common::*;
use emulator::{EmulatorConfig, TierPreset};

const DISK: &str = "tier=\"disk\"";
const REMOTE: &str = "tier=\"remote\"";

/// Documents 0..n then document 0 again (its head still on the GPU, its tail only in the tier).
async fn rounds(base: &str, docs: u32) -> Vec<u64> {
    let mut cached = Vec::new();
    for (i, d) in (0..docs).chain([0]).enumerate() {
        let (text, usage) = complete(base, &doc_prompt(d, 2048, i as u32), 8).await;
        assert_eq!(text, "abcdefgh");
        cached.push(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap());
    }
    cached
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
    let before = metric(&metrics(&base).await, "kvlab_tier_errors_total", DISK);
    assert_eq!(before, 0.0);
    let (text, usage) = complete(&base, &doc_prompt(1, 2048, 99), 8).await;
    assert_eq!(text, "abcdefgh");
    // The corrupt chunk was recomputed, not loaded.
    assert!(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() < 2048);
    // One failed read, then the rewrite of that chunk hits ENOSPC.
    let m =
        wait_metrics(&base, "read and write errors", |m| metric(m, "kvlab_tier_errors_total", DISK) >= 2.0)
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
    let cached = rounds(&base, 3).await;
    assert!(cached[3] >= 2048, "document 0 comes back from Redis: {cached:?}");
    wait_metrics(&base, "stores in Redis", |m| {
        metric(m, "kvlab_tier_written_bytes_total", REMOTE) >= 24.0 * 524_288.0
    })
    .await;
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
