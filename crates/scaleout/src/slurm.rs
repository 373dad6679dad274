//! An experiment matrix on Slurm: the resolved plan becomes one job array (one task per point, or
//! per `points_per_task` points), each task runs its point with the binary copied into the result
//! root, and the result root gathers the points exactly as a local run does.
//!
//! Result root layout: `plan.json` (every point, fully resolved), `experiment.toml` (a copy),
//! `configs/` (the tier files the points read), `bin/` (the runner), `slurm/` (batch scripts,
//! `jobs.json` with every submission, task logs `<job>_<task>.out`), `status/<point>.jsonl` (each
//! attempt of a point: start, done or failed), `.partial/<name>` (a point being written),
//! `failed/<name>` (the last failed attempt), `<name>/` (a completed point, renamed into place),
//! `index.json`.
//!
//! The root must be on a filesystem that every node shares (NFS, Lustre, …): a task that cannot see
//! `plan.json` fails and says so. kvlab writes no scheduler of its own: Slurm's job array, requeue
//! and accounting do the work. No `sacct` is needed: states come from `squeue`, `scontrol show
//! job` and each point's status file; `sacct` is used when it answers.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use engines::{EngineKind, GpuSelection, HostProbe};
use lab::error::RunError;
use lab::run::{self, BenchOptions, ModelPlacement, PointCtx};
use schema::config::{Experiment, Point, SlurmSettings, TierConfig};
use schema::error::ConfigError;

/// Version of `plan.json`, `slurm/jobs.json` and the status files.
pub const PLAN_VERSION: u32 = 1;
/// Seconds added to a point's time limit for `--time` when the experiment sets no margin.
pub const DEFAULT_TIME_MARGIN_S: f64 = 600.0;

/// The program each array task runs: a file copied into `<root>/bin/` and the arguments that come
/// before `--root ROOT --index I` (for kvlab's command line: `bench`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runner {
    /// The binary to copy (on the submitting host).
    pub exe: PathBuf,
    pub args: Vec<String>,
}

/// What `submit` needs besides the bench options.
#[derive(Debug, Clone)]
pub struct SubmitConfig {
    /// Flags; each set key wins over the experiment's `[slurm]` table.
    pub flags: SlurmSettings,
    pub runner: Runner,
    /// Exit non-zero (the point fails) when more than this fraction of its requests failed.
    pub max_failed_fraction: f64,
}

/// Options shared by every point of a plan (the bench flags that are not per point).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOptions {
    pub url: Option<String>,
    pub image: Option<String>,
    /// The Redis of the redis tier without credentials (`KVLAB_REDIS_URL` on the node wins).
    pub redis_url: Option<String>,
    pub model_path: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub ready_timeout_s: u64,
    pub max_failed_fraction: f64,
}

/// Slurm resources of one array task. Points with equal resources share one job array.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// `--gres=gpu:K`: tensor parallel x pipeline parallel for GPU engines, 0 for the others.
    pub gpus: u32,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    /// `--time` in seconds (time limit + margin), when the point has a time limit.
    pub time_s: Option<u64>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
}

/// One point of the plan, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanPoint {
    pub index: usize,
    /// The result directory under the root.
    pub name: String,
    /// The engine the node runs (resolved on the submitting host for `auto`).
    pub engine: EngineKind,
    pub placement: ModelPlacement,
    pub point: Point,
    pub resources: Resources,
}

/// `plan.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub v: u32,
    pub experiment: String,
    /// The experiment file as given.
    pub file: String,
    /// The runner's file name under `<root>/bin/` and its leading arguments.
    pub runner_exe: String,
    pub runner_args: Vec<String>,
    pub options: PlanOptions,
    /// The merged `[slurm]` settings (flags over the file).
    pub slurm: SlurmSettings,
    pub points: Vec<PlanPoint>,
}

/// One `sbatch` of a job array: which task ids run which points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArraySubmission {
    pub job_id: String,
    /// Array task id → plan indices (the task id is its first point's index).
    pub tasks: BTreeMap<u32, Vec<usize>>,
    pub script: PathBuf,
    pub sbatch_args: Vec<String>,
}

/// `slurm/jobs.json`: every submission of this root, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Jobs {
    pub v: u32,
    pub arrays: Vec<ArraySubmission>,
}

/// What submitting, watching or cancelling a run on Slurm can go wrong with.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A scheduler command (`sbatch`, `squeue`, `scancel`) could not be run, failed or answered
    /// what kvlab cannot use, or a run under it failed. The message says which command and what it
    /// said; the commands' failures differ in what they carry (an I/O error, an exit status, a
    /// stderr, an unparsable answer), so it is kept as the sentence shown to the person.
    #[error("{0}")]
    Scheduler(String),
    /// The experiment or a flag is invalid, or a file could not be read or written.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A point's run failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// JSON that could not be written (`what`: the file).
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl SlurmError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> SlurmError {
        SlurmError::Config(ConfigError::io(path, source))
    }

    fn invalid(message: impl Into<String>) -> SlurmError {
        SlurmError::Config(ConfigError::Invalid(message.into()))
    }
}

pub type Result<T, E = SlurmError> = std::result::Result<T, E>;

fn err(msg: impl Into<String>) -> SlurmError {
    SlurmError::Scheduler(msg.into())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| SlurmError::io(path, e))?;
    Ok(stats::parse_json(&text).map_err(|e| ConfigError::Config(e.in_file(path.display().to_string())))?)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|source| SlurmError::Json { what: path.display().to_string(), source })?;
    Ok(lab::run::write_atomic(path, text.as_bytes())?)
}

/// Flags over file: each key the flags set wins.
pub fn merge_settings(flags: &SlurmSettings, file: &SlurmSettings) -> SlurmSettings {
    macro_rules! pick {
        ($($f:ident),*) => { SlurmSettings { $($f: flags.$f.clone().or_else(|| file.$f.clone())),* } };
    }
    pick!(
        partition,
        account,
        qos,
        cpus_per_task,
        mem,
        max_parallel,
        points_per_task,
        gpus_per_node,
        time_margin_s
    )
}

/// Does the engine need GPUs from the scheduler?
fn needs_gpus(engine: EngineKind) -> bool {
    matches!(engine, EngineKind::VllmDocker | EngineKind::Docker | EngineKind::Vllm)
}

/// Resolves and validates every point of `opts.experiment`; nothing is written. One bad point is
/// an error naming the point, the file, the line and the key. `gpus_per_node`: GPUs of a node
/// when known (from the settings, else from `sinfo`'s gres when a point needs GPUs).
pub fn plan(opts: &BenchOptions, cfg: &SubmitConfig) -> Result<Plan> {
    let path = opts
        .experiment
        .as_ref()
        .ok_or_else(|| SlurmError::invalid("--scheduler slurm needs --experiment FILE"))?;
    let exp = Experiment::load(path)?;
    let slurm = merge_settings(&cfg.flags, &exp.slurm);
    if slurm.points_per_task == Some(0) || slurm.max_parallel == Some(0) {
        return Err(SlurmError::invalid("points_per_task and max_parallel must be at least 1"));
    }
    let probe = HostProbe::detect();
    let mut points = Vec::new();
    let mut gpus_per_node = slurm.gpus_per_node;
    for (i, p) in exp.points.iter().enumerate() {
        let mut point = p.clone();
        run::apply_flag_overrides(opts, &mut point);
        let name = run::point_label(&exp.name, i, &point);
        let at = |key: &str, msg: String| {
            SlurmError::invalid(format!("point {i} ({name}): {}: {key}: {msg}", exp.file))
        };
        let requested = match &point.engine {
            Some(e) if opts.engine == EngineKind::Auto => {
                e.parse::<EngineKind>().map_err(|e| at("engine", e.to_string()))?
            }
            _ => opts.engine,
        };
        let (engine, _) = probe.choose(requested);
        if engine == EngineKind::External && opts.url.is_none() {
            return Err(at("engine", "the external engine needs --url http://HOST:PORT".into()));
        }
        // An error about the point's model is at its entry of `matrix.models`.
        let model_error =
            |message: String| exp.model_error(&p.model, &format!("point {i} ({name}): {message}"));
        let placement = run::resolve_model(engine, &point.model)
            .map_err(|e| model_error(schema::config::strip_invalid(e)))?;
        TierConfig::load(&opts.root.join("configs"), point.tier)
            .map_err(|e| at("matrix.tiers", e.to_string()))?;
        let gpus = if needs_gpus(engine) { placement.gpus() } else { 0 };
        if gpus > 0 {
            let per_node = match gpus_per_node {
                Some(n) => Some(n),
                None => {
                    gpus_per_node = sinfo_gpus_per_node(slurm.partition.as_deref());
                    gpus_per_node
                }
            };
            if let Some(n) = per_node.filter(|n| *n < gpus) {
                return Err(model_error(format!(
                    "model `{}` needs {gpus} GPUs (tensor parallel {} x pipeline parallel {}) but a node has {n}",
                    point.model, placement.tensor_parallel, placement.pipeline_parallel
                ))
                .into());
            }
        }
        let resources = resources(engine, &placement, point.time_limit_s, &slurm);
        points.push(PlanPoint { index: i, name, engine, placement, point, resources });
    }
    let runner_exe = cfg
        .runner
        .exe
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| SlurmError::invalid(format!("runner {}: not a file", cfg.runner.exe.display())))?;
    Ok(Plan {
        v: PLAN_VERSION,
        experiment: exp.name.clone(),
        file: exp.file.clone(),
        runner_exe,
        runner_args: cfg.runner.args.clone(),
        options: PlanOptions {
            url: opts.url.clone(),
            image: opts.image.clone(),
            redis_url: opts.redis_url.as_deref().map(engines::without_credentials),
            model_path: opts.model_path.clone(),
            python: opts.python.clone(),
            ready_timeout_s: opts.ready_timeout.as_secs(),
            max_failed_fraction: cfg.max_failed_fraction,
        },
        slurm,
        points,
    })
}

/// The Slurm resources of a point: `gpus` = tensor parallel x pipeline parallel for the engines
/// that run on GPUs (vllm, vllm-docker, docker), none for the others (emulated, llamacpp,
/// external); `time_s` = the point's time limit + the margin; the rest from the settings.
pub fn resources(
    engine: EngineKind,
    placement: &ModelPlacement,
    time_limit_s: Option<f64>,
    slurm: &SlurmSettings,
) -> Resources {
    let margin = slurm.time_margin_s.unwrap_or(DEFAULT_TIME_MARGIN_S);
    Resources {
        gpus: if needs_gpus(engine) { placement.gpus() } else { 0 },
        cpus_per_task: slurm.cpus_per_task,
        mem: slurm.mem.clone(),
        time_s: time_limit_s.map(|t| (t + margin).ceil() as u64),
        partition: slurm.partition.clone(),
        account: slurm.account.clone(),
        qos: slurm.qos.clone(),
    }
}

/// GPUs of the first node that has any (`sinfo -o %G`): `gpu:8`, `gpu:a100:4(S:0-1)`; 0 when
/// the nodes have no gpu gres; `None` when sinfo does not answer.
fn sinfo_gpus_per_node(partition: Option<&str>) -> Option<u32> {
    let mut cmd = Command::new("sinfo");
    cmd.args(["-h", "-o", "%G"]);
    if let Some(p) = partition {
        cmd.args(["-p", p]);
    }
    let out = cmd.stderr(Stdio::null()).output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().filter_map(gres_gpus).max().unwrap_or(0))
}

/// `gpu:8` → 8, `gpu:a100:4(S:0-1)` → 4, `(null)` → None.
pub fn gres_gpus(gres: &str) -> Option<u32> {
    gres.split(',')
        .filter(|g| g.starts_with("gpu"))
        .filter_map(|g| g.split('(').next()?.rsplit(':').next()?.parse::<u32>().ok())
        .max()
}

/// Groups the points to run into job arrays: equal [`Resources`], `points_per_task` points per
/// task; the task id is the plan index of its first point.
pub fn arrays(plan: &Plan, indices: &[usize]) -> Vec<(Resources, BTreeMap<u32, Vec<usize>>)> {
    let per_task = plan.slurm.points_per_task.unwrap_or(1).max(1) as usize;
    let mut groups: BTreeMap<Resources, Vec<usize>> = BTreeMap::new();
    for &i in indices {
        groups.entry(plan.points[i].resources.clone()).or_default().push(i);
    }
    groups
        .into_iter()
        .map(|(res, idx)| {
            let tasks = idx.chunks(per_task).map(|c| (c[0] as u32, c.to_vec())).collect();
            (res, tasks)
        })
        .collect()
}

/// `0-5`, `0,2,4-6`: Slurm's `--array` list of task ids, `%max` appended when given.
pub fn array_spec(ids: &[u32], max_parallel: Option<u32>) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { ids[i].to_string() } else { format!("{}-{}", ids[i], ids[j]) });
        i = j + 1;
    }
    let mut s = parts.join(",");
    if let Some(m) = max_parallel {
        s.push_str(&format!("%{m}"));
    }
    s
}

/// `HH:MM:SS` (or `D-HH:MM:SS`), rounded up to whole minutes as Slurm does.
fn slurm_time(secs: u64) -> String {
    let mins = secs.div_ceil(60);
    let (d, h, m) = (mins / 1440, (mins / 60) % 24, mins % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:00")
    } else {
        format!("{h:02}:{m:02}:00")
    }
}

/// The arguments of `sbatch` for one array (the script path comes last).
pub fn sbatch_args(
    plan: &Plan,
    root: &Path,
    res: &Resources,
    tasks: &BTreeMap<u32, Vec<usize>>,
    script: &Path,
) -> Vec<String> {
    let ids: Vec<u32> = tasks.keys().copied().collect();
    let mut a = vec![
        "--parsable".to_owned(),
        format!("--job-name=kvlab-{}", run::sanitize(&plan.experiment)),
        format!("--array={}", array_spec(&ids, plan.slurm.max_parallel)),
        format!("--output={}", root.join("slurm/%A_%a.out").display()),
        "--open-mode=append".to_owned(),
        "--requeue".to_owned(),
    ];
    if res.gpus > 0 {
        a.push(format!("--gres=gpu:{}", res.gpus));
    }
    if let Some(c) = res.cpus_per_task {
        a.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = &res.mem {
        a.push(format!("--mem={m}"));
    }
    if let Some(t) = res.time_s {
        a.push(format!("--time={}", slurm_time(t)));
    }
    for (flag, v) in [("partition", &res.partition), ("account", &res.account), ("qos", &res.qos)] {
        if let Some(v) = v {
            a.push(format!("--{flag}={v}"));
        }
    }
    a.push(script.display().to_string());
    a
}

/// The batch script of one array: each task runs its points with the runner in `<root>/bin/`.
pub fn batch_script(plan: &Plan, root: &Path, tasks: &BTreeMap<u32, Vec<usize>>) -> String {
    let root_q = engines::shell::quote(&root.display().to_string());
    let mut runner = format!("\"$ROOT/bin/\"{}", engines::shell::quote(&plan.runner_exe));
    for a in &plan.runner_args {
        runner.push(' ');
        runner.push_str(&engines::shell::quote(a));
    }
    let mut s = format!(
        "#!/bin/bash\n\
         # kvlab: experiment `{}`, one array task per point (see plan.json). Generated; do not edit.\n\
         # A requeued task starts its point again from clean; a completed point is skipped.\n\
         set -u\n\
         ROOT={root_q}\n",
        plan.experiment
    );
    if tasks.values().all(|p| p.len() == 1) {
        s.push_str(&format!("exec {runner} --root \"$ROOT\" --index \"$SLURM_ARRAY_TASK_ID\"\n"));
        return s;
    }
    s.push_str("case \"$SLURM_ARRAY_TASK_ID\" in\n");
    for (task, points) in tasks {
        let list: Vec<String> = points.iter().map(usize::to_string).collect();
        s.push_str(&format!("  {task}) points=\"{}\" ;;\n", list.join(" ")));
    }
    s.push_str(
        "  *) echo \"kvlab: array task $SLURM_ARRAY_TASK_ID is not part of this submission\" >&2; exit 2 ;;\nesac\n",
    );
    s.push_str(&format!(
        "status=0\nfor i in $points; do\n  {runner} --root \"$ROOT\" --index \"$i\" || status=1\ndone\nexit $status\n"
    ));
    s
}

/// A submitted (or resumed) run.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub root: PathBuf,
    pub job_ids: Vec<String>,
    /// Points submitted (the others were complete already).
    pub points: Vec<usize>,
}

/// Validates every point, writes the result root (`plan.json`, the runner in `bin/`, the tier
/// files, a copy of the experiment) and submits the job array(s). Nothing is submitted when a
/// point is invalid.
pub fn submit(opts: &BenchOptions, cfg: &SubmitConfig) -> Result<Submitted> {
    let (plan, root) = prepare(opts, cfg)?;
    let all: Vec<usize> = (0..plan.points.len()).collect();
    submit_points(&plan, &root, &all)
}

/// Validates every point and writes a new result root (`plan.json`, the runner in `bin/`, the
/// tier files, a copy of the experiment) without submitting anything. Returns the plan and the
/// root (absolute).
pub fn prepare(opts: &BenchOptions, cfg: &SubmitConfig) -> Result<(Plan, PathBuf)> {
    let plan = plan(opts, cfg)?;
    let out = run::out_dir(opts);
    let root = out.join(format!("{}_{}", run::sanitize(&plan.experiment), run::timestamp()));
    let root = unique(&root);
    for sub in ["bin", "slurm", "status", "configs/tiers"] {
        let p = root.join(sub);
        std::fs::create_dir_all(&p).map_err(|e| SlurmError::io(&p, e))?;
    }
    let root = root.canonicalize().map_err(|e| SlurmError::io(&root, e))?;
    let bin = root.join("bin").join(&plan.runner_exe);
    std::fs::copy(&cfg.runner.exe, &bin).map_err(|e| SlurmError::io(&cfg.runner.exe, e))?;
    let tiers = opts.root.join("configs/tiers");
    for e in std::fs::read_dir(&tiers).map_err(|e| SlurmError::io(&tiers, e))?.flatten() {
        if e.path().extension().is_some_and(|x| x == "toml") {
            let to = root.join("configs/tiers").join(e.file_name());
            std::fs::copy(e.path(), &to).map_err(|e| SlurmError::io(&to, e))?;
        }
    }
    if let Some(exp) = &opts.experiment {
        std::fs::copy(exp, root.join("experiment.toml")).map_err(|e| SlurmError::io(exp, e))?;
    }
    write_json(&root.join("plan.json"), &plan)?;
    Ok((plan, root))
}

/// Submits again the points of `root` that have no `summary.json` (missing or failed).
pub fn resume(root: &Path) -> Result<Submitted> {
    let root = root.canonicalize().map_err(|e| SlurmError::io(root, e))?;
    let plan: Plan = read_json(&root.join("plan.json"))?;
    let jobs = load_jobs(&root)?;
    let active = active_tasks(&jobs)?;
    if !active.is_empty() {
        return Err(err(format!(
            "{}: jobs of this run are still queued ({}); wait for them (`--attach`) or cancel them first",
            root.display(),
            active.join(" ")
        )));
    }
    let missing: Vec<usize> = plan
        .points
        .iter()
        .filter(|p| !root.join(&p.name).join("summary.json").is_file())
        .map(|p| p.index)
        .collect();
    if missing.is_empty() {
        return Ok(Submitted { root, job_ids: Vec::new(), points: Vec::new() });
    }
    submit_points(&plan, &root, &missing)
}

fn unique(root: &Path) -> PathBuf {
    let mut p = root.to_owned();
    let mut i = 2;
    while p.exists() {
        p = PathBuf::from(format!("{}-{i}", root.display()));
        i += 1;
    }
    p
}

fn load_jobs(root: &Path) -> Result<Jobs> {
    let path = root.join("slurm/jobs.json");
    if path.is_file() {
        read_json(&path)
    } else {
        Ok(Jobs { v: PLAN_VERSION, arrays: Vec::new() })
    }
}

/// Submits points `indices` of `plan` (written in `root`) as job arrays, recorded in
/// `slurm/jobs.json`.
pub fn submit_points(plan: &Plan, root: &Path, indices: &[usize]) -> Result<Submitted> {
    let mut jobs = load_jobs(root)?;
    let mut job_ids = Vec::new();
    for (res, tasks) in arrays(plan, indices) {
        let n = jobs.arrays.len();
        let script = root.join(format!("slurm/array-{n}.sh"));
        std::fs::write(&script, batch_script(plan, root, &tasks)).map_err(|e| SlurmError::io(&script, e))?;
        let args = sbatch_args(plan, root, &res, &tasks, &script);
        let out = Command::new("sbatch")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| err(format!("sbatch: {e}: is Slurm installed and SLURM_CONF set?")))?;
        if !out.status.success() {
            return Err(err(format!(
                "sbatch {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let job_id = stdout.trim().split(';').next().unwrap_or("").to_owned();
        if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(err(format!("sbatch --parsable printed `{}`, not a job id", stdout.trim())));
        }
        jobs.arrays.push(ArraySubmission { job_id: job_id.clone(), tasks, script, sbatch_args: args });
        write_json(&root.join("slurm/jobs.json"), &jobs)?;
        job_ids.push(job_id);
    }
    Ok(Submitted { root: root.to_owned(), job_ids, points: indices.to_vec() })
}

/// Task ids (`JOB_TASK`) of this root's jobs still in `squeue`.
fn active_tasks(jobs: &Jobs) -> Result<Vec<String>> {
    Ok(squeue(jobs)?.into_iter().map(|t| t.id).collect())
}

/// One line of `squeue -r`.
#[derive(Debug, Clone)]
struct QueuedTask {
    id: String,
    job: String,
    task: Option<u32>,
    state: String,
    node: String,
}

fn squeue(jobs: &Jobs) -> Result<Vec<QueuedTask>> {
    if jobs.arrays.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = jobs.arrays.iter().map(|a| a.job_id.as_str()).collect();
    let out = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i|%F|%K|%T|%N", "-j", &ids.join(",")])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("squeue: {e}: is Slurm installed and SLURM_CONF set?")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Jobs purged from the controller: nothing queued.
        if stderr.contains("Invalid job id") {
            return Ok(Vec::new());
        }
        return Err(err(format!("squeue: {}", stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() == 5).then(|| QueuedTask {
                id: f[0].to_owned(),
                job: f[1].to_owned(),
                task: f[2].parse().ok(),
                state: f[3].to_owned(),
                node: f[4].to_owned(),
            })
        })
        .collect())
}

/// A task's final record from `scontrol show job` (or `sacct`).
#[derive(Debug, Clone, Default)]
struct TaskRecord {
    state: String,
    node: String,
    restarts: u32,
}

/// `scontrol -o show job J`: one line per array task, `Key=Value` pairs.
fn scontrol_tasks(job: &str) -> BTreeMap<u32, TaskRecord> {
    let mut map = BTreeMap::new();
    let Ok(out) = Command::new("scontrol").args(["-o", "show", "job", job]).stdin(Stdio::null()).output()
    else {
        return map;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let kv: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
        if kv.get("ArrayJobId") != Some(&job) {
            continue;
        }
        let Some(task) = kv.get("ArrayTaskId").and_then(|t| t.parse::<u32>().ok()) else { continue };
        map.insert(
            task,
            TaskRecord {
                state: kv.get("JobState").unwrap_or(&"").to_string(),
                node: kv.get("NodeList").filter(|n| **n != "(null)").unwrap_or(&"").to_string(),
                restarts: kv.get("Restarts").and_then(|r| r.parse().ok()).unwrap_or(0),
            },
        );
    }
    map
}

/// `sacct`, when the cluster keeps accounting: the final state of each task.
fn sacct_tasks(job: &str) -> BTreeMap<u32, TaskRecord> {
    let mut map = BTreeMap::new();
    let Ok(out) = Command::new("sacct")
        .args(["-n", "-P", "-X", "-j", job, "-o", "JobID,State,NodeList"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return map;
    };
    if !out.status.success() {
        return map;
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        let Some(task) = f.first().and_then(|id| id.split_once('_')).and_then(|(_, t)| t.parse::<u32>().ok())
        else {
            continue;
        };
        let state = f.get(1).unwrap_or(&"").split_whitespace().next().unwrap_or("").to_owned();
        map.insert(task, TaskRecord { state, node: f.get(2).unwrap_or(&"").to_string(), restarts: 0 });
    }
    map
}

/// One line of `status/<index>.jsonl`, appended by the task running the point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub v: u32,
    /// `start`, `skipped`, `done` or `failed`.
    pub event: String,
    pub node: Option<String>,
    pub job_id: Option<String>,
    pub task_id: Option<String>,
    pub restart_count: Option<u32>,
    pub unix_time: f64,
    pub error: Option<String>,
}

/// The events of a point (none before its task ran). A line that does not parse is skipped
/// with a warning naming the file and line (a torn last line, from a task killed while writing
/// it, with the shared torn-line warning): the rest still tells where the point stands.
fn status_events(root: &Path, index: usize) -> Vec<StatusEvent> {
    let path = root.join(format!("status/{index}.jsonl"));
    let Ok(text) = std::fs::read_to_string(&path) else { return Vec::new() };
    let (lines, bad) = stats::parse_json_lines_skipping(&text);
    for e in bad {
        eprintln!("kvlab: {}; line skipped", e.in_file(path.display().to_string()));
    }
    if let Some(torn) = lines.torn {
        eprintln!("kvlab: {}", torn.warning(&path.display().to_string()));
    }
    lines.items.into_iter().map(|(_, e)| e).collect()
}

/// Where a point stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointOutcome {
    pub index: usize,
    pub name: String,
    /// Slurm's state of its last task (`COMPLETED`, `FAILED`, `TIMEOUT`, `OUT_OF_MEMORY`,
    /// `NODE_FAIL`, `CANCELLED`, `PENDING`, `RUNNING`, …), or `UNKNOWN`.
    pub state: String,
    /// `summary.json` exists: the point completed.
    pub done: bool,
    pub node: Option<String>,
    pub job_id: Option<String>,
    pub task_id: Option<u32>,
    /// Times Slurm requeued the task (node failure).
    pub restarts: u32,
    /// Attempts the point's status file records (each start).
    pub attempts: usize,
    /// The task's log.
    pub log: Option<PathBuf>,
    pub error: Option<String>,
}

impl PointOutcome {
    /// Ended without a result.
    pub fn failed(&self) -> bool {
        !self.done
            && !matches!(
                self.state.as_str(),
                "PENDING" | "RUNNING" | "REQUEUED" | "CONFIGURING" | "COMPLETING"
            )
    }
}

/// The state of every point of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub root: PathBuf,
    pub points: Vec<PointOutcome>,
    /// Tasks of this run still in squeue.
    pub queued: usize,
}

impl Outcome {
    pub fn complete(&self) -> bool {
        self.points.iter().all(|p| p.done)
    }
    pub fn failed(&self) -> Vec<&PointOutcome> {
        self.points.iter().filter(|p| p.failed()).collect()
    }
}

/// Collects the state of every point of `root`: its result, the latest submission's task (squeue
/// while queued, then sacct or scontrol) and its status file.
pub fn collect(root: &Path) -> Result<Outcome> {
    let plan: Plan = read_json(&root.join("plan.json"))?;
    let jobs = load_jobs(root)?;
    let queued = squeue(&jobs)?;
    let mut finals: BTreeMap<String, BTreeMap<u32, TaskRecord>> = BTreeMap::new();
    let mut points = Vec::new();
    for p in &plan.points {
        let done = root.join(&p.name).join("summary.json").is_file();
        let events = status_events(root, p.index);
        let last_start = events.iter().rev().find(|e| e.event == "start");
        let last_err = events.iter().rev().find(|e| e.event == "failed").and_then(|e| e.error.clone());
        let sub = jobs.arrays.iter().rev().find_map(|a| {
            a.tasks.iter().find(|(_, pts)| pts.contains(&p.index)).map(|(t, _)| (a.job_id.clone(), *t))
        });
        let mut out = PointOutcome {
            index: p.index,
            name: p.name.clone(),
            state: if done { "COMPLETED".into() } else { "UNKNOWN".into() },
            done,
            node: last_start.and_then(|e| e.node.clone()),
            job_id: None,
            task_id: None,
            restarts: 0,
            attempts: events.iter().filter(|e| e.event == "start").count(),
            log: None,
            error: if done { None } else { last_err },
        };
        if let Some((job, task)) = sub {
            out.log = Some(root.join(format!("slurm/{job}_{task}.out")));
            out.job_id = Some(job.clone());
            out.task_id = Some(task);
            if let Some(q) = queued.iter().find(|q| q.job == job && q.task == Some(task)) {
                out.state = q.state.clone();
                if !q.node.is_empty() {
                    out.node = Some(q.node.clone());
                }
            } else if queued.iter().any(|q| q.job == job && q.task.is_none()) {
                out.state = "PENDING".into();
            } else {
                let records = finals.entry(job.clone()).or_insert_with(|| {
                    let mut r = scontrol_tasks(&job);
                    for (t, s) in sacct_tasks(&job) {
                        let e = r.entry(t).or_default();
                        e.state = s.state;
                        if e.node.is_empty() {
                            e.node = s.node;
                        }
                    }
                    r
                });
                if let Some(r) = records.get(&task) {
                    out.state = r.state.clone();
                    out.restarts = r.restarts;
                    if !r.node.is_empty() {
                        out.node = Some(r.node.clone());
                    }
                } else if !done {
                    // Purged from the controller and no accounting: the status file tells.
                    out.state = match events.last().map(|e| e.event.as_str()) {
                        Some("failed") => "FAILED".into(),
                        _ => "UNKNOWN".into(),
                    };
                }
                if done {
                    out.state = "COMPLETED".into();
                }
            }
        }
        points.push(out);
    }
    Ok(Outcome { root: root.to_owned(), points, queued: queued.len() })
}

/// Writes `index.json`: one entry per point with its state, node, job and task, restarts, log,
/// and request counts from its summary; `"complete": false` while a point is missing.
pub fn write_index(outcome: &Outcome) -> Result<()> {
    let plan: Plan = read_json(&outcome.root.join("plan.json"))?;
    let entries: Vec<serde_json::Value> = outcome
        .points
        .iter()
        .zip(&plan.points)
        .map(|(o, p)| {
            let summary: Option<serde_json::Value> =
                std::fs::read_to_string(outcome.root.join(&o.name).join("summary.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
            serde_json::json!({
                "point": o.index,
                "dir": o.done.then(|| o.name.clone()),
                "model": p.point.model, "tier": p.point.tier, "workload": p.point.workload,
                "request_rate": run::json_rate(p.point.request_rate), "cache_size": p.point.cache_size,
                "engine": p.engine, "emulated": p.engine == EngineKind::Emulated,
                "state": o.state, "node": o.node, "job_id": o.job_id, "task_id": o.task_id,
                "restarts": o.restarts, "attempts": o.attempts, "log": o.log,
                "completed": summary.as_ref().and_then(|s| s.get("completed").cloned()),
                "failed": summary.as_ref().and_then(|s| s.get("failed").cloned()),
                "error": o.error,
            })
        })
        .collect();
    let index = serde_json::json!({
        "v": run::RUN_FORMAT_VERSION,
        "experiment": plan.experiment,
        "scheduler": "slurm",
        "complete": outcome.complete(),
        "points": entries,
    });
    write_json(&outcome.root.join("index.json"), &index)
}

/// The summary table: one row per point.
pub fn render_table(outcome: &Outcome) -> String {
    let mut s = format!("{:>5}  {:<14} {:<8} {:>8}  {}\n", "point", "state", "node", "restarts", "result");
    for p in &outcome.points {
        let result = if p.done {
            outcome.root.join(&p.name).display().to_string()
        } else {
            match &p.log {
                Some(l) if l.is_file() => format!("log: {}", l.display()),
                Some(_) => "never started (no log)".to_owned(),
                None => "-".to_owned(),
            }
        };
        s.push_str(&format!(
            "{:>5}  {:<14} {:<8} {:>8}  {}\n",
            p.index,
            p.state,
            p.node.as_deref().unwrap_or("-"),
            p.restarts,
            result
        ));
    }
    s
}

/// How [`watch`] behaves.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub poll: Duration,
    /// On interrupt: cancel with `scancel` without asking.
    pub cancel_on_interrupt: bool,
    /// Show the progress line on stderr.
    pub progress: bool,
}

impl Default for WatchConfig {
    fn default() -> WatchConfig {
        WatchConfig { poll: Duration::from_millis(250), cancel_on_interrupt: false, progress: true }
    }
}

/// How a watch ended.
#[derive(Debug, Clone)]
pub enum WatchEnd {
    /// Every task has left the queue; the index is written.
    Finished(Outcome),
    /// Interrupted and cancelled: nothing of this run is left in squeue.
    Cancelled(Outcome),
    /// Interrupted, not cancelled: the tasks go on (`--attach ROOT` watches them again).
    Detached(Outcome),
}

/// Waits until every task of `root` has left the queue, showing done, running, pending and
/// failed counts with a bar; then writes `index.json`. When `interrupt` resolves: cancels
/// (`cancel_on_interrupt`, or the user says yes on a terminal) and waits until squeue has none
/// of the run's tasks, or leaves the run going.
pub async fn watch(
    root: &Path,
    cfg: &WatchConfig,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<WatchEnd> {
    let root = root.canonicalize().map_err(|e| SlurmError::io(root, e))?;
    tokio::pin!(interrupt);
    let mut last = String::new();
    loop {
        let outcome = collect(&root)?;
        let line = progress_line(&outcome);
        if cfg.progress && line != last {
            if std::io::stderr().is_terminal() {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        if outcome.queued == 0 {
            if cfg.progress && std::io::stderr().is_terminal() {
                eprintln!();
            }
            write_index(&outcome)?;
            return Ok(WatchEnd::Finished(outcome));
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.poll) => {}
            () = &mut interrupt => {
                eprintln!();
                let cancel = cfg.cancel_on_interrupt || ask_cancel(&root).await;
                if !cancel {
                    let outcome = collect(&root)?;
                    write_index(&outcome)?;
                    eprintln!("kvlab: the run goes on; watch it again with `cargo xtask bench --attach {}`", root.display());
                    return Ok(WatchEnd::Detached(outcome));
                }
                cancel_run(&root)?;
                let outcome = collect(&root)?;
                write_index(&outcome)?;
                return Ok(WatchEnd::Cancelled(outcome));
            }
        }
    }
}

fn progress_line(o: &Outcome) -> String {
    let total = o.points.len();
    let done = o.points.iter().filter(|p| p.done).count();
    let running =
        o.points.iter().filter(|p| !p.done && matches!(p.state.as_str(), "RUNNING" | "COMPLETING")).count();
    let pending = o
        .points
        .iter()
        .filter(|p| !p.done && matches!(p.state.as_str(), "PENDING" | "REQUEUED" | "CONFIGURING"))
        .count();
    let failed = o.points.iter().filter(|p| p.failed() && p.state != "UNKNOWN").count();
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    format!(
        "[{}{}] {done}/{total} done, {running} running, {pending} pending, {failed} failed",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

async fn ask_cancel(root: &Path) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("kvlab: cancel the run's Slurm jobs ({})? [y/N] ", root.display());
    tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
    })
    .await
    .unwrap_or(false)
}

/// `scancel` every job of `root` and wait (up to 60 s) until squeue lists none of its tasks.
pub fn cancel_run(root: &Path) -> Result<()> {
    let jobs = load_jobs(root)?;
    let ids: Vec<&str> = jobs.arrays.iter().map(|a| a.job_id.as_str()).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let status = Command::new("scancel")
        .args(&ids)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| err(format!("scancel: {e}")))?;
    if !status.success() {
        return Err(err(format!("scancel {} failed ({status})", ids.join(" "))));
    }
    let end = Instant::now() + Duration::from_secs(60);
    while !squeue(&jobs)?.is_empty() {
        if Instant::now() > end {
            return Err(err(format!("scancel {}: tasks still in squeue after 60 s", ids.join(" "))));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Runs point `index` of `<root>/plan.json` on this node (what each array task does).
///
/// A point whose `summary.json` exists is skipped. Otherwise it is written into
/// `<root>/.partial/<name>` (wiped first: a requeued task starts from clean) and renamed to
/// `<root>/<name>` when it completes; a failed attempt is moved to `<root>/failed/<name>`.
/// Each attempt is appended to `status/<index>.jsonl` with this node and the Slurm job and task.
pub async fn run_planned_point(
    root: &Path,
    index: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let plan_path = root.join("plan.json");
    if !plan_path.is_file() {
        return Err(SlurmError::invalid(format!(
            "{} is not visible on node {}: the result root must be on a filesystem that every node shares",
            plan_path.display(),
            env("SLURMD_NODENAME").unwrap_or_else(|| "?".into())
        )));
    }
    let plan: Plan = read_json(&plan_path)?;
    let p = plan.points.get(index).ok_or_else(|| {
        SlurmError::invalid(format!(
            "{}: no point {index} (the plan has {})",
            plan_path.display(),
            plan.points.len()
        ))
    })?;
    let final_dir = root.join(&p.name);
    let event = |name: &str, error: Option<String>| StatusEvent {
        v: PLAN_VERSION,
        event: name.to_owned(),
        node: env("SLURMD_NODENAME"),
        job_id: env("SLURM_ARRAY_JOB_ID").or_else(|| env("SLURM_JOB_ID")),
        task_id: env("SLURM_ARRAY_TASK_ID"),
        restart_count: env("SLURM_RESTART_COUNT").and_then(|r| r.parse().ok()),
        unix_time: unix_time_s(),
        error,
    };
    if final_dir.join("summary.json").is_file() {
        append_status(root, index, &event("skipped", None))?;
        eprintln!("kvlab: point {index} ({}) is complete already; skipped", p.name);
        return Ok(());
    }
    let partial = root.join(".partial").join(&p.name);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| SlurmError::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| SlurmError::io(&partial, e))?;
    append_status(root, index, &event("start", None))?;

    let mut opts = BenchOptions::new(root, p.point.tier);
    opts.engine = p.engine;
    opts.url = plan.options.url.clone();
    opts.image = plan.options.image.clone();
    if opts.redis_url.is_none() {
        opts.redis_url = plan.options.redis_url.clone();
    }
    opts.model_path = opts.model_path.or(plan.options.model_path.clone());
    opts.python = opts.python.or(plan.options.python.clone());
    opts.ready_timeout = Duration::from_secs(plan.options.ready_timeout_s);
    opts.gpus = GpuSelection::All;
    opts.progress = false;
    let exp_lmcache = match root.join("experiment.toml") {
        f if f.is_file() => Experiment::load(&f)?.lmcache,
        _ => None,
    };
    let slurm_env = serde_json::json!({
        "node": env("SLURMD_NODENAME"),
        "job_id": env("SLURM_JOB_ID"),
        "array_job_id": env("SLURM_ARRAY_JOB_ID"),
        "array_task_id": env("SLURM_ARRAY_TASK_ID"),
        "restart_count": env("SLURM_RESTART_COUNT").and_then(|r| r.parse::<u32>().ok()).unwrap_or(0),
        "point": index,
    });
    let ctx = PointCtx {
        experiment: &plan.experiment,
        root,
        index,
        exact_dir: Some(&partial),
        env_extra: Some(("slurm", slurm_env)),
    };
    let stop = CancellationToken::new();
    let work = run::run_point(&opts, &p.point, Some(ctx), exp_lmcache.as_ref(), &stop);
    tokio::pin!(work);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = &mut work => r,
        () = &mut shutdown => { stop.cancel(); work.await }
    };
    let result = result.map_err(SlurmError::from).and_then(|report| {
        let s = &report.summary;
        let sent = s.completed + s.failed;
        let fraction = if sent == 0 { 1.0 } else { s.failed as f64 / sent as f64 };
        if sent == 0 || fraction > plan.options.max_failed_fraction {
            Err(err(format!("{} of {sent} requests failed", s.failed)))
        } else {
            Ok(())
        }
    });
    match result {
        Ok(()) => {
            if final_dir.exists() {
                std::fs::remove_dir_all(&final_dir).map_err(|e| SlurmError::io(&final_dir, e))?;
            }
            std::fs::rename(&partial, &final_dir).map_err(|e| SlurmError::io(&final_dir, e))?;
            // run.toml names the point's directory (disk_dir): the final one, not `.partial/`.
            let run_toml = final_dir.join("run.toml");
            if let Ok(text) = std::fs::read_to_string(&run_toml) {
                let text = text.replace(&partial.display().to_string(), &final_dir.display().to_string());
                lab::run::write_atomic(&run_toml, text.as_bytes())?;
            }
            append_status(root, index, &event("done", None))?;
            eprintln!("kvlab: point {index} done: {}", final_dir.display());
            Ok(())
        }
        Err(e) => {
            let failed = root.join("failed").join(&p.name);
            let _ = std::fs::remove_dir_all(&failed);
            let moved = std::fs::create_dir_all(root.join("failed"))
                .and_then(|()| std::fs::rename(&partial, &failed));
            append_status(root, index, &event("failed", Some(e.to_string())))?;
            if moved.is_ok() {
                eprintln!("kvlab: point {index} failed; its files are in {}", failed.display());
            }
            Err(e)
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn append_status(root: &Path, index: usize, event: &StatusEvent) -> Result<()> {
    use std::io::Write as _;
    let dir = root.join("status");
    std::fs::create_dir_all(&dir).map_err(|e| SlurmError::io(&dir, e))?;
    let path = dir.join(format!("{index}.jsonl"));
    let line = serde_json::to_string(event).map_err(|e| err(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| SlurmError::io(&path, e))?;
    writeln!(f, "{line}").map_err(|e| SlurmError::io(&path, e))
}

/// Resolves on Ctrl-C or SIGTERM (what `scancel` and Slurm's time limit send).
pub use engines::signals::stop_signal as terminated;

/// Wall times of the same points run two ways on the current cluster.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Overhead {
    /// `submit` + `watch` until the index is written.
    pub kvlab_s: f64,
    /// A bare `sbatch --wait` of the same batch script over a second copy of the plan (sbatch
    /// polls the controller itself, every few seconds).
    pub bare_s: f64,
    /// The same bare array, submitted with `sbatch --parsable` and watched with `squeue` every
    /// 100 ms: the floor for any tool that waits on Slurm.
    pub bare_polled_s: f64,
}

/// Measures what kvlab adds to Slurm: the experiment of `opts` through [`submit`] and [`watch`],
/// then as a bare `sbatch --wait --array` of the same tasks (same script, same resources).
pub async fn measure_overhead(opts: &BenchOptions, cfg: &SubmitConfig) -> Result<Overhead> {
    let start = Instant::now();
    let submitted = submit(opts, cfg)?;
    let watch_cfg = WatchConfig { progress: false, ..Default::default() };
    match watch(&submitted.root, &watch_cfg, std::future::pending()).await? {
        WatchEnd::Finished(o) if o.complete() => {}
        WatchEnd::Finished(o) => return Err(err(format!("the kvlab run failed:\n{}", render_table(&o)))),
        _ => return Err(err("the kvlab run was interrupted")),
    }
    let kvlab_s = start.elapsed().as_secs_f64();

    let bare_s = bare_run(opts, cfg, true).await?;
    let bare_polled_s = bare_run(opts, cfg, false).await?;
    Ok(Overhead { kvlab_s, bare_s, bare_polled_s })
}

/// Seconds for the points of a fresh copy of the plan as bare job arrays: `sbatch --wait`, or
/// `sbatch --parsable` and `squeue` every 100 ms.
async fn bare_run(opts: &BenchOptions, cfg: &SubmitConfig, wait: bool) -> Result<f64> {
    let (plan, root) = prepare(opts, cfg)?;
    let all: Vec<usize> = (0..plan.points.len()).collect();
    let start = Instant::now();
    for (i, (res, tasks)) in arrays(&plan, &all).into_iter().enumerate() {
        let script = root.join(format!("slurm/bare-{i}.sh"));
        std::fs::write(&script, batch_script(&plan, &root, &tasks))
            .map_err(|e| SlurmError::io(&script, e))?;
        let mut args = sbatch_args(&plan, &root, &res, &tasks, &script);
        if wait {
            args[0] = "--wait".to_owned();
        }
        let out = tokio::process::Command::new("sbatch")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| err(format!("sbatch: {e}")))?;
        if !out.status.success() {
            return Err(err(format!("bare sbatch {} failed ({})", args.join(" "), out.status)));
        }
        if !wait {
            let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let jobs = Jobs {
                v: PLAN_VERSION,
                arrays: vec![ArraySubmission { job_id: id, tasks, script, sbatch_args: args }],
            };
            let deadline = Instant::now() + Duration::from_secs(3600);
            loop {
                if squeue(&jobs)?.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(err("bare array: still queued after an hour"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The wall clock in seconds since the epoch, for an event's time stamp only (events on
/// different nodes share no monotonic clock).
#[allow(clippy::disallowed_methods)]
fn unix_time_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    /// A malformed line and a torn last line are skipped; every good event is kept.
    #[test]
    fn status_events_keep_the_good_lines() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("status")).unwrap();
        let line = |event: &str| {
            format!(
                r#"{{"v":1,"event":"{event}","node":"n1","job_id":"7","task_id":"0","restart_count":0,"unix_time":1.0,"error":null}}"#
            )
        };
        let text = format!("{}\nnot json\n{}\n{{\"v\":1,\"ev", line("start"), line("done"));
        std::fs::write(root.path().join("status/3.jsonl"), text).unwrap();
        let events: Vec<String> = super::status_events(root.path(), 3).into_iter().map(|e| e.event).collect();
        assert_eq!(events, ["start", "done"]);
        assert!(super::status_events(root.path(), 4).is_empty(), "no file: no events");
    }
}
