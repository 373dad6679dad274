//! Property tests of the registry readers (`models.toml`, `gpus.toml`): on any edit of the
//! shipped files, no panic, and every error names the file, a line of it, and a column.

use costmodel::Registry;
use proptest::prelude::*;

const MODELS: &str = include_str!("../../../configs/models.toml");
const GPUS: &str = include_str!("../../../configs/gpus.toml");

/// `file:LINE:COL: message` with LINE within the text (one past its end for an unexpected end).
fn check_error(msg: &str, file: &str, text: &str) -> Result<(), TestCaseError> {
    let rest = msg
        .strip_prefix(&format!("{file}:"))
        .ok_or_else(|| TestCaseError::fail(format!("no file: {msg}")))?;
    let mut parts = rest.splitn(3, ':');
    let line: usize = parts
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| TestCaseError::fail(format!("no line: {msg}")))?;
    let col: usize = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| TestCaseError::fail(format!("no column: {msg}")))?;
    prop_assert!(line >= 1 && line <= text.lines().count() + 1, "line {} in {}", line, msg);
    prop_assert!(col >= 1, "{}", msg);
    Ok(())
}

#[test]
fn a_bad_value_is_named() {
    let i =
        MODELS.lines().position(|l| l.trim_start().starts_with("hidden_size")).expect("a hidden_size line");
    let (text, line) = apply(MODELS, &Edit::Value { line: i, nth: 0, value: "0".into() });
    let err = Registry::parse_models(&text, "models.toml").unwrap_err().to_string();
    assert!(err.starts_with(&format!("models.toml:{}:", line.unwrap())), "{err}");
    assert!(err.contains("key `hidden_size`: must be at least 1"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn edited_models(edits in prop::collection::vec(edit(), 1..4)) {
        let text = edits.iter().fold(MODELS.to_owned(), |t, e| apply(&t, e).0);
        if let Err(e) = Registry::parse_models(&text, "models.toml") {
            check_error(&e.to_string(), "models.toml", &text)?;
        }
    }

    #[test]
    fn edited_gpus(edits in prop::collection::vec(edit(), 1..4)) {
        let text = edits.iter().fold(GPUS.to_owned(), |t, e| apply(&t, e).0);
        if let Err(e) = Registry::parse_gpus(&text, "gpus.toml") {
            check_error(&e.to_string(), "gpus.toml", &text)?;
        }
    }

    #[test]
    fn arbitrary_text(text in "(.{0,40}\n){0,6}") {
        if let Err(e) = Registry::parse_models(&text, "m.toml") {
            check_error(&e.to_string(), "m.toml", &text)?;
        }
        if let Err(e) = Registry::parse_gpus(&text, "g.toml") {
            check_error(&e.to_string(), "g.toml", &text)?;
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
