//! End to end on the emulated engine: `cargo xtask bench --tier T --num-requests 20` through the
//! lab API. The redis tier needs a real redis-server (`KVLAB_REDIS_URL`, exported by
//! `cargo xtask ci`).

use std::path::{Path, PathBuf};

use engines::EngineKind;
use lab::error::RunError;
use lab::run::{bench, bench_until, BenchOptions};
use schema::config::Tier;

mod common;

use common::{assert_no_secret, files, workspace};

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
    assert_no_secret(ws.path());
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

/// `cargo xtask bench --tier baseline,cpu,disk` (the main command's workload, on the emulated
/// engine): the same requests on each tier, one root, one report; the offload tiers serve the
/// prefixes the GPU evicted and start requests sooner than the baseline, beyond noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_compared_in_one_command_show_offload_at_work() {
    let ws = workspace();
    let mut opts = BenchOptions::new(ws.path(), Tier::Baseline);
    opts.tiers = vec![Tier::Baseline, Tier::Cpu, Tier::Disk];
    opts.engine = EngineKind::Emulated;
    opts.progress = false;
    opts.ready_timeout = std::time::Duration::from_secs(30);
    let reports = bench(&opts).await.unwrap();
    assert_eq!(reports.len(), 3);
    let root = reports[0].dir.parent().unwrap().to_path_buf();
    assert!(reports.iter().all(|r| r.dir.parent() == Some(root.as_path())), "one result root");
    let index = json(&root.join("index.json"));
    let tiers: Vec<&str> =
        index["points"].as_array().unwrap().iter().map(|p| p["tier"].as_str().unwrap()).collect();
    assert_eq!(tiers, ["baseline", "cpu", "disk"]);

    // The same requests on each tier.
    let prompts = |dir: &Path| -> Vec<(u64, Option<u32>)> {
        let mut v: Vec<_> = report::read_records(&dir.join("requests.jsonl"))
            .unwrap()
            .iter()
            .map(|r| (r.id, r.prompt_tokens))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(prompts(&reports[0].dir), prompts(&reports[1].dir));
    assert_eq!(prompts(&reports[0].dir), prompts(&reports[2].dir));

    // Hits by tier, in summary.json: the offload tiers served what the GPU cache had evicted.
    for r in &reports {
        let on_disk = json(&r.dir.join("summary.json"));
        let sources = r.summary.prompt_tokens_by_source.clone().expect("the emulator counts token sources");
        assert_eq!(on_disk["prompt_tokens_by_source"], serde_json::json!(sources));
        let total: u64 = sources.values().sum();
        assert_eq!(total, r.summary.total_input_tokens, "{:?}: every prompt token has a source", r.dir);
        assert!(sources["gpu"] > 0, "the GPU cache serves repeats too: {sources:?}");
        let tier = r.summary.tier.as_str();
        if tier == "baseline" {
            assert_eq!(sources.len(), 2, "baseline: GPU cache and computed only: {sources:?}");
        } else {
            assert!(
                sources[tier] * 10 > total,
                "{tier}: the tier served under 10% of the prompt tokens: {sources:?}"
            );
        }
    }

    // The report over the root leads with the answer.
    let md = std::fs::read_to_string(root.join("report.md")).unwrap();
    let answer = md.find("## Does offloading pay?").expect("the answer section");
    assert!(answer < md.find("## Runs").unwrap(), "the answer comes first:\n{md}");
    assert!(root.join("plots/tiers.svg").is_file());
    let runs: Vec<report::RunData> = reports.iter().map(|r| report::RunData::load(&r.dir).unwrap()).collect();
    let rows = report::answer::tier_rows(&runs);
    for row in &rows[1..] {
        let (ratio, ci) = row.vs_baseline.unwrap_or_else(|| panic!("{}: no baseline to compare", row.tier));
        let (_, hi) = ci.expect("an interval of the difference");
        assert!(
            ratio < 0.9 && hi < 0.0,
            "{}: median TTFT {ratio:.2}x of baseline, difference interval up to {hi:+.1} ms:\n{md}",
            row.tier
        );
        assert!(md.contains(&format!("offloading to {} pays", row.tier)), "{md}");
    }
}

/// `SET` calls the Redis server has executed, and its number of keys.
async fn redis_sets_and_keys(url: &str) -> (u64, u64) {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("KVLAB_REDIS_URL={url}: {e}"));
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("no redis-server answers at KVLAB_REDIS_URL={url}: {e}"));
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.unwrap();
    let sets = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0);
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    (sets, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tier_against_redis_server() {
    let url = std::env::var("KVLAB_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "KVLAB_REDIS_URL is not set: this test needs a running redis-server on 127.0.0.1 \
             (`cargo xtask ci` starts one and exports it)"
        )
    });
    let (sets_before, _) = redis_sets_and_keys(&url).await;
    let dir = run_tier(Tier::Redis, Some(url.clone())).await;
    let (sets_after, _) = redis_sets_and_keys(&url).await;
    assert!(
        sets_after > sets_before,
        "the redis tier stored nothing in Redis ({sets_before} SETs before and after)"
    );
    // The run's keys were under its id, and went with it.
    let run_toml = std::fs::read_to_string(dir.join("run.toml")).unwrap();
    let run_id = run_toml
        .lines()
        .find_map(|l| l.strip_prefix("run_id = \""))
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no run_id in run.toml:\n{run_toml}"));
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let (_, left): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(format!("kvlab:{run_id}:*"))
        .arg("COUNT")
        .arg(1_000_000)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(left.is_empty(), "{} keys of run {run_id} remain in Redis after it stopped", left.len());
    let _ = std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());
}

/// Ctrl-C in the middle of a run (a shutdown future here): sending stops, the engine is shut
/// down, and the directory keeps every finished request with a summary that counts exactly them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_keeps_every_finished_request() {
    let ws = workspace();
    let out = ws.path().join("results");
    let mut opts = BenchOptions::new(ws.path(), Tier::Cpu);
    opts.engine = EngineKind::Emulated;
    opts.num_requests = Some(400);
    opts.request_rate = Some(20.0);
    opts.progress = false;
    opts.out = Some(out.clone());
    opts.ready_timeout = std::time::Duration::from_secs(30);
    let start = std::time::Instant::now();
    let err = bench_until(&opts, common::after_finished(out, 5)).await.expect_err("the run was interrupted");
    assert!(start.elapsed().as_secs() < 15, "the interrupted run took {:?}", start.elapsed());
    let RunError::Interrupted(dir) = &err else { panic!("expected an interruption, got: {err}") };
    assert!(err.to_string().contains("partial results are kept"), "{err}");
    let n = common::assert_partial_accounting(dir);
    assert!((5..400).contains(&n), "{n} requests recorded");
    // Open loop without dependencies sends in id order: every request sent has its record, the
    // ones in flight at the stop included, so the ids are 0..n without a gap.
    let records = common::records(dir);
    let mut ids: Vec<u64> = records.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..n as u64).collect::<Vec<_>>(), "a request sent before the stop has no record");
    let interrupted =
        records.iter().filter(|r| r.error.as_ref().is_some_and(|e| e.class() == "interrupted")).count();
    assert!(interrupted > 0, "the requests in flight at the stop are recorded as interrupted");
    // The emulator was shut down: its port no longer accepts connections.
    let log = std::fs::read_to_string(dir.join("engine.log")).unwrap();
    let url = log.split("listening on http://").nth(1).and_then(|s| s.split_whitespace().next()).unwrap();
    assert!(std::net::TcpStream::connect(url).is_err(), "the emulator still listens on {url}");
    assert_no_secret(ws.path());
}

/// The redis tier refuses to start without a Redis that answers, and never shows its password.
#[tokio::test]
async fn redis_tier_without_redis_is_refused() {
    let ws = workspace();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut opts = BenchOptions::new(ws.path(), Tier::Redis);
    opts.engine = EngineKind::Emulated;
    opts.progress = false;
    opts.redis_url = Some(format!("redis://kvlab:s3cretPw@127.0.0.1:{port}/0"));
    let err = bench(&opts).await.expect_err("no Redis listens there").to_string();
    assert!(
        err.starts_with(&format!(
            "engine `emulated` failed: the redis tier needs a Redis server, and none answers at \
             redis://127.0.0.1:{port}/0 ("
        )),
        "{err}"
    );
    assert!(err.contains("pass --redis-url / KVLAB_REDIS_URL"), "{err}");
    assert!(!err.contains("s3cretPw"), "{err}");
    for f in common::files(ws.path()) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(!text.contains("s3cretPw"), "the Redis password is in {}", f.display());
    }
}

/// An experiment with `conversation_aware_eviction = true` runs on the emulated engine, whose
/// offload tier then evicts with kvcache's conversation-aware policy; an engine that cannot do
/// it refuses the point with a message naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_aware_eviction_runs_on_the_emulated_engine() {
    let ws = workspace();
    let exp = ws.path().join("conversation.toml");
    std::fs::write(
        &exp,
        "name = \"conversation\"\n\
         [defaults]\nnum_prompts = 8\nprompt_len = 512\ngen_len = 4\nseed = 0\n\
         conversation_aware_eviction = true\n\
         [matrix]\nmodels = [\"llama-3-8b\"]\ntiers = [\"cpu\"]\nworkloads = [\"multi-turn\"]\n\
         request_rates = [20.0]\n",
    )
    .unwrap();
    let mut opts = BenchOptions::new(ws.path(), Tier::Cpu);
    opts.engine = EngineKind::Emulated;
    opts.experiment = Some(exp.clone());
    opts.progress = false;
    opts.ready_timeout = std::time::Duration::from_secs(30);
    let reports = bench(&opts).await.unwrap();
    let r = &reports[0];
    assert!(r.emulated);
    assert_eq!((r.summary.completed, r.summary.failed), (8, 0));
    let run_toml = std::fs::read_to_string(r.dir.join("run.toml")).unwrap();
    assert!(run_toml.contains("conversation_aware_eviction = true"), "{run_toml}");
    let log = std::fs::read_to_string(r.dir.join("engine.log")).unwrap();
    assert!(log.contains("\"policy\":\"conversation-aware\""), "{log}");
    // Turns 2 to 4 of each conversation find their history.
    assert!(r.summary.cached_tokens_total > 0);

    let mut opts = BenchOptions::new(ws.path(), Tier::Cpu);
    opts.engine = EngineKind::External;
    opts.url = Some("http://127.0.0.1:9".to_owned());
    opts.experiment = Some(exp);
    opts.progress = false;
    let err = bench(&opts).await.expect_err("an external engine cannot evict by conversation");
    let index = common::files(ws.path())
        .into_iter()
        .filter(|f| f.ends_with("index.json"))
        .map(|f| std::fs::read_to_string(f).unwrap())
        .find(|t| t.contains("\"error\""))
        .unwrap_or_else(|| panic!("no index.json records the refused point ({err})"));
    assert!(index.contains("conversation_aware_eviction = true: engine `external`"), "{index}");
}

/// An experiment file in the workspace; its points run on the emulated engine.
fn experiment_options(ws: &Path, name: &str, toml: &str) -> BenchOptions {
    let exp = ws.join(format!("{name}.toml"));
    std::fs::write(&exp, toml).unwrap();
    let mut opts = BenchOptions::new(ws, Tier::Cpu);
    opts.engine = EngineKind::Emulated;
    opts.experiment = Some(exp);
    opts.progress = false;
    opts.ready_timeout = std::time::Duration::from_secs(30);
    opts
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// `time_limit` is a deadline: requests still streaming when it passes end then, recorded as
/// interrupted (as on a stop), and the summary says the run hit its time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_ends_requests_still_streaming() {
    let ws = workspace();
    // Four thousand decode steps each: far longer than the limit.
    let opts = experiment_options(
        ws.path(),
        "slow",
        "name = \"slow\"\n[defaults]\nnum_prompts = 4\nprompt_len = 128\ngen_len = 4000\n\
         time_limit = \"1.5s\"\n[matrix]\nmodels = [\"llama-3-8b\"]\ntiers = [\"cpu\"]\n\
         workloads = [\"random\"]\n",
    );
    let start = std::time::Instant::now();
    let reports = bench(&opts).await.expect("a run that hits its time limit succeeds");
    let took = start.elapsed();
    let r = &reports[0];
    assert!(r.time_limit_reached);
    assert!(took < std::time::Duration::from_secs(15), "the run went on past its time limit: {took:?}");
    let records = common::records(&r.dir);
    assert_eq!(records.len(), 4, "every request sent has its record");
    for rec in &records {
        let class = rec.error.as_ref().map(|e| e.class());
        assert_eq!(class, Some("interrupted"), "cut at the time limit: {rec:?}");
        assert!(rec.end <= 1.5 + 1.0, "recorded when the limit passed: {rec:?}");
        assert!(rec.output_tokens > 0, "the tokens streamed so far are kept: {rec:?}");
    }
    let summary = json(&r.dir.join("summary.json"));
    assert_eq!(summary["time_limit_reached"], true, "{summary}");
    assert_eq!(summary["time_limit_s"], 1.5, "{summary}");
    assert_eq!(summary["failed"], 4, "{summary}");
    // The load generator's own keys stay in the summary made over the records.
    assert!(summary["client_threads"].as_u64().is_some(), "{summary}");
    assert_eq!(json(&r.dir.join("env.json"))["time_limit_reached"], true);
    assert_no_secret(ws.path());
}

/// The engine's counters in `summary.json` (prompt tokens by source) count the measured requests
/// only: the engine is scraped between the warm-up requests, which all end first, and the
/// measured ones. `summary.json` is written once, whole: with the load generator's keys, the
/// counters' origin and no temporary file left beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_requests_stay_out_of_the_engine_counters() {
    let ws = workspace();
    // The same eight prompts twice: the first round (warm-up) computes them, the second finds
    // them in the GPU cache; all sent at once, so without a phase the rounds would overlap.
    let opts = experiment_options(
        ws.path(),
        "warm",
        "name = \"warm\"\n[defaults]\nnum_prompts = 16\nwarmup = 8\nprompt_len = 256\ngen_len = 4\n\
         [matrix]\nmodels = [\"llama-3-8b\"]\ntiers = [\"cpu\"]\nworkloads = [\"repeat\"]\n\
         request_rates = [inf]\n",
    );
    let reports = bench(&opts).await.expect("run");
    let r = &reports[0];
    let records = common::records(&r.dir);
    assert_eq!(records.iter().filter(|rec| rec.warmup).count(), 8);
    let measured: Vec<_> = records.iter().filter(|rec| !rec.warmup).collect();
    assert_eq!(measured.len(), 8);
    assert!(measured.iter().all(|rec| rec.error.is_none()), "{measured:?}");
    let measured_prompt_tokens: u64 =
        measured.iter().map(|rec| u64::from(rec.prompt_tokens.unwrap_or(0))).sum();
    assert_eq!(r.summary.total_input_tokens, measured_prompt_tokens);

    let sources = r.summary.prompt_tokens_by_source.clone().expect("the emulator counts token sources");
    let counted: u64 = sources.values().sum();
    assert_eq!(counted, measured_prompt_tokens, "the warm-up's tokens are not counted: {sources:?}");
    // The second round finds the first round's prompts cached (in the GPU cache, a little in
    // the cpu tier): the records' cached tokens are what was not computed.
    let cached: u64 = measured.iter().map(|rec| u64::from(rec.cached_tokens.unwrap_or(0))).sum();
    assert_eq!(counted - sources["computed"], cached, "{sources:?}");
    assert!(sources["gpu"] * 2 > counted, "{sources:?}");

    let summary = json(&r.dir.join("summary.json"));
    assert_eq!(summary["prompt_tokens_by_source"], serde_json::json!(sources));
    let from = summary["engine_counters_from_s"].as_f64().expect("the counters' origin");
    let warm_end = records.iter().filter(|rec| rec.warmup).map(|rec| rec.end).fold(0.0, f64::max);
    let first_sent = measured.iter().map(|rec| rec.sent).fold(f64::MAX, f64::min);
    assert!(warm_end <= from && from <= first_sent, "{warm_end} {from} {first_sent}");
    assert!(summary["connection_warmup"]["connections"].as_u64().is_some(), "{summary}");
    assert!(summary["client_threads"].as_u64().is_some(), "{summary}");
    assert_eq!(summary["warmup_excluded"], 8);
    let names: Vec<String> = std::fs::read_dir(&r.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp") && !n.starts_with('.')), "{names:?}");
}

/// A local experiment of several points: one result directory per point and `index.json`
/// naming each. Its baseline cache sizes size the emulator's GPU cache (in KV blocks of the
/// model, 2 MiB for llama-3-8b), and `mock_decoding` makes its requests prefill only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_points_cache_sizes_and_mock_decoding() {
    let ws = workspace();
    let opts = experiment_options(
        ws.path(),
        "matrix",
        "name = \"matrix\"\n[defaults]\nnum_prompts = 4\nprompt_len = 256\ngen_len = 8\nseed = 1\n\
         [matrix]\nmodels = [\"llama-3-8b\"]\ntiers = [\"baseline\"]\n\
         workloads = [\"random\", \"shared-prefix\"]\nrequest_rates = [50.0]\n\
         cache_sizes = [\"1GiB\", \"3GiB\"]\n\
         [workload_overrides.random]\nmock_decoding = true\n",
    );
    let reports = bench(&opts).await.unwrap();
    assert_eq!(reports.len(), 4);
    let root = reports[0].dir.parent().unwrap().to_owned();
    let index = json(&root.join("index.json"));
    let points = index["points"].as_array().unwrap();
    assert_eq!(points.len(), 4, "{index}");
    let mut seen = Vec::new();
    for (entry, r) in points.iter().zip(&reports) {
        assert_eq!(entry["dir"], r.dir.file_name().unwrap().to_str().unwrap(), "{entry}");
        assert_eq!((entry["completed"].as_u64(), entry["failed"].as_u64()), (Some(4), Some(0)), "{entry}");
        let run_toml: toml::Value = std::fs::read_to_string(r.dir.join("run.toml")).unwrap().parse().unwrap();
        let blocks = run_toml["num_gpu_blocks"].as_integer().unwrap();
        let log = std::fs::read_to_string(r.dir.join("engine.log")).unwrap();
        assert!(log.contains(&format!("\"num_gpu_blocks\":{blocks}")), "the emulator got {blocks}:\n{log}");
        let output_tokens: Vec<u32> = common::records(&r.dir).iter().map(|rec| rec.output_tokens).collect();
        let mock = entry["workload"] == "random";
        assert_eq!(run_toml["mock_decoding"].as_bool(), Some(mock));
        assert_eq!(output_tokens, vec![if mock { 1 } else { 8 }; 4], "{}", entry["workload"]);
        seen.push((
            entry["workload"].as_str().unwrap().to_owned(),
            entry["cache_size"].as_u64().unwrap(),
            blocks,
        ));
    }
    let gib = 1u64 << 30;
    assert_eq!(
        seen,
        [
            ("random".to_owned(), gib, 512),
            ("random".to_owned(), 3 * gib, 1536),
            ("shared-prefix".to_owned(), gib, 512),
            ("shared-prefix".to_owned(), 3 * gib, 1536),
        ]
    );
    assert_no_secret(ws.path());
}

/// `value` with every leaf replaced by `…`; the host-dependent `gpu` and `samplers` whole.
fn redacted_keys(value: &serde_json::Value, key: &str) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) if !matches!(key, "gpu" | "samplers") => {
            map.iter().map(|(k, v)| (k.clone(), redacted_keys(v, k))).collect()
        }
        _ => serde_json::json!("…"),
    }
}

/// env.json of an emulated run: its keys (snapshot), the revision of the workspace the run
/// belongs to (not of the directory the lab runs in), and the engine's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_json_records_the_workspace_revision_and_the_engine_version() {
    let ws = workspace();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(ws.path())
            .args(["-c", "user.name=kvlab", "-c", "user.email=kvlab@localhost"])
            .args(args)
            .output()
            .expect("this test needs git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "--quiet"]);
    git(&["commit", "--quiet", "--allow-empty", "-m", "workspace"]);
    let head = git(&["rev-parse", "HEAD"]);
    let mut opts = BenchOptions::new(ws.path(), Tier::Cpu);
    opts.engine = EngineKind::Emulated;
    opts.num_requests = Some(2);
    opts.prompt_len = Some(64);
    opts.gen_len = Some(2);
    opts.progress = false;
    let reports = bench(&opts).await.unwrap();
    let env = json(&reports[0].dir.join("env.json"));
    assert_eq!(env["git_revision"], head.as_str(), "{env}");
    assert_eq!(
        env["engine_version"],
        serde_json::json!({ "name": "kvlab-emulator", "version": env!("CARGO_PKG_VERSION"), "emulated": true })
    );
    insta::assert_json_snapshot!(redacted_keys(&env, ""));
    assert_no_secret(ws.path());
}

/// What profiling plugs into a run, seen from the lab: the hook begins once the engine answers
/// and before any request is sent, and ends after the last request's record is written, with the
/// run's engine and result directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_hook_brackets_the_workload() {
    use engines::{CommandWrapper, HookFuture, HookSpan, Instruments, LaunchSpec, RunHook};
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<String>>>;
    fn records(spec: &LaunchSpec) -> usize {
        std::fs::read_to_string(spec.run_dir.join("requests.jsonl")).map_or(0, |t| t.lines().count())
    }
    #[derive(Debug)]
    struct Recording(Log);
    struct Span(Log);
    impl RunHook for Recording {
        fn begin<'a>(&'a self, spec: &'a LaunchSpec, base_url: &'a str) -> HookFuture<'a, Box<dyn HookSpan>> {
            Box::pin(async move {
                let answers =
                    reqwest::get(format!("{base_url}/v1/models")).await.is_ok_and(|r| r.status() == 200);
                let line =
                    format!("begin {}: engine answers {answers}, {} records", spec.kind(), records(spec));
                self.0.lock().unwrap().push(line);
                Ok(Box::new(Span(self.0.clone())) as Box<dyn HookSpan>)
            })
        }
    }
    impl HookSpan for Span {
        fn end<'a>(self: Box<Self>, spec: &'a LaunchSpec) -> HookFuture<'a, ()> {
            Box::pin(async move {
                self.0.lock().unwrap().push(format!("end: {} records", records(spec)));
                Ok(())
            })
        }
    }
    #[derive(Debug)]
    struct Unwrapped;
    impl CommandWrapper for Unwrapped {
        fn prepare(&self, _: &Path) -> engines::error::Result<()> {
            Ok(())
        }
        fn process_args(&self) -> Vec<String> {
            Vec::new()
        }
        fn container_args(&self, args: Vec<String>, _: &str, _: &Path) -> Vec<String> {
            args
        }
    }

    let ws = workspace();
    let log = Log::default();
    let mut opts = BenchOptions::new(ws.path(), Tier::Cpu);
    opts.engine = EngineKind::Emulated;
    opts.num_requests = Some(8);
    opts.request_rate = Some(50.0);
    opts.progress = false;
    opts.instruments =
        Some(Instruments { wrapper: Arc::new(Unwrapped), hook: Arc::new(Recording(log.clone())) });
    let reports = bench(&opts).await.unwrap();
    assert_eq!(reports[0].summary.completed, 8);
    assert_eq!(*log.lock().unwrap(), ["begin emulated: engine answers true, 0 records", "end: 8 records"]);
}
