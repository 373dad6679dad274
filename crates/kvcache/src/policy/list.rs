//! The intrusive doubly linked list LRU, FIFO and SIEVE keep their keys in.

use super::KeyMap;
use crate::BlockHash;

pub(super) const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
pub(super) struct Node {
    pub(super) key: BlockHash,
    /// Towards the most recent end.
    pub(super) newer: u32,
    /// Towards the victim end.
    pub(super) older: u32,
    /// SIEVE's visited bit (unused by LRU/FIFO).
    pub(super) visited: bool,
}

/// An intrusive doubly linked list over a slab, indexed by key. Every operation is O(1).
#[derive(Debug, Clone, Default)]
pub(super) struct List {
    pub(super) nodes: Vec<Node>,
    free: Vec<u32>,
    pub(super) index: KeyMap<u32>,
    /// Most recently inserted / used.
    pub(super) newest: u32,
    /// Oldest end.
    pub(super) oldest: u32,
}

impl List {
    pub(super) fn new() -> Self {
        List { newest: NIL, oldest: NIL, ..List::default() }
    }

    pub(super) fn unlink(&mut self, i: u32) {
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

    pub(super) fn push_newest(&mut self, i: u32) {
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
    pub(super) fn insert(&mut self, key: BlockHash) -> Option<u32> {
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

    pub(super) fn remove_at(&mut self, key: BlockHash) -> Option<u32> {
        let i = self.index.remove(&key)?;
        self.unlink(i);
        self.free.push(i);
        Some(i)
    }

    pub(super) fn order(&self) -> Vec<BlockHash> {
        let mut out = Vec::with_capacity(self.index.len());
        let mut i = self.oldest;
        while i != NIL {
            out.push(self.nodes[i as usize].key);
            i = self.nodes[i as usize].newer;
        }
        out
    }
}
