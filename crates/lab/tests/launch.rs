//! Launch failures give a clear error naming what is missing, with the engine's last log lines.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engines::error::EngineError;
use engines::secrets::Secrets;
use engines::{launcher, EngineKind, EngineSettings, GpuSelection, LaunchSpec, LlamacppSettings};
use schema::config::{Tier, TierConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn spec(dir: &Path, engine: EngineKind, tier: Tier) -> LaunchSpec {
    let tier = TierConfig::load(&root().join("configs"), tier).unwrap();
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, b"not really a model").unwrap();
    LaunchSpec {
        run_id: "test".into(),
        run_dir: dir.to_owned(),
        lmcache: tier.lmcache.clone(),
        tier,
        disk_dir: dir.join("kvcache"),
        model: "tiny".into(),
        tensor_parallel: 1,
        pipeline_parallel: 1,
        gpus: GpuSelection::All,
        port: None,
        secrets: Secrets::default(),
        ready_timeout: Duration::from_secs(2),
        wrapper: None,
        gpu_blocks: None,
        redis_url: None,
        engine: match engine {
            EngineKind::Llamacpp => {
                EngineSettings::Llamacpp(LlamacppSettings { model: Some(model), python: None })
            }
            other => EngineSettings::new(other),
        },
    }
}

/// The llama.cpp settings of a llama.cpp spec.
fn llamacpp(s: &mut LaunchSpec) -> &mut LlamacppSettings {
    let EngineSettings::Llamacpp(settings) = &mut s.engine else { panic!("not a llama.cpp spec") };
    settings
}

/// A fake "python" shell script.
fn fake_python(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-python");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn start_err(spec: &LaunchSpec) -> String {
    match launcher(spec.kind()).start(spec).await {
        Ok(r) => {
            r.stop().await.unwrap();
            panic!("the engine started")
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn engine_that_exits_at_start_shows_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), EngineKind::Llamacpp, Tier::Baseline);
    llamacpp(&mut s).python =
        Some(fake_python(dir.path(), "echo 'error: unknown model architecture' >&2; exit 3"));
    let err = start_err(&s).await;
    assert!(
        err.starts_with("engine `llamacpp` failed: the engine exited at start (exit status: 3)"),
        "{err}"
    );
    assert!(err.contains("error: unknown model architecture"), "{err}");
}

/// The live (not zombie) processes of process group `pgid`, from /proc.
fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
            // Fields 3 (state) and 5 (process group).
            fields[0] != "Z" && fields[0] != "X" && fields[2] == pgid.to_string()
        })
        .collect()
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// Waits up to 5 s for `pids` to be gone (the runtime reaps a dropped child in the background).
async fn assert_gone(pids: &[u32], what: &str) {
    let alive =
        |pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    for _ in 0..250 {
        if !pids.iter().any(alive) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<&u32> = pids.iter().filter(|p| alive(p)).collect();
    panic!("{what}: processes {left:?} still running");
}

#[tokio::test]
async fn readiness_timeout_is_reported_and_the_process_group_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), EngineKind::Llamacpp, Tier::Cpu);
    let (pid_file, child_file) = (dir.path().join("pid"), dir.path().join("child"));
    llamacpp(&mut s).python = Some(fake_python(
        dir.path(),
        &format!(
            "sleep 60 & echo $! > {}; echo loading; echo $$ > {}; exec sleep 60",
            child_file.display(),
            pid_file.display()
        ),
    ));
    s.ready_timeout = Duration::from_millis(500);
    let err = start_err(&s).await;
    assert!(err.contains("not ready after 0 s"), "{err}");
    assert!(err.contains("raise the limit with --ready-timeout SECONDS"), "names the flag: {err}");
    assert!(err.contains("loading"), "shows the engine's last log lines: {err}");
    // The engine and the worker it started are both gone.
    assert_gone(&[read_pid(&pid_file), read_pid(&child_file)], "after the readiness timeout").await;
}

/// A fake engine: a shell that starts a worker (`sleep`) and then becomes an HTTP server that
/// answers every GET with 200, like a Python engine with a worker process.
const FAKE_ENGINE_WITH_WORKER: &str = r#"sleep 300 &
echo $! > "$(dirname "$0")/worker"
exec python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' "$4""#;

#[tokio::test]
async fn stop_ends_the_engine_and_every_process_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), EngineKind::Llamacpp, Tier::Baseline);
    llamacpp(&mut s).python = Some(fake_python(dir.path(), FAKE_ENGINE_WITH_WORKER));
    s.ready_timeout = Duration::from_secs(20);
    let running = launcher(s.kind()).start(&s).await.expect("the fake engine answers /health");
    let pid = running.pid.unwrap();
    let worker = read_pid(&dir.path().join("worker"));
    let members = group_members(pid);
    assert!(members.contains(&pid) && members.contains(&worker), "own process group {pid}: {members:?}");
    running.stop().await.unwrap();
    assert_eq!(group_members(pid), Vec::<u32>::new(), "no process of the engine's group is left");
    assert_gone(&[pid, worker], "after stop").await;
}

#[tokio::test]
async fn port_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut s = spec(dir.path(), EngineKind::Llamacpp, Tier::Baseline);
    llamacpp(&mut s).python = Some(fake_python(dir.path(), "exit 0"));
    s.port = Some(port);
    let err = start_err(&s).await;
    assert!(err.contains(&format!("port {port} on 127.0.0.1 is not available")), "{err}");
    assert!(err.contains("choose another with --port"), "{err}");
}

#[tokio::test]
async fn missing_pieces_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), EngineKind::Llamacpp, Tier::Baseline);
    llamacpp(&mut s).model = Some(dir.path().join("missing.gguf"));
    let err = start_err(&s).await;
    assert!(err.contains("missing.gguf does not exist") && err.contains("gen_model.py"), "{err}");

    let s = spec(dir.path(), EngineKind::Llamacpp, Tier::Disk);
    let err = start_err(&s).await;
    assert!(err.contains("llama.cpp cannot express the `disk` tier"), "{err}");

    let s = spec(dir.path(), EngineKind::External, Tier::Baseline);
    assert_eq!(
        start_err(&s).await,
        "engine `external` failed: --engine external needs --url http://HOST:PORT"
    );

    let s = spec(dir.path(), EngineKind::Docker, Tier::Baseline);
    let err = start_err(&s).await;
    assert!(
        err.contains("--engine docker needs --image IMAGE") || err.contains("no container runtime"),
        "{err}"
    );
}

// vllm-docker without a GPU or a runtime: tests/no_runtime.rs (it sets PATH).

/// A server that answers `/v1/models` like an OpenAI-compatible engine that is not kvlab's.
fn plain_models_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = r#"{"object":"list","data":[{"id":"m","object":"model","owned_by":"vllm"}]}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// `--engine external` is labelled emulated only when the server says it is kvlab's emulator
/// (the positive case runs against the real emulator in tests/faults.rs).
#[tokio::test]
async fn an_external_server_is_emulated_only_when_it_says_so() {
    let plain = plain_models_server();
    assert!(!engines::probe_external(&plain).await.emulated, "a plain OpenAI server");
    assert!(!engines::probe_external(&format!("{plain}/v1/")).await.emulated, "with /v1/");
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    assert!(!engines::probe_external(&format!("http://{refused}")).await.emulated, "nothing listening");
}

/// Each launcher reads only its own kind's description: given another kind's spec, it refuses it
/// with a typed error naming both, before it starts anything.
#[tokio::test]
async fn a_launcher_refuses_another_kinds_spec() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), EngineKind::External, Tier::Baseline);
    for kind in [EngineKind::Emulated, EngineKind::Llamacpp, EngineKind::Vllm, EngineKind::VllmDocker] {
        let Err(e) = launcher(kind).start(&s).await else { panic!("{kind} started an external spec") };
        assert!(
            matches!(e, EngineError::WrongEngine { launcher, given: EngineKind::External } if launcher == kind),
            "{kind}: {e}"
        );
    }
    let s = spec(dir.path(), EngineKind::Llamacpp, Tier::Baseline);
    let Err(e) = launcher(EngineKind::External).start(&s).await else { panic!("external started") };
    assert_eq!(e.to_string(), "the `external` launcher was given the launch spec of engine `llamacpp`");
}
