//! The engine of the conversation-aware and learned policies: each touch fixes a key's priority,
//! the lowest leaves first.

use std::collections::BTreeSet;

use super::{AccessInfo, EvictionPolicy, KeyMap};
use crate::BlockHash;

/// How a priority policy scores a touch.
pub(super) trait Scorer: std::fmt::Debug + Send {
    /// Priority in seconds (lowest leaves first).
    fn score(&self, info: &AccessInfo, prev: Option<&AccessInfo>, count: u32) -> f64;
}

#[derive(Debug, Clone, Copy)]
struct Scored {
    priority: i64,
    tick: u64,
    count: u32,
    info: AccessInfo,
}

/// Evicts the lowest priority (ties: least recently touched); priorities are computed by a
/// [`Scorer`] when a key is touched, in microseconds.
#[derive(Debug)]
pub(super) struct PriorityPolicy<S> {
    scorer: S,
    tick: u64,
    meta: KeyMap<Scored>,
    order: BTreeSet<(i64, u64, BlockHash)>,
}

impl<S: Scorer> PriorityPolicy<S> {
    pub(super) fn new(scorer: S) -> Self {
        PriorityPolicy { scorer, tick: 0, meta: KeyMap::default(), order: BTreeSet::new() }
    }

    fn touch(&mut self, key: BlockHash, info: &AccessInfo, insert: bool) {
        let old = self.meta.get(&key).copied();
        if old.is_none() && !insert {
            return;
        }
        if let Some(o) = old {
            self.order.remove(&(o.priority, o.tick, key));
        }
        let count = old.map_or(0, |o| o.count);
        let score = self.scorer.score(info, old.as_ref().map(|o| &o.info), count);
        let priority = if score.is_finite() { (score * 1e6) as i64 } else { 0 };
        self.tick += 1;
        let s = Scored { priority, tick: self.tick, count: count.saturating_add(1), info: *info };
        self.meta.insert(key, s);
        self.order.insert((priority, self.tick, key));
    }
}

impl<S: Scorer> EvictionPolicy for PriorityPolicy<S> {
    fn on_insert(&mut self, key: BlockHash) {
        if !self.meta.contains_key(&key) {
            self.touch(key, &AccessInfo::UNKNOWN, true);
        }
    }
    fn on_access(&mut self, key: BlockHash) {
        if let Some(info) = self.meta.get(&key).map(|s| s.info) {
            self.touch(key, &info, false);
        }
    }
    fn on_insert_with(&mut self, key: BlockHash, info: &AccessInfo) {
        self.touch(key, info, true);
    }
    fn on_access_with(&mut self, key: BlockHash, info: &AccessInfo) {
        self.touch(key, info, false);
    }
    fn on_remove(&mut self, key: BlockHash) {
        if let Some(s) = self.meta.remove(&key) {
            self.order.remove(&(s.priority, s.tick, key));
        }
    }
    fn victim(&self) -> Option<BlockHash> {
        self.order.first().map(|e| e.2)
    }
    fn len(&self) -> usize {
        self.meta.len()
    }
    fn eviction_order(&self) -> Vec<BlockHash> {
        self.order.iter().map(|e| e.2).collect()
    }
    fn info(&self, key: BlockHash) -> Option<AccessInfo> {
        self.meta.get(&key).map(|s| s.info)
    }
    fn evict_with_info(&mut self) -> Option<(BlockHash, AccessInfo)> {
        let (_, _, key) = self.order.pop_first()?;
        let s = self.meta.remove(&key)?;
        Some((key, s.info))
    }
}
