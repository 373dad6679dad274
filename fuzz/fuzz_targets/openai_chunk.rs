//! One OpenAI completion or chat chunk: no panic; an error has serde_json's line and column.
#![no_main]

#[path = "checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::check("openai_chunk", data));
