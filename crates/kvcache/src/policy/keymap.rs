//! The map every policy and the cache key their state by: block keys to values, with a
//! direct-indexed vector for the small dense ids simulators use.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::BlockHash;

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
