//! Every seed of every fuzz target (`fuzz/corpus/<target>/`), crashes the fuzzer found among
//! them, runs through that target's check ([`checks::check`], the same function the fuzz target
//! calls) on the stable toolchain, so `cargo xtask ci` keeps each found crash fixed.

#[path = "../../../fuzz/fuzz_targets/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The `[[bin]]` names of `fuzz/Cargo.toml`: what `cargo xtask fuzz --list` prints.
fn bins() -> Vec<String> {
    let text = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    let bins = manifest["bin"].as_array().expect("fuzz/Cargo.toml has [[bin]] targets");
    bins.iter().map(|b| b["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn every_fuzz_target_has_a_check_and_seeds() {
    let mut bins = bins();
    bins.sort();
    let mut targets: Vec<String> = checks::TARGETS.iter().map(|t| (*t).to_owned()).collect();
    targets.sort();
    assert_eq!(bins, targets, "fuzz/Cargo.toml's targets and checks::TARGETS differ");
    for t in checks::TARGETS {
        let seeds = std::fs::read_dir(fuzz_dir().join("corpus").join(t))
            .unwrap_or_else(|e| panic!("fuzz/corpus/{t}: {e}"))
            .count();
        assert!(seeds > 0, "fuzz/corpus/{t} has no seed");
    }
}

#[test]
fn every_seed_passes_its_targets_check() {
    let mut ran = 0;
    for t in checks::TARGETS {
        let dir = fuzz_dir().join("corpus").join(t);
        let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        seeds.sort();
        for seed in seeds {
            let data = std::fs::read(&seed).unwrap();
            let outcome = std::panic::catch_unwind(|| checks::check(t, &data));
            assert!(outcome.is_ok(), "{t}: seed {} fails its check", seed.display());
            ran += 1;
        }
    }
    eprintln!("{ran} seeds checked");
}
