//! Profiling under Nsight Systems: the exact nsys command lines per engine and tier (snapshots),
//! and the parsing of `nsys stats --format csv` output. The CSV samples in `tests/fixtures/nsys`
//! were written by hand, not captured from nsys: their columns follow NVIDIA's documentation of
//! the `nvtx_sum` and `cuda_gpu_kern_sum` reports (`Time (%)`, `Total Time (ns)`, `Instances`,
//! `Avg (ns)`, `Med (ns)`, `Min (ns)`, `Max (ns)`, `StdDev (ns)`, then `Style`, `Range` or `Name`)
//! and, for `nvtx_sum_legacy.csv`, older releases' `Average`/`Minimum`/`Maximum` (the fixtures'
//! README says so too).

use std::path::{Path, PathBuf};

mod common;

use engines::docker::{
    default_image, docker_run_args, DockerRun, VllmContainer, UPSTREAM_VLLM_LMCACHE_IMAGE,
};
use engines::orphans::Owner;
use engines::vllm::{vllm_process_command, Connector, VllmServe};
use engines::{EngineKind, GpuSelection};
use profile::{
    classify, container_args, lab_command, parse_kern_sum, parse_nvtx_sum, placement, stats_command, Phase,
    Placement, ProfileSpec, Side, StatsHost,
};
use schema::config::{Tier, TierConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A hand-written `nsys stats` CSV sample (`tests/fixtures/nsys/README.md`: not captured from nsys).
fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nsys").join(name))
        .unwrap()
}

fn shown(cmd: &profile::CommandLine) -> String {
    let env: Vec<String> = cmd.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    format!("{}{} {}", env.concat(), cmd.program, cmd.args.join(" "))
}

#[test]
fn nsys_command_lines_per_engine_and_tier() {
    let mut all = String::new();
    for engine in [EngineKind::Emulated, EngineKind::Llamacpp, EngineKind::Vllm] {
        assert_eq!(placement(engine).unwrap(), Placement::WrapsLab);
        for tier in Tier::ALL {
            if engine == EngineKind::Llamacpp && matches!(tier, Tier::Disk | Tier::Redis) {
                continue; // refused by the llama.cpp launcher
            }
            let args: Vec<String> = [
                "profile",
                "--inside-nsys",
                "/results/.profile-7/result-dir",
                "--engine",
                engine.as_str(),
                "--tier",
                &tier.to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            let cmd = lab_command(engine, "nsys", "/opt/kvlab/xtask", &args, "/results/.profile-7/kvlab");
            all.push_str(&format!("## {engine} {tier}: nsys runs the lab\n{}\n\n", shown(&cmd)));
        }
    }
    // The process vLLM that nsys traces as the lab's child, with its CUDA profiler on.
    let serve = VllmServe {
        model: "meta-llama/Llama-3.1-8B-Instruct",
        host: "127.0.0.1",
        port: 18000,
        tensor_parallel: 1,
        pipeline_parallel: 1,
        gpu_memory_utilization: 0.9,
        connector: if true { Connector::InProcess } else { Connector::None },
        served_name: None,
        cpu: false,
        max_model_len: None,
        kv_cache_bytes: None,
        gpu_blocks: None,
    };
    let mut vllm = vllm_process_command(
        &serve,
        None,
        Some(Path::new("/results/run/lmcache.yaml")),
        &GpuSelection::All,
        None,
    );
    vllm.args.extend(profile::vllm_args());
    all.push_str(&format!("## vllm: the engine process under the lab\n{}\n\n", shown(&vllm)));

    // vllm-docker: nsys inside the container (the default image, which carries it), per
    // container runtime and tier.
    let spec = ProfileSpec { placement: Placement::InContainer };
    assert_eq!(placement(EngineKind::VllmDocker).unwrap(), Placement::InContainer);
    let image = default_image(EngineKind::VllmDocker).unwrap();
    for (runtime, tier) in ["docker", "podman"].into_iter().flat_map(|r| Tier::ALL.map(|t| (r, t))) {
        let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
        let run = DockerRun {
            runtime: runtime.into(),
            run_id: format!("{tier}-run-1"),
            owner: Owner { pid: 4242, start_time: 123_456, boot_id: "5f1c-boot".into() },
            image: image.clone(),
            host_port: 18000,
            gpus: Some(GpuSelection::All),
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
            lmcache_yaml: cfg.lmcache.is_some().then(|| PathBuf::from("/results/run/lmcache.yaml")),
            engine_env: Some(PathBuf::from("/results/run/engine.env")),
            disk_dir: (tier == Tier::Disk).then(|| PathBuf::from("/results/run/kvcache")),
            model_dir: None,
            env_file: None,
            host_network: tier == Tier::Redis,
        };
        let plain = docker_run_args(&run);
        let run_dir = Path::new("/results/run");
        // Not profiled, or nsys elsewhere: the arguments are untouched.
        assert_eq!(container_args(plain.clone(), &run.image, None, run_dir), plain);
        let elsewhere = ProfileSpec { placement: Placement::WrapsLab };
        assert_eq!(container_args(plain.clone(), &run.image, Some(&elsewhere), run_dir), plain);
        let args = container_args(plain.clone(), &run.image, Some(&spec), run_dir);
        let image_at = args.iter().position(|a| *a == image).unwrap();
        assert_eq!(args[image_at - 4..image_at - 2], ["--entrypoint", "nsys"]);
        assert_eq!(args[image_at + 1], "profile");
        // Every argument of the plain command is still there, in order.
        let mut rest = args.iter();
        assert!(plain.iter().all(|p| rest.any(|a| a == p)), "{args:?}");
        all.push_str(&format!(
            "## vllm-docker {tier} ({runtime}): nsys inside the container\n{runtime} {}\n\n",
            args.join(" ")
        ));
    }

    for (what, host, report) in [
        ("on the host", StatsHost::Host { nsys: "nsys".into() }, "kvlab"),
        (
            "in the engine's image",
            StatsHost::Container { runtime: "docker".into(), image: "kvlab/vllm-lmcache:latest".into() },
            "engine",
        ),
    ] {
        let cmd = stats_command(&host, Path::new("/results/run/profile"), report);
        all.push_str(&format!("## nsys stats {what}\n{}\n\n", shown(&cmd)));
    }
    insta::assert_snapshot!(all);
}

#[test]
fn engines_that_cannot_be_profiled_say_why() {
    let docker = placement(EngineKind::Docker).unwrap_err().to_string();
    assert!(docker.contains("vllm-docker"), "{docker}");
    let external = placement(EngineKind::External).unwrap_err().to_string();
    assert!(external.contains("nsys profile"), "{external}");
}

#[test]
fn range_names_are_classified() {
    let cases = [
        (":prefill", Side::Client, Phase::Prefill),
        ("decode", Side::Client, Phase::Decode),
        ("kvlab:decode", Side::Client, Phase::Decode),
        ("execute_new_4_cached_0", Side::Engine, Phase::Prefill),
        ("execute_new_0_cached_31", Side::Engine, Phase::Decode),
        ("execute_new_1_cached_7", Side::Engine, Phase::Mixed),
        ("execute_context_2(4096)_generation_0(0)", Side::Engine, Phase::Prefill),
        ("execute_context_0(0)_generation_16(16)", Side::Engine, Phase::Decode),
        ("execute_context_1(512)_generation_15(15)", Side::Engine, Phase::Mixed),
        (":workload", Side::Other, Phase::Other),
        ("execute_new_x_cached_1", Side::Other, Phase::Other),
        ("", Side::Other, Phase::Other),
    ];
    for (name, side, phase) in cases {
        assert_eq!(classify(name), (side, phase), "{name:?}");
    }
    // The emulator names its steps exactly as the classifier expects.
    assert_eq!(classify(&emulator::nvtx::step_name(3, 0)), (Side::Engine, Phase::Prefill));
    assert_eq!(classify(&emulator::nvtx::step_name(0, 3)), (Side::Engine, Phase::Decode));
}

#[test]
fn nsys_stats_csv_is_parsed() {
    let nvtx = parse_nvtx_sum("nvtx_sum.csv", &fixture("nvtx_sum.csv")).unwrap();
    assert_eq!(nvtx.len(), 6);
    assert_eq!(
        (nvtx[0].range.as_str(), nvtx[0].side, nvtx[0].phase),
        (":prefill", Side::Client, Phase::Prefill)
    );
    assert_eq!((nvtx[0].instances, nvtx[0].total_ns, nvtx[0].med_ns), (96, 8.24e9, Some(84.1e6)));
    assert_eq!(nvtx[0].style, "StartEnd");
    let kernels = parse_kern_sum("cuda_gpu_kern_sum.csv", &fixture("cuda_gpu_kern_sum.csv")).unwrap();
    assert_eq!(kernels.len(), 3);
    // Names with commas are quoted in the CSV and come back whole.
    assert!(kernels[1].name.starts_with("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 64,"));
    assert_eq!(kernels[2].instances, 104_000);

    // Older nsys: `Average`/`Minimum`/`Maximum`, no median or style; a notice line before the header.
    let legacy =
        format!("Processing [report.sqlite] with [nvtx_sum.py]...\n{}", fixture("nvtx_sum_legacy.csv"));
    let old = parse_nvtx_sum("legacy.csv", &legacy).unwrap();
    assert_eq!(
        (old[1].phase, old[1].instances, old[1].avg_ns, old[1].med_ns),
        (Phase::Decode, 10, 30000.0, None)
    );

    // What the lab writes: profile/nvtx_sum.csv, one classified row per range.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nvtx_sum.csv");
    profile::write_csv(&path, &nvtx).unwrap();
    insta::assert_snapshot!("nvtx_sum_written", std::fs::read_to_string(&path).unwrap());
}

#[test]
fn bad_stats_csv_is_an_error_naming_the_place() {
    let cases = [
        ("no header", "nothing,here\n1,2\n", "stats.csv:1: (header): no header line starting with `Time`"),
        (
            "missing column",
            "Time (%),Total Time (ns),Instances,Range\n1,2,3,x\n",
            "stats.csv:1: (header): no column Avg (ns) / Average (ns) / Average",
        ),
        (
            "missing column after nsys's notices",
            "Processing [report.sqlite] with [nvtx_sum.py]...\n\nTime (%),Total Time (ns),Instances,Range\n1,2,3,x\n",
            "stats.csv:3: (header): no column Avg (ns) / Average (ns) / Average",
        ),
        (
            "not a number",
            "Time (%),Total Time (ns),Instances,Avg (ns),Min (ns),Max (ns),Range\n1,2,3,4,5,6,a\n9,ten,1,1,1,1,b\n",
            "stats.csv:3: Total Time (ns): expected a non-negative number, found \"ten\" (column 2)",
        ),
        (
            "fractional count",
            "Time (%),Total Time (ns),Instances,Avg (ns),Min (ns),Max (ns),Range\n1,2,3.5,4,5,6,a\n",
            "stats.csv:2: Instances: expected a whole count, found 3.5 (column 3)",
        ),
        (
            "ragged row",
            "Time (%),Total Time (ns),Instances,Avg (ns),Min (ns),Max (ns),Range\n1,2,3\n",
            "stats.csv:2: (row): ",
        ),
    ];
    for (what, text, want) in cases {
        let err = parse_nvtx_sum("stats.csv", text).unwrap_err().to_string();
        assert!(err.starts_with(want), "{what}: {err}");
        testkit::located::check(&err, "stats.csv", text).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// The pipeline around nsys on the emulated engine: a profiled run (the workload range and the
/// emulator's step ranges compiled in when the `nvtx` feature is on), then `nsys stats` through a
/// stand-in `nsys` (a script that writes the checked-in samples where nsys would), parsed into
/// `profile/nvtx_sum.csv`, and the report's "Prefill vs decode (NVTX)" section. Nsight Systems
/// itself is not on this machine: the capture is exercised only where it is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_profile_pipeline_with_a_stand_in_nsys() {
    use std::os::unix::fs::PermissionsExt as _;
    let ws = common::workspace();
    let mut opts = lab::run::BenchOptions::new(ws.path(), Tier::Cpu);
    opts.engine = EngineKind::Emulated;
    opts.num_requests = Some(8);
    opts.request_rate = Some(50.0);
    opts.progress = false;
    opts.instruments = Some(ProfileSpec { placement: Placement::WrapsLab }.instruments());
    let reports = lab::run::bench(&opts).await.unwrap();
    let dir = reports[0].dir.clone();
    assert_eq!(reports[0].summary.completed, 8);

    // No report yet: the error says what is missing, and where.
    let profile = dir.join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let host = StatsHost::Host { nsys: ws.path().join("nsys").display().to_string() };
    let err = profile::summarize(&host, &profile, "kvlab").unwrap_err().to_string();
    assert!(err.contains("kvlab.nsys-rep: no Nsight Systems report"), "{err}");

    // The stand-in: `nsys stats ... --output=PREFIX REPORT` writes PREFIX_<report>.csv.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nsys");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do case $a in --output=*) prefix=${{a#--output=}};; esac; done\n\
         cp {f}/nvtx_sum.csv \"${{prefix}}_nvtx_sum.csv\"\ncp {f}/cuda_gpu_kern_sum.csv \"${{prefix}}_cuda_gpu_kern_sum.csv\"\n",
        f = fixtures.display()
    );
    let nsys = ws.path().join("nsys");
    std::fs::write(&nsys, script).unwrap();
    std::fs::set_permissions(&nsys, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(profile.join("kvlab.nsys-rep"), b"stand-in report").unwrap();
    let summary = profile::summarize(&host, &profile, "kvlab").unwrap();
    assert_eq!((summary.nvtx.len(), summary.kernels.len()), (6, 3));
    let written = std::fs::read_to_string(profile.join("nvtx_sum.csv")).unwrap();
    assert!(written.starts_with("range,side,phase,style,instances,total_ns"), "{written}");

    let data = report::RunData::load(&dir).unwrap();
    report::write_report(&[data], &dir).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let section = &md[md.find("## Prefill vs decode (NVTX)").expect("the NVTX section")..];
    // Client: 8240 ms prefill, 6100 ms decode (57.5% / 42.5%); engine steps by phase.
    assert!(section.contains("| client | prefill | 96 | 8240.000 | 57.5% |"), "{section}");
    assert!(section.contains("| client | decode | 96 | 6100.000 | 42.5% |"), "{section}");
    assert!(section.contains("| engine | decode | 1450 | 1620.000 | 49.7% |"), "{section}");
    assert!(section.contains("| engine | prefill | 48 | 1040.000 | 31.9% |"), "{section}");
    assert!(section.contains("| engine | mixed | 40 | 600.000 | 18.4% |"), "{section}");
    assert!(!section.contains("| other |"), "the workload range is not a phase: {section}");
    let (p, d) = (section.find("| client | prefill").unwrap(), section.find("| client | decode").unwrap());
    assert!(p < d, "prefill before decode: {section}");

    // An unprofiled run has no such section.
    let plain = reports[0].dir.parent().unwrap().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    for f in ["summary.json", "requests.jsonl", "run.toml"] {
        std::fs::copy(dir.join(f), plain.join(f)).unwrap();
    }
    report::write_report(&[report::RunData::load(&plain).unwrap()], &plain).unwrap();
    assert!(!std::fs::read_to_string(plain.join("report.md")).unwrap().contains("Prefill vs decode"));
}

/// A stand-in container runtime: `image inspect` and `run ... nsys --version` answer as told
/// (exit status and stderr), and every call is logged next to it.
fn fake_runtime(dir: &Path, name: &str, inspect: (i32, &str), nsys: (i32, &str)) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    let log = dir.join(format!("{name}.log"));
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{log}'\ncase \"$1 $2\" in\n\
         'image inspect') echo '{ie}' >&2; exit {ic};;\n\
         'run --rm') echo '{ne}' >&2; exit {nc};;\nesac\nexit 99\n",
        log = log.display(),
        ic = inspect.0,
        ie = inspect.1,
        nc = nsys.0,
        ne = nsys.1,
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Each refusal of `profile` before anything starts says what is missing and what to install
/// (`nix develop` provides nsys); nsys missing from the host's PATH is checked end to end in
/// xtask's cli tests, which control the PATH of the process.
#[test]
fn preflight_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let image = engines::docker::default_image(EngineKind::VllmDocker).unwrap();
    assert_eq!(
        image, "kvlab/vllm-lmcache:latest",
        "the default of bench and profile is the lab's image, which carries nsys"
    );
    assert_eq!(engines::docker::default_image(EngineKind::Vllm), None);
    let no_image = fake_runtime(dir.path(), "no-image", (1, "Error: No such image"), (0, ""));
    let no_nsys = fake_runtime(
        dir.path(),
        "no-nsys",
        (0, ""),
        (127, "exec: \"nsys\": executable file not found in $PATH: unknown"),
    );
    let ok = fake_runtime(dir.path(), "ok", (0, ""), (0, ""));
    let probe = |gpu: bool, runtime: Option<&Path>| engines::HostProbe {
        nvidia_gpu: gpu,
        container_runtime: runtime.map(|r| r.display().to_string()),
    };
    let upstream = UPSTREAM_VLLM_LMCACHE_IMAGE;
    let check = |engine: EngineKind, probe: engines::HostProbe, image: &str, expect: &[&str]| {
        let got = profile::preflight(engine, &probe, image);
        if expect.is_empty() {
            assert!(got.is_ok(), "{engine} {image}: {got:?}");
            return;
        }
        let msg = got.unwrap_err().to_string();
        for want in expect {
            assert!(msg.contains(want), "{engine} {image}: `{want}` missing from: {msg}");
        }
        assert!(msg.contains("nix develop"), "{engine}: says `nix develop`: {msg}");
    };
    check(
        EngineKind::Vllm,
        probe(false, None),
        "",
        &["no NVIDIA GPU", "Install the NVIDIA driver", "--engine emulated"],
    );
    check(EngineKind::VllmDocker, probe(false, Some(&ok)), &image, &["no NVIDIA GPU"]);
    check(EngineKind::VllmDocker, probe(true, None), &image, &["neither docker nor podman", "--engine vllm"]);
    check(
        EngineKind::VllmDocker,
        probe(true, Some(&no_image)),
        &image,
        &["the image kvlab/vllm-lmcache:latest is not here", "cargo xtask images vllm-lmcache"],
    );
    check(
        EngineKind::VllmDocker,
        probe(true, Some(&no_nsys)),
        upstream,
        &[
            &format!("the image {upstream} has no `nsys`"),
            "executable file not found",
            "kvlab/vllm-lmcache:latest",
            "cargo xtask images vllm-lmcache",
            "--image",
        ],
    );
    check(EngineKind::VllmDocker, probe(true, Some(&ok)), &image, &[]);
    // What the checks ran: the image is inspected, then nsys is run inside it; no container stays.
    let calls = std::fs::read_to_string(dir.path().join("no-nsys.log")).unwrap();
    assert_eq!(
        calls,
        format!("image inspect --format {{{{.Id}}}} {upstream}\nrun --rm --entrypoint nsys {upstream} --version\n")
    );
    let calls = std::fs::read_to_string(dir.path().join("no-image.log")).unwrap();
    assert_eq!(calls.lines().count(), 1, "nothing is run from an image that is not here: {calls}");
}

/// `containers/vllm-lmcache.Containerfile`, read as text: FROM the vLLM image pinned by tag and
/// a digest build argument (empty, with the reason, until it is read from a registry), LMCache pinned to one version, the Nsight Systems CLI installed,
/// `NVTX_INJECTION64_PATH` cleared, and a non-root user last.
#[test]
fn vllm_lmcache_containerfile_is_pinned_and_carries_nsys() {
    let text = std::fs::read_to_string(root().join("containers/vllm-lmcache.Containerfile")).unwrap();
    // Instructions, with `\` continuations joined and comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut open = false;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (body, cont) = match line.strip_suffix('\\') {
            Some(b) => (b.trim(), true),
            None => (line, false),
        };
        match (open, instructions.last_mut()) {
            (true, Some(last)) => {
                last.push(' ');
                last.push_str(body);
            }
            _ => instructions.push(body.to_owned()),
        }
        open = cont;
    }
    let args: std::collections::BTreeMap<&str, &str> = instructions
        .iter()
        .filter_map(|i| i.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .collect();
    let of = |kind: &str| -> Vec<&str> {
        instructions.iter().filter_map(|i| i.strip_prefix(kind).map(str::trim)).collect()
    };
    let check = |what: &str, ok: bool| assert!(ok, "vllm-lmcache.Containerfile: {what}\n{text}");

    let tag = args.get("VLLM_TAG").copied().unwrap_or("");
    check("VLLM_TAG is a version tag", tag.starts_with('v') && tag[1..].split('.').count() == 3);
    // The digest is empty while nobody with a registry has read it for the tag (the Containerfile
    // says so); FROM takes it whenever it is set.
    let digest = args.get("VLLM_DIGEST").copied().unwrap_or("");
    check(
        "VLLM_DIGEST is a sha256 digest, or empty with the reason given",
        digest
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
            || (digest.is_empty() && text.contains("docker buildx imagetools inspect vllm/vllm-openai:")),
    );
    check(
        "one FROM, by tag and (when set) digest",
        of("FROM ") == ["vllm/vllm-openai:${VLLM_TAG}${VLLM_DIGEST:+@}${VLLM_DIGEST}"],
    );
    let lmcache = args.get("LMCACHE_VERSION").copied().unwrap_or("");
    check(
        "LMCACHE_VERSION is x.y.z",
        lmcache.split('.').count() == 3 && lmcache.split('.').all(|p| p.parse::<u32>().is_ok()),
    );
    check(
        "pip installs lmcache==${LMCACHE_VERSION}",
        of("RUN ").iter().any(|r| r.contains("pip install") && r.contains("\"lmcache==${LMCACHE_VERSION}\"")),
    );
    check(
        "the Nsight Systems CLI is installed",
        of("RUN ").iter().any(|r| r.contains("apt-get install") && r.contains("nsight-systems-cli")),
    );
    check("NVTX_INJECTION64_PATH is cleared", of("ENV ").contains(&"NVTX_INJECTION64_PATH="));
    let user = of("USER ").last().copied().unwrap_or("root");
    check("the last USER is not root", !matches!(user, "root" | "0" | "0:0"));
    let mut after_user = instructions.iter().skip_while(|i| !i.starts_with("USER ")).skip(1);
    check("nothing runs as root after USER", after_user.all(|i| !i.starts_with("RUN ")));
}

/// A loopback HTTP server that records `METHOD PATH` of every request in arrival order and
/// answers `status(path)` (connection closed after each answer).
async fn recording_server(
    status: fn(&str) -> u16,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then as much body as Content-Length says.
            let (head, body_len) = loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), 0);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    break (head, (end + 4 + len).saturating_sub(buf.len()));
                }
            };
            let mut rest = vec![0u8; body_len];
            let _ = sock.read_exact(&mut rest).await;
            let line: Vec<&str> = head.lines().next().unwrap_or("").split(' ').take(2).collect();
            let request = line.join(" ");
            let code = status(line.get(1).copied().unwrap_or(""));
            seen.lock().unwrap().push(request);
            let reply = format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            let _ = sock.write_all(reply.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    (base, log)
}

/// A profiled vLLM run's capture: `/start_profile` reaches vLLM before the first request of
/// the workload and `/stop_profile` after the last; an unprofiled run or the emulated engine
/// send neither; an endpoint that fails or is not there is an error naming the URL and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_capture_brackets_the_workload_with_vllms_profiler() {
    use profile::WorkloadCapture;
    let ws = common::workspace();
    let mut opts = lab::run::BenchOptions::new(ws.path(), Tier::Cpu);
    let wraps_lab = ProfileSpec { placement: Placement::WrapsLab };
    opts.instruments = Some(wraps_lab.instruments());
    let spec = |engine, profiled: bool| {
        let mut spec = lab::run::planned_spec(&opts, engine, ws.path()).unwrap();
        if !profiled {
            spec.wrapper = None;
        }
        spec
    };
    let wait = std::time::Duration::from_secs(5);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let (base, log) = recording_server(|_| 200).await;
    let capture =
        WorkloadCapture::begin(Some(&wraps_lab), &spec(EngineKind::Vllm, true), &base).await.unwrap();
    for i in 0..3 {
        let resp = client.post(format!("{base}/v1/completions")).body(format!("{{\"n\":{i}}}")).send().await;
        assert_eq!(resp.unwrap().status(), 200);
    }
    capture.end(EngineKind::Vllm, wait).await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "POST /start_profile",
            "POST /v1/completions",
            "POST /v1/completions",
            "POST /v1/completions",
            "POST /stop_profile"
        ]
    );

    // Nothing to drive: not profiled, or the emulator (its capture is the client's NVTX range).
    let (base, log) = recording_server(|_| 200).await;
    for (engine, profiled) in [(EngineKind::Vllm, false), (EngineKind::Emulated, true)] {
        let capture = WorkloadCapture::begin(profiled.then_some(&wraps_lab), &spec(engine, profiled), &base)
            .await
            .unwrap();
        capture.end(engine, wait).await.unwrap();
    }
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());

    // vLLM without its profiler answers 404: the error names the URL and the missing flag.
    let (base, _) = recording_server(|p| if p == "/start_profile" { 404 } else { 200 }).await;
    let err = WorkloadCapture::begin(Some(&wraps_lab), &spec(EngineKind::Vllm, true), &base)
        .await
        .unwrap_err()
        .to_string();
    for want in
        [&format!("POST {base}/start_profile answered 404"), "--profiler-config", r#"{"profiler":"cuda"}"#]
    {
        assert!(err.contains(want), "`{want}` missing from: {err}");
    }
    // The stop fails: reported as such, after a start that worked.
    let (base, log) = recording_server(|p| if p == "/stop_profile" { 500 } else { 200 }).await;
    let capture =
        WorkloadCapture::begin(Some(&wraps_lab), &spec(EngineKind::Vllm, true), &base).await.unwrap();
    let err = capture.end(EngineKind::Vllm, wait).await.unwrap_err().to_string();
    assert!(err.contains(&format!("POST {base}/stop_profile answered 500")), "{err}");
    assert_eq!(*log.lock().unwrap(), ["POST /start_profile", "POST /stop_profile"]);
    // Nothing listens: the error says the profiler could not be driven.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let err = WorkloadCapture::begin(Some(&wraps_lab), &spec(EngineKind::Vllm, true), &closed)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("POST {closed}/start_profile failed")), "{err}");
    assert!(err.contains("vLLM's profiler could not be driven"), "{err}");
}

/// Process vLLM under a profile, per tier, through the planning API (`planned_spec`, then
/// `planned_engine_command`, which adds `vllm_process_args`): its CUDA profiler on, the LMCache
/// YAML and the token in the environment only; unprofiled, no profiler flags.
#[test]
fn vllm_process_command_under_profiling() {
    let ws = common::workspace();
    std::fs::write(ws.path().join(".env"), "HF_TOKEN=hf_processSecret42\n").unwrap();
    let run_dir = Path::new("/results/run");
    let mut all = String::new();
    for tier in Tier::ALL {
        let mut opts = lab::run::BenchOptions::new(ws.path(), tier);
        opts.instruments = Some(ProfileSpec { placement: Placement::WrapsLab }.instruments());
        opts.redis_url = None;
        // `vllm serve` from PATH, as on a GPU machine (not a venv that KVLAB_VLLM_PYTHON names).
        opts.vllm_python = None;
        let spec = lab::run::planned_spec(&opts, EngineKind::Vllm, run_dir).unwrap();
        let cmd = profile::planned_engine_command(&spec, "docker", 18000).unwrap();
        assert_eq!(cmd.args[cmd.args.len() - 2..], profile::vllm_process_args(&spec)[..]);
        assert_eq!(cmd.env.get("HF_TOKEN").map(String::as_str), Some("hf_processSecret42"));
        let line = profile::shell_line(&cmd, &spec.secrets);
        assert!(!line.contains("hf_processSecret42"), "{line}");
        all.push_str(&format!("## vllm {tier}, profiled\n{line}\n\n"));

        let mut plain = spec.clone();
        plain.wrapper = None;
        assert!(profile::vllm_process_args(&plain).is_empty());
        let cmd = profile::planned_engine_command(&plain, "docker", 18000).unwrap();
        assert!(!cmd.args.iter().any(|a| a == "--profiler-config"), "{:?}", cmd.args);
    }
    insta::assert_snapshot!(all);
}
