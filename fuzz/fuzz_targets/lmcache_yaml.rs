//! The LMCache YAML check: no panic; an error is `file:line:col: ...`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = lab::lmcache::LmcacheConfig::check_yaml("lm.yaml", text) {
        assert!(e.to_string().starts_with("lm.yaml:"), "{e}");
    }
});
