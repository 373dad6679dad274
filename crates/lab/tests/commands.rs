//! Engine command lines: the exact arguments for each tier, as snapshots. None may contain a
//! secret: a planted HF_TOKEN is checked against every one.

use std::path::{Path, PathBuf};

use engines::docker::{docker_run_args, DockerRun, VllmContainer};
use engines::llamacpp::{llamacpp_command, LlamacppRuntime, LlamacppServe};
use engines::orphans::Owner;
use engines::secrets::Secrets;
use engines::vllm::{vllm_process_command, Connector, VllmServe};
use engines::{EngineKind, GpuSelection};
use schema::config::{Tier, TierConfig};

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
                image: engines::docker::default_image(EngineKind::VllmDocker).unwrap(),
                owner: owner(),
                host_port: 18000,
                gpus: Some(if tier == Tier::Cpu {
                    GpuSelection::Devices(vec![0, 2])
                } else {
                    GpuSelection::All
                }),
                vllm: Some(VllmContainer {
                    model: "meta-llama/Llama-3.1-8B-Instruct".into(),
                    tensor_parallel: 1,
                    pipeline_parallel: 1,
                    gpu_memory_utilization: cfg.vllm.gpu_memory_utilization,
                    gpu_blocks: None,
                    served_name: None,
                    cpu: false,
                    max_model_len: None,
                    kv_cache_bytes: None,
                    lmcache_mp_port: None,
                }),
                lmcache_yaml: has_lmcache.then(|| PathBuf::from("/results/run/lmcache.yaml")),
                engine_env: Some(PathBuf::from("/results/run/engine.env")),
                disk_dir: (tier == Tier::Disk).then(|| PathBuf::from("/results/run/kvcache")),
                model_dir: None,
                env_file: secrets.env_file().map(|_| PathBuf::from("/run/user/1000/kvlab-run.env")),
                host_network: tier == Tier::Redis,
            };
            let args = docker_run_args(&run);
            no_secret(&args);
            assert!(args.iter().any(|a| a == "--env-file"), "HF_TOKEN goes through --env-file");
            assert!(!args.iter().any(|a| a.starts_with("0.0.0.0:")), "published on 127.0.0.1 only");
            all.push_str(&format!("## {runtime} {tier}\n{runtime} {}\n\n", args.join(" ")));
        }
    }
    // An engine image on a host without a GPU: no GPU flags, no vLLM command, no --ipc=host.
    let run = DockerRun {
        runtime: "docker".into(),
        run_id: "cpu-run-2".into(),
        owner: owner(),
        image: "kvlab/llamacpp".into(),
        host_port: 18003,
        gpus: None,
        vllm: None,
        lmcache_yaml: None,
        engine_env: Some(PathBuf::from("/results/run/engine.env")),
        disk_dir: None,
        model_dir: None,
        env_file: None,
        host_network: false,
    };
    let args = docker_run_args(&run);
    assert!(!args.iter().any(|a| a.contains("gpu")), "{args:?}");
    all.push_str(&format!("## docker engine image, no GPU\ndocker {}\n\n", args.join(" ")));
    insta::assert_snapshot!(all);
}

fn owner() -> Owner {
    Owner { pid: 4242, start_time: 123_456, boot_id: "5f1c-boot".into() }
}

#[test]
fn engine_env_per_tier() {
    use engines::docker::{engine_env, EngineEnv, CONTAINER_DISK_DIR, CONTAINER_PORT};
    let mut all = String::new();
    for tier in Tier::ALL {
        let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
        let env = EngineEnv {
            run_id: format!("{tier}-run-1"),
            tier,
            model: "tiny".into(),
            host: if tier == Tier::Redis { "127.0.0.1" } else { "0.0.0.0" }.into(),
            port: if tier == Tier::Redis { 18004 } else { CONTAINER_PORT },
            cache_ram_mib: cfg.llamacpp.supported.then_some(cfg.llamacpp.cache_ram_mib),
            disk_dir: (tier == Tier::Disk).then(|| CONTAINER_DISK_DIR.to_owned()),
            redis_url: (tier == Tier::Redis).then(|| "redis://127.0.0.1:6379".to_owned()),
            gpu_type: Some("H100".into()),
            seed: 7,
            lmcache_server_args: None,
        };
        all.push_str(&format!("## {tier}\n{}\n", engine_env(&env).unwrap()));
    }
    let bad = EngineEnv {
        run_id: "r".into(),
        tier: Tier::Cpu,
        model: "it's".into(),
        host: "0.0.0.0".into(),
        port: 8000,
        cache_ram_mib: None,
        disk_dir: None,
        redis_url: None,
        gpu_type: None,
        seed: 0,
        lmcache_server_args: None,
    };
    all.push_str(&format!("## a quote\n{}\n", engine_env(&bad).unwrap_err()));
    insta::assert_snapshot!(all);
}

#[test]
fn image_build_commands() {
    use images::{image_build, image_build_args, BaseRecipe, ImagesConfig, KvlabImage};
    let recipe = BaseRecipe::default();
    let mut all = String::from("## base\n");
    for cmd in [
        recipe.debootstrap(Path::new("/build/rootfs")),
        recipe.tar(Path::new("/build/rootfs")),
        recipe.import("docker"),
    ] {
        all.push_str(&format!("{} {}\n", cmd.program, cmd.args.join(" ")));
    }
    all.push_str(&format!("tags: {} {}\n\n", recipe.tag(), recipe.hash_tag()));
    // vllm-cpu's recipe hash is its `kvlab.inputs` label; none where its recipe was not read.
    let inputs = Some("0123456789abcdef".to_owned());
    for (runtime, local_base, vllm_cpu_inputs) in
        [("docker", Some(recipe.tag()), inputs), ("podman", None, None)]
    {
        let cfg = ImagesConfig {
            runtime: runtime.into(),
            version: "0.1.0".into(),
            git_rev: "0123456789ab".into(),
            local_base,
            containers_dir: PathBuf::from("/repo/containers"),
            context_dir: PathBuf::from("/repo/target/kvlab-images"),
            vllm_cpu_inputs,
        };
        for image in KvlabImage::ALL {
            let Some(b) = image_build(image, &cfg) else {
                assert_eq!(image, KvlabImage::Base, "only the base has no Containerfile");
                continue;
            };
            assert!(root().join("containers").join(image.containerfile().unwrap()).is_file(), "{image:?}");
            all.push_str(&format!(
                "## {runtime} {}\n{runtime} {}\n\n",
                image.as_str(),
                image_build_args(&b).join(" ")
            ));
        }
    }
    insta::assert_snapshot!(all);
}

#[test]
fn base_hash_changes_with_its_inputs() {
    use images::BaseRecipe;
    let a = BaseRecipe::default();
    assert_eq!(a.input_hash(), BaseRecipe::default().input_hash(), "stable");
    assert_eq!(a.input_hash().len(), 16);
    let mut b = a.clone();
    b.include.push("python3".into());
    assert_ne!(a.input_hash(), b.input_hash());
    let mut c = a.clone();
    c.suite = "trixie".into();
    assert_ne!(a.input_hash(), c.input_hash());
    assert_eq!(c.tag(), "kvlab/base:trixie");
}

#[test]
fn owner_liveness_and_start_times() {
    let me = Owner::current();
    assert_eq!(me.pid, std::process::id());
    assert!(me.start_time > 0 && !me.boot_id.is_empty(), "{me:?}");
    assert!(me.is_alive());
    // The same pid with another start time is a reused pid, not this process.
    assert!(!Owner { start_time: me.start_time + 1, ..me.clone() }.is_alive());
    assert!(!Owner { boot_id: "another-boot".into(), ..me.clone() }.is_alive());
    // A child that has exited and been reaped is gone.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert_eq!(engines::orphans::process_start_time(pid), None);
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
            pipeline_parallel: 1,
            gpu_memory_utilization: cfg.vllm.gpu_memory_utilization,
            connector: if cfg.lmcache.is_some() { Connector::InProcess } else { Connector::None },
            served_name: None,
            cpu: false,
            max_model_len: None,
            kv_cache_bytes: None,
            gpu_blocks: None,
        };
        let yaml = cfg.lmcache.is_some().then(|| PathBuf::from("/results/run/lmcache.yaml"));
        let cmd =
            vllm_process_command(&serve, None, yaml.as_deref(), &GpuSelection::Count(2), secrets.hf_token());
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
        let cache = engines::llamacpp::cache_ram_for(&cfg).unwrap();
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
            let cmd = llamacpp_command(&runtime, &serve, &GpuSelection::All, None);
            all.push_str(&format!("## {tier}\n{} {}\n\n", cmd.program, cmd.args.join(" ")));
        }
    }
    for tier in [Tier::Disk, Tier::Redis] {
        let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
        let err = engines::llamacpp::cache_ram_for(&cfg).unwrap_err().to_string();
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
    let err = engines::check_gpu_count("big-model", 4, &GpuSelection::Count(2)).unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid configuration: model `big-model` needs 4 GPUs (tensor x pipeline parallel) but only 2 were given; pass \
         --gpus 4 or a device list"
    );
    assert!(engines::check_gpu_count("m", 1, &GpuSelection::All).is_ok());
}

#[test]
fn auto_engine_choice() {
    use engines::{EngineKind, HostProbe};
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

#[test]
fn orphaned_engine_processes_are_reaped_and_live_ones_kept() {
    use engines::orphans::{process_start_time, reap_orphans, EngineRecord};
    let dir = tempfile::tempdir().unwrap();
    // An owner that is gone: a child that has exited and been reaped.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_owner = Owner { pid: dead.id(), ..Owner::current() };
    dead.wait().unwrap();
    let mut orphan = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let mut kept = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let record = |child: &std::process::Child, owner: Owner| EngineRecord {
        pid: child.id(),
        start_time: process_start_time(child.id()).unwrap(),
        program: "sleep".into(),
        owner,
    };
    let write = |name: &str, r: &EngineRecord| {
        std::fs::write(dir.path().join(name), serde_json::to_string(r).unwrap()).unwrap();
    };
    write("orphan.json", &record(&orphan, dead_owner.clone()));
    write("kept.json", &record(&kept, Owner::current()));
    // A record whose pid now belongs to another process (other start time) is dropped, not killed.
    write("reused.json", &EngineRecord { start_time: 1, ..record(&kept, dead_owner) });
    std::fs::write(dir.path().join("torn.json"), "{\"pid\": 12").unwrap();

    let reaped = reap_orphans(Some(dir.path())).unwrap();
    let processes: Vec<_> = reaped.iter().filter(|r| r.kind == "process").collect();
    assert_eq!(processes.len(), 1, "{reaped:?}");
    assert!(processes[0].what.starts_with(&format!("{} ", orphan.id())), "{reaped:?}");
    let status = orphan.wait().unwrap();
    assert!(!status.success(), "the orphan was signalled: {status}");
    assert_eq!(kept.try_wait().unwrap(), None, "a live owner's engine is kept");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["kept.json"]);
    kept.kill().unwrap();
    kept.wait().unwrap();
}

#[test]
fn an_orphaned_engine_is_reaped_with_the_workers_of_its_process_group() {
    use engines::orphans::{process_start_time, reap_orphans, EngineRecord};
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_owner = Owner { pid: dead.id(), ..Owner::current() };
    dead.wait().unwrap();
    // An engine leading its own group, with a worker that would outlive a kill by pid.
    let mut engine = std::process::Command::new("sh")
        .args(["-c", "sleep 60 & echo $!; exec sleep 60"])
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(engine.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let worker: u32 = line.trim().parse().unwrap();
    let record = EngineRecord {
        pid: engine.id(),
        start_time: process_start_time(engine.id()).unwrap(),
        program: "sh".into(),
        owner: dead_owner,
    };
    std::fs::write(dir.path().join("engine.json"), serde_json::to_string(&record).unwrap()).unwrap();
    let reaped = reap_orphans(Some(dir.path())).unwrap();
    assert_eq!(reaped.iter().filter(|r| r.kind == "process").count(), 1, "{reaped:?}");
    assert!(!engine.wait().unwrap().success(), "the engine was signalled");
    let worker_alive =
        std::fs::read_to_string(format!("/proc/{worker}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(!worker_alive, "the engine's worker {worker} was killed with its group");
}

#[test]
fn vllm_gets_the_gpu_blocks_a_baseline_cache_size_gives() {
    // One argument list serves the process, the container (`docker_run_args`) and `--dry-run`.
    let serve = |gpu_blocks| {
        VllmServe {
            model: "m",
            host: "127.0.0.1",
            port: 18001,
            tensor_parallel: 1,
            pipeline_parallel: 1,
            gpu_memory_utilization: 0.9,
            connector: if false { Connector::InProcess } else { Connector::None },
            served_name: None,
            cpu: false,
            max_model_len: None,
            kv_cache_bytes: None,
            gpu_blocks,
        }
        .args()
    };
    assert!(serve(Some(1536)).ends_with(&["--num-gpu-blocks-override".to_owned(), "1536".to_owned()]));
    assert!(
        !serve(None).iter().any(|a| a == "--num-gpu-blocks-override"),
        "without a cache size vLLM sizes its own cache"
    );
}

#[test]
fn llamacpp_env_has_the_chosen_gpus_and_the_token_outside_argv() {
    let (_dir, secrets) = planted();
    let serve = LlamacppServe {
        model_path: Path::new("/models/tiny.gguf"),
        alias: "tiny",
        port: 18002,
        ctx: 8192,
        parallel: 1,
        threads: 2,
        cache_ram_mib: 0,
    };
    let runtime = LlamacppRuntime::Binary("/usr/bin/llama-server".into());
    let check = |gpus: GpuSelection, expect: Option<&str>| {
        let cmd = llamacpp_command(&runtime, &serve, &gpus, secrets.hf_token());
        assert_eq!(cmd.env.get("CUDA_VISIBLE_DEVICES").map(String::as_str), expect, "{gpus:?}");
        assert_eq!(cmd.env.get("HF_TOKEN").map(String::as_str), Some(TOKEN));
        assert!(!cmd.args.iter().any(|a| a.contains(TOKEN)), "the token is not in argv");
    };
    check(GpuSelection::Devices(vec![1, 3]), Some("1,3"));
    check(GpuSelection::Count(2), Some("0,1"));
    check(GpuSelection::All, None);
}

#[test]
fn gpus_are_checked_against_the_nvml_count() {
    use engines::GpuInventory;
    let check = |inventory: &GpuInventory, flag: &str, expect: &str| {
        let got = match inventory.resolve(&flag.parse().unwrap()) {
            Ok(sel) => format!("--gpus {}", sel.flag()),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expect, "--gpus {flag} with {inventory:?}");
    };
    let one = GpuInventory::Available { count: 1 };
    check(&one, "all", "--gpus 1");
    check(&one, "1", "--gpus 1");
    check(
        &one,
        "2",
        "invalid configuration: --gpus 2 asks for 2 GPUs, but NVML counts 1 GPU (devices 0 to 0); pass \
         --gpus all or at most --gpus 1",
    );
    let four = GpuInventory::Available { count: 4 };
    check(&four, "all", "--gpus 4");
    check(&four, "0,3", "--gpus 0,3");
    check(
        &four,
        "1,4",
        "invalid configuration: --gpus 1,4 names device 4, but NVML counts 4 GPUs (devices 0 to 3); pass \
         --gpus all or at most --gpus 4",
    );
    // Without NVML nothing is known: the selection stays (the emulated engine needs no GPU).
    let none = GpuInventory::Unavailable { reason: "NVML init failed: a library was not found".into() };
    check(&none, "all", "--gpus all");
    check(&none, "2", "--gpus 2");
    assert_eq!(four.require().unwrap(), 4);
    assert_eq!(
        none.require().unwrap_err().to_string(),
        "invalid configuration: --require-gpu: NVML reports no NVIDIA GPU (NVML init failed: a library was not \
         found); install the NVIDIA driver (it brings libnvidia-ml), or drop --require-gpu to run on the \
         emulated engine"
    );
    // `--gpus all` resolves to the count: a model needing more is refused before it starts.
    let all = one.resolve(&GpuSelection::All).unwrap();
    assert!(engines::check_gpu_count("llama-3-70b-tp4", 4, &all).is_err());
}

/// `--require-gpu` through a run: on a host without NVML (this one, and CI) the refusal names
/// NVML; with NVML the GPU check passes and the emulated engine is refused as measuring none.
#[tokio::test]
async fn require_gpu_asks_nvml() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = lab::run::BenchOptions::new(dir.path(), Tier::Cpu);
    opts.engine = engines::EngineKind::Emulated;
    opts.require_gpu = true;
    opts.progress = false;
    let err = lab::run::bench(&opts).await.expect_err("refused").to_string();
    match engines::GpuInventory::detect() {
        engines::GpuInventory::Unavailable { reason } => {
            assert_eq!(
                err,
                format!(
                    "invalid configuration: --require-gpu: NVML reports no NVIDIA GPU ({reason}); install the \
                     NVIDIA driver (it brings libnvidia-ml), or drop --require-gpu to run on the emulated engine"
                )
            );
        }
        engines::GpuInventory::Available { .. } => {
            assert!(err.contains("engine `emulated` does not measure a GPU"), "{err}")
        }
    }
    // An injected inventory stands in for NVML.
    opts.gpu_inventory = Some(engines::GpuInventory::Available { count: 1 });
    opts.gpus = "2".parse().unwrap();
    opts.require_gpu = false;
    let err = lab::run::bench(&opts).await.expect_err("refused").to_string();
    assert!(err.contains("--gpus 2 asks for 2 GPUs, but NVML counts 1 GPU"), "{err}");
}

/// vLLM's CPU build with LMCache's server beside it (mp mode), per tier, as the launcher starts
/// them: the module entry point (the CPU wheel's `vllm` script is broken), cached-token counts
/// on, `VLLM_TARGET_DEVICE=cpu` (else SIGILL on AVX2 hosts), no usage statistics sent, caches in
/// the lab's cache directory and temporary files in the run; LMCache's server on 127.0.0.1 with
/// the tier's L2 adapter (disk: `fs` in the run's `kvcache/`; redis: `valkey` on the run's own
/// database, keys prefixed with the run id); baseline starts no server and no connector.
#[test]
fn vllm_cpu_mp_processes_per_tier() {
    let (_dir, secrets) = planted();
    let mut all = String::new();
    for tier in Tier::ALL {
        let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
        let spec = engines::LaunchSpec {
            run_id: "run-1".into(),
            run_dir: PathBuf::from("/results/run"),
            lmcache: cfg.lmcache.clone(),
            tier: cfg,
            disk_dir: PathBuf::from("/results/run/kvcache"),
            model: "kvlab/tiny-llama-hf".into(),
            tensor_parallel: 1,
            pipeline_parallel: 1,
            gpus: GpuSelection::All,
            port: None,
            secrets: secrets.clone(),
            ready_timeout: std::time::Duration::from_secs(1),
            wrapper: None,
            gpu_blocks: Some(40),
            redis_url: Some("redis://127.0.0.1:6379/3".into()),
            engine: engines::EngineSettings::Vllm(engines::vllm::VllmRunSettings {
                python: Some(PathBuf::from("/lab/.kvlab/vllm-venv/bin/python")),
                model_dir: Some(PathBuf::from("/lab/.kvlab/models/tiny-llama-hf")),
                lmcache_mode: Some(engines::vllm::LmcacheMode::Mp),
                cpu: true,
                cache_dir: Some(PathBuf::from("/lab/.kvlab/cache")),
                max_model_len: Some(4096),
                kv_cache_bytes: Some(20 << 20),
                l1_cap_gb: Some(4.0),
            }),
        };
        let procs = engines::vllm::vllm_processes(&spec, 18001, (18101, 18102)).unwrap();
        let show = |program: &str, args: &[String], env: &std::collections::BTreeMap<String, String>| {
            no_secret(args);
            let env: Vec<String> = env
                .iter()
                .map(|(k, v)| if k == "HF_TOKEN" { format!("{k}=<from .env>") } else { format!("{k}={v}") })
                .collect();
            format!("env: {}\n{} {}\n", env.join(" "), program, args.join(" "))
        };
        all.push_str(&format!("## {tier}\n"));
        if let Some((server, cmd)) = &procs.lmcache {
            assert_eq!(server.metrics_url(), "http://127.0.0.1:18102/metrics");
            all.push_str(&format!("lmcache: {}", show(&cmd.program, &cmd.args, &cmd.env)));
        }
        let v = &procs.vllm;
        all.push_str(&format!("vllm: {}\n", show(&v.program, &v.args, &v.env)));
    }
    insta::assert_snapshot!(all);
}
