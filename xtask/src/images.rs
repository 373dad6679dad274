//! `cargo xtask images`: kvlab's OCI images, built here with docker or podman. The build (the
//! debootstrap base cached by its recipe's hash, the staged contexts, the builds, the sizes) is the
//! `images` crate's; this module turns the flags into its config and reports.

use images::KvlabImage;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ImagesArgs {
    /// Images to build: base, lab, llamacpp, emulator, vllm-cpu, vllm-lmcache (default: base, lab,
    /// llamacpp and emulator; vllm-cpu is gigabytes, and vllm-lmcache needs the upstream vLLM image
    /// from a registry).
    pub(crate) images: Vec<String>,
    /// Print the commands instead of running them.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Build FROM the Containerfiles' pinned upstream bases (a machine that can pull) instead of
    /// the local debootstrap base.
    #[arg(long)]
    pub(crate) upstream: bool,
}

/// The build's settings for this checkout.
pub(crate) fn config(upstream: bool, dry_run: bool) -> images::BuildConfig {
    images::BuildConfig {
        root: crate::workspace_root(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        upstream,
        dry_run,
    }
}

pub(crate) fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let mut wanted = Vec::new();
    for name in &args.images {
        wanted.push(name.parse::<KvlabImage>()?);
    }
    if wanted.is_empty() {
        wanted = vec![KvlabImage::Base, KvlabImage::Lab, KvlabImage::Llamacpp, KvlabImage::Emulator];
    }
    let built = images::build(&wanted, &config(args.upstream, args.dry_run))?;
    if args.dry_run {
        return Ok(());
    }
    // Over budget is CI's failure (`cargo xtask ci`); here it is said.
    if let Err(e) = images::report(&built) {
        eprintln!("warning: {:#}", anyhow::Error::from(e));
    }
    Ok(())
}
