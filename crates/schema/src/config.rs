//! Configuration files: tiers (`configs/tiers/*.toml`) and experiments (`configs/experiments/*.toml`).
//!
//! Every file is parsed with unknown keys rejected; errors name the file, the 1-based line and
//! column, and the key. Values a schema cannot check (tier names, sizes, workloads) are kept with
//! their spans so their errors point at the right line too.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{ConfigError, Result};
use crate::lmcache::{LmValue, LmcacheConfig, Origin};

/// A KV-cache tier. `scalability` is accepted as an alias of `redis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// The engine's own GPU prefix cache only.
    Baseline,
    /// LMCache `local_cpu`.
    Cpu,
    /// LMCache `local_disk`.
    Disk,
    /// LMCache `remote_url = "redis://…"`.
    #[serde(alias = "scalability")]
    Redis,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Baseline, Tier::Cpu, Tier::Disk, Tier::Redis];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Cpu => "cpu",
            Tier::Disk => "disk",
            Tier::Redis => "redis",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Tier> {
        match s {
            "baseline" => Ok(Tier::Baseline),
            "cpu" => Ok(Tier::Cpu),
            "disk" => Ok(Tier::Disk),
            "redis" | "scalability" => Ok(Tier::Redis),
            other => Err(ConfigError::Invalid(format!(
                "unknown tier `{other}`; expected one of baseline, cpu, disk, redis (alias scalability)"
            ))),
        }
    }
}

/// Parses TOML text into `T`; an error is `file:LINE: FIELD: message (column C)`.
pub(crate) fn parse_toml<T: DeserializeOwned>(file: &str, text: &str) -> Result<T> {
    stats::parse_toml(text).map_err(|e| ConfigError::Config(e.in_file(file)))
}

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))
}

/// Capacities of the emulated engine for one tier file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorTierSettings {
    /// Caps the GPU KV blocks (vLLM's `num_gpu_blocks_override`); `None`: what fits the GPU.
    #[serde(default)]
    pub num_gpu_blocks: Option<u64>,
    /// Offload-tier capacity in GiB of modelled KV bytes (as LMCache's sizes); 0 for baseline.
    #[serde(default)]
    pub offload_gib: f64,
    /// Stored bytes per modelled KV byte, in (0, 1]: the offload store keeps this fraction of each
    /// chunk's real size, so a laptop disk or Redis can hold an 8B model's cache. In env.json.
    #[serde(default = "one", deserialize_with = "byte_scale")]
    pub byte_scale: f64,
}

fn one() -> f64 {
    1.0
}

/// A fraction in (0, 1], checked as it is read (so the error has the value's line and field).
fn byte_scale<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("must be in (0, 1], found {v}")))
    }
}

/// vLLM settings for a tier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VllmTierSettings {
    pub gpu_memory_utilization: f64,
}

/// llama.cpp settings for a tier. A tier llama.cpp cannot express has `supported = false`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamacppTierSettings {
    pub supported: bool,
    /// Host-RAM prompt cache (`cache_ram_mib`); 0 turns it off.
    #[serde(default)]
    pub cache_ram_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    description: String,
    #[serde(default)]
    lmcache: Option<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    vllm: VllmTierSettings,
    emulator: EmulatorTierSettings,
    llamacpp: LlamacppTierSettings,
}

/// One tier file, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierConfig {
    pub tier: Tier,
    pub description: String,
    /// `None` for a tier without LMCache (baseline): vLLM runs without a KV connector.
    /// String values may hold `{disk_dir}` and `{redis_url}`, replaced when a run resolves.
    pub lmcache: Option<LmcacheConfig>,
    pub vllm: VllmTierSettings,
    pub emulator: EmulatorTierSettings,
    pub llamacpp: LlamacppTierSettings,
}

impl TierConfig {
    /// Reads `<configs>/tiers/<tier>.toml`.
    pub fn load(configs_dir: &Path, tier: Tier) -> Result<TierConfig> {
        let path = configs_dir.join("tiers").join(format!("{tier}.toml"));
        let text = read(&path)?;
        TierConfig::parse(tier, &path.display().to_string(), &text)
    }

    /// Parses a tier file's text; `file` names it in errors.
    pub fn parse(tier: Tier, file: &str, text: &str) -> Result<TierConfig> {
        let raw: TierFile = parse_toml(file, text)?;
        let lmcache =
            raw.lmcache.map(|table| lmcache_from_toml(file, text, "lmcache", &table)).transpose()?;
        Ok(TierConfig {
            tier,
            description: raw.description,
            lmcache,
            vllm: raw.vllm,
            emulator: raw.emulator,
            llamacpp: raw.llamacpp,
        })
    }
}

/// Converts a `[lmcache]` TOML table (called `table_name` in errors) into a checked
/// [`LmcacheConfig`].
pub(crate) fn lmcache_from_toml(
    file: &str,
    text: &str,
    table_name: &str,
    table: &BTreeMap<Spanned<String>, Spanned<toml::Value>>,
) -> Result<LmcacheConfig> {
    let mut config = LmcacheConfig::default();
    for (key, value) in table {
        let (line, _) = stats::line_col(text, key.span().start);
        let origin = Origin { file, line, table: Some(table_name) };
        let v = match value.get_ref() {
            toml::Value::Boolean(b) => LmValue::Bool(*b),
            toml::Value::Integer(i) => LmValue::Int(*i),
            toml::Value::Float(f) => LmValue::Float(*f),
            toml::Value::String(s) => LmValue::Str(s.clone()),
            other => {
                return Err(ConfigError::at(
                    file,
                    text,
                    value.span().start,
                    format!("{table_name}.{}", key.get_ref()),
                    format!(
                        "a {} is not supported here (LMCache takes a string, number or boolean)",
                        other.type_str()
                    ),
                ))
            }
        };
        config.set(key.get_ref(), v, origin)?;
    }
    Ok(config)
}

/// A size such as `"512MiB"`, `"2GiB"`, `"1.5GB"` or a plain number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    let bytes = num * mult;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// A duration: seconds as a number, or a string with a unit (`"90s"`, `"5m"`, `"1h"`).
pub fn parse_duration_secs(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v * mult)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DurationLit {
    Secs(f64),
    Text(String),
}

impl DurationLit {
    /// Seconds, if the literal is a valid duration.
    fn secs(&self) -> Option<f64> {
        match self {
            DurationLit::Secs(v) => (*v > 0.0).then_some(*v),
            DurationLit::Text(s) => parse_duration_secs(s),
        }
    }
}

/// Settings of one experiment point that defaults and per-workload overrides may set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PointSettings {
    num_prompts: Option<u32>,
    time_limit: Option<Spanned<DurationLit>>,
    prompt_len: Option<u32>,
    gen_len: Option<u32>,
    burstiness: Option<f64>,
    max_concurrency: Option<u32>,
    seed: Option<u64>,
    warmup: Option<u32>,
    /// Prefill only: every request asks for one output token.
    mock_decoding: Option<bool>,
    /// Conversation-aware eviction where the engine supports it (the emulator does).
    conversation_aware_eviction: Option<bool>,
    /// Goodput SLOs in `vllm bench serve` form: `"ttft:300 tpot:50"` (milliseconds).
    goodput: Option<Spanned<String>>,
    engine: Option<Spanned<String>>,
    /// GPU type of the emulator's cost model (`configs/gpus.toml`).
    gpu: Option<Spanned<String>>,
}

impl PointSettings {
    /// `self` with the keys `over` sets replaced.
    fn overlay(&self, over: &PointSettings) -> PointSettings {
        macro_rules! pick {
            ($($f:ident),*) => { PointSettings { $($f: over.$f.clone().or_else(|| self.$f.clone())),* } };
        }
        pick!(
            num_prompts,
            time_limit,
            prompt_len,
            gen_len,
            burstiness,
            max_concurrency,
            seed,
            warmup,
            mock_decoding,
            conversation_aware_eviction,
            goodput,
            engine,
            gpu
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Matrix {
    models: Spanned<Vec<Spanned<String>>>,
    tiers: Spanned<Vec<Spanned<String>>>,
    workloads: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    request_rates: Vec<Spanned<f64>>,
    #[serde(default)]
    cache_sizes: Vec<Spanned<String>>,
    /// The engine's GPU KV cache in blocks (vLLM's `--num-gpu-blocks-override`, the emulator's
    /// `num_gpu_blocks`), on every tier: sweeping it shows where offloading starts to pay.
    #[serde(default)]
    gpu_blocks: Vec<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    defaults: PointSettings,
    matrix: Matrix,
    /// Per-workload (per-dataset) overrides of `defaults`.
    #[serde(default)]
    workload_overrides: BTreeMap<Spanned<String>, PointSettings>,
    /// LMCache keys applied on top of each tier's `[lmcache]` (checked like them).
    #[serde(default)]
    lmcache: Option<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    /// Scheduler settings for `--scheduler slurm` (flags win over them).
    #[serde(default)]
    slurm: SlurmSettings,
}

/// The `[slurm]` table of an experiment file: how the matrix is submitted as a job array.
/// Every key is optional; a flag of the same name wins over it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// `--cpus-per-task` of every array task.
    pub cpus_per_task: Option<u32>,
    /// `--mem` of every array task, in Slurm's syntax (`16G`, `500M`).
    pub mem: Option<String>,
    /// At most this many array tasks run at once (`--array=...%MAX`).
    pub max_parallel: Option<u32>,
    /// Points run one after another by each array task (for points of a few seconds).
    pub points_per_task: Option<u32>,
    /// GPUs of one node; a point needing more is refused before anything is submitted.
    pub gpus_per_node: Option<u32>,
    /// Seconds added to a point's time_limit for `--time` (engine start, model load).
    pub time_margin_s: Option<f64>,
}

/// The workloads a run can drive.
pub const WORKLOADS: &[&str] = &["shared-prefix", "multi-turn", "random", "repeat"];

/// An experiment file: a matrix of models x tiers x workloads x request rates x cache sizes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    /// The points in matrix order (models outermost, cache sizes, then GPU blocks, innermost).
    pub points: Vec<Point>,
    /// Extra LMCache settings for every point, already checked.
    pub lmcache: Option<LmcacheConfig>,
    /// The `[slurm]` table (empty when absent).
    pub slurm: SlurmSettings,
    /// The file as given to [`Experiment::parse`], for error messages.
    #[serde(skip)]
    pub file: String,
    /// The 1-based line and column of each entry of `matrix.models`, in order.
    #[serde(skip)]
    model_positions: Vec<(usize, usize)>,
}

/// One point of an experiment matrix, with defaults and overrides applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub model: String,
    pub tier: Tier,
    pub workload: String,
    /// Requests per second; `f64::INFINITY` sends everything at once (`"inf"` in JSON).
    #[serde(with = "rate_serde")]
    pub request_rate: f64,
    /// Offload-tier capacity in bytes (the GPU cache for the baseline tier); `None`: the tier's.
    pub cache_size: Option<u64>,
    /// The engine's GPU KV cache in blocks on every tier (`matrix.gpu_blocks`, `--gpu-blocks`);
    /// `None`: the tier's or what fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_blocks: Option<u64>,
    pub num_prompts: Option<u32>,
    pub time_limit_s: Option<f64>,
    pub prompt_len: Option<u32>,
    pub gen_len: Option<u32>,
    pub burstiness: Option<f64>,
    pub max_concurrency: Option<u32>,
    pub seed: Option<u64>,
    pub warmup: Option<u32>,
    pub mock_decoding: bool,
    pub conversation_aware_eviction: bool,
    pub goodput: Option<String>,
    pub engine: Option<String>,
    pub gpu: Option<String>,
}

/// A request rate in JSON: a number, or `"inf"` (JSON has no infinity).
mod rate_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(rate: &f64, s: S) -> Result<S::Ok, S::Error> {
        if rate.is_finite() {
            s.serialize_f64(*rate)
        } else {
            s.serialize_str("inf")
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Rate {
            Num(f64),
            Text(String),
        }
        match Rate::deserialize(d)? {
            Rate::Num(v) => Ok(v),
            Rate::Text(t) if t == "inf" => Ok(f64::INFINITY),
            Rate::Text(t) => {
                Err(serde::de::Error::custom(format!("request rate `{t}`: expected a number or \"inf\"")))
            }
        }
    }
}

impl Experiment {
    /// An experiment built on the command line (no file): its points as given.
    pub fn from_points(name: &str, description: &str, points: Vec<Point>) -> Experiment {
        Experiment {
            name: name.to_owned(),
            description: description.to_owned(),
            points,
            lmcache: None,
            slurm: SlurmSettings::default(),
            file: String::new(),
            model_positions: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Experiment> {
        let text = read(path)?;
        Experiment::parse(&path.display().to_string(), &text)
    }

    /// Parses and expands an experiment file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Experiment> {
        let raw: ExperimentFile = parse_toml(file, text)?;
        let err = |span: std::ops::Range<usize>, field: String, msg: String| {
            ConfigError::at(file, text, span.start, field, msg)
        };
        let m = &raw.matrix;
        for (name, list) in [("models", &m.models), ("tiers", &m.tiers), ("workloads", &m.workloads)] {
            if list.get_ref().is_empty() {
                return Err(err(list.span(), format!("matrix.{name}"), "must not be empty".into()));
            }
        }
        let tiers = m
            .tiers
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.get_ref()
                    .parse::<Tier>()
                    .map_err(|e| err(t.span(), format!("matrix.tiers[{i}]"), strip_invalid(e)))
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, w) in m.workloads.get_ref().iter().enumerate() {
            check_workload(w.get_ref())
                .map_err(|msg| err(w.span(), format!("matrix.workloads[{i}]"), msg))?;
        }
        for w in raw.workload_overrides.keys() {
            if !m.workloads.get_ref().iter().any(|x| x.get_ref() == w.get_ref()) {
                return Err(err(
                    w.span(),
                    format!("workload_overrides.{}", w.get_ref()),
                    "not a workload of matrix.workloads".into(),
                ));
            }
        }
        let rates = if m.request_rates.is_empty() {
            vec![f64::INFINITY]
        } else {
            m.request_rates
                .iter()
                .enumerate()
                .map(|(i, r)| match *r.get_ref() {
                    v if v > 0.0 => Ok(v),
                    v => Err(err(
                        r.span(),
                        format!("matrix.request_rates[{i}]"),
                        format!("{v} must be > 0 (or inf)"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?
        };
        let sizes = if m.cache_sizes.is_empty() {
            vec![None]
        } else {
            m.cache_sizes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    parse_size(s.get_ref()).map(Some).ok_or_else(|| {
                        err(
                            s.span(),
                            format!("matrix.cache_sizes[{i}]"),
                            format!("`{}`: expected a size, e.g. \"512MiB\" or \"2GiB\"", s.get_ref()),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let gpu_blocks = if m.gpu_blocks.is_empty() {
            vec![None]
        } else {
            m.gpu_blocks
                .iter()
                .enumerate()
                .map(|(i, b)| match *b.get_ref() {
                    0 => Err(err(b.span(), format!("matrix.gpu_blocks[{i}]"), "must be at least 1".into())),
                    v => Ok(Some(v)),
                })
                .collect::<Result<Vec<_>>>()?
        };
        // `table`: where the settings are (`defaults`, `workload_overrides.NAME`).
        // Checked once per table; a point's settings overlay checked values, so need no check.
        let check_settings = |table: &str, s: &PointSettings| -> Result<()> {
            check_names(s).map_err(|(span, key, msg)| err(span, format!("{table}.{key}"), msg))?;
            match &s.time_limit {
                Some(t) if t.get_ref().secs().is_none() => Err(err(
                    t.span(),
                    format!("{table}.time_limit"),
                    "expected seconds or e.g. \"90s\", \"5m\"".into(),
                )),
                _ => Ok(()),
            }
        };
        check_settings("defaults", &raw.defaults)?;
        for (name, o) in &raw.workload_overrides {
            check_settings(&format!("workload_overrides.{}", name.get_ref()), o)?;
        }
        let lmcache =
            raw.lmcache.as_ref().map(|t| lmcache_from_toml(file, text, "lmcache", t)).transpose()?;

        let mut points = Vec::new();
        for model in m.models.get_ref() {
            for &tier in &tiers {
                for workload in m.workloads.get_ref() {
                    let over = raw
                        .workload_overrides
                        .iter()
                        .find(|(k, _)| k.get_ref() == workload.get_ref())
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let s = raw.defaults.overlay(&over);
                    let time_limit_s = s.time_limit.as_ref().and_then(|t| t.get_ref().secs());
                    for &request_rate in &rates {
                        for (&cache_size, &gpu_blocks) in
                            sizes.iter().flat_map(|c| gpu_blocks.iter().map(move |g| (c, g)))
                        {
                            points.push(Point {
                                model: model.get_ref().clone(),
                                tier,
                                workload: workload.get_ref().clone(),
                                request_rate,
                                cache_size,
                                gpu_blocks,
                                num_prompts: s.num_prompts,
                                time_limit_s,
                                prompt_len: s.prompt_len,
                                gen_len: s.gen_len,
                                burstiness: s.burstiness,
                                max_concurrency: s.max_concurrency,
                                seed: s.seed,
                                warmup: s.warmup,
                                mock_decoding: s.mock_decoding.unwrap_or(false),
                                conversation_aware_eviction: s.conversation_aware_eviction.unwrap_or(false),
                                goodput: s.goodput.as_ref().map(|g| g.get_ref().clone()),
                                engine: s.engine.as_ref().map(|e| e.get_ref().clone()),
                                gpu: s.gpu.as_ref().map(|g| g.get_ref().clone()),
                            });
                        }
                    }
                }
            }
        }
        if let Some(mem) = &raw.slurm.mem {
            if !is_slurm_mem(mem) {
                let offset =
                    text.find("[slurm]").and_then(|at| Some(at + text[at..].find("mem")?)).unwrap_or(0);
                return Err(ConfigError::at(
                    file,
                    text,
                    offset,
                    "slurm.mem",
                    format!("`{mem}`: expected Slurm's syntax, e.g. \"16G\" or \"500M\""),
                ));
            }
        }
        let model_positions: Vec<(usize, usize)> =
            m.models.get_ref().iter().map(|s| stats::line_col(text, s.span().start)).collect();
        Ok(Experiment {
            name: raw.name,
            description: raw.description,
            points,
            lmcache,
            slurm: raw.slurm,
            file: file.to_owned(),
            model_positions,
        })
    }

    /// An error at the entry of `matrix.models` that names `model` (the file alone if none does).
    pub fn model_error(&self, model: &str, message: &str) -> ConfigError {
        let mut seen: Vec<&str> = Vec::new();
        for p in &self.points {
            if !seen.contains(&p.model.as_str()) {
                seen.push(&p.model);
            }
        }
        match seen.iter().position(|m| *m == model).and_then(|i| Some((i, self.model_positions.get(i)?))) {
            Some((i, &(line, col))) => ConfigError::config(
                &self.file,
                line,
                format!("matrix.models[{i}]"),
                format!("{message} (column {col})"),
            ),
            None => ConfigError::config(&self.file, 1, "matrix.models", message),
        }
    }
}

/// Checks the names a point's settings give: `engine`, `gpu` (the cost model's GPU registry)
/// and `goodput`; the error is at the value's span, with its key.
fn check_names(s: &PointSettings) -> std::result::Result<(), (std::ops::Range<usize>, &'static str, String)> {
    if let Some(e) = &s.engine {
        e.get_ref().parse::<crate::EngineKind>().map_err(|err| (e.span(), "engine", strip_invalid(err)))?;
    }
    if let Some(g) = &s.gpu {
        // As the emulator finds it: ignoring ASCII case.
        let registry = costmodel::Registry::builtin();
        if !registry.gpus.iter().any(|known| known.name.eq_ignore_ascii_case(g.get_ref())) {
            let known: Vec<&str> = registry.gpus.iter().map(|k| k.name.as_str()).collect();
            let message = format!(
                "unknown GPU `{}`; configs/gpus.toml knows {} (any case)",
                g.get_ref(),
                known.join(", ")
            );
            return Err((g.span(), "gpu", message));
        }
    }
    if let Some(g) = &s.goodput {
        parse_goodput(g.get_ref()).map_err(|err| (g.span(), "goodput", err))?;
    }
    Ok(())
}

/// Goodput SLOs in `vllm bench serve` form, `"ttft:300 tpot:50"` (spaces or commas between
/// pairs); the error names the pair at fault.
pub fn parse_goodput(g: &str) -> std::result::Result<stats::Slo, String> {
    let parts: Vec<&str> = g.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    stats::Slo::parse(&parts).map_err(|e| e.to_string())
}

/// `16G`, `500M`, `1024` (MiB): what `sbatch --mem` accepts.
fn is_slurm_mem(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.chars().all(|c| c.is_ascii_digit())
}

pub fn strip_invalid(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid(m) => m,
        other => other.to_string(),
    }
}

/// Checks a workload name: one of [`WORKLOADS`].
pub fn check_workload(name: &str) -> std::result::Result<(), String> {
    if WORKLOADS.contains(&name) {
        Ok(())
    } else {
        Err(format!("unknown workload `{name}`; expected one of {}", WORKLOADS.join(", ")))
    }
}
