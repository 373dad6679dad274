//! SIEVE (Zhang et al., NSDI'24): a FIFO with a visited bit and a sweeping hand.

use super::list::{List, NIL};
use super::EvictionPolicy;
use crate::BlockHash;

/// SIEVE over a [`List`]: the hand walks from the oldest key towards the newest, clearing
/// visited bits, and evicts the first unvisited key; it wraps around at the newest end.
#[derive(Debug, Clone)]
pub(super) struct Sieve {
    list: List,
    /// Where the next sweep starts; `NIL`: at the oldest key.
    hand: u32,
}

impl Default for Sieve {
    fn default() -> Self {
        Sieve { list: List::new(), hand: NIL }
    }
}

impl Sieve {
    fn next_of(&self, i: u32) -> u32 {
        match self.list.nodes[i as usize].newer {
            NIL => self.list.oldest,
            n => n,
        }
    }

    /// The index the hand stops at, clearing visited bits on the way when `clear`.
    fn sweep(&mut self, clear: bool) -> Option<u32> {
        if self.list.oldest == NIL {
            return None;
        }
        let start = if self.hand == NIL { self.list.oldest } else { self.hand };
        let mut i = start;
        // After one full turn every bit is clear, so the start is the victim.
        for _ in 0..=self.list.index.len() {
            let node = &mut self.list.nodes[i as usize];
            if !node.visited {
                return Some(i);
            }
            if clear {
                node.visited = false;
            }
            i = self.next_of(i);
        }
        Some(start)
    }
}

impl EvictionPolicy for Sieve {
    fn on_insert(&mut self, key: BlockHash) {
        self.list.insert(key);
    }

    fn on_access(&mut self, key: BlockHash) {
        if let Some(&i) = self.list.index.get(&key) {
            self.list.nodes[i as usize].visited = true;
        }
    }

    fn on_remove(&mut self, key: BlockHash) {
        if let Some(&i) = self.list.index.get(&key) {
            if self.hand == i {
                self.hand = self.list.nodes[i as usize].newer;
            }
            self.list.remove_at(key);
        }
    }

    fn victim(&self) -> Option<BlockHash> {
        self.clone().evict()
    }

    fn evict(&mut self) -> Option<BlockHash> {
        let i = self.sweep(true)?;
        let key = self.list.nodes[i as usize].key;
        // The hand moves on to the next newer key (the oldest after a wrap).
        self.hand = i;
        self.on_remove(key);
        Some(key)
    }

    fn len(&self) -> usize {
        self.list.index.len()
    }

    fn eviction_order(&self) -> Vec<BlockHash> {
        let mut copy = self.clone();
        std::iter::from_fn(|| copy.evict()).collect()
    }
}
