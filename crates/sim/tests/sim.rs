//! The simulator on small inline traces: formats, granularity, errors, metrics, and the policy
//! properties (belady is an upper bound, all agree at infinite capacity, LRU is monotone) with
//! proptest on random traces.

use kvcache::{PolicyKind, Tier, TierConfig};
use proptest::prelude::*;
use sim::{Capacity, InputFormat, LoadOptions, ReplayConfig, SimTrace, TierModel};

fn mooncake(lines: &[(u64, u32, &[u64])]) -> String {
    lines
        .iter()
        .map(|(ts, len, ids)| {
            format!("{{\"timestamp\": {ts}, \"input_length\": {len}, \"output_length\": 10, \"hash_ids\": {ids:?}}}\n")
        })
        .collect()
}

fn load(text: &str, opts: &LoadOptions) -> SimTrace {
    sim::trace::load("t.jsonl", text, opts).expect("valid trace")
}

/// Replays `text` at one capacity and renders the measured numbers.
fn check(text: &str, opts: &LoadOptions, policy: PolicyKind, capacity: u64, expect: &str) {
    let trace = load(text, opts);
    let r = sim::replay(&trace, &ReplayConfig::single(Tier::Cpu, capacity, policy.into()));
    let got = format!(
        "requests {} blocks {}/{} tokens {}/{} saved {} tiers {:?} granularity: {}",
        r.requests,
        r.hit_blocks,
        r.query_blocks,
        r.hit_tokens,
        r.query_tokens,
        r.prefill_tokens_saved,
        r.tier_hit_blocks,
        trace.granularity
    );
    assert_eq!(got, expect);
}

#[test]
fn prefix_hits_and_token_weights() {
    // Request 2 shares blocks 0,1 with request 1; request 3 repeats request 2 entirely (its last
    // block has 100 of 512 tokens, so a full hit saves input - 1 tokens).
    let t = mooncake(&[(0, 1536, &[0, 1, 2]), (1, 1124, &[0, 1, 3]), (2, 1124, &[0, 1, 3])]);
    check(
        &t,
        &LoadOptions::default(),
        PolicyKind::Lru,
        100,
        "requests 3 blocks 5/9 tokens 2148/3784 saved 2147 tiers [0, 5, 0, 0] \
         granularity: trace blocks of 512 tokens used as they are",
    );
}

#[test]
fn block_sizes_regroup_or_split_trace_blocks() {
    let t = mooncake(&[(0, 1536, &[0, 1, 2]), (1, 1124, &[0, 1, 3])]);
    check(
        &t,
        &LoadOptions { block_tokens: Some(1024), ..LoadOptions::default() },
        PolicyKind::Lru,
        100,
        "requests 2 blocks 1/4 tokens 1024/2660 saved 1024 tiers [0, 1, 0, 0] \
         granularity: 2 trace blocks of 512 tokens grouped into one simulated block of 1024 \
         (a partial last group is keyed by its last trace block)",
    );
    check(
        &t,
        &LoadOptions { block_tokens: Some(256), ..LoadOptions::default() },
        PolicyKind::Lru,
        100,
        "requests 2 blocks 4/11 tokens 1024/2660 saved 1024 tiers [0, 4, 0, 0] \
         granularity: each trace block of 512 tokens split into 2 simulated blocks of 256; \
         sharing below 512 tokens is unknown, so hit ratios are a lower bound",
    );
    let err =
        sim::trace::load("t.jsonl", &t, &LoadOptions { block_tokens: Some(300), ..LoadOptions::default() });
    assert_eq!(
        err.unwrap_err().to_string(),
        "--block-size 300 is neither a multiple nor a divisor of the trace's 512-token blocks"
    );
}

#[test]
fn bailian_and_conversation_csv() {
    let bailian = "\
{\"chat_id\": 1, \"parent_chat_id\": -1, \"timestamp\": 0.0, \"input_length\": 40, \"output_length\": 5, \"type\": \"text\", \"turn\": 1, \"hash_ids\": [7, 8, 9]}
{\"chat_id\": 2, \"parent_chat_id\": 1, \"timestamp\": 1.5, \"input_length\": 64, \"output_length\": 5, \"type\": \"text\", \"turn\": 2, \"hash_ids\": [7, 8, 10, 11]}
";
    let tr = load(bailian, &LoadOptions::default());
    assert_eq!(tr.format, InputFormat::Bailian);
    assert_eq!((tr.requests[1].session, tr.requests[1].turn, tr.requests[1].at_ms), (1, 2, 1500));
    check(
        bailian,
        &LoadOptions::default(),
        PolicyKind::Lru,
        100,
        "requests 2 blocks 2/7 tokens 32/104 saved 32 tiers [0, 2, 0, 0] \
         granularity: trace blocks of 16 tokens used as they are",
    );
    // A conversation CSV: turn 2 of conversation a starts with turn 1's 40 tokens (2 full
    // 16-token blocks shared); conversation b shares nothing.
    let csv = "timestamp,conversation_id,prompt_tokens,output_tokens\n0,a,40,10\n0.5,b,33,3\n2,a,70,10\n";
    let opts = LoadOptions { skip_bad_lines: false, ..LoadOptions::default() };
    check(
        csv,
        &opts,
        PolicyKind::Lru,
        100,
        "requests 3 blocks 2/11 tokens 32/143 saved 32 tiers [0, 2, 0, 0] \
         granularity: trace blocks of 16 tokens used as they are",
    );
    // The converter writes Bailian JSONL that reads back to the same replay.
    let trace = sim::trace::conversation_csv_to_trace(csv, "c.csv", 16, false).unwrap();
    let jsonl = sim::trace::to_bailian_jsonl(&trace);
    insta::assert_snapshot!("converted_csv", jsonl);
    check(
        &jsonl,
        &LoadOptions::default(),
        PolicyKind::Lru,
        100,
        "requests 3 blocks 2/11 tokens 32/143 saved 32 tiers [0, 2, 0, 0] \
         granularity: trace blocks of 16 tokens used as they are",
    );
}

#[test]
fn bad_input_names_file_line_and_field() {
    let check_err = |text: &str, opts: &LoadOptions, expect: &str| {
        let err = sim::trace::load("t.jsonl", text, opts).unwrap_err();
        assert_eq!(err.to_string(), expect);
    };
    let t = "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [0]}\n\
             {\"timestamp\": 1, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": \"x\"}\n";
    check_err(t, &LoadOptions::default(), "t.jsonl:2: hash_ids: expected an array");
    let skipped = load(t, &LoadOptions { skip_bad_lines: true, ..LoadOptions::default() });
    assert_eq!((skipped.requests.len(), skipped.bad_lines), (1, 1));
    check_err(
        "{\"v\": 1, \"id\": 0, \"sent\": 0.1, \"first_token\": 0.2, \"token_source\": \"usage\"}\n",
        &LoadOptions::default(),
        "t.jsonl:1: (top level): missing field `intended` (column 75)",
    );
    check_err(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n",
        &LoadOptions::default(),
        "t.jsonl:1: (header): an Azure LLM inference CSV carries no prefix or conversation data (TIMESTAMP, \
         ContextTokens, GeneratedTokens only): nothing to replay",
    );
    check_err(
        "timestamp,conversation_id,prompt_tokens,output_tokens\n0,a,4x,1\n",
        &LoadOptions::default(),
        "t.jsonl:2: prompt_tokens: expected a non-negative integer, found \"4x\"",
    );
}

#[test]
fn capacities_parse_and_convert() {
    let kv = costmodel::KvGeometry { layers: 32, kv_heads: 8, head_dim: 128, dtype_bytes: 2 }; // 128 KiB/token
    let check = |s: &str, expect: Result<u64, &str>| {
        let got = Capacity::parse(s).and_then(|c| c.blocks(16, Some(&kv))).map_err(|e| e.to_string());
        assert_eq!(got, expect.map_err(str::to_owned), "{s}");
    };
    check("1000", Ok(1000));
    check("10k", Ok(10_000));
    check("10k-tokens", Ok(625));
    check("2GiB", Ok(1024)); // 2 GiB / (16 x 128 KiB)
    check("inf", Ok(u64::MAX));
    check(
        "ten",
        Err("capacity \"ten\": expected blocks (1000, 10k), tokens (10k-tokens), bytes (2GiB, 500MB) or inf"),
    );
    let no_model = Capacity::parse("1GB").unwrap().blocks(16, None).unwrap_err().to_string();
    assert_eq!(no_model, "capacity 1000000000B: a capacity in bytes needs --model (its KV geometry)");
}

#[test]
fn tiers_split_hits_and_ttft_is_saved() {
    let t = mooncake(&[(0, 1024, &[0, 1]), (1, 1536, &[2, 3, 4]), (2, 1024, &[0, 1])]);
    let trace = load(&t, &LoadOptions::default());
    let registry = costmodel::Registry::builtin();
    let cost = costmodel::CostModel::new(
        registry.model("llama-3-8b").unwrap(),
        registry.gpu("h100").unwrap(),
        &registry.cost,
    );
    let cfg = ReplayConfig {
        tiers: vec![
            TierConfig { tier: Tier::Gpu, capacity_blocks: 3 },
            TierConfig { tier: Tier::Cpu, capacity_blocks: 10 },
        ],
        tier_model: TierModel::Exclusive,
        policy: PolicyKind::Lru.into(),
        from_ms: 0,
        to_ms: u64::MAX,
        cost: Some(&cost),
        max_num_batched_tokens: 8192,
    };
    let r = sim::replay(&trace, &cfg);
    // Blocks 0 and 1 were demoted to CPU by request 2's three blocks.
    assert_eq!(r.tier_hit_blocks, [0, 2, 0, 0]);
    assert_eq!(r.hit_tokens, 1024);
    let saved = r.ttft_saved_s.expect("a cost model was given");
    assert!(saved > 0.0 && saved < 1.0, "{saved}");
}

/// Replays `trace` through `tiers` counting only requests from `from_ms` on, and checks the
/// tokens each tier served and the TTFT saved: the cost model's TTFT without cache, minus the
/// compute of the uncached rest plus each tier's load of the tokens it served (a GPU hit loads
/// nothing), with at most `prompt - 1` tokens cached per request.
fn check_ttft(
    tier_model: TierModel,
    lines: &[(u64, u32, &[u64])],
    tiers: &[(Tier, u64)],
    from_ms: u64,
    served: [u64; 4],
) {
    let trace = load(&mooncake(lines), &LoadOptions::default());
    let registry = costmodel::Registry::builtin();
    let cost = costmodel::CostModel::new(
        registry.model("llama-3-8b").unwrap(),
        registry.gpu("h100").unwrap(),
        &registry.cost,
    );
    let cfg = ReplayConfig {
        tiers: tiers.iter().map(|&(tier, capacity_blocks)| TierConfig { tier, capacity_blocks }).collect(),
        tier_model,
        policy: PolicyKind::Lru.into(),
        from_ms,
        to_ms: u64::MAX,
        cost: Some(&cost),
        max_num_batched_tokens: 8192,
    };
    let r = sim::replay(&trace, &cfg);
    assert_eq!(r.tier_hit_tokens, served, "{tier_model}: tokens served by gpu, cpu, disk, remote");
    let counted: Vec<_> = trace.requests.iter().filter(|q| q.at_ms >= from_ms).collect();
    assert_eq!(counted.len(), 1, "one counted request");
    let prompt = counted[0].input_len;
    let q = |cached: u32| costmodel::TtftQuery {
        prompt_tokens: prompt,
        cached_tokens: cached,
        cached_from: None,
        max_num_batched_tokens: 8192,
    };
    // The cap of prompt - 1 comes off the last block of the hit (served by the slowest tier
    // that served any in the cases below).
    let mut loaded = served;
    let excess = served.iter().sum::<u64>().saturating_sub(u64::from(prompt) - 1);
    if let Some(last) = loaded.iter_mut().rev().find(|t| **t > 0) {
        *last -= excess;
    }
    let links = [
        None,
        Some(costmodel::TierLink::Cpu),
        Some(costmodel::TierLink::Disk),
        Some(costmodel::TierLink::Remote),
    ];
    let load_s: f64 = links
        .iter()
        .zip(loaded)
        .map(|(link, tokens)| link.map_or(0.0, |l| cost.load_time(l, cost.kv_bytes(tokens))))
        .sum();
    let cached = loaded.iter().sum::<u64>() as u32;
    let expect = cost.ttft(&q(0)) - (cost.ttft(&q(cached)) + load_s);
    let saved = r.ttft_saved_s.expect("a cost model was given");
    assert!(
        (saved - expect).abs() <= 1e-9 * expect.abs(),
        "{tier_model}: TTFT saved {saved}, expected {expect}"
    );
}

/// Each hit is charged at the speed of the tier it came from: the part of a prompt found on
/// the GPU loads nothing, even when the rest of the hit comes from CPU or disk.
#[test]
fn ttft_saved_charges_each_tier_at_its_own_speed() {
    // Request 2 leaves blocks 0 and 1 on the GPU and 2, 3 below it; request 3 hits all four.
    let reuse: &[(u64, u32, &[u64])] =
        &[(0, 2048, &[0, 1, 2, 3]), (1000, 1024, &[0, 1]), (2000, 2048, &[0, 1, 2, 3])];
    for model in TierModel::ALL {
        check_ttft(model, reuse, &[(Tier::Gpu, 2), (Tier::Cpu, 10)], 2000, [1024, 1024, 0, 0]);
        // Only GPU hits: no load at all.
        check_ttft(model, reuse, &[(Tier::Gpu, 4), (Tier::Cpu, 10)], 2000, [2048, 0, 0, 0]);
        // Only CPU hits: the whole hit at the CPU link.
        check_ttft(model, reuse, &[(Tier::Cpu, 10)], 2000, [0, 2048, 0, 0]);
    }
    // Three tiers, the last request one block longer (so the prompt - 1 cap does not bind).
    // Write-through: the CPU (3 blocks) lost block 2 to request 2's blocks, the disk kept it, so
    // blocks 0, 1 come from the GPU, 2 from the disk, 3 from the CPU. Exclusive: request 2 moved
    // 0 and 1 up and pushed 2 and 3 down to the CPU.
    let longer: &[(u64, u32, &[u64])] =
        &[(0, 2048, &[0, 1, 2, 3]), (1000, 1024, &[0, 1]), (2000, 2560, &[0, 1, 2, 3, 9])];
    let three = [(Tier::Gpu, 2), (Tier::Cpu, 3), (Tier::Disk, 10)];
    check_ttft(TierModel::WriteThrough, longer, &three, 2000, [1024, 512, 512, 0]);
    check_ttft(TierModel::Exclusive, longer, &three, 2000, [1024, 1024, 0, 0]);
}

/// Blocks hit per tier (gpu, cpu, disk, remote) replaying `lines` through LRU `tiers`.
fn tier_hits(model: TierModel, lines: &[(u64, u32, &[u64])], tiers: &[(Tier, u64)]) -> [u64; 4] {
    let trace = load(&mooncake(lines), &LoadOptions::default());
    let cfg = ReplayConfig {
        tiers: tiers.iter().map(|&(tier, capacity_blocks)| TierConfig { tier, capacity_blocks }).collect(),
        tier_model: model,
        ..ReplayConfig::single(Tier::Cpu, 0, PolicyKind::Lru.into())
    };
    sim::replay(&trace, &cfg).tier_hit_blocks
}

/// Write-through tiers each hold what a lone cache of their size would (a block may be in
/// several); exclusive tiers hold distinct blocks, so their capacities add up.
#[test]
fn tier_models_differ_where_tiers_stack() {
    let twice: &[(u64, u32, &[u64])] = &[(0, 2048, &[0, 1, 2, 3]), (1000, 2048, &[0, 1, 2, 3])];
    let gpu_cpu = [(Tier::Gpu, 2), (Tier::Cpu, 2)];
    // Exclusive: 0 and 1 were demoted to the CPU, 2 and 3 stayed on the GPU; all four hit.
    assert_eq!(tier_hits(TierModel::Exclusive, twice, &gpu_cpu), [2, 2, 0, 0]);
    // Write-through: both tiers kept 2 and 3, and the prompt's first block is in neither.
    assert_eq!(tier_hits(TierModel::WriteThrough, twice, &gpu_cpu), [0, 0, 0, 0]);
    // A CPU tier that holds the whole prompt serves it, on either side of the GPU's run.
    assert_eq!(tier_hits(TierModel::WriteThrough, twice, &[(Tier::Gpu, 2), (Tier::Cpu, 4)]), [0, 4, 0, 0]);
    assert_eq!("exclusive".parse::<TierModel>(), Ok(TierModel::Exclusive));
    assert_eq!(
        "inclusive".parse::<TierModel>().unwrap_err().to_string(),
        "unknown tier model `inclusive`; expected one of: write-through, exclusive"
    );
}

/// A random trace: requests continue random earlier prefixes, like conversations.
fn random_trace() -> impl Strategy<Value = String> {
    prop::collection::vec((0usize..8, 0usize..4, 1usize..5), 1..40).prop_map(|reqs| {
        let mut prompts: Vec<Vec<u64>> = Vec::new();
        let mut next = 0u64;
        let mut lines = Vec::new();
        for (i, (parent, keep, add)) in reqs.into_iter().enumerate() {
            let mut ids = match prompts.get(parent) {
                Some(p) => p[..keep.min(p.len())].to_vec(),
                None => Vec::new(),
            };
            for _ in 0..add {
                ids.push(next);
                next += 1;
            }
            lines.push((i as u64 * 1000, ids.len() as u32 * 512, ids.clone()));
            prompts.push(ids);
        }
        lines
            .iter()
            .map(|(ts, len, ids)| {
                format!("{{\"timestamp\": {ts}, \"input_length\": {len}, \"output_length\": 1, \"hash_ids\": {ids:?}}}\n")
            })
            .collect()
    })
}

fn hits(trace: &SimTrace, policy: PolicyKind, capacity: u64) -> u64 {
    sim::replay(trace, &ReplayConfig::single(Tier::Cpu, capacity, policy.into())).hit_blocks
}

proptest! {
    #[test]
    fn belady_bounds_every_policy_and_all_agree_at_infinity(text in random_trace(), capacity in 1u64..30) {
        let trace = load(&text, &LoadOptions::default());
        let best = hits(&trace, PolicyKind::Belady, capacity);
        let unbounded = hits(&trace, PolicyKind::Lru, u64::MAX);
        for p in PolicyKind::ALL {
            prop_assert!(hits(&trace, p, capacity) <= best, "{} beats belady at {}", p, capacity);
            prop_assert_eq!(hits(&trace, p, u64::MAX), unbounded, "{} at infinite capacity", p);
        }
    }

    #[test]
    fn write_through_tiers_hit_as_their_largest_tier_alone(
        text in random_trace(),
        gpu in 0u64..20,
        cpu in 0u64..20,
        disk in 0u64..20,
    ) {
        // LRU is a stack algorithm: each smaller tier holds a subset of the largest one.
        let trace = load(&text, &LoadOptions::default());
        let tiers = [(Tier::Gpu, gpu), (Tier::Cpu, cpu), (Tier::Disk, disk)];
        let cfg = |model, tiers: &[(Tier, u64)]| ReplayConfig {
            tiers: tiers.iter().map(|&(tier, capacity_blocks)| TierConfig { tier, capacity_blocks }).collect(),
            tier_model: model,
            ..ReplayConfig::single(Tier::Cpu, 0, PolicyKind::Lru.into())
        };
        let stacked = sim::replay(&trace, &cfg(TierModel::WriteThrough, &tiers)).hit_blocks;
        let largest = hits(&trace, PolicyKind::Lru, gpu.max(cpu).max(disk));
        prop_assert_eq!(stacked, largest);
        // One tier: the two models are the same cache.
        for p in PolicyKind::ALL {
            let one = [(Tier::Cpu, cpu)];
            let a = sim::replay(&trace, &ReplayConfig { policy: p.into(), ..cfg(TierModel::WriteThrough, &one) });
            let b = sim::replay(&trace, &ReplayConfig { policy: p.into(), ..cfg(TierModel::Exclusive, &one) });
            prop_assert_eq!(a, b, "{}", p);
        }
    }

    #[test]
    fn lru_never_loses_hits_as_capacity_grows(text in random_trace()) {
        let trace = load(&text, &LoadOptions::default());
        let mut last = 0;
        for capacity in 0..40 {
            let h = hits(&trace, PolicyKind::Lru, capacity);
            prop_assert!(h >= last, "capacity {}: {} < {}", capacity, h, last);
            last = h;
        }
    }
}

#[test]
fn sweep_writes_csv_and_curves() {
    let t = mooncake(&[
        (0, 1536, &[0, 1, 2]),
        (1000, 1024, &[0, 1]),
        (2000, 1536, &[0, 3, 4]),
        (3000, 1536, &[0, 1, 2]),
    ]);
    let trace = load(&t, &LoadOptions::default());
    let policies = [PolicyKind::Lru.into(), PolicyKind::Belady.into()];
    let caps = [Capacity::Blocks(2), Capacity::Tokens(2048), Capacity::Infinite];
    let rows = sim::sweep(&[trace], &policies, &caps, &sim::SweepConfig::default()).unwrap();
    insta::assert_snapshot!("sweep_csv", sim::output::csv(&rows));
    let svg = sim::output::svg(&rows, "t.jsonl").expect("the chart draws");
    insta::assert_snapshot!("sweep_svg", svg);
}

/// Two conversations, one second apart, each growing by a block per turn: the trace the tuning
/// and training tests split at 2 s.
fn two_conversations() -> sim::SimTrace {
    let t = mooncake(&[
        (0, 1536, &[0, 1, 2]),
        (1000, 1536, &[5, 6, 7]),
        (2000, 2048, &[0, 1, 2, 3]),
        (3000, 2048, &[5, 6, 7, 8]),
        (4000, 2560, &[0, 1, 2, 3, 4]),
    ]);
    load(&t, &LoadOptions::default())
}

#[test]
fn tuning_and_training_report_both_ranges() {
    let trace = two_conversations();
    let tiers = [TierConfig { tier: Tier::Cpu, capacity_blocks: 4 }];
    let tuned = sim::sweep::tune_conversation_aware(&trace, &tiers, TierModel::default(), 0.5);
    assert_eq!((tuned.split_ms, tuned.candidates), (2000, 100));
    // The best setting is at least as good as LRU where it was chosen.
    assert!(tuned.tuned.train_token_hit_ratio >= tuned.lru.train_token_hit_ratio, "{tuned:?}");
    let trained = sim::sweep::train_learned(&trace, 0.5, 300.0);
    assert_eq!(trained.split_ms, 2000);
    assert_eq!(trained.train_samples, 6, "accesses before 2 s");
    assert!(
        trained.test_log_loss.is_finite() && trained.train_log_loss < std::f64::consts::LN_2,
        "{trained:?}"
    );
}

/// `sim`'s learned and tuned reports: the held-out capacity is the sweep's middle finite one, the
/// swept tier sits there beside the fixed tiers, and the reports are the training, tuning and
/// held-out evaluations at that cache, split at the config's fraction.
#[test]
fn learned_and_tuned_reports_train_and_evaluate_at_the_held_out_capacity() {
    let trace = two_conversations();
    let caps = [Capacity::Blocks(2), Capacity::Blocks(4), Capacity::Blocks(8), Capacity::Infinite];
    assert_eq!(sim::held_out_capacity(&caps), Capacity::Blocks(4));
    assert_eq!(sim::held_out_capacity(&[Capacity::Blocks(3)]), Capacity::Blocks(3));
    assert_eq!(sim::held_out_capacity(&[Capacity::Infinite]), Capacity::Infinite);
    let cfg = sim::SweepConfig {
        tier: Tier::Cpu,
        fixed: vec![(Tier::Gpu, Capacity::Blocks(1))],
        train_fraction: 0.5,
        ..sim::SweepConfig::default()
    };
    let tiers = [
        TierConfig { tier: Tier::Gpu, capacity_blocks: 1 },
        TierConfig { tier: Tier::Cpu, capacity_blocks: 4 },
    ];
    let learned = sim::learned_report(&trace, &cfg, Capacity::Blocks(4)).unwrap();
    let trained = sim::sweep::train_learned(&trace, 0.5, sim::sweep::LEARNED_HORIZON_S);
    assert_eq!(learned.training, trained);
    let model = sim::PolicySpec::Learned { model: trained.model };
    let tier_model = TierModel::default();
    assert_eq!(learned.held_out, sim::sweep::held_out(&trace, model, &tiers, tier_model, 2000));
    assert_eq!(learned.lru, sim::sweep::held_out(&trace, PolicyKind::Lru.into(), &tiers, tier_model, 2000));
    assert_eq!((learned.trace.as_str(), learned.held_out.capacity_blocks), (trace.name.as_str(), 1));
    let json = serde_json::to_value(&learned).unwrap();
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["held_out", "lru", "trace", "training"], "sim.json's learned entries");
    let tuned = sim::tuned_report(&trace, &cfg, Capacity::Blocks(4)).unwrap();
    assert_eq!(tuned.result, sim::sweep::tune_conversation_aware(&trace, &tiers, tier_model, 0.5));
    // A byte capacity without the model's KV geometry is refused, naming what is missing.
    let err = sim::learned_report(&trace, &cfg, Capacity::parse("2GiB").unwrap()).unwrap_err();
    assert!(err.to_string().contains("--model"), "{err}");
}

/// kvlab's own `requests.jsonl` replays through its recorded `prompt_blocks`: in send order (the
/// file is in finish order), failed requests left out, and a record without the field is an error
/// naming the file, the line and the field.
#[test]
fn kvlab_requests_jsonl_replays_by_prompt_blocks() {
    let record = |id: u64, sent: f64, blocks: Option<&[u64]>, error: bool| {
        let mut r = serde_json::json!({
            "v": 1, "id": id, "intended": sent, "sent": sent, "first_byte": sent + 0.01,
            "first_token": sent + 0.02, "end": sent + 0.1, "chunks": [], "prompt_tokens": 48,
            "output_tokens": 4, "cached_tokens": null, "token_source": "usage", "error": null,
        });
        if let Some(b) = blocks {
            r["prompt_blocks"] = serde_json::json!(b);
        }
        if error {
            r["error"] = serde_json::json!({"class": "connect", "message": "refused"});
        }
        r.to_string()
    };
    // Finish order: request 1 (same prefix as 0, sent later) finished first.
    let text = [
        record(1, 0.5, Some(&[7, 8, 9]), false),
        record(0, 0.0, Some(&[7, 8, 10]), false),
        record(2, 0.7, Some(&[7, 8, 9]), true),
    ]
    .join("\n");
    let trace = load(&text, &LoadOptions::default());
    assert_eq!(trace.format, InputFormat::KvlabRecords);
    assert_eq!(trace.requests.len(), 2, "the failed request is left out");
    let r = sim::replay(&trace, &ReplayConfig::single(Tier::Cpu, 1_000, PolicyKind::Lru.into()));
    // Request 0 first (cold, 3 blocks), then request 1 hits 7 and 8: 2 of 6 blocks.
    assert_eq!((r.requests, r.query_blocks, r.hit_blocks), (2, 6, 2));

    let missing = [record(0, 0.0, Some(&[1]), false), record(1, 0.1, None, false)].join("\n");
    let err = sim::trace::load("requests.jsonl", &missing, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.starts_with("requests.jsonl:2:") && err.contains("prompt_blocks"), "{err}");
}
