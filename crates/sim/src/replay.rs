//! Replaying one trace through one cache configuration.

use costmodel::{CostModel, TierLink, TtftQuery};
use kvcache::{
    AccessInfo, BlockHash, CacheConfig, ConversationAware, ConversationWeights, EvictionPolicy, Learned,
    LogisticModel, PolicyKind, Tier, TierConfig, TieredCache,
};
use serde::{Deserialize, Serialize};

use crate::trace::SimTrace;

/// A policy with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicySpec {
    /// A policy by name, with default parameters.
    Kind { policy: PolicyKind },
    /// Conversation-aware with these weights.
    Conversation { weights: ConversationWeights },
    /// Learned with this model.
    Learned { model: LogisticModel },
}

impl PolicySpec {
    pub fn kind(self) -> PolicyKind {
        match self {
            PolicySpec::Kind { policy } => policy,
            PolicySpec::Conversation { .. } => PolicyKind::ConversationAware,
            PolicySpec::Learned { .. } => PolicyKind::Learned,
        }
    }

    /// The policy's name as on the command line.
    pub fn name(self) -> &'static str {
        self.kind().as_str()
    }

    /// Whether the policy reads [`AccessInfo`] (the replay builds it only then).
    fn needs_info(self) -> bool {
        !matches!(
            self.kind(),
            PolicyKind::Lru | PolicyKind::Fifo | PolicyKind::Lfu | PolicyKind::S3Fifo | PolicyKind::Sieve
        )
    }

    fn build(self) -> Box<dyn EvictionPolicy> {
        match self {
            PolicySpec::Kind { policy } => policy.build(),
            PolicySpec::Conversation { weights } => ConversationAware::boxed(weights),
            PolicySpec::Learned { model } => Learned::boxed(model),
        }
    }
}

impl From<PolicyKind> for PolicySpec {
    fn from(policy: PolicyKind) -> Self {
        PolicySpec::Kind { policy }
    }
}

/// How the tiers of a replay share blocks.
///
/// With one tier both models are the same cache; they differ only when tiers are stacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TierModel {
    /// vLLM with LMCache, as the emulator models it: every tier is a cache of its own that sees
    /// every request's blocks (vLLM's GPU prefix cache keeps what it computed or loaded; LMCache
    /// writes each stored chunk to every backend and writes a lower tier's hit back to the CPU),
    /// each evicting on its own, so a block may be in several tiers at once. A request hits the
    /// run of its leading blocks on the GPU, and beyond it the blocks of the offload tiers' own
    /// leading run (LMCache looks a prompt up from its first chunk), each from the fastest
    /// offload tier holding it.
    #[default]
    WriteThrough,
    /// A hierarchy in which each block is in one tier at most: a hit in a lower tier moves the
    /// block to the top tier, overflow moves victims one tier down ([`kvcache::TieredCache`]).
    /// The tiers' capacities add up; a request hits the run of its leading blocks resident in
    /// any tier.
    Exclusive,
}

impl TierModel {
    pub const ALL: [TierModel; 2] = [TierModel::WriteThrough, TierModel::Exclusive];

    /// The model's name as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TierModel::WriteThrough => "write-through",
            TierModel::Exclusive => "exclusive",
        }
    }
}

impl std::fmt::Display for TierModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TierModel {
    type Err = kvcache::ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TierModel::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| kvcache::ParseNameError {
            what: "tier model",
            got: s.to_owned(),
            expected: TierModel::ALL.map(TierModel::as_str).join(", "),
        })
    }
}

/// The tiers of one replay, in either [`TierModel`].
enum Tiers {
    Exclusive(TieredCache),
    /// One single-tier cache per tier of non-zero capacity, in lookup order.
    WriteThrough(Vec<(Tier, TieredCache)>),
}

impl Tiers {
    fn new(model: TierModel, tiers: &[TierConfig], block_tokens: u32, policy: PolicySpec) -> Tiers {
        let cache = |tiers: Vec<TierConfig>| {
            let cfg = CacheConfig { tiers, policy: policy.kind(), block_tokens };
            TieredCache::with_policies(cfg, &mut |_| policy.build())
        };
        match model {
            TierModel::Exclusive => Tiers::Exclusive(cache(tiers.to_vec())),
            TierModel::WriteThrough => {
                // As `TieredCache::new`: lookup order, a tier listed twice gets the sum, empty
                // tiers are left out.
                let mut merged: Vec<TierConfig> = Vec::new();
                let mut sorted = tiers.to_vec();
                sorted.sort_by_key(|t| t.tier);
                for t in sorted {
                    match merged.last_mut() {
                        Some(last) if last.tier == t.tier => {
                            last.capacity_blocks = last.capacity_blocks.saturating_add(t.capacity_blocks)
                        }
                        _ => merged.push(t),
                    }
                }
                merged.retain(|t| t.capacity_blocks > 0);
                Tiers::WriteThrough(merged.into_iter().map(|t| (t.tier, cache(vec![t]))).collect())
            }
        }
    }

    /// The tier serving each block of the leading run of `keys` that hits, into `out`.
    fn lookup(&self, keys: &[BlockHash], out: &mut Vec<Tier>) {
        out.clear();
        match self {
            Tiers::Exclusive(cache) => out.extend(keys.iter().map_while(|&k| cache.tier_of(k))),
            Tiers::WriteThrough(caches) => {
                let (gpu, offload) = match caches.split_first() {
                    Some(((Tier::Gpu, gpu), rest)) => (Some(gpu), rest),
                    _ => (None, &caches[..]),
                };
                if let Some(gpu) = gpu {
                    out.extend(keys.iter().take_while(|&&k| gpu.tier_of(k).is_some()).map(|_| Tier::Gpu));
                }
                let on_gpu = out.len();
                for (j, &key) in keys.iter().enumerate() {
                    let Some((tier, _)) = offload.iter().find(|(_, c)| c.tier_of(key).is_some()) else {
                        break;
                    };
                    if j >= on_gpu {
                        out.push(*tier);
                    }
                }
            }
        }
    }

    /// Every tier takes the request's blocks (the exclusive cache promotes and demotes).
    fn touch(&mut self, keys: &[BlockHash], infos: &[AccessInfo]) {
        match self {
            Tiers::Exclusive(cache) => cache.touch(keys, infos),
            Tiers::WriteThrough(caches) => caches.iter_mut().for_each(|(_, c)| c.touch(keys, infos)),
        }
    }
}

/// One replay: tiers (capacities in blocks of the trace's block size), a policy, the requests
/// that count, and optionally a cost model for TTFT.
#[derive(Debug, Clone)]
pub struct ReplayConfig<'a> {
    /// In lookup order; `u64::MAX` blocks is unbounded.
    pub tiers: Vec<TierConfig>,
    /// How the tiers share blocks (matters only with more than one tier).
    pub tier_model: TierModel,
    pub policy: PolicySpec,
    /// Only requests with `from_ms <= at_ms < to_ms` are counted; the others still warm the
    /// cache (a held-out time range).
    pub from_ms: u64,
    pub to_ms: u64,
    /// Estimates TTFT saved per request (alone on the engine, no queueing).
    pub cost: Option<&'a CostModel>,
    /// vLLM's `max_num_batched_tokens` for the TTFT estimate.
    pub max_num_batched_tokens: u32,
}

impl ReplayConfig<'_> {
    /// A single tier of `capacity_blocks`, counting every request, no cost model.
    pub fn single(tier: Tier, capacity_blocks: u64, policy: PolicySpec) -> ReplayConfig<'static> {
        ReplayConfig {
            tiers: vec![TierConfig { tier, capacity_blocks }],
            tier_model: TierModel::default(),
            policy,
            from_ms: 0,
            to_ms: u64::MAX,
            cost: None,
            max_num_batched_tokens: 8192,
        }
    }
}

/// What a replay measured, over the counted requests.
///
/// Invariants: `hit_blocks <= query_blocks`, `hit_tokens <= query_tokens`, the per-tier hits
/// sum to the totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayResult {
    pub requests: u64,
    pub query_blocks: u64,
    pub hit_blocks: u64,
    /// Prompt tokens (the last block of a prompt may be partial).
    pub query_tokens: u64,
    pub hit_tokens: u64,
    /// Hit blocks and tokens per tier, in [`Tier::ALL`] order (gpu, cpu, disk, remote).
    pub tier_hit_blocks: [u64; 4],
    pub tier_hit_tokens: [u64; 4],
    /// Mean over requests of each request's token hit ratio (requests with an empty prompt
    /// count 0).
    pub mean_request_token_hit_ratio: f64,
    /// Prompt tokens not recomputed: hit tokens, capped at `input - 1` per request (an engine
    /// always computes the last prompt token).
    pub prefill_tokens_saved: u64,
    /// Sum over counted requests of TTFT without cache minus TTFT with the hit (seconds), when
    /// a cost model was given: each hit block is loaded at the speed of the tier that served it
    /// (a GPU hit loads nothing).
    pub ttft_saved_s: Option<f64>,
}

impl ReplayResult {
    /// Pooled block-weighted hit ratio: hit blocks over queried blocks.
    pub fn block_hit_ratio(&self) -> f64 {
        ratio(self.hit_blocks, self.query_blocks)
    }

    /// Pooled token-weighted hit ratio: hit tokens over prompt tokens.
    pub fn token_hit_ratio(&self) -> f64 {
        ratio(self.hit_tokens, self.query_tokens)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn tier_index(t: Tier) -> usize {
    match t {
        Tier::Gpu => 0,
        Tier::Cpu => 1,
        Tier::Disk => 2,
        Tier::Remote => 3,
    }
}

/// The link a tier's hits are loaded over; `None`: the GPU (no load).
fn link(t: Tier) -> Option<TierLink> {
    match t {
        Tier::Gpu => None,
        Tier::Cpu => Some(TierLink::Cpu),
        Tier::Disk => Some(TierLink::Disk),
        Tier::Remote => Some(TierLink::Remote),
    }
}

/// Replays `trace` through tiers built from `cfg`: each request looks up the run of its leading
/// blocks that hits (see [`TierModel`]), then touches all of its blocks.
pub fn replay(trace: &SimTrace, cfg: &ReplayConfig<'_>) -> ReplayResult {
    let policy = cfg.policy;
    let mut tiers = Tiers::new(cfg.tier_model, &cfg.tiers, trace.block_tokens, policy);
    let needs_info = policy.needs_info();
    let mut infos: Vec<AccessInfo> = Vec::new();
    let mut served: Vec<Tier> = Vec::new();
    let mut res = ReplayResult {
        requests: 0,
        query_blocks: 0,
        hit_blocks: 0,
        query_tokens: 0,
        hit_tokens: 0,
        tier_hit_blocks: [0; 4],
        tier_hit_tokens: [0; 4],
        mean_request_token_hit_ratio: 0.0,
        prefill_tokens_saved: 0,
        ttft_saved_s: cfg.cost.map(|_| 0.0),
    };
    let mut ratio_sum = 0.0;
    let b = u64::from(trace.block_tokens);
    for req in &trace.requests {
        if req.at_ms >= cfg.to_ms {
            break; // requests are sorted by time: nothing later counts
        }
        let keys = trace.keys_of(req);
        let counted = (cfg.from_ms..cfg.to_ms).contains(&req.at_ms);
        if counted {
            tiers.lookup(keys, &mut served);
            let n = keys.len();
            let hit = served.len();
            // Tokens of block j: the last block of a prompt may be partial.
            let last_tokens = if n == 0 { 0 } else { trace.block_weight(req, n - 1) };
            let tokens = |j: usize| if j + 1 == n { last_tokens } else { b };
            let query_tokens = if n == 0 { 0 } else { (n as u64 - 1) * b + last_tokens };
            // Tokens cached per tier, at most `input - 1` in all (an engine always computes the
            // last prompt token): the cap comes off the last blocks of the hit.
            let cap = u64::from(req.input_len.saturating_sub(1));
            let mut cached = [0u64; 4];
            let mut hit_tokens = 0;
            for (j, &tier) in served.iter().enumerate() {
                let t = tier_index(tier);
                let w = tokens(j);
                res.tier_hit_blocks[t] += 1;
                res.tier_hit_tokens[t] += w;
                cached[t] += w.min(cap.saturating_sub(hit_tokens));
                hit_tokens += w;
            }
            res.requests += 1;
            res.query_blocks += n as u64;
            res.hit_blocks += hit as u64;
            res.query_tokens += query_tokens;
            res.hit_tokens += hit_tokens;
            let saved = hit_tokens.min(cap);
            res.prefill_tokens_saved += saved;
            ratio_sum += ratio(hit_tokens, query_tokens);
            if let (Some(cost), Some(total)) = (cfg.cost, res.ttft_saved_s.as_mut()) {
                let q = |cached: u64| TtftQuery {
                    prompt_tokens: req.input_len,
                    cached_tokens: cached.min(u64::from(u32::MAX)) as u32,
                    cached_from: None,
                    max_num_batched_tokens: cfg.max_num_batched_tokens,
                };
                let load: f64 = Tier::ALL
                    .iter()
                    .zip(cached)
                    .filter_map(|(&t, tokens)| link(t).map(|l| cost.load_time(l, cost.kv_bytes(tokens))))
                    .sum();
                let base = cost.ttft(&q(0));
                let with = cost.ttft(&q(cached.iter().sum())) + load;
                *total += (base - with).max(0.0);
            }
        }
        if needs_info {
            infos.clear();
            infos.extend(keys.iter().enumerate().map(|(j, _)| AccessInfo {
                time_ms: req.at_ms,
                next_use: match trace.next_use[req.start as usize + j] {
                    u32::MAX => u64::MAX,
                    n => u64::from(n),
                },
                session: Some(req.session),
                turn: req.turn,
                depth: j as u32,
                session_start_ms: req.session_start_ms,
            }));
        }
        tiers.touch(keys, &infos);
    }
    if res.requests > 0 {
        res.mean_request_token_hit_ratio = ratio_sum / res.requests as f64;
    }
    res
}
