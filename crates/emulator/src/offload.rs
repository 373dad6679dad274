//! Which chunk lives in which offload tier: metadata only, one `kvcache::TieredCache` per tier.
//!
//! LMCache writes a stored chunk through to every configured backend (local_cpu, local_disk,
//! remote), each evicting on its own, and a lookup takes each chunk from the fastest backend
//! holding it. So each tier is a single-tier [`TieredCache`] (the same model the simulator
//! uses), rather than one cache that demotes between tiers.

use kvcache::{BlockHash, CacheConfig, PolicyKind, Tier, TierConfig, TieredCache};

use crate::config::TierSpec;

/// A change to make in a tier's real storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Write(Tier, BlockHash),
    Delete(Tier, BlockHash),
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
    /// Hits are refreshed in that tier's eviction order.
    pub(crate) fn lookup(&mut self, keys: &[BlockHash]) -> Vec<Tier> {
        let mut hits = Vec::new();
        for &key in keys {
            let Some(i) = self.tiers.iter().position(|(_, c)| c.tier_of(key).is_some()) else {
                break;
            };
            hits.push(self.tiers[i].0);
        }
        // Refresh recency tier by tier (a store of resident keys only touches them).
        for (tier, cache) in &mut self.tiers {
            let touched: Vec<BlockHash> =
                keys.iter().zip(&hits).filter(|(_, t)| *t == tier).map(|(k, _)| *k).collect();
            if !touched.is_empty() {
                cache.store(&touched);
            }
        }
        hits
    }

    /// Writes `keys` through to every tier; returns the byte changes to make, in order (a
    /// write of a new key comes before the deletes of the victims it evicted).
    pub(crate) fn store(&mut self, keys: &[BlockHash]) -> Vec<Change> {
        let mut changes = Vec::new();
        for (tier, cache) in &mut self.tiers {
            for m in cache.store(keys) {
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
        let changes = idx.store(&[k(1), k(2), k(3)]);
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
        assert_eq!(idx.lookup(&[k(1), k(2), k(3), k(4)]), [Tier::Disk, Tier::Cpu, Tier::Cpu]);
        idx.remove(Tier::Disk, k(1));
        assert_eq!(idx.lookup(&[k(1), k(2)]), []);
        assert_eq!((idx.len(Tier::Cpu), idx.len(Tier::Disk)), (2, 2));
    }
}
