//! `cargo xtask soak`, short: 2,000 concurrent streams for one minute against `serve`, two
//! processes on loopback. No request is lost or fails, open file descriptors stay flat, and the
//! verdict on resident memory agrees with the figures the soak records (`soak.json`). The
//! 10-minute run and its figures are in the README's Reliability section.

use std::process::Command;

#[test]
fn two_thousand_streams_for_a_minute() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("soak");
    let started = std::time::Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["soak", "--streams", "2000", "--minutes", "1", "--warmup-secs", "20", "--interval-secs", "4"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    eprintln!("{text}\nthe soak took {:.0} s", started.elapsed().as_secs_f64());
    assert!(started.elapsed().as_secs() < 60 + 120, "bounded in time");
    let soak: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("soak.json")).unwrap_or_else(|e| panic!("{e}\n{text}")),
    )
    .unwrap();
    let client = &soak["client"];
    let sent = client["sent"].as_u64().unwrap();
    assert!(sent >= 2000, "at least one request per stream: {soak}");
    assert_eq!(soak["lost"], 0, "{soak}");
    assert_eq!(client["failed"], 0, "{soak}");
    assert_eq!(client["records"].as_u64(), Some(sent), "one record per request sent: {soak}");
    assert!(soak["samples"].as_u64().unwrap() >= 5, "{soak}");
    let mut over = Vec::new();
    for proc in ["engine", "load_generator"] {
        let fds = &soak[proc]["fds"];
        assert!(fds["start"].as_f64().unwrap() >= 2000.0, "{proc}: a descriptor per stream: {soak}");
        assert!(fds["growth_pct"].as_f64().unwrap() < 10.0, "{proc}: open files stay flat: {soak}");
        let rss = soak[proc]["rss_kib"]["growth_pct"].as_f64().unwrap();
        if rss >= 10.0 {
            over.push(proc);
        }
    }
    // The verdict: success exactly when every bound held; a broken bound is named.
    assert_eq!(run.status.success(), over.is_empty(), "{text}");
    for proc in over {
        let name = if proc == "engine" {
            "engine: resident memory grew"
        } else {
            "load generator: resident memory grew"
        };
        assert!(text.contains(name), "{text}");
    }
}
