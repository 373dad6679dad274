//! The GPU KV block pool, shaped like vLLM v1's `BlockPool` + `FreeKVCacheBlockQueue`.
//!
//! Blocks with a reference count of 0 sit in a free queue ordered for eviction: allocation pops
//! from the head, freeing appends to the tail. A freed block keeps its hash and stays reusable as
//! a prefix-cache hit until it is popped for a new allocation. Requests free their blocks in
//! reverse order, so a request's tail blocks are evicted before its head blocks.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use kvcache::BlockHash;

const NIL: u32 = u32::MAX;

/// Hashes a [`BlockHash`] (already a well-mixed 64-bit hash) with one multiply instead of
/// SipHash: the pool's map is the emulator's hottest path. Deterministic; the map is never
/// iterated, so its order does not matter anyway.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BlockHashHasher(u64);

impl Hasher for BlockHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `BlockHash` (it writes one u64); FNV-1a keeps any other key correct.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type BlockMap = HashMap<BlockHash, u32, BuildHasherDefault<BlockHashHasher>>;

#[derive(Debug, Clone)]
struct Block {
    ref_cnt: u32,
    hash: Option<BlockHash>,
    prev: u32,
    next: u32,
    in_free: bool,
}

#[derive(Debug)]
pub(crate) struct BlockPool {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: u32,
    /// Cached full blocks by hash. Only looked up, never iterated (determinism).
    cached: BlockMap,
}

impl BlockPool {
    pub(crate) fn new(num_blocks: u32) -> Self {
        let mut pool = BlockPool {
            blocks: vec![
                Block { ref_cnt: 0, hash: None, prev: NIL, next: NIL, in_free: false };
                num_blocks as usize
            ],
            head: NIL,
            tail: NIL,
            num_free: 0,
            cached: BlockMap::default(),
        };
        for id in 0..num_blocks {
            pool.push_tail(id);
        }
        pool
    }

    #[cfg(test)]
    pub(crate) fn num_free(&self) -> u32 {
        self.num_free
    }

    /// Fraction of blocks in use (vLLM's `kv_cache_usage_perc`, 0..=1).
    pub(crate) fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - f64::from(self.num_free) / self.blocks.len() as f64
    }

    /// The blocks of the longest cached prefix of `hashes`.
    pub(crate) fn computed_blocks(&self, hashes: &[BlockHash], out: &mut Vec<u32>) {
        out.clear();
        for h in hashes {
            match self.cached.get(h) {
                Some(&id) => out.push(id),
                None => break,
            }
        }
    }

    /// Takes a reference on each block (hits), removing free ones from the free queue.
    pub(crate) fn touch(&mut self, ids: &[u32]) {
        for &id in ids {
            if self.blocks[id as usize].ref_cnt == 0 {
                self.unlink(id);
            }
            self.blocks[id as usize].ref_cnt += 1;
        }
    }

    /// Pops `n` blocks from the head of the free queue (evicting their cached hashes), or
    /// returns false and changes nothing when fewer than `n` are free.
    pub(crate) fn allocate(&mut self, n: u32, out: &mut Vec<u32>) -> bool {
        if n > self.num_free {
            return false;
        }
        for _ in 0..n {
            let id = self.head;
            self.unlink(id);
            let b = &mut self.blocks[id as usize];
            if let Some(h) = b.hash.take() {
                if self.cached.get(&h) == Some(&id) {
                    self.cached.remove(&h);
                }
            }
            b.ref_cnt = 1;
            out.push(id);
        }
        true
    }

    /// Marks `ids[i]` as holding the full block with hash `hashes[i]` (for `i` in `range`).
    pub(crate) fn cache(&mut self, ids: &[u32], hashes: &[BlockHash]) {
        for (&id, &h) in ids.iter().zip(hashes) {
            let b = &mut self.blocks[id as usize];
            if b.hash.is_some() {
                continue;
            }
            b.hash = Some(h);
            self.cached.entry(h).or_insert(id);
        }
    }

    /// Drops one reference per block, in reverse order, so tail blocks are evicted first.
    pub(crate) fn free(&mut self, ids: &[u32]) {
        for &id in ids.iter().rev() {
            let b = &mut self.blocks[id as usize];
            b.ref_cnt -= 1;
            if b.ref_cnt == 0 {
                self.push_tail(id);
            }
        }
    }

    fn push_tail(&mut self, id: u32) {
        let b = &mut self.blocks[id as usize];
        debug_assert!(!b.in_free);
        b.in_free = true;
        b.prev = self.tail;
        b.next = NIL;
        if self.tail == NIL {
            self.head = id;
        } else {
            self.blocks[self.tail as usize].next = id;
        }
        self.tail = id;
        self.num_free += 1;
    }

    fn unlink(&mut self, id: u32) {
        let (prev, next) = {
            let b = &mut self.blocks[id as usize];
            debug_assert!(b.in_free);
            b.in_free = false;
            (b.prev, b.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        self.num_free -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: u64) -> BlockHash {
        BlockHash(x)
    }

    #[test]
    fn freed_blocks_stay_cached_and_tails_are_evicted_first() {
        let mut pool = BlockPool::new(4);
        let mut a = Vec::new();
        assert!(pool.allocate(3, &mut a));
        assert_eq!(a, [0, 1, 2]);
        pool.cache(&a, &[h(10), h(11), h(12)]);
        pool.free(&a);
        assert_eq!(pool.num_free(), 4);
        // Still a prefix hit after being freed.
        let mut hit = Vec::new();
        pool.computed_blocks(&[h(10), h(11), h(12), h(13)], &mut hit);
        assert_eq!(hit, [0, 1, 2]);
        // Free queue is now 3, 2, 1, 0: block 3 (never used) then the tail block 2 go first.
        let mut b = Vec::new();
        assert!(pool.allocate(2, &mut b));
        assert_eq!(b, [3, 2]);
        pool.computed_blocks(&[h(10), h(11), h(12)], &mut hit);
        assert_eq!(hit, [0, 1]);
        // Touching a free cached block takes it out of the free queue.
        pool.touch(&hit);
        assert_eq!(pool.num_free(), 0);
        assert!(!pool.allocate(1, &mut b));
        pool.free(&hit);
        pool.free(&b);
        assert_eq!(pool.num_free(), 4);
        assert_eq!(pool.usage(), 0.0);
    }
}
