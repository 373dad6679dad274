//! report.html in a real headless Chromium: it renders (a non-blank screenshot) and makes no
//! network request.
//!
//! Needs Chromium: `KVLAB_CHROMIUM` names the binary, else `chromium` (or `chromium-browser`) on
//! PATH. `cargo xtask ci` installs Debian's `chromium`. Without it the test fails, naming it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use report::{write_report, RunData};

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("KVLAB_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "chromium is missing: KVLAB_CHROMIUM={} is not a file", path.display());
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "chromium is missing: install Debian's `chromium` package (cargo xtask ci does) or set \
         KVLAB_CHROMIUM to a Chromium binary"
    );
}

/// What one headless Chromium visit of a page gave.
struct Visit {
    screenshot: Vec<u8>,
    /// URLs the page itself asked the network for (the browser's own background requests, whose
    /// initiator is "not an origin", are left out).
    page_requests: Vec<String>,
}

/// Opens `page` in headless Chromium with every host name resolving to nothing, takes a
/// screenshot, and reads Chromium's NetLog for the requests the page started.
fn visit(page: &Path, work: &Path) -> Visit {
    let shot = work.join("shot.png");
    let netlog = work.join("netlog.json");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--window-size=1000,2400",
        ])
        .arg(format!("--user-data-dir={}", work.join("profile").display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
    let screenshot = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}):\n{stderr}"));
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&netlog).expect("chromium wrote no NetLog"))
            .expect("NetLog JSON");
    let start_job =
        log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_u64().expect("NetLog constants");
    let page_requests = log["events"]
        .as_array()
        .expect("NetLog events")
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job))
        .filter(|e| e["params"]["initiator"].as_str() != Some("not an origin"))
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_owned))
        .collect();
    Visit { screenshot, page_requests }
}

/// (variance of luminance, fraction of pixels that are not near-white).
fn ink(png_bytes: &[u8]) -> (f64, f64) {
    let mut reader = png::Decoder::new(png_bytes).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let lum: Vec<f64> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| p.iter().take(3).map(|&c| f64::from(c)).sum::<f64>() / 3.0)
        .collect();
    let mean = lum.iter().sum::<f64>() / lum.len() as f64;
    let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64;
    let inked = lum.iter().filter(|&&l| l < 200.0).count() as f64 / lum.len() as f64;
    (var, inked)
}

#[test]
fn html_report_renders_offline_in_chromium() {
    let runs: Vec<RunData> = ["baseline-emulated", "cpu-emulated"]
        .iter()
        .map(|n| {
            RunData::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(n)).unwrap()
        })
        .collect();
    let out = tempfile::tempdir().unwrap();
    let written = write_report(&runs, out.path()).unwrap();
    let html = std::fs::read_to_string(&written.html).unwrap();

    // Self-contained: inline SVG, a policy that forbids fetching, no external references.
    assert!(html.contains("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';"));
    assert_eq!(html.matches("<svg").count(), 6, "one inline SVG per plot");
    for attr in ["src=\"http", "href=\"http", "src='http", "href='http", "url(http", "<script", "<link"] {
        assert!(!html.contains(attr), "report.html contains {attr}");
    }

    let work = tempfile::tempdir().unwrap();
    let report = visit(&written.html, work.path());
    assert_eq!(report.page_requests, Vec::<String>::new(), "report.html made network requests");
    let (var, inked) = ink(&report.screenshot);
    assert!(var > 500.0 && inked > 0.01, "screenshot looks blank: variance {var}, inked {inked}");

    // The detector works: a page with an external image is caught.
    let control = work.path().join("control.html");
    std::fs::write(
        &control,
        "<html><body><h1>control</h1><img src=\"http://kvlab.invalid/x.png\"></body></html>",
    )
    .unwrap();
    let control_work = work.path().join("control");
    std::fs::create_dir_all(&control_work).unwrap();
    let control = visit(&control, &control_work);
    assert_eq!(control.page_requests, ["http://kvlab.invalid/x.png"]);
}
