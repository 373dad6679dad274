//! The command line as a user meets it: exit codes and messages of the built `xtask` binary.

use std::path::Path;
use std::process::{Command, Output};

fn xtask(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(cwd)
        .env_remove("HF_TOKEN")
        .output()
        .expect("run the xtask binary")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A port on 127.0.0.1 where nothing listens.
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Unlike `vllm bench serve`, a run where everything failed never looks like a success.
#[test]
fn loadgen_against_nothing_exits_non_zero_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", refused_port());
    let out = xtask(
        &[
            "loadgen",
            "--url",
            &url,
            "--model",
            "m",
            "--num-requests",
            "3",
            "--ready-timeout",
            "2",
            "--out",
            tmp.path().to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(!out.status.success(), "exit code 0 for a run against a closed port:\n{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains(&url) || msg.contains("127.0.0.1"), "the error names the server:\n{msg}");
}

/// `regress` on result directories fails, naming the metric, when TTFT p99 rose 20% over its
/// baseline; the same directories unchanged pass.
#[test]
fn regress_names_the_metric_that_regressed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out_dir = tmp.path().join("pinned");
    // The pinned scenario, written as result directories.
    let out = xtask(&["regress", "--out", out_dir.to_str().unwrap()], root);
    assert!(out.status.success(), "the pinned scenario matches its baselines:\n{}", text(&out));
    let run = out_dir.join("emulated-pinned-cpu");
    let out = xtask(&["regress", run.to_str().unwrap()], root);
    assert!(out.status.success(), "an unchanged run passes:\n{}", text(&out));

    let path = run.join("summary.json");
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let p99 = summary["p99_ttft_ms"].as_f64().unwrap();
    summary["p99_ttft_ms"] = serde_json::json!(p99 * 1.2);
    std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    let out = xtask(&["regress", run.to_str().unwrap()], root);
    let msg = text(&out);
    assert!(!out.status.success(), "a 20% rise of TTFT p99 passed:\n{msg}");
    assert!(msg.contains("p99_ttft_ms"), "the metric is named:\n{msg}");
}

/// Bad input: an experiment file with a typo'd key names the file, the line and the key, with no
/// stack trace.
#[test]
fn experiment_typo_names_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("typo.toml");
    std::fs::write(&file, "name = \"t\"\n\n[defaults]\nnum_promts = 3\n").unwrap();
    let out = xtask(
        &["bench", "--experiment", file.to_str().unwrap(), "--out", tmp.path().to_str().unwrap()],
        tmp.path(),
    );
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("typo.toml:4"), "names the file and line:\n{msg}");
    assert!(msg.contains("num_promts"), "names the key:\n{msg}");
    assert!(!msg.contains("panicked") && !msg.contains("stack backtrace"), "{msg}");
}
