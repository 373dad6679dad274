//! Test support shared by kvlab's crates; a dev-dependency only.
//!
//! [`edits`]: mutations of a valid input file, line by line, for the property tests of every parser
//! of outside input ("no panic, and every error names the file, line and field").

pub mod edits {
    //! Edits of a valid file: hostile values, deleted, inserted and duplicated lines, truncation.
    //! [`apply`] reports the line it touched, so a test can check that an error blames it.

    use proptest::prelude::*;

    /// A change to a valid file, line by line.
    #[derive(Debug, Clone)]
    pub enum Edit {
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
    pub const HOSTILE: &[&str] = &[
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

    pub fn edit() -> impl Strategy<Value = Edit> {
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
    pub fn apply(text: &str, e: &Edit) -> (String, Option<usize>) {
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
    pub fn replace_value(line: &str, nth: usize, value: &str) -> String {
        let seps: Vec<usize> = line.match_indices(['=', ':', ',']).map(|(i, _)| i).collect();
        if seps.is_empty() {
            return format!("{line}{value}");
        }
        let start = seps[nth % seps.len()] + 1;
        let end = line[start..].find([',', '}']).map_or(line.len(), |j| start + j);
        format!("{} {value}{}", &line[..start], &line[end..])
    }
}
