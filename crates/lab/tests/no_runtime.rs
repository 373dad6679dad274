//! With no container runtime on PATH, the docker engines are refused, naming what to install.
//! (Its own test binary: it empties PATH for the whole process.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use lab::config::{Tier, TierConfig};
use lab::engine::{launcher, EmulatorRunSettings, EngineKind, GpuSelection, HostProbe, LaunchSpec};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test]
async fn no_docker_no_podman() {
    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("PATH", empty.path());
    assert_eq!(HostProbe::detect().container_runtime, None);
    let tier = TierConfig::load(&root().join("configs"), Tier::Cpu).unwrap();
    for engine in [EngineKind::VllmDocker, EngineKind::Docker] {
        let spec = LaunchSpec {
            engine,
            run_id: "t".into(),
            run_dir: empty.path().to_owned(),
            lmcache: tier.lmcache.clone(),
            tier: tier.clone(),
            disk_dir: empty.path().join("kv"),
            model: "m".into(),
            tensor_parallel: 1,
            pipeline_parallel: 1,
            gpus: GpuSelection::All,
            gpu_type: None,
            port: None,
            image: Some("img:1".into()),
            url: None,
            secrets: Default::default(),
            ready_timeout: Duration::from_secs(1),
            llamacpp_model: None,
            python: None,
            emulator: EmulatorRunSettings::default(),
            profile: None,
        };
        let err = match launcher(engine).start(&spec).await {
            Ok(_) => panic!("started without a runtime"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            err,
            format!(
                "engine `{engine}` failed: no container runtime: neither `docker` nor `podman` is on PATH; install \
                 Docker (https://docs.docker.com/engine/install/) or Podman, or use --engine emulated"
            )
        );
    }
}
