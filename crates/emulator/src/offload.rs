//! Which chunk lives in which offload tier: metadata only, one `kvcache::TieredCache` per tier.
//!
//! LMCache writes a stored chunk through to every configured backend (local_cpu, local_disk,
//! remote), each evicting on its own, and a lookup takes each chunk from the fastest backend
//! holding it. So each tier is a single-tier [`TieredCache`] (the same model the simulator
//! uses), rather than one cache that demotes between tiers.
//!
//! Every lookup and store passes the request's [`Access`] (time, conversation, turn; the depth is
//! the chunk's index in the prompt) to the tiers' policy, so the conversation-aware policy sees
//! what the simulator gives it; recency policies ignore it.

use kvcache::{AccessInfo, BlockHash, CacheConfig, PolicyKind, Tier, TierConfig, TieredCache};

use crate::config::TierSpec;

/// A change to make in a tier's real storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Write(Tier, BlockHash),
    Delete(Tier, BlockHash),
}

/// What is known about the request behind a lookup or a store.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Access {
    /// Model seconds of the access (the run's clock).
    pub(crate) time_s: f64,
    /// The conversation (the `user` of the API, the plan's session in virtual time).
    pub(crate) session: Option<u64>,
    /// 1 = the conversation's first request; 0 = unknown.
    pub(crate) turn: u32,
    /// Model seconds of the conversation's first request.
    pub(crate) session_start_s: f64,
}

impl Access {
    /// The policy's view of the chunk at index `depth` of the prompt.
    fn info(&self, depth: usize) -> AccessInfo {
        let ms = |s: f64| (s.max(0.0) * 1e3) as u64;
        AccessInfo {
            time_ms: ms(self.time_s),
            next_use: u64::MAX,
            session: self.session,
            turn: self.turn,
            depth: depth.min(u32::MAX as usize) as u32,
            session_start_ms: ms(self.session_start_s),
        }
    }
}

#[derive(Debug)]
pub(crate) struct OffloadIndex {
    tiers: Vec<(Tier, TieredCache)>,
}

impl OffloadIndex {
    pub(crate) fn new(specs: &[TierSpec], policy: PolicyKind, chunk_tokens: u32) -> Self {
        let tiers = specs
            .iter()
            .map(|s| {
                let cache = TieredCache::new(CacheConfig {
                    tiers: vec![TierConfig { tier: s.tier, capacity_blocks: s.capacity_chunks }],
                    policy,
                    block_tokens: chunk_tokens,
                });
                (s.tier, cache)
            })
            .collect();
        OffloadIndex { tiers }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// For the leading run of `keys` held by some tier: the fastest tier holding each key.
    /// Hits are refreshed in that tier's eviction order, as accesses of `access`.
    pub(crate) fn lookup(&mut self, keys: &[BlockHash], access: &Access) -> Vec<Tier> {
        let mut hits = Vec::new();
        for &key in keys {
            let Some(i) = self.tiers.iter().position(|(_, c)| c.tier_of(key).is_some()) else {
                break;
            };
            hits.push(self.tiers[i].0);
        }
        // Refresh recency tier by tier (a store of resident keys only touches them).
        for (tier, cache) in &mut self.tiers {
            let (touched, infos): (Vec<BlockHash>, Vec<AccessInfo>) = keys
                .iter()
                .zip(&hits)
                .enumerate()
                .filter(|(_, (_, t))| *t == tier)
                .map(|(depth, (k, _))| (*k, access.info(depth)))
                .unzip();
            if !touched.is_empty() {
                cache.store_with(&touched, &infos);
            }
        }
        hits
    }

    /// Writes `keys` (a prompt's chunk keys, in order) through to every tier as accesses of
    /// `access`; returns the byte changes to make, in order (a write of a new key comes before
    /// the deletes of the victims it evicted).
    pub(crate) fn store(&mut self, keys: &[BlockHash], access: &Access) -> Vec<Change> {
        let mut changes = Vec::new();
        let infos: Vec<AccessInfo> = (0..keys.len()).map(|d| access.info(d)).collect();
        for (tier, cache) in &mut self.tiers {
            for m in cache.store_with(keys, &infos) {
                match (m.from, m.to) {
                    (None, Some(_)) => changes.push(Change::Write(*tier, m.key)),
                    (Some(_), None) => changes.push(Change::Delete(*tier, m.key)),
                    _ => {}
                }
            }
        }
        changes
    }

    /// Forgets `key` in `tier` (after an I/O error there).
    pub(crate) fn remove(&mut self, tier: Tier, key: BlockHash) {
        if let Some((_, c)) = self.tiers.iter_mut().find(|(t, _)| *t == tier) {
            c.remove(key);
        }
    }

    pub(crate) fn len(&self, tier: Tier) -> u64 {
        self.tiers.iter().find(|(t, _)| *t == tier).map_or(0, |(t, c)| c.len(*t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tier: Tier, capacity_chunks: u64) -> TierSpec {
        TierSpec { tier, capacity_chunks }
    }

    #[test]
    fn write_through_and_fastest_tier_wins() {
        let mut idx = OffloadIndex::new(&[spec(Tier::Cpu, 2), spec(Tier::Disk, 4)], PolicyKind::Lru, 256);
        let k = |x| BlockHash(x);
        let a = Access::default();
        let changes = idx.store(&[k(1), k(2), k(3)], &a);
        assert_eq!(
            changes,
            [
                Change::Write(Tier::Cpu, k(1)),
                Change::Write(Tier::Cpu, k(2)),
                Change::Write(Tier::Cpu, k(3)),
                Change::Delete(Tier::Cpu, k(1)),
                Change::Write(Tier::Disk, k(1)),
                Change::Write(Tier::Disk, k(2)),
                Change::Write(Tier::Disk, k(3)),
            ]
        );
        assert_eq!(idx.lookup(&[k(1), k(2), k(3), k(4)], &a), [Tier::Disk, Tier::Cpu, Tier::Cpu]);
        idx.remove(Tier::Disk, k(1));
        assert_eq!(idx.lookup(&[k(1), k(2)], &a), []);
        assert_eq!((idx.len(Tier::Cpu), idx.len(Tier::Disk)), (2, 2));
    }
}
