//! The hostile-server cases, one table: `hostile.rs` checks each outcome, `hostile_memory.rs`
//! runs the same cases again and measures the client's peak memory in each.

use std::time::Duration;

use loadgen::LoadgenConfig;
use workload::Mode;

use super::{chunked, chunked_head, head, sse_body, sse_head, start_raw, with_length, Script, Step};
use crate::common::{config, plan, run};

/// One hostile server and what the load generator must make of it.
pub struct Case {
    pub name: &'static str,
    /// Requests sent.
    pub n: u64,
    pub mode: Mode,
    /// Changes to the test's client configuration (timeouts, caps).
    pub tweak: fn(&mut LoadgenConfig),
    pub script: Script,
    /// The outcome line (see [`outcome`]); one ending in `…` is a prefix.
    pub expect: &'static str,
}

impl Case {
    /// Runs the case and checks its outcome.
    pub async fn check(&self) {
        let got = outcome(self).await;
        match self.expect.strip_suffix('…') {
            Some(prefix) => assert!(got.starts_with(prefix), "{}: {got}", self.name),
            None => assert_eq!(got, self.expect, "{}", self.name),
        }
    }
}

/// The outcome of a case: `sent completed failed received | class: detail` of each distinct
/// failure, and the tokens of the completed requests. Every case keeps one record and one
/// `requests.jsonl` line per request, and completed + failed == sent.
pub async fn outcome(case: &Case) -> String {
    let script = case.script.clone();
    let server = start_raw(move |r| script(r));
    let mut c = config(&server.url);
    c.stall_timeout = Duration::from_millis(300);
    c.request_timeout = Duration::from_secs(5);
    // The scripts number the requests the server receives: no warm-up requests before them.
    c.connections = loadgen::Connections::Cold;
    (case.tweak)(&mut c);
    let (out, dir) = run(&plan(case.n, 2, case.mode), &c).await;
    let completed = out.records.iter().filter(|r| r.error.is_none()).count() as u64;
    assert_eq!(out.sent, case.n, "{}", case.name);
    assert_eq!(out.records.len() as u64, case.n, "{}", case.name);
    assert_eq!(completed + out.summary.failed, out.sent, "{}: completed + failed == sent", case.name);
    let lines = std::fs::read_to_string(dir.path().join("requests.jsonl")).expect("requests.jsonl");
    assert_eq!(lines.lines().count() as u64, case.n, "{}: one line per request", case.name);
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

fn script(f: impl Fn(super::ReqInfo) -> Vec<Step> + Send + Sync + 'static) -> Script {
    std::sync::Arc::new(f)
}

fn sse(body: String) -> Script {
    script(move |_| vec![Step::Write(sse_head()), Step::Write(body.as_bytes().to_vec()), Step::Close])
}

fn keep(_: &mut LoadgenConfig) {}

/// Every case, in the order of the README's table.
pub fn all() -> Vec<Case> {
    let content = |text: &str| format!("data: {{\"choices\":[{{\"text\":\"{text}\"}}]}}\n\n").into_bytes();
    // 16 KiB content events, 1 GB of them.
    let event = content(&"t".repeat(16 * 1024 - 32));
    let events_1gb = (1u64 << 30) / event.len() as u64;
    let mut usage_twice = sse_body(2);
    usage_twice = usage_twice.replace(
        "data: [DONE]\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n\
         data: {\"choices\":[{\"text\":\"late\"}],\"usage\":{\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
    );
    let mut done_then_more = sse_body(2).into_bytes();
    done_then_more.extend_from_slice(b": padding\n\n");
    let trickled = sse_body(2).into_bytes();
    let keep_alive_body = sse_body(2);
    let keep_alive = script(move |req| {
        let mut steps = vec![Step::Write(with_length(
            "200 OK",
            "text/event-stream",
            &[("Keep-Alive", "timeout=5, max=100")],
            keep_alive_body.as_bytes(),
        ))];
        // The server closes each kept-alive connection after 2 answers (advertising keep-alive
        // all along).
        if req.on_connection == 1 {
            steps.push(Step::Close);
        }
        steps
    });
    let chunked_body = chunked(&sse_body(2));
    let mut with_extras = chunked_body.clone();
    // A chunk extension on the first chunk, a trailer after the last.
    let first_eol = with_extras.iter().position(|&b| b == b'\r').expect("a size line");
    with_extras.splice(first_eol..first_eol, b";ext=1".iter().copied());
    with_extras.truncate(with_extras.len() - 2);
    with_extras.extend_from_slice(b"X-Trailer: 1\r\n\r\n");
    let mut cut_mid_chunk = b"100\r\n".to_vec();
    cut_mid_chunk.extend_from_slice(&sse_body(2).as_bytes()[..40]);
    let tokens_forever = content("t");
    let after_done = content("x");
    vec![
        Case {
            name: "well-behaved",
            n: 3,
            mode: Mode::Open,
            tweak: keep,
            script: sse(sse_body(2)),
            expect: "sent=3 completed=3 failed=0 received=3 tokens=[2/Usage/2] | ",
        },
        Case {
            name: "endless stream of comments",
            n: 3,
            mode: Mode::Open,
            tweak: |c| c.request_timeout = Duration::from_secs(1),
            script: script(|_| {
                vec![Step::Write(sse_head()), Step::Forever(b": keep-alive\n\n".to_vec(), Duration::from_millis(20))]
            }),
            expect: "sent=3 completed=0 failed=3 received=3 tokens=[] | timeout: request exceeded the total timeout of 1 s",
        },
        Case {
            name: "endless stream of tokens, never a finish_reason",
            n: 3,
            mode: Mode::Open,
            tweak: |c| c.request_timeout = Duration::from_secs(1),
            script: script(move |_| {
                vec![Step::Write(sse_head()), Step::Forever(tokens_forever.clone(), Duration::from_millis(20))]
            }),
            expect: "sent=3 completed=0 failed=3 received=3 tokens=[] | timeout: request exceeded the total timeout of 1 s",
        },
        Case {
            name: "silence after the headers",
            n: 3,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| vec![Step::Write(sse_head()), Step::Forever(Vec::new(), Duration::from_secs(60))]),
            expect: "sent=3 completed=0 failed=3 received=3 tokens=[] | timeout: no data for the stall timeout of 0.3 s",
        },
        Case {
            // One byte every 4 ms (inside the 0.3 s stall timeout), two-byte `é`s split across reads.
            name: "trickle",
            n: 2,
            mode: Mode::Open,
            tweak: keep,
            script: {
                let body = trickled.clone();
                script(move |_| {
                    vec![Step::Write(sse_head()), Step::Trickle(body.clone(), Duration::from_millis(4)), Step::Close]
                })
            },
            expect: "sent=2 completed=2 failed=0 received=2 tokens=[2/Usage/2] | ",
        },
        Case {
            name: "trickle under a shorter total timeout",
            n: 2,
            mode: Mode::Open,
            tweak: |c| c.request_timeout = Duration::from_millis(300),
            script: script(move |_| {
                vec![Step::Write(sse_head()), Step::Trickle(trickled.clone(), Duration::from_millis(4)), Step::Close]
            }),
            expect: "sent=2 completed=0 failed=2 received=2 tokens=[] | timeout: request exceeded the total timeout of 0.3 s",
        },
        Case {
            // Generated as it is read; the cap stops the transfer early.
            name: "one SSE line of 10 MB",
            n: 2,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| {
                vec![
                    Step::Write(sse_head()),
                    Step::Write(b"data: ".to_vec()),
                    Step::Repeat(vec![b'x'; 1 << 20], 10),
                    Step::Close,
                ]
            }),
            expect: "sent=2 completed=0 failed=2 received=2 tokens=[] | malformed_event: an SSE event longer than the cap of 1048576 bytes",
        },
        Case {
            name: "short lines with no blank line between them (one event)",
            n: 2,
            mode: Mode::Open,
            tweak: |c| c.max_event_bytes = 4096,
            script: script(|_| {
                vec![Step::Write(sse_head()), Step::Repeat(b"data: x\n".to_vec(), 1 << 20), Step::Close]
            }),
            expect: "sent=2 completed=0 failed=2 received=2 tokens=[] | malformed_event: an SSE event longer than the cap of 4096 bytes",
        },
        Case {
            name: "a 1 GB body of valid events",
            n: 1,
            mode: Mode::Open,
            tweak: |c| c.max_body_bytes = 16 << 20,
            script: script(move |_| {
                vec![Step::Write(sse_head()), Step::Repeat(event.clone(), events_1gb), Step::Close]
            }),
            expect: "sent=1 completed=0 failed=1 received=1 tokens=[] | malformed_event: a response body longer than the cap of 16777216 bytes",
        },
        Case {
            // Recorded, not retried: the server saw each request once.
            name: "429 with Retry-After",
            n: 3,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| {
                vec![Step::Write(with_length(
                    "429 Too Many Requests",
                    "application/json",
                    &[("Retry-After", "7")],
                    br#"{"error":{"message":"too many requests","code":429}}"#,
                ))]
            }),
            expect: r#"sent=3 completed=0 failed=3 received=3 tokens=[] | http_status: 429: [Retry-After: 7] {"error":{"message":"too many requests","code":429}}"#,
        },
        Case {
            name: "503 while the engine loads",
            n: 3,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| {
                vec![Step::Write(with_length(
                    "503 Service Unavailable",
                    "application/json",
                    &[],
                    br#"{"object":"error","message":"the model is still loading","code":503}"#,
                ))]
            }),
            expect: r#"sent=3 completed=0 failed=3 received=3 tokens=[] | http_status: 503: {"object":"error","message":"the model is still loading","code":503}"#,
        },
        Case {
            // A cut stream, not retried (the server had the request).
            name: "reset right after the headers",
            n: 3,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| {
                vec![
                    Step::Write(head(
                        "200 OK",
                        &[("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")],
                    )),
                    Step::Reset,
                ]
            }),
            expect: "sent=3 completed=0 failed=3 received=3 tokens=[] | stream_cut: error decoding response body…",
        },
        Case {
            // The client reconnects; no request is lost or sent twice.
            name: "keep-alive closed after 2 answers, one stream",
            n: 9,
            mode: Mode::Closed { concurrency: 1 },
            tweak: keep,
            script: keep_alive.clone(),
            expect: "sent=9 completed=9 failed=0 received=9 tokens=[2/Usage/2] | ",
        },
        Case {
            name: "keep-alive closed after 2 answers, three streams",
            n: 9,
            mode: Mode::Closed { concurrency: 3 },
            tweak: keep,
            script: keep_alive,
            expect: "sent=9 completed=9 failed=0 received=9 tokens=[2/Usage/2] | ",
        },
        Case {
            name: "plain JSON answering a streaming request",
            n: 2,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| {
                vec![Step::Write(with_length(
                    "200 OK",
                    "application/json",
                    &[],
                    br#"{"choices":[{"text":"tt","finish_reason":"length"}],"usage":{"completion_tokens":2}}"#,
                ))]
            }),
            expect: r#"sent=2 completed=0 failed=2 received=2 tokens=[] | malformed_event: expected an event stream (text/event-stream), got "application/json": {"choices":[{"text":"tt","finish_reason":"length"}],"usage":{"completion_tokens":2}}"#,
        },
        Case {
            name: "an SSE body under text/plain",
            n: 2,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| vec![Step::Write(with_length("200 OK", "text/plain", &[], sse_body(2).as_bytes()))]),
            expect: r#"sent=2 completed=0 failed=2 received=2 tokens=[] | malformed_event: expected an event stream (text/event-stream), got "text/plain": data: {"choices"…"#,
        },
        Case {
            // Parameters and case of the content type do not matter.
            name: "Text/Event-Stream; charset=utf-8",
            n: 2,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| {
                vec![Step::Write(with_length(
                    "200 OK",
                    "Text/Event-Stream; charset=utf-8",
                    &[],
                    sse_body(2).as_bytes(),
                ))]
            }),
            expect: "sent=2 completed=2 failed=0 received=2 tokens=[2/Usage/2] | ",
        },
        Case {
            name: "usage twice and content after [DONE]",
            n: 3,
            mode: Mode::Open,
            tweak: keep,
            script: sse(usage_twice),
            expect: "sent=3 completed=3 failed=0 received=3 tokens=[2/Usage/2] | ",
        },
        Case {
            // The request is complete at [DONE]; the drain stops early.
            name: "endless events after [DONE]",
            n: 2,
            mode: Mode::Open,
            tweak: |c| c.request_timeout = Duration::from_secs(2),
            script: script(move |_| {
                vec![
                    Step::Write(sse_head()),
                    Step::Write(done_then_more.clone()),
                    Step::Forever(after_done.clone(), Duration::ZERO),
                ]
            }),
            expect: "sent=2 completed=2 failed=0 received=2 tokens=[2/Usage/2] | ",
        },
        Case {
            // Kept alive: each connection answers every request of the stream.
            name: "chunked, a chunk extension and a trailer",
            n: 3,
            mode: Mode::Closed { concurrency: 1 },
            tweak: keep,
            script: script(move |_| vec![Step::Write(chunked_head()), Step::Write(with_extras.clone())]),
            expect: "sent=3 completed=3 failed=0 received=3 tokens=[2/Usage/2] | ",
        },
        Case {
            name: "a bad chunk size line",
            n: 2,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| vec![Step::Write(chunked_head()), Step::Write(b"zz\r\ndata: x\n\n\r\n".to_vec())]),
            expect: "sent=2 completed=0 failed=2 received=2 tokens=[] | stream_cut: error decoding response body…",
        },
        Case {
            name: "chunked body closed mid-chunk",
            n: 2,
            mode: Mode::Open,
            tweak: keep,
            script: script(move |_| {
                vec![Step::Write(chunked_head()), Step::Write(cut_mid_chunk.clone()), Step::Close]
            }),
            expect: "sent=2 completed=0 failed=2 received=2 tokens=[] | stream_cut: error decoding response body…",
        },
        Case {
            // No answer is lost to a reused connection: each goes on a new one.
            name: "Connection: close on every answer",
            n: 5,
            mode: Mode::Closed { concurrency: 1 },
            tweak: keep,
            script: script(|_| {
                vec![
                    Step::Write(with_length(
                        "200 OK",
                        "text/event-stream",
                        &[("Connection", "close")],
                        sse_body(2).as_bytes(),
                    )),
                    Step::Close,
                ]
            }),
            expect: "sent=5 completed=5 failed=0 received=5 tokens=[2/Usage/2] | ",
        },
        Case {
            // Each request after the first meets a closed connection, and is sent once more on a
            // new one: the server receives each request once.
            name: "chunked keep-alive closed after every answer",
            n: 5,
            mode: Mode::Closed { concurrency: 1 },
            tweak: keep,
            script: {
                let body = chunked_body.clone();
                script(move |_| vec![Step::Write(chunked_head()), Step::Write(body.clone()), Step::Close])
            },
            expect: "sent=5 completed=5 failed=0 received=5 tokens=[2/Usage/2] | ",
        },
        Case {
            name: "the response head one byte at a time",
            n: 2,
            mode: Mode::Closed { concurrency: 1 },
            tweak: keep,
            script: {
                let body = chunked_body.clone();
                script(move |_| {
                    vec![Step::Trickle(chunked_head(), Duration::from_millis(1)), Step::Write(body.clone())]
                })
            },
            expect: "sent=2 completed=2 failed=0 received=2 tokens=[2/Usage/2] | ",
        },
        Case {
            name: "100 Continue before the answer",
            n: 2,
            mode: Mode::Closed { concurrency: 1 },
            tweak: keep,
            script: {
                let body = chunked_body.clone();
                script(move |_| {
                    vec![
                        Step::Write(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
                        Step::Write(chunked_head()),
                        Step::Write(body.clone()),
                    ]
                })
            },
            expect: "sent=2 completed=2 failed=0 received=2 tokens=[2/Usage/2] | ",
        },
        Case {
            name: "no HTTP response head",
            n: 2,
            mode: Mode::Open,
            tweak: keep,
            script: script(|_| vec![Step::Write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()), Step::Close]),
            expect: "sent=2 completed=0 failed=2 received=2 tokens=[] | connect: error sending request for url (URL/v1/completions)…",
        },
    ]
}
