//! Replays a Mooncake trace (FAST'25 JSONL: timestamp ms, input_length, output_length,
//! hash_ids of 512-token blocks) against the emulated engine in virtual time, and times it.
//!
//! `cargo run --release -p kvlab-emulator --example replay_mooncake -- TRACE.jsonl [TIER] [SPEEDUP]`
//! with TIER one of baseline (default), cpu, disk, redis. The plan is built by the workload
//! crate (equal hash ids give equal token blocks), at the trace's timestamps divided by SPEEDUP
//! (default 1; the conversation trace asks about 40k prompt tokens/s, more than one emulated
//! H100 computes: it serves the whole trace in about 16,400 virtual seconds, so below a
//! SPEEDUP of about 0.2 the queue stops growing).

use std::time::Instant;

use emulator::{run_virtual, EmulatorConfig, TierPreset};
use workload::{ArrivalSpec, Schedule, Source, Trace, TraceFormat, TraceSpec, WorkloadSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: replay_mooncake TRACE.jsonl [TIER]")?;
    let tier = args.next().unwrap_or_else(|| "baseline".to_owned());
    let speedup: f64 = match args.next() {
        Some(a) => a.parse().map_err(|e| format!("SPEEDUP {a:?}: {e}"))?,
        None => 1.0,
    };
    let preset = match tier.as_str() {
        "baseline" => TierPreset::Baseline,
        "cpu" => TierPreset::Cpu,
        "disk" => TierPreset::Disk { dir: "unused".into() },
        "redis" => TierPreset::Redis { url: "redis://127.0.0.1:6379".to_owned() },
        other => return Err(format!("unknown tier {other}; known: baseline, cpu, disk, redis").into()),
    };
    let t_total = Instant::now();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let spec = TraceSpec {
        format: TraceFormat::Mooncake,
        path: path.clone(),
        skip_bad_lines: false,
        max_requests: None,
    };
    let t_plan = Instant::now();
    let trace: Trace = spec.parse(&text, &path)?;
    drop(text);
    let workload =
        WorkloadSpec { source: Source::Trace(spec), format: Default::default(), vocab: Default::default() };
    let plan =
        workload::build_plan(&workload, &ArrivalSpec::new(Schedule::Trace { speedup }), 0, Some(&trace))?;
    let plan_s = t_plan.elapsed().as_secs_f64();
    let prompt_tokens: u64 = plan.requests.iter().map(|r| u64::from(r.prompt_len)).sum();

    let mut cfg = EmulatorConfig::for_tier(preset);
    // The trace's longest request (126,527 tokens) is past llama-3-8b's 8192: accept it, as
    // vLLM with VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 would.
    cfg.scheduler.max_model_len = 131_072;
    let t = Instant::now();
    let records = run_virtual(&cfg, &plan)?;
    let replay_s = t.elapsed().as_secs_f64();
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
        "{} requests ({} completed, {} failed), {prompt_tokens} prompt tokens, {} output tokens, \
         virtual duration {:.1} s",
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
        "parse + plan {plan_s:.2} s; virtual-time replay {replay_s:.2} s; total {:.2} s wall",
        t_total.elapsed().as_secs_f64()
    );
    Ok(())
}
