//! Behaviour of workload generation: specs, traces, arrival schedules and determinism.

use std::time::Duration;

use workload::{
    build_plan, ArrivalSpec, Error, LengthDist, ParseOptions, Plan, Prompt, PromptFormat, RagSpec,
    RandomSpec, Schedule, SecondsDist, SessionsSpec, SharedPrefixSpec, Source, Trace, TraceFormat, TraceSpec,
    Vocab, WorkloadSpec,
};

const MOONCAKE_SMALL: &str = include_str!("fixtures/mooncake_small.jsonl");
const BAILIAN_SMALL: &str = include_str!("fixtures/bailian_small.jsonl");
const AZURE_SMALL: &str = include_str!("fixtures/azure_small.csv");

/// The shared traces, beside the workspace (CI checks them out there).
fn shared_trace(name: &str) -> String {
    let path = format!("{}/../../../shared/traces/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("shared trace {name} missing (expected at {path}): {e}"))
}

fn spec(source: Source) -> WorkloadSpec {
    WorkloadSpec { source, format: PromptFormat::Tokens, vocab: Vocab::default() }
}

fn random(n: u64, prompt_len: LengthDist, output_len: LengthDist) -> WorkloadSpec {
    spec(Source::Random(RandomSpec { num_requests: n, prompt_len, output_len, prefix_len: 0 }))
}

fn sessions_spec(format: PromptFormat) -> WorkloadSpec {
    WorkloadSpec {
        format,
        ..spec(Source::Sessions(SessionsSpec {
            sessions: 2,
            turns: LengthDist::Uniform { min: 2, max: 3 },
            system_prompt_len: 6,
            tools_len: 4,
            user_len: LengthDist::fixed(3),
            output_len: LengthDist::Uniform { min: 2, max: 5 },
            think_time: SecondsDist::Fixed { value: 1.5 },
        }))
    }
}

fn trace_spec(format: TraceFormat) -> WorkloadSpec {
    spec(Source::Trace(TraceSpec { format, path: "t".into(), skip_bad_lines: false, max_requests: None }))
}

fn poisson(rate: f64) -> ArrivalSpec {
    ArrivalSpec::new(Schedule::Poisson { rate })
}

fn tokens(p: &Prompt) -> &[u32] {
    match p {
        Prompt::Tokens(t) => t,
        other => panic!("expected a token prompt, got {other:?}"),
    }
}

fn plan_json(plan: &Plan) -> String {
    serde_json::to_string(plan).unwrap()
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    (mean, (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
}

fn parse(format: TraceFormat, text: &str, name: &str, skip_bad_lines: bool) -> Result<Trace, Error> {
    Trace::parse(format, text, name, &ParseOptions { skip_bad_lines })
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let mooncake = parse(TraceFormat::Mooncake, MOONCAKE_SMALL, "m.jsonl", false).unwrap();
    let cases = [
        (random(50, LengthDist::Uniform { min: 5, max: 40 }, LengthDist::fixed(8)), None),
        (
            spec(Source::SharedPrefix(SharedPrefixSpec {
                num_requests: 20,
                groups: 3,
                prefix_len: 16,
                suffix_len: LengthDist::Normal { mean: 8.0, std: 3.0, min: None, max: None },
                output_len: LengthDist::fixed(4),
            })),
            None,
        ),
        (
            spec(Source::Rag(RagSpec {
                documents: 3,
                doc_len: LengthDist::fixed(64),
                queries_per_doc: 4,
                question_len: LengthDist::fixed(5),
                output_len: LengthDist::fixed(4),
            })),
            None,
        ),
        (sessions_spec(PromptFormat::Chat), None),
        (trace_spec(TraceFormat::Mooncake), Some(&mooncake)),
    ];
    for (spec, trace) in &cases {
        let arrival = ArrivalSpec::new(Schedule::Gamma { rate: 5.0, burstiness: 0.5 });
        let a = plan_json(&build_plan(spec, &arrival, 7, *trace).unwrap());
        let b = plan_json(&build_plan(spec, &arrival, 7, *trace).unwrap());
        let c = plan_json(&build_plan(spec, &arrival, 8, *trace).unwrap());
        assert_eq!(a, b, "same seed must give identical bytes for {spec:?}");
        assert_ne!(a, c, "another seed must give another plan for {spec:?}");
    }
}

#[test]
fn plans_keep_the_id_and_dependency_invariants() {
    let plan = build_plan(&sessions_spec(PromptFormat::Tokens), &poisson(2.0), 1, None).unwrap();
    for (i, r) in plan.requests.iter().enumerate() {
        assert_eq!(r.id, i as u64);
        if let Some(dep) = r.depends_on {
            assert!(dep.parent < r.id, "{r:?}");
            assert!(r.send_at.is_none(), "a dependent request has no send time: {r:?}");
        } else {
            assert!(r.send_at.is_some(), "{r:?}");
        }
        assert_eq!(tokens(&r.prompt).len(), r.prompt_len as usize);
    }
}

#[test]
fn sessions_append_the_previous_answer_and_a_new_user_message() {
    let plan = build_plan(&sessions_spec(PromptFormat::Tokens), &poisson(2.0), 3, None).unwrap();
    let mut turns = 0;
    for r in &plan.requests {
        let Some(dep) = r.depends_on else { continue };
        turns += 1;
        let parent = &plan.requests[dep.parent as usize];
        assert_eq!(parent.meta.session, r.meta.session);
        assert_eq!(parent.meta.turn.map(|t| t + 1), r.meta.turn);
        assert_eq!(dep.think_time, Duration::from_millis(1500));
        // prompt = parent prompt + answer (parent's max_tokens) + user message (3)
        assert_eq!(r.prompt_len, parent.prompt_len + parent.max_tokens + 3, "{r:?}");
        assert!(tokens(&r.prompt).starts_with(tokens(&parent.prompt)));
    }
    assert!(turns >= 2, "expected later turns in {plan:?}");
    // All sessions share the system prompt and tools (10 tokens).
    let firsts: Vec<&[u32]> =
        plan.requests.iter().filter(|r| r.depends_on.is_none()).map(|r| &tokens(&r.prompt)[..10]).collect();
    assert!(firsts.len() == 2 && firsts[0] == firsts[1], "{firsts:?}");
}

#[test]
fn chat_sessions_snapshot() {
    // Small enough to read: the whole plan, as the driver gets it.
    let arrival = ArrivalSpec {
        warmup: 1,
        max_concurrency: Some(4),
        ..ArrivalSpec::new(Schedule::Constant { rate: 2.0 })
    };
    let plan = build_plan(&sessions_spec(PromptFormat::Chat), &arrival, 42, None).unwrap();
    insta::assert_json_snapshot!(plan);
}

#[test]
fn text_prompts_have_one_printable_char_per_token() {
    let spec = WorkloadSpec {
        format: PromptFormat::Text,
        ..random(20, LengthDist::Uniform { min: 1, max: 30 }, LengthDist::fixed(1))
    };
    let plan = build_plan(&spec, &poisson(1.0), 5, None).unwrap();
    for r in &plan.requests {
        let Prompt::Text(text) = &r.prompt else { panic!("{r:?}") };
        assert_eq!(text.len(), r.prompt_len as usize);
        assert!(text.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{text:?}");
    }
}

#[test]
fn shared_prefix_groups_share_exactly_their_prefix() {
    let spec = spec(Source::SharedPrefix(SharedPrefixSpec {
        num_requests: 30,
        groups: 3,
        prefix_len: 32,
        suffix_len: LengthDist::fixed(8),
        output_len: LengthDist::fixed(4),
    }));
    let plan = build_plan(&spec, &poisson(10.0), 9, None).unwrap();
    let mut per_group = [0; 3];
    for a in &plan.requests {
        let g = a.meta.group.unwrap() as usize;
        per_group[g] += 1;
        for b in &plan.requests {
            let (ta, tb) = (tokens(&a.prompt), tokens(&b.prompt));
            assert_eq!(a.meta.group == b.meta.group, ta[..32] == tb[..32]);
            if a.id != b.id {
                assert_ne!(ta[32..], tb[32..], "suffixes are unique");
            }
        }
    }
    assert_eq!(per_group, [10, 10, 10]);
}

#[test]
fn rag_queries_reuse_their_document() {
    let spec = spec(Source::Rag(RagSpec {
        documents: 4,
        doc_len: LengthDist::Uniform { min: 100, max: 200 },
        queries_per_doc: 3,
        question_len: LengthDist::fixed(10),
        output_len: LengthDist::fixed(4),
    }));
    let plan = build_plan(&spec, &poisson(10.0), 2, None).unwrap();
    assert_eq!(plan.requests.len(), 12);
    for a in &plan.requests {
        let same_doc: Vec<_> = plan.requests.iter().filter(|b| b.meta.group == a.meta.group).collect();
        assert_eq!(same_doc.len(), 3);
        let doc_len = a.prompt_len as usize - 10;
        for b in same_doc {
            assert_eq!(tokens(&a.prompt)[..doc_len], tokens(&b.prompt)[..doc_len]);
        }
    }
    // Shuffled: the queries of one document are not all adjacent.
    let groups: Vec<u64> = plan.requests.iter().map(|r| r.meta.group.unwrap()).collect();
    let mut sorted = groups.clone();
    sorted.sort();
    assert_ne!(groups, sorted);
}

#[test]
fn mooncake_equal_hash_ids_give_equal_blocks() {
    let trace = parse(TraceFormat::Mooncake, MOONCAKE_SMALL, "m.jsonl", false).unwrap();
    assert_eq!(trace.entries.len(), 5);
    let plan = build_plan(
        &trace_spec(TraceFormat::Mooncake),
        &ArrivalSpec::new(Schedule::Trace { speedup: 1.0 }),
        11,
        Some(&trace),
    )
    .unwrap();
    let t: Vec<&[u32]> = plan.requests.iter().map(|r| tokens(&r.prompt)).collect();
    let lens: Vec<u32> = plan.requests.iter().map(|r| r.prompt_len).collect();
    assert_eq!(lens, [1100, 700, 1536, 300, 1024]);
    for (r, len) in plan.requests.iter().zip(&lens) {
        assert_eq!(tokens(&r.prompt).len(), *len as usize);
    }
    let b = |req: usize, block: usize| &t[req][block * 512..((block + 1) * 512).min(t[req].len())];
    // hash id 0 everywhere, id 1 in requests 0, 2 and 4.
    assert_eq!(b(0, 0), b(1, 0));
    assert_eq!(b(0, 0), b(4, 0));
    assert_eq!(b(0, 1), b(2, 1));
    assert_eq!(b(0, 1), b(4, 1));
    // different ids, different blocks
    assert_ne!(b(0, 1), b(1, 1));
    assert_ne!(b(0, 2)[..76], b(2, 2)[..76]);
    assert_ne!(b(3, 0), &b(0, 0)[..300]);
    // the last block is truncated to input_length: 1100 = 2 * 512 + 76
    assert_eq!(b(0, 2).len(), 76);
}

#[test]
fn trace_times_are_scaled_and_sorted() {
    let trace = parse(TraceFormat::Bailian, BAILIAN_SMALL, "b.jsonl", false).unwrap();
    let plan = build_plan(
        &trace_spec(TraceFormat::Bailian),
        &ArrivalSpec::new(Schedule::Trace { speedup: 2.0 }),
        1,
        Some(&trace),
    )
    .unwrap();
    let got: Vec<String> = plan
        .requests
        .iter()
        .map(|r| {
            format!(
                "{}ms line={} session={} turn={} len={}",
                r.send_at.unwrap().as_millis(),
                r.meta.trace_line.unwrap(),
                r.meta.session.unwrap(),
                r.meta.turn.unwrap(),
                r.prompt_len
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "0ms line=1 session=159 turn=1 len=40",
            "193ms line=2 session=200 turn=1 len=20",
            "693ms line=3 session=159 turn=2 len=70",
            "1443ms line=4 session=159 turn=3 len=90",
        ]
    );
    // 16-token blocks: turn 2 starts with turn 1's three blocks (48 > 40: all of turn 1).
    let p: Vec<&[u32]> = plan.requests.iter().map(|r| tokens(&r.prompt)).collect();
    assert_eq!(p[0], &p[2][..40]);
    assert_eq!(p[2], &p[3][..70]);
}

#[test]
fn azure_timestamps_are_relative_to_the_first_row() {
    let trace = parse(TraceFormat::Azure, AZURE_SMALL, "a.csv", false).unwrap();
    let got: Vec<(u64, u128, u32, u32)> =
        trace.entries.iter().map(|e| (e.line, e.at.as_micros(), e.input_len, e.output_len)).collect();
    assert_eq!(
        got,
        [(2, 0, 374, 44), (3, 4_314_579, 396, 109), (4, 4_541_877, 879, 55), (5, 14_319_410, 91, 16)]
    );
}

#[test]
fn bad_trace_lines_name_file_line_and_field() {
    let check = |format: TraceFormat, text: &str, expect: &str| {
        let got = match parse(format, text, "trace.jsonl", false) {
            Ok(t) => format!("ok: {} entries", t.entries.len()),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expect, "{text}");
    };
    use TraceFormat::{Azure, Bailian, Mooncake};
    let good = r#"{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}"#;
    check(Mooncake, good, "ok: 1 entries");
    check(
        Mooncake,
        &format!("{good}\n{}", r#"{"timestamp": 5, "input_length": 10, "output_length": 2, "hash_ids": 3}"#),
        r#"trace.jsonl:2: hash_ids: expected an array"#,
    );
    check(
        Mooncake,
        r#"{"timestamp": 5, "input_length": -1, "output_length": 2, "hash_ids": []}"#,
        r#"trace.jsonl:1: input_length: expected a non-negative integer below 2^32"#,
    );
    check(
        Mooncake,
        r#"{"timestamp": 5, "input_length": 1, "hash_ids": []}"#,
        r#"trace.jsonl:1: output_length: missing"#,
    );
    check(
        Mooncake,
        r#"{"timestamp": "x", "input_length": 1, "output_length": 1, "hash_ids": []}"#,
        r#"trace.jsonl:1: timestamp: expected a number"#,
    );
    check(
        Mooncake,
        r#"{"timestamp": 1, "input_length": 1, "output_length": 1, "hash_ids": [1, "a"]}"#,
        r#"trace.jsonl:1: hash_ids[1]: expected a non-negative integer"#,
    );
    check(
        Mooncake,
        &format!("{good}\n\n{{oops"),
        "trace.jsonl:3: (top level): invalid JSON: key must be a string (column 2)",
    );
    check(Mooncake, "[1]", "trace.jsonl:1: (top level): expected a JSON object");
    check(Mooncake, "\n\n", "trace.jsonl:1: (top level): no valid Mooncake lines (0 bad)");
    check(
        Bailian,
        r#"{"parent_chat_id": -1, "timestamp": 1.5, "input_length": 8, "output_length": 4}"#,
        r#"trace.jsonl:1: chat_id: missing"#,
    );
    check(
        Bailian,
        r#"{"chat_id": 1, "timestamp": 1.5, "input_length": 8, "output_length": 4, "turn": "2"}"#,
        r#"trace.jsonl:1: turn: expected a non-negative integer below 2^32"#,
    );
    check(Azure, "TIMESTAMP,ContextTokens\n", r#"trace.jsonl:1: (header): missing column "GeneratedTokens""#);
    check(
        Azure,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,12,x\n",
        r#"trace.jsonl:2: GeneratedTokens: expected a non-negative integer, found "x""#,
    );
    check(
        Azure,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,12\n",
        "trace.jsonl:2: (row): expected 3 columns, found 2",
    );
    check(
        Azure,
        "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,12,3\n",
        r#"trace.jsonl:2: TIMESTAMP: expected YYYY-MM-DD HH:MM:SS[.fraction], found "yesterday""#,
    );
}

#[test]
fn skip_bad_lines_counts_them() {
    let text = format!("{MOONCAKE_SMALL}not json\n{{\"timestamp\": 1}}\n");
    let trace = parse(TraceFormat::Mooncake, &text, "m.jsonl", true).unwrap();
    assert_eq!(trace.entries.len(), 5);
    assert_eq!(trace.bad_lines, 2);
    assert_eq!(
        trace.first_bad_line.map(|e| e.to_string()).as_deref(),
        Some("m.jsonl:7: (top level): invalid JSON: expected ident (column 2)")
    );
    assert!(parse(TraceFormat::Mooncake, &text, "m.jsonl", false).is_err());
}

#[test]
fn full_shared_traces_parse() {
    let check = |format: TraceFormat, name: &str, entries: usize, last_at_ms: u128| {
        let trace = parse(format, &shared_trace(name), name, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(trace.entries.len(), entries, "{name}");
        assert_eq!(trace.bad_lines, 0);
        let last = trace.entries.iter().map(|e| e.at).max().unwrap();
        assert_eq!(last.as_millis(), last_at_ms, "{name}");
        for e in &trace.entries {
            let blocks = e.input_len.div_ceil(trace.format.block_size().max(1)) as usize;
            if format == TraceFormat::Mooncake {
                assert_eq!(e.hash_ids.len(), blocks, "{name}:{}", e.line);
            }
        }
    };
    check(TraceFormat::Mooncake, "mooncake_conversation_trace.jsonl", 12031, 3_536_999);
    check(
        TraceFormat::Mooncake,
        "mooncake_synthetic_trace.jsonl",
        3993,
        last_ts("mooncake_synthetic_trace.jsonl"),
    );
    check(
        TraceFormat::Azure,
        "AzureLLMInferenceTrace_conv.csv",
        19366,
        azure_span_ms("AzureLLMInferenceTrace_conv.csv"),
    );
    check(
        TraceFormat::Azure,
        "AzureLLMInferenceTrace_code.csv",
        8819,
        azure_span_ms("AzureLLMInferenceTrace_code.csv"),
    );

    // A replay of the conversation trace's first 200 lines builds, with exact lengths.
    let name = "mooncake_conversation_trace.jsonl";
    let trace = parse(TraceFormat::Mooncake, &shared_trace(name), name, false).unwrap();
    let spec = spec(Source::Trace(TraceSpec {
        format: TraceFormat::Mooncake,
        path: name.into(),
        skip_bad_lines: false,
        max_requests: Some(200),
    }));
    let plan =
        build_plan(&spec, &ArrivalSpec::new(Schedule::Trace { speedup: 10.0 }), 0, Some(&trace)).unwrap();
    assert_eq!(plan.requests.len(), 200);
    for (r, e) in plan.requests.iter().zip(&trace.entries) {
        assert_eq!(tokens(&r.prompt).len() as u32, e.input_len);
        assert_eq!(r.send_at, Some(e.at / 10));
    }
    // Every conversation shares hash id 0: the first 512 tokens are common.
    let first = &tokens(&plan.requests[0].prompt)[..512];
    assert!(plan.requests.iter().all(|r| &tokens(&r.prompt)[..512] == first));
}

/// The last timestamp of a Mooncake file, read independently of the parser under test.
fn last_ts(name: &str) -> u128 {
    let text = shared_trace(name);
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    let rest = line.split("\"timestamp\":").nth(1).unwrap();
    rest.split(',').next().unwrap().trim().parse().unwrap()
}

/// Milliseconds between the first and last TIMESTAMP of an Azure file (same day, HH:MM:SS.f).
fn azure_span_ms(name: &str) -> u128 {
    let text = shared_trace(name);
    let secs = |line: &str| -> f64 {
        let ts = line.split(',').next().unwrap();
        let time = ts.split(' ').nth(1).unwrap();
        let mut p = time.split(':').map(|x| x.parse::<f64>().unwrap());
        p.next().unwrap() * 3600.0 + p.next().unwrap() * 60.0 + p.next().unwrap()
    };
    let rows: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
    assert!(rows[0].starts_with(&rows[rows.len() - 1][..10]), "{name} spans days");
    ((secs(rows[rows.len() - 1]) - secs(rows[0])) * 1000.0).floor() as u128
}

#[test]
fn gamma_and_poisson_mean_gap_is_one_over_rate() {
    let n = 20_000;
    let gaps = |schedule: Schedule| -> Vec<f64> {
        let spec = random(n, LengthDist::fixed(1), LengthDist::fixed(1));
        let plan = build_plan(&spec, &ArrivalSpec::new(schedule), 123, None).unwrap();
        let times: Vec<f64> = plan.requests.iter().map(|r| r.send_at.unwrap().as_secs_f64()).collect();
        assert_eq!(times[0], 0.0);
        times.windows(2).map(|w| w[1] - w[0]).collect()
    };
    // Gamma(shape k, scale 1/(rate k)): mean 1/rate, coefficient of variation 1/sqrt(k).
    for (schedule, rate, cv) in [
        (Schedule::Poisson { rate: 4.0 }, 4.0, 1.0),
        (Schedule::Gamma { rate: 4.0, burstiness: 1.0 }, 4.0, 1.0),
        (Schedule::Gamma { rate: 10.0, burstiness: 0.25 }, 10.0, 2.0),
        (Schedule::Gamma { rate: 2.0, burstiness: 4.0 }, 2.0, 0.5),
    ] {
        let (mean, std) = mean_std(&gaps(schedule));
        assert!((mean * rate - 1.0).abs() < 0.05, "{schedule:?}: mean gap {mean}");
        assert!((std / mean - cv).abs() < 0.1 * cv, "{schedule:?}: cv {}", std / mean);
    }
    let constant = gaps(Schedule::Constant { rate: 8.0 });
    assert!(constant.iter().all(|g| (g - 0.125).abs() < 1e-6), "{:?}", &constant[..5]);
    assert!(gaps(Schedule::Poisson { rate: f64::INFINITY }).iter().all(|g| *g == 0.0));
}

#[test]
fn length_distributions_respect_their_parameters() {
    let lens = |dist: LengthDist| -> Vec<f64> {
        let spec = random(20_000, dist, LengthDist::fixed(1));
        let plan = build_plan(&spec, &poisson(1.0), 77, None).unwrap();
        plan.requests.iter().map(|r| f64::from(r.prompt_len)).collect()
    };
    let check = |dist: LengthDist, want_mean: f64, want_std: f64, lo: f64, hi: f64| {
        let xs = lens(dist);
        let (mean, std) = mean_std(&xs);
        assert!((mean - want_mean).abs() <= 0.03 * want_mean, "{dist:?}: mean {mean}");
        assert!((std - want_std).abs() <= 0.05 * want_std.max(1.0), "{dist:?}: std {std}");
        let (min, max) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        assert!(min >= lo && max <= hi, "{dist:?}: range {min}..={max}");
    };
    check(LengthDist::fixed(128), 128.0, 0.0, 128.0, 128.0);
    // uniform 100..=300: mean 200, std sqrt((201^2 - 1) / 12)
    check(
        LengthDist::Uniform { min: 100, max: 300 },
        200.0,
        ((201.0f64 * 201.0 - 1.0) / 12.0).sqrt(),
        100.0,
        300.0,
    );
    check(LengthDist::Normal { mean: 500.0, std: 50.0, min: None, max: None }, 500.0, 50.0, 1.0, 1e9);
    check(LengthDist::Lognormal { mean: 400.0, std: 200.0, min: None, max: None }, 400.0, 200.0, 1.0, 1e9);
    // clamping
    let xs = lens(LengthDist::Normal { mean: 100.0, std: 100.0, min: Some(50), max: Some(120) });
    assert!(xs.iter().all(|x| (50.0..=120.0).contains(x)));
    assert!(xs.contains(&50.0) && xs.contains(&120.0));
}

#[test]
fn limits_modes_and_duration() {
    let spec = random(100, LengthDist::fixed(4), LengthDist::fixed(2));
    let arrival = ArrivalSpec {
        max_concurrency: Some(8),
        warmup: 3,
        duration_s: Some(5.0),
        schedule: Schedule::Constant { rate: 2.0 },
    };
    let plan = build_plan(&spec, &arrival, 1, None).unwrap();
    // 0, 0.5, ..., 5.0 s: 11 arrivals within the duration
    assert_eq!(plan.requests.len(), 11);
    assert_eq!(plan.limits.warmup, 3);
    assert_eq!(plan.limits.max_concurrency, Some(8));
    assert_eq!(plan.limits.duration, Some(Duration::from_secs(5)));
    assert_eq!(plan.mode, workload::Mode::Open);

    let closed = ArrivalSpec { schedule: Schedule::Closed { concurrency: 4 }, ..arrival };
    let plan = build_plan(&spec, &closed, 1, None).unwrap();
    assert_eq!(plan.requests.len(), 100);
    assert_eq!(plan.mode, workload::Mode::Closed { concurrency: 4 });
    assert!(plan.requests.iter().all(|r| r.send_at.is_none()));

    let all_at_once = build_plan(&spec, &poisson(f64::INFINITY), 1, None).unwrap();
    assert!(all_at_once.requests.iter().all(|r| r.send_at == Some(Duration::ZERO)));
}

#[test]
fn invalid_specs_are_refused_with_the_field_named() {
    let check = |spec: &WorkloadSpec, arrival: &ArrivalSpec, expect: &str| {
        let got = match build_plan(spec, arrival, 0, None) {
            Ok(p) => format!("ok: {} requests", p.requests.len()),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expect);
    };
    let ok = random(3, LengthDist::fixed(4), LengthDist::fixed(2));
    check(&ok, &poisson(1.0), "ok: 3 requests");
    check(&ok, &poisson(0.0), "invalid workload: schedule: rate 0 must be > 0 (inf: all at once)");
    check(
        &ok,
        &ArrivalSpec::new(Schedule::Gamma { rate: 1.0, burstiness: 0.0 }),
        "invalid workload: schedule: gamma needs rate > 0 and a finite burstiness > 0 (got rate 1, burstiness 0)",
    );
    check(
        &ok,
        &ArrivalSpec::new(Schedule::Trace { speedup: 1.0 }),
        "invalid workload: schedule: \"trace\" needs a trace source",
    );
    check(
        &ok,
        &ArrivalSpec::new(Schedule::Closed { concurrency: 0 }),
        "invalid workload: schedule: closed-loop concurrency must be at least 1",
    );
    check(
        &random(3, LengthDist::fixed(4), LengthDist::fixed(0)),
        &poisson(1.0),
        "invalid workload: output_len: fixed value 0 is below 1",
    );
    check(
        &random(3, LengthDist::Uniform { min: 9, max: 2 }, LengthDist::fixed(1)),
        &poisson(1.0),
        "invalid workload: prompt_len: uniform min 9 is above max 2",
    );
    check(
        &random(3, LengthDist::Lognormal { mean: 0.0, std: 1.0, min: None, max: None }, LengthDist::fixed(1)),
        &poisson(1.0),
        "invalid workload: prompt_len: lognormal mean 0 must be > 0",
    );
    check(
        &WorkloadSpec { vocab: Vocab { start: 5, end: 5 }, ..ok.clone() },
        &poisson(1.0),
        "invalid workload: vocab: start 5 must be below end 5",
    );
    check(
        &trace_spec(TraceFormat::Azure),
        &poisson(1.0),
        "the workload source is a trace: parse it and pass it to build_plan",
    );
}

#[test]
fn specs_read_from_toml_and_reject_unknown_fields() {
    #[derive(serde::Deserialize)]
    struct Experiment {
        workload: WorkloadSpec,
        arrival: ArrivalSpec,
    }
    let text = r#"
        [workload]
        format = "text"
        vocab = { start = 10, end = 20 }
        [workload.source]
        kind = "shared_prefix"
        num_requests = 6
        groups = 2
        prefix_len = 4
        suffix_len = { dist = "uniform", min = 1, max = 3 }
        output_len = { dist = "fixed", value = 2 }
        [arrival]
        schedule = { kind = "gamma", rate = inf, burstiness = 0.5 }
        warmup = 1
    "#;
    let exp: Experiment = toml::from_str(text).unwrap();
    let plan = build_plan(&exp.workload, &exp.arrival, 0, None).unwrap();
    assert_eq!(plan.requests.len(), 6);
    assert!(plan.requests.iter().all(|r| r.send_at == Some(Duration::ZERO)));

    let replay: Experiment = toml::from_str(
        r#"
        workload = { source = { kind = "trace", format = "bailian", path = "qwen.jsonl", max_requests = 2 } }
        arrival = { schedule = { kind = "trace" }, duration_s = 10.0 }
        "#,
    )
    .unwrap();
    assert_eq!(replay.arrival.schedule, Schedule::Trace { speedup: 1.0 });
    let Source::Trace(trace_spec) = &replay.workload.source else { panic!("{:?}", replay.workload) };
    let trace = trace_spec.parse(BAILIAN_SMALL, &trace_spec.path).unwrap();
    let plan = build_plan(&replay.workload, &replay.arrival, 0, Some(&trace)).unwrap();
    let lines: Vec<u64> = plan.requests.iter().map(|r| r.meta.trace_line.unwrap()).collect();
    assert_eq!(lines, [1, 2]);

    let check_err = |text: &str, expect: &str| {
        let err = toml::from_str::<Experiment>(text).err().map(|e| e.message().to_string());
        assert_eq!(err.as_deref(), Some(expect), "{text}");
    };
    let with = |from: &str, to: &str| text.replace(from, to);
    check_err(&with("groups = 2", "groups = 2\ngroup = 3"), "unknown field `group`, expected one of `num_requests`, `groups`, `prefix_len`, `suffix_len`, `output_len`");
    check_err(
        &with("min = 1, max = 3", "min = 1, max = 3, mean = 2"),
        "unknown field `mean`, expected `min` or `max`",
    );
    check_err(
        &with("warmup = 1", "warmups = 1"),
        "unknown field `warmups`, expected one of `schedule`, `max_concurrency`, `warmup`, `duration_s`",
    );
    check_err(
        &with("\"shared_prefix\"", "\"shared\""),
        "unknown variant `shared`, expected one of `random`, `shared_prefix`, `rag`, `sessions`, `trace`",
    );
}

/// A model's vocabulary gives the ids a run draws: the default range where the vocabulary holds
/// it, else the top of the vocabulary (every id below its size), and nothing for a vocabulary
/// too small to draw from.
#[test]
fn vocab_within_a_model_vocabulary() {
    let cases: [(u32, Option<(u32, u32)>); 7] = [
        (0, None),
        (Vocab::MIN_VOCAB_SIZE - 1, None),
        (Vocab::MIN_VOCAB_SIZE, Some((4, 16))),
        (354, Some((4, 354))),
        (8192, Some((102, 8192))),
        (30_000, Some((1000, 30_000))),
        (128_256, Some((1000, 30_000))),
    ];
    for (size, want) in cases {
        let got = Vocab::within(size);
        assert_eq!(got.map(|v| (v.start, v.end)), want, "vocab_size {size}");
        if let Some(v) = got {
            assert!(v.start < v.end && v.end <= size, "vocab_size {size}: {v:?} is not within it");
        }
    }
}
