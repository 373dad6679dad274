//! Property tests of the trace readers (Mooncake JSONL, Qwen-Bailian JSONL, Azure CSV): on
//! any input, no panic, and every error is `FILE:LINE: FIELD: message` (the field at fault, or
//! `(top level)`, `(header)`, `(row)`).

use proptest::prelude::*;
use testkit::edits::{apply, edit, Edit};
use workload::{ParseOptions, Trace, TraceFormat};

const FIXTURES: [(TraceFormat, &str, &str); 3] = [
    (TraceFormat::Mooncake, "mooncake.jsonl", include_str!("fixtures/mooncake_small.jsonl")),
    (TraceFormat::Bailian, "bailian.jsonl", include_str!("fixtures/bailian_small.jsonl")),
    (TraceFormat::Azure, "azure.csv", include_str!("fixtures/azure_small.csv")),
];

fn check(
    format: TraceFormat,
    file: &str,
    text: &str,
    touched: Option<usize>,
    field: Option<&str>,
) -> Result<(), TestCaseError> {
    for skip in [false, true] {
        let opts = ParseOptions { skip_bad_lines: skip };
        let err = match Trace::parse(format, text, file, &opts) {
            Ok(t) => {
                prop_assert!(!t.entries.is_empty());
                prop_assert!(t.entries.iter().any(|e| e.at.is_zero()), "the earliest entry is at 0");
                prop_assert_eq!(t.bad_lines == 0, t.first_bad_line.is_none());
                continue;
            }
            Err(e) => e.to_string(),
        };
        testkit::located::check(&err, file, text)?;
        let (line, err_field, _) = testkit::located::parse(&err, file)?;
        let whole_file = err_field == "(top level)" && err.contains(" no valid ");
        // Each line stands alone: a line-local edit is reported at that line (unless the file
        // has nothing valid left, or the edit is in Azure's header).
        if let (Some(t), false) = (touched, skip) {
            if !(whole_file || (format == TraceFormat::Azure && t == 1)) {
                prop_assert_eq!(line, t, "{}", err);
                // The edited key is the field at fault, unless the line no longer parses at all.
                if let Some(f) = field.filter(|_| !err_field.starts_with('(')) {
                    prop_assert!(err_field.starts_with(f), "names field {}: {}", f, err);
                }
            }
        }
    }
    Ok(())
}

/// The JSON key a `Value` edit changed, for the field check.
fn edited_field(original: &str, edited: &str) -> Option<String> {
    let a: serde_json::Value = serde_json::from_str(original).ok()?;
    let b: serde_json::Value = serde_json::from_str(edited).ok()?;
    let (a, b) = (a.as_object()?, b.as_object()?);
    let changed: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
    (changed.len() == 1 && a.len() == b.len()).then(|| changed[0].clone())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn edited_traces(which in 0usize..3, edits in prop::collection::vec(edit(), 1..3)) {
        let (format, file, original) = FIXTURES[which];
        let mut text = original.to_owned();
        let mut touched = None;
        let mut field = None;
        for (k, e) in edits.iter().enumerate() {
            let before = text.clone();
            let (t, line) = apply(&text, e);
            text = t;
            // Only a single line-local edit has one line to blame.
            touched = if k == 0 { line } else { None };
            field = match (e, line) {
                (Edit::Value { .. }, Some(l)) if k == 0 => edited_field(
                    before.lines().nth(l - 1).unwrap_or(""),
                    text.lines().nth(l - 1).unwrap_or(""),
                ),
                _ => None,
            };
        }
        check(format, file, &text, touched, field.as_deref())?;
    }

    #[test]
    fn arbitrary_text(which in 0usize..3, text in "(.{0,40}\n){0,6}") {
        let (format, file, _) = FIXTURES[which];
        check(format, file, &text, None, None)?;
    }
}

/// The edits do what they say, and the checks see what is wrong.
#[test]
fn a_wrong_field_is_named() {
    let (_, file, original) = FIXTURES[0];
    let e = Edit::Value { line: 0, nth: 2, value: "-1".into() };
    let (text, line) = apply(original, &e);
    assert_eq!(line, Some(1));
    let err =
        Trace::parse(TraceFormat::Mooncake, &text, file, &ParseOptions::default()).unwrap_err().to_string();
    assert_eq!(err, "mooncake.jsonl:1: input_length: expected a non-negative integer below 2^32");
    assert_eq!(
        edited_field(original.lines().next().unwrap(), text.lines().next().unwrap()).as_deref(),
        Some("input_length")
    );
    assert_eq!(testkit::located::parse(&err, file).unwrap().0, 1);
}

/// Found by the `trace_azure` fuzz target: a huge year overflowed the timestamp arithmetic
/// (a panic in debug builds, a wrong time in release).
#[test]
fn azure_year_out_of_range_is_a_field_error() {
    let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2000002085235124-11-16 18:15:46.6805900,374,44\n";
    let err = Trace::parse(TraceFormat::Azure, text, "azure.csv", &ParseOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("azure.csv:3: TIMESTAMP: expected YYYY-MM-DD"), "{err}");
}
