//! The LMCache YAML check: no panic; an error is `file:line:col: ...`.
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check("lmcache_yaml", data));
