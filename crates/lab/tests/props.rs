//! Property tests of the lab's readers of user files: experiment TOML, tier TOML and the
//! LMCache YAML check. On any edit of the shipped files, no panic, and every error names the
//! file (and, where the parser knows it, the line and column within the text).

use lab::config::{Experiment, Tier, TierConfig};
use lab::lmcache::LmcacheConfig;
use proptest::prelude::*;

const EXPERIMENTS: [&str; 2] = [
    include_str!("../../../configs/experiments/smoke.toml"),
    include_str!("../../../configs/experiments/offload-sweep.toml"),
];
const TIERS: [(Tier, &str); 4] = [
    (Tier::Baseline, include_str!("../../../configs/tiers/baseline.toml")),
    (Tier::Cpu, include_str!("../../../configs/tiers/cpu.toml")),
    (Tier::Disk, include_str!("../../../configs/tiers/disk.toml")),
    (Tier::Redis, include_str!("../../../configs/tiers/redis.toml")),
];
const YAMLS: [&str; 3] = [
    include_str!("../../../configs/lmcache/cpu.yaml"),
    include_str!("../../../configs/lmcache/disk.yaml"),
    include_str!("../../../configs/lmcache/redis.yaml"),
];

/// The error names `file`; a positioned one (`file:LINE:COL: ...`) points inside the text.
fn check_error(msg: &str, file: &str, text: &str) -> Result<(), TestCaseError> {
    prop_assert!(msg.contains(file), "no file name: {}", msg);
    if let Some(rest) = msg.strip_prefix(&format!("{file}:")) {
        let mut parts = rest.splitn(3, ':');
        if let (Some(Ok(line)), Some(Ok(col))) =
            (parts.next().map(str::parse::<usize>), parts.next().map(str::parse::<usize>))
        {
            prop_assert!(line >= 1 && line <= text.lines().count() + 1, "line {} in {}", line, msg);
            prop_assert!(col >= 1, "{}", msg);
            return Ok(());
        }
        // `file: message`: a check of the whole file, with no position.
        prop_assert!(rest.starts_with(' '), "{}", msg);
    }
    Ok(())
}

#[test]
fn a_bad_lmcache_key_is_named() {
    let text = format!("{}\nchunk_sise: 256\n", YAMLS[0]);
    let line = text.lines().count();
    let err = LmcacheConfig::check_yaml("cpu.yaml", &text).unwrap_err().to_string();
    assert!(err.starts_with(&format!("cpu.yaml:{line}:")), "{err}");
    assert!(err.contains("chunk_sise"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn edited_experiments(which in 0usize..2, edits in prop::collection::vec(edit(), 1..4)) {
        let text = edits.iter().fold(EXPERIMENTS[which].to_owned(), |t, e| apply(&t, e).0);
        if let Err(e) = Experiment::parse("exp.toml", &text) {
            check_error(&e.to_string(), "exp.toml", &text)?;
        }
    }

    #[test]
    fn edited_tiers(which in 0usize..4, edits in prop::collection::vec(edit(), 1..4)) {
        let (tier, original) = TIERS[which];
        let text = edits.iter().fold(original.to_owned(), |t, e| apply(&t, e).0);
        if let Err(e) = TierConfig::parse(tier, "tier.toml", &text) {
            check_error(&e.to_string(), "tier.toml", &text)?;
        }
    }

    #[test]
    fn edited_lmcache_yaml(which in 0usize..3, edits in prop::collection::vec(edit(), 1..4)) {
        let text = edits.iter().fold(YAMLS[which].to_owned(), |t, e| apply(&t, e).0);
        if let Err(e) = LmcacheConfig::check_yaml("lm.yaml", &text) {
            let msg = e.to_string();
            check_error(&msg, "lm.yaml", &text)?;
            prop_assert!(msg.starts_with("lm.yaml:"), "a YAML error has its line: {}", msg);
        }
    }

    #[test]
    fn arbitrary_text(text in "(.{0,40}\n){0,6}") {
        if let Err(e) = Experiment::parse("e.toml", &text) {
            check_error(&e.to_string(), "e.toml", &text)?;
        }
        if let Err(e) = TierConfig::parse(Tier::Cpu, "t.toml", &text) {
            check_error(&e.to_string(), "t.toml", &text)?;
        }
        if let Err(e) = LmcacheConfig::check_yaml("l.yaml", &text) {
            check_error(&e.to_string(), "l.yaml", &text)?;
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
