//! Kubernetes, emitted: the same plan as an Indexed Job (one completion index per point). The
//! manifest is written, not run: apply it with `kubectl apply -f` on a cluster whose nodes mount
//! the results volume. kvlab runs no Kubernetes cluster itself.

use std::path::{Path, PathBuf};

use crate::slurm::SlurmError;
use lab::run::BenchOptions;

use crate::slurm::{Plan, SubmitConfig};

/// What the manifest needs besides the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct K8sConfig {
    /// The image that holds the runner and the engines (e.g. the lab image).
    pub image: String,
    /// A PersistentVolumeClaim (ReadWriteMany) holding the result root.
    pub results_claim: String,
    /// Where the claim is mounted in the pod.
    pub mount_path: String,
    /// The result root's directory name inside the claim.
    pub root_name: String,
}

/// The Indexed Job: `completions` = points, `parallelism` = `max_parallel` (or every point),
/// `backoffLimitPerIndex` 1 (a point is retried once), `nvidia.com/gpu` = the most GPUs any point
/// needs (one pod template serves every index), the results claim mounted at `mount_path`.
pub fn indexed_job(plan: &Plan, cfg: &K8sConfig) -> String {
    let n = plan.points.len();
    let parallelism = plan.slurm.max_parallel.map_or(n, |m| (m as usize).min(n));
    let gpus = plan.points.iter().map(|p| p.resources.gpus).max().unwrap_or(0);
    let cpus = plan.slurm.cpus_per_task;
    let name = format!("kvlab-{}", lab::run::sanitize(&plan.experiment).to_lowercase());
    let root = format!("{}/{}", cfg.mount_path.trim_end_matches('/'), cfg.root_name);
    let mut line = vec![engines::shell::quote(&format!("{root}/bin/{}", plan.runner_exe))];
    line.extend(plan.runner_args.iter().map(|a| engines::shell::quote(a)));
    line.extend([
        "--root".to_owned(),
        engines::shell::quote(&root),
        "--index".to_owned(),
        "\"$JOB_COMPLETION_INDEX\"".to_owned(),
    ]);
    let args = ["/bin/sh".to_owned(), "-c".to_owned(), format!("exec {}", line.join(" "))]
        .iter()
        .map(|a| format!("            - {}", yaml_str(a)))
        .collect::<Vec<_>>();
    let mut limits = Vec::new();
    if gpus > 0 {
        limits.push(format!("              nvidia.com/gpu: {gpus}"));
    }
    if let Some(c) = cpus {
        limits.push(format!("              cpu: {c}"));
    }
    if let Some(m) = &plan.slurm.mem {
        limits.push(format!("              memory: {}", yaml_str(&k8s_memory(m))));
    }
    let resources = if limits.is_empty() {
        String::new()
    } else {
        format!("          resources:\n            limits:\n{}\n", limits.join("\n"))
    };
    format!(
        "# kvlab: experiment `{exp}` as a Kubernetes Indexed Job, one completion index per point of\n\
         # {root}/plan.json. Emitted, not run by kvlab. The claim `{claim}` must hold the result root.\n\
         apiVersion: batch/v1\n\
         kind: Job\n\
         metadata:\n  name: {name}\n  labels:\n    app.kubernetes.io/name: kvlab\n\
         spec:\n  \
           completionMode: Indexed\n  \
           completions: {n}\n  \
           parallelism: {parallelism}\n  \
           backoffLimitPerIndex: 1\n  \
           maxFailedIndexes: {n}\n  \
           template:\n    \
             spec:\n      \
               restartPolicy: Never\n      \
               containers:\n        \
                 - name: point\n          \
                   image: {image}\n          \
                   command:\n{args}\n{resources}          \
                   volumeMounts:\n            \
                     - name: results\n              \
                       mountPath: {mount}\n      \
               volumes:\n        \
                 - name: results\n          \
                   persistentVolumeClaim:\n            \
                     claimName: {claim}\n",
        exp = plan.experiment,
        claim = cfg.results_claim,
        image = yaml_str(&cfg.image),
        args = args.join("\n"),
        mount = yaml_str(&cfg.mount_path),
    )
}

/// The pod's side of an emitted job: what [`K8sConfig`] holds besides the result root's name.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    /// The image that holds the runner and the engines (e.g. the lab image).
    pub image: String,
    /// A PersistentVolumeClaim (ReadWriteMany) holding the result root.
    pub results_claim: String,
    /// Where the claim is mounted in the pod.
    pub mount_path: String,
}

/// Why [`emit`] wrote no job.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The plan was refused or its result root could not be written.
    #[error(transparent)]
    Plan(#[from] SlurmError),
    /// `job.yaml` could not be written.
    #[error("{}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Writes the plan's result root (plan, runner) under `dir` and its Indexed Job as `job.yaml`
/// in it; prints the job's path and what to do with it. Nothing is run. Returns the job's path.
pub fn emit(
    mut opts: BenchOptions,
    cfg: &SubmitConfig,
    pod: &PodSettings,
    dir: &Path,
) -> Result<PathBuf, EmitError> {
    opts.out = Some(dir.to_owned());
    let (plan, root) = crate::slurm::prepare(&opts, cfg)?;
    let k8s = K8sConfig {
        image: pod.image.clone(),
        results_claim: pod.results_claim.clone(),
        mount_path: pod.mount_path.clone(),
        root_name: root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let job = root.join("job.yaml");
    std::fs::write(&job, indexed_job(&plan, &k8s))
        .map_err(|source| EmitError::Write { path: job.clone(), source })?;
    println!("{}", job.display());
    eprintln!(
        "kvlab: emitted, not run: copy {} into the claim `{}`, then `kubectl apply -f {}`",
        root.display(),
        k8s.results_claim,
        job.display()
    );
    Ok(job)
}

fn yaml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Slurm's `--mem` (`16G`, `500M`, `1024` = MiB; binary units) in Kubernetes' syntax (`16Gi`).
fn k8s_memory(mem: &str) -> String {
    match mem.chars().last() {
        Some(c @ ('K' | 'M' | 'G' | 'T')) => format!("{}{c}i", &mem[..mem.len() - 1]),
        _ => format!("{mem}Mi"),
    }
}
