//! The model and GPU registry: `configs/models.toml` and `configs/gpus.toml`.

use serde::{Deserialize, Serialize};

use crate::KvGeometry;

/// One model as the lab serves it (a model at a given parallelism is its own entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Short name used on the command line, unique in the registry.
    pub name: String,
    /// Hugging Face repository id, as passed to `vllm serve`.
    pub hf_id: String,
    /// GPUs per pipeline stage (at least 1).
    pub tensor_parallel: u32,
    /// Pipeline stages (at least 1). GPUs = tensor_parallel x pipeline_parallel.
    pub pipeline_parallel: u32,
    /// Longest prompt + output the engine accepts.
    pub max_model_len: u32,
    pub vocab_size: u32,
    /// Total parameter count.
    pub params: u64,
    /// Parameters used per token for mixture-of-experts models; `None` (dense) means `params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_params: Option<u64>,
    /// Bytes per weight element (2 for bf16, 1 for fp8, 4 for f32).
    pub weight_dtype_bytes: u32,
    /// Model (residual stream) width.
    pub hidden_size: u32,
    /// Query heads; `num_attention_heads x kv.head_dim` is the attention width.
    pub num_attention_heads: u32,
    pub kv: KvGeometry,
}

impl ModelSpec {
    /// GPUs the model occupies.
    pub fn gpus(&self) -> u32 {
        self.tensor_parallel * self.pipeline_parallel
    }

    /// Parameters that take part in each token's forward pass.
    pub fn active_params(&self) -> u64 {
        self.active_params.unwrap_or(self.params)
    }

    /// Bytes of all the weights, all GPUs together.
    pub fn weight_bytes(&self) -> u64 {
        self.params * u64::from(self.weight_dtype_bytes)
    }

    /// Bytes of KV cache for `tokens` tokens, all GPUs together.
    pub fn kv_bytes(&self, tokens: u64) -> u64 {
        tokens * self.kv.bytes_per_token()
    }
}

/// One GPU model: datasheet numbers and the efficiencies the cost model applies to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Short name used on the command line, unique in the registry.
    pub name: String,
    pub memory_gib: f64,
    /// Peak dense (no sparsity) bf16 tensor throughput, TFLOP/s.
    pub bf16_tflops: f64,
    /// Memory bandwidth, GB/s (10^9 bytes).
    pub memory_bandwidth_gbs: f64,
    pub pcie_gen: u32,
    /// Host-device PCIe bandwidth per direction, GB/s.
    pub pcie_gbs: f64,
    /// NVLink bandwidth per GPU (0 when the GPU has none; tensor parallelism then uses PCIe).
    pub nvlink_gbs: f64,
    /// Fraction of `bf16_tflops` reached in prefill (model FLOPs utilisation), in (0, 1].
    pub compute_efficiency: f64,
    /// Fraction of `memory_bandwidth_gbs` reached in decode, in (0, 1].
    pub bandwidth_efficiency: f64,
    /// Fraction of `pcie_gbs` reached by KV loads from host memory, in (0, 1].
    pub pcie_efficiency: f64,
}

/// A storage or network link: bandwidth and a fixed latency per transfer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Sustained bandwidth, GB/s (10^9 bytes).
    pub bandwidth_gbs: f64,
    /// Fixed cost per load, microseconds.
    pub latency_us: f64,
}

/// Engine-level constants of the cost model that do not depend on the GPU model; the `[cost]`
/// table of `gpus.toml`. A tier configuration may override `disk` and `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostParams {
    /// Fixed cost of every engine step (scheduling, sampling, kernel launches), ms.
    pub step_overhead_ms: f64,
    /// Extra fixed cost of a step that contains prefill work, ms.
    pub prefill_overhead_ms: f64,
    /// Latency of one tensor-parallel all-reduce, microseconds (two per layer per step).
    pub allreduce_latency_us: f64,
    /// Fixed cost of one KV load from host memory (CPU tier), microseconds.
    pub cpu_latency_us: f64,
    /// Local disk, read into host memory before the PCIe copy.
    pub disk: LinkSpec,
    /// Remote store (Redis), read over the network into host memory before the PCIe copy.
    pub remote: LinkSpec,
}

/// The contents of a `gpus.toml` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpusFile {
    pub cost: CostParams,
    #[serde(rename = "gpu")]
    pub gpus: Vec<GpuSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(rename = "model")]
    models: Vec<ModelSpec>,
}

/// A registry file that cannot be used, or a name not in the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// `FILE:LINE: FIELD: message`.
    #[error(transparent)]
    Parse(#[from] stats::Located),
    #[error("unknown {what} `{name}`; known: {known}")]
    Unknown { what: &'static str, name: String, known: String },
}

/// The models, the GPUs and the engine constants of the cost model.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    pub models: Vec<ModelSpec>,
    pub gpus: Vec<GpuSpec>,
    pub cost: CostParams,
}

const MODELS_TOML: &str = include_str!("../../../configs/models.toml");
const GPUS_TOML: &str = include_str!("../../../configs/gpus.toml");

impl Registry {
    /// The registry shipped with kvlab (`configs/models.toml` and `configs/gpus.toml`, embedded at
    /// build time so the binary runs from anywhere).
    pub fn builtin() -> Registry {
        // The embedded files are checked by this crate's tests; a failure here is a build defect.
        Registry::parse(MODELS_TOML, "configs/models.toml", GPUS_TOML, "configs/gpus.toml")
            .unwrap_or_else(|e| panic!("embedded registry is invalid: {e}"))
    }

    /// Both files; `*_file` names them in errors.
    pub fn parse(
        models_text: &str,
        models_file: &str,
        gpus_text: &str,
        gpus_file: &str,
    ) -> Result<Registry, RegistryError> {
        let models = Registry::parse_models(models_text, models_file)?;
        let GpusFile { cost, gpus } = Registry::parse_gpus(gpus_text, gpus_file)?;
        Ok(Registry { models, gpus, cost })
    }

    /// A `models.toml` (an array of `[[model]]` tables). Unknown keys, missing keys, wrong types,
    /// duplicate names and impossible values are errors naming the file, line and key.
    pub fn parse_models(text: &str, file: &str) -> Result<Vec<ModelSpec>, RegistryError> {
        let parsed: ModelsFile = stats::parse_toml(text).map_err(|e| e.in_file(file))?;
        let mut seen = Vec::new();
        for (i, m) in parsed.models.iter().enumerate() {
            let at = |key: &str, message: String| table_error(text, file, ("model", i), key, message);
            if seen.contains(&m.name) {
                return Err(at("name", format!("model `{}` is defined twice", m.name)));
            }
            seen.push(m.name.clone());
            for (key, v) in [
                ("tensor_parallel", m.tensor_parallel),
                ("pipeline_parallel", m.pipeline_parallel),
                ("max_model_len", m.max_model_len),
                ("weight_dtype_bytes", m.weight_dtype_bytes),
                ("hidden_size", m.hidden_size),
                ("num_attention_heads", m.num_attention_heads),
                ("kv.layers", m.kv.layers),
                ("kv.kv_heads", m.kv.kv_heads),
                ("kv.head_dim", m.kv.head_dim),
                ("kv.dtype_bytes", m.kv.dtype_bytes),
            ] {
                if v == 0 {
                    return Err(at(key, "must be at least 1".into()));
                }
            }
            if m.params == 0 {
                return Err(at("params", "must be at least 1".into()));
            }
            if m.active_params.is_some_and(|a| a == 0 || a > m.params) {
                return Err(at("active_params", "must be between 1 and `params`".into()));
            }
        }
        Ok(parsed.models)
    }

    /// A `gpus.toml` (a `[cost]` table and an array of `[[gpu]]` tables); errors as for
    /// [`Registry::parse_models`].
    pub fn parse_gpus(text: &str, file: &str) -> Result<GpusFile, RegistryError> {
        let parsed: GpusFile = stats::parse_toml(text).map_err(|e| e.in_file(file))?;
        let mut seen = Vec::new();
        for (i, g) in parsed.gpus.iter().enumerate() {
            let at = |key: &str, message: String| table_error(text, file, ("gpu", i), key, message);
            if seen.contains(&g.name) {
                return Err(at("name", format!("GPU `{}` is defined twice", g.name)));
            }
            seen.push(g.name.clone());
            for (key, v) in [
                ("memory_gib", g.memory_gib),
                ("bf16_tflops", g.bf16_tflops),
                ("memory_bandwidth_gbs", g.memory_bandwidth_gbs),
                ("pcie_gbs", g.pcie_gbs),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(at(key, "must be a positive number".into()));
                }
            }
            if !(g.nvlink_gbs.is_finite() && g.nvlink_gbs >= 0.0) {
                return Err(at("nvlink_gbs", "must be 0 or a positive number".into()));
            }
            for (key, v) in [
                ("compute_efficiency", g.compute_efficiency),
                ("bandwidth_efficiency", g.bandwidth_efficiency),
                ("pcie_efficiency", g.pcie_efficiency),
            ] {
                if !(v > 0.0 && v <= 1.0) {
                    return Err(at(key, "must be in (0, 1]".into()));
                }
            }
        }
        let c = &parsed.cost;
        for (section, key, v) in [
            ("[cost]", "step_overhead_ms", c.step_overhead_ms),
            ("[cost]", "prefill_overhead_ms", c.prefill_overhead_ms),
            ("[cost]", "allreduce_latency_us", c.allreduce_latency_us),
            ("[cost]", "cpu_latency_us", c.cpu_latency_us),
            ("[cost.disk]", "latency_us", c.disk.latency_us),
            ("[cost.remote]", "latency_us", c.remote.latency_us),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                let message = "must be 0 or a positive number".into();
                return Err(key_error(text, file, section, key, message));
            }
        }
        for (section, v) in [("[cost.disk]", c.disk.bandwidth_gbs), ("[cost.remote]", c.remote.bandwidth_gbs)]
        {
            if !(v.is_finite() && v > 0.0) {
                let message = "must be a positive number".into();
                return Err(key_error(text, file, section, "bandwidth_gbs", message));
            }
        }
        Ok(parsed)
    }

    /// The model called `name` (or whose `hf_id` is `name`).
    pub fn model(&self, name: &str) -> Result<&ModelSpec, RegistryError> {
        self.models.iter().find(|m| m.name == name || m.hf_id == name).ok_or_else(|| RegistryError::Unknown {
            what: "model",
            name: name.to_owned(),
            known: self.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The GPU called `name`.
    pub fn gpu(&self, name: &str) -> Result<&GpuSpec, RegistryError> {
        self.gpus.iter().find(|g| g.name == name).ok_or_else(|| RegistryError::Unknown {
            what: "GPU",
            name: name.to_owned(),
            known: self.gpus.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// The key of a `key = value` line, if `line` is one.
fn key_of_line(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let ok =
        !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    ok.then(|| key.to_owned())
}

/// An error about `key` (`kv.layers`: `layers` of the `kv` table within) of the `index`-th
/// `[[array]]` table: at the key's line when the table has it, else at the table's header.
fn table_error(
    text: &str,
    file: &str,
    (array, index): (&str, usize),
    key: &str,
    message: String,
) -> RegistryError {
    let lines: Vec<&str> = text.lines().collect();
    let header = format!("[[{array}]]");
    let start = lines.iter().enumerate().filter(|(_, l)| l.trim() == header).nth(index).map_or(0, |(n, _)| n);
    // The table runs until the next array table header.
    let end = lines
        .get(start + 1..)
        .unwrap_or_default()
        .iter()
        .position(|l| l.trim_start().starts_with("[["))
        .map_or(lines.len(), |n| start + 1 + n);
    let last = key.rsplit('.').next().unwrap_or(key);
    let line = (start..end).find(|&n| key_of_line(lines[n]).as_deref() == Some(last)).unwrap_or(start);
    RegistryError::Parse(stats::Located::new(file, line + 1, format!("{array}[{index}].{key}"), message))
}

/// An error about the first line that sets `key` after the table header `section`.
fn key_error(text: &str, file: &str, section: &str, key: &str, message: String) -> RegistryError {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim() == section).unwrap_or(0);
    let line = (start..lines.len()).find(|&i| key_of_line(lines[i]).as_deref() == Some(key)).unwrap_or(start);
    let field = format!("{}.{key}", section.trim_matches(['[', ']']));
    RegistryError::Parse(stats::Located::new(file, line + 1, field, message))
}
