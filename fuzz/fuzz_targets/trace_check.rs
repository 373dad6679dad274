//! The property every trace target checks (included by each with `#[path]`): for any UTF-8
//! input, no panic, and an error names the file and a line that exists.

use workload::{ParseOptions, Trace, TraceFormat};

pub fn check(format: TraceFormat, file: &str, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for skip_bad_lines in [false, true] {
        if let Err(e) = Trace::parse(format, text, file, &ParseOptions { skip_bad_lines }) {
            let msg = e.to_string();
            let line: usize = msg
                .strip_prefix(file)
                .and_then(|r| r.strip_prefix(':'))
                .and_then(|r| r.split_once(':'))
                .and_then(|(l, _)| l.parse().ok())
                .unwrap_or_else(|| panic!("no file:line in {msg:?}"));
            assert!(line <= text.lines().count().max(1), "{msg}");
        }
    }
}
