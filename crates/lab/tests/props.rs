//! Property tests of the lab's readers of user files: experiment TOML, tier TOML and the
//! LMCache YAML check. On any edit of the shipped files, no panic, and every error is
//! `FILE:LINE: FIELD: message` with the line within the text. The LMCache YAML has a writer too
//! (`LmcacheConfig::to_yaml`, the file a run hands LMCache): what it writes reads back equal.

use proptest::prelude::*;
use schema::config::{Experiment, Tier, TierConfig};
use schema::lmcache::{LmValue, LmcacheConfig, Origin, KNOWN_KEYS};
use testkit::edits::{apply, edit};
use testkit::located::check as check_error;

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

#[test]
fn a_bad_lmcache_key_is_named() {
    let text = format!("{}\nchunk_sise: 256\n", YAMLS[0]);
    let line = text.lines().count();
    let err = LmcacheConfig::check_yaml("cpu.yaml", &text).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "cpu.yaml:{line}: chunk_sise: unknown LMCache key (LMCache would only warn and ignore it); \
             did you mean `chunk_size`?"
        )
    );
}

/// An LMCache value of any type; strings of any characters (quotes, backslashes, `#`, control
/// characters, non-ASCII), floats finite or infinite (NaN equals nothing, itself included).
fn lm_value() -> impl Strategy<Value = LmValue> {
    prop_oneof![
        any::<bool>().prop_map(LmValue::Bool),
        any::<i64>().prop_map(LmValue::Int),
        any::<f64>().prop_filter("NaN is never equal", |f| !f.is_nan()).prop_map(LmValue::Float),
        any::<String>().prop_map(LmValue::Str),
        "(file://|redis://)[a-z/:0-9]{0,12}".prop_map(LmValue::Str),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    /// Settings the checks accept, written by `to_yaml`, read back by `check_yaml`: equal.
    #[test]
    fn lmcache_yaml_round_trip(settings in prop::collection::vec((0..KNOWN_KEYS.len(), lm_value()), 0..12)) {
        let origin = Origin { file: "gen", line: 1, table: None };
        let mut config = LmcacheConfig::default();
        for (key, value) in settings {
            // A value of the wrong type for its key is refused here as in a file: not written.
            let _ = config.set(KNOWN_KEYS[key], value, origin);
        }
        let yaml = config.to_yaml();
        let back = LmcacheConfig::check_yaml("lm.yaml", &yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(back, config, "{}", yaml);
    }

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
            check_error(&e.to_string(), "lm.yaml", &text)?;
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
