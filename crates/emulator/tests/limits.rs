//! The server's limits: body size (413), `max_tokens` (400), connections (queued), and JSON
//! errors everywhere.
//!
//! The tests of this file run one at a time (`SERIAL`): one of them measures the process's
//! resident memory, which the server shares with the test.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::*;
use emulator::EmulatorConfig;
use serde_json::{json, Value};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn error_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let err = v["error"].clone();
    for field in ["message", "type", "param", "code"] {
        assert!(err.get(field).is_some(), "no error.{field} in {body}");
    }
    err
}

const GIB: u64 = 1 << 30;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// 1 GiB of zeros in 64 KiB chunks, counting what was taken from it.
fn gigabyte(sent: Arc<AtomicU64>) -> reqwest::Body {
    let chunks = futures_util::stream::iter(0..GIB / ZEROS.len() as u64).map(move |_| {
        sent.fetch_add(ZEROS.len() as u64, Relaxed);
        Ok::<_, std::io::Error>(Bytes::from_static(&ZEROS))
    });
    reqwest::Body::wrap_stream(chunks)
}

use futures_util::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_body_gets_413_in_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let server = start(&fast(EmulatorConfig::default())).await;
    let base = format!("http://{}", server.local_addr());
    let url = format!("{base}/v1/completions");
    // Warm up the runtime, the client and the server's buffers with an ordinary request.
    complete(&base, &[1, 2, 3], 2).await;
    let client = reqwest::Client::new();
    let limit = 8u64 << 20;

    for declared in [false, true] {
        let (rss0, hwm0) = (status_kib("VmRSS"), status_kib("VmHWM"));
        let sent = Arc::new(AtomicU64::new(0));
        let mut req =
            client.post(&url).header("content-type", "application/json").body(gigabyte(sent.clone()));
        if declared {
            req = req.header("content-length", GIB.to_string());
        }
        let t = Instant::now();
        let res = req.send().await.unwrap_or_else(|e| panic!("declared={declared}: no response: {e:?}"));
        assert_eq!(res.status(), 413, "declared={declared}");
        let body = res.text().await.unwrap();
        let took = t.elapsed();
        let err = error_of(&body);
        assert_eq!(err["code"], 413);
        assert!(err["message"].as_str().unwrap().contains(&limit.to_string()), "{body}");
        let (rss1, hwm1) = (status_kib("VmRSS"), status_kib("VmHWM"));
        let sent = sent.load(Relaxed);
        eprintln!(
            "1 GiB body (content-length {}): 413 after {took:?}, {} MiB taken from the client's stream, \
             RSS {rss0} -> {rss1} KiB, peak RSS {hwm0} -> {hwm1} KiB",
            if declared { "declared" } else { "absent, streamed" },
            sent >> 20,
        );
        // Never more than the limit is buffered: the peak grows by less than the limit and some
        // slack, the resident size stays put, and most of the gigabyte was never sent.
        assert!(hwm1.saturating_sub(hwm0) < (limit >> 10) + 16 * 1024, "peak {hwm0} -> {hwm1} KiB");
        assert!(rss1.saturating_sub(rss0) < 16 * 1024, "RSS {rss0} -> {rss1} KiB");
        assert!(sent < GIB / 4, "{sent} bytes sent");
    }
    // The server goes on.
    let (text, _) = complete(&base, &[1, 2, 3], 3).await;
    assert_eq!(text, "abc");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn max_tokens_cap_and_json_errors() {
    let _serial = SERIAL.lock().await;
    let mut cfg = fast(EmulatorConfig::default());
    cfg.limits.max_tokens = 100;
    cfg.limits.max_body_bytes = 1000;
    let server = start(&cfg).await;
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = client.post(format!("{base}{path}")).json(&body);
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    for (field, path, body) in [
        ("max_tokens", "/v1/completions", json!({"prompt": [1, 2], "max_tokens": 101})),
        (
            "max_completion_tokens",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5000}),
        ),
    ] {
        let (status, body) = post(path, body).await;
        assert_eq!(status, 400, "{body}");
        let err = error_of(&body);
        assert_eq!(
            (&err["param"], &err["code"], &err["type"]),
            (&json!(field), &json!(400), &json!("BadRequestError"))
        );
        assert!(err["message"].as_str().unwrap().contains("limit of 100 tokens"), "{body}");
    }
    // At the cap is fine; without max_tokens, the cap bounds the default.
    let (status, body) = post("/v1/completions", json!({"prompt": [1, 2], "max_tokens": 100})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post("/v1/completions", json!({"prompt": [1, 2]})).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 100);
    // A body over the limit, with its length declared.
    let (status, body) = post("/v1/completions", json!({"prompt": vec![1; 600]})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_of(&body)["type"], "RequestTooLargeError");
    // Unknown route, wrong method, bad JSON, unknown model: JSON too.
    let res = client.get(format!("{base}/v1/nothing")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(error_of(&res.text().await.unwrap())["code"], 404);
    let res = client.get(format!("{base}/v1/completions")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(error_of(&res.text().await.unwrap())["code"], 405);
    let res = client.post(format!("{base}/v1/completions")).body("{").send().await.unwrap();
    assert_eq!(res.status(), 400);
    error_of(&res.text().await.unwrap());
    let (status, body) = post("/v1/completions", json!({"model": "gpt-x", "prompt": "a"})).await;
    assert_eq!(status, 404);
    assert_eq!(error_of(&body)["param"], "model");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_their_turn() {
    let _serial = SERIAL.lock().await;
    let mut cfg = fast(EmulatorConfig::default());
    cfg.limits.max_connections = 4;
    let server = start(&cfg).await;
    let addr = server.local_addr();
    // Four idle connections take every slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Twenty more clients, each on its own connection: they connect (the kernel's backlog) and
    // wait; none gets an error.
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let done = done.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
                let res = client
                    .post(format!("http://{addr}/v1/completions"))
                    .json(&json!({"prompt": [1, 2, i], "max_tokens": 2}))
                    .send()
                    .await;
                let res = res.unwrap_or_else(|e| panic!("client {i}: {e}"));
                let status = res.status().as_u16();
                let _ = res.text().await;
                done.fetch_add(1, Relaxed);
                status
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(done.load(Relaxed), 0, "a request was served past the connection cap");
    // Freeing the slots lets all of them through, four at a time.
    drop(idle);
    let t = Instant::now();
    for c in clients {
        assert_eq!(tokio::time::timeout(Duration::from_secs(20), c).await.unwrap().unwrap(), 200);
    }
    eprintln!("20 queued connections served in {:?} once the 4 slots were freed", t.elapsed());
    server.shutdown().await.unwrap();
}
