//! The real-time server over loopback: the OpenAI API, `/metrics`, and every tier end to end.

mod common;

use std::time::{Duration, Instant};

use common::*;
use emulator::{EmulatorConfig, TierPreset};
use serde_json::{json, Value};
use testkit::services::redis_url;
use workload::{Limits, Mode, Plan, Prompt, Request, RequestMeta};

async fn post(base: &str, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, String) {
    let res = reqwest::Client::new().post(format!("{base}{path}")).json(&body).send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

fn events(sse: &str) -> Vec<Value> {
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
    sse.split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn openai_api() {
    let server = start(&fast(EmulatorConfig::default())).await;
    let base = format!("http://{}", server.local_addr());
    let model = "llama-3-8b";

    let res = reqwest::get(format!("{base}/v1/models")).await.unwrap();
    assert_eq!(res.headers()["x-kvlab-engine"], "emulated");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["data"][0]["id"], model);
    assert_eq!(v["data"][0]["owned_by"], "kvlab-emulated");
    assert_eq!(v["data"][0]["root"], "meta-llama/Meta-Llama-3-8B-Instruct");
    assert_eq!(v["data"][0]["max_model_len"], 4096);
    assert_eq!(reqwest::get(format!("{base}/health")).await.unwrap().status(), 200);

    // Non-streaming, token ids.
    let (status, headers, body) = post(
        &base,
        "/v1/completions",
        json!({"model": model, "prompt": [1, 2, 3], "max_tokens": 5, "ignore_eos": true}),
    )
    .await;
    assert_eq!((status, &headers["x-kvlab-engine"]), (200, &"emulated".parse().unwrap()));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["text"], "abcde");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );

    // Streaming text (1 byte = 1 token) with usage; min_tokens accepted.
    let (status, headers, body) = post(
        &base,
        "/v1/completions",
        json!({"prompt": "hello world", "max_tokens": 30, "min_tokens": 30, "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let ev = events(&body);
    let text: String = ev.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, "abcdefghijklmnopqrstuvwxyzabcd");
    let last = ev.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 11);
    assert_eq!(last["usage"]["completion_tokens"], 30);
    assert_eq!(ev[ev.len() - 2]["choices"][0]["finish_reason"], "length");

    // Chat: role-only first chunk, then content deltas; no usage unless asked.
    let (status, _, body) = post(
        &base,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true}),
    )
    .await;
    assert_eq!(status, 200);
    let ev = events(&body);
    assert_eq!(ev[0]["object"], "chat.completion.chunk");
    assert_eq!(ev[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let content: String =
        ev[1..].iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "abcd");
    assert!(ev.iter().all(|e| e.get("usage").is_none()));

    // Chat, non-streaming.
    let (_, _, body) = post(
        &base,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3}),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "abc");
    assert_eq!(v["usage"]["prompt_tokens"], 2);

    // Errors: too long, unknown model, bad body.
    let (status, _, body) =
        post(&base, "/v1/completions", json!({"prompt": vec![1; 4000], "max_tokens": 100})).await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("maximum context length is 4096"), "{body}");
    let (status, _, body) = post(&base, "/v1/completions", json!({"model": "gpt-x", "prompt": "a"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = post(&base, "/v1/completions", json!({"prompt": {"x": 1}})).await;
    assert_eq!(status, 400);
    assert!(body.contains("prompt"), "{body}");

    // Tokenize.
    let (_, _, body) = post(&base, "/tokenize", json!({"prompt": "hey"})).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tokens"], json!([104, 101, 121]));
    assert_eq!(v["count"], 3);

    // Metrics: labelled emulated, vLLM names with model_name.
    let m = metrics(&base).await;
    let l = format!("model_name=\"{model}\"");
    assert_eq!(metric(&m, "kvlab_emulated", &l), 1.0);
    assert_eq!(metric(&m, "vllm:request_success_total", &l), 4.0);
    assert_eq!(metric(&m, "vllm:generation_tokens_total", &l), 42.0);
    assert_eq!(metric(&m, "vllm:time_to_first_token_seconds_count", &l), 4.0);
    assert_eq!(metric(&m, "vllm:num_requests_running", &l), 0.0);
    for name in [
        "vllm:prefix_cache_queries_total",
        "vllm:external_prefix_cache_hits_total",
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_waiting",
        "vllm:request_queue_time_seconds_count",
        "vllm:request_prefill_time_seconds_count",
        "vllm:request_decode_time_seconds_count",
        "lmcache:num_hit_tokens",
        "lmcache:num_requested_tokens",
        "lmcache:num_stored_tokens",
    ] {
        metric(&m, name, &l);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_long_stream_is_paced_by_the_cost_model() {
    // At real speed, 50 decode steps of an 8B model on an H100 take about 0.6 s (12 ms each).
    let mut cfg = EmulatorConfig::default();
    cfg.scheduler.max_model_len = 4096;
    cfg.scheduler.num_gpu_blocks = Some(300);
    let server = start(&cfg).await;
    let base = format!("http://{}", server.local_addr());
    let t = Instant::now();
    let (text, usage) = complete(&base, &[7; 100], 50).await;
    let took = t.elapsed();
    assert_eq!((text.len(), &usage["completion_tokens"]), (50, &json!(50)));
    assert!((Duration::from_millis(350)..Duration::from_secs(3)).contains(&took), "{took:?}");
    server.shutdown().await.unwrap();
}

/// Requests `from..to` of three 2048-token documents asked about in turn, one at a time: the GPU
/// (4800 tokens) cannot keep them all, so from the second round on they come from the offload
/// tier.
fn reuse_plan(from: u32, to: u32) -> Plan {
    let requests = (from..to)
        .map(|i| {
            let tokens = doc_prompt(i % 3, 2048, i);
            Request {
                id: u64::from(i - from),
                prompt_len: tokens.len() as u32,
                prompt: Prompt::Tokens(tokens),
                max_tokens: 8,
                send_at: None,
                depends_on: None,
                meta: RequestMeta::default(),
            }
        })
        .collect();
    Plan { requests, mode: Mode::Closed { concurrency: 1 }, limits: Limits::default() }
}

async fn run_tier(tier: &str, cfg: EmulatorConfig) -> String {
    let server = start(&fast(cfg)).await;
    let base = format!("http://{}", server.local_addr());
    let out = tempfile::tempdir().unwrap();
    let mut sink = loadgen::ResultWriter::in_dir(out.path()).unwrap();
    let mut lg = loadgen::LoadgenConfig::new(base.clone());
    lg.progress = false;
    lg.summary.tier = tier.to_owned();
    let mut records = Vec::new();
    // The first round, then (once the tier's background writes have landed: a chunk whose write
    // has not is a miss, and a disk tier syncs every chunk file) the three others.
    for (from, to) in [(0, 3), (3, 12)] {
        if from > 0 && tier != "baseline" {
            let label =
                if tier == "redis" { "tier=\"remote\"".to_owned() } else { format!("tier=\"{tier}\"") };
            wait_metrics(&base, "the first round's stores", |m| {
                metric(m, "kvlab_tier_written_bytes_total", &label) >= 24.0 * 524_288.0
            })
            .await;
        }
        let outcome = loadgen::run(&reuse_plan(from, to), &lg, &mut sink, Instant::now()).await.unwrap();
        assert!(outcome.is_success(), "{tier}: {:?}", outcome.failure_message());
        assert_eq!(outcome.summary.completed, u64::from(to - from), "{tier}");
        records.extend(outcome.records);
    }
    assert!(records.iter().all(|r| r.output_tokens == 8));
    // First round: nothing cached; later rounds: the documents' 2048 tokens are.
    let cached: Vec<u32> = records.iter().map(|r| r.cached_tokens.unwrap()).collect();
    assert_eq!(&cached[..3], [0, 0, 0], "{tier}");
    if tier != "baseline" {
        assert!(cached[3..].iter().all(|&c| c >= 2048), "{tier}: {cached:?}");
    }
    let m = metrics(&base).await;
    server.shutdown().await.unwrap();
    m
}

#[tokio::test]
async fn every_tier_end_to_end_with_the_load_generator() {
    let dir = tempfile::tempdir().unwrap();
    let disk_dir = dir.path().join("kv");
    let redis = redis_url();
    let m = run_tier("baseline", EmulatorConfig::for_tier(TierPreset::Baseline)).await;
    assert_eq!(metric(&m, "vllm:external_prefix_cache_hits_total", ""), 0.0);
    for (tier, preset, label) in [
        ("cpu", TierPreset::Cpu, "tier=\"cpu\""),
        ("disk", TierPreset::Disk { dir: disk_dir.clone() }, "tier=\"disk\""),
        ("redis", TierPreset::Redis { url: redis.clone() }, "tier=\"remote\""),
    ] {
        let m = run_tier(tier, EmulatorConfig::for_tier(preset)).await;
        // Rounds 2 to 4 find each document in the GPU or, for what the GPU lost, the tier.
        let gpu = metric(&m, "vllm:prefix_cache_hits_total", "");
        let ext = metric(&m, "vllm:external_prefix_cache_hits_total", "");
        assert_eq!(gpu + ext, 9.0 * 2048.0, "{tier}\n{m}");
        assert!(ext >= 3.0 * 2048.0, "{tier}\n{m}");
        assert!(metric(&m, "kvlab_tier_read_bytes_total", label) > 0.0, "{tier}");
        assert!(metric(&m, "kvlab_tier_written_bytes_total", label) > 0.0, "{tier}");
        assert_eq!(metric(&m, "kvlab_tier_errors_total", label), 0.0, "{tier}");
    }
    // The disk tier wrote real chunk files: 3 documents x 8 chunks of 256 tokens.
    let files = std::fs::read_dir(&disk_dir).unwrap().count();
    assert_eq!(files, 24);
    let size = std::fs::metadata(std::fs::read_dir(&disk_dir).unwrap().next().unwrap().unwrap().path())
        .unwrap()
        .len();
    // 256 tokens x 128 KiB per token / 64.
    assert_eq!(size, 256 * 131_072 / 64);
}

/// One completion of `prompt` as `user` (none: no `user` field); returns its cached tokens.
async fn cached_as(base: &str, prompt: &[u32], user: Option<&str>) -> u64 {
    let mut body = json!({"prompt": prompt, "max_tokens": 2});
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    let (status, _, text) = post(base, "/v1/completions", body).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn the_user_field_names_the_conversation_for_conversation_aware_eviction() {
    // A CPU tier of 32 chunks and no GPU prefix cache: every hit is an offload hit. Between two
    // turns of `alice`, 20 one-off requests without `user` store 80 chunks.
    let run = |policy: kvcache::PolicyKind| async move {
        let mut cfg = EmulatorConfig::for_tier(TierPreset::Cpu);
        cfg.time_scale = 0.1;
        // Small stored chunks: the bytes do not matter here.
        cfg.byte_scale = 1.0 / 4096.0;
        cfg.scheduler.max_model_len = 4096;
        cfg.scheduler.num_gpu_blocks = Some(300);
        cfg.scheduler.enable_prefix_caching = false;
        cfg.offload.cpu_bytes = 32 * 33_554_432;
        cfg.offload.policy = policy;
        let server = start(&cfg).await;
        let base = format!("http://{}", server.local_addr());
        let alice = |turn: u32| (0..1024 * turn).map(|x| 7_000_000 + x).collect::<Vec<u32>>();
        let mut cached = Vec::new();
        for turn in 1..=3u32 {
            cached.push(cached_as(&base, &alice(turn), Some("alice")).await);
            for i in 0..20u32 {
                let noise: Vec<u32> =
                    (0..1024).map(|x| 100_000_000 + (turn * 100 + i) * 10_000 + x).collect();
                assert_eq!(cached_as(&base, &noise, None).await, 0);
            }
        }
        server.shutdown().await.unwrap();
        cached
    };
    // LRU: the one-off requests flush alice's history; conversation-aware keeps it.
    assert_eq!(run(kvcache::PolicyKind::Lru).await, [0, 0, 0]);
    assert_eq!(run(kvcache::PolicyKind::ConversationAware).await, [0, 1024, 2048]);
}
