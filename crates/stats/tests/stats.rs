//! Behaviour of the summary statistics, checked against hand-computed numbers.

use stats::{
    csv_header, csv_row, itl_per_token_values, itl_values, percentile, render_table, std_dev, summarize,
    RequestError, RequestRecord, Slo, SummaryConfig, TokenSource, RECORD_VERSION,
};

/// A completed record sent at `sent`, first token at `sent + ttft`, one token per chunk every
/// `gap` seconds.
fn completed(id: u64, sent: f64, ttft: f64, tokens: u32, gap: f64) -> RequestRecord {
    let first = sent + ttft;
    let chunks: Vec<(f64, u32)> = (0..tokens).map(|i| (first + gap * f64::from(i), 1)).collect();
    RequestRecord {
        v: RECORD_VERSION,
        id,
        warmup: false,
        intended: sent,
        sent,
        queued_until: None,
        first_byte: Some(first - 0.001),
        first_token: Some(first),
        end: chunks.last().map_or(first, |c| c.0),
        chunks,
        prompt_tokens: Some(100),
        output_tokens: tokens,
        cached_tokens: Some(32),
        token_source: TokenSource::Usage,
        error: None,
        session: None,
        turn: None,
        prompt_blocks: None,
    }
}

fn failed(id: u64, sent: f64, end: f64, error: RequestError) -> RequestRecord {
    RequestRecord {
        v: RECORD_VERSION,
        id,
        warmup: false,
        intended: sent,
        sent,
        queued_until: None,
        first_byte: None,
        first_token: None,
        end,
        chunks: vec![],
        prompt_tokens: None,
        output_tokens: 0,
        cached_tokens: None,
        token_source: TokenSource::Chunks,
        error: Some(error),
        session: Some(7),
        turn: Some(2),
        prompt_blocks: None,
    }
}

/// The hand-built run used by the snapshot tests.
fn run() -> Vec<RequestRecord> {
    let mut warm = completed(0, 0.0, 5.0, 3, 1.0);
    warm.warmup = true;
    let mut late = completed(3, 2.0, 0.3, 1, 0.0);
    late.intended = 1.95; // sent 50 ms late
    late.token_source = TokenSource::Chunks;
    late.cached_tokens = None;
    vec![
        warm,
        completed(1, 1.0, 0.1, 5, 0.02),
        completed(2, 1.5, 0.2, 11, 0.01),
        late,
        failed(4, 2.5, 3.0, RequestError::Timeout { message: "no token in 0.5 s".into() }),
        failed(5, 2.6, 2.7, RequestError::HttpStatus { status: 503, body: "overloaded".into() }),
    ]
}

#[test]
fn percentile_matches_numpy_linear() {
    // Expected values from numpy's definition: rank = p/100*(n-1), linear between neighbours.
    let check = |values: &[f64], p: f64, expect: f64| {
        let got = percentile(values, p);
        assert!((got - expect).abs() < 1e-9, "percentile({values:?}, {p}) = {got}, want {expect}");
    };
    check(&[1.0, 2.0, 3.0, 4.0], 50.0, 2.5);
    check(&[1.0, 2.0, 3.0, 4.0], 90.0, 3.7);
    check(&[1.0, 2.0, 3.0, 4.0], 99.0, 3.97);
    check(&[1.0, 2.0, 3.0, 4.0], 0.0, 1.0);
    check(&[1.0, 2.0, 3.0, 4.0], 100.0, 4.0);
    check(&[3.0, 1.0, 2.0], 25.0, 1.5);
    check(&[1.0, 1000.0, 10.0, 100.0, 5.0], 95.0, 820.0);
    check(&[1.0, 1000.0, 10.0, 100.0, 5.0], 50.0, 10.0);
    check(&[42.0], 99.0, 42.0);
    check(&[], 50.0, 0.0);
}

#[test]
fn std_is_population_std() {
    assert_eq!(std_dev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]), 2.0);
    assert_eq!(std_dev(&[5.0]), 0.0);
    assert_eq!(std_dev(&[]), 0.0);
}

#[test]
fn itl_is_per_chunk_as_vllm_bench_and_per_token_where_counts_are_known() {
    // (chunks, output tokens from usage or None for counted chunks) → per-chunk ITLs (ms),
    // per-token ITLs (ms) or "unknown".
    let check = |chunks: &[(f64, u32)], usage: Option<u32>, expect_chunk: &str, expect_token: &str| {
        let mut r = completed(1, 0.0, 0.5, 1, 0.0);
        r.chunks = chunks.to_vec();
        (r.output_tokens, r.token_source) = match usage {
            Some(n) => (n, TokenSource::Usage),
            None => (chunks.iter().map(|c| c.1).sum(), TokenSource::Chunks),
        };
        let ms = |v: &[f64]| v.iter().map(|s| format!("{:.0}", s * 1000.0)).collect::<Vec<_>>().join(" ");
        let chunk = ms(&itl_values(&r));
        let token = itl_per_token_values(&r).map_or("unknown".to_owned(), |v| ms(&v));
        assert_eq!((chunk.as_str(), token.as_str()), (expect_chunk, expect_token), "{chunks:?} {usage:?}");
    };
    // One token per chunk, confirmed by usage: both are one value per gap; the first chunk
    // gives none.
    check(&[(1.0, 1), (1.1, 1), (1.3, 1)], Some(3), "100 200", "100 200");
    // A 3-token chunk 300 ms after the previous one (counts from continuous usage): one ITL of
    // 300 ms per chunk, as vllm bench; three of 100 ms per token.
    check(&[(1.0, 1), (1.3, 3)], Some(4), "300", "100 100 100");
    // The first chunk's extra tokens add no ITL; chunks recorded with 0 tokens are skipped.
    check(&[(1.0, 4), (1.05, 0), (1.2, 2)], Some(6), "200", "100 100");
    // Usage says more tokens than the chunks were counted as (a server that put several tokens
    // in a chunk, without usage in every chunk): per-chunk ITL only.
    check(&[(1.0, 1), (1.1, 1), (1.3, 1)], Some(5), "100 200", "unknown");
    // No usage at all: the counts are the client's guess.
    check(&[(1.0, 1), (1.1, 1)], None, "100", "unknown");
    check(&[(1.0, 1)], Some(1), "", "");
    check(&[], Some(0), "", "");
}

#[test]
fn itl_fields_follow_their_definitions() {
    // Two requests, 4 tokens each: one sent a token a chunk every 10 ms; the other two chunks
    // of 2 tokens 40 ms apart (its counts known from usage in every chunk). A third with 3
    // tokens in 2 chunks and no per-chunk counts.
    let a = completed(1, 0.0, 0.1, 4, 0.01);
    let mut b = completed(2, 0.0, 0.1, 1, 0.0);
    b.chunks = vec![(0.1, 2), (0.14, 2)];
    b.output_tokens = 4;
    let mut c = completed(3, 0.0, 0.1, 1, 0.0);
    c.chunks = vec![(0.1, 1), (0.16, 1)];
    c.output_tokens = 3;
    let s = summarize(&[a, b, c], &SummaryConfig::default());
    let got = format!(
        "chunk mean {:.1} median {:.1} max {:.1}; token requests {} mean {:.1} median {:.1} p99 {:.1}",
        s.mean_itl_ms,
        s.median_itl_ms,
        s.p99_itl_ms,
        s.itl_per_token_requests,
        s.mean_itl_per_token_ms,
        s.median_itl_per_token_ms,
        s.p99_itl_per_token_ms
    );
    // Per chunk: 10, 10, 10 (a), 40 (b), 60 (c). Per token: 10, 10, 10 (a), 20, 20 (b).
    assert_eq!(got, "chunk mean 26.0 median 10.0 max 59.2; token requests 2 mean 14.0 median 10.0 p99 20.0");
}

#[test]
fn queue_wait_is_not_client_lag() {
    // Four requests due every 250 ms behind a cap: 1 and 2 go out on time (0.5 ms late), 3
    // waits 400 ms for a slot and goes out 1 ms after it frees, 4 waits 100 ms and is 2 ms late.
    let timing =
        [(0.0, None, 0.0005), (0.25, None, 0.2505), (0.5, Some(0.9), 0.901), (0.75, Some(0.85), 0.852)];
    let mut records: Vec<RequestRecord> = (0..4u64)
        .zip(timing)
        .map(|(id, (intended, queued_until, sent))| {
            let mut r = completed(id, sent, 0.1, 2, 0.01);
            (r.intended, r.queued_until) = (intended, queued_until);
            r
        })
        .collect();
    let s = summarize(&records, &SummaryConfig::default());
    let got = format!(
        "lag mean {:.3} max {:.3} limited {}; queued {} wait mean {:.1} median {:.1} p99 {:.1}",
        s.client_lag_mean_ms,
        s.client_lag_max_ms,
        s.client_limited,
        s.queued_requests,
        s.mean_client_queue_time_ms,
        s.median_client_queue_time_ms,
        s.p99_client_queue_time_ms
    );
    assert_eq!(got, "lag mean 1.000 max 2.000 limited false; queued 2 wait mean 125.0 median 50.0 p99 391.0");
    let table = render_table(&s);
    let row = |label: &str| {
        let line = table.lines().find(|l| l.starts_with(label));
        line.map(|l| l[label.len()..].trim().to_owned())
    };
    let rows = [row("Requests queued (max concurrency):"), row("Median Client Queue Time (ms):")];
    assert_eq!(rows, [Some("2".to_owned()), Some("50.00".to_owned())], "{table}");
    // The table says nothing of a queue no request waited in.
    records[2].queued_until = None;
    records[3].queued_until = None;
    assert!(!render_table(&summarize(&records, &SummaryConfig::default())).contains("Queue"));
}

#[test]
fn client_limited_means_the_schedule_was_not_kept() {
    // 100 requests at `gap` seconds apart; the last `late` of them sent `lag_ms` late.
    let check = |gap: f64, late: u64, lag_ms: f64, expect: &str| {
        let records: Vec<RequestRecord> = (0..100u64)
            .map(|i| {
                let mut r = completed(i, gap * i as f64, 0.05, 2, 0.01);
                if i >= 100 - late {
                    r.sent += lag_ms / 1000.0;
                }
                r
            })
            .collect();
        let s = summarize(&records, &SummaryConfig::default());
        let got = format!(
            "p99 {:.1} bound {:.1} limited {}",
            s.client_lag_p99_ms, s.client_lag_threshold_ms, s.client_limited
        );
        assert_eq!(got, expect, "gap {gap} late {late} lag {lag_ms}");
    };
    // 4 req/s: two sends 15 ms late out of 100 leave the schedule kept (bound: 10% of 250 ms).
    check(0.25, 2, 15.0, "p99 15.0 bound 25.0 limited false");
    // Late by a fifth of the gap: not kept.
    check(0.25, 2, 50.0, "p99 50.0 bound 25.0 limited true");
    // 100 req/s: the 10 ms floor is the bound, and 15 ms is a step and a half behind.
    check(0.01, 2, 15.0, "p99 15.0 bound 10.0 limited true");
    // Everything at once: the floor.
    check(0.0, 2, 5.0, "p99 5.0 bound 10.0 limited false");
    check(0.0, 2, 12.0, "p99 12.0 bound 10.0 limited true");
}

#[test]
fn summary_of_a_hand_built_run() {
    let cfg = SummaryConfig {
        engine: "emulated".into(),
        tier: "cpu".into(),
        emulated: true,
        slo: Some(Slo::parse(&["ttft:150", "tpot:50"]).unwrap()),
        ..SummaryConfig::default()
    };
    let summary = summarize(&run(), &cfg);
    assert_eq!(summary.completed + summary.failed, summary.sent);
    insta::assert_json_snapshot!(summary);
}

#[test]
fn table_rendering_is_labelled_emulated() {
    let cfg = SummaryConfig {
        engine: "emulated".into(),
        tier: "cpu".into(),
        emulated: true,
        slo: Some(Slo::parse(&["e2el:1000"]).unwrap()),
        ..SummaryConfig::default()
    };
    let table = render_table(&summarize(&run(), &cfg));
    insta::assert_snapshot!(table);
    let real = render_table(&summarize(&run(), &SummaryConfig { emulated: false, ..cfg }));
    assert!(!real.contains("EMULATED"), "{real}");
}

#[test]
fn zero_completed_gives_zero_latencies() {
    let records = vec![
        failed(0, 1.0, 2.0, RequestError::Connect { message: "refused".into() }),
        failed(1, 1.5, 4.0, RequestError::Connect { message: "refused".into() }),
    ];
    let s = summarize(&records, &SummaryConfig::default());
    let got = format!(
        "sent={} completed={} failed={} by_class={:?} duration={} ttft={} p99_e2el={} itl={} source={}",
        s.sent,
        s.completed,
        s.failed,
        s.failed_by_class,
        s.duration,
        s.mean_ttft_ms,
        s.p99_e2el_ms,
        s.mean_itl_ms,
        s.output_token_source.as_str()
    );
    assert_eq!(
        got,
        r#"sent=2 completed=0 failed=2 by_class={"connect": 2} duration=3 ttft=0 p99_e2el=0 itl=0 source=none"#
    );
    assert_eq!(s.request_goodput, None);

    let empty = summarize(
        &[],
        &SummaryConfig { slo: Some(Slo::parse(&["ttft:1"]).unwrap()), ..SummaryConfig::default() },
    );
    let got =
        (empty.sent, empty.duration, empty.request_throughput, empty.request_goodput, empty.client_limited);
    assert_eq!(got, (0, 0.0, 0.0, Some(0.0), false));
}

#[test]
fn goodput_counts_requests_meeting_every_slo() {
    // ttft 100/200/300 ms; tpot 20/10/(none: 1 token); e2el 180/300/300 ms.
    let records = vec![
        completed(1, 0.0, 0.1, 5, 0.02),
        completed(2, 0.0, 0.2, 11, 0.01),
        completed(3, 0.0, 0.3, 1, 0.0),
    ];
    let check = |slo: &[&str], expect_good: f64| {
        let cfg = SummaryConfig { slo: Some(Slo::parse(slo).unwrap()), ..SummaryConfig::default() };
        let s = summarize(&records, &cfg);
        // duration = 0.3 s, so goodput = good / 0.3
        let good = s.request_goodput.unwrap() * s.duration;
        assert!((good - expect_good).abs() < 1e-9, "{slo:?}: {good} good, want {expect_good}");
    };
    check(&["ttft:150"], 1.0);
    check(&["ttft:200"], 2.0);
    check(&["ttft:1000"], 3.0);
    check(&["tpot:15"], 2.0); // 10 ms, and the 1-token request counts as tpot 0
    check(&["ttft:250 tpot:15"], 1.0);
    check(&["e2el:200"], 1.0);
    check(&["e2el:301", "tpot:100"], 3.0);
    check(&["ttft:0"], 0.0);
}

#[test]
fn slo_parse_errors_name_the_argument() {
    let check = |args: &[&str], expect: &str| {
        let got = match Slo::parse(args) {
            Ok(slo) => format!("ok: {slo}"),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "{args:?}");
    };
    check(&["ttft:500", "tpot:50"], "ok: ttft:500 tpot:50");
    check(&["e2el:2000.5 ttft:1"], "ok: ttft:1 e2el:2000.5");
    check(&[], "ok: ");
    check(&["ttft"], r#"error: goodput "ttft": expected KEY:MILLISECONDS, e.g. ttft:500"#);
    check(&["itl:5"], r#"error: goodput "itl:5": unknown metric "itl" (expected ttft, tpot or e2el)"#);
    check(&["ttft:-1"], r#"error: goodput "ttft:-1": "-1" is not a non-negative number of milliseconds"#);
    check(
        &["tpot:fast"],
        r#"error: goodput "tpot:fast": "fast" is not a non-negative number of milliseconds"#,
    );
    check(&["ttft:5", "ttft:6"], r#"error: goodput "ttft:6": metric "ttft" given twice"#);
}

#[test]
fn csv_rows_flatten_records() {
    let mut out = csv_header().join(",");
    for r in run() {
        let row = csv_row(&r);
        assert_eq!(row.len(), csv_header().len());
        out.push('\n');
        out.push_str(&row.join(","));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn records_round_trip_through_json() {
    for r in run() {
        let line = serde_json::to_string(&r).unwrap();
        let back: RequestRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r, "{line}");
    }
}
