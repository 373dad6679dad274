//! Eviction policies: which resident block of a tier leaves first.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::BlockHash;

/// The eviction-policy seam: one instance per tier tracks the keys resident in that tier.
///
/// The cache calls `on_insert` for a key that becomes resident, `on_access` for a hit on a
/// resident key, `on_remove` for a key that leaves (evicted, promoted, demoted or removed), and
/// `victim` to pick the key to evict next (without removing it). Callers never insert a key twice
/// nor access or remove an absent key; implementations ignore such calls. Time is logical (the
/// order of calls): policies read no clock.
pub trait EvictionPolicy: std::fmt::Debug + Send {
    fn on_insert(&mut self, key: BlockHash);
    fn on_access(&mut self, key: BlockHash);
    fn on_remove(&mut self, key: BlockHash);
    /// The key to evict next, `None` when empty.
    fn victim(&self) -> Option<BlockHash>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every tracked key, the next victim first (O(n); for tests, snapshots and debugging).
    fn eviction_order(&self) -> Vec<BlockHash>;
}

/// The policies available by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Least recently used (inserts and hits refresh a key). O(1) per operation.
    #[default]
    Lru,
    /// First in, first out (hits do not refresh). O(1) per operation.
    Fifo,
}

impl PolicyKind {
    /// A fresh, empty policy of this kind.
    pub fn build(self) -> Box<dyn EvictionPolicy> {
        match self {
            PolicyKind::Lru => Box::new(ListPolicy::new(true)),
            PolicyKind::Fifo => Box::new(ListPolicy::new(false)),
        }
    }

    pub const ALL: [PolicyKind; 2] = [PolicyKind::Lru, PolicyKind::Fifo];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Fifo => "fifo",
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
#[derive(Default)]
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

pub(crate) type KeyMap<V> = HashMap<BlockHash, V, BuildHasherDefault<KeyHasher>>;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    key: BlockHash,
    /// Towards the most recent end.
    newer: u32,
    /// Towards the victim end.
    older: u32,
}

/// An intrusive doubly linked list over a slab, indexed by key: LRU (`refresh_on_access`) or
/// FIFO. Every operation is O(1).
#[derive(Debug)]
struct ListPolicy {
    refresh_on_access: bool,
    nodes: Vec<Node>,
    free: Vec<u32>,
    index: KeyMap<u32>,
    /// Most recently inserted / used.
    newest: u32,
    /// Next victim.
    oldest: u32,
}

impl ListPolicy {
    fn new(refresh_on_access: bool) -> Self {
        ListPolicy {
            refresh_on_access,
            nodes: Vec::new(),
            free: Vec::new(),
            index: KeyMap::default(),
            newest: NIL,
            oldest: NIL,
        }
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
}

impl EvictionPolicy for ListPolicy {
    fn on_insert(&mut self, key: BlockHash) {
        if self.index.contains_key(&key) {
            return;
        }
        let node = Node { key, newer: NIL, older: NIL };
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
    }

    fn on_access(&mut self, key: BlockHash) {
        if !self.refresh_on_access {
            return;
        }
        if let Some(&i) = self.index.get(&key) {
            self.unlink(i);
            self.push_newest(i);
        }
    }

    fn on_remove(&mut self, key: BlockHash) {
        if let Some(i) = self.index.remove(&key) {
            self.unlink(i);
            self.free.push(i);
        }
    }

    fn victim(&self) -> Option<BlockHash> {
        (self.oldest != NIL).then(|| self.nodes[self.oldest as usize].key)
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn eviction_order(&self) -> Vec<BlockHash> {
        let mut out = Vec::with_capacity(self.len());
        let mut i = self.oldest;
        while i != NIL {
            out.push(self.nodes[i as usize].key);
            i = self.nodes[i as usize].newer;
        }
        out
    }
}
