//! The pinned regression scenario: a RAG workload on the emulated engine in virtual time, at the
//! baseline and cpu tiers. Deterministic: the same build gives byte-identical summaries, so
//! `cargo xtask regress` without arguments gates the emulator and the statistics in CI.
//!
//! Six documents of 4k–12k tokens, each asked about four times (Poisson arrivals at 1 req/s), on
//! a GPU cache of 1100 blocks of 16 tokens: documents evict each other from the GPU, so reuse
//! comes from the offload tier (cpu) or is recomputed (baseline).

use std::path::{Path, PathBuf};

use stats::{summarize, RequestRecord, Summary, SummaryConfig};
use workload::{ArrivalSpec, LengthDist, RagSpec, Schedule, Source, WorkloadSpec};

use crate::{run_virtual, EmulatorConfig, TierPreset};

/// Why the pinned scenario could not be built, run or written.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Its workload could not be built.
    #[error("pinned scenario: {0}")]
    Workload(#[from] workload::Error),
    /// The emulator refused its configuration or failed.
    #[error("pinned scenario: {0}")]
    Emulator(#[from] crate::Error),
    /// A result file could not be written.
    #[error("pinned scenario: {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A record or summary could not be serialized.
    #[error("pinned scenario: {0}")]
    Json(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ScenarioError {
    let path = path.to_owned();
    move |source| ScenarioError::Io { path, source }
}

/// The tiers of the pinned scenario.
pub const TIERS: [&str; 2] = ["baseline", "cpu"];
/// Seed of the workload.
pub const SEED: u64 = 7;
/// Arrival rate (requests per second).
pub const REQUEST_RATE: f64 = 0.5;

/// One tier of the pinned scenario.
#[derive(Debug, Clone)]
pub struct ScenarioRun {
    /// The baseline it is checked against: `emulated-pinned-<tier>`.
    pub name: String,
    pub tier: &'static str,
    pub records: Vec<RequestRecord>,
    pub summary: Summary,
}

/// Runs the pinned scenario at every tier of [`TIERS`].
pub fn pinned() -> Result<Vec<ScenarioRun>, ScenarioError> {
    let spec = WorkloadSpec {
        source: Source::Rag(RagSpec {
            documents: 6,
            doc_len: LengthDist::Uniform { min: 8192, max: 15360 },
            queries_per_doc: 4,
            question_len: LengthDist::fixed(64),
            output_len: LengthDist::fixed(32),
        }),
        format: Default::default(),
        vocab: Default::default(),
    };
    let arrival = ArrivalSpec::new(Schedule::Poisson { rate: REQUEST_RATE });
    let plan = workload::build_plan(&spec, &arrival, SEED, None)?;
    TIERS
        .iter()
        .map(|&tier| {
            let preset = match tier {
                "cpu" => TierPreset::Cpu,
                _ => TierPreset::Baseline,
            };
            let records = run_virtual(&small_gpu(preset), &plan)?;
            let summary = emulated_summary(&records, tier);
            Ok(ScenarioRun { name: format!("emulated-pinned-{tier}"), tier, records, summary })
        })
        .collect()
}

/// The scenario's engine at `preset`: a small GPU of 1100 blocks of 16 tokens (17.6k tokens),
/// so that a few long documents evict each other, and a 16k-token context.
pub fn small_gpu(preset: TierPreset) -> EmulatorConfig {
    let mut cfg = EmulatorConfig::for_tier(preset);
    cfg.scheduler.max_model_len = 16_384;
    cfg.scheduler.num_gpu_blocks = Some(1100);
    cfg
}

/// The summary of an emulated run's records at `tier`.
pub fn emulated_summary(records: &[RequestRecord], tier: &str) -> Summary {
    summarize(
        records,
        &SummaryConfig {
            engine: "emulated".to_owned(),
            tier: tier.to_owned(),
            emulated: true,
            ..SummaryConfig::default()
        },
    )
}

impl ScenarioRun {
    /// Writes a minimal result directory (`run.toml`, `summary.json`, `requests.jsonl`) that
    /// the report's `RunData::load` and `cargo xtask report` read.
    pub fn write_result_dir(&self, dir: &Path) -> Result<(), ScenarioError> {
        let io = io_err;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let run_toml = format!(
            "v = 1\nlabel = \"{name}\"\nbaseline = \"{name}\"\nengine = \"emulated\"\nemulated = true\n\
             tier = \"{tier}\"\nvirtual_time = true\n\n[workload]\nworkload = \"rag\"\nrequest_rate = {REQUEST_RATE:?}\nseed = {SEED}\n",
            name = self.name,
            tier = self.tier,
        );
        let path = dir.join("run.toml");
        stats::write_atomic(&path, run_toml.as_bytes()).map_err(io(&path))?;
        let path = dir.join("summary.json");
        let json = serde_json::to_string_pretty(&self.summary)?;
        stats::write_atomic(&path, (json + "\n").as_bytes()).map_err(io(&path))?;
        let mut lines = String::new();
        for r in &self.records {
            lines.push_str(&serde_json::to_string(r)?);
            lines.push('\n');
        }
        let path = dir.join("requests.jsonl");
        stats::write_atomic(&path, lines.as_bytes()).map_err(io(&path))?;
        Ok(())
    }
}
