//! Eviction policies: which resident block of a tier leaves first.
//!
//! Recency and frequency policies ([`PolicyKind::Lru`], `Fifo`, `Lfu`, `S3Fifo`, `Sieve`) need
//! only the order of calls. [`PolicyKind::Belady`], [`ConversationAware`] and [`Learned`] read
//! the [`AccessInfo`] the caller passes with each access ([`crate::TieredCache::touch`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::BlockHash;

/// What the caller knows about one access of one block, for policies that use more than the
/// order of calls. Every field has a neutral value ([`AccessInfo::UNKNOWN`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AccessInfo {
    /// Time of the request, milliseconds from the start of the trace.
    pub time_ms: u64,
    /// Logical time (request index) of the next request that uses this block; `u64::MAX`: never
    /// or unknown. Only an offline simulator knows it (Belady).
    pub next_use: u64,
    /// The conversation the request belongs to.
    pub session: Option<u64>,
    /// Turn of the request in its conversation (1 = first; 0 unknown).
    pub turn: u32,
    /// Index of the block in the request's prompt (0 = first block).
    pub depth: u32,
    /// When the conversation's first turn arrived, milliseconds from the start of the trace.
    pub session_start_ms: u64,
}

impl AccessInfo {
    /// Nothing known: time 0, never used again, no session.
    pub const UNKNOWN: AccessInfo =
        AccessInfo { time_ms: 0, next_use: u64::MAX, session: None, turn: 0, depth: 0, session_start_ms: 0 };
}

impl Default for AccessInfo {
    fn default() -> Self {
        AccessInfo::UNKNOWN
    }
}

/// The eviction-policy seam: one instance per tier tracks the keys resident in that tier.
///
/// The cache calls `on_insert` for a key that becomes resident, `on_access` for a hit on a
/// resident key, `on_remove` for a key that leaves (promoted or removed), and `evict` to take the
/// key that leaves on overflow. Callers never insert a key twice nor access or remove an absent
/// key; implementations ignore such calls. Time is logical (the order of calls) or comes from
/// [`AccessInfo`]: policies read no clock.
///
/// Invariant: `evict()` returns what `victim()` returned just before (with no call in between).
pub trait EvictionPolicy: std::fmt::Debug + Send {
    fn on_insert(&mut self, key: BlockHash);
    fn on_access(&mut self, key: BlockHash);
    fn on_remove(&mut self, key: BlockHash);
    /// The key to evict next, `None` when empty. May be O(n) for policies whose eviction
    /// reorganises their queues (SIEVE, S3-FIFO); the cache calls [`EvictionPolicy::evict`].
    fn victim(&self) -> Option<BlockHash>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every tracked key, the next victim first (O(n) or more; for tests, snapshots, debugging).
    fn eviction_order(&self) -> Vec<BlockHash>;

    /// Removes and returns the next victim, `None` when empty.
    fn evict(&mut self) -> Option<BlockHash> {
        let v = self.victim()?;
        self.on_remove(v);
        Some(v)
    }
    /// The capacity of the tier in blocks (called once, before any key; policies that size
    /// internal queues use it).
    fn set_capacity(&mut self, _blocks: u64) {}
    /// `on_insert` with what the caller knows about the access.
    fn on_insert_with(&mut self, key: BlockHash, _info: &AccessInfo) {
        self.on_insert(key);
    }
    /// `on_access` with what the caller knows about the access.
    fn on_access_with(&mut self, key: BlockHash, _info: &AccessInfo) {
        self.on_access(key);
    }
    /// The last [`AccessInfo`] seen for a tracked key (passed on when the key is demoted).
    fn info(&self, _key: BlockHash) -> Option<AccessInfo> {
        None
    }
    /// [`EvictionPolicy::evict`] with the victim's last [`AccessInfo`] (or
    /// [`AccessInfo::UNKNOWN`]), which the cache passes to the tier below.
    fn evict_with_info(&mut self) -> Option<(BlockHash, AccessInfo)> {
        let key = self.evict()?;
        Some((key, AccessInfo::UNKNOWN))
    }
}

/// The policies available by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PolicyKind {
    /// Least recently used (inserts and hits refresh a key). O(1) per operation.
    #[default]
    #[serde(rename = "lru")]
    Lru,
    /// First in, first out (hits do not refresh). O(1) per operation.
    #[serde(rename = "fifo")]
    Fifo,
    /// Least frequently used, ties broken by least recent use. O(log n) per operation.
    #[serde(rename = "lfu")]
    Lfu,
    /// S3-FIFO (Yang et al., SOSP'23): a small FIFO (10% of the capacity) filters one-hit
    /// wonders, a main FIFO with 2-bit frequencies reinserts used keys, a ghost queue remembers
    /// keys evicted from the small queue. Amortised O(1).
    #[serde(rename = "s3fifo")]
    S3Fifo,
    /// SIEVE (Zhang et al., NSDI'24): a FIFO with a visited bit and a hand that sweeps from the
    /// oldest key, sparing visited keys once. Amortised O(1).
    #[serde(rename = "sieve")]
    Sieve,
    /// Offline optimal (Belady's MIN): evicts the key whose next use is farthest in the future,
    /// from [`AccessInfo::next_use`]. O(log n) per operation. Without next-use information it
    /// evicts arbitrarily (largest key first).
    #[serde(rename = "belady")]
    Belady,
    /// [`ConversationAware`] with [`ConversationWeights::default`].
    #[serde(rename = "conversation-aware")]
    ConversationAware,
    /// [`Learned`] with [`LogisticModel::default`] (a hand-set prior; train one for a trace).
    #[serde(rename = "learned")]
    Learned,
}

impl PolicyKind {
    /// A fresh, empty policy of this kind.
    pub fn build(self) -> Box<dyn EvictionPolicy> {
        match self {
            PolicyKind::Lru => Box::new(ListPolicy::new(true)),
            PolicyKind::Fifo => Box::new(ListPolicy::new(false)),
            PolicyKind::Lfu => Box::new(Lfu::default()),
            PolicyKind::S3Fifo => Box::new(S3Fifo::default()),
            PolicyKind::Sieve => Box::new(Sieve::default()),
            PolicyKind::Belady => Box::new(Belady::default()),
            PolicyKind::ConversationAware => ConversationAware::boxed(ConversationWeights::default()),
            PolicyKind::Learned => Learned::boxed(LogisticModel::default()),
        }
    }

    pub const ALL: [PolicyKind; 8] = [
        PolicyKind::Lru,
        PolicyKind::Fifo,
        PolicyKind::Lfu,
        PolicyKind::S3Fifo,
        PolicyKind::Sieve,
        PolicyKind::Belady,
        PolicyKind::ConversationAware,
        PolicyKind::Learned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Fifo => "fifo",
            PolicyKind::Lfu => "lfu",
            PolicyKind::S3Fifo => "s3fifo",
            PolicyKind::Sieve => "sieve",
            PolicyKind::Belady => "belady",
            PolicyKind::ConversationAware => "conversation-aware",
            PolicyKind::Learned => "learned",
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = crate::ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| crate::ParseNameError {
            what: "eviction policy",
            got: s.to_owned(),
            expected: PolicyKind::ALL.map(PolicyKind::as_str).join(", "),
        })
    }
}

/// A hasher for keys that are already hashes (or small ids, as in traces): one multiply mixes
/// the bits so the map's control bytes stay well spread.
#[derive(Default, Clone)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

type HashKeyMap<V> = HashMap<BlockHash, V, BuildHasherDefault<KeyHasher>>;

/// Keys below this are stored in a vector indexed by the key (simulators remap trace blocks to
/// dense ids `0..n`); larger keys (real hashes) go to a hash map. A random 64-bit hash falls
/// below it with probability 2^-40, which only costs memory, never correctness.
const DENSE_LIMIT: u64 = 1 << 26;

/// A map from block keys: a direct-indexed vector for small keys, a hash map for the rest.
/// Memory: O(largest small key + number of large keys).
#[derive(Debug, Clone)]
pub(crate) struct KeyMap<V> {
    dense: Vec<Option<V>>,
    dense_len: usize,
    sparse: HashKeyMap<V>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap { dense: Vec::new(), dense_len: 0, sparse: HashKeyMap::default() }
    }
}

impl<V> KeyMap<V> {
    #[inline]
    pub(crate) fn get(&self, key: &BlockHash) -> Option<&V> {
        if key.0 < DENSE_LIMIT {
            self.dense.get(key.0 as usize).and_then(Option::as_ref)
        } else {
            self.sparse.get(key)
        }
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: &BlockHash) -> Option<&mut V> {
        if key.0 < DENSE_LIMIT {
            self.dense.get_mut(key.0 as usize).and_then(Option::as_mut)
        } else {
            self.sparse.get_mut(key)
        }
    }

    #[inline]
    pub(crate) fn contains_key(&self, key: &BlockHash) -> bool {
        self.get(key).is_some()
    }

    #[inline]
    pub(crate) fn insert(&mut self, key: BlockHash, value: V) -> Option<V> {
        if key.0 < DENSE_LIMIT {
            let i = key.0 as usize;
            if i >= self.dense.len() {
                let len = (i + 1).max(self.dense.len() * 2).min(DENSE_LIMIT as usize);
                self.dense.resize_with(len, || None);
            }
            let old = self.dense[i].replace(value);
            if old.is_none() {
                self.dense_len += 1;
            }
            old
        } else {
            self.sparse.insert(key, value)
        }
    }

    #[inline]
    pub(crate) fn remove(&mut self, key: &BlockHash) -> Option<V> {
        if key.0 < DENSE_LIMIT {
            let old = self.dense.get_mut(key.0 as usize).and_then(Option::take);
            if old.is_some() {
                self.dense_len -= 1;
            }
            old
        } else {
            self.sparse.remove(key)
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.dense_len + self.sparse.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    key: BlockHash,
    /// Towards the most recent end.
    newer: u32,
    /// Towards the victim end.
    older: u32,
    /// SIEVE's visited bit (unused by LRU/FIFO).
    visited: bool,
}

/// An intrusive doubly linked list over a slab, indexed by key. Every operation is O(1).
#[derive(Debug, Clone, Default)]
struct List {
    nodes: Vec<Node>,
    free: Vec<u32>,
    index: KeyMap<u32>,
    /// Most recently inserted / used.
    newest: u32,
    /// Oldest end.
    oldest: u32,
}

impl List {
    fn new() -> Self {
        List { newest: NIL, oldest: NIL, ..List::default() }
    }

    fn unlink(&mut self, i: u32) {
        let Node { newer, older, .. } = self.nodes[i as usize];
        match newer {
            NIL => self.newest = older,
            n => self.nodes[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.nodes[o as usize].newer = newer,
        }
    }

    fn push_newest(&mut self, i: u32) {
        let old_newest = self.newest;
        let node = &mut self.nodes[i as usize];
        node.newer = NIL;
        node.older = old_newest;
        match old_newest {
            NIL => self.oldest = i,
            n => self.nodes[n as usize].newer = i,
        }
        self.newest = i;
    }

    /// Inserts at the newest end; `None` if already present.
    fn insert(&mut self, key: BlockHash) -> Option<u32> {
        if self.index.contains_key(&key) {
            return None;
        }
        let node = Node { key, newer: NIL, older: NIL, visited: false };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        self.push_newest(i);
        Some(i)
    }

    fn remove_at(&mut self, key: BlockHash) -> Option<u32> {
        let i = self.index.remove(&key)?;
        self.unlink(i);
        self.free.push(i);
        Some(i)
    }

    fn order(&self) -> Vec<BlockHash> {
        let mut out = Vec::with_capacity(self.index.len());
        let mut i = self.oldest;
        while i != NIL {
            out.push(self.nodes[i as usize].key);
            i = self.nodes[i as usize].newer;
        }
        out
    }
}

/// LRU (`refresh_on_access`) or FIFO over a [`List`].
#[derive(Debug)]
struct ListPolicy {
    refresh_on_access: bool,
    list: List,
}

impl ListPolicy {
    fn new(refresh_on_access: bool) -> Self {
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

/// Least frequently used; ties go to the least recently used.
#[derive(Debug, Default)]
struct Lfu {
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

/// SIEVE over a [`List`]: the hand walks from the oldest key towards the newest, clearing
/// visited bits, and evicts the first unvisited key; it wraps around at the newest end.
#[derive(Debug, Clone)]
struct Sieve {
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
struct S3Fifo {
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

/// Belady's MIN: evicts the key used farthest in the future ([`AccessInfo::next_use`]).
#[derive(Debug, Default)]
struct Belady {
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

/// Tunable weights of [`ConversationAware`]. A block's priority, fixed when it is touched, is
///
/// `time_s + turn * ln(1 + turn) - depth * depth_index - finished * [turn >= finished_turn > 0]`
///
/// in seconds: the lowest priority leaves first. `time_s` (the request's time) carries the time
/// since the conversation's last turn (every turn touches all of its prefix blocks); `turn`
/// credits long conversations, which come back; `depth` makes deep blocks (reused only with
/// their whole prefix) leave before shallow ones; `finished` penalises a conversation that looks
/// finished (it reached `finished_turn` turns).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationWeights {
    pub turn: f64,
    pub depth: f64,
    pub finished: f64,
    pub finished_turn: u32,
}

impl Default for ConversationWeights {
    fn default() -> Self {
        ConversationWeights { turn: 30.0, depth: 0.5, finished: 0.0, finished_turn: 0 }
    }
}

/// A logistic-regression reuse predictor over five features of a block access (see
/// [`LogisticModel::features`]), standardised with `mean` and `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogisticModel {
    pub bias: f64,
    pub weights: [f64; 5],
    pub mean: [f64; 5],
    pub scale: [f64; 5],
    /// Seconds of priority a certain reuse is worth (priority = `time_s + horizon_s * p`).
    pub horizon_s: f64,
}

impl Default for LogisticModel {
    /// A hand-set prior: recent, often used, shallow blocks of long conversations come back.
    fn default() -> Self {
        LogisticModel {
            bias: 0.0,
            weights: [-1.0, 1.0, -0.5, 0.5, -0.2],
            mean: [3.0, 0.5, 8.0, 1.0, 4.0],
            scale: [2.0, 1.0, 8.0, 2.0, 2.0],
            horizon_s: 300.0,
        }
    }
}

impl LogisticModel {
    /// Feature names, in the order of [`LogisticModel::features`].
    pub const FEATURES: [&'static str; 5] =
        ["ln(1+s since last access)", "ln(1+access count)", "prefix depth", "turn", "ln(1+session age s)"];

    /// The raw features of an access: time since the block's previous access (`prev`, or a
    /// day if none), how many times it was accessed before, its depth, the turn and the
    /// session's age.
    pub fn features(info: &AccessInfo, prev: Option<&AccessInfo>, count: u32) -> [f64; 5] {
        let since_ms = prev.map_or(86_400_000, |p| info.time_ms.saturating_sub(p.time_ms));
        let age_ms = info.time_ms.saturating_sub(info.session_start_ms);
        [
            (since_ms as f64 / 1e3).ln_1p(),
            f64::from(count).ln_1p(),
            f64::from(info.depth),
            f64::from(info.turn),
            (age_ms as f64 / 1e3).ln_1p(),
        ]
    }

    /// The predicted probability of reuse, in (0, 1).
    pub fn predict(&self, x: &[f64; 5]) -> f64 {
        let mut z = self.bias;
        for (((x, w), m), s) in x.iter().zip(&self.weights).zip(&self.mean).zip(&self.scale) {
            let s = if *s > 0.0 { *s } else { 1.0 };
            z += w * (x - m) / s;
        }
        1.0 / (1.0 + (-z).exp())
    }
}

/// How a priority policy scores a touch.
trait Scorer: std::fmt::Debug + Send {
    /// Priority in seconds (lowest leaves first).
    fn score(&self, info: &AccessInfo, prev: Option<&AccessInfo>, count: u32) -> f64;
}

impl Scorer for ConversationWeights {
    fn score(&self, info: &AccessInfo, _prev: Option<&AccessInfo>, _count: u32) -> f64 {
        let turn = f64::from(info.turn);
        let finished = self.finished_turn > 0 && info.turn >= self.finished_turn;
        info.time_ms as f64 / 1e3 + self.turn * turn.ln_1p()
            - self.depth * f64::from(info.depth)
            - if finished { self.finished } else { 0.0 }
    }
}

impl Scorer for LogisticModel {
    fn score(&self, info: &AccessInfo, prev: Option<&AccessInfo>, count: u32) -> f64 {
        info.time_ms as f64 / 1e3 + self.horizon_s * self.predict(&LogisticModel::features(info, prev, count))
    }
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
struct PriorityPolicy<S> {
    scorer: S,
    tick: u64,
    meta: KeyMap<Scored>,
    order: BTreeSet<(i64, u64, BlockHash)>,
}

impl<S: Scorer> PriorityPolicy<S> {
    fn new(scorer: S) -> Self {
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

/// The rule-based conversation-aware policy (see [`ConversationWeights`]).
#[derive(Debug)]
pub struct ConversationAware;

impl ConversationAware {
    /// A fresh, empty policy with these weights.
    pub fn boxed(weights: ConversationWeights) -> Box<dyn EvictionPolicy> {
        Box::new(PriorityPolicy::new(weights))
    }
}

/// The learned policy: priority `time_s + horizon_s * P(reuse)` from a [`LogisticModel`].
#[derive(Debug)]
pub struct Learned;

impl Learned {
    /// A fresh, empty policy with this model.
    pub fn boxed(model: LogisticModel) -> Box<dyn EvictionPolicy> {
        Box::new(PriorityPolicy::new(model))
    }
}
