//! The model and GPU registry readers: no panic; an error is `file:line:col: ...`.
#![no_main]

use costmodel::Registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Registry::parse_models(text, "models.toml") {
        assert!(e.to_string().starts_with("models.toml:"), "{e}");
    }
    if let Err(e) = Registry::parse_gpus(text, "gpus.toml") {
        assert!(e.to_string().starts_with("gpus.toml:"), "{e}");
    }
});
