//! The command line as a user meets it: exit codes and messages of the built `xtask` binary.

use std::path::Path;
use std::process::{Command, Output};

fn xtask(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(cwd)
        .env_remove("HF_TOKEN")
        .output()
        .expect("run the xtask binary")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A port on 127.0.0.1 where nothing listens.
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Unlike `vllm bench serve`, a run where everything failed never looks like a success.
#[test]
fn loadgen_against_nothing_exits_non_zero_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", refused_port());
    let out = xtask(
        &[
            "loadgen",
            "--url",
            &url,
            "--model",
            "m",
            "--num-requests",
            "3",
            "--ready-timeout",
            "2",
            "--out",
            tmp.path().to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(!out.status.success(), "exit code 0 for a run against a closed port:\n{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains(&url) || msg.contains("127.0.0.1"), "the error names the server:\n{msg}");
}

/// `regress` on result directories fails, naming the metric, when TTFT p99 rose 20% over its
/// baseline; the same directories unchanged pass.
#[test]
fn regress_names_the_metric_that_regressed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out_dir = tmp.path().join("pinned");
    // The pinned scenario, written as result directories.
    let out = xtask(&["regress", "--out", out_dir.to_str().unwrap()], root);
    assert!(out.status.success(), "the pinned scenario matches its baselines:\n{}", text(&out));
    let run = out_dir.join("emulated-pinned-cpu");
    let out = xtask(&["regress", run.to_str().unwrap()], root);
    assert!(out.status.success(), "an unchanged run passes:\n{}", text(&out));

    let path = run.join("summary.json");
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let p99 = summary["p99_ttft_ms"].as_f64().unwrap();
    summary["p99_ttft_ms"] = serde_json::json!(p99 * 1.2);
    std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    let out = xtask(&["regress", run.to_str().unwrap()], root);
    let msg = text(&out);
    assert!(!out.status.success(), "a 20% rise of TTFT p99 passed:\n{msg}");
    assert!(msg.contains("p99_ttft_ms"), "the metric is named:\n{msg}");
}

/// Bad input: an experiment file with a typo'd key names the file, the line and the key, with no
/// stack trace.
#[test]
fn experiment_typo_names_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("typo.toml");
    std::fs::write(&file, "name = \"t\"\n\n[defaults]\nnum_promts = 3\n").unwrap();
    let out = xtask(
        &["bench", "--experiment", file.to_str().unwrap(), "--out", tmp.path().to_str().unwrap()],
        tmp.path(),
    );
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("typo.toml:4"), "names the file and line:\n{msg}");
    assert!(msg.contains("num_promts"), "names the key:\n{msg}");
    assert!(!msg.contains("panicked") && !msg.contains("stack backtrace"), "{msg}");
}

/// A directory of stand-in programs: each named one records its arguments in `calls.log` and
/// fails, so a test sees whether anything ran it.
fn recording_bin(dir: &Path, programs: &[&str]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in programs {
        let path = bin.join(name);
        let script =
            format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\nexit 1\n", dir.join("calls.log").display());
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// `PATH` with `first` ahead of this process's own.
fn path_with(first: &Path) -> std::ffi::OsString {
    let mut dirs = vec![first.to_owned()];
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(dirs).unwrap()
}

/// A workspace root (`KVLAB_ROOT`) with the repository's configs and a `.env` holding a token.
fn root_with_token(dir: &Path, token: &str) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("configs");
    std::os::unix::fs::symlink(configs, root.join("configs")).unwrap();
    std::fs::write(root.join(".env"), format!("HF_TOKEN={token}\n")).unwrap();
    root
}

/// The dry-run's output with what differs between runs replaced: temporary paths, this
/// binary, pids, ports and the owner labels.
fn redact_profile(text: &str, tmp: &Path) -> String {
    let exe = env!("CARGO_BIN_EXE_xtask");
    let mut s = text.replace(exe, "[XTASK]").replace(&tmp.display().to_string(), "[TMP]");
    let temp = std::env::temp_dir().display().to_string();
    s = s.replace(&format!("{}/kvlab-", temp.trim_end_matches('/')), "[TEMP]/kvlab-");
    let mut out = String::new();
    for word in s.split_inclusive([' ', '\n']) {
        let (body, sep) = word.split_at(word.trim_end_matches([' ', '\n']).len());
        let digits = |w: &str| w.chars().all(|c| c.is_ascii_digit() || c == '-') && !w.is_empty();
        let redacted = if let Some(rest) = body.strip_prefix("kvlab.owner-") {
            format!("kvlab.owner-{}=[OWNER]", rest.split('=').next().unwrap_or(""))
        } else if let Some(port) = body.strip_prefix("127.0.0.1:").and_then(|r| r.split_once(':')) {
            format!("127.0.0.1:[PORT]:{}", port.1)
        } else if body.contains(".profile-") {
            let (head, tail) = body.split_once(".profile-").unwrap();
            let tail = tail.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{head}.profile-[PID]{tail}")
        } else if body.starts_with("'[TEMP]/kvlab-") && body.ends_with(".env'") {
            let run = body.trim_end_matches(".env'");
            let (head, pid) = run.rsplit_once('-').unwrap();
            assert!(digits(pid), "{body}");
            format!("{head}-[PID].env'")
        } else {
            body.to_owned()
        };
        out.push_str(&redacted);
        out.push_str(sep);
    }
    // `--port N` of the process vLLM (a free port chosen by the run).
    let mut words: Vec<&str> = out.split(' ').collect();
    for i in 1..words.len() {
        if words[i - 1] == "--port" && words[i].chars().all(|c| c.is_ascii_digit()) && words[i] != "8000" {
            words[i] = "[PORT]";
        }
    }
    words.join(" ")
}

/// `profile --dry-run` prints the exact commands and starts nothing, for the emulated engine
/// (nsys runs the lab, capture on the `workload` NVTX range), process vLLM (nsys runs the lab,
/// vLLM its child with its CUDA profiler) and vllm-docker (the lab's image, nsys inside the
/// container; the token only through `--env-file`). No result directory, no container, no nsys.
#[test]
fn profile_dry_run_prints_the_exact_commands_and_starts_nothing() {
    let token = "hf_dryRunSecretToken123";
    for (engine, tier) in
        [("emulated", "cpu"), ("vllm", "disk"), ("vllm-docker", "disk"), ("vllm-docker", "redis")]
    {
        let tmp = tempfile::tempdir().unwrap();
        let bin = recording_bin(tmp.path(), &["docker", "podman", "nsys", "nvidia-smi", "vllm"]);
        let root = root_with_token(tmp.path(), token);
        let out_dir = tmp.path().join("results");
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["profile", "--engine", engine, "--tier", tier, "--dry-run", "--out"])
            .arg(&out_dir)
            .current_dir(tmp.path())
            .env("PATH", path_with(&bin))
            .env("KVLAB_ROOT", &root)
            .env_remove("HF_TOKEN")
            // `vllm serve` from PATH, as on a GPU machine: not the venv `cargo xtask ci` names.
            .env_remove("KVLAB_VLLM_PYTHON")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{engine}: {}", text(&out));
        assert!(!text(&out).contains(token), "{engine}: the token was printed:\n{}", text(&out));
        assert!(!out_dir.exists(), "{engine}: a dry run wrote {}", out_dir.display());
        let calls = std::fs::read_to_string(tmp.path().join("calls.log")).unwrap_or_default();
        assert_eq!(calls, "", "{engine}: a dry run ran programs");

        assert!(
            stdout.contains(
                "profile --trace=cuda,nvtx,osrt --trace-fork-before-exec=true --cuda-graph-trace=node"
            ),
            "{engine}: {stdout}"
        );
        let range = if engine == "emulated" {
            "--capture-range=nvtx --nvtx-capture=workload"
        } else {
            "--capture-range=cudaProfilerApi"
        };
        assert!(stdout.contains(range), "{engine}: {stdout}");
        let report = if engine == "vllm-docker" {
            "--volume '<result dir>/profile:/kvlab-profile:rw' kvlab/vllm-lmcache:latest stats"
        } else {
            "'<result dir>/profile/kvlab.nsys-rep'"
        };
        assert!(stdout.contains(report), "{engine}: nsys stats reads the run's profile/:\n{stdout}");
        if engine.starts_with("vllm") {
            assert!(stdout.contains(r#"--profiler-config '{"profiler":"cuda"}'"#), "{engine}: {stdout}");
        }
        if engine == "vllm-docker" {
            assert!(stdout.contains("--entrypoint nsys --volume '<result dir>/profile:/kvlab-profile:rw' kvlab/vllm-lmcache:latest profile "), "{stdout}");
            assert!(stdout.contains("--output=/kvlab-profile/engine"), "{stdout}");
            assert!(stdout.contains("--env-file "), "the token goes through --env-file:\n{stdout}");
        }
        // Without the `nvtx` feature the plan starts with the build that adds the ranges.
        let (build, shown) = match stdout.split_once("# the ") {
            Some((b, rest)) if !b.is_empty() => (b.to_owned(), format!("# the {rest}")),
            _ => (String::new(), stdout.clone()),
        };
        assert_eq!(build.is_empty(), cfg!(feature = "nvtx") || engine == "vllm-docker", "{stdout}");
        let shown =
            redact_profile(&shown, tmp.path()).replace("[TMP]/root/target/nvtx/release/xtask", "[XTASK]");
        insta::assert_snapshot!(format!("profile_dry_run_{engine}_{tier}"), shown);
    }
}

/// `profile` refuses before anything starts, saying what to install: no nsys on PATH, no GPU
/// for vLLM, and a container image without nsys (the default is the lab's image, which has it).
#[test]
fn profile_refusals_say_what_to_install() {
    use std::os::unix::fs::PermissionsExt as _;
    let gpu_here = Path::new("/dev/nvidia0").exists();
    // (engine, stand-in programs on PATH as (name, script body), what the message says)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case<'_>; 3] = [
        ("emulated", &[], &["`nsys` (Nsight Systems) is not on PATH", "`nix develop` provides it"]),
        (
            "vllm",
            &[],
            if gpu_here {
                &["`nsys` (Nsight Systems) is not on PATH", "`nix develop` provides it"]
            } else {
                &["no NVIDIA GPU was found", "`nix develop`"]
            },
        ),
        (
            "vllm-docker",
            &[
                ("nvidia-smi", "exit 0"),
                (
                    "docker",
                    "echo \"$*\" >> \"$0.log\"\ncase \"$1 $2\" in 'image inspect') exit 0;; 'run --rm') \
                     echo 'exec: \"nsys\": executable file not found in $PATH' >&2; exit 127;; esac\nexit 1",
                ),
            ],
            &[
                "the image kvlab/vllm-lmcache:latest has no `nsys`",
                "cargo xtask images vllm-lmcache",
                "`nix develop`",
            ],
        ),
    ];
    for (engine, programs, expect) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, body) in programs {
            let path = bin.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out_dir = tmp.path().join("results");
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["profile", "--engine", engine, "--tier", "cpu", "--out"])
            .arg(&out_dir)
            .current_dir(tmp.path())
            // Only the stand-ins: no nsys, no nvidia-smi unless given.
            .env("PATH", &bin)
            .env_remove("HF_TOKEN")
            .output()
            .unwrap();
        let msg = text(&out);
        assert!(!out.status.success(), "{engine}: {msg}");
        for want in expect {
            assert!(msg.contains(want), "{engine}: `{want}` missing from:\n{msg}");
        }
        assert!(!msg.contains("panicked"), "{msg}");
        assert!(!out_dir.exists(), "{engine}: a refused profile wrote {}", out_dir.display());
        if engine == "vllm-docker" {
            let calls = std::fs::read_to_string(bin.join("docker.log")).unwrap();
            assert_eq!(
                calls,
                "image inspect --format {{.Id}} kvlab/vllm-lmcache:latest\nrun --rm --entrypoint nsys \
                 kvlab/vllm-lmcache:latest --version\n",
                "only the image checks ran"
            );
        }
    }
}

/// A newcomer's first command, `cargo xtask bench --tier disk --num-requests 20`, on a host
/// without a GPU: the emulated engine runs, every file of the result directory is written, the
/// disk tier shows writes, and the `.env` token is in no line printed and no file written.
#[test]
fn plain_bench_writes_a_complete_result_directory_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token = "hf_cliPlantedToken4711";
    let root = root_with_token(tmp.path(), token);
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "--tier", "disk", "--num-requests", "20"])
        .current_dir(tmp.path())
        .env("KVLAB_ROOT", &root)
        .env_remove("HF_TOKEN")
        .output()
        .expect("run the xtask binary");
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains(token), "the token was printed:\n{printed}");
    assert!(printed.contains("auto: no NVIDIA GPU"), "says which engine it chose and why:\n{printed}");
    let results: Vec<_> =
        std::fs::read_dir(root.join("results")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(results.len(), 1, "{results:?}");
    let dir = &results[0];
    assert!(printed.contains(&format!("results: {}", dir.display())), "{printed}");
    for f in [
        "run.toml",
        "env.json",
        "requests.jsonl",
        "requests.csv",
        "summary.json",
        "engine.log",
        "report.md",
        "report.html",
        "samples/disk.csv",
        "samples/cpu.csv",
        "samples/engine.csv",
    ] {
        assert!(dir.join(f).is_file(), "{f} is missing from {}", dir.display());
    }
    assert!(std::fs::read_dir(dir.join("plots")).unwrap().next().is_some(), "plots/ is empty");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary["completed"].as_u64(), summary["failed"].as_u64()), (Some(20), Some(0)), "{summary}");
    assert_eq!(summary["emulated"], true);
    assert_eq!(std::fs::read_to_string(dir.join("requests.jsonl")).unwrap().lines().count(), 20);
    // No GPU: the GPU sampler is recorded as unavailable, and the run went on.
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("env.json")).unwrap()).unwrap();
    assert!(env["gpu"]["absent"].is_string() || dir.join("samples/gpu.csv").is_file(), "{env}");
    let disk = std::fs::read_to_string(dir.join("samples/disk.csv")).unwrap();
    let mut lines = disk.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "write_bytes_s").unwrap();
    let writes = lines.filter_map(|l| l.split(',').nth(col)?.parse::<f64>().ok()).fold(0.0, f64::max);
    assert!(writes > 0.0, "samples/disk.csv shows no writes from the disk tier:\n{disk}");
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if p.is_file() && p != root.join(".env") {
                let bytes = std::fs::read(&p).unwrap();
                assert!(!String::from_utf8_lossy(&bytes).contains(token), "the token is in {}", p.display());
            }
        }
    }
}

/// `cargo xtask images --dry-run` prints every build command, in order, with the runtime on PATH,
/// and builds nothing: the runtime, debootstrap and the other tools are stand-ins that would record
/// a call, and no build context is staged under the root.
#[test]
fn images_dry_run_prints_the_build_commands_and_builds_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tools = ["docker", "podman", "debootstrap", "tar", "strip", "python3"];
    let all = recording_bin(&tmp.path().join("all"), &tools);
    let podman_only = recording_bin(&tmp.path().join("podman"), &["podman"]);
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let file = |name: &str| format!("--file {} ", root.join("containers").join(name).display());
    struct Case<'a> {
        args: &'a [&'a str],
        path: std::ffi::OsString,
        runtime: &'a str,
        /// The images whose `build` is printed, in order, with their Containerfile.
        builds: &'a [(&'a str, &'a str)],
        /// Whether the debootstrap base is made (and the builds are FROM it).
        base: bool,
    }
    let everything = [
        ("lab", "kvlab.Containerfile"),
        ("llamacpp", "llamacpp.Containerfile"),
        ("emulator", "emulator.Containerfile"),
    ];
    let cases = [
        Case { args: &[], path: path_with(&all), runtime: "docker", builds: &everything, base: true },
        Case {
            args: &["emulator"],
            path: path_with(&all),
            runtime: "docker",
            builds: &[("emulator", "emulator.Containerfile")],
            base: true,
        },
        Case { args: &["base"], path: path_with(&all), runtime: "docker", builds: &[], base: true },
        Case {
            args: &["--upstream", "lab"],
            path: path_with(&all),
            runtime: "docker",
            builds: &[("lab", "kvlab.Containerfile")],
            base: false,
        },
        Case {
            args: &["vllm-lmcache"],
            path: path_with(&all),
            runtime: "docker",
            builds: &[("vllm-lmcache", "vllm-lmcache.Containerfile")],
            base: false,
        },
        Case {
            args: &[],
            path: podman_only.clone().into(),
            runtime: "podman",
            builds: &everything,
            base: true,
        },
    ];
    for case in &cases {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("images")
            .args(case.args)
            .arg("--dry-run")
            .current_dir(tmp.path())
            .env("PATH", &case.path)
            .env("KVLAB_ROOT", &root)
            .output()
            .expect("run the xtask binary");
        let printed = text(&out);
        let what = format!("images {} --dry-run ({})", case.args.join(" "), case.runtime);
        assert!(out.status.success(), "{what}:\n{printed}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rt = case.runtime;
        let builds: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&format!("{rt} build "))).collect();
        assert_eq!(builds.len(), case.builds.len(), "{what}:\n{stdout}");
        for (line, (image, containerfile)) in builds.iter().zip(case.builds) {
            assert!(line.contains(&file(containerfile)), "{what}: {image} from {containerfile}: {line}");
            assert!(line.contains(&format!("--tag kvlab/{image}:latest ")), "{what}: {line}");
            let from_base = line.contains("--build-arg BASE_IMAGE=kvlab/base:bookworm ");
            assert_eq!(from_base, case.base, "{what}: FROM the local base or upstream: {line}");
        }
        let base_lines = [
            "debootstrap --variant=minbase bookworm ".to_owned(),
            format!("| {rt} import --change 'LABEL kvlab.inputs="),
            format!("{rt} tag kvlab/base:bookworm-"),
        ];
        for want in &base_lines {
            assert_eq!(stdout.contains(want.as_str()), case.base, "{what}: `{want}` in:\n{stdout}");
        }
        if case.base {
            let debootstrap = stdout.find("debootstrap ").unwrap();
            assert!(
                builds.iter().all(|b| stdout.find(b).unwrap() > debootstrap),
                "{what}: base first:\n{stdout}"
            );
        }
    }
    for dir in [tmp.path().join("all"), tmp.path().join("podman")] {
        let calls = std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default();
        assert_eq!(calls, "", "a dry run ran a build tool");
    }
    assert!(!root.join("target").exists(), "a dry run staged a build context under {}", root.display());
}

/// What a help screen lists without a help line: each subcommand (`Commands:`) and each argument
/// or flag (`Arguments:`, `Options:`) whose entry has no text beside or under it. Works on both of
/// clap's layouts: help on the same line (after two spaces) and help on the lines below.
fn entries_without_help(help: &str) -> (Vec<String>, Vec<String>) {
    let lines: Vec<&str> = help.lines().collect();
    let (mut missing, mut subcommands) = (Vec::new(), Vec::new());
    let mut section = "";
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || indent >= 10 {
            continue;
        }
        let (name, beside) = match trimmed.split_once("  ") {
            Some((name, rest)) => (name.trim(), rest.trim()),
            None => (trimmed, ""),
        };
        let below = lines.get(i + 1).map_or("", |l| l.trim());
        let below_is_help = !below.is_empty()
            && lines[i + 1].len() - lines[i + 1].trim_start().len() >= 10
            && !below.starts_with("[default:")
            && !below.starts_with("[possible values:")
            && !below.starts_with("[env:")
            && !below.starts_with("[aliases:");
        let has_help = !beside.is_empty() || below_is_help;
        match section {
            "Commands:" => {
                if !has_help {
                    missing.push(format!("subcommand `{name}`"));
                }
                if name != "help" {
                    subcommands.push(name.to_owned());
                }
            }
            "Arguments:" | "Options:" if !has_help => missing.push(format!("argument `{name}`")),
            _ => {}
        }
    }
    (missing, subcommands)
}

/// Every subcommand and every flag or argument of `cargo xtask`, walked through `--help` from the
/// top, has a help line; the failure names each one that has none, under its command.
#[test]
fn every_subcommand_and_flag_has_a_help_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut missing = Vec::new();
    let mut walked = 0;
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = queue.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = xtask(&args, tmp.path());
        assert!(out.status.success(), "`xtask {}` failed:\n{}", args.join(" "), text(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        let (none, subcommands) = entries_without_help(&help);
        let command = if path.is_empty() { "xtask".to_owned() } else { format!("xtask {}", path.join(" ")) };
        missing.extend(none.into_iter().map(|m| format!("{command}: {m}")));
        for sub in subcommands {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
        walked += 1;
    }
    assert!(walked > 13, "the walk reached every subcommand (only {walked} help screens)");
    assert!(missing.is_empty(), "without a help line:\n{}", missing.join("\n"));
}

/// The check above finds what it must: an entry with no help in either layout, and not an entry
/// whose help is beside it or below it.
#[test]
fn the_help_check_finds_entries_without_help() {
    let help = "About\n\nUsage: xtask x\n\nCommands:\n  up    Start it\n  down\n  help  Print this\n\n\
                Arguments:\n  [IMAGES]...  Images to build\n\nOptions:\n      --model <MODEL>\n          \n\n      \
                --tier <TIER>\n          KV tier\n          \n          [default: disk]\n\n      --seed <SEED>\n          \
                [default: 0]\n\n      --dry-run  Print them\n  -h, --help  Print help\n";
    let (missing, subcommands) = entries_without_help(help);
    assert_eq!(missing, ["subcommand `down`", "argument `--model <MODEL>`", "argument `--seed <SEED>`"]);
    assert_eq!(subcommands, ["up", "down"]);
}

/// A list of tiers with an experiment file is refused before anything runs, in one readable
/// sentence that says where an experiment lists its tiers.
#[test]
fn tier_list_with_an_experiment_is_refused_in_one_sentence() {
    let tmp = tempfile::tempdir().unwrap();
    let out = xtask(&["bench", "--tier", "baseline,cpu", "--experiment", "x.toml"], tmp.path());
    assert!(!out.status.success(), "a tier list with an experiment ran:\n{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("--tier baseline,cpu: a list of tiers compares them without an experiment file; an experiment lists its tiers in matrix.tiers"),
        "{msg}"
    );
}
