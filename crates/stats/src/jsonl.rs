//! Reading the line files a run appends to (`requests.jsonl`, `samples/*.csv`), which a killed
//! run may leave with a torn last line.
//!
//! Invariant: only the last line can be torn, and only when the text does not end in `\n`
//! (writers end every line with `\n` and flush per line). A torn line is reported, never an
//! error; any other malformed line is an error naming its 1-based line and the field.
//!
//! Every JSON reader of result files goes through [`parse_json`], so every error names the line,
//! the column and the field (the path of keys and indices serde was in, `(top level)` outside
//! any field).

use serde::de::DeserializeOwned;

use crate::located::Located;

/// The text after the last `\n`, when the text does not end in one: a line a killed writer may
/// have left half-written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornLine {
    /// Its 1-based line number.
    pub line: usize,
    /// Its length in bytes.
    pub bytes: usize,
}

impl TornLine {
    /// The warning every reader prints: `file:line: torn last line (N bytes) skipped ...`.
    pub fn warning(&self, file: &str) -> String {
        format!(
            "{file}:{}: torn last line ({} bytes, no newline: the writer was killed while writing it) skipped",
            self.line, self.bytes
        )
    }
}

/// Splits `text` into its complete lines and an unterminated last line (if any, and not blank).
pub fn split_torn_tail(text: &str) -> (&str, Option<(&str, TornLine)>) {
    if text.is_empty() || text.ends_with('\n') {
        return (text, None);
    }
    let cut = text.rfind('\n').map_or(0, |i| i + 1);
    let tail = &text[cut..];
    if tail.trim().is_empty() {
        return (text, None);
    }
    let line = text[..cut].matches('\n').count() + 1;
    (&text[..cut], Some((tail, TornLine { line, bytes: tail.len() })))
}

/// A JSON or TOML text that did not parse as the type asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} column {column}: {field}: {message}")]
pub struct TextError {
    /// 1-based, within the text parsed.
    pub line: usize,
    pub column: usize,
    /// The path of the field (`chunks[2][0]`, `p99_ttft_ms`), or `(top level)`.
    pub field: String,
    /// serde's message, without its position.
    pub message: String,
}

impl TextError {
    /// The message with its column, `message (column C)`: what a reader that reports lines of
    /// a file (`file:LINE: FIELD: ...`) shows.
    pub fn message_with_column(&self) -> String {
        format!("{} (column {})", self.message, self.column)
    }

    /// This error in `file`, whose text begins at line `first_line + 1`:
    /// `file:LINE: FIELD: message (column C)`.
    pub fn in_file(self, file: impl Into<String>) -> Located {
        self.in_file_from(file, 0)
    }

    /// [`TextError::in_file`] for a text that is part of a file, after its first `first_line`
    /// lines.
    pub fn in_file_from(self, file: impl Into<String>, first_line: usize) -> Located {
        let message = self.message_with_column();
        Located::new(file, first_line + self.line, self.field, message)
    }
}

/// `serde_json::from_str`, with the field of an error.
pub fn parse_json<T: DeserializeOwned>(text: &str) -> Result<T, TextError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut field = String::new();
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        field = e.path().to_string();
        e.into_inner()
    });
    let err = match value.and_then(|v| de.end().map(|()| v)) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let (line, column) = (err.line(), err.column());
    let full = err.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    Err(TextError { line, column, field: shown_field(field), message })
}

/// A serde field path as errors show it: `(top level)` for the root (`serde_path_to_error`'s
/// `.`), which TOML readers share. A path that a reader of `FILE:LINE: FIELD: message` could
/// not split (blank, holding `": "` or a control character: an odd key of the input) is shown
/// quoted and escaped, with `": "` as `":\x20"`.
pub fn shown_field(path: String) -> String {
    if path.is_empty() || path == "." || path == "?" {
        "(top level)".to_owned()
    } else if path.trim().is_empty() || path.contains(": ") || path.chars().any(char::is_control) {
        format!("{path:?}").replace(": ", ":\\x20")
    } else {
        path
    }
}

/// A malformed JSON line that is not a torn last line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {message}")]
pub struct JsonlError {
    /// 1-based line of the file.
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl JsonlError {
    /// `file:LINE: FIELD: message`, as every reader of a line file reports it.
    pub fn in_file(&self, file: impl Into<String>) -> Located {
        Located::new(file, self.line, self.field.clone(), self.message.clone())
    }
}

/// The parsed lines of a JSON Lines text: `(1-based line, value)`, blank lines left out.
#[derive(Debug, Clone)]
pub struct JsonLines<T> {
    pub items: Vec<(usize, T)>,
    /// The unterminated last line that did not parse, skipped.
    pub torn: Option<TornLine>,
}

/// Parses every line of `text` as a `T`. An unterminated last line that does not parse is
/// skipped and reported in [`JsonLines::torn`] (one that parses is kept: a file edited by hand
/// may lack its final newline); any other line that does not parse is an error.
pub fn parse_json_lines<T: DeserializeOwned>(text: &str) -> Result<JsonLines<T>, JsonlError> {
    parse_lines(text, Err)
}

/// [`parse_json_lines`] for a reader that would rather lose a line than the file (a status
/// view): a line that does not parse is left out and returned with the rest.
pub fn parse_json_lines_skipping<T: DeserializeOwned>(text: &str) -> (JsonLines<T>, Vec<JsonlError>) {
    let mut bad = Vec::new();
    let lines = parse_lines(text, |e| {
        bad.push(e);
        Ok(())
    });
    (lines.unwrap_or(JsonLines { items: Vec::new(), torn: None }), bad)
}

/// The one loop of both: `on_bad` decides whether a malformed line (not a torn tail) ends the
/// parse (`Err`) or is skipped (`Ok`).
fn parse_lines<T: DeserializeOwned>(
    text: &str,
    mut on_bad: impl FnMut(JsonlError) -> Result<(), JsonlError>,
) -> Result<JsonLines<T>, JsonlError> {
    let (complete, tail) = split_torn_tail(text);
    let mut items = Vec::new();
    for (i, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_json(line) {
            Ok(value) => items.push((i + 1, value)),
            Err(e) => {
                let message = e.message_with_column();
                on_bad(JsonlError { line: i + 1, field: e.field, message })?
            }
        }
    }
    let mut torn = None;
    if let Some((tail, t)) = tail {
        match parse_json(tail) {
            Ok(value) => items.push((t.line, value)),
            Err(_) => torn = Some(t),
        }
    }
    Ok(JsonLines { items, torn })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_last_line_is_skipped_and_reported() {
        let got = parse_json_lines::<serde_json::Value>("{\"a\":1}\n\n{\"a\":2}\n{\"a\":").unwrap();
        assert_eq!(got.items.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(got.torn, Some(TornLine { line: 4, bytes: 5 }));
        assert_eq!(
            got.torn.unwrap().warning("r.jsonl"),
            "r.jsonl:4: torn last line (5 bytes, no newline: the writer was killed while writing it) skipped"
        );
    }

    #[test]
    fn complete_unterminated_line_is_kept() {
        let got = parse_json_lines::<serde_json::Value>("{\"a\":1}\n{\"a\":2}").unwrap();
        assert_eq!(got.items.len(), 2);
        assert_eq!(got.torn, None);
    }

    #[test]
    fn a_bad_line_before_the_end_is_an_error() {
        let err = parse_json_lines::<serde_json::Value>("{\"a\":1}\n{\"a\":\n{\"a\":2}\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse_json_lines::<serde_json::Value>("{\"a\":\n").unwrap_err();
        assert_eq!(err.line, 1, "a terminated line was written whole: not torn");
    }

    #[test]
    fn skipping_keeps_the_good_lines_and_names_the_bad() {
        let (got, bad) =
            parse_json_lines_skipping::<serde_json::Value>("{\"a\":1}\nnot json\n{\"a\":2}\n{\"a\":");
        assert_eq!(got.items.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(got.torn, Some(TornLine { line: 4, bytes: 5 }));
        assert_eq!(bad.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn errors_name_the_field() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct R {
            a: f64,
            chunks: Vec<(f64, u32)>,
        }
        let check = |text: &str, expect: &str| {
            assert_eq!(parse_json::<R>(text).unwrap_err().to_string(), expect, "{text}");
        };
        check(r#"{"a": "x", "chunks": []}"#, r#"line 1 column 9: a: invalid type: string "x", expected f64"#);
        check(
            "{\"a\": 1,\n \"chunks\": [[0.5, 1], [0.6, -1]]}",
            "line 2 column 30: chunks[1][1]: invalid value: integer `-1`, expected u32",
        );
        check(r#"{"a": 1}"#, "line 1 column 8: (top level): missing field `chunks`");
        check(r#"{"a": 1, "chunks": []} x"#, "line 1 column 24: (top level): trailing characters");
        check("", "line 1 column 0: (top level): EOF while parsing a value");
        let err =
            parse_json_lines::<R>("{\"a\": 1, \"chunks\": []}\n{\"a\": true, \"chunks\": []}\n").unwrap_err();
        assert_eq!(err.to_string(), "line 2: a: invalid type: boolean `true`, expected f64 (column 10)");
    }

    #[test]
    fn odd_keys_are_quoted_so_the_field_can_be_told_from_the_message() {
        let check = |path: &str, expect: &str| assert_eq!(shown_field(path.to_owned()), expect);
        check("", "(top level)");
        check("chunks[1][0]", "chunks[1][0]");
        check("vllm:num_requests", "vllm:num_requests");
        check(" ", r#"" ""#);
        check(": 0timestamp.?", r#"":\x200timestamp.?""#);
        check("a\nb", r#""a\nb""#);
        let once = shown_field(": x".to_owned());
        assert_eq!(shown_field(once.clone()), once, "applied twice, the same");
    }

    #[test]
    fn split() {
        assert_eq!(split_torn_tail("a\nb\n"), ("a\nb\n", None));
        assert_eq!(split_torn_tail("a\nb"), ("a\n", Some(("b", TornLine { line: 2, bytes: 1 }))));
        assert_eq!(split_torn_tail("a\n  "), ("a\n  ", None));
        assert_eq!(split_torn_tail(""), ("", None));
    }
}
