//! Plain-text rendering of a [`Summary`] for the terminal, laid out like `vllm bench serve`.

use std::fmt::Write;

use crate::Summary;

/// Render `summary` as the familiar `vllm bench serve` result block. The title says EMULATED
/// when the numbers come from the emulated engine, so they are never mistaken for measurements.
pub fn render_table(s: &Summary) -> String {
    let mut out = String::new();
    let title =
        if s.emulated { " Serving Benchmark Result (EMULATED) " } else { " Serving Benchmark Result " };
    // `{:^50}` cannot take a runtime fill char; pad by hand.
    let centered = |out: &mut String, text: &str, fill: char| {
        let pad = 50usize.saturating_sub(text.len());
        let left = pad / 2;
        let line: String = std::iter::repeat_n(fill, left)
            .chain(text.chars())
            .chain(std::iter::repeat_n(fill, pad - left))
            .collect();
        let _ = writeln!(out, "{line}");
    };
    let int = |out: &mut String, label: &str, v: u64| {
        let _ = writeln!(out, "{label:<40} {v:<10}");
    };
    let num = |out: &mut String, label: &str, v: f64| {
        let _ = writeln!(out, "{label:<40} {v:<10.2}");
    };
    let text = |out: &mut String, label: &str, v: &str| {
        let _ = writeln!(out, "{label:<40} {v:<10}");
    };

    centered(&mut out, title, '=');
    text(&mut out, "Engine:", &s.engine);
    text(&mut out, "Tier:", &s.tier);
    int(&mut out, "Successful requests:", s.completed);
    int(&mut out, "Failed requests:", s.failed);
    for (class, n) in &s.failed_by_class {
        int(&mut out, &format!("  {class}:"), *n);
    }
    int(&mut out, "Warm-up requests (excluded):", s.warmup_excluded);
    num(&mut out, "Benchmark duration (s):", s.duration);
    int(&mut out, "Total input tokens:", s.total_input_tokens);
    int(&mut out, "Total generated tokens:", s.total_output_tokens);
    int(&mut out, "Total cached prompt tokens:", s.cached_tokens_total);
    num(&mut out, "Request throughput (req/s):", s.request_throughput);
    if let Some(goodput) = s.request_goodput {
        num(&mut out, "Request goodput (req/s):", goodput);
    }
    num(&mut out, "Output token throughput (tok/s):", s.output_throughput);
    num(&mut out, "Total Token throughput (tok/s):", s.total_token_throughput);
    int(&mut out, "Max concurrent requests:", s.max_concurrent_requests);

    let rows = [
        ("ttft", "Time to First Token", [s.mean_ttft_ms, s.median_ttft_ms, s.p90_ttft_ms, s.p99_ttft_ms]),
        (
            "tpot",
            "Time per Output Token (excl. 1st token)",
            [s.mean_tpot_ms, s.median_tpot_ms, s.p90_tpot_ms, s.p99_tpot_ms],
        ),
        ("itl", "Inter-token Latency", [s.mean_itl_ms, s.median_itl_ms, s.p90_itl_ms, s.p99_itl_ms]),
        ("e2el", "End-to-end Latency", [s.mean_e2el_ms, s.median_e2el_ms, s.p90_e2el_ms, s.p99_e2el_ms]),
    ];
    for (key, name, [mean, median, p90, p99]) in rows {
        centered(&mut out, name, '-');
        let upper = key.to_uppercase();
        num(&mut out, &format!("Mean {upper} (ms):"), mean);
        num(&mut out, &format!("Median {upper} (ms):"), median);
        num(&mut out, &format!("P90 {upper} (ms):"), p90);
        num(&mut out, &format!("P99 {upper} (ms):"), p99);
    }

    if let Some(sources) = &s.prompt_tokens_by_source {
        centered(&mut out, "Prompt tokens by source", '-');
        let total: u64 = sources.values().sum();
        for (source, n) in sources {
            let pct = if total == 0 { 0.0 } else { *n as f64 * 100.0 / total as f64 };
            text(&mut out, &format!("{}:", source_label(source)), &format!("{n} ({pct:.1}%)"));
        }
    }
    centered(&mut out, "Client", '-');
    num(&mut out, "Mean client lag (ms):", s.client_lag_mean_ms);
    num(&mut out, "P99 client lag (ms):", s.client_lag_p99_ms);
    num(&mut out, "Max client lag (ms):", s.client_lag_max_ms);
    if s.client_limited {
        text(&mut out, "Client limited:", "YES (the client, not the server, limited the rate)");
    }
    if s.queued_requests > 0 {
        int(&mut out, "Requests queued (max concurrency):", s.queued_requests);
        num(&mut out, "Mean Client Queue Time (ms):", s.mean_client_queue_time_ms);
        num(&mut out, "Median Client Queue Time (ms):", s.median_client_queue_time_ms);
        num(&mut out, "P99 Client Queue Time (ms):", s.p99_client_queue_time_ms);
    }
    text(&mut out, "Output token counts from:", s.output_token_source.as_str());
    centered(&mut out, "", '=');
    out
}

/// The table's name of a `prompt_tokens_by_source` key.
fn source_label(source: &str) -> String {
    match source {
        "computed" => "Computed (prefill)".to_owned(),
        "gpu" => "GPU prefix cache".to_owned(),
        tier => format!("Offload tier {tier}"),
    }
}
