//! One OpenAI completion or chat chunk: no panic; an error has serde_json's line and column.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = loadgen::parse::chunk(text) {
        assert!(e.contains(" line ") && e.contains(" column "), "{e}");
    }
});
