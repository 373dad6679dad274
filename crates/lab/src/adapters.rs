//! The calls into the sibling crates (workload, loadgen, samplers, emulator), each behind one
//! small function so the run lifecycle reads as lab types only.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::error::{Result, RunError};
use schema::error::ConfigError;

/// What the lab asks the workload crate for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkloadRequest {
    pub workload: String,
    pub num_requests: u32,
    pub prompt_len: u32,
    pub gen_len: u32,
    /// Requests per second; infinite sends everything at once.
    pub request_rate: f64,
    /// 1.0 = Poisson; `vllm bench serve` semantics.
    pub burstiness: f64,
    pub max_concurrency: Option<u32>,
    pub warmup: u32,
    pub time_limit_s: Option<f64>,
    pub seed: u64,
    /// Text prompts (1 ASCII character = 1 token) instead of token IDs.
    pub text_prompts: bool,
    /// Token ids are drawn from `start..end`: a model whose vocabulary is smaller than the
    /// default range (the lab's tiny Llama has 8,192) gets ids it knows. `None`: the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab: Option<(u32, u32)>,
    /// The engine's GPU KV cache in tokens, where the lab knows it (the emulator, a run that
    /// sets the block count): the reuse workloads are sized against it (see
    /// [`shared_prefix_groups`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_cache_tokens: Option<u64>,
}

/// Shared-prefix groups of a run: without a known GPU cache, one per five requests (1 to 8).
/// With one, enough distinct prefixes that together they fill the GPU cache 1.5 times over, so
/// that reuse outgrows it and an offload tier serves the prefixes the GPU evicted, each prefix
/// still asked at least twice (at most `num_requests / 2` groups).
pub(crate) fn shared_prefix_groups(num_requests: u32, prefix_len: u32, gpu_cache_tokens: Option<u64>) -> u32 {
    let default = (num_requests / 5).clamp(1, 8);
    let Some(cache) = gpu_cache_tokens else { return default };
    let outgrow = (cache * 3).div_ceil(2 * u64::from(prefix_len.max(1)));
    let most = (num_requests / 2).max(1);
    u32::try_from(outgrow).unwrap_or(u32::MAX).max(default).min(most).max(1)
}

/// Builds the plan: `shared-prefix` (groups of requests sharing a long prefix), `multi-turn`
/// (sessions whose every turn resends the conversation), `random` (no reuse), `repeat` (each
/// prompt asked twice: the first half of the requests, then the same prompts again in the same
/// order, as LMCache's long-context reuse benchmark).
pub(crate) fn build_plan(w: &WorkloadRequest) -> Result<workload::Plan> {
    use workload::{
        ArrivalSpec, LengthDist, PromptFormat, RandomSpec, Schedule, SecondsDist, SessionsSpec,
        SharedPrefixSpec, Source, WorkloadSpec,
    };
    let n = u64::from(w.num_requests);
    let source = match w.workload.as_str() {
        "shared-prefix" => {
            let suffix = (w.prompt_len / 16).clamp(1, 256);
            let prefix_len = w.prompt_len.saturating_sub(suffix).max(1);
            Source::SharedPrefix(SharedPrefixSpec {
                num_requests: n,
                groups: shared_prefix_groups(w.num_requests, prefix_len, w.gpu_cache_tokens),
                prefix_len,
                suffix_len: LengthDist::fixed(suffix),
                output_len: LengthDist::fixed(w.gen_len),
            })
        }
        "multi-turn" => {
            let turns = 4;
            Source::Sessions(SessionsSpec {
                sessions: w.num_requests.div_ceil(turns).max(1),
                turns: LengthDist::fixed(turns),
                system_prompt_len: (w.prompt_len / 2).max(1),
                tools_len: 0,
                user_len: LengthDist::fixed((w.prompt_len / 8).max(1)),
                output_len: LengthDist::fixed(w.gen_len),
                think_time: SecondsDist::Fixed { value: 0.2 },
            })
        }
        "random" | "repeat" => Source::Random(RandomSpec {
            num_requests: n,
            prompt_len: LengthDist::fixed(w.prompt_len),
            output_len: LengthDist::fixed(w.gen_len),
            prefix_len: 0,
        }),
        other => return Err(RunError::invalid(schema::config::check_workload(other).unwrap_err())),
    };
    let spec = WorkloadSpec {
        source,
        format: if w.text_prompts { PromptFormat::Text } else { PromptFormat::Tokens },
        vocab: w.vocab.map_or_else(Default::default, |(start, end)| workload::Vocab { start, end }),
    };
    let schedule = if w.request_rate.is_infinite() {
        Schedule::Constant { rate: f64::INFINITY }
    } else if (w.burstiness - 1.0).abs() < f64::EPSILON {
        Schedule::Poisson { rate: w.request_rate }
    } else {
        Schedule::Gamma { rate: w.request_rate, burstiness: w.burstiness }
    };
    let arrival = ArrivalSpec {
        schedule,
        max_concurrency: w.max_concurrency,
        warmup: w.warmup,
        duration_s: w.time_limit_s,
    };
    let mut plan = workload::build_plan(&spec, &arrival, w.seed, None)
        .map_err(|e| RunError::invalid(format!("workload: {e}")))?;
    if w.workload == "repeat" {
        repeat_first_half(&mut plan);
    }
    Ok(plan)
}

/// Request `half + i` asks request `i`'s prompt again (`half` = the first half, rounded up);
/// both carry group `i`. Send times and output lengths stay the schedule's.
fn repeat_first_half(plan: &mut workload::Plan) {
    let half = plan.requests.len().div_ceil(2);
    for i in 0..plan.requests.len() {
        let first = i % half;
        if i >= half {
            let (prompt, len) = (plan.requests[first].prompt.clone(), plan.requests[first].prompt_len);
            plan.requests[i].prompt = prompt;
            plan.requests[i].prompt_len = len;
        }
        plan.requests[i].meta.group = Some(first as u64);
    }
}

/// Samplers of a run: disk (on the tier's directory), system CPU, the engine's process tree,
/// the engine's `/metrics`, NVML where present.
pub(crate) struct Samplers {
    set: samplers::SamplerSet,
}

pub(crate) fn start_samplers(
    dir: &Path,
    origin: Instant,
    disk_dir: &Path,
    pid: Option<u32>,
    metrics_url: Option<String>,
    sidecars: &[engines::SidecarInfo],
) -> Result<Samplers, samplers::SamplerError> {
    use samplers::{cpu, disk, engine, gpu, SamplerSet, SamplerSetConfig};
    let mut set = SamplerSet::new(SamplerSetConfig::new(dir, origin))?;
    let mut add =
        |name: &str, s: std::result::Result<Box<dyn samplers::Sampler>, samplers::SamplerError>| match s {
            Ok(s) => {
                if let Err(e) = set.spawn(s) {
                    set.record_unavailable(name, &e);
                }
            }
            Err(e) => set.record_unavailable(name, &e),
        };
    add("disk", disk::DiskSampler::for_dir(disk_dir).map(|s| Box::new(s) as Box<dyn samplers::Sampler>));
    add("cpu", Ok(Box::new(cpu::SystemSampler::new())));
    let pid = pid.unwrap_or_else(std::process::id);
    add(
        "process",
        cpu::ProcessSampler::new(cpu::ProcessConfig { pid: pid as i32, scope: cpu::ProcessScope::Tree })
            .map(|s| Box::new(s) as Box<dyn samplers::Sampler>),
    );
    if let Some(url) = metrics_url {
        add("engine", Ok(Box::new(engine::EngineMetricsSampler::new(engine::EngineMetricsConfig::new(url)))));
    }
    // A sidecar's metrics (LMCache's `lmcache_mp_*`) on the same clock, in `<name>.csv`.
    for sidecar in sidecars {
        if let Some(url) = &sidecar.metrics_url {
            let config = engine::EngineMetricsConfig {
                name: sidecar.name.to_owned(),
                ..engine::EngineMetricsConfig::new(url)
            };
            add(sidecar.name, Ok(Box::new(engine::EngineMetricsSampler::new(config))));
        }
    }
    add("gpu", gpu::NvmlSampler::new().map(|s| Box::new(s) as Box<dyn samplers::Sampler>));
    Ok(Samplers { set })
}

impl Samplers {
    /// Asks the running samplers for a sample now (the engine's counters at the end of the
    /// warm-up).
    pub(crate) fn sample_now(&self) -> samplers::SampleNow {
        self.set.sample_now()
    }

    /// Stops every sampler; returns their statuses as JSON for env.json.
    pub(crate) fn stop(self) -> serde_json::Value {
        serde_json::to_value(self.set.stop()).unwrap_or(serde_json::Value::Null)
    }
}

/// GPU and driver as NVML sees them, or why not.
pub(crate) fn gpu_info() -> serde_json::Value {
    match samplers::gpu::NvmlSampler::new() {
        Ok(nvml) => serde_json::json!({
            "devices": nvml.devices().map(|d| serde_json::to_value(d).unwrap_or_default()).unwrap_or_default(),
            "driver": nvml.driver_version().ok(),
        }),
        Err(e) => serde_json::json!({ "devices": [], "absent": e.to_string() }),
    }
}

/// A run of the plan by the load generator, writing requests.jsonl/csv into `dir`;
/// [`Drive::run`] returns the summary and what `summary.json` is to hold, which the lab writes
/// once, with what it adds.
pub(crate) struct Drive<'a> {
    /// Called between the warm-up requests and the measured ones.
    pub(crate) on_measured_start: Option<loadgen::MeasuredStartHook>,
    pub(crate) plan: &'a workload::Plan,
    pub(crate) base_url: &'a str,
    pub(crate) model: &'a str,
    pub(crate) summary: stats::SummaryConfig,
    /// The result directory (`requests.jsonl`, `requests.csv`, `summary.json`).
    pub(crate) dir: &'a Path,
    /// The run clock's zero.
    pub(crate) origin: Instant,
    pub(crate) progress: bool,
    /// Cancelled on Ctrl-C / SIGTERM: the requests in flight are recorded as interrupted.
    pub(crate) stop: tokio_util::sync::CancellationToken,
}

/// What the load generator's run gave: its summary, `summary.json`'s content so far, and the
/// hint for the first failed request that the lab recognises ([`crate::verdict::failure_hint`]).
pub(crate) struct DriveOutcome {
    pub(crate) summary: stats::Summary,
    pub(crate) file: serde_json::Value,
    pub(crate) hint: Option<String>,
}

impl Drive<'_> {
    pub(crate) async fn run(self) -> Result<DriveOutcome> {
        let mut cfg = loadgen::LoadgenConfig::new(self.base_url);
        cfg.stop = Some(self.stop);
        cfg.model = Some(self.model.to_owned());
        cfg.progress = self.progress;
        cfg.max_failed_fraction = 1.0;
        cfg.stall_timeout = std::time::Duration::from_secs(120);
        cfg.summary = self.summary;
        cfg.on_measured_start = self.on_measured_start;
        cfg.summary_file = loadgen::SummaryOutput::Caller;
        let mut writer = loadgen::ResultWriter::in_dir(self.dir)?;
        let outcome = loadgen::run(self.plan, &cfg, &mut writer, self.origin).await?;
        // Only for a run with refused requests, over the records it holds in memory, after it.
        let refused = outcome.summary.failed_by_class.contains_key("http_status");
        let hint = refused
            .then(|| {
                outcome.records.iter().filter_map(|r| r.error.as_ref()).find_map(crate::verdict::failure_hint)
            })
            .flatten();
        Ok(DriveOutcome { file: outcome.summary_json(), summary: outcome.summary, hint })
    }
}

/// After an interrupted run (or one whose engine died): `requests.csv` and `summary.json` over
/// the records that `requests.jsonl` holds (every request that finished before the end; a torn
/// last line is skipped with a warning), so that `completed + failed` equals its records.
/// `marks` (`"interrupted": true`, `engine_exited_at_s`) are added to what `summary.json` is to
/// hold (returned, for [`write_summary`]), with the keys of the load generator's `file` that the
/// summary does not have (`connection_warmup`, `client_threads`) when it ended. A missing
/// `requests.jsonl` means no request finished. `requests.csv` is written atomically.
pub(crate) fn finish_partial(
    dir: &Path,
    summary: &stats::SummaryConfig,
    marks: &serde_json::Map<String, serde_json::Value>,
    file: Option<&serde_json::Value>,
) -> Result<(stats::Summary, serde_json::Value)> {
    let jsonl = dir.join("requests.jsonl");
    let text = match std::fs::read_to_string(&jsonl) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(RunError::io(&jsonl, e)),
    };
    let lines = stats::parse_json_lines::<stats::RequestRecord>(&text)
        .map_err(|e| ConfigError::Config(e.in_file(jsonl.display().to_string())))?;
    if let Some(t) = &lines.torn {
        eprintln!("warning: {}", t.warning(&jsonl.display().to_string()));
    }
    let mut records: Vec<stats::RequestRecord> = lines.items.into_iter().map(|(_, r)| r).collect();
    records.sort_by_key(|r| r.id);
    let csv_path = dir.join("requests.csv");
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |source: csv::Error| RunError::Csv { what: csv_path.display().to_string(), source };
    w.write_record(stats::csv_header()).map_err(csv_err)?;
    for r in &records {
        w.write_record(stats::csv_row(r)).map_err(csv_err)?;
    }
    let csv = w.into_inner().map_err(|e| RunError::io(&csv_path, e.into_error()))?;
    write_atomic(&csv_path, &csv)?;
    let summary = stats::summarize(&records, summary);
    let summary_path = dir.join("summary.json");
    let json_err = |source| RunError::Json { what: summary_path.display().to_string(), source };
    let mut value = serde_json::to_value(&summary).map_err(json_err)?;
    if let Some(obj) = value.as_object_mut() {
        if let Some(loadgen) = file.and_then(serde_json::Value::as_object) {
            for (k, v) in loadgen {
                obj.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        obj.extend(marks.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok((summary, value))
}

/// Writes the run's `summary.json`, whole or not at all (once per run).
pub(crate) fn write_summary(dir: &Path, file: &serde_json::Value) -> Result<()> {
    let path = dir.join("summary.json");
    let json_err = |source| RunError::Json { what: path.display().to_string(), source };
    let text = serde_json::to_string_pretty(file).map_err(json_err)?;
    write_atomic(&path, (text + "\n").as_bytes())
}

/// Prompt tokens by source over the run, from `samples/engine.csv` (`report::tokens_by_source`);
/// `None` without the file or the engine's counter.
pub(crate) fn tokens_by_source(
    dir: &Path,
    tier: schema::config::Tier,
    origin: report::CounterOrigin,
) -> Option<BTreeMap<String, u64>> {
    let path = dir.join("samples/engine.csv");
    if !path.is_file() {
        return None;
    }
    let table = report::Table::read(&path).ok()?;
    report::tokens_by_source(&table, tier.as_str(), origin)
}

/// [`stats::write_atomic`] with the lab's error: whole or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    stats::write_atomic(path, bytes).map_err(|e| RunError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_groups_outgrow_the_gpu_cache() {
        // (requests, prefix tokens, GPU cache tokens) -> groups
        let cases = [
            (100, 1920, None, 8),          // no cache known: one group per 5 requests, at most 8
            (100, 1920, Some(32_768), 26), // the main command: 26 x 1920 = 50k > 1.5 x 32k
            (12, 960, Some(32_768), 6),    // too few requests: each prefix still asked twice
            (100, 1920, Some(5_120), 8),   // a small cache: the default already outgrows it
            (1, 100, Some(1 << 20), 1),
        ];
        for (n, prefix, cache, want) in cases {
            assert_eq!(shared_prefix_groups(n, prefix, cache), want, "{n} requests, {prefix}, {cache:?}");
        }
    }

    #[test]
    fn repeat_asks_the_first_half_again_in_order() {
        let w = WorkloadRequest {
            workload: "repeat".into(),
            num_requests: 6,
            prompt_len: 64,
            gen_len: 1,
            request_rate: f64::INFINITY,
            burstiness: 1.0,
            max_concurrency: Some(1),
            warmup: 3,
            time_limit_s: None,
            seed: 1,
            text_prompts: false,
            vocab: None,
            gpu_cache_tokens: None,
        };
        let plan = build_plan(&w).unwrap();
        let r = &plan.requests;
        assert_eq!(r.len(), 6);
        for i in 0..3 {
            assert_eq!(r[i].prompt, r[i + 3].prompt, "request {} repeats {i}", i + 3);
            assert_eq!(r[i].meta.group, Some(i as u64));
        }
        assert_ne!(r[0].prompt, r[1].prompt, "the first round is distinct prompts");
    }
}
