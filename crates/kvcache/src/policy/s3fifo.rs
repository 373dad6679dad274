//! S3-FIFO (Yang et al., SOSP'23): a small FIFO, a main FIFO and a ghost queue.

use std::collections::VecDeque;

use super::{EvictionPolicy, KeyMap};
use crate::BlockHash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug, Clone, Copy)]
struct S3Entry {
    queue: Queue,
    freq: u8,
    /// Matches the queue slot that is live; older slots of the key are stale.
    gen: u64,
}

/// S3-FIFO with lazy deletion: queues hold `(key, generation)` and skip stale slots.
#[derive(Debug, Clone, Default)]
pub(super) struct S3Fifo {
    capacity: u64,
    gen: u64,
    meta: KeyMap<S3Entry>,
    small: VecDeque<(BlockHash, u64)>,
    main: VecDeque<(BlockHash, u64)>,
    small_len: usize,
    main_len: usize,
    ghost: VecDeque<(BlockHash, u64)>,
    ghost_set: KeyMap<u64>,
}

impl S3Fifo {
    fn small_target(&self) -> usize {
        let cap = if self.capacity == 0 { self.meta.len() as u64 } else { self.capacity };
        ((cap / 10).max(1)) as usize
    }

    fn ghost_capacity(&self) -> usize {
        let cap = if self.capacity == 0 { self.meta.len() as u64 } else { self.capacity };
        (cap as usize).saturating_sub(self.small_target()).max(1)
    }

    fn push(&mut self, key: BlockHash, queue: Queue, freq: u8) {
        self.gen += 1;
        let gen = self.gen;
        self.meta.insert(key, S3Entry { queue, freq, gen });
        match queue {
            Queue::Small => {
                self.small.push_back((key, gen));
                self.small_len += 1;
            }
            Queue::Main => {
                self.main.push_back((key, gen));
                self.main_len += 1;
            }
        }
    }

    fn pop_live(
        queue: &mut VecDeque<(BlockHash, u64)>,
        meta: &KeyMap<S3Entry>,
    ) -> Option<(BlockHash, S3Entry)> {
        while let Some((key, gen)) = queue.pop_front() {
            if let Some(e) = meta.get(&key) {
                if e.gen == gen {
                    return Some((key, *e));
                }
            }
        }
        None
    }

    fn remember_ghost(&mut self, key: BlockHash) {
        self.gen += 1;
        self.ghost.push_back((key, self.gen));
        self.ghost_set.insert(key, self.gen);
        let cap = self.ghost_capacity();
        while self.ghost_set.len() > cap {
            let Some((k, g)) = self.ghost.pop_front() else { break };
            if self.ghost_set.get(&k) == Some(&g) {
                self.ghost_set.remove(&k);
            }
        }
        if self.ghost.len() > 2 * cap + 16 {
            let set = &self.ghost_set;
            self.ghost.retain(|(k, g)| set.get(k) == Some(g));
        }
    }
}

impl EvictionPolicy for S3Fifo {
    fn set_capacity(&mut self, blocks: u64) {
        self.capacity = blocks;
    }

    fn on_insert(&mut self, key: BlockHash) {
        if self.meta.contains_key(&key) {
            return;
        }
        let queue = if self.ghost_set.remove(&key).is_some() { Queue::Main } else { Queue::Small };
        self.push(key, queue, 0);
    }

    fn on_access(&mut self, key: BlockHash) {
        if let Some(e) = self.meta.get_mut(&key) {
            e.freq = (e.freq + 1).min(3);
        }
    }

    fn on_remove(&mut self, key: BlockHash) {
        if let Some(e) = self.meta.remove(&key) {
            match e.queue {
                Queue::Small => self.small_len -= 1,
                Queue::Main => self.main_len -= 1,
            }
        }
        // Compact queues full of stale slots (keys removed from the middle).
        let live = self.meta.len();
        if self.small.len() + self.main.len() > 2 * live + 64 {
            let meta = &self.meta;
            self.small.retain(|(k, g)| meta.get(k).is_some_and(|e| e.gen == *g));
            self.main.retain(|(k, g)| meta.get(k).is_some_and(|e| e.gen == *g));
        }
    }

    fn victim(&self) -> Option<BlockHash> {
        self.clone().evict()
    }

    fn evict(&mut self) -> Option<BlockHash> {
        loop {
            if self.meta.is_empty() {
                return None;
            }
            if self.small_len > 0 && (self.small_len >= self.small_target() || self.main_len == 0) {
                let (key, e) = S3Fifo::pop_live(&mut self.small, &self.meta)?;
                self.small_len -= 1;
                if e.freq >= 1 {
                    self.push(key, Queue::Main, 0);
                    continue;
                }
                self.meta.remove(&key);
                self.remember_ghost(key);
                return Some(key);
            }
            let (key, e) = S3Fifo::pop_live(&mut self.main, &self.meta)?;
            self.main_len -= 1;
            if e.freq >= 1 {
                self.push(key, Queue::Main, e.freq - 1);
                continue;
            }
            self.meta.remove(&key);
            return Some(key);
        }
    }

    fn len(&self) -> usize {
        self.meta.len()
    }

    fn eviction_order(&self) -> Vec<BlockHash> {
        let mut copy = self.clone();
        std::iter::from_fn(|| copy.evict()).collect()
    }
}
