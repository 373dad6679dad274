//! Engine command lines: the exact arguments for each tier, as snapshots. None may contain a
//! secret: a planted HF_TOKEN is checked against every one.

use std::path::{Path, PathBuf};

use lab::config::{Tier, TierConfig};
use lab::engine::docker::{docker_run_args, DockerRun, VllmContainer};
use lab::engine::llamacpp::{llamacpp_command, LlamacppRuntime, LlamacppServe};
use lab::engine::vllm::{vllm_process_command, VllmServe};
use lab::engine::GpuSelection;
use lab::secrets::Secrets;

const TOKEN: &str = "hf_plantedSECRETtoken123";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn planted() -> (tempfile::TempDir, Secrets) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), format!("# secrets\nexport HF_TOKEN=\"{TOKEN}\"\n")).unwrap();
    let secrets = Secrets::from_dotenv(&dir.path().join(".env")).unwrap();
    assert_eq!(secrets.hf_token(), Some(TOKEN));
    (dir, secrets)
}

fn no_secret(args: &[String]) {
    for a in args {
        assert!(!a.contains(TOKEN), "secret in argument {a:?}");
    }
}

#[test]
fn docker_args_per_tier() {
    let (_dir, secrets) = planted();
    let mut all = String::new();
    for runtime in ["docker", "podman"] {
        for tier in Tier::ALL {
            let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
            let has_lmcache = cfg.lmcache.is_some();
            let run = DockerRun {
                runtime: runtime.to_owned(),
                run_id: format!("{tier}-run-1"),
                image: lab::engine::docker::VLLM_LMCACHE_IMAGE.to_owned(),
                host_port: 18000,
                gpus: if tier == Tier::Cpu { GpuSelection::Devices(vec![0, 2]) } else { GpuSelection::All },
                vllm: Some(VllmContainer {
                    model: "meta-llama/Llama-3.1-8B-Instruct".into(),
                    tensor_parallel: 1,
                    gpu_memory_utilization: cfg.vllm.gpu_memory_utilization,
                }),
                lmcache_yaml: has_lmcache.then(|| PathBuf::from("/results/run/lmcache.yaml")),
                disk_dir: (tier == Tier::Disk).then(|| PathBuf::from("/results/run/kvcache")),
                env_file: secrets.env_file().map(|_| PathBuf::from("/repo/.env")),
                host_network: tier == Tier::Redis,
            };
            let args = docker_run_args(&run);
            no_secret(&args);
            assert!(args.iter().any(|a| a == "--env-file"), "HF_TOKEN goes through --env-file");
            assert!(!args.iter().any(|a| a.starts_with("0.0.0.0:")), "published on 127.0.0.1 only");
            all.push_str(&format!("## {runtime} {tier}\n{runtime} {}\n\n", args.join(" ")));
        }
    }
    insta::assert_snapshot!(all);
}

#[test]
fn vllm_process_command_per_tier() {
    let (_dir, secrets) = planted();
    let mut all = String::new();
    for tier in Tier::ALL {
        let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
        let serve = VllmServe {
            model: "meta-llama/Llama-3.1-8B-Instruct",
            host: "127.0.0.1",
            port: 18001,
            tensor_parallel: 2,
            gpu_memory_utilization: cfg.vllm.gpu_memory_utilization,
            lmcache: cfg.lmcache.is_some(),
        };
        let yaml = cfg.lmcache.is_some().then(|| PathBuf::from("/results/run/lmcache.yaml"));
        let cmd = vllm_process_command(&serve, yaml.as_deref(), &GpuSelection::Count(2), secrets.hf_token());
        no_secret(&cmd.args);
        assert_eq!(
            cmd.env.get("HF_TOKEN").map(String::as_str),
            Some(TOKEN),
            "the token reaches the engine's env"
        );
        let shown = cmd.display(&secrets);
        assert!(!shown.contains(TOKEN), "{shown}");
        let env: Vec<String> = cmd
            .env
            .iter()
            .map(|(k, v)| if k == "HF_TOKEN" { format!("{k}=<from .env>") } else { format!("{k}={v}") })
            .collect();
        all.push_str(&format!(
            "## {tier}\nenv: {}\n{} {}\n\n",
            env.join(" "),
            cmd.program,
            cmd.args.join(" ")
        ));
    }
    insta::assert_snapshot!(all);
}

#[test]
fn llamacpp_commands() {
    let mut all = String::new();
    for tier in [Tier::Baseline, Tier::Cpu] {
        let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
        let cache = lab::engine::llamacpp::cache_ram_for(&cfg).unwrap();
        let serve = LlamacppServe {
            model_path: Path::new("/models/tiny.gguf"),
            alias: "tiny",
            port: 18002,
            ctx: 8192,
            parallel: 1,
            threads: 2,
            cache_ram_mib: cache,
        };
        for runtime in [
            LlamacppRuntime::Binary("/usr/bin/llama-server".into()),
            LlamacppRuntime::Python {
                python: ".venv/bin/python".into(),
                script: "/run/serve_llamacpp.py".into(),
            },
        ] {
            let cmd = llamacpp_command(&runtime, &serve);
            all.push_str(&format!("## {tier}\n{} {}\n\n", cmd.program, cmd.args.join(" ")));
        }
    }
    for tier in [Tier::Disk, Tier::Redis] {
        let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
        let err = lab::engine::llamacpp::cache_ram_for(&cfg).unwrap_err().to_string();
        all.push_str(&format!("## {tier}\n{err}\n\n"));
    }
    insta::assert_snapshot!(all);
}

#[test]
fn secrets_are_redacted_and_hidden_from_debug() {
    let (_dir, secrets) = planted();
    assert_eq!(secrets.redact(&format!("token={TOKEN}!")), "token=<redacted>!");
    assert!(!format!("{secrets:?}").contains(TOKEN));
    let none = Secrets::from_dotenv(Path::new("/nonexistent/.env")).unwrap();
    assert_eq!(none.hf_token(), None);
    assert_eq!(none.env_file(), None);
}

#[test]
fn gpu_selection_and_counts() {
    assert_eq!("2".parse::<GpuSelection>().unwrap().device_list().as_deref(), Some("0,1"));
    assert_eq!("1,3".parse::<GpuSelection>().unwrap().count(), Some(2));
    assert_eq!(
        "x".parse::<GpuSelection>().unwrap_err().to_string(),
        "invalid configuration: --gpus `x`: expected `all`, a count (2) or a device list (0,2)"
    );
    let err = lab::engine::check_gpu_count("big-model", 4, &GpuSelection::Count(2)).unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid configuration: model `big-model` needs 4 GPUs (tensor parallel) but only 2 were given; pass \
         --gpus 4 or a device list"
    );
    assert!(lab::engine::check_gpu_count("m", 1, &GpuSelection::All).is_ok());
}

#[test]
fn auto_engine_choice() {
    use lab::engine::{EngineKind, HostProbe};
    let check = |gpu: bool, rt: Option<&str>, expect: EngineKind| {
        let probe = HostProbe { nvidia_gpu: gpu, container_runtime: rt.map(str::to_owned) };
        let (kind, why) = probe.choose(EngineKind::Auto);
        assert_eq!(kind, expect, "{why}");
        assert!(why.starts_with("auto: "), "{why}");
    };
    check(true, Some("docker"), EngineKind::VllmDocker);
    check(false, Some("docker"), EngineKind::Emulated);
    check(true, None, EngineKind::Emulated);
}
