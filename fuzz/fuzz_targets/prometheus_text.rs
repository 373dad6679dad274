//! The Prometheus text parser of the engine-metrics sampler: no panic; an error names a line
//! of the text.
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check("prometheus_text", data));
