//! Replay throughput on the Mooncake conversation trace (block accesses per second), against a
//! naive HashMap + VecDeque LRU with the same prefix-hit semantics, and a full sweep.
//!
//! Run: `cargo bench -p kvlab-sim --bench replay` (needs `../shared/traces` beside the clone).

use std::collections::{HashMap, VecDeque};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kvcache::{PolicyKind, Tier};
use sim::{Capacity, LoadOptions, ReplayConfig, SimTrace, SweepConfig};

fn load(file: &str) -> SimTrace {
    let path = format!("{}/../../../shared/traces/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("missing shared trace {path}: {e}"));
    sim::trace::load(file, &text, &LoadOptions::default()).expect("trace parses")
}

/// The naive reference: a hash map of last-use stamps and a queue of (key, stamp) with lazy
/// deletion. Returns hit blocks.
fn naive_lru(trace: &SimTrace, capacity: usize) -> u64 {
    let mut stamp: HashMap<u64, u64> = HashMap::new();
    let mut queue: VecDeque<(u64, u64)> = VecDeque::new();
    let mut now = 0u64;
    let mut hits = 0u64;
    for r in &trace.requests {
        let keys = trace.keys_of(r);
        hits += keys.iter().take_while(|k| stamp.contains_key(&k.0)).count() as u64;
        for k in keys {
            now += 1;
            stamp.insert(k.0, now);
            queue.push_back((k.0, now));
            while stamp.len() > capacity {
                let (key, s) = queue.pop_front().expect("queue covers the map");
                if stamp.get(&key) == Some(&s) {
                    stamp.remove(&key);
                }
            }
        }
    }
    hits
}

fn bench(c: &mut Criterion) {
    let conv = load("mooncake_conversation_trace.jsonl");
    let synth = load("mooncake_synthetic_trace.jsonl");
    let capacity = 20_000u64;
    let cfg = ReplayConfig::single(Tier::Cpu, capacity, PolicyKind::Lru.into());
    // Same semantics, same answer.
    assert_eq!(sim::replay(&conv, &cfg).hit_blocks, naive_lru(&conv, capacity as usize));

    let mut g = c.benchmark_group("lru_conversation");
    g.throughput(Throughput::Elements(conv.accesses()));
    g.bench_function("kvlab", |b| b.iter(|| sim::replay(&conv, &cfg)));
    g.bench_function("naive_hashmap_vecdeque", |b| b.iter(|| naive_lru(&conv, capacity as usize)));
    g.finish();

    let traces = [conv, synth];
    let policies: Vec<sim::PolicySpec> = [
        PolicyKind::Lru,
        PolicyKind::Fifo,
        PolicyKind::Lfu,
        PolicyKind::S3Fifo,
        PolicyKind::Sieve,
        PolicyKind::Belady,
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    let capacities: Vec<Capacity> = (1..=20).map(|i| Capacity::Blocks(i * 2_000)).collect();
    let mut g = c.benchmark_group("sweep");
    g.sample_size(10);
    g.bench_function("6_policies_x_20_capacities_x_2_traces", |b| {
        b.iter(|| sim::sweep(&traces, &policies, &capacities, &SweepConfig::default()).expect("sweep"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
