//! Property tests of the readers `report` and `regress` use on outside files: `summary.json`,
//! the thresholds TOML and the baseline snapshots. On any edit of a real file, no panic, and
//! every error is `FILE:LINE: FIELD: message`: the file, a line within the text, and the field
//! (a JSON path, a TOML key, or `(top level)`/`(header)` where the error is outside any field).

use std::path::Path;

use proptest::prelude::*;
use report::regress::{Baselines, Thresholds};
use testkit::edits::{apply, edit};
use testkit::located::check as check_error;

const THRESHOLDS: &str = include_str!("../../../configs/regress.toml");
const BASELINES: [&str; 2] = [
    include_str!("../../../results/baselines/emulated-pinned-baseline.snap"),
    include_str!("../../../results/baselines/emulated-pinned-cpu.snap"),
];
const SUMMARY: &str = include_str!("fixtures/cpu-emulated/summary.json");

#[test]
fn fields_are_named() {
    let check = |text: &str, expect: &str| {
        let err = report::parse_summary(text, Path::new("summary.json")).unwrap_err().to_string();
        assert_eq!(err, expect);
    };
    check(
        &SUMMARY.replacen("\"p99_ttft_ms\": ", "\"p99_ttft_ms\": \"slow\", \"x\": ", 1),
        &format!(
            "summary.json:{}: p99_ttft_ms: invalid type: string \"slow\", expected f64 (column {})",
            SUMMARY.lines().position(|l| l.contains("\"p99_ttft_ms\"")).unwrap() + 1,
            SUMMARY.lines().find(|l| l.contains("\"p99_ttft_ms\"")).unwrap().find(':').unwrap() + 8,
        ),
    );
    let err = Baselines::parse("no header", Path::new("b.snap")).unwrap_err().to_string();
    assert_eq!(err, "b.snap:1: (header): not an insta snapshot: expected a `---` header");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn edited_summaries(edits in prop::collection::vec(edit(), 1..4)) {
        let text = edits.iter().fold(SUMMARY.to_owned(), |t, e| apply(&t, e).0);
        if let Err(e) = report::parse_summary(&text, Path::new("summary.json")) {
            check_error(&e.to_string(), "summary.json", &text)?;
        }
    }

    #[test]
    fn edited_thresholds(edits in prop::collection::vec(edit(), 1..4)) {
        let text = edits.iter().fold(THRESHOLDS.to_owned(), |t, e| apply(&t, e).0);
        if let Err(e) = Thresholds::parse(&text, Path::new("regress.toml")) {
            check_error(&e.to_string(), "regress.toml", &text)?;
        }
    }

    #[test]
    fn edited_baselines(which in 0usize..2, edits in prop::collection::vec(edit(), 1..4)) {
        let text = edits.iter().fold(BASELINES[which].to_owned(), |t, e| apply(&t, e).0);
        if let Err(e) = Baselines::parse(&text, Path::new("b.snap")) {
            check_error(&e.to_string(), "b.snap", &text)?;
        }
    }
}
