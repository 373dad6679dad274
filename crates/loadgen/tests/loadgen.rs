//! The load generator against a scripted server on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::{config, plan, request, run, start, Behavior, Fault, MODEL};
use loadgen::{Api, Error, LoadgenConfig, ResultWriter};
use stats::{RequestRecord, TokenSource};
use workload::{ChatMessage, Dependency, Limits, Mode, Plan, Prompt};

// ---------------------------------------------------------------------------------------------
// Fault matrix

/// Three requests of 6 tokens against a server with `fault` (or a closed port); the outcome is
/// rendered as `sent completed failed | class: detail` of each distinct failure.
async fn check(fault: Option<Fault>, expect: &str) {
    let server = fault.map(|fault| start(Behavior { fault, ..Default::default() }));
    let url = server.as_ref().map_or_else(common::refused_url, |s| s.url.clone());
    let mut cfg = config(&url);
    cfg.stall_timeout = Duration::from_millis(300);
    let (out, dir) = run(&plan(3, 6, Mode::Open), &cfg).await;

    let mut failures: Vec<String> = out
        .records
        .iter()
        .filter_map(|r| r.error.as_ref())
        .map(|e| {
            let detail = match e {
                stats::RequestError::HttpStatus { status, body } => {
                    format!("{status} body {} bytes", body.len())
                }
                e => e.detail().replace(&url, "URL"),
            };
            format!("{}: {detail}", e.class())
        })
        .collect();
    failures.dedup();
    let completed = out.records.iter().filter(|r| r.error.is_none()).count();
    let got = format!(
        "sent={} completed={completed} failed={} | {}",
        out.sent,
        out.summary.failed,
        failures.join(" / ")
    );
    assert_eq!(got, expect);
    assert_eq!(out.sent, 3);
    assert_eq!(out.records.len(), 3);
    assert_eq!(out.is_success(), completed == 3);
    let lines = std::fs::read_to_string(dir.path().join("requests.jsonl")).expect("requests.jsonl");
    assert_eq!(lines.lines().count(), 3);
}

#[tokio::test]
async fn fault_matrix() {
    check(Some(Fault::None), "sent=3 completed=3 failed=0 | ").await;
    check(Some(Fault::Status(500)), "sent=3 completed=0 failed=3 | http_status: 500 body 512 bytes").await;
    check(Some(Fault::Status(429)), "sent=3 completed=0 failed=3 | http_status: 429 body 512 bytes").await;
    check(
        Some(Fault::MalformedAfter(2)),
        "sent=3 completed=0 failed=3 | malformed_event: EOF while parsing an object at line 1 column 25 in event \"{\\\"choices\\\": [{\\\"text\\\": \\\"a\\\"\"",
    )
    .await;
    check(
        Some(Fault::ErrorEventAfter(1)),
        "sent=3 completed=0 failed=3 | stream_cut: server sent an error event: {\"error\":{\"object\":\"error\",\"message\":\"engine died\",\"code\":500}}",
    )
    .await;
    check(
        Some(Fault::EndAfter(2)),
        "sent=3 completed=0 failed=3 | stream_cut: the stream ended before [DONE] and before any finish_reason",
    )
    .await;
    check(
        Some(Fault::StallAfter(2)),
        "sent=3 completed=0 failed=3 | timeout: no data for the stall timeout of 0.3 s",
    )
    .await;
    check(
        Some(Fault::StallHeaders),
        "sent=3 completed=0 failed=3 | timeout: no response headers within the stall timeout of 0.3 s",
    )
    .await;
}

#[tokio::test]
async fn refused_and_dropped_connections() {
    for (fault, class, cause) in [
        (None, "connect", "error sending request"),
        (Some(Fault::DropAfter(2)), "stream_cut", "error decoding response body"),
    ] {
        // Chunks 10 ms apart, so the headers and two chunks are out before the connection drops.
        let server = fault
            .map(|fault| start(Behavior { fault, itl: Duration::from_millis(10), ..Default::default() }));
        let url = server.as_ref().map_or_else(common::refused_url, |s| s.url.clone());
        let (out, _dir) = run(&plan(3, 6, Mode::Open), &config(&url)).await;
        assert_eq!((out.sent, out.summary.completed, out.summary.failed), (3, 0, 3));
        assert!(!out.is_success());
        for r in &out.records {
            let e = r.error.as_ref().expect("failed");
            assert_eq!(e.class(), class, "{e:?}");
            assert!(e.detail().contains(cause), "{e:?}");
        }
        let msg = out.failure_message().expect("a failed run says why");
        assert!(
            msg.starts_with(&format!("3 of 3 requests failed (100.0%, allowed 0.0%): {class} 3")),
            "{msg}"
        );
    }
}

/// A root the HTTP/1.1 client does not take (user info in the URL) goes through reqwest, with the
/// same records.
#[tokio::test]
async fn unusual_roots_go_through_reqwest() {
    let server = start(Behavior { itl: Duration::from_millis(1), ..Default::default() });
    let url = server.url.replace("http://", "http://user:secret@");
    let (out, _dir) = run(&plan(3, 6, Mode::Closed { concurrency: 2 }), &config(&url)).await;
    assert_eq!((out.sent, out.summary.completed, out.summary.failed), (3, 3, 0));
    for r in &out.records {
        assert_eq!((r.output_tokens, r.chunks.len()), (6, 6), "{r:?}");
        assert!(r.first_byte.is_some() && r.first_token.is_some());
    }
}

#[tokio::test]
async fn request_timeout_is_a_timeout() {
    let server = start(Behavior {
        ttft: Duration::from_millis(10),
        itl: Duration::from_millis(50),
        ..Default::default()
    });
    let mut cfg = config(&server.url);
    cfg.request_timeout = Duration::from_millis(200);
    let (out, _dir) = run(&plan(1, 100, Mode::Open), &cfg).await;
    let r = &out.records[0];
    assert_eq!(
        r.error,
        Some(stats::RequestError::Timeout { message: "request exceeded the total timeout of 0.2 s".into() })
    );
    assert!(r.chunks.len() >= 2, "the chunks before the timeout are kept: {}", r.chunks.len());
    assert_eq!(r.token_source, TokenSource::Chunks);
}

#[tokio::test]
async fn tolerated_failures() {
    let server =
        start(Behavior { fault: Fault::Status(503), fault_if_max_tokens: Some(7), ..Default::default() });
    let mut p = plan(4, 5, Mode::Open);
    p.requests[3].max_tokens = 7;
    let mut cfg = config(&server.url);
    cfg.max_failed_fraction = 0.25;
    let (out, _dir) = run(&p, &cfg).await;
    assert_eq!((out.summary.completed, out.summary.failed), (3, 1));
    assert!(out.is_success());
    cfg.max_failed_fraction = 0.2;
    let (out, _dir) = run(&p, &cfg).await;
    assert!(!out.is_success());
    assert_eq!(
        out.failure_message().as_deref(),
        Some("1 of 4 requests failed (25.0%, allowed 20.0%): http_status 1")
    );
}

// ---------------------------------------------------------------------------------------------
// Token accounting

#[tokio::test]
async fn chat_role_chunk_is_not_a_token_and_usage_less_streams_count_chunks() {
    let server = start(Behavior { ttft: Duration::from_millis(50), usage: false, ..Default::default() });
    let msgs = vec![ChatMessage { role: "user".into(), content: "hello".into() }];
    let p = Plan {
        requests: vec![request(0, Prompt::Chat(msgs), 5, None)],
        mode: Mode::Open,
        limits: Limits::default(),
    };
    let (out, _dir) = run(&p, &config(&server.url)).await;
    let r = &out.records[0];
    assert_eq!(r.error, None);
    let first_byte = r.first_byte.expect("first byte");
    let first_token = r.first_token.expect("first token");
    assert!(first_token - first_byte >= 0.045, "the role-only chunk at once is not the first token: {r:?}");
    assert_eq!((r.output_tokens, r.token_source), (5, TokenSource::Chunks));
    assert_eq!(r.chunks.len(), 5);
    assert_eq!((r.prompt_tokens, r.cached_tokens), (None, None));
}

#[tokio::test]
async fn usage_gives_tokens_and_cached_tokens() {
    let server = start(Behavior { cached_tokens: Some(2), ..Default::default() });
    let mut p = plan(1, 9, Mode::Open);
    p.requests[0].prompt_len = 0; // the record must hold the server's count, not the plan's
    let (out, _dir) = run(&p, &config(&server.url)).await;
    let r = &out.records[0];
    assert_eq!(
        (r.output_tokens, r.token_source, r.prompt_tokens, r.cached_tokens),
        (9, TokenSource::Usage, Some(4), Some(2))
    );
}

/// A 100k-token prompt (about 600 KB of JSON) whose echo comes back as one 600 KB event.
#[tokio::test]
async fn long_prompt_round_trip() {
    let server = start(Behavior { echo: true, ..Default::default() });
    let tokens: Vec<u32> = (0..100_000u32).map(|i| 10_000 + i % 90_000).collect();
    let mut req = request(0, Prompt::Tokens(tokens), 2_000, None);
    req.prompt_len = 0;
    let p = Plan { requests: vec![req], mode: Mode::Open, limits: Limits::default() };
    let (out, _dir) = run(&p, &config(&server.url)).await;
    let r = &out.records[0];
    assert_eq!(r.error, None);
    assert_eq!((r.prompt_tokens, r.output_tokens, r.chunks.len()), (Some(100_000), 2_000, 2_000));
}

// ---------------------------------------------------------------------------------------------
// Scheduling

#[tokio::test]
async fn sessions_wait_for_their_parent_and_think() {
    let server = start(Behavior {
        ttft: Duration::from_millis(20),
        fault: Fault::Status(500),
        fault_if_max_tokens: Some(3),
        ..Default::default()
    });
    let think = Duration::from_millis(100);
    let mut requests = vec![
        request(0, Prompt::Text("turn 1".into()), 3, Some(Duration::ZERO)),
        request(1, Prompt::Text("turn 2".into()), 4, None),
        request(2, Prompt::Text("turn 3".into()), 4, None),
    ];
    requests[1].depends_on = Some(Dependency { parent: 0, think_time: think });
    requests[2].depends_on = Some(Dependency { parent: 1, think_time: think });
    for (turn, r) in requests.iter_mut().enumerate() {
        r.meta.session = Some(7);
        r.meta.turn = Some(turn as u32);
    }
    for mode in [Mode::Open, Mode::Closed { concurrency: 4 }] {
        let p = Plan { requests: requests.clone(), mode, limits: Limits::default() };
        let (out, _dir) = run(&p, &config(&server.url)).await;
        let r = &out.records;
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].error.as_ref().map(|e| e.class()), Some("http_status"), "the parent failed");
        assert_eq!((r[1].error.as_ref(), r[2].error.as_ref()), (None, None), "children are still sent");
        for (parent, child) in [(&r[0], &r[1]), (&r[1], &r[2])] {
            let gap = child.sent - parent.end;
            assert!((0.099..0.110).contains(&gap), "{mode:?}: think time {gap}");
            assert!((child.intended - parent.end - 0.1).abs() < 1e-3, "{mode:?}: intended {child:?}");
        }
        assert_eq!((r[2].session, r[2].turn), (Some(7), Some(2)));
    }
}

#[tokio::test]
async fn duration_limit_stops_sending() {
    let server = start(Behavior::default());
    let at = |ms| Some(Duration::from_millis(ms));
    let requests = [0, 20, 10_000]
        .iter()
        .enumerate()
        .map(|(i, &t)| request(i as u64, Prompt::Text("x".into()), 2, at(t)))
        .collect();
    let p = Plan {
        requests,
        mode: Mode::Open,
        limits: Limits { duration: Some(Duration::from_millis(200)), ..Default::default() },
    };
    let started = Instant::now();
    let (out, _dir) = run(&p, &config(&server.url)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "does not wait for unsent requests");
    assert_eq!((out.sent, out.not_sent, out.records.len()), (2, 1, 2));
}

/// A stop (the lab's Ctrl-C) sends nothing more and ends the requests in flight at once, each
/// recorded as `interrupted` with the chunks it had: every request sent has its record.
#[tokio::test]
async fn a_stop_records_the_requests_in_flight_as_interrupted() {
    let server = start(Behavior {
        ttft: Duration::from_millis(20),
        itl: Duration::from_millis(50),
        ..Default::default()
    });
    let at = |ms| Some(Duration::from_millis(ms));
    // Two long streams in flight at the stop, one short one finished before it, one not yet due.
    let requests = [(0, 2), (0, 100), (10, 100), (60_000, 2)]
        .iter()
        .enumerate()
        .map(|(i, &(t, max_tokens))| request(i as u64, Prompt::Text("x".into()), max_tokens, at(t)))
        .collect();
    let p = Plan { requests, mode: Mode::Open, limits: Limits::default() };
    let mut cfg = config(&server.url);
    let stop = tokio_util::sync::CancellationToken::new();
    cfg.stop = Some(stop.clone());
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.cancel();
    });
    let started = Instant::now();
    let (out, dir) = run(&p, &cfg).await;
    canceller.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the stop ends the run at once: {:?}",
        started.elapsed()
    );
    assert_eq!((out.sent, out.not_sent), (3, 1));
    let classes: Vec<Option<&str>> =
        out.records.iter().map(|r| r.error.as_ref().map(|e| e.class())).collect();
    assert_eq!(classes, [None, Some("interrupted"), Some("interrupted")]);
    for r in &out.records[1..] {
        assert!(!r.chunks.is_empty(), "request {}: the chunks before the stop are kept", r.id);
    }
    assert_eq!((out.summary.completed, out.summary.failed), (1, 2));
    let lines = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 3, "requests.jsonl has a line for every request sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_is_flagged_and_excluded() {
    let server = start(Behavior::default());
    let mut p = plan(5, 3, Mode::Closed { concurrency: 2 });
    p.limits.warmup = 2;
    let (out, _dir) = run(&p, &config(&server.url)).await;
    let flags: Vec<bool> = out.records.iter().map(|r| r.warmup).collect();
    assert_eq!(flags, [true, true, false, false, false]);
    assert_eq!((out.summary.sent, out.summary.warmup_excluded), (3, 2));
    for r in &out.records {
        assert_eq!(r.intended, r.sent, "closed loop: intended is the send time");
    }
}

/// The warm-up is a phase of its own: every warm-up request has ended before the caller's hook
/// runs, and no measured request goes out before the hook has returned (what an engine counted
/// by then is the warm-up's alone). A measured turn whose parent was a warm-up request waits too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_requests_wait_for_the_end_of_the_warm_up_and_its_hook() {
    use std::sync::{Arc, Mutex};
    let server = start(Behavior { ttft: Duration::from_millis(30), ..Behavior::default() });
    for mode in [Mode::Closed { concurrency: 4 }, Mode::Open] {
        let mut p = plan(8, 3, mode);
        p.limits.warmup = 3;
        // Request 3 is the next turn of warm-up request 2, due as soon as it has ended.
        p.requests[3].depends_on = Some(Dependency { parent: 2, think_time: Duration::ZERO });
        let origin = Instant::now();
        let hook_at: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
        let mut cfg = config(&server.url);
        let seen = Arc::clone(&hook_at);
        cfg.on_measured_start = Some(Arc::new(move || {
            let seen = Arc::clone(&seen);
            Box::pin(async move {
                let called = origin.elapsed().as_secs_f64();
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen.lock().unwrap().push((called, origin.elapsed().as_secs_f64()));
            })
        }));
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = ResultWriter::in_dir(tmp.path()).unwrap();
        let out = loadgen::run(&p, &cfg, &mut sink, origin).await.expect("run");
        let hooks = hook_at.lock().unwrap().clone();
        assert_eq!(hooks.len(), 1, "{mode:?}: the hook runs once");
        let (called, returned) = hooks[0];
        assert_eq!(out.summary.completed, 5, "{mode:?}");
        let warm_end = out.records.iter().filter(|r| r.warmup).map(|r| r.end).fold(0.0, f64::max);
        let first_measured =
            out.records.iter().filter(|r| !r.warmup).map(|r| r.sent).fold(f64::MAX, f64::min);
        assert!(
            warm_end <= called,
            "{mode:?}: a warm-up request ended at {warm_end} after the hook, {called}"
        );
        assert!(
            returned <= first_measured,
            "{mode:?}: a measured request went out at {first_measured}, before the hook returned at {returned}"
        );
        let start = out.measured_start_s.expect("a run with warm-up has a measured start");
        assert!(
            returned <= start && start <= first_measured,
            "{mode:?}: {returned} {start} {first_measured}"
        );
        // A measured request is not late for the wait: its intended time is the phase's start.
        for r in out.records.iter().filter(|r| !r.warmup) {
            assert!(
                r.intended >= start - 1e-6,
                "{mode:?}: request {} intended at {} < {start}",
                r.id,
                r.intended
            );
        }
    }
    // Without warm-up requests there is no phase and no hook.
    let mut cfg = config(&server.url);
    cfg.on_measured_start = Some(std::sync::Arc::new(|| panic!("no warm-up, no hook")));
    let (out, _dir) = run(&plan(3, 2, Mode::Open), &cfg).await;
    assert_eq!((out.summary.completed, out.measured_start_s), (3, None));
}

/// Left to the caller, `summary.json` is not written by the run; what it would hold is
/// [`loadgen::RunOutcome::summary_json`].
#[tokio::test]
async fn summary_json_can_be_left_to_the_caller() {
    let server = start(Behavior::default());
    let mut cfg = config(&server.url);
    let (written, dir) = run(&plan(3, 2, Mode::Open), &cfg).await;
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk, written.summary_json());
    assert_eq!(on_disk["completed"].as_u64(), Some(3));
    cfg.summary_file = loadgen::SummaryOutput::Caller;
    let (out, dir) = run(&plan(3, 2, Mode::Open), &cfg).await;
    assert!(!dir.path().join("summary.json").exists());
    assert_eq!(out.summary_json()["completed"].as_u64(), Some(3));
}

/// The run's connections are opened before its clock starts, one per request slot, and
/// `summary.json` says so; cold connections are opened by the requests themselves.
#[tokio::test]
async fn connections_are_warmed_before_the_clock_unless_cold() {
    let server = start(Behavior::default());
    let p = plan(20, 4, Mode::Closed { concurrency: 6 });
    for (connections, expect) in [(loadgen::Connections::Warm, Some(6)), (loadgen::Connections::Cold, None)] {
        let mut cfg = config(&server.url);
        cfg.connections = connections;
        let (out, dir) = run(&p, &cfg).await;
        assert_eq!(out.summary.completed, 20);
        assert_eq!(out.connection_warmup.map(|w| w.connections), expect, "{connections:?}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["connection_warmup"]["connections"].as_u64(), expect, "{summary}");
        assert_eq!(summary["client_threads"].as_u64(), Some(out.threads as u64));
        // The vllm bench serve names are still there, at the top level.
        assert_eq!(summary["completed"].as_u64(), Some(20));
    }
}

/// Several worker threads share the plan: every request is sent once, by one of them, with
/// its own record; closed-loop concurrency is split between them and never exceeded.
#[tokio::test]
async fn worker_threads_share_the_plan() {
    let server = start(Behavior { itl: Duration::from_millis(2), ..Default::default() });
    let p = plan(60, 5, Mode::Closed { concurrency: 5 });
    let mut cfg = config(&server.url);
    cfg.threads = Some(2);
    let (out, dir) = run(&p, &cfg).await;
    assert_eq!(out.threads, 2);
    assert_eq!((out.sent, out.summary.completed, out.summary.failed), (60, 60, 0));
    let ids: Vec<u64> = out.records.iter().map(|r| r.id).collect();
    assert_eq!(ids, (0..60).collect::<Vec<_>>(), "one record per request, in id order");
    assert!(out.summary.max_concurrent_requests <= 5, "{}", out.summary.max_concurrent_requests);
    assert!(out.records.iter().all(|r| r.output_tokens == 5 && r.prompt_blocks.is_some()));
    let lines = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 60);
    // More threads than request slots: one per slot.
    cfg.threads = Some(8);
    let (out, _dir) = run(&plan(4, 2, Mode::Closed { concurrency: 3 }), &cfg).await;
    assert_eq!((out.threads, out.summary.completed), (3, 4));
}

// ---------------------------------------------------------------------------------------------
// Configuration and files

#[tokio::test]
async fn model_is_discovered() {
    let server = start(Behavior::default());
    let mut cfg = config(&format!("{}/v1/", server.url));
    cfg.model = None;
    let (out, _dir) = run(&plan(1, 2, Mode::Open), &cfg).await;
    assert_eq!(out.model, MODEL);
    assert_eq!(out.summary.completed, 1);

    let mut cfg = config(&common::refused_url());
    cfg.model = None;
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = ResultWriter::in_dir(tmp.path()).unwrap();
    let err = loadgen::run(&plan(1, 2, Mode::Open), &cfg, &mut sink, Instant::now()).await.unwrap_err();
    assert!(matches!(err, Error::ModelDiscovery { .. }), "{err}");
}

#[tokio::test]
async fn bad_plans_are_refused_before_sending() {
    async fn check(p: &Plan, cfg: &LoadgenConfig, expect: &str) {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = ResultWriter::in_dir(tmp.path()).unwrap();
        let err = loadgen::run(p, cfg, &mut sink, Instant::now()).await.unwrap_err();
        assert_eq!(err.to_string(), expect);
    }
    let mut cfg = config("http://127.0.0.1:9");
    let msgs = vec![ChatMessage { role: "user".into(), content: "x".into() }];
    let mut p = Plan {
        requests: vec![request(0, Prompt::Chat(msgs), 2, None)],
        mode: Mode::Open,
        limits: Limits::default(),
    };
    cfg.api = Api::Completions;
    check(&p, &cfg, "request 0: a chat prompt cannot go to /v1/completions (use the chat API)").await;
    cfg.api = Api::Auto;
    p.requests[0].depends_on = Some(Dependency { parent: 0, think_time: Duration::ZERO });
    check(&p, &cfg, "request 0: depends on request 0, which does not come before it").await;
    p.requests[0].id = 5;
    check(&p, &cfg, "request 5: found at index 0; request ids must equal their index").await;
    p.requests.clear();
    check(&p, &cfg, "the plan has no requests").await;
}

#[tokio::test]
async fn result_files() {
    let server = start(Behavior { cached_tokens: Some(1), ..Default::default() });
    let mut cfg = config(&server.url);
    cfg.summary.engine = "external".into();
    cfg.summary.tier = "baseline".into();
    let (out, dir) = run(&plan(3, 4, Mode::Open), &cfg).await;
    let jsonl = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    let mut from_file: Vec<RequestRecord> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    from_file.sort_by_key(|r| r.id);
    assert_eq!(from_file, out.records);
    let csv = std::fs::read_to_string(dir.path().join("requests.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with(&stats::csv_header().join(",")), "{csv}");
    let summary: stats::Summary =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary, out.summary);
    assert_eq!(
        (summary.engine.as_str(), summary.tier.as_str(), summary.completed, summary.total_output_tokens),
        ("external", "baseline", 3, 12)
    );
    assert_eq!(summary.cached_tokens_total, 3);
}

/// A run killed mid-way keeps every request that finished: they are in the file while it runs.
#[tokio::test]
async fn finished_records_are_on_disk_while_the_run_goes_on() {
    let server =
        start(Behavior { fault: Fault::StallAfter(1), fault_if_max_tokens: Some(99), ..Default::default() });
    let mut p = plan(3, 2, Mode::Open);
    p.requests[2].max_tokens = 99; // stalls until the stall timeout (10 s)
    let cfg = config(&server.url);
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = ResultWriter::in_dir(tmp.path()).unwrap();
    let path = tmp.path().join("requests.jsonl");
    let mut run = Box::pin(loadgen::run(&p, &cfg, &mut sink, Instant::now()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        tokio::select! {
            r = run.as_mut() => panic!("the run should still wait for the stalled request: {:?}", r.map(|o| o.sent)),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() == 2 {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "records not on disk: {text:?}");
    };
    // "Kill" the run: what is on disk is complete lines of the finished requests.
    drop(run);
    let ids: Vec<u64> = lines.lines().map(|l| serde_json::from_str::<RequestRecord>(l).unwrap().id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 1]);
}

/// A full disk: the run stops with an error naming the file; nothing panics.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn write_errors_name_the_file() {
    let server = start(Behavior::default());
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = ResultWriter::in_dir(tmp.path()).unwrap();
    std::os::unix::fs::symlink("/dev/full", tmp.path().join("requests.jsonl")).unwrap();
    let err = loadgen::run(&plan(2, 2, Mode::Open), &config(&server.url), &mut sink, Instant::now())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("writing ") && msg.contains("requests.jsonl"), "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
}

/// The `requests.jsonl` line format, times redacted.
#[tokio::test]
async fn record_format() {
    let server = start(Behavior { cached_tokens: Some(2), tokens_per_chunk: 2, ..Default::default() });
    let mut cfg = config(&server.url);
    cfg.continuous_usage = true;
    let mut p = plan(2, 4, Mode::Open);
    p.requests[1].meta.session = Some(3);
    p.requests[1].meta.turn = Some(1);
    p.requests[1].max_tokens = 5;
    let (out, dir) = run(&p, &cfg).await;
    let jsonl = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    let mut lines: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines.sort_by_key(|l| l["id"].as_u64());
    assert_eq!(lines.len(), out.records.len());
    insta::assert_json_snapshot!(lines, {
        "[].intended" => "[time]",
        "[].sent" => "[time]",
        "[].first_byte" => "[time]",
        "[].first_token" => "[time]",
        "[].end" => "[time]",
        "[].chunks[][0]" => "[time]",
    });
}

/// A raw HTTP/1.1 server that answers each request with a complete SSE stream, advertises
/// keep-alive, and then closes the connection anyway (as llama.cpp's server does). A client that
/// reuses the pooled connection meets a closed socket; the request must still complete.
#[tokio::test]
async fn server_closing_kept_alive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head and the body (Content-Length) of one request.
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                let body = concat!(
                    "data: {\"choices\":[{\"index\":0,\"text\":\"a\",\"finish_reason\":null}]}\n\n",
                    "data: {\"choices\":[{\"index\":0,\"text\":\"b\",\"finish_reason\":\"length\"}]}\n\n",
                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\n",
                    "data: [DONE]\n\n"
                );
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                // Close a moment later, once the client has put the connection back in its pool
                // and written the next request on it.
                tokio::time::sleep(Duration::from_millis(30)).await;
                drop(sock);
            });
        }
    });
    let (out, _dir) = run(&plan(6, 2, Mode::Closed { concurrency: 1 }), &config(&url)).await;
    server.abort();
    let errors: Vec<_> = out.records.iter().filter_map(|r| r.error.as_ref()).collect();
    assert!(errors.is_empty(), "requests on closed kept-alive connections failed: {errors:?}");
    assert_eq!((out.sent, out.summary.completed), (6, 6));
    assert!(out.records.iter().all(|r| r.output_tokens == 2 && r.token_source == TokenSource::Usage));
}

/// Each record carries its prompt's chained 16-token block hashes (full blocks only), so the
/// cache simulator can replay the run: equal prefixes give equal leading hashes.
#[tokio::test]
async fn records_carry_prompt_block_hashes() {
    let server = start(Behavior::default());
    let shared: Vec<u32> = (0..32).collect();
    let mut other = shared.clone();
    other.extend(100..110u32);
    other[20] = 999; // the second block differs
    let p = Plan {
        requests: vec![
            request(0, Prompt::Tokens(shared.clone()), 2, None),
            request(1, Prompt::Tokens(other), 2, None),
        ],
        mode: Mode::Closed { concurrency: 1 },
        limits: Limits::default(),
    };
    let (out, _dir) = run(&p, &config(&server.url)).await;
    let blocks: Vec<&Vec<u64>> =
        out.records.iter().map(|r| r.prompt_blocks.as_ref().expect("recorded")).collect();
    assert_eq!((blocks[0].len(), blocks[1].len()), (2, 2), "42 tokens make 2 full blocks");
    assert_eq!(blocks[0][0], blocks[1][0], "the same first block");
    assert_ne!(blocks[0][1], blocks[1][1], "a different second block");
}
