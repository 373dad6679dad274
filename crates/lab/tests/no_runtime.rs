//! With no container runtime, no GPU or no vLLM on PATH, the engines that need them are
//! refused, naming what to install. (Its own test binary: it sets PATH for the whole process,
//! one test at a time.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engines::{launcher, ContainerSettings, EngineKind, EngineSettings, GpuSelection, HostProbe, LaunchSpec};
use schema::config::{Tier, TierConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// PATH is the process's: one test sets it at a time.
static PATH_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spec(dir: &Path, engine: EngineKind, tier: Tier) -> LaunchSpec {
    let tier = TierConfig::load(&root().join("configs"), tier).unwrap();
    // The containers' image: `img:1`.
    let mut settings = EngineSettings::new(engine);
    let image = ContainerSettings { image: Some("img:1".into()), ..Default::default() };
    match &mut settings {
        EngineSettings::VllmDocker { container, .. } | EngineSettings::Docker(container) => {
            *container = image
        }
        _ => {}
    }
    LaunchSpec {
        run_id: "t".into(),
        run_dir: dir.to_owned(),
        lmcache: tier.lmcache.clone(),
        tier,
        disk_dir: dir.join("kv"),
        model: "m".into(),
        tensor_parallel: 1,
        pipeline_parallel: 1,
        gpus: GpuSelection::All,
        port: None,
        secrets: Default::default(),
        ready_timeout: Duration::from_secs(1),
        wrapper: None,
        gpu_blocks: None,
        redis_url: None,
        engine: settings,
    }
}

async fn start_err(spec: &LaunchSpec) -> String {
    match launcher(spec.kind()).start(spec).await {
        Ok(_) => panic!("{} started", spec.kind()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn no_docker_no_podman() {
    let _path = PATH_LOCK.lock().await;
    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("PATH", empty.path());
    assert_eq!(HostProbe::detect().container_runtime, None);
    for engine in [EngineKind::VllmDocker, EngineKind::Docker] {
        let spec = spec(empty.path(), engine, Tier::Cpu);
        let err = start_err(&spec).await;
        assert_eq!(
            err,
            format!(
                "engine `{engine}` failed: no container runtime: neither `docker` nor `podman` is on PATH; install \
                 Docker (https://docs.docker.com/engine/install/) or Podman, or use --engine emulated"
            )
        );
    }
}

#[tokio::test]
async fn vllm_not_on_path() {
    let _path = PATH_LOCK.lock().await;
    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("PATH", empty.path());
    let err = start_err(&spec(empty.path(), EngineKind::Vllm, Tier::Disk)).await;
    assert_eq!(
        err,
        "engine `vllm` failed: no vLLM found: neither the lab's venv (.kvlab/vllm-venv, made by `cargo xtask \
         ci`) nor `vllm` on PATH; install it (`pip install vllm lmcache`, or `nix develop`), or use --engine \
         vllm-docker"
    );
}

/// A container runtime (a fake `docker`, the only program on PATH) but no GPU: vllm-docker is
/// refused naming the GPU; the runtime is asked only for the image's labels (a CPU build of
/// vLLM, `kvlab.device=cpu`, would run), nothing is started.
#[tokio::test]
async fn vllm_docker_without_gpu() {
    let _path = PATH_LOCK.lock().await;
    let bin = tempfile::tempdir().unwrap();
    let asked = bin.path().join("asked");
    let docker = bin.path().join("docker");
    std::fs::write(&docker, format!("#!/bin/sh\necho \"$@\" >> {}\nexit 1\n", asked.display())).unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::env::set_var("PATH", bin.path());
    let probe = HostProbe::detect();
    assert_eq!(probe.container_runtime.as_deref(), Some("docker"));
    let err = start_err(&spec(bin.path(), EngineKind::VllmDocker, Tier::Disk)).await;
    if Path::new("/dev/nvidia0").exists() {
        // A GPU host: the GPU is found, and the fake runtime's failure is what stops the run.
        assert!(probe.nvidia_gpu && !err.contains("no NVIDIA GPU found"), "{err}");
        return;
    }
    assert_eq!(
        err,
        "engine `vllm-docker` failed: no NVIDIA GPU found (no nvidia-smi on PATH, no /dev/nvidia0) and image \
         img:1 is not vLLM's CPU build (label kvlab.device=cpu); vLLM needs one. Install \
         the NVIDIA driver and container toolkit, use --image kvlab/vllm-cpu (`cargo xtask images vllm-cpu`), \
         or --engine emulated"
    );
    let asked = std::fs::read_to_string(&asked).expect("the runtime was asked for the image's labels");
    assert!(asked.lines().next().is_some_and(|l| l.starts_with("image inspect")), "{asked}");
    assert!(asked.lines().all(|l| l.starts_with("image inspect")), "the runtime was asked more: {asked}");
}
