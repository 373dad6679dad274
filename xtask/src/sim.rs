//! `cargo xtask sim`: replay traces over the KV-cache model; sweep policies x capacities; write
//! `sim.csv`, `sim.json` and hit-ratio curves (`plots/hit_ratio_<trace>.svg`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kvcache::{PolicyKind, Tier};
use sim::{Capacity, InputFormat, LoadOptions, PolicySpec, SimTrace, SweepConfig, TierModel};

#[derive(clap::Args)]
pub(crate) struct SimArgs {
    /// Trace files (Mooncake or Bailian JSONL, conversation CSV); repeat or comma-separate.
    #[arg(long, required = true, value_delimiter = ',')]
    trace: Vec<PathBuf>,
    /// Eviction policies: lru, fifo, lfu, s3fifo, sieve, belady, conversation-aware, learned.
    #[arg(long, value_delimiter = ',', default_value = "lru,fifo,lfu,s3fifo,sieve,belady")]
    policy: Vec<String>,
    /// Capacities of the swept tier: blocks (1000, 10k), tokens (10k-tokens), bytes (2GiB, needs
    /// --model) or inf. Default: 12 steps from 1% to 100% of the trace's unique blocks, and inf.
    #[arg(long, value_delimiter = ',')]
    capacity: Vec<String>,
    /// Simulated block size in tokens (default: the trace's own, 512 for Mooncake, 16 for
    /// Bailian); must be a multiple or a divisor of it.
    #[arg(long)]
    block_size: Option<u32>,
    /// The trace format (default: detected from the first line).
    #[arg(long, value_parser = ["mooncake", "bailian", "conversation-csv", "requests"])]
    format: Option<String>,
    /// Tokens per synthesised block for conversation CSVs.
    #[arg(long, default_value_t = 16)]
    csv_block_size: u32,
    /// The tier whose capacity is swept.
    #[arg(long, default_value = "cpu")]
    tier: String,
    /// Other tiers at a fixed capacity, e.g. `--fixed-tier gpu=20000 --fixed-tier disk=50GiB`.
    #[arg(long)]
    fixed_tier: Vec<String>,
    /// How stacked tiers share blocks: write-through (vLLM with LMCache: every tier sees every
    /// block) or exclusive (a block in one tier at most, promoted on a hit, demoted on eviction).
    #[arg(long, default_value = "write-through")]
    tier_model: String,
    /// Model from the registry: KV geometry for byte capacities, and the TTFT estimate with --gpu.
    #[arg(long)]
    model: Option<String>,
    /// GPU from the registry (with --model): estimate the TTFT saved.
    #[arg(long)]
    gpu: Option<String>,
    /// vLLM's max_num_batched_tokens for the TTFT estimate.
    #[arg(long, default_value_t = 8192)]
    max_num_batched_tokens: u32,
    /// Count and report malformed lines instead of failing on the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Grid-search the weights of this policy (only `conversation-aware`) on the first part of
    /// each trace and report the best on the held-out rest.
    #[arg(long)]
    tune: Option<String>,
    /// Fraction of each trace's time used for training (learned) and tuning.
    #[arg(long, default_value_t = 0.5)]
    train_fraction: f64,
    /// Convert the (conversation CSV) trace to Bailian JSONL at this path and stop.
    #[arg(long)]
    convert_to: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "results/sim")]
    out: PathBuf,
}

fn parse_format(s: Option<&str>) -> Option<InputFormat> {
    match s {
        Some("mooncake") => Some(InputFormat::Mooncake),
        Some("bailian") => Some(InputFormat::Bailian),
        Some("conversation-csv") => Some(InputFormat::ConversationCsv),
        Some("requests") => Some(InputFormat::KvlabRecords),
        _ => None,
    }
}

pub(crate) fn run(args: SimArgs) -> Result<()> {
    let opts = LoadOptions {
        format: parse_format(args.format.as_deref()),
        block_tokens: args.block_size,
        skip_bad_lines: args.skip_bad_lines,
        csv_block_tokens: Some(args.csv_block_size),
    };
    if let Some(dest) = &args.convert_to {
        return convert(&args.trace, dest, &opts);
    }
    if !(0.0..1.0).contains(&args.train_fraction) || args.train_fraction == 0.0 {
        bail!("--train-fraction must be in (0, 1), got {}", args.train_fraction);
    }
    let tier: Tier = args.tier.parse()?;
    let tier_model: TierModel = args.tier_model.parse()?;
    let mut fixed = Vec::new();
    for f in &args.fixed_tier {
        let (t, c) =
            f.split_once('=').with_context(|| format!("--fixed-tier {f:?}: expected TIER=CAPACITY"))?;
        fixed.push((t.parse::<Tier>()?, Capacity::parse(c)?));
    }
    let policies: Vec<PolicySpec> = args
        .policy
        .iter()
        .map(|p| p.trim().parse::<PolicyKind>().map(PolicySpec::from))
        .collect::<Result<_, _>>()?;

    let registry = costmodel::Registry::builtin();
    let model = args.model.as_deref().map(|m| registry.model(m)).transpose()?;
    let cost = match (model, args.gpu.as_deref()) {
        (Some(m), Some(g)) => Some(costmodel::CostModel::new(m, registry.gpu(g)?, &registry.cost)),
        (None, Some(_)) => bail!("--gpu needs --model"),
        _ => None,
    };

    let mut traces = Vec::new();
    for path in &args.trace {
        traces.push(load(path, &opts)?);
    }
    for t in &traces {
        println!(
            "{}: {} requests, {} block accesses, {} unique blocks; {}{}",
            t.name,
            t.requests.len(),
            t.accesses(),
            t.unique_blocks,
            t.granularity,
            if t.bad_lines > 0 {
                format!("; {} malformed lines skipped", t.bad_lines)
            } else {
                String::new()
            }
        );
    }
    let capacities: Vec<Capacity> = if args.capacity.is_empty() {
        sim::default_capacities(&traces)
    } else {
        args.capacity.iter().map(|c| Capacity::parse(c)).collect::<Result<_, _>>()?
    };
    let cfg = SweepConfig {
        tier,
        fixed,
        tier_model,
        kv: model.map(|m| m.kv),
        cost,
        max_num_batched_tokens: args.max_num_batched_tokens,
        train_fraction: args.train_fraction,
    };
    let started = std::time::Instant::now();
    let rows = sim::sweep(&traces, &policies, &capacities, &cfg)?;
    let elapsed = started.elapsed();

    let mut learned = Vec::new();
    if policies.contains(&PolicyKind::Learned.into()) {
        for t in &traces {
            let r = sim::learned_report(t, &cfg, sim::held_out_capacity(&capacities))?;
            println!(
                "learned ({}): log loss train {:.3} / test {:.3}; token hit at {} blocks: train {:.2}% test {:.2}% (lru {:.2}% / {:.2}%)",
                t.name,
                r.training.train_log_loss,
                r.training.test_log_loss,
                r.held_out.capacity_blocks,
                100.0 * r.held_out.train_token_hit_ratio,
                100.0 * r.held_out.test_token_hit_ratio,
                100.0 * r.lru.train_token_hit_ratio,
                100.0 * r.lru.test_token_hit_ratio,
            );
            learned.push(r);
        }
    }
    let mut tuned = Vec::new();
    match args.tune.as_deref() {
        None => {}
        Some("conversation-aware") => {
            for t in &traces {
                let r = sim::tuned_report(t, &cfg, sim::held_out_capacity(&capacities))?;
                println!(
                    "tuned conversation-aware ({}): {:?}; token hit at {} blocks: train {:.2}% test {:.2}% (lru {:.2}% / {:.2}%)",
                    t.name,
                    r.result.best,
                    r.result.tuned.capacity_blocks,
                    100.0 * r.result.tuned.train_token_hit_ratio,
                    100.0 * r.result.tuned.test_token_hit_ratio,
                    100.0 * r.result.lru.train_token_hit_ratio,
                    100.0 * r.result.lru.test_token_hit_ratio,
                );
                tuned.push(r);
            }
        }
        Some(other) => bail!("--tune {other:?}: only `conversation-aware` can be tuned"),
    }

    print!("{}", sim::output::table(&rows));
    println!("{} points in {:.2} s", rows.len(), elapsed.as_secs_f64());

    std::fs::create_dir_all(args.out.join("plots"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    write(&args.out.join("sim.csv"), &sim::output::csv(&rows))?;
    let json = sim::output::json(&sim::output::JsonInputs {
        swept_tier: tier,
        tier_model,
        capacities: &capacities,
        model: args.model.as_deref(),
        gpu: args.gpu.as_deref(),
        traces: &traces,
        rows: &rows,
        learned: &learned,
        tuned: &tuned,
    });
    write(&args.out.join("sim.json"), &serde_json::to_string_pretty(&json)?)?;
    for t in &traces {
        write(
            &args.out.join("plots").join(sim::output::svg_name(&t.name)),
            &sim::output::svg(&rows, &t.name)?,
        )?;
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

fn load(path: &Path, opts: &LoadOptions) -> Result<SimTrace> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sim::trace::load(&path.display().to_string(), &text, opts)?)
}

fn write(path: &Path, text: &str) -> Result<()> {
    // Atomic like a run's record files: a full disk leaves no half-written sim.json.
    stats::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn convert(traces: &[PathBuf], dest: &Path, opts: &LoadOptions) -> Result<()> {
    let [path] = traces else { bail!("--convert-to takes exactly one --trace") };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let trace = sim::trace::conversation_csv_to_trace(
        &text,
        &name,
        opts.csv_block_tokens.unwrap_or(16),
        opts.skip_bad_lines,
    )?;
    write(dest, &sim::trace::to_bailian_jsonl(&trace))?;
    println!(
        "{} -> {}: {} requests, {}-token blocks (assumes each turn's prompt starts with the conversation's history){}",
        path.display(),
        dest.display(),
        trace.entries.len(),
        opts.csv_block_tokens.unwrap_or(16),
        if trace.bad_lines > 0 { format!("; {} malformed lines skipped", trace.bad_lines) } else { String::new() }
    );
    Ok(())
}
