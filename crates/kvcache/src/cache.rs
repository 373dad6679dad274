//! The tiered prefix cache: which block keys are resident in which tier.

use serde::{Deserialize, Serialize};

use crate::policy::{AccessInfo, EvictionPolicy, KeyMap, PolicyKind};
use crate::BlockHash;

/// A storage tier, ordered as LMCache looks blocks up: GPU, then CPU, then disk, then remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Gpu,
    Cpu,
    Disk,
    Remote,
}

impl Tier {
    /// Every tier in lookup order.
    pub const ALL: [Tier; 4] = [Tier::Gpu, Tier::Cpu, Tier::Disk, Tier::Remote];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Gpu => "gpu",
            Tier::Cpu => "cpu",
            Tier::Disk => "disk",
            Tier::Remote => "remote",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = crate::ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| crate::ParseNameError {
            what: "tier",
            got: s.to_owned(),
            expected: Tier::ALL.map(Tier::as_str).join(", "),
        })
    }
}

/// How many whole blocks of `block_tokens` tokens fit in `bytes` of KV memory for a model of
/// geometry `kv` (rounded down; 0 when the geometry or the block size is zero).
pub fn capacity_blocks(bytes: u64, kv: &costmodel::KvGeometry, block_tokens: u32) -> u64 {
    let block_bytes = kv.bytes_per_token().saturating_mul(u64::from(block_tokens));
    bytes.checked_div(block_bytes).unwrap_or(0)
}

/// One tier of a [`CacheConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub tier: Tier,
    /// Blocks the tier holds (see [`capacity_blocks`]); a tier of capacity 0 holds nothing and is
    /// skipped (no movement goes through it).
    pub capacity_blocks: u64,
}

/// The tiers, the policy every tier uses, and the tokens per block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// In lookup order (GPU, CPU, disk, remote); each tier at most once
    /// (see [`CacheConfig::validate`]).
    pub tiers: Vec<TierConfig>,
    pub policy: PolicyKind,
    /// Tokens per key, used to count hits in tokens.
    pub block_tokens: u32,
}

/// A [`CacheConfig`] that cannot be used as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheConfigError {
    #[error("tier `{0}` is configured twice")]
    DuplicateTier(Tier),
    #[error("tier `{later}` is listed before tier `{earlier}`; list tiers in lookup order (gpu, cpu, disk, remote)")]
    OutOfOrder { earlier: Tier, later: Tier },
    #[error("block_tokens must be at least 1")]
    ZeroBlockTokens,
}

impl CacheConfig {
    /// Checks the tiers are in lookup order, each at most once, and `block_tokens` is non-zero.
    /// [`TieredCache::new`] accepts any config (it sorts tiers and sums duplicates); call this to
    /// reject a user's config with a clear message instead.
    pub fn validate(&self) -> Result<(), CacheConfigError> {
        if self.block_tokens == 0 {
            return Err(CacheConfigError::ZeroBlockTokens);
        }
        for pair in self.tiers.windows(2) {
            let (a, b) = (pair[0].tier, pair[1].tier);
            if a == b {
                return Err(CacheConfigError::DuplicateTier(a));
            }
            if a > b {
                return Err(CacheConfigError::OutOfOrder { earlier: b, later: a });
            }
        }
        Ok(())
    }
}

/// The result of [`TieredCache::lookup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lookup {
    /// Length of the run of leading keys that is resident somewhere.
    pub hit_blocks: u64,
    /// `hit_blocks * block_tokens`.
    pub hit_tokens: u64,
    /// Blocks of that run found in each configured tier, in lookup order (zeros included).
    pub per_tier: Vec<(Tier, u64)>,
}

/// One change of residency made by [`TieredCache::store`] (or evictions it caused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Movement {
    pub key: BlockHash,
    /// `None`: the key was new.
    pub from: Option<Tier>,
    /// `None`: the key was dropped from the last tier.
    pub to: Option<Tier>,
}

/// Counters of one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierStats {
    pub tier: Tier,
    pub capacity_blocks: u64,
    /// Blocks of lookup prefix hits served from this tier.
    pub hit_blocks: u64,
    pub hit_tokens: u64,
    /// New keys stored into this tier.
    pub inserted: u64,
    /// Keys that left this tier for the top tier on a hit.
    pub promoted_out: u64,
    /// Keys that arrived from the tier above on overflow.
    pub demoted_in: u64,
    /// Keys that left this tier on overflow (demoted to the next tier, or dropped if last).
    pub evicted: u64,
    /// Keys removed with [`TieredCache::remove`].
    pub removed: u64,
}

/// Hit accounting of a [`TieredCache`], in blocks and in tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HitStats {
    /// Calls to [`TieredCache::lookup`].
    pub lookups: u64,
    /// Keys looked up, and the same in tokens (`keys * block_tokens`).
    pub query_blocks: u64,
    pub query_tokens: u64,
    /// Leading keys found, all tiers together.
    pub hit_blocks: u64,
    pub hit_tokens: u64,
    /// Keys dropped from the last tier.
    pub dropped: u64,
    /// Per configured tier, in lookup order.
    pub tiers: Vec<TierStats>,
}

impl HitStats {
    pub fn tier(&self, tier: Tier) -> Option<&TierStats> {
        self.tiers.iter().find(|t| t.tier == tier)
    }

    /// Hit blocks over queried blocks (0 when nothing was queried).
    pub fn hit_ratio(&self) -> f64 {
        if self.query_blocks == 0 {
            0.0
        } else {
            self.hit_blocks as f64 / self.query_blocks as f64
        }
    }
}

#[derive(Debug)]
struct TierState {
    capacity: u64,
    policy: Box<dyn EvictionPolicy>,
}

/// An exclusive multi-tier cache of block keys: each key is resident in at most one tier.
///
/// Invariants: every tier holds at most its capacity after every call; a key's tier is the one
/// whose policy tracks it; nothing reads a clock, so the same calls give the same state.
#[derive(Debug)]
pub struct TieredCache {
    block_tokens: u64,
    /// Only tiers of non-zero capacity, sorted in lookup order, each once.
    tiers: Vec<TierState>,
    stats: HitStats,
    resident: KeyMap<u8>,
}

impl TieredCache {
    /// A cache with the given tiers, all empty. Tiers are sorted into lookup order and a tier
    /// listed twice gets the sum of its capacities (see [`CacheConfig::validate`] to refuse
    /// such configs instead); tiers of capacity 0 are left out.
    pub fn new(cfg: CacheConfig) -> Self {
        let kind = cfg.policy;
        TieredCache::with_policies(cfg, &mut |_| kind.build())
    }

    /// Like [`TieredCache::new`], with each tier's policy built by `make` (called once per tier
    /// of non-zero capacity, in lookup order) instead of from `cfg.policy`: the seam for policies
    /// that carry parameters ([`crate::ConversationAware`], [`crate::Learned`]).
    pub fn with_policies(cfg: CacheConfig, make: &mut dyn FnMut(Tier) -> Box<dyn EvictionPolicy>) -> Self {
        let mut sorted = cfg.tiers.clone();
        sorted.sort_by_key(|t| t.tier);
        let mut merged: Vec<TierConfig> = Vec::new();
        for t in sorted {
            match merged.last_mut() {
                Some(last) if last.tier == t.tier => {
                    last.capacity_blocks = last.capacity_blocks.saturating_add(t.capacity_blocks)
                }
                _ => merged.push(t),
            }
        }
        merged.retain(|t| t.capacity_blocks > 0);
        let stats = HitStats {
            lookups: 0,
            query_blocks: 0,
            query_tokens: 0,
            hit_blocks: 0,
            hit_tokens: 0,
            dropped: 0,
            tiers: merged
                .iter()
                .map(|t| TierStats {
                    tier: t.tier,
                    capacity_blocks: t.capacity_blocks,
                    hit_blocks: 0,
                    hit_tokens: 0,
                    inserted: 0,
                    promoted_out: 0,
                    demoted_in: 0,
                    evicted: 0,
                    removed: 0,
                })
                .collect(),
        };
        TieredCache {
            block_tokens: u64::from(cfg.block_tokens),
            tiers: merged
                .iter()
                .map(|t| {
                    let mut policy = make(t.tier);
                    policy.set_capacity(t.capacity_blocks);
                    TierState { capacity: t.capacity_blocks, policy }
                })
                .collect(),
            stats,
            resident: KeyMap::default(),
        }
    }

    /// The run of leading keys that is resident, tier by tier (GPU, CPU, disk, remote order).
    ///
    /// Does not change residency nor recency; counts one query of `keys.len()` blocks in the hit
    /// accounting.
    pub fn lookup(&mut self, keys: &[BlockHash]) -> Lookup {
        let mut per_tier = vec![0u64; self.tiers.len()];
        let mut hit_blocks = 0u64;
        for key in keys {
            let Some(&i) = self.resident.get(key) else { break };
            per_tier[i as usize] += 1;
            hit_blocks += 1;
        }
        let bt = self.block_tokens;
        let s = &mut self.stats;
        s.lookups += 1;
        s.query_blocks += keys.len() as u64;
        s.query_tokens += keys.len() as u64 * bt;
        s.hit_blocks += hit_blocks;
        s.hit_tokens += hit_blocks * bt;
        for (ts, &n) in s.tiers.iter_mut().zip(&per_tier) {
            ts.hit_blocks += n;
            ts.hit_tokens += n * bt;
        }
        Lookup {
            hit_blocks,
            hit_tokens: hit_blocks * bt,
            per_tier: s.tiers.iter().map(|t| t.tier).zip(per_tier).collect(),
        }
    }

    /// Touches or inserts all `keys`, in order (after a request was served): keys in the top tier
    /// are refreshed, keys in a lower tier are promoted to the top tier, new keys are inserted
    /// into the top tier, and overflow demotes victims down the tiers (dropped from the last).
    /// Returns every movement, in the order made, so an I/O shell can move real bytes.
    pub fn store(&mut self, keys: &[BlockHash]) -> Vec<Movement> {
        let mut moves = Vec::new();
        self.store_inner(keys, &[], Some(&mut moves));
        moves
    }

    /// [`TieredCache::store`] for a simulator: `infos[i]` is what is known about the access of
    /// `keys[i]` (keys past the end of `infos` get [`AccessInfo::UNKNOWN`]), and no movement
    /// list is built.
    pub fn touch(&mut self, keys: &[BlockHash], infos: &[AccessInfo]) {
        self.store_inner(keys, infos, None);
    }

    /// [`TieredCache::store`] with what is known about each access (as [`TieredCache::touch`]):
    /// for an I/O shell whose policy reads [`AccessInfo`] and that moves real bytes.
    pub fn store_with(&mut self, keys: &[BlockHash], infos: &[AccessInfo]) -> Vec<Movement> {
        let mut moves = Vec::new();
        self.store_inner(keys, infos, Some(&mut moves));
        moves
    }

    fn store_inner(
        &mut self,
        keys: &[BlockHash],
        infos: &[AccessInfo],
        mut moves: Option<&mut Vec<Movement>>,
    ) {
        if self.tiers.is_empty() {
            return;
        }
        for (n, &key) in keys.iter().enumerate() {
            let info = infos.get(n).unwrap_or(&AccessInfo::UNKNOWN);
            match self.resident.get(&key).copied() {
                Some(0) => {
                    // A hit in the top tier changes no tier's size.
                    self.tiers[0].policy.on_access_with(key, info);
                    continue;
                }
                Some(i) => {
                    self.tiers[i as usize].policy.on_remove(key);
                    self.stats.tiers[i as usize].promoted_out += 1;
                    self.tiers[0].policy.on_insert_with(key, info);
                    self.resident.insert(key, 0);
                    if let Some(m) = moves.as_deref_mut() {
                        m.push(Movement {
                            key,
                            from: Some(self.tier_at(i as usize)),
                            to: Some(self.tier_at(0)),
                        });
                    }
                }
                None => {
                    self.tiers[0].policy.on_insert_with(key, info);
                    self.stats.tiers[0].inserted += 1;
                    self.resident.insert(key, 0);
                    if let Some(m) = moves.as_deref_mut() {
                        m.push(Movement { key, from: None, to: Some(self.tier_at(0)) });
                    }
                }
            }
            if self.tiers[0].policy.len() as u64 > self.tiers[0].capacity {
                self.rebalance(moves.as_deref_mut());
            }
        }
    }

    /// Removes `key` wherever it is resident (e.g. after a tier I/O error); returns its tier.
    pub fn remove(&mut self, key: BlockHash) -> Option<Tier> {
        let i = self.resident.remove(&key)? as usize;
        self.tiers[i].policy.on_remove(key);
        self.stats.tiers[i].removed += 1;
        Some(self.tier_at(i))
    }

    /// The tier `key` is resident in.
    pub fn tier_of(&self, key: BlockHash) -> Option<Tier> {
        self.resident.get(&key).map(|&i| self.tier_at(i as usize))
    }

    pub fn stats(&self) -> &HitStats {
        &self.stats
    }

    /// Blocks resident in `tier` (0 for a tier not configured).
    pub fn len(&self, tier: Tier) -> u64 {
        self.index_of(tier).map_or(0, |i| self.tiers[i].policy.len() as u64)
    }

    /// Blocks resident in all tiers.
    pub fn total_len(&self) -> u64 {
        self.resident.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.resident.is_empty()
    }

    /// The keys resident in `tier`, the next victim first (O(n); for tests and debugging).
    pub fn resident(&self, tier: Tier) -> Vec<BlockHash> {
        self.index_of(tier).map_or_else(Vec::new, |i| self.tiers[i].policy.eviction_order())
    }

    /// The configured tiers of non-zero capacity, in lookup order.
    pub fn tiers(&self) -> impl Iterator<Item = Tier> + '_ {
        self.stats.tiers.iter().map(|t| t.tier)
    }

    fn tier_at(&self, i: usize) -> Tier {
        self.stats.tiers[i].tier
    }

    fn index_of(&self, tier: Tier) -> Option<usize> {
        self.stats.tiers.iter().position(|t| t.tier == tier)
    }

    /// Restores every tier to its capacity, top down, demoting victims.
    fn rebalance(&mut self, mut moves: Option<&mut Vec<Movement>>) {
        for i in 0..self.tiers.len() {
            while self.tiers[i].policy.len() as u64 > self.tiers[i].capacity {
                let Some((victim, info)) = self.tiers[i].policy.evict_with_info() else { break };
                self.stats.tiers[i].evicted += 1;
                let from = Some(self.tier_at(i));
                let to = if i + 1 < self.tiers.len() {
                    self.tiers[i + 1].policy.on_insert_with(victim, &info);
                    self.stats.tiers[i + 1].demoted_in += 1;
                    self.resident.insert(victim, (i + 1) as u8);
                    Some(self.tier_at(i + 1))
                } else {
                    self.resident.remove(&victim);
                    self.stats.dropped += 1;
                    None
                };
                if let Some(m) = moves.as_deref_mut() {
                    m.push(Movement { key: victim, from, to });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(policy: PolicyKind) -> TieredCache {
        TieredCache::new(CacheConfig {
            tiers: vec![TierConfig { tier: Tier::Cpu, capacity_blocks: 2 }],
            policy,
            block_tokens: 16,
        })
    }

    #[test]
    fn store_with_moves_like_store_and_feeds_the_policy() {
        let k = BlockHash;
        let turn = |turn, time_ms| AccessInfo { time_ms, session: Some(1), turn, ..AccessInfo::UNKNOWN };
        // Without information, LRU moves the same keys either way.
        let (mut a, mut b) = (cache(PolicyKind::Lru), cache(PolicyKind::Lru));
        assert_eq!(a.store(&[k(1), k(2), k(3)]), b.store_with(&[k(1), k(2), k(3)], &[]));
        // Conversation-aware: a turn-5 key stored first outlives two later turn-1 keys.
        let mut c = cache(PolicyKind::ConversationAware);
        c.store_with(&[k(1)], &[turn(5, 0)]);
        let moves = c.store_with(&[k(2), k(3)], &[turn(1, 1000), turn(1, 2000)]);
        assert_eq!(moves.last(), Some(&Movement { key: k(2), from: Some(Tier::Cpu), to: None }));
        assert_eq!(c.tier_of(k(1)), Some(Tier::Cpu));
    }
}
