//! Client capacity on one core: a current-thread runtime drives the load generator against a
//! zero-delay streaming server on another thread (127.0.0.1).
//!
//! - `stream/chunks`: one long stream; throughput = streamed chunks per second.
//! - `stream/chunks_x16`: 16 concurrent long streams.
//! - `stream/chunks_stoppable`: `chunks` with a stop token set, as the lab runs it (Ctrl-C
//!   records the requests in flight); its ratio to `chunks` is the cost of watching for the stop.
//! - `requests/short`: requests of one token, 64 in flight; throughput = requests per second.
//! - `chunk/parse_fast`, `chunk/parse_serde`: parsing three typical chunks (a vLLM completion
//!   chunk, a chat delta, the final usage chunk) as the client does, and by serde alone.
//! - after the criterion groups, `concurrent streams`: about 1,100 streams in flight (open loop,
//!   one token every 50 ms each), reporting the client's send lag p50/p99/max.
//!
//! Run: `cargo bench -p kvlab-loadgen --bench client`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{config, plan, start, Behavior};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use loadgen::ResultWriter;
use workload::{Mode, Plan};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client runtime")
}

async fn run(plan: &Plan, url: &str) -> loadgen::RunOutcome {
    run_with(plan, &config(url)).await
}

async fn run_with(plan: &Plan, cfg: &loadgen::LoadgenConfig) -> loadgen::RunOutcome {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut sink = ResultWriter::in_dir(tmp.path()).expect("result dir");
    let out = loadgen::run(plan, cfg, &mut sink, Instant::now()).await.expect("run");
    assert_eq!(out.summary.failed, 0, "{:?}", out.summary.failed_by_class);
    out
}

fn streams(c: &mut Criterion) {
    let server = start(Behavior { events_per_frame: 64, ..Default::default() });
    let rt = runtime();
    let mut g = c.benchmark_group("stream");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for (name, n, tokens, stoppable) in [
        ("chunks", 1u64, 50_000u32, false),
        ("chunks_x16", 16, 5_000, false),
        ("chunks_stoppable", 1, 50_000, true),
    ] {
        g.throughput(Throughput::Elements(n * u64::from(tokens)));
        let p = plan(n, tokens, Mode::Open);
        let mut cfg = config(&server.url);
        cfg.stop = stoppable.then(tokio_util::sync::CancellationToken::new);
        g.bench_function(BenchmarkId::from_parameter(name), |b| b.to_async(&rt).iter(|| run_with(&p, &cfg)));
    }
    g.finish();
}

fn requests(c: &mut Criterion) {
    let server = start(Behavior::default());
    let rt = runtime();
    let mut g = c.benchmark_group("requests");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let n = 2_000;
    g.throughput(Throughput::Elements(n));
    let p = plan(n, 1, Mode::Closed { concurrency: 64 });
    g.bench_function("short", |b| b.to_async(&rt).iter(|| run(&p, &server.url)));
    g.finish();
}

/// Three typical chunks parsed as the client does (the scanner) and by serde's derive alone.
fn chunks(c: &mut Criterion) {
    let data = [
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" the","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}"#,
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":100,"total_tokens":108,"completion_tokens":8,"prompt_tokens_details":{"cached_tokens":64}}}"#,
    ];
    for d in data {
        assert_eq!(loadgen::parse::chunk(d), loadgen::parse::chunk_serde(d), "{d}");
    }
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Elements(data.len() as u64));
    type Parse = fn(&str) -> Result<loadgen::parse::ChunkReport, String>;
    let parsers: [(&str, Parse); 2] =
        [("parse_fast", loadgen::parse::chunk), ("parse_serde", loadgen::parse::chunk_serde)];
    for (name, parse) in parsers {
        g.bench_function(name, |b| {
            b.iter(|| {
                for d in data {
                    std::hint::black_box(parse(std::hint::black_box(d))).expect("a valid chunk");
                }
            })
        });
    }
    g.finish();
}

/// About 1,000 streams in flight for a few seconds; prints the client lag percentiles.
fn concurrent_streams() {
    let server = start(Behavior { itl: Duration::from_millis(50), ..Default::default() });
    let rt = runtime();
    // 40 tokens every 50 ms = 2 s per stream; 3,300 arrivals over 6 s → about 1,100 in flight,
    // 22,000 chunks/s. The first 1,100 (connection set-up) are warm-up.
    let n = 3_300u32;
    let mut p = plan(u64::from(n), 40, Mode::Open);
    for (i, r) in p.requests.iter_mut().enumerate() {
        r.send_at = Some(Duration::from_secs(6) * i as u32 / n);
    }
    p.limits.warmup = 1_100;
    let out = rt.block_on(run(&p, &server.url));
    let s = &out.summary;
    let chunks: usize = out.records.iter().map(|r| r.chunks.len()).sum();
    println!(
        "concurrent streams: peak {} in flight, {} requests, {chunks} chunks; client lag p50 {:.3} ms, \
         p99 {:.3} ms, max {:.3} ms; TTFT p99 {:.3} ms; ITL p99 {:.3} ms",
        s.max_concurrent_requests,
        out.sent,
        s.client_lag_p50_ms,
        s.client_lag_p99_ms,
        s.client_lag_max_ms,
        s.p99_ttft_ms,
        s.p99_itl_ms,
    );
}

criterion_group!(benches, chunks, streams, requests);

fn main() {
    benches();
    concurrent_streams();
    Criterion::default().configure_from_args().final_summary();
}
