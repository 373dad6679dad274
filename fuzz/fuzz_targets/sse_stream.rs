//! The SSE response body, split into reads at points the input chooses: no panic, and the
//! split changes nothing (below the caps).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loadgen::parse::sse_stream;
use loadgen::LoadgenConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else { return };
    let cfg = LoadgenConfig::new("http://127.0.0.1:1");
    let whole = sse_stream(&[body], &cfg);
    // Split points from the seed: every (seed % 7 + 1)-th byte.
    let step = usize::from(seed % 7) + 1;
    let reads: Vec<&[u8]> = body.chunks(step).collect();
    let split = sse_stream(&reads, &cfg);
    assert_eq!(whole, split, "split every {step} bytes");
    // Tiny caps: still no panic.
    let mut small = cfg;
    small.max_event_bytes = usize::from(seed);
    small.max_body_bytes = u64::from(seed) * 4;
    let _ = sse_stream(&reads, &small);
});
