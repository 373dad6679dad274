//! The baseline reader of `cargo xtask regress` (an insta snapshot of a summary): no panic; an
//! error names the file, its line and the field.
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check("baseline_snap", data));
