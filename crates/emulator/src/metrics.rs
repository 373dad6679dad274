//! Engine counters and histograms, rendered in Prometheus text with vLLM's and LMCache's names.

use std::fmt::Write as _;

use kvcache::Tier;

/// vLLM's `time_to_first_token_seconds` buckets.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's request-phase buckets (queue, prefill, decode, e2e).
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
];

#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub(crate) fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if i < self.counts.len() {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b:?}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {:?}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// What the scheduler counts. Token counters are in tokens, as vLLM's.
#[derive(Debug, Clone)]
pub(crate) struct EngineMetrics {
    pub(crate) prefix_queries: u64,
    pub(crate) prefix_hits: u64,
    pub(crate) external_queries: u64,
    pub(crate) external_hits: u64,
    /// Tokens loaded from each offload tier, indexed by `Tier as usize`.
    pub(crate) tier_hit_tokens: [u64; 4],
    pub(crate) lmcache_requested: u64,
    pub(crate) lmcache_hit: u64,
    pub(crate) lmcache_stored: u64,
    /// Prompt tokens by where they came from at a request's first scheduling, as vLLM's
    /// `prompt_tokens_by_source`: computed, GPU prefix-cache hit, loaded from the offload tiers.
    pub(crate) by_source: BySource,
    /// Tokens of whole chunks LMCache's lookup found, by level (`l1`: the cpu tier, `l2`: disk
    /// and redis), as LMCache's server counts them (`lmcache_mp_lookup_hit_*`): whole chunks,
    /// including those vLLM then found in its own cache.
    pub(crate) lookup_hit_l1: u64,
    pub(crate) lookup_hit_l2: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) generation_tokens: u64,
    pub(crate) requests_finished: u64,
    pub(crate) preemptions: u64,
    pub(crate) queue_time: Histogram,
    pub(crate) prefill_time: Histogram,
    pub(crate) decode_time: Histogram,
    pub(crate) e2e_time: Histogram,
    pub(crate) ttft: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            prefix_queries: 0,
            prefix_hits: 0,
            external_queries: 0,
            external_hits: 0,
            tier_hit_tokens: [0; 4],
            lmcache_requested: 0,
            lmcache_hit: 0,
            lmcache_stored: 0,
            by_source: BySource::default(),
            lookup_hit_l1: 0,
            lookup_hit_l2: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            requests_finished: 0,
            preemptions: 0,
            queue_time: Histogram::new(REQUEST_BUCKETS),
            prefill_time: Histogram::new(REQUEST_BUCKETS),
            decode_time: Histogram::new(REQUEST_BUCKETS),
            e2e_time: Histogram::new(REQUEST_BUCKETS),
            ttft: Histogram::new(TTFT_BUCKETS),
        }
    }
}

/// vLLM's `prompt_tokens_by_source` sources, in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct BySource {
    pub(crate) local_compute: u64,
    pub(crate) local_cache_hit: u64,
    pub(crate) external_kv_transfer: u64,
}

/// Instantaneous engine state for the gauges.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gauges {
    pub(crate) running: usize,
    pub(crate) waiting: usize,
    pub(crate) kv_usage: f64,
}

/// Per-tier I/O counters of the real-time shell.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TierIo {
    pub(crate) tier: Option<Tier>,
    pub(crate) errors: u64,
    pub(crate) read_errors: u64,
    pub(crate) write_errors: u64,
    pub(crate) read_bytes: u64,
    pub(crate) written_bytes: u64,
    pub(crate) chunks: u64,
}

pub(crate) struct RenderInput<'a> {
    pub(crate) model: &'a str,
    pub(crate) byte_scale: f64,
    pub(crate) engine: &'a EngineMetrics,
    pub(crate) gauges: Gauges,
    pub(crate) tiers: &'a [TierIo],
}

fn counter(out: &mut String, name: &str, help: &str, labels: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{labels}}} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, labels: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {v:?}");
}

/// The `/metrics` body.
pub(crate) fn render(inp: &RenderInput<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let labels = format!("model_name=\"{}\"", inp.model.replace('\\', "\\\\").replace('"', "\\\""));
    let l = labels.as_str();
    let e = inp.engine;
    let g = inp.gauges;
    gauge(&mut out, "kvlab_emulated", "1: this engine is kvlab's emulator, not a real model.", l, 1.0);
    gauge(
        &mut out,
        "kvlab_byte_scale",
        "Stored bytes per modelled KV byte in the offload tiers.",
        l,
        inp.byte_scale,
    );
    gauge(&mut out, "vllm:num_requests_running", "Requests in the running batch.", l, g.running as f64);
    gauge(&mut out, "vllm:num_requests_waiting", "Requests waiting to be scheduled.", l, g.waiting as f64);
    gauge(&mut out, "vllm:kv_cache_usage_perc", "GPU KV-cache usage; 1 means 100 percent.", l, g.kv_usage);
    counter(
        &mut out,
        "vllm:prefix_cache_queries_total",
        "Prompt tokens queried in the GPU prefix cache.",
        l,
        e.prefix_queries,
    );
    counter(
        &mut out,
        "vllm:prefix_cache_hits_total",
        "Prompt tokens found in the GPU prefix cache.",
        l,
        e.prefix_hits,
    );
    counter(
        &mut out,
        "vllm:external_prefix_cache_queries_total",
        "Prompt tokens queried in the offload tiers.",
        l,
        e.external_queries,
    );
    counter(
        &mut out,
        "vllm:external_prefix_cache_hits_total",
        "Prompt tokens loaded from the offload tiers.",
        l,
        e.external_hits,
    );
    counter(&mut out, "vllm:prompt_tokens_total", "Prompt tokens processed.", l, e.prompt_tokens);
    let name = "vllm:prompt_tokens_by_source_total";
    let _ = writeln!(
        out,
        "# HELP {name} Prompt tokens by source: computed, GPU prefix-cache hit, loaded by the connector.\n\
         # TYPE {name} counter"
    );
    for (source, v) in [
        ("local_compute", e.by_source.local_compute),
        ("local_cache_hit", e.by_source.local_cache_hit),
        ("external_kv_transfer", e.by_source.external_kv_transfer),
    ] {
        let _ = writeln!(out, "{name}{{{l},source=\"{source}\"}} {v}");
    }
    counter(&mut out, "vllm:generation_tokens_total", "Tokens generated.", l, e.generation_tokens);
    counter(&mut out, "vllm:request_success_total", "Requests finished.", l, e.requests_finished);
    counter(&mut out, "vllm:num_preemptions_total", "Preemptions (recompute).", l, e.preemptions);
    e.queue_time.render(&mut out, "vllm:request_queue_time_seconds", "Time in the waiting queue.", l);
    e.prefill_time.render(&mut out, "vllm:request_prefill_time_seconds", "Time in prefill.", l);
    e.decode_time.render(&mut out, "vllm:request_decode_time_seconds", "Time in decode.", l);
    e.e2e_time.render(&mut out, "vllm:e2e_request_latency_seconds", "End-to-end request latency.", l);
    e.ttft.render(&mut out, "vllm:time_to_first_token_seconds", "Time to first token.", l);
    counter(
        &mut out,
        "lmcache:num_requested_tokens",
        "Tokens looked up in LMCache-like tiers.",
        l,
        e.lmcache_requested,
    );
    counter(&mut out, "lmcache:num_hit_tokens", "Tokens found in the offload tiers.", l, e.lmcache_hit);
    counter(
        &mut out,
        "lmcache:num_stored_tokens",
        "Prompt tokens in full chunks submitted for storing (new chunks are written, present ones refreshed).",
        l,
        e.lmcache_stored,
    );
    if !inp.tiers.is_empty() {
        // LMCache's server's names (multi-process mode): what its lookups found, in whole
        // chunks, in all levels and per level.
        let l1 = e.lookup_hit_l1;
        let l2 = e.lookup_hit_l2;
        for (name, help, v) in [
            ("lmcache_mp_lookup_hit_tokens_total", "Tokens of whole chunks found by lookups.", l1 + l2),
            (
                "lmcache_mp_lookup_hit_l1_tokens_total",
                "Lookup hit tokens in L1 (host memory: the cpu tier).",
                l1,
            ),
            ("lmcache_mp_lookup_hit_l2_tokens_total", "Lookup hit tokens in L2 (disk, Redis).", l2),
        ] {
            counter(&mut out, name, help, l, v);
        }
    }
    for (name, help) in [
        ("kvlab_tier_errors_total", "Offload-tier I/O errors (the request was recomputed)."),
        ("kvlab_tier_read_errors_total", "Failed chunk loads (the chunk was recomputed)."),
        ("kvlab_tier_write_errors_total", "Failed chunk stores and deletes (the chunk is forgotten)."),
        ("kvlab_tier_read_bytes_total", "Bytes read from the offload tier."),
        ("kvlab_tier_written_bytes_total", "Bytes written to the offload tier."),
        ("kvlab_tier_hit_tokens_total", "Prompt tokens loaded from the offload tier."),
        ("kvlab_tier_chunks", "Chunks resident in the offload tier."),
    ] {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for t in inp.tiers {
            let Some(tier) = t.tier else { continue };
            let v = match name {
                "kvlab_tier_errors_total" => t.errors,
                "kvlab_tier_read_errors_total" => t.read_errors,
                "kvlab_tier_write_errors_total" => t.write_errors,
                "kvlab_tier_read_bytes_total" => t.read_bytes,
                "kvlab_tier_written_bytes_total" => t.written_bytes,
                "kvlab_tier_hit_tokens_total" => e.tier_hit_tokens[tier as usize],
                _ => t.chunks,
            };
            let _ = writeln!(out, "{name}{{{l},tier=\"{tier}\"}} {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let mut engine = EngineMetrics {
            prefix_queries: 4096,
            prefix_hits: 1024,
            external_queries: 4096,
            external_hits: 2048,
            lmcache_requested: 4096,
            lmcache_hit: 2048,
            by_source: BySource { local_compute: 1024, local_cache_hit: 1024, external_kv_transfer: 2048 },
            lookup_hit_l2: 2048,
            requests_finished: 2,
            ..EngineMetrics::default()
        };
        engine.tier_hit_tokens[Tier::Disk as usize] = 2048;
        for v in [0.003, 0.2, 3000.0] {
            engine.ttft.observe(v);
        }
        engine.queue_time.observe(0.3);
        let tiers = [TierIo {
            tier: Some(Tier::Disk),
            errors: 3,
            read_errors: 1,
            write_errors: 2,
            read_bytes: 1 << 20,
            written_bytes: 2 << 20,
            chunks: 4,
        }];
        let text = render(&RenderInput {
            model: "m\"x",
            byte_scale: 0.015625,
            engine: &engine,
            gauges: Gauges { running: 1, waiting: 2, kv_usage: 0.25 },
            tiers: &tiers,
        });
        insta::assert_snapshot!(text);
    }
}
