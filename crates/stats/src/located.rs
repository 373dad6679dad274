//! Where an input went wrong. Every reader of a file (configs, traces, result files, baselines)
//! reports an error the same way: `FILE:LINE: FIELD: message`, through [`Located`].
//!
//! Invariant: `line` is 1-based and within the text (one past its last line for an unexpected
//! end); `field` is the path of the field the reader was in (`matrix.models[1]`,
//! `hash_ids[3]`, `p99_ttft_ms`), or `(top level)` where the error belongs to no field.

use serde::de::DeserializeOwned;

use crate::jsonl::{shown_field, TextError};

/// An error at a line and field of a file: `FILE:LINE: FIELD: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct Located {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// The field's path, or `(top level)`.
    pub field: String,
    pub message: String,
}

impl Located {
    /// An error at `line` of `file`, on `field` (`""` or `.`: the top level).
    pub fn new(
        file: impl Into<String>,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Located {
        Located {
            file: file.into(),
            line: line.max(1),
            field: shown_field(field.into()),
            message: message.into(),
        }
    }

    /// An error at byte `offset` of `text` (the content of `file`): its line, and its column
    /// after the message, `message (column C)`.
    pub fn at(
        file: impl Into<String>,
        text: &str,
        offset: usize,
        field: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Located {
        let (line, column) = line_col(text, offset);
        Located::new(file, line, field, format!("{message} (column {column})"))
    }

    /// An error about the whole file (nothing valid in it, say): line 1, the top level.
    pub fn whole(file: impl Into<String>, message: impl Into<String>) -> Located {
        Located::new(file, 1, "", message)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// `toml::from_str`, with the line, column and field of an error: the one TOML reader of
/// configs, registries and thresholds.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, TextError> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let path = e.path().to_string();
        let e = e.into_inner();
        let start = e.span().map_or(0, |span| span.start);
        let (line, column) = line_col(text, start);
        // A map key held as a `Spanned` shows as `?` in the path: it is the key of the line.
        let line_key = text.lines().nth(line - 1).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim());
        let field = match line_key {
            Some(k) if path.contains('?') && !k.is_empty() => path.replacen('?', k.trim_matches('"'), 1),
            _ => path,
        };
        let message = match e.message().trim() {
            // The toml crate gives no message for a control character in a comment.
            "" => match text.get(start..).and_then(|t| t.chars().next()) {
                Some(c) => format!("unexpected character {c:?}"),
                None => "unexpected end of file".to_owned(),
            },
            m => m.to_owned(),
        };
        TextError { line, column, field: shown_field(field), message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_name_line_column_and_field() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        #[serde(deny_unknown_fields)]
        struct T {
            a: u32,
            b: Option<Inner>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            c: Vec<f64>,
        }
        let check = |text: &str, expect: &str| {
            assert_eq!(parse_toml::<T>(text).unwrap_err().in_file("t.toml").to_string(), expect, "{text}");
        };
        check(
            "a = 1\n[b]\nc = [1.0, \"x\"]\n",
            "t.toml:3: b.c[1]: invalid type: string \"x\", expected f64 (column 11)",
        );
        check("a = -1\n", "t.toml:1: a: invalid value: integer `-1`, expected u32 (column 5)");
        check("a = 1\nz = 2\n", "t.toml:2: z: unknown field `z`, expected `a` or `b` (column 1)");
        check("a = \n", "t.toml:1: (top level): invalid string\nexpected `\"`, `'` (column 5)");
    }

    #[test]
    fn positions() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\ncd", 99), (2, 3));
        assert_eq!(line_col("é\nx", 1), (1, 1), "inside a character: its start");
        assert_eq!(Located::whole("f", "empty").to_string(), "f:1: (top level): empty");
        assert_eq!(Located::at("f", "a\nbc", 3, "x.y", "bad").to_string(), "f:2: x.y: bad (column 2)");
    }
}
