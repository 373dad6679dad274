//! The samplers against the real `/proc` of this machine, a real HTTP server, and the real
//! (absent or present) NVML.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use samplers::cpu::{ProcessConfig, ProcessSampler, ProcessScope, SystemSampler};
use samplers::disk::{resolve, DiskSampler, DiskTarget};
use samplers::engine::{EngineMetricsConfig, EngineMetricsSampler};
use samplers::gpu::NvmlSampler;
use samplers::{Row, Sampler, SamplerError, SamplerSet, SamplerSetConfig, SamplerState, SamplerStatus};

type Record = HashMap<String, String>;

/// Reads a samples CSV into header-keyed records.
fn read_csv(path: &Path) -> Vec<Record> {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| headers.iter().map(String::from).zip(r.unwrap().iter().map(String::from)).collect())
        .collect()
}

fn column(records: &[Record], name: &str) -> Vec<f64> {
    records.iter().filter_map(|r| r[name].parse::<f64>().ok()).collect()
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn set(dir: &Path, interval_ms: u64) -> SamplerSet {
    let mut config = SamplerSetConfig::new(dir, Instant::now());
    config.interval = Duration::from_millis(interval_ms);
    SamplerSet::new(config).unwrap()
}

fn status<'a>(statuses: &'a [SamplerStatus], name: &str) -> &'a SamplerStatus {
    statuses.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no status for {name}: {statuses:?}"))
}

/// Writes `mb` MiB into `dir` in 1 MiB chunks, fsyncing each.
fn write_synced(dir: &Path, mb: usize) {
    let path = dir.join("payload.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for _ in 0..mb {
        f.write_all(&chunk).unwrap();
        f.sync_all().unwrap();
    }
}

/// Runs a disk sampler on `target` while writing 8 MiB; returns its rows and status.
fn disk_run(target: DiskTarget, data_dir: &Path) -> (Vec<Record>, SamplerStatus) {
    let out = tempfile::tempdir().unwrap();
    let mut samplers = set(out.path(), 50);
    samplers.spawn(Box::new(DiskSampler::new(target))).unwrap();
    std::thread::sleep(Duration::from_millis(120));
    write_synced(data_dir, 8);
    std::thread::sleep(Duration::from_millis(200));
    let statuses = samplers.stop();
    (read_csv(&out.path().join("disk.csv")), statuses[0].clone())
}

#[test]
fn disk_sampler_sees_fsynced_writes_on_the_directory_device() {
    let data = tempfile::tempdir().unwrap();
    let target = resolve(data.path()).unwrap();
    let label = target.label().to_owned();
    let (rows, status) = disk_run(target, data.path());
    assert_eq!(status.state, SamplerState::Ok);
    assert!(status.note.is_some(), "the note says which device: {status:?}");
    assert!(rows.len() >= 3, "rows: {rows:?}");
    assert!(rows.iter().all(|r| r["device"] == label), "{rows:?}");
    let written: f64 = column(&rows, "write_bytes_s").iter().sum::<f64>() * 0.05;
    assert!(written > 0.0, "no writes seen on {label}: {rows:?}");
    assert!(max(&column(&rows, "write_iops")) > 0.0, "{rows:?}");
}

#[test]
fn disk_fallback_for_a_filesystem_without_device_sums_the_disks_and_sees_writes() {
    // /proc is a pseudo filesystem (device 0:N): never in /proc/diskstats.
    let target = resolve(Path::new("/proc")).unwrap();
    let DiskTarget::SystemWide { disks, reason } = &target else {
        panic!("expected fallback, got {target:?}")
    };
    assert!(reason.contains("no block device"), "{reason}");
    assert!(!disks.is_empty(), "no physical disk found in /proc/diskstats");
    let data = tempfile::tempdir().unwrap();
    let (rows, status) = disk_run(target, data.path());
    assert!(status.note.as_deref().unwrap().starts_with("system-wide sum of ["), "{status:?}");
    assert!(rows.iter().all(|r| r["device"] == "system"), "{rows:?}");
    assert!(max(&column(&rows, "write_bytes_s")) > 0.0, "fallback saw no writes: {rows:?}");
}

/// Kills a child started by a test when the test ends, passed or not.
/// A child started in its own process group; dropping it kills the whole group (killing only
/// `timeout` would leave its busy `sh` running, orphaned) and reaps the child.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cpu_samplers_see_a_busy_child_process_tree() {
    // `timeout` is the root; the busy loop is its child, so only the tree scope sees the CPU.
    let child = Command::new("timeout")
        .args(["10", "sh", "-c", "while :; do :; done"])
        .process_group(0)
        .spawn()
        .expect("spawning `timeout` (coreutils) and `sh`");
    let child = Reap(child);
    let pid = child.0.id() as i32;
    let out = tempfile::tempdir().unwrap();
    let mut samplers = set(out.path(), 100);
    samplers.spawn(Box::new(SystemSampler::new())).unwrap();
    let tree = ProcessSampler::new(ProcessConfig { pid, scope: ProcessScope::Tree }).unwrap();
    samplers.spawn(Box::new(tree)).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let statuses = samplers.stop();
    drop(child);
    for s in &statuses {
        assert_eq!(s.state, SamplerState::Ok, "{s:?}");
    }

    let procs = read_csv(&out.path().join("process.csv"));
    let pids: Vec<&str> = procs.iter().map(|r| r["pid"].as_str()).collect();
    assert!(pids.contains(&pid.to_string().as_str()), "root missing: {procs:?}");
    let busy: Vec<Record> = procs.iter().filter(|r| r["pid"] != pid.to_string()).cloned().collect();
    assert!(!busy.is_empty(), "the tree scope found no child: {procs:?}");
    // Sums of per-sample cores: robust to a loaded machine and to 10 ms tick quantization.
    let child_cpu: f64 = column(&busy, "cpu_cores").iter().sum();
    let root: Vec<Record> = procs.iter().filter(|r| r["pid"] == pid.to_string()).cloned().collect();
    let root_cpu: f64 = column(&root, "cpu_cores").iter().sum();
    assert!(child_cpu > 0.3, "busy child not seen: {busy:?}");
    assert!(root_cpu < child_cpu / 3.0, "the idle root got the child's CPU: {root:?}");

    let system = read_csv(&out.path().join("cpu.csv"));
    assert!(system.len() >= 5, "{system:?}");
    assert!(max(&column(&system, "cpu_cores")) > 0.3, "{system:?}");
    for r in &system {
        let pct: f64 = r["cpu_pct"].parse().unwrap();
        assert!((0.0..=100.0).contains(&pct), "{r:?}");
        let total: f64 = r["mem_total_bytes"].parse().unwrap();
        let used: f64 = r["mem_used_bytes"].parse().unwrap();
        let available: f64 = r["mem_available_bytes"].parse().unwrap();
        assert_eq!(used + available, total, "{r:?}");
    }
}

#[test]
fn process_sampler_reports_rss_and_io_of_this_process() {
    let pid = std::process::id() as i32;
    let mut sampler = ProcessSampler::new(ProcessConfig { pid, scope: ProcessScope::Process }).unwrap();
    let header = sampler.columns();
    let col = |row: &Row, name: &str| row[header.iter().position(|c| c == name).unwrap()].clone();

    let first = sampler.sample(0.0).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(col(&first[0], "cpu_cores"), "", "no rate without a previous sample");
    let rss_before: f64 = col(&first[0], "rss_bytes").parse().unwrap();

    // 64 MiB touched page by page, and 4 MiB written through syscalls.
    let mut ballast = vec![0u8; 64 << 20];
    for i in (0..ballast.len()).step_by(4096) {
        ballast[i] = 1;
    }
    let data = tempfile::tempdir().unwrap();
    write_synced(data.path(), 4);
    let second = sampler.sample(0.5).unwrap();
    let rss_after: f64 = col(&second[0], "rss_bytes").parse().unwrap();
    assert!(rss_after - rss_before >= 60.0 * 1024.0 * 1024.0, "rss {rss_before} -> {rss_after}");
    std::hint::black_box(&ballast);
    let wchar: f64 = col(&second[0], "wchar_s").parse().unwrap();
    assert!(wchar >= 8.0 * 1024.0 * 1024.0, "4 MiB in 0.5 s is at least 8 MiB/s, got {wchar}");
    assert_eq!(col(&second[0], "pid"), pid.to_string());
}

#[test]
fn process_sampler_fails_when_the_process_is_gone() {
    let mut child = Command::new("sleep").arg("30").spawn().expect("spawning `sleep`");
    let pid = child.id() as i32;
    let mut sampler = ProcessSampler::new(ProcessConfig { pid, scope: ProcessScope::Process }).unwrap();
    sampler.sample(0.0).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let err = sampler.sample(0.1).unwrap_err().to_string();
    assert!(err.contains(&format!("/proc/{pid}/stat")), "{err}");
}

/// A scripted sampler: `fail_at` makes the nth call (0-based) fail, `panic_at` panic,
/// `width` sets the row width it returns.
struct Scripted {
    name: &'static str,
    calls: u32,
    fail_at: Option<u32>,
    panic_at: Option<u32>,
    width: usize,
}

impl Scripted {
    fn new(name: &'static str) -> Scripted {
        Scripted { name, calls: 0, fail_at: None, panic_at: None, width: 1 }
    }
}

impl Sampler for Scripted {
    fn name(&self) -> &str {
        self.name
    }
    fn columns(&self) -> Vec<String> {
        vec!["call".to_owned()]
    }
    fn sample(&mut self, _t: f64) -> Result<Vec<Row>, SamplerError> {
        let call = self.calls;
        self.calls += 1;
        if self.fail_at == Some(call) {
            return Err(SamplerError::Http {
                url: "http://127.0.0.1:9/metrics".into(),
                message: "refused".into(),
            });
        }
        assert!(self.panic_at != Some(call), "scripted panic");
        Ok(vec![vec![call.to_string(); self.width]])
    }
}

#[test]
fn a_failing_sampler_is_stopped_and_the_others_go_on() {
    let out = tempfile::tempdir().unwrap();
    let mut samplers = set(out.path(), 20);
    samplers.spawn(Box::new(Scripted { fail_at: Some(2), ..Scripted::new("fails") })).unwrap();
    samplers.spawn(Box::new(Scripted { panic_at: Some(1), ..Scripted::new("panics") })).unwrap();
    samplers.spawn(Box::new(Scripted { width: 2, ..Scripted::new("wide") })).unwrap();
    samplers.spawn(Box::new(Scripted::new("steady"))).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Kill safety: rows are on disk while the set still runs.
    let live = read_csv(&out.path().join("steady.csv"));
    assert!(live.len() >= 5, "not flushed while running: {live:?}");
    let statuses = samplers.stop();

    let fails = status(&statuses, "fails");
    assert_eq!(fails.rows, 2);
    let SamplerState::Failed { error, t } = &fails.state else { panic!("{fails:?}") };
    assert_eq!(error, "GET http://127.0.0.1:9/metrics: refused");
    assert!(*t > 0.0);
    assert_eq!(read_csv(&out.path().join("fails.csv")).len(), 2);

    let panics = status(&statuses, "panics");
    assert_eq!(panics.rows, 1);
    assert_eq!(
        panics.state.to_string().split_once(": ").unwrap().1,
        "sampler panics: panicked: scripted panic"
    );

    let wide = status(&statuses, "wide");
    assert_eq!(
        wide.state.to_string().split_once(": ").unwrap().1,
        "sampler wide: row has 2 cells, header has 1"
    );
    assert_eq!(wide.rows, 0);

    let steady = status(&statuses, "steady");
    assert_eq!(steady.state, SamplerState::Ok);
    let rows = read_csv(&out.path().join("steady.csv"));
    assert_eq!(rows.len() as u64, steady.rows);
    assert!(rows.len() > live.len(), "the last sample at stop is missing");
    let calls = column(&rows, "call");
    assert_eq!(calls, (0..rows.len()).map(|i| i as f64).collect::<Vec<_>>());
    let t = column(&rows, "t");
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "t not monotonic: {t:?}");
}

/// A sample asked for between two ticks is taken at once and written before the call returns,
/// at the `t` it answers; the ticks go on; a stopped or unknown sampler answers nothing.
#[test]
fn a_sample_asked_for_is_written_before_the_answer() {
    let out = tempfile::tempdir().unwrap();
    // Ticks far apart: only the first sample, the asked ones and the last one are taken.
    let mut samplers = set(out.path(), 60_000);
    samplers.spawn(Box::new(Scripted::new("steady"))).unwrap();
    samplers.spawn(Box::new(Scripted { fail_at: Some(1), ..Scripted::new("fails") })).unwrap();
    let now = samplers.sample_now();
    for call in 1..=2 {
        let t = now.sample("steady").expect("a running sampler answers");
        let rows = read_csv(&out.path().join("steady.csv"));
        assert_eq!(rows.len(), call + 1, "the asked sample is on disk when the call returns");
        let last = rows.last().unwrap();
        assert_eq!(
            (last["t"].parse::<f64>().unwrap(), last["call"].as_str()),
            (t, call.to_string().as_str())
        );
    }
    assert_eq!(now.sample("fails"), None, "the failed sample answers nothing");
    assert_eq!(now.sample("fails"), None, "nor does the stopped sampler");
    assert_eq!(now.sample("absent"), None);
    let statuses = samplers.stop();
    assert_eq!(status(&statuses, "steady").rows, 4);
    assert_eq!(status(&statuses, "steady").state, SamplerState::Ok);
    assert_eq!(now.sample("steady"), None, "after the stop");
}

#[test]
fn names_are_checked() {
    let out = tempfile::tempdir().unwrap();
    let mut samplers = set(out.path(), 20);
    samplers.spawn(Box::new(Scripted::new("one"))).unwrap();
    let check = |result: Result<(), SamplerError>, expect: &str| {
        assert_eq!(result.unwrap_err().to_string(), expect);
    };
    check(samplers.spawn(Box::new(Scripted::new("one"))), "sampler one: name already used in this set");
    check(samplers.spawn(Box::new(Scripted::new("../x"))), "sampler ../x: name must be non-empty [a-z0-9_-]");
    check(samplers.spawn(Box::new(Scripted::new(""))), "sampler : name must be non-empty [a-z0-9_-]");
    assert_eq!(samplers.stop().len(), 1);
}

#[test]
fn nvml_is_sampled_or_reported_unavailable() {
    let out = tempfile::tempdir().unwrap();
    let mut samplers = set(out.path(), 100);
    match NvmlSampler::new() {
        Err(e) => {
            // This is the path on machines without an NVIDIA driver.
            assert!(e.is_unavailable(), "{e}");
            assert!(e.to_string().starts_with("gpu sampler unavailable: NVML"), "{e}");
            samplers.record_unavailable("gpu", &e);
            let statuses = samplers.stop();
            assert_eq!(statuses.len(), 1);
            assert!(statuses[0].state.to_string().starts_with("unavailable: NVML"), "{statuses:?}");
            assert_eq!(statuses[0].file, None);
            let json = serde_json::to_value(&statuses[0]).unwrap();
            assert_eq!(json["state"], "unavailable");
            assert!(!out.path().join("gpu.csv").exists());
        }
        Ok(gpu) => {
            let devices = gpu.devices().unwrap();
            assert!(!devices.is_empty());
            samplers.spawn(Box::new(gpu)).unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let statuses = samplers.stop();
            assert_eq!(statuses[0].state, SamplerState::Ok, "{statuses:?}");
            let rows = read_csv(&out.path().join("gpu.csv"));
            let gpus: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["gpu"].as_str()).collect();
            assert_eq!(gpus.len(), devices.len(), "{rows:?}");
            assert!(column(&rows, "mem_used_bytes").iter().all(|&b| b > 0.0), "{rows:?}");
            assert!(column(&rows, "sm_clock_mhz").iter().all(|&c| c > 0.0), "{rows:?}");
        }
    }
}

#[test]
fn status_serializes_for_env_json() {
    let statuses = [
        SamplerStatus {
            name: "disk".into(),
            file: Some("disk.csv".into()),
            rows: 42,
            interval_ms: 100,
            missed_ticks: 1,
            state: SamplerState::Ok,
            note: Some("system-wide sum of [vda]: the filesystem has no block device".into()),
        },
        SamplerStatus {
            name: "engine".into(),
            file: Some("engine.csv".into()),
            rows: 7,
            interval_ms: 1000,
            missed_ticks: 0,
            state: SamplerState::Failed {
                t: 1.5,
                error: "GET http://127.0.0.1:8000/metrics: status 500".into(),
            },
            note: None,
        },
        SamplerStatus {
            name: "gpu".into(),
            file: None,
            rows: 0,
            interval_ms: 0,
            missed_ticks: 0,
            state: SamplerState::Unavailable { reason: "NVML init failed".into() },
            note: None,
        },
    ];
    insta::assert_json_snapshot!(statuses);
}

mod engine {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const PAGE: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="facebook/opt-125m"} 2.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="facebook/opt-125m"} 0.0123456
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="facebook/opt-125m"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="facebook/opt-125m"} 3.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="facebook/opt-125m"} 3.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="facebook/opt-125m"} 0.25
# TYPE lmcache:num_hit_tokens counter
lmcache:num_hit_tokens_total{model="m, \"quoted\"",worker_id="0"} 512
python_gc_objects_collected_total{generation="0"} 1234.0
"#;

    /// Serves `PAGE` (plus a scrape counter) on /metrics, a malformed page on /bad, 404 elsewhere.
    fn serve() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let scrapes = Arc::new(AtomicU64::new(0));
                let app = axum::Router::new()
                    .route(
                        "/metrics",
                        axum::routing::get(move || {
                            let n = scrapes.fetch_add(1, Ordering::SeqCst) + 1;
                            async move { format!("{PAGE}kvlab_test_scrapes_total {n}\n") }
                        }),
                    )
                    .route(
                        "/bad",
                        axum::routing::get(|| async { "ok 1\n# HELP x\nvllm:broken{a=\"1\" 2\n" }),
                    );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        format!("http://{addr}")
    }

    fn run(url: String, prefixes: &[&str], millis: u64) -> (tempfile::TempDir, SamplerStatus) {
        let out = tempfile::tempdir().unwrap();
        let mut samplers = set(out.path(), 100);
        let mut config = EngineMetricsConfig::new(url);
        config.interval = Duration::from_millis(50);
        config.prefixes = prefixes.iter().map(|p| p.to_string()).collect();
        samplers.spawn(Box::new(EngineMetricsSampler::new(config))).unwrap();
        std::thread::sleep(Duration::from_millis(millis));
        let status = samplers.stop().remove(0);
        (out, status)
    }

    #[test]
    fn scrapes_vllm_style_metrics_in_long_format() {
        let (out, status) = run(format!("{}/metrics", serve()), &[], 300);
        assert_eq!(status.state, SamplerState::Ok, "{status:?}");
        assert_eq!(status.interval_ms, 50);
        let text = std::fs::read_to_string(out.path().join("engine.csv")).unwrap();
        // The first scrape, `t` cut off.
        let first_t = text.lines().nth(1).unwrap().split(',').next().unwrap().to_owned();
        let first: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, l)| *i == 0 || l.starts_with(&format!("{first_t},")))
            .map(|(_, l)| l.split_once(',').unwrap().1)
            .collect();
        insta::assert_snapshot!(first.join("\n"));

        let rows = read_csv(&out.path().join("engine.csv"));
        let scrapes = column(
            &rows.iter().filter(|r| r["metric"] == "kvlab_test_scrapes_total").cloned().collect::<Vec<_>>(),
            "value",
        );
        assert!(scrapes.len() >= 3, "{scrapes:?}");
        assert_eq!(scrapes, (1..=scrapes.len()).map(|n| n as f64).collect::<Vec<_>>(), "one row per scrape");
        assert_eq!(status.rows as usize, rows.len());
    }

    #[test]
    fn prefixes_filter_metrics() {
        let (out, status) = run(format!("{}/metrics", serve()), &["lmcache:", "vllm:num_"], 120);
        assert_eq!(status.state, SamplerState::Ok, "{status:?}");
        let rows = read_csv(&out.path().join("engine.csv"));
        let mut metrics: Vec<&str> = rows.iter().map(|r| r["metric"].as_str()).collect();
        metrics.dedup();
        assert_eq!(metrics[..2], ["vllm:num_requests_running", "lmcache:num_hit_tokens_total"]);
        assert!(
            metrics.iter().all(|m| m.starts_with("lmcache:") || m.starts_with("vllm:num_")),
            "{metrics:?}"
        );
    }

    #[test]
    fn malformed_pages_and_http_errors_stop_the_scraper_with_the_reason() {
        let base = serve();
        let check = |path: &str, expect: &str| {
            let (out, status) = run(format!("{base}{path}"), &[], 100);
            let SamplerState::Failed { error, .. } = &status.state else { panic!("{status:?}") };
            assert_eq!(error.replace(&base, "BASE"), expect);
            assert_eq!(status.rows, 0);
            assert_eq!(read_csv(&out.path().join("engine.csv")).len(), 0);
        };
        check("/bad", "BASE/bad: line 3: vllm:broken: expected `,` or `}` after label a");
        check("/missing", "GET BASE/missing: status 404 Not Found");
    }

    #[test]
    fn an_engine_that_is_not_listening_is_an_error_naming_the_url() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let (_out, status) = run(url.clone(), &[], 50);
        let SamplerState::Failed { error, .. } = &status.state else { panic!("{status:?}") };
        assert!(error.starts_with(&format!("GET {url}: ")), "{error}");
    }
}
