//! Security of a live run with the real llama.cpp engine process, read from `/proc` while the
//! run goes: every server of the run listens on 127.0.0.1 (no socket of the run on 0.0.0.0 or
//! `::` in `/proc/net/tcp{,6}`), and the HF_TOKEN planted in `.env` is in the engine's
//! environment (`/proc/PID/environ`) and nowhere else: no command line (`/proc/*/cmdline`), no
//! result file, no log. The emulated engine's run is checked the same way by the command line's
//! tests (`xtask/tests/faults.rs`).
//!
//! Needs `KVLAB_PYTHON` and `KVLAB_LLAMACPP_MODEL` (`cargo xtask ci` sets both).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lab::run::{bench_until, BenchOptions};
use schema::config::Tier;

use common::{assert_no_secret, finished_requests_under, processes_mentioning, workspace, TOKEN};
use testkit::live::{cmdlines_containing, listening_sockets};

fn options(root: &Path) -> BenchOptions {
    let mut opts = common::llamacpp_options(root, Tier::Baseline);
    opts.prompt_len = Some(32);
    opts.gen_len = Some(16);
    opts.num_requests = Some(24);
    opts.max_concurrency = Some(1);
    opts.seed = Some(13);
    opts
}

/// What the live run looked like from `/proc`.
#[derive(Debug)]
struct Seen {
    engine_pids: Vec<u32>,
    /// (pid, address, port) of every listening socket of the run.
    listening: Vec<(u32, String, u16)>,
    token_in_engine_env: bool,
    /// Processes whose command line holds the token.
    token_on_cmdline: Vec<PathBuf>,
}

fn look(out: &Path) -> Seen {
    let engine_pids = processes_mentioning(&out.display().to_string());
    let mut listening = Vec::new();
    for pid in engine_pids.iter().copied().chain([std::process::id()]) {
        listening.extend(listening_sockets(pid).into_iter().map(|(a, p)| (pid, a, p)));
    }
    let needle = format!("HF_TOKEN={TOKEN}");
    let token_in_engine_env = engine_pids.iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
    });
    let token_on_cmdline = cmdlines_containing(TOKEN);
    Seen { engine_pids, listening, token_in_engine_env, token_on_cmdline }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_run_listens_on_loopback_and_the_token_reaches_only_the_engine() {
    let ws = workspace();
    let out = ws.path().join("results");
    let opts = options(ws.path());
    let watch = out.clone();
    let looker = tokio::spawn(async move {
        while finished_requests_under(&watch) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        look(&watch)
    });
    let reports = bench_until(&opts, std::future::pending()).await.expect("the run completes");
    let seen = looker.await.unwrap();
    assert!(!seen.engine_pids.is_empty(), "the engine process was seen");
    assert!(
        seen.listening.iter().any(|(pid, ..)| seen.engine_pids.contains(pid)),
        "the engine listens: {seen:?}"
    );
    for (pid, addr, port) in &seen.listening {
        // 127.0.0.1 in /proc/net/tcp's byte order, or ::ffff:127.0.0.1 / ::1 in tcp6.
        let loopback = ["0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"];
        assert!(loopback.contains(&addr.as_str()), "pid {pid} listens on {addr}:{port}, not on loopback");
    }
    assert!(seen.token_in_engine_env, "HF_TOKEN reaches the engine's environment: {seen:?}");
    assert!(seen.token_on_cmdline.is_empty(), "HF_TOKEN on a command line: {:?}", seen.token_on_cmdline);
    assert_eq!(reports[0].summary.completed, 24);
    assert!(!reports[0].table.contains(TOKEN));
    let log = std::fs::read_to_string(reports[0].dir.join("engine.log")).unwrap();
    assert!(log.contains("$ "), "engine.log has the printed command:\n{log}");
    assert_no_secret(ws.path());
}
