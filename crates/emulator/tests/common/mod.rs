//! Shared helpers of the HTTP tests.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emulator::{EmulatorConfig, Server};

/// Starts the emulator on a free loopback port.
pub async fn start(cfg: &EmulatorConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::start(cfg, listener).await.unwrap()
}

/// Fast real time: a modelled second lasts 2 ms, and a GPU small enough that a few
/// 2k-token documents evict each other (300 blocks of 16 tokens).
pub fn fast(mut cfg: EmulatorConfig) -> EmulatorConfig {
    cfg.time_scale = 0.002;
    cfg.scheduler.max_model_len = 4096;
    cfg.scheduler.num_gpu_blocks = Some(300);
    cfg
}

/// A private redis-server on a free loopback port; killed on drop.
pub struct PrivateRedis {
    pub child: Child,
    pub url: String,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        PrivateRedis::start_on(port)
    }

    /// Kills the server and starts a fresh, empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        *self = PrivateRedis::start_on(port);
    }

    fn start_on(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("this test starts its own redis-server, which is not installed: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child, url: format!("redis://127.0.0.1:{port}") }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Token-ID prompt: document `doc` (`len` tokens) then a `tail` of 16 tokens of its own.
pub fn doc_prompt(doc: u32, len: u32, tail: u32) -> Vec<u32> {
    let mut t: Vec<u32> = (0..len).map(|i| doc * 100_000 + i).collect();
    t.extend((0..16).map(|i| 90_000_000 + tail * 100 + i));
    t
}

/// One streamed completion; returns (text, usage JSON).
pub async fn complete(base: &str, prompt: &[u32], max_tokens: u32) -> (String, serde_json::Value) {
    let body = serde_json::json!({
        "prompt": prompt, "max_tokens": max_tokens, "stream": true,
        "stream_options": {"include_usage": true}, "ignore_eos": true,
    });
    let res = reqwest::Client::new().post(format!("{base}/v1/completions")).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let mut out = String::new();
    let mut usage = serde_json::Value::Null;
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE event: {e:?}")))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    for e in &events[..events.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        if let Some(t) = v["choices"][0]["text"].as_str() {
            out.push_str(t);
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    (out, usage)
}

/// The value of the sample `name{...labels containing label...}` in a Prometheus text body.
pub fn metric(body: &str, name: &str, label: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} with {label} in:\n{body}"))
}

pub async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap()
}

/// Polls `/metrics` until `pred` holds (stores are written in the background).
pub async fn wait_metrics(base: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics(base).await;
        if pred(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The keys of a Redis under `prefix` (SCAN, as the emulator's cleanup does).
pub async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}
