//! Replaying one trace through one cache configuration.

use costmodel::{CostModel, TierLink, TtftQuery};
use kvcache::{
    AccessInfo, CacheConfig, ConversationAware, ConversationWeights, EvictionPolicy, Learned, LogisticModel,
    PolicyKind, Tier, TierConfig, TieredCache,
};
use serde::Serialize;

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

/// One replay: tiers (capacities in blocks of the trace's block size), a policy, the requests
/// that count, and optionally a cost model for TTFT.
#[derive(Debug, Clone)]
pub struct ReplayConfig<'a> {
    /// In lookup order; `u64::MAX` blocks is unbounded.
    pub tiers: Vec<TierConfig>,
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
    /// a cost model was given.
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

/// Replays `trace` through a cache built from `cfg`: each request looks up the run of its
/// leading blocks that is resident (GPU, CPU, disk, remote), then touches all of its blocks.
pub fn replay(trace: &SimTrace, cfg: &ReplayConfig<'_>) -> ReplayResult {
    let cache_cfg =
        CacheConfig { tiers: cfg.tiers.clone(), policy: cfg.policy.kind(), block_tokens: trace.block_tokens };
    let policy = cfg.policy;
    let mut cache = TieredCache::with_policies(cache_cfg, &mut |_| policy.build());
    let needs_info = policy.needs_info();
    let mut infos: Vec<AccessInfo> = Vec::new();
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
            let look = cache.lookup(keys);
            let n = keys.len();
            let hit = look.hit_blocks as usize;
            let query_tokens = if n == 0 { 0 } else { (n as u64 - 1) * b + trace.block_weight(req, n - 1) };
            let hit_tokens = if hit == 0 {
                0
            } else if hit == n {
                query_tokens
            } else {
                hit as u64 * b
            };
            res.requests += 1;
            res.query_blocks += n as u64;
            res.hit_blocks += hit as u64;
            res.query_tokens += query_tokens;
            res.hit_tokens += hit_tokens;
            let mut deepest = None;
            for &(tier, blocks) in &look.per_tier {
                res.tier_hit_blocks[tier_index(tier)] += blocks;
                res.tier_hit_tokens[tier_index(tier)] += blocks * b;
                if blocks > 0 {
                    deepest = Some(tier);
                }
            }
            if hit == n && hit > 0 {
                // The last block is partial: take its shortfall off the tier that holds it.
                if let Some(t) = cache.tier_of(keys[n - 1]) {
                    res.tier_hit_tokens[tier_index(t)] -= n as u64 * b - query_tokens;
                }
            }
            let saved = hit_tokens.min(u64::from(req.input_len.saturating_sub(1)));
            res.prefill_tokens_saved += saved;
            ratio_sum += ratio(hit_tokens, query_tokens);
            if let (Some(cost), Some(total)) = (cfg.cost, res.ttft_saved_s.as_mut()) {
                let q = |cached: u64, from: Option<TierLink>| TtftQuery {
                    prompt_tokens: req.input_len,
                    cached_tokens: cached as u32,
                    cached_from: from,
                    max_num_batched_tokens: cfg.max_num_batched_tokens,
                };
                let link = match deepest {
                    None | Some(Tier::Gpu) => None,
                    Some(Tier::Cpu) => Some(TierLink::Cpu),
                    Some(Tier::Disk) => Some(TierLink::Disk),
                    Some(Tier::Remote) => Some(TierLink::Remote),
                };
                let base = cost.ttft(&q(0, None));
                let with = cost.ttft(&q(hit_tokens, link));
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
        cache.touch(keys, &infos);
    }
    if res.requests > 0 {
        res.mean_request_token_hit_ratio = ratio_sum / res.requests as f64;
    }
    res
}
