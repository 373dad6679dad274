//! Belady's MIN, the offline optimum: the upper bound the other policies are measured against.

use std::collections::BTreeSet;

use super::{AccessInfo, EvictionPolicy, KeyMap};
use crate::BlockHash;

/// Belady's MIN: evicts the key used farthest in the future ([`AccessInfo::next_use`]).
#[derive(Debug, Default)]
pub(super) struct Belady {
    next: KeyMap<u64>,
    /// (next use, key): the last is the victim.
    order: BTreeSet<(u64, BlockHash)>,
}

impl Belady {
    fn set(&mut self, key: BlockHash, next_use: u64) {
        if let Some(old) = self.next.insert(key, next_use) {
            self.order.remove(&(old, key));
        }
        self.order.insert((next_use, key));
    }
}

impl EvictionPolicy for Belady {
    fn on_insert(&mut self, key: BlockHash) {
        if !self.next.contains_key(&key) {
            self.set(key, u64::MAX);
        }
    }
    fn on_access(&mut self, _key: BlockHash) {}
    fn on_insert_with(&mut self, key: BlockHash, info: &AccessInfo) {
        self.set(key, info.next_use);
    }
    fn on_access_with(&mut self, key: BlockHash, info: &AccessInfo) {
        if self.next.contains_key(&key) {
            self.set(key, info.next_use);
        }
    }
    fn on_remove(&mut self, key: BlockHash) {
        if let Some(n) = self.next.remove(&key) {
            self.order.remove(&(n, key));
        }
    }
    fn victim(&self) -> Option<BlockHash> {
        self.order.last().map(|e| e.1)
    }
    fn len(&self) -> usize {
        self.next.len()
    }
    fn eviction_order(&self) -> Vec<BlockHash> {
        self.order.iter().rev().map(|e| e.1).collect()
    }
    fn info(&self, key: BlockHash) -> Option<AccessInfo> {
        self.next.get(&key).map(|&next_use| AccessInfo { next_use, ..AccessInfo::UNKNOWN })
    }
    fn evict_with_info(&mut self) -> Option<(BlockHash, AccessInfo)> {
        let (next_use, key) = self.order.pop_last()?;
        self.next.remove(&key);
        Some((key, AccessInfo { next_use, ..AccessInfo::UNKNOWN }))
    }
}
