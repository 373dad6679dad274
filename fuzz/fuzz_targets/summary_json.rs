//! `summary.json` and `requests.jsonl` lines: no panic; an error has its line and column.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = serde_json::from_slice::<stats::Summary>(data) {
        assert!(e.to_string().contains(" line "), "{e}");
    }
    if let Err(e) = serde_json::from_slice::<stats::RequestRecord>(data) {
        assert!(e.to_string().contains(" line "), "{e}");
    }
});
