//! The experiment TOML reader: no panic; an error names the file.
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check("experiment_toml", data));
