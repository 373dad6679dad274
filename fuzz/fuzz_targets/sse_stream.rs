//! The SSE response body, split into reads at points the input chooses: no panic, and the
//! split changes nothing (below the caps).
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check("sse_stream", data));
