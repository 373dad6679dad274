//! The Prometheus text parser of the engine-metrics sampler: no panic; an error names a line
//! of the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = samplers::parse_exposition(text) {
        assert!(e.line >= 1 && e.line <= text.lines().count(), "{e}");
    }
});
