//! LRU and FIFO: one list, refreshed on a hit (LRU) or not (FIFO).

use super::list::{List, NIL};
use super::EvictionPolicy;
use crate::BlockHash;

/// LRU (`refresh_on_access`) or FIFO over a [`List`].
#[derive(Debug)]
pub(super) struct ListPolicy {
    refresh_on_access: bool,
    list: List,
}

impl ListPolicy {
    pub(super) fn new(refresh_on_access: bool) -> Self {
        ListPolicy { refresh_on_access, list: List::new() }
    }
}

impl EvictionPolicy for ListPolicy {
    fn on_insert(&mut self, key: BlockHash) {
        self.list.insert(key);
    }

    fn on_access(&mut self, key: BlockHash) {
        if !self.refresh_on_access {
            return;
        }
        if let Some(&i) = self.list.index.get(&key) {
            self.list.unlink(i);
            self.list.push_newest(i);
        }
    }

    fn on_remove(&mut self, key: BlockHash) {
        self.list.remove_at(key);
    }

    fn victim(&self) -> Option<BlockHash> {
        (self.list.oldest != NIL).then(|| self.list.nodes[self.list.oldest as usize].key)
    }

    fn len(&self) -> usize {
        self.list.index.len()
    }

    fn eviction_order(&self) -> Vec<BlockHash> {
        self.list.order()
    }
}
