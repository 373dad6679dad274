//! The thresholds reader of `cargo xtask regress` (`configs/regress.toml`): no panic; an error
//! names the file, its line and the key.
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check("thresholds_toml", data));
