//! The tier TOML reader (its `[lmcache]` table included): no panic; an error names the file.
#![no_main]

use lab::config::{Tier, TierConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for tier in Tier::ALL {
        if let Err(e) = TierConfig::parse(tier, "tier.toml", text) {
            assert!(e.to_string().contains("tier.toml"), "{e}");
        }
    }
});
