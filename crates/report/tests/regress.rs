//! Regression gates: thresholds parsing, checks against baselines, blessing, the pinned scenario.

use std::path::{Path, PathBuf};

use report::regress::{self, Baselines, Subject, Thresholds, Verdict};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture_summary(tier: &str) -> stats::Summary {
    report::read_summary(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{tier}-emulated/summary.json")),
    )
    .unwrap()
}

const CONFIG: &str = r#"
[baseline]
decimals = 3

[metrics]
failed = { max = 0 }
p99_ttft_ms = { max_rise = "10%" }
request_throughput = { max_fall = "5%" }
mean_tpot_ms = { max_rise = 2.0 }

[tier.cpu]
median_ttft_ms = { max = 220 }

[[gain]]
metric = "p50_ttft_ms"
tier = "cpu"
over = "baseline"
at_least = 0.8
"#;

fn thresholds() -> Thresholds {
    Thresholds::parse(CONFIG, Path::new("configs/regress.toml")).unwrap()
}

/// `check(toml, expect)`: parsing `toml` fails with exactly `expect`.
fn check(toml: &str, expect: &str) {
    let err = Thresholds::parse(toml, Path::new("configs/regress.toml")).unwrap_err().to_string();
    assert_eq!(err, expect, "for:\n{toml}");
}

#[test]
fn bad_thresholds_name_file_line_and_key() {
    check(
        "[metrics]\np99_ttft_ms = { max_rise = \"10%\", typo = 1 }\n",
        "configs/regress.toml:2: metrics.p99_ttft_ms.typo: unknown field `typo`, expected one of `max_rise`, `max_fall`, `max`, `min` (column 35)",
    );
    check(
        "[metrics]\nfailed = { max = 0 }\np99_tfft_ms = { max_rise = \"10%\" }\n",
        "configs/regress.toml:3: metrics.p99_tfft_ms: unknown metric `p99_tfft_ms`; expected a numeric \
         summary.json field such as p99_ttft_ms",
    );
    check(
        "[metrics]\n\np99_ttft_ms = { max_rise = \"ten\" }\n",
        "configs/regress.toml:3: metrics.p99_ttft_ms.max_rise: expected a percentage such as \"10%\" or a \
         number, got \"ten\"",
    );
    check(
        "[metrics]\np99_ttft_ms = { max_fall = -1 }\n",
        "configs/regress.toml:2: metrics.p99_ttft_ms.max_fall: must be a finite number, 0 or more",
    );
    check(
        "[metrics]\np99_ttft_ms = {}\n",
        "configs/regress.toml:2: metrics.p99_ttft_ms: no limit: set max_rise, max_fall, max or min",
    );
    check("[baseline]\ndecimals = 99\n", "configs/regress.toml:2: baseline.decimals: expected 0 to 12");
    check(
        "[[gain]]\nmetric = \"p50_ttft_ms\"\ntier = \"cpu\"\nover = \"baseline\"\nat_least = 0\n",
        "configs/regress.toml:5: gain[0].at_least: must be a number above 0",
    );
    check(
        "[tier.cpu]\np50_ttft_ms = { max = 220, maximum = 1 }\n",
        "configs/regress.toml:2: tier.cpu.p50_ttft_ms.maximum: unknown field `maximum`, expected one of `max_rise`, `max_fall`, `max`, `min` (column 28)",
    );
    check(
        "[metrics]\np50_ttft_ms = { max = 1 }\n[tier.cpu]\np50_tfft_ms = { max = 220 }\n",
        "configs/regress.toml:4: tier.cpu.p50_tfft_ms: unknown metric `p50_tfft_ms`; expected a numeric \
         summary.json field such as p99_ttft_ms",
    );
    check(
        "[metric]\n",
        "configs/regress.toml:1: metric: unknown field `metric`, expected one of `baseline`, `metrics`, `tier`, `gain` (column 2)",
    );
}

#[test]
fn the_committed_thresholds_parse() {
    let t = Thresholds::load(&workspace_root().join("configs/regress.toml")).unwrap();
    assert!(t.metrics.iter().any(|m| m.metric == "p99_ttft_ms"));
    assert!(t.metrics.iter().any(|m| m.metric == "failed" && m.max == Some(0.0)));
    assert_eq!(t.gains.len(), 1);
}

fn subject(name: &str, tier: &str) -> Subject {
    Subject { name: name.to_owned(), summary: fixture_summary(tier) }
}

#[test]
fn identical_summaries_pass() {
    let dir = tempfile::tempdir().unwrap();
    let baselines = Baselines::new(dir.path());
    let subjects = [subject("b", "baseline"), subject("c", "cpu")];
    for s in &subjects {
        baselines.write(s, 3).unwrap();
    }
    let outcome = regress::check(&subjects, &baselines, &thresholds()).unwrap();
    assert!(outcome.passed(), "{}", outcome.table());
    // 4 metric rules per subject, the cpu tier's own rule, and the gain.
    assert_eq!(outcome.rows.len(), 10);
    let tier_rule: Vec<&str> =
        outcome.rows.iter().filter(|r| r.metric == "median_ttft_ms").map(|r| r.subject.as_str()).collect();
    assert_eq!(tier_rule, ["c"]);
    assert!(outcome.rows.iter().all(|r| r.verdict != Verdict::Skipped));
    assert_eq!(outcome.summary_line(), "");
}

#[test]
fn inflated_ttft_p99_fails_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let baselines = Baselines::new(dir.path());
    let base = subject("b", "baseline");
    baselines.write(&base, 3).unwrap();

    let mut worse = base.clone();
    worse.summary.p99_ttft_ms *= 1.2;
    let outcome = regress::check(&[worse], &baselines, &thresholds()).unwrap();
    assert!(!outcome.passed());
    let failed: Vec<&str> = outcome.regressions().map(|r| r.metric.as_str()).collect();
    assert_eq!(failed, ["p99_ttft_ms"]);
    assert_eq!(outcome.summary_line(), "b: p99_ttft_ms regressed (rise <= 10%)");
    assert!(outcome.table().contains("REGRESSED"));

    // Within the threshold passes.
    let mut slightly = base.clone();
    slightly.summary.p99_ttft_ms *= 1.09;
    assert!(regress::check(&[slightly], &baselines, &thresholds()).unwrap().passed());

    // Directions: throughput may rise, not fall by more than 5%; failed must stay 0.
    let mut faster = base.clone();
    faster.summary.request_throughput *= 2.0;
    assert!(regress::check(&[faster], &baselines, &thresholds()).unwrap().passed());
    let mut slower = base.clone();
    slower.summary.request_throughput *= 0.9;
    slower.summary.failed = 1;
    slower.summary.mean_tpot_ms += 2.5;
    let outcome = regress::check(&[slower], &baselines, &thresholds()).unwrap();
    let failed: Vec<&str> = outcome.regressions().map(|r| r.metric.as_str()).collect();
    assert_eq!(failed, ["failed", "request_throughput", "mean_tpot_ms"]);
}

#[test]
fn bless_updates_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let baselines = Baselines::new(dir.path());
    let mut s = subject("b", "baseline");
    let path = baselines.write(&s, 3).unwrap();
    let before = std::fs::read_to_string(&path).unwrap();
    assert!(
        before.starts_with("---\nsource: crates/report/src/regress.rs\nexpression: b\n---\n{\n"),
        "{before}"
    );

    s.summary.p99_ttft_ms *= 1.5;
    assert!(!regress::check(std::slice::from_ref(&s), &baselines, &thresholds()).unwrap().passed());
    baselines.write(&s, 3).unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert_ne!(before, after);
    let want = format!("\"p99_ttft_ms\": {},", (s.summary.p99_ttft_ms * 1000.0).round() / 1000.0);
    assert!(after.contains(&want), "{want} not in\n{after}");
    assert!(regress::check(&[s], &baselines, &thresholds()).unwrap().passed());
}

#[test]
fn gain_between_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let baselines = Baselines::new(dir.path());
    let (mut b, mut c) = (subject("b", "baseline"), subject("c", "cpu"));
    b.summary.p50_ttft_ms = 300.0;
    c.summary.p50_ttft_ms = 100.0;
    baselines.write(&b, 3).unwrap();
    baselines.write(&c, 3).unwrap();
    let gain_row = |subjects: &[Subject]| {
        let outcome = regress::check(subjects, &baselines, &thresholds()).unwrap();
        outcome.rows.into_iter().find(|r| r.metric == "gain p50_ttft_ms").unwrap()
    };
    let row = gain_row(&[b.clone(), c.clone()]);
    assert_eq!((row.now, row.verdict), (Some(3.0), Verdict::Pass));
    assert_eq!(row.subject, "cpu over baseline");
    c.summary.p50_ttft_ms = 400.0;
    let row = gain_row(&[b.clone(), c.clone()]);
    assert_eq!(row.verdict, Verdict::Regressed);
    // Only one tier checked: the gain cannot be evaluated.
    assert_eq!(gain_row(&[b]).verdict, Verdict::Skipped);
}

#[test]
fn malformed_summary_and_baseline_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("summary.json"), "{\n  \"v\": 1,\n  \"engine\": \"emulated\"\n}").unwrap();
    let err = regress::subject_from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.ends_with("summary.json:4: (top level): missing field `tier` (column 1)"), "{err}");

    std::fs::write(dir.path().join("summary.json"), "not json").unwrap();
    let err = regress::subject_from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.ends_with("summary.json:1: (top level): expected ident (column 2)"), "{err}");

    let baselines = Baselines::new(dir.path());
    std::fs::write(dir.path().join("x.snap"), "---\nsource: a\nexpression: x\n---\n{\n  \"v\": ,\n}\n")
        .unwrap();
    let err = baselines.read("x").unwrap_err().to_string();
    assert!(err.ends_with("x.snap:6: v: expected value (column 8)"), "{err}");
    let err =
        regress::check(&[subject("missing", "cpu")], &baselines, &thresholds()).unwrap_err().to_string();
    assert!(err.starts_with("baseline `missing` not found at"), "{err}");
}

#[test]
fn baseline_name_comes_from_run_toml() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpu-emulated");
    std::fs::copy(src.join("summary.json"), dir.path().join("summary.json")).unwrap();
    std::fs::write(dir.path().join("run.toml"), "label = \"l\"\n").unwrap();
    assert_eq!(regress::subject_from_dir(dir.path()).unwrap().name, "l");
    std::fs::write(dir.path().join("run.toml"), "label = \"l\"\nbaseline = \"gpu-h100-cpu\"\n").unwrap();
    assert_eq!(regress::subject_from_dir(dir.path()).unwrap().name, "gpu-h100-cpu");
}

#[test]
fn pinned_scenario_is_deterministic_and_matches_its_baselines() {
    let first = emulator::scenario::pinned().unwrap();
    let again = emulator::scenario::pinned().unwrap();
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.summary, b.summary, "{}", a.name);
    }
    let root = workspace_root();
    let thresholds = Thresholds::load(&root.join("configs/regress.toml")).unwrap();
    let subjects: Vec<Subject> =
        first.into_iter().map(|r| Subject { name: r.name, summary: r.summary }).collect();
    let outcome =
        regress::check(&subjects, &Baselines::new(root.join("results/baselines")), &thresholds).unwrap();
    assert!(
        outcome.passed(),
        "the pinned scenario regressed (if intended, run `cargo xtask regress --bless`):\n{}",
        outcome.table()
    );
    assert!(outcome.rows.iter().all(|r| r.verdict == Verdict::Pass), "{}", outcome.table());
}

#[test]
fn baselines_are_insta_json_snapshots() {
    // insta itself reads the committed baseline and finds it equal to the normalized summary:
    // the files are genuine insta JSON snapshots.
    let run = emulator::scenario::pinned().unwrap().pop().unwrap();
    let value = regress::normalize(serde_json::to_value(&run.summary).unwrap(), 3);
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(workspace_root().join("results/baselines"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_json_snapshot!("emulated-pinned-cpu", value));
}

#[test]
fn pinned_result_dirs_read_back() {
    let out = tempfile::tempdir().unwrap();
    let runs = emulator::scenario::pinned().unwrap();
    assert_eq!(
        runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["emulated-pinned-baseline", "emulated-pinned-cpu"]
    );
    for run in &runs {
        let dir = out.path().join(&run.name);
        run.write_result_dir(&dir).unwrap();
        let data = report::RunData::load(&dir).unwrap();
        assert_eq!(data.summary, run.summary);
        assert_eq!(data.records, run.records);
        assert_eq!(data.label, run.name);
        assert_eq!(data.baseline.as_deref(), Some(run.name.as_str()));
        assert_eq!(data.request_rate, Some(emulator::scenario::REQUEST_RATE));
        assert_eq!(regress::subject_from_dir(&dir).unwrap().name, run.name);
        assert!(data.summary.emulated && data.display_label().ends_with("(emulated)"));
    }
}
