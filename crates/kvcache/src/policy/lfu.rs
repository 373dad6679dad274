//! LFU: least frequently used, ties to the least recently used.

use std::collections::BTreeSet;

use super::{EvictionPolicy, KeyMap};
use crate::BlockHash;

/// Least frequently used; ties go to the least recently used.
#[derive(Debug, Default)]
pub(super) struct Lfu {
    tick: u64,
    meta: KeyMap<(u64, u64)>,
    /// (frequency, last use, key): the first is the victim.
    order: BTreeSet<(u64, u64, BlockHash)>,
}

impl EvictionPolicy for Lfu {
    fn on_insert(&mut self, key: BlockHash) {
        if self.meta.contains_key(&key) {
            return;
        }
        self.tick += 1;
        self.meta.insert(key, (1, self.tick));
        self.order.insert((1, self.tick, key));
    }

    fn on_access(&mut self, key: BlockHash) {
        self.tick += 1;
        if let Some(m) = self.meta.get_mut(&key) {
            self.order.remove(&(m.0, m.1, key));
            *m = (m.0 + 1, self.tick);
            self.order.insert((m.0, m.1, key));
        }
    }

    fn on_remove(&mut self, key: BlockHash) {
        if let Some((f, t)) = self.meta.remove(&key) {
            self.order.remove(&(f, t, key));
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
}
