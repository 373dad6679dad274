//! The Bailian trace reader: no panic; an error names the file and a line of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workload::{ParseOptions, Trace, TraceFormat};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for skip_bad_lines in [false, true] {
        if let Err(e) =
            Trace::parse(TraceFormat::Bailian, text, "trace.jsonl", &ParseOptions { skip_bad_lines })
        {
            let msg = e.to_string();
            let line: usize = msg
                .strip_prefix("trace.jsonl:")
                .and_then(|r| r.split_once(':'))
                .and_then(|(l, _)| l.parse().ok())
                .unwrap_or_else(|| panic!("no file:line in {msg:?}"));
            assert!(line <= text.lines().count().max(1), "{msg}");
        }
    }
});
