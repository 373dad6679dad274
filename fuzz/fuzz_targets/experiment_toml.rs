//! The experiment TOML reader: no panic; an error names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = lab::config::Experiment::parse("exp.toml", text) {
        assert!(e.to_string().contains("exp.toml"), "{e}");
    }
});
