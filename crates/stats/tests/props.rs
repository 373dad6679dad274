//! Property tests of the readers of `summary.json` and `requests.jsonl` lines (serde_json into
//! [`Summary`] and [`RequestRecord`]): what the lab writes reads back equal, whatever the run
//! did; on any edit, no panic, and every error names its line and column.

use proptest::prelude::*;
use stats::{summarize, RequestError, RequestRecord, Summary, SummaryConfig, TokenSource, RECORD_VERSION};

fn record() -> impl Strategy<Value = RequestRecord> {
    (
        0u64..1000,
        any::<bool>(),
        0.0f64..100.0,
        0.0f64..1.0,
        prop::collection::vec(1u32..4, 0..6),
        prop::option::of(0u32..5000),
        prop::option::of(0u32..5000),
        prop::option::of(0usize..5),
    )
        .prop_map(|(id, warmup, sent, ttft, chunk_tokens, prompt, cached, error)| {
            let first = sent + ttft;
            let chunks: Vec<(f64, u32)> =
                chunk_tokens.iter().enumerate().map(|(i, &k)| (first + 0.01 * i as f64, k)).collect();
            let error = error.map(|e| match e {
                0 => RequestError::Connect { message: "refused".into() },
                1 => RequestError::HttpStatus { status: 503, body: "loading \"é\"".into() },
                2 => RequestError::StreamCut { message: "cut".into() },
                3 => RequestError::MalformedEvent { message: "bad".into() },
                _ => RequestError::Timeout { message: "slow".into() },
            });
            RequestRecord {
                v: RECORD_VERSION,
                id,
                warmup,
                intended: sent,
                sent,
                first_byte: (!chunks.is_empty()).then_some(first),
                first_token: chunks.first().map(|c| c.0),
                end: chunks.last().map_or(first, |c| c.0),
                output_tokens: chunk_tokens.iter().sum(),
                chunks,
                prompt_tokens: prompt,
                cached_tokens: cached,
                token_source: TokenSource::Chunks,
                error,
                session: None,
                turn: None,
            }
        })
}

/// serde_json's position: `... at line N column M`, N within the text (or just past it).
fn check_error(msg: &str, text: &str) -> Result<(), TestCaseError> {
    let at = msg.rfind(" at line ").ok_or_else(|| TestCaseError::fail(format!("no line: {msg}")))?;
    let mut words = msg[at + " at line ".len()..].split(' ');
    let line: usize =
        words.next().and_then(|l| l.parse().ok()).ok_or_else(|| TestCaseError::fail(msg.to_owned()))?;
    prop_assert_eq!(words.next(), Some("column"), "{}", msg);
    // One past the last line: an unexpected end after a final line end.
    prop_assert!(line >= 1 && line <= text.lines().count() + 1, "line {} in {}", line, msg);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the records (none completed, all warm-up, none at all), `summary.json` and
    /// each `requests.jsonl` line read back equal to what was written.
    #[test]
    fn written_files_read_back(records in prop::collection::vec(record(), 0..8)) {
        let summary = summarize(&records, &SummaryConfig::default());
        let text = serde_json::to_string_pretty(&summary).expect("serializes");
        let back: Summary = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, summary);
        for r in &records {
            let line = serde_json::to_string(r).expect("serializes");
            let back: RequestRecord = serde_json::from_str(&line).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
            prop_assert_eq!(&back, r);
        }
    }

    #[test]
    fn edited_summaries(records in prop::collection::vec(record(), 1..4), edits in prop::collection::vec(edit(), 1..3)) {
        let summary = summarize(&records, &SummaryConfig::default());
        let original = serde_json::to_string_pretty(&summary).expect("serializes");
        let text = edits.iter().fold(original, |t, e| apply(&t, e).0);
        if let Err(e) = serde_json::from_str::<Summary>(&text) {
            check_error(&e.to_string(), &text)?;
        }
    }

    #[test]
    fn edited_record_lines(r in record(), edits in prop::collection::vec(edit(), 1..3)) {
        let original = serde_json::to_string_pretty(&r).expect("serializes");
        let text = edits.iter().fold(original, |t, e| apply(&t, e).0);
        if let Err(e) = serde_json::from_str::<RequestRecord>(&text) {
            check_error(&e.to_string(), &text)?;
        }
    }
}

/// A change to a valid file, line by line.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the value of the line's `key = value` / `key: value` / `"key": value` pairs
    /// (the `nth` one on the line) by `value`.
    Value {
        line: usize,
        nth: usize,
        value: String,
    },
    Delete {
        line: usize,
    },
    Insert {
        line: usize,
        text: String,
    },
    Duplicate {
        line: usize,
    },
    /// Cut the file after this many bytes (at a character boundary).
    Truncate {
        at: usize,
    },
}

/// Values that break types and ranges.
const HOSTILE: &[&str] = &[
    "-1",
    "0",
    "1e309",
    "-1e309",
    "1.5",
    "\"x\"",
    "\"\"",
    "[]",
    "{}",
    "[1, \"a\"]",
    "true",
    "null",
    "nan",
    "inf",
    "18446744073709551616",
    "4294967296",
    "-9223372036854775809",
    "\"\\u0000é\"",
    "\"🦀\"",
    "",
    "[",
    "{",
    "\"",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (0usize..64, 0usize..8, prop_oneof![
            3 => prop::sample::select(HOSTILE).prop_map(str::to_owned),
            1 => ".{0,12}",
        ]).prop_map(|(line, nth, value)| Edit::Value { line, nth, value }),
        1 => (0usize..64).prop_map(|line| Edit::Delete { line }),
        1 => (0usize..64, ".{0,24}").prop_map(|(line, text)| Edit::Insert { line, text }),
        1 => (0usize..64).prop_map(|line| Edit::Duplicate { line }),
        1 => (0usize..4096).prop_map(|at| Edit::Truncate { at }),
    ]
}

/// `text` with `e` applied, and the 1-based line it touched (None: the whole file).
fn apply(text: &str, e: &Edit) -> (String, Option<usize>) {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n = lines.len().max(1);
    match e {
        Edit::Value { line, nth, value } => {
            let i = line % n;
            if let Some(l) = lines.get_mut(i) {
                *l = replace_value(l, *nth, value);
            }
            (lines.join("\n"), Some(i + 1))
        }
        Edit::Delete { line } => {
            if !lines.is_empty() {
                lines.remove(line % n);
            }
            (lines.join("\n"), None)
        }
        Edit::Insert { line, text } => {
            let i = line % (lines.len() + 1);
            lines.insert(i, text.clone());
            (lines.join("\n"), Some(i + 1))
        }
        Edit::Duplicate { line } => {
            if let Some(l) = lines.get(line % n).cloned() {
                lines.insert(line % n, l);
            }
            (lines.join("\n"), None)
        }
        Edit::Truncate { at } => {
            let mut at = (*at).min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            (text[..at].to_owned(), None)
        }
    }
}

/// Replaces the value after the `nth` separator (`=`, `:` or `,`) of `line`, up to the next
/// `,` or `}` (or the line's end).
fn replace_value(line: &str, nth: usize, value: &str) -> String {
    let seps: Vec<usize> = line.match_indices(['=', ':', ',']).map(|(i, _)| i).collect();
    if seps.is_empty() {
        return format!("{line}{value}");
    }
    let start = seps[nth % seps.len()] + 1;
    let end = line[start..].find([',', '}']).map_or(line.len(), |j| start + j);
    format!("{} {value}{}", &line[..start], &line[end..])
}
