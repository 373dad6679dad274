//! Property tests of the registry readers (`models.toml`, `gpus.toml`): on any edit of the
//! shipped files, no panic, and every error is `FILE:LINE: FIELD: message`.

use costmodel::Registry;
use proptest::prelude::*;
use testkit::edits::{apply, edit, Edit};
use testkit::located::check as check_error;

const MODELS: &str = include_str!("../../../configs/models.toml");
const GPUS: &str = include_str!("../../../configs/gpus.toml");

#[test]
fn a_bad_value_is_named() {
    let i =
        MODELS.lines().position(|l| l.trim_start().starts_with("hidden_size")).expect("a hidden_size line");
    let (text, line) = apply(MODELS, &Edit::Value { line: i, nth: 0, value: "0".into() });
    let err = Registry::parse_models(&text, "models.toml").unwrap_err().to_string();
    let index = MODELS.lines().take(i).filter(|l| l.trim() == "[[model]]").count() - 1;
    assert_eq!(err, format!("models.toml:{}: model[{index}].hidden_size: must be at least 1", line.unwrap()));
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
