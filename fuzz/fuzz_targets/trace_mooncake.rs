//! The Mooncake trace reader: no panic; an error names the file and a line of it.
#![no_main]

#[path = "trace_check.rs"]
mod trace_check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| trace_check::check(workload::TraceFormat::Mooncake, "trace.jsonl", data));
