//! Holds N concurrent streams (default 5000) against the real-time emulated engine over
//! loopback, and reports errors and the peak of streams open at once.
//!
//! `ulimit -n 65536; cargo run --release -p kvlab-emulator --example stress_streams -- [N] [TOKENS]`

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use emulator::{EmulatorConfig, Server};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(5000), |a| a.parse())?;
    let tokens: u32 = args.next().map_or(Ok(200), |a| a.parse())?;
    let mut cfg = EmulatorConfig::default();
    cfg.scheduler.max_num_seqs = n as u32;
    cfg.scheduler.max_model_len = 4096;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = Server::start(&cfg, listener).await?;
    let url = format!("http://{}/v1/completions", server.local_addr());
    let client = reqwest::Client::builder().pool_max_idle_per_host(n).build()?;
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, url, open, peak) = (client.clone(), url.clone(), open.clone(), peak.clone());
            tokio::spawn(async move {
                let body = serde_json::json!({
                    "prompt": format!("request {i} "), "max_tokens": tokens, "stream": true,
                    "ignore_eos": true,
                });
                let res = client.post(&url).json(&body).send().await.map_err(|e| e.to_string())?;
                if !res.status().is_success() {
                    return Err(format!("status {}", res.status()));
                }
                let now = open.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                let mut stream = res.bytes_stream();
                let mut done = false;
                let mut chars = 0usize;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    chars += chunk.len();
                    done |= chunk.ends_with(b"data: [DONE]\n\n");
                }
                open.fetch_sub(1, SeqCst);
                if done && chars > 0 {
                    Ok(())
                } else {
                    Err("stream cut".to_owned())
                }
            })
        })
        .collect();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        if let Err(e) = task.await? {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    println!(
        "{n} streams of {tokens} tokens: {errors} errors, peak {} open at once, {:.1} s",
        peak.load(SeqCst),
        t.elapsed().as_secs_f64()
    );
    if let Some(e) = first_error {
        println!("first error: {e}");
    }
    let m = reqwest::get(format!("http://{}/metrics", server.local_addr())).await?.text().await?;
    for l in m.lines().filter(|l| {
        l.starts_with("vllm:request_success_total") || l.starts_with("vllm:num_preemptions_total")
    }) {
        println!("{l}");
    }
    server.shutdown().await?;
    Ok(())
}
