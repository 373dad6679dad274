//! Property tests of the lab's readers of user files: experiment TOML, tier TOML and the
//! LMCache YAML check. On any edit of the shipped files, no panic, and every error names the
//! file (and, where the parser knows it, the line and column within the text).

use lab::config::{Experiment, Tier, TierConfig};
use lab::lmcache::LmcacheConfig;
use proptest::prelude::*;
use testkit::edits::{apply, edit};

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
