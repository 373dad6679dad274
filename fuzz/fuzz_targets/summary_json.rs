//! The readers of `summary.json` (report's) and `requests.jsonl` lines: no panic; an error names
//! the file, its line and the field.
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check("summary_json", data));
