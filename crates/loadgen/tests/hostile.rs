//! Hostile servers: each case is classified, keeps `completed + failed == sent`, and panics
//! nowhere. (Memory under the size caps is measured in `hostile_memory.rs`, a process of its
//! own.)

mod common;
mod raw;

use std::time::{Duration, Instant};

use common::{config, plan, run};
use loadgen::LoadgenConfig;
use raw::{head, sse_body, sse_head, start_raw, with_length, ReqInfo, Step};
use workload::Mode;

/// The outcome of `n` requests against a raw server playing `script`: `sent completed failed
/// received | class: detail` of each distinct failure, and the tokens of the completed ones.
async fn outcome(
    n: u64,
    mode: Mode,
    cfg: impl FnOnce(&mut LoadgenConfig),
    script: impl Fn(ReqInfo) -> Vec<Step> + Send + Sync + 'static,
) -> String {
    let server = start_raw(script);
    let mut c = config(&server.url);
    c.stall_timeout = Duration::from_millis(300);
    c.request_timeout = Duration::from_secs(5);
    cfg(&mut c);
    let (out, dir) = run(&plan(n, 2, mode), &c).await;
    let completed = out.records.iter().filter(|r| r.error.is_none()).count() as u64;
    assert_eq!(out.sent, n);
    assert_eq!(out.records.len() as u64, n);
    assert_eq!(completed + out.summary.failed, out.sent, "completed + failed == sent");
    let lines = std::fs::read_to_string(dir.path().join("requests.jsonl")).expect("requests.jsonl");
    assert_eq!(lines.lines().count() as u64, n, "one line per request");
    let mut failures: Vec<String> = out
        .records
        .iter()
        .filter_map(|r| r.error.as_ref())
        .map(|e| format!("{}: {}", e.class(), e.detail().replace(&server.url, "URL")))
        .collect();
    failures.sort();
    failures.dedup();
    let mut tokens: Vec<String> = out
        .records
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| format!("{}/{:?}/{}", r.output_tokens, r.token_source, r.chunks.len()))
        .collect();
    tokens.dedup();
    let received = server.received.load(std::sync::atomic::Ordering::SeqCst);
    format!(
        "sent={} completed={completed} failed={} received={received} tokens=[{}] | {}",
        out.sent,
        out.summary.failed,
        tokens.join(" "),
        failures.join(" / ")
    )
}

fn sse(body: &str) -> Vec<Step> {
    vec![Step::Write(sse_head()), Step::Write(body.as_bytes().to_vec()), Step::Close]
}

#[tokio::test]
async fn well_behaved_raw_server() {
    let got = outcome(3, Mode::Open, |_| (), |_| sse(&sse_body(2))).await;
    assert_eq!(got, "sent=3 completed=3 failed=0 received=3 tokens=[2/Usage/2] | ");
}

/// A stream that never ends: comments keep the stall timer quiet, the total timeout ends it.
#[tokio::test]
async fn endless_streams_hit_the_total_timeout() {
    let started = Instant::now();
    let got = outcome(
        3,
        Mode::Open,
        |c| c.request_timeout = Duration::from_secs(1),
        |_| {
            vec![
                Step::Write(sse_head()),
                Step::Forever(b": keep-alive\n\n".to_vec(), Duration::from_millis(20)),
            ]
        },
    )
    .await;
    assert_eq!(
        got,
        "sent=3 completed=0 failed=3 received=3 tokens=[] | timeout: request exceeded the total timeout of 1 s"
    );
    // Tokens forever, never a finish_reason: the same.
    let got = outcome(
        3,
        Mode::Open,
        |c| c.request_timeout = Duration::from_secs(1),
        |_| {
            vec![
                Step::Write(sse_head()),
                Step::Forever(
                    b"data: {\"choices\":[{\"text\":\"t\"}]}\n\n".to_vec(),
                    Duration::from_millis(20),
                ),
            ]
        },
    )
    .await;
    assert_eq!(
        got,
        "sent=3 completed=0 failed=3 received=3 tokens=[] | timeout: request exceeded the total timeout of 1 s"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Silence after the headers: the stall timeout.
    let got = outcome(
        3,
        Mode::Open,
        |_| (),
        |_| vec![Step::Write(sse_head()), Step::Forever(Vec::new(), Duration::from_secs(60))],
    )
    .await;
    assert_eq!(
        got,
        "sent=3 completed=0 failed=3 received=3 tokens=[] | timeout: no data for the stall timeout of 0.3 s"
    );
}

/// One byte at a time (every 4 ms, well inside the 0.3 s stall timeout), with two-byte `é`s
/// split across reads: it completes; under a total timeout shorter than the trickle, it times out.
#[tokio::test]
async fn trickle() {
    let body = sse_body(2);
    let b = body.clone();
    let got = outcome(
        2,
        Mode::Open,
        |_| (),
        move |_| {
            vec![
                Step::Write(sse_head()),
                Step::Trickle(b.as_bytes().to_vec(), Duration::from_millis(4)),
                Step::Close,
            ]
        },
    )
    .await;
    assert_eq!(got, "sent=2 completed=2 failed=0 received=2 tokens=[2/Usage/2] | ");
    let got = outcome(
        2,
        Mode::Open,
        |c| c.request_timeout = Duration::from_millis(300),
        move |_| {
            vec![
                Step::Write(sse_head()),
                Step::Trickle(body.as_bytes().to_vec(), Duration::from_millis(4)),
                Step::Close,
            ]
        },
    )
    .await;
    assert_eq!(
        got,
        "sent=2 completed=0 failed=2 received=2 tokens=[] | timeout: request exceeded the total timeout of 0.3 s"
    );
}

/// One 10 MB line and a 1 GB body are cut at the caps and classified; the server generates
/// them as they are read, and the cap stops the transfer early.
#[tokio::test]
async fn oversized_lines_and_bodies_are_capped() {
    let got = outcome(
        2,
        Mode::Open,
        |_| (),
        |_| {
            vec![
                Step::Write(sse_head()),
                Step::Write(b"data: ".to_vec()),
                Step::Repeat(vec![b'x'; 1 << 20], 10),
                Step::Close,
            ]
        },
    )
    .await;
    assert_eq!(
        got,
        "sent=2 completed=0 failed=2 received=2 tokens=[] | malformed_event: an SSE event longer than the cap of 1048576 bytes"
    );
    // Many short lines with no blank line between them are one event too.
    let got = outcome(
        2,
        Mode::Open,
        |c| c.max_event_bytes = 4096,
        |_| vec![Step::Write(sse_head()), Step::Repeat(b"data: x\n".to_vec(), 1 << 20), Step::Close],
    )
    .await;
    assert_eq!(
        got,
        "sent=2 completed=0 failed=2 received=2 tokens=[] | malformed_event: an SSE event longer than the cap of 4096 bytes"
    );
    // 1 GB of valid content events (16 KiB each), cut at a 16 MiB body cap.
    let event = format!("data: {{\"choices\":[{{\"text\":\"{}\"}}]}}\n\n", "t".repeat(16 * 1024 - 32));
    let repeat = (1u64 << 30) / event.len() as u64;
    let server_event = event.into_bytes();
    let started = Instant::now();
    let got = outcome(
        1,
        Mode::Open,
        |c| c.max_body_bytes = 16 << 20,
        move |_| vec![Step::Write(sse_head()), Step::Repeat(server_event.clone(), repeat), Step::Close],
    )
    .await;
    assert_eq!(
        got,
        "sent=1 completed=0 failed=1 received=1 tokens=[] | malformed_event: a response body longer than the cap of 16777216 bytes"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "cut early: {:?}", started.elapsed());
}

/// 429 with Retry-After is recorded (and not retried: the server saw each request once);
/// 503 while the engine loads is a plain http_status failure.
#[tokio::test]
async fn overload_and_loading_are_not_retried() {
    let got = outcome(
        3,
        Mode::Open,
        |_| (),
        |_| {
            vec![Step::Write(with_length(
                "429 Too Many Requests",
                "application/json",
                &[("Retry-After", "7")],
                br#"{"error":{"message":"too many requests","code":429}}"#,
            ))]
        },
    )
    .await;
    assert_eq!(
        got,
        r#"sent=3 completed=0 failed=3 received=3 tokens=[] | http_status: 429: [Retry-After: 7] {"error":{"message":"too many requests","code":429}}"#
    );
    let got = outcome(
        3,
        Mode::Open,
        |_| (),
        |_| {
            vec![Step::Write(with_length(
                "503 Service Unavailable",
                "application/json",
                &[],
                br#"{"object":"error","message":"the model is still loading","code":503}"#,
            ))]
        },
    )
    .await;
    assert_eq!(
        got,
        r#"sent=3 completed=0 failed=3 received=3 tokens=[] | http_status: 503: {"object":"error","message":"the model is still loading","code":503}"#
    );
}

/// A reset right after the headers is a cut stream, not retried (the server had the request).
#[tokio::test]
async fn reset_after_headers() {
    let got = outcome(
        3,
        Mode::Open,
        |_| (),
        |_| {
            vec![
                Step::Write(head(
                    "200 OK",
                    &[("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")],
                )),
                Step::Reset,
            ]
        },
    )
    .await;
    assert!(
        got.starts_with(
            "sent=3 completed=0 failed=3 received=3 tokens=[] | stream_cut: error decoding response body"
        ),
        "{got}"
    );
}

/// The server closes each kept-alive connection after 2 answers (advertising keep-alive all
/// along): the client reconnects, and no request is lost or sent twice.
#[tokio::test]
async fn keep_alive_closed_after_n_requests() {
    let body = sse_body(2);
    for concurrency in [1, 3] {
        let b = body.clone();
        let got = outcome(
            9,
            Mode::Closed { concurrency },
            |_| (),
            move |req| {
                let mut steps = vec![Step::Write(with_length(
                    "200 OK",
                    "text/event-stream",
                    &[("Keep-Alive", "timeout=5, max=100")],
                    b.as_bytes(),
                ))];
                if req.on_connection == 1 {
                    steps.push(Step::Close);
                }
                steps
            },
        )
        .await;
        assert_eq!(
            got, "sent=9 completed=9 failed=0 received=9 tokens=[2/Usage/2] | ",
            "concurrency {concurrency}"
        );
    }
}

/// A plain JSON completion, or an SSE body under the wrong content type, answering a
/// streaming request.
#[tokio::test]
async fn not_an_event_stream() {
    let got = outcome(
        2,
        Mode::Open,
        |_| (),
        |_| {
            vec![Step::Write(with_length(
                "200 OK",
                "application/json",
                &[],
                br#"{"choices":[{"text":"tt","finish_reason":"length"}],"usage":{"completion_tokens":2}}"#,
            ))]
        },
    )
    .await;
    assert_eq!(
        got,
        r#"sent=2 completed=0 failed=2 received=2 tokens=[] | malformed_event: expected an event stream (text/event-stream), got "application/json": {"choices":[{"text":"tt","finish_reason":"length"}],"usage":{"completion_tokens":2}}"#
    );
    let got = outcome(
        2,
        Mode::Open,
        |_| (),
        |_| vec![Step::Write(with_length("200 OK", "text/plain", &[], sse_body(2).as_bytes()))],
    )
    .await;
    assert!(
        got.starts_with(
            r#"sent=2 completed=0 failed=2 received=2 tokens=[] | malformed_event: expected an event stream (text/event-stream), got "text/plain": data: {"choices""#
        ),
        "{got}"
    );
    // Parameters and case do not matter.
    let got = outcome(
        2,
        Mode::Open,
        |_| (),
        |_| {
            vec![Step::Write(with_length(
                "200 OK",
                "Text/Event-Stream; charset=utf-8",
                &[],
                sse_body(2).as_bytes(),
            ))]
        },
    )
    .await;
    assert_eq!(got, "sent=2 completed=2 failed=0 received=2 tokens=[2/Usage/2] | ");
}

/// Usage sent twice and content after `[DONE]`: counted once.
#[tokio::test]
async fn usage_twice_and_chunks_after_done_count_once() {
    let mut body = sse_body(2);
    body = body.replace(
        "data: [DONE]\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n\
         data: {\"choices\":[{\"text\":\"late\"}],\"usage\":{\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
    );
    let got = outcome(3, Mode::Open, |_| (), move |_| sse(&body)).await;
    assert_eq!(got, "sent=3 completed=3 failed=0 received=3 tokens=[2/Usage/2] | ");
    // Endless events after [DONE]: the request is complete; the drain stops early.
    let mut done_then_more = sse_body(2).into_bytes();
    done_then_more.extend_from_slice(b": padding\n\n");
    let got = outcome(
        2,
        Mode::Open,
        |c| c.request_timeout = Duration::from_secs(2),
        move |_| {
            vec![
                Step::Write(sse_head()),
                Step::Write(done_then_more.clone()),
                Step::Forever(b"data: {\"choices\":[{\"text\":\"x\"}]}\n\n".to_vec(), Duration::ZERO),
            ]
        },
    )
    .await;
    assert_eq!(got, "sent=2 completed=2 failed=0 received=2 tokens=[2/Usage/2] | ");
}

/// An endless `GET /v1/models` answer: model discovery stops at its cap with a clear error.
#[tokio::test]
async fn endless_model_list() {
    let server = start_raw(|_| {
        vec![
            Step::Write(head("200 OK", &[("Content-Type", "application/json"), ("Connection", "close")])),
            Step::Write(br#"{"data":[{"id":""#.to_vec()),
            Step::Forever(vec![b'm'; 64 << 10], Duration::ZERO),
        ]
    });
    let mut c = config(&server.url);
    c.model = None;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut sink = loadgen::ResultWriter::in_dir(tmp.path()).expect("result dir");
    let err = loadgen::run(&plan(1, 2, Mode::Open), &c, &mut sink, Instant::now()).await.unwrap_err();
    assert_eq!(
        err.to_string().replace(&server.url, "URL"),
        "no model configured and none discovered from URL/v1/models: the answer is longer than 1048576 bytes"
    );
}
