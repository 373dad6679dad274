//! Replays a Mooncake trace (FAST'25 JSONL: timestamp ms, input_length, output_length,
//! hash_ids of 512-token blocks) against the emulated engine in virtual time, and times it.
//!
//! `cargo run --release -p kvlab-emulator --example replay_mooncake -- TRACE.jsonl [TIER]`
//! with TIER one of baseline (default), cpu, disk, redis.

use std::time::{Duration, Instant};

use emulator::{run_virtual, EmulatorConfig, TierPreset};
use serde::Deserialize;
use workload::{Limits, Mode, Plan, Prompt, Request, RequestMeta};

#[derive(Deserialize)]
struct Line {
    timestamp: u64,
    input_length: u32,
    output_length: u32,
    hash_ids: Vec<u32>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: replay_mooncake TRACE.jsonl [TIER]")?;
    let tier = args.next().unwrap_or_else(|| "baseline".to_owned());
    let text = std::fs::read_to_string(&path)?;
    let t_parse = Instant::now();
    let mut requests = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let line: Line = serde_json::from_str(l).map_err(|e| format!("{path}:{}: {e}", i + 1))?;
        let mut tokens = Vec::with_capacity(line.input_length as usize);
        'blocks: for h in &line.hash_ids {
            for j in 0..512 {
                if tokens.len() == line.input_length as usize {
                    break 'blocks;
                }
                tokens.push(h * 512 + j);
            }
        }
        requests.push(Request {
            id: requests.len() as u64,
            prompt_len: tokens.len() as u32,
            prompt: Prompt::Tokens(tokens),
            max_tokens: line.output_length.max(1),
            send_at: Some(Duration::from_millis(line.timestamp)),
            depends_on: None,
            meta: RequestMeta { trace_line: Some(i as u64 + 1), ..RequestMeta::default() },
        });
    }
    let plan = Plan { requests, mode: Mode::Open, limits: Limits::default() };
    let preset = match tier.as_str() {
        "baseline" => TierPreset::Baseline,
        "cpu" => TierPreset::Cpu,
        "disk" => TierPreset::Disk { dir: "unused".into() },
        "redis" => TierPreset::Redis { url: "redis://127.0.0.1:6379".to_owned() },
        other => return Err(format!("unknown tier {other}").into()),
    };
    let mut cfg = EmulatorConfig::for_tier(preset);
    cfg.scheduler.max_model_len = 131_072;
    let parse = t_parse.elapsed();
    let t = Instant::now();
    let records = run_virtual(&cfg, &plan)?;
    let took = t.elapsed();
    let s = stats::summarize(
        &records,
        &stats::SummaryConfig {
            engine: "emulated".into(),
            tier: tier.clone(),
            emulated: true,
            ..Default::default()
        },
    );
    println!(
        "{} requests ({} completed, {} failed), {} output tokens, virtual duration {:.1} s",
        records.len(),
        s.completed,
        s.failed,
        s.total_output_tokens,
        s.duration
    );
    println!(
        "tier {tier}: mean TTFT {:.1} ms, p99 TTFT {:.1} ms, mean TPOT {:.2} ms, cached tokens {}",
        s.mean_ttft_ms, s.p99_ttft_ms, s.mean_tpot_ms, s.cached_tokens_total
    );
    println!(
        "plan built in {:.2} s; virtual-time replay took {:.2} s wall",
        parse.as_secs_f64(),
        took.as_secs_f64()
    );
    Ok(())
}
