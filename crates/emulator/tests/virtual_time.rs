//! Virtual-time runs: summaries per tier, the physical ordering of the tiers, determinism.

use std::path::PathBuf;
use std::time::Duration;

use emulator::{run_virtual, EmulatorConfig, TierPreset};
use stats::{RequestError, RequestRecord, Summary};
use workload::{Dependency, Limits, Mode, Plan, Prompt, Request, RequestMeta};

/// `groups` documents of `prefix_len` tokens, asked about round-robin (`n` requests, one every
/// `gap` seconds): each request is a document plus a 32-token question of its own. With more
/// documents than the GPU cache holds, every reuse misses the GPU and may hit an offload tier.
fn reuse_plan(prefix_len: u32, groups: u32, n: u32, gap: f64) -> Plan {
    let requests = (0..n)
        .map(|i| {
            let g = i % groups;
            let mut tokens: Vec<u32> = (0..prefix_len).map(|t| g * 1_000_000 + t).collect();
            tokens.extend((0..32).map(|t| 500_000_000 + i * 100 + t));
            Request {
                id: u64::from(i),
                prompt_len: tokens.len() as u32,
                prompt: Prompt::Tokens(tokens),
                max_tokens: 16,
                send_at: Some(Duration::from_secs_f64(f64::from(i) * gap)),
                depends_on: None,
                meta: RequestMeta { group: Some(u64::from(g)), ..RequestMeta::default() },
            }
        })
        .collect();
    Plan { requests, mode: Mode::Open, limits: Limits::default() }
}

/// A small GPU: 1100 blocks of 16 tokens (17.6k tokens), so a few 12k-token documents evict
/// each other.
fn config(tier: &str) -> EmulatorConfig {
    let preset = match tier {
        "baseline" => TierPreset::Baseline,
        "cpu" => TierPreset::Cpu,
        "disk" => TierPreset::Disk { dir: PathBuf::from("unused-in-virtual-time") },
        "redis" => TierPreset::Redis { url: "redis://127.0.0.1:1".to_owned() },
        other => panic!("no tier {other}"),
    };
    emulator::scenario::small_gpu(preset)
}

fn summary(tier: &str, plan: &Plan) -> Summary {
    emulator::scenario::emulated_summary(&run_virtual(&config(tier), plan).unwrap(), tier)
}

#[test]
fn tier_summaries() {
    let plan = reuse_plan(12_288, 4, 24, 1.0);
    for tier in ["baseline", "cpu", "disk", "redis"] {
        let s = summary(tier, &plan);
        assert_eq!((s.completed, s.failed), (24, 0), "{tier}");
        insta::assert_json_snapshot!(format!("summary_{tier}"), s);
    }
}

#[test]
fn tiers_order_as_physics_says() {
    // Long prompts (cost model of an 8B model on an H100): loading a 256-token chunk (33.5 MB)
    // from host memory (~2.6 ms) beats reading it from an NVMe disk first (~7.4 ms) or from
    // Redis over 25 GbE (~13 ms), which beat recomputing it at 12k tokens of context (~19 ms).
    let plan = reuse_plan(12_288, 4, 24, 1.0);
    let ttft = |tier| summary(tier, &plan).mean_ttft_ms;
    let (base, cpu, disk, redis) = (ttft("baseline"), ttft("cpu"), ttft("disk"), ttft("redis"));
    assert!(cpu < disk, "cpu {cpu} ms should beat disk {disk} ms");
    assert!(disk < base, "disk {disk} ms should beat recompute {base} ms");
    assert!(cpu < redis, "cpu {cpu} ms should beat redis {redis} ms");
    // The first four requests see empty tiers: only reuse is faster.
    let records = run_virtual(&config("cpu"), &plan).unwrap();
    assert_eq!(records[0].cached_tokens, Some(0));
    assert_eq!(records[4].cached_tokens, Some(12_288));
}

/// The registry's cost model for the default engine (llama-3-8b on an h100).
fn cost_model() -> costmodel::CostModel {
    let r = costmodel::Registry::builtin();
    costmodel::CostModel::new(r.model("llama-3-8b").unwrap(), r.gpu("h100").unwrap(), &r.cost)
}

#[test]
fn a_request_alone_takes_what_the_cost_model_predicts() {
    // Two requests for one document, far apart: no queueing, so the emulator adds nothing to
    // the cost model's single-request TTFT (docs/fidelity.md). The second loads the document's
    // 48 full chunks from the CPU tier and computes the 32-token question.
    let plan = reuse_plan(12_288, 1, 2, 100.0);
    let records = run_virtual(&config("baseline"), &plan).unwrap();
    let cm = cost_model();
    let query = |cached_tokens, cached_from| costmodel::TtftQuery {
        prompt_tokens: 12_320,
        cached_tokens,
        cached_from,
        max_num_batched_tokens: 8192,
    };
    let ttft = |r: &RequestRecord| r.first_token.unwrap() - r.sent;
    let close = |got: f64, want: f64| (got - want).abs() < 1e-9 * want.max(1.0);
    let cold = cm.ttft(&query(0, None));
    assert!(close(ttft(&records[0]), cold), "{} vs {cold}", ttft(&records[0]));
    // The GPU kept the document: 770 whole blocks (12,320 tokens) are hits, the last block
    // (recomputed: vLLM computes at least one token) is not.
    let gpu_hit = cm.ttft(&query(12_304, None));
    assert!(close(ttft(&records[1]), gpu_hit), "{} vs {gpu_hit}", ttft(&records[1]));
    // Decode steps: one sequence at its context, as the cost model's ITL.
    let itl = records[0].chunks[1].0 - records[0].chunks[0].0;
    assert!(close(itl, cm.itl(12_320)), "{itl} vs {}", cm.itl(12_320));

    // Without the GPU prefix cache, the whole document comes from the CPU tier.
    let mut cfg = config("cpu");
    cfg.scheduler.enable_prefix_caching = false;
    let records = run_virtual(&cfg, &plan).unwrap();
    assert_eq!(records[1].cached_tokens, Some(12_288));
    let cpu_hit = cm.ttft(&query(12_288, Some(costmodel::TierLink::Cpu)));
    assert!(close(ttft(&records[1]), cpu_hit), "{} vs {cpu_hit}", ttft(&records[1]));
    // A cold request with an offload tier also copies its chunks to host memory at the end of
    // its last prefill step.
    let store = cm.store_time(costmodel::TierLink::Cpu, cm.kv_bytes(12_288));
    assert!(close(ttft(&records[0]), cold + store), "{} vs {}", ttft(&records[0]), cold + store);
}

#[test]
fn same_input_gives_byte_identical_records() {
    let plan = reuse_plan(4096, 3, 40, 0.05);
    let run = || serde_json::to_string(&run_virtual(&config("disk"), &plan).unwrap()).unwrap();
    assert_eq!(run(), run());
}

#[test]
fn records_are_shaped_like_the_load_generator_s() {
    let plan = reuse_plan(1000, 2, 3, 0.5);
    let records = run_virtual(&config("baseline"), &plan).unwrap();
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r.error, None);
        assert_eq!(r.output_tokens, 16);
        assert_eq!(r.chunks.len(), 16);
        assert_eq!(r.prompt_tokens, Some(1032));
        assert_eq!(r.first_token, Some(r.chunks[0].0));
        assert_eq!(r.end, r.chunks[15].0);
        assert!(r.chunks.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(r.sent == r.intended && r.first_byte == Some(r.sent));
    }
    assert_eq!(records[2].intended, 1.0);
    // Request 2 repeats request 0's document: a GPU prefix hit, whole blocks only.
    assert_eq!(records[2].cached_tokens, Some(992));
}

#[test]
fn too_long_requests_get_a_400_and_dependents_still_run() {
    let mut plan = reuse_plan(100, 1, 2, 0.0);
    plan.requests[0].max_tokens = 20_000;
    plan.requests[1].send_at = None;
    plan.requests[1].depends_on = Some(Dependency { parent: 0, think_time: Duration::from_millis(250) });
    let records = run_virtual(&config("baseline"), &plan).unwrap();
    match &records[0].error {
        Some(RequestError::HttpStatus { status: 400, body }) => {
            assert!(body.contains("maximum context length is 16384"), "{body}")
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!(records[1].sent, 0.25);
    assert_eq!(records[1].error, None);
}

#[test]
fn closed_loop_caps_concurrency_and_sessions_reuse_their_prefix() {
    // Two sessions of three turns; each turn repeats the previous prompt plus 300 new tokens.
    let mut requests = Vec::new();
    for s in 0..2u32 {
        for t in 0..3u32 {
            let len = 2000 + 300 * t;
            let id = requests.len() as u64;
            requests.push(Request {
                id,
                prompt: Prompt::Tokens((0..len).map(|x| s * 100_000 + x).collect()),
                prompt_len: len,
                max_tokens: 8,
                send_at: None,
                depends_on: (t > 0)
                    .then(|| Dependency { parent: id - 1, think_time: Duration::from_secs(1) }),
                meta: RequestMeta { session: Some(u64::from(s)), turn: Some(t), ..RequestMeta::default() },
            });
        }
    }
    let plan = Plan { requests, mode: Mode::Closed { concurrency: 1 }, limits: Limits::default() };
    let records: Vec<RequestRecord> = run_virtual(&config("baseline"), &plan).unwrap();
    // One at a time: each request is sent when the previous one ended (or later).
    let mut by_sent = records.clone();
    by_sent.sort_by(|a, b| a.sent.total_cmp(&b.sent));
    assert!(by_sent.windows(2).all(|w| w[1].sent >= w[0].end));
    let cached: Vec<_> = records.iter().map(|r| (r.session, r.turn, r.cached_tokens)).collect();
    assert_eq!(
        cached,
        [
            (Some(0), Some(0), Some(0)),
            // 2000 tokens are 125 whole blocks.
            (Some(0), Some(1), Some(2000)),
            // 2300 tokens: 143 whole blocks = 2288.
            (Some(0), Some(2), Some(2288)),
            (Some(1), Some(0), Some(0)),
            (Some(1), Some(1), Some(2000)),
            (Some(1), Some(2), Some(2288)),
        ]
    );
}

/// Four conversations of six turns (each turn resends the conversation, 1024 tokens longer),
/// 10 s of thinking between turns, while one-off requests (no session) of 2048 tokens arrive
/// every 0.25 s. The CPU tier holds 128 chunks of 256 tokens: the one-offs written during one
/// think time (40 x 8 chunks) flush every conversation under LRU, while the conversation-aware
/// policy credits a conversation's turn (30 s x ln(1 + turn)) and keeps them.
fn conversations_with_noise() -> Plan {
    let mut requests = Vec::new();
    let mut push = |prompt: Vec<u32>, send_at, depends_on, meta| {
        let id = requests.len() as u64;
        requests.push(Request {
            id,
            prompt_len: prompt.len() as u32,
            prompt: Prompt::Tokens(prompt),
            max_tokens: 16,
            send_at,
            depends_on,
            meta,
        });
        id
    };
    for s in 0..4u32 {
        let mut parent = None;
        for turn in 1..=6u32 {
            let prompt = (0..1024 * turn).map(|x| (s + 1) * 10_000_000 + x).collect();
            let meta =
                RequestMeta { session: Some(u64::from(s)), turn: Some(turn), ..RequestMeta::default() };
            let (send_at, dep) = match parent {
                None => (Some(Duration::from_secs_f64(f64::from(s) * 0.5)), None),
                Some(p) => (None, Some(Dependency { parent: p, think_time: Duration::from_secs(10) })),
            };
            parent = Some(push(prompt, send_at, dep, meta));
        }
    }
    for i in 0..260u32 {
        let prompt = (0..2048).map(|x| 500_000_000 + i * 10_000 + x).collect();
        push(prompt, Some(Duration::from_secs_f64(f64::from(i) * 0.25)), None, RequestMeta::default());
    }
    // Ids must equal indices; sessions were pushed first, so they are.
    Plan { requests, mode: Mode::Open, limits: Limits::default() }
}

#[test]
fn conversation_aware_eviction_keeps_conversations_that_lru_loses() {
    let plan = conversations_with_noise();
    let run = |policy: kvcache::PolicyKind| {
        let mut cfg = EmulatorConfig::for_tier(TierPreset::Cpu);
        cfg.scheduler.max_model_len = 16_384;
        // No GPU prefix cache: every cached token is an offload hit.
        cfg.scheduler.enable_prefix_caching = false;
        cfg.offload.cpu_bytes = 128 * 33_554_432;
        cfg.offload.policy = policy;
        let records = run_virtual(&cfg, &plan).unwrap();
        assert_eq!(records.len(), plan.requests.len(), "{policy}");
        assert!(records.iter().all(|r| r.error.is_none() && r.output_tokens == 16), "{policy}");
        let total = |f: &dyn Fn(&RequestRecord) -> Option<u32>, conv: bool| -> u64 {
            records.iter().filter(|r| !conv || r.session.is_some()).map(|r| u64::from(f(r).unwrap())).sum()
        };
        let ratio =
            |conv| total(&|r| r.cached_tokens, conv) as f64 / total(&|r| r.prompt_tokens, conv) as f64;
        (ratio(false), ratio(true))
    };
    let (lru, lru_conv) = run(kvcache::PolicyKind::Lru);
    let (ca, ca_conv) = run(kvcache::PolicyKind::ConversationAware);
    eprintln!("offload hit ratio: conversation-aware {ca:.3} (conversations {ca_conv:.3}), LRU {lru:.3} ({lru_conv:.3})");
    assert!(ca > lru, "offload hit ratio: conversation-aware {ca:.3} vs LRU {lru:.3}");
    // Turns 2 to 6 find their whole history: 15 of 21 turn-units of each conversation.
    assert!(ca_conv > 0.6, "conversation-aware keeps the conversations: {ca_conv:.3}");
    assert!(lru_conv < 0.2, "LRU loses them to the one-off requests: {lru_conv:.3}");
}
