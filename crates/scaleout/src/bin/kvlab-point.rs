//! `kvlab-point --root ROOT --index I`: runs point I of `ROOT/plan.json` (what each Slurm array
//! task runs; `cargo xtask bench --root ROOT --index I` does the same). Exits non-zero when the
//! point fails; SIGTERM or Ctrl-C stop the engine and keep what was written.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut root, mut index) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = args.next(),
            "--index" => index = args.next().and_then(|i| i.parse::<usize>().ok()),
            other => {
                eprintln!(
                    "kvlab-point: unexpected argument `{other}`; usage: kvlab-point --root ROOT --index I"
                );
                return std::process::ExitCode::from(2);
            }
        }
    }
    let (Some(root), Some(index)) = (root, index) else {
        eprintln!("kvlab-point: usage: kvlab-point --root ROOT --index I");
        return std::process::ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvlab-point: starting tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(scaleout::slurm::run_planned_point(
        std::path::Path::new(&root),
        index,
        scaleout::slurm::terminated(),
    ));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvlab-point: point {index}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
