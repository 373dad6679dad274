//! The GPU KV block pool, shaped like vLLM v1's `BlockPool` + `FreeKVCacheBlockQueue`.
//!
//! Blocks with a reference count of 0 sit in a free queue ordered for eviction: allocation pops
//! from the head. A freed *full* block (one that holds a whole block of tokens, prompt or
//! generated) is appended to the tail and keeps its hash, so it stays reusable as a prefix-cache
//! hit until it is popped for a new allocation; a freed block that is not full (a request's last,
//! partly written block) holds nothing reusable and is put at the head, to be taken first
//! (vLLM's `free_blocks`: `prepend_n` for blocks without a hash, `append_n` for the others).
//! Requests free their blocks in reverse order, so a request's tail blocks are evicted before its
//! head blocks. Like vLLM, the pool does not deduplicate: two blocks may hold the same hash
//! (a block recomputed because the hit stops one token short of the prompt), a lookup finds the
//! first one cached, and evicting one leaves the other findable.

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
    /// The prefix hash of the tokens the block holds, when it is a full prompt block.
    hash: Option<BlockHash>,
    /// The block holds a whole block of tokens (vLLM: it has a block hash). Full blocks of
    /// generated tokens are full without a `hash`: the emulator does not know their token ids,
    /// and no prompt can match them.
    full: bool,
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
    /// Cached full blocks by hash: the first block cached with that hash. Only looked up, never
    /// iterated (determinism).
    cached: BlockMap,
    /// Further blocks cached with a hash already in `cached`, in the order cached (vLLM keeps
    /// them all in its `BlockHashToBlockMap`). Rare: only a recomputed block adds one.
    duplicates: HashMap<BlockHash, Vec<u32>, BuildHasherDefault<BlockHashHasher>>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks, as vLLM's for `num_gpu_blocks`: block 0 is its null block
    /// (a placeholder that never holds KV), so `num_blocks - 1` blocks can be allocated, and the
    /// free queue starts as blocks 1, 2, ... in order.
    pub(crate) fn new(num_blocks: u32) -> Self {
        let mut pool = BlockPool {
            blocks: vec![
                Block { ref_cnt: 0, hash: None, full: false, prev: NIL, next: NIL, in_free: false };
                num_blocks as usize
            ],
            head: NIL,
            tail: NIL,
            num_free: 0,
            cached: BlockMap::default(),
            duplicates: HashMap::default(),
        };
        for id in 1..num_blocks {
            pool.push_tail(id);
        }
        pool
    }

    pub(crate) fn num_free(&self) -> u32 {
        self.num_free
    }

    /// Fraction of the usable blocks in use, the null block left out (vLLM's
    /// `kv_cache_usage_perc`, 0..=1).
    pub(crate) fn usage(&self) -> f64 {
        let usable = self.blocks.len().saturating_sub(1);
        if usable == 0 {
            return 0.0;
        }
        1.0 - f64::from(self.num_free) / usable as f64
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

    /// How many of `ids` (hits) sit in the free queue: touching them takes them out of it, so an
    /// allocation beside them needs that many more free blocks (vLLM's evictable computed
    /// blocks in `get_num_blocks_to_allocate`).
    pub(crate) fn num_evictable(&self, ids: &[u32]) -> u32 {
        ids.iter().filter(|&&id| self.blocks[id as usize].ref_cnt == 0).count() as u32
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
            b.full = false;
            b.ref_cnt = 1;
            if let Some(h) = b.hash.take() {
                self.uncache(h, id);
            }
            out.push(id);
        }
        true
    }

    /// Marks `ids[i]` as holding the full block with hash `hashes[i]`: a prefix-cache entry
    /// from now on. Blocks already full are left as they are.
    pub(crate) fn cache(&mut self, ids: &[u32], hashes: &[BlockHash]) {
        for (&id, &h) in ids.iter().zip(hashes) {
            let b = &mut self.blocks[id as usize];
            if b.full {
                continue;
            }
            b.full = true;
            b.hash = Some(h);
            match self.cached.entry(h) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(id);
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    self.duplicates.entry(h).or_default().push(id);
                }
            }
        }
    }

    /// Marks `ids` as full of generated tokens: full blocks that no prompt can hit.
    pub(crate) fn fill(&mut self, ids: &[u32]) {
        for &id in ids {
            self.blocks[id as usize].full = true;
        }
    }

    /// Drops one reference per block, taking `ids` in reverse order (a request's tail first):
    /// full blocks that are no longer used go to the tail of the free queue, in that order;
    /// the others to its head, in that order too, so they are taken first.
    pub(crate) fn free(&mut self, ids: &[u32]) {
        for &id in ids.iter().rev() {
            let b = &mut self.blocks[id as usize];
            b.ref_cnt -= 1;
            if b.ref_cnt == 0 && b.full {
                self.push_tail(id);
            }
        }
        // Pushing each at the head in forward order leaves them there in reverse order.
        for &id in ids {
            let b = &self.blocks[id as usize];
            if b.ref_cnt == 0 && !b.full && !b.in_free {
                self.push_head(id);
            }
        }
    }

    /// Removes block `id`'s entry for hash `h`; a duplicate cached later takes its place.
    fn uncache(&mut self, h: BlockHash, id: u32) {
        if self.cached.get(&h) == Some(&id) {
            match self.duplicates.get_mut(&h) {
                Some(more) => {
                    let next = more.remove(0);
                    if more.is_empty() {
                        self.duplicates.remove(&h);
                    }
                    self.cached.insert(h, next);
                }
                None => {
                    self.cached.remove(&h);
                }
            }
        } else if let Some(more) = self.duplicates.get_mut(&h) {
            more.retain(|&x| x != id);
            if more.is_empty() {
                self.duplicates.remove(&h);
            }
        }
    }

    fn push_head(&mut self, id: u32) {
        let b = &mut self.blocks[id as usize];
        debug_assert!(!b.in_free);
        b.in_free = true;
        b.prev = NIL;
        b.next = self.head;
        if self.head == NIL {
            self.tail = id;
        } else {
            self.blocks[self.head as usize].prev = id;
        }
        self.head = id;
        self.num_free += 1;
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

    /// The free queue, the next block to be taken first.
    fn queue(pool: &BlockPool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut id = pool.head;
        while id != NIL {
            out.push(id);
            id = pool.blocks[id as usize].next;
        }
        assert_eq!(out.len() as u32, pool.num_free());
        out
    }

    fn hits(pool: &BlockPool, hashes: &[u64]) -> Vec<u32> {
        let hashes: Vec<BlockHash> = hashes.iter().map(|&x| h(x)).collect();
        let mut out = Vec::new();
        pool.computed_blocks(&hashes, &mut out);
        out
    }

    #[test]
    fn block_zero_is_the_null_block() {
        let mut pool = BlockPool::new(4);
        assert_eq!(queue(&pool), [1, 2, 3]);
        let mut a = Vec::new();
        assert!(!pool.allocate(4, &mut a));
        assert!(pool.allocate(3, &mut a));
        assert_eq!((a.as_slice(), pool.usage()), ([1, 2, 3].as_slice(), 1.0));
        pool.free(&a);
        assert_eq!(pool.usage(), 0.0);
    }

    #[test]
    fn freed_full_blocks_stay_cached_and_tails_are_evicted_first() {
        let mut pool = BlockPool::new(5);
        let mut a = Vec::new();
        assert!(pool.allocate(3, &mut a));
        assert_eq!(a, [1, 2, 3]);
        pool.cache(&a, &[h(10), h(11), h(12)]);
        pool.free(&a);
        // Block 4 (never used), then the request's tail block first.
        assert_eq!(queue(&pool), [4, 3, 2, 1]);
        assert_eq!(hits(&pool, &[10, 11, 12, 13]), [1, 2, 3]);
        let mut b = Vec::new();
        assert!(pool.allocate(2, &mut b));
        assert_eq!(b, [4, 3]);
        let hit = hits(&pool, &[10, 11, 12]);
        assert_eq!(hit, [1, 2]);
        // Touching a free cached block takes it out of the free queue.
        assert_eq!(pool.num_evictable(&hit), 2);
        pool.touch(&hit);
        assert_eq!((pool.num_free(), pool.num_evictable(&hit)), (0, 0));
        assert!(!pool.allocate(1, &mut b));
        pool.free(&hit);
        pool.free(&b);
        assert_eq!(pool.num_free(), 4);
    }

    /// vLLM's `free_blocks`: a block that is not full goes to the head of the free queue, to be
    /// taken before any cached block; a full block of generated tokens goes to the tail like a
    /// cached one, but no prompt finds it.
    #[test]
    fn blocks_that_are_not_full_are_taken_first() {
        let mut pool = BlockPool::new(7);
        let mut a = Vec::new();
        assert!(pool.allocate(4, &mut a));
        assert_eq!(a, [1, 2, 3, 4]);
        // Two prompt blocks, one block of generated tokens, one partly written block.
        pool.cache(&a[..2], &[h(10), h(11)]);
        pool.fill(&a[2..3]);
        pool.free(&a);
        assert_eq!(queue(&pool), [4, 5, 6, 3, 2, 1]);
        let mut b = Vec::new();
        assert!(pool.allocate(1, &mut b));
        assert_eq!(b, [4]);
        // Two partly written blocks freed together are taken in the order freed (tail first).
        let mut c = Vec::new();
        assert!(pool.allocate(2, &mut c));
        pool.free(&c);
        pool.free(&b);
        assert_eq!(queue(&pool), [4, 6, 5, 3, 2, 1]);
        assert_eq!(hits(&pool, &[10, 11]), [1, 2]);
    }

    /// Two blocks may hold the same hash (a block recomputed because the hit stops short): the
    /// first cached is the one found, and evicting it leaves the other findable.
    #[test]
    fn a_duplicate_block_is_found_once_the_first_is_evicted() {
        let mut pool = BlockPool::new(4);
        let mut a = Vec::new();
        assert!(pool.allocate(1, &mut a));
        pool.cache(&a, &[h(10)]);
        pool.free(&a);
        let mut b = Vec::new();
        assert!(pool.allocate(2, &mut b));
        assert_eq!(b, [2, 3]);
        pool.cache(&b[..1], &[h(10)]);
        assert_eq!(hits(&pool, &[10]), [1]);
        // Block 1, the only free one, is evicted; block 2 still holds hash 10.
        let mut c = Vec::new();
        assert!(pool.allocate(1, &mut c));
        assert_eq!(c, [1]);
        assert_eq!(hits(&pool, &[10]), [2]);
        pool.free(&b);
        pool.free(&c);
        assert!(pool.allocate(3, &mut Vec::new()));
        assert_eq!(hits(&pool, &[10]), Vec::<u32>::new());
    }
}
