//! The emulated engine: kvlab's own engine, in-process, bound to 127.0.0.1, on a runtime and
//! threads of its own (`emulator::thread`), so that its work never runs where the load
//! generator takes its timestamps.

use std::io::Write as _;

use super::{
    EmulatorSettings, EngineKind, EngineSettings, Guard, LaunchFuture, LaunchSpec, Launcher, RunningEngine,
};
use crate::config::Tier;
use crate::error::{EngineError, Result};

/// The emulator configuration for a launch: the tier's capacities, the run's overrides.
pub(crate) fn emulator_config(spec: &LaunchSpec) -> Result<emulator::EmulatorConfig> {
    use emulator::{EmulatorConfig, TierPreset};
    let settings = emulator_settings(spec)?;
    let redis_url = spec.redis_url.clone().unwrap_or_else(|| crate::DEFAULT_REDIS_URL.to_owned());
    let preset = match spec.tier.tier {
        Tier::Baseline => TierPreset::Baseline,
        Tier::Cpu => TierPreset::Cpu,
        Tier::Disk => TierPreset::Disk { dir: spec.disk_dir.clone() },
        Tier::Redis => TierPreset::Redis { url: redis_url },
    };
    let mut cfg = EmulatorConfig::for_tier(preset);
    cfg.model = spec.model.clone();
    if let Some(gpu) = &settings.gpu_type {
        cfg.gpu = gpu.clone();
    }
    let t = &spec.tier.emulator;
    cfg.byte_scale = t.byte_scale;
    cfg.scheduler.num_gpu_blocks = spec.gpu_blocks.or(t.num_gpu_blocks);
    if let Some(block_size) = settings.block_size {
        cfg.scheduler.block_size = block_size;
    }
    let offload = settings.offload_bytes.unwrap_or((t.offload_gib * (1u64 << 30) as f64) as u64);
    match spec.tier.tier {
        Tier::Baseline => {}
        Tier::Cpu => cfg.offload.cpu_bytes = offload,
        Tier::Disk => {
            if let Some(d) = cfg.offload.disk.as_mut() {
                d.bytes = offload;
            }
        }
        Tier::Redis => {
            if let Some(r) = cfg.offload.remote.as_mut() {
                r.bytes = offload;
            }
        }
    }
    if let Some(crate::lmcache::LmValue::Int(chunk)) = spec.lmcache.as_ref().and_then(|l| l.get("chunk_size"))
    {
        cfg.offload.chunk_tokens = *chunk as u32;
    }
    // LMCache evicts LRU; the experiment's switch selects kvcache's conversation-aware policy
    // (the request's `user` names its conversation, see the load generator).
    if settings.conversation_aware_eviction {
        cfg.offload.policy = kvcache::PolicyKind::ConversationAware;
    }
    // The redis tier keys its chunks under the run's id and deletes them when the run stops.
    cfg.run_id = Some(spec.run_id.clone());
    Ok(cfg)
}

/// The emulator's own settings, or [`EngineError::WrongEngine`] for another engine's spec.
fn emulator_settings(spec: &LaunchSpec) -> Result<&EmulatorSettings> {
    match &spec.engine {
        EngineSettings::Emulated(settings) => Ok(settings),
        _ => Err(EngineError::WrongEngine { launcher: EngineKind::Emulated, given: spec.kind() }),
    }
}

/// The in-process engine; stopping shuts the server down and waits for it.
pub(crate) struct InProcessGuard {
    server: emulator::thread::ServerThread,
}

impl InProcessGuard {
    pub(crate) async fn stop(self) -> Result<()> {
        self.server
            .shutdown()
            .await
            .map_err(|e| EngineError::launch("emulated", format!("the emulator failed: {e}")))
    }
}

pub(crate) struct EmulatedLauncher;

impl Launcher for EmulatedLauncher {
    fn name(&self) -> &'static str {
        "emulated"
    }

    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> LaunchFuture<'a> {
        Box::pin(async move {
            let cfg = emulator_config(spec)?;
            if spec.tier.tier == Tier::Redis {
                let url = spec.redis_url.clone().unwrap_or_else(|| crate::DEFAULT_REDIS_URL.to_owned());
                check_redis(&url).await?;
            }
            let port = spec.port.unwrap_or(0);
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
                EngineError::launch(
                    "emulated",
                    format!("port {port} on 127.0.0.1 is not available ({e}); choose another with --port"),
                )
            })?;
            let addr = listener.local_addr().map_err(|e| EngineError::launch("emulated", e.to_string()))?;
            let base_url = format!("http://{addr}");
            let log = spec.run_dir.join("engine.log");
            let mut file = std::fs::File::create(&log).map_err(|e| EngineError::io(&log, e))?;
            let _ = writeln!(
                file,
                "emulated engine (in-process, numbers are EMULATED) listening on {base_url}\nconfig: {}",
                serde_json::to_string(&cfg).unwrap_or_default()
            );
            let server = emulator::thread::ServerThread::start(&cfg, listener)
                .await
                .map_err(|e| EngineError::launch("emulated", e.to_string()))?;
            let guard = InProcessGuard { server };
            let mut live = AlwaysAlive;
            super::process::wait_ready(
                "emulated",
                &base_url,
                spec.ready_timeout,
                &mut live,
                &log,
                &spec.secrets,
            )
            .await?;
            Ok(RunningEngine { base_url, pid: None, guard: Guard::InProcess(guard), sidecars: Vec::new() })
        })
    }
}

struct AlwaysAlive;

impl super::process::Liveness for AlwaysAlive {
    fn exited(&mut self) -> Option<String> {
        None
    }
}

/// The redis tier needs a Redis that answers: the emulator would otherwise count failed stores
/// and go on, and the run would measure no offload at all.
async fn check_redis(url: &str) -> Result<()> {
    let refuse = |why: String| redis_unreachable("emulated", url, why);
    let client = redis::Client::open(url).map_err(|e| refuse(e.to_string()))?;
    let ping = async {
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(refuse(e.to_string())),
        Err(_) => Err(refuse("no answer to PING within 5 s".to_owned())),
    }
}

/// The refusal of a redis-tier run of `engine` whose Redis at `url` does not answer.
pub(crate) fn redis_unreachable(engine: &str, url: &str, why: impl std::fmt::Display) -> EngineError {
    EngineError::launch(
        engine,
        format!(
            "the redis tier needs a Redis server, and none answers at {} ({why}); start one \
             (redis-server --port 6379 --save '') or pass --redis-url / KVLAB_REDIS_URL",
            without_credentials(url)
        ),
    )
}

/// `redis://user:secret@host:port/0` → `redis://host:port/0`: a password never reaches a message.
pub fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        _ => url.to_owned(),
    }
}
