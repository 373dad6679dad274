//! The Bailian trace reader: no panic; an error names the file and a line of it.
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check("trace_bailian", data));
