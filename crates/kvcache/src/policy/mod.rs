//! Eviction policies: which resident block of a tier leaves first.
//!
//! Recency and frequency policies ([`PolicyKind::Lru`], `Fifo`, `Lfu`, `S3Fifo`, `Sieve`) need
//! only the order of calls. [`PolicyKind::Belady`], [`ConversationAware`] and [`Learned`] read
//! the [`AccessInfo`] the caller passes with each access ([`crate::TieredCache::touch`]).
//!
//! This module holds the seam ([`EvictionPolicy`], [`AccessInfo`]) and the registry of policies
//! by name ([`PolicyKind`]); each policy lives in a module of its own:
//!
//! | module | policy |
//! |---|---|
//! | `lru` | LRU and FIFO (one list, refreshed on a hit or not) |
//! | `lfu` | LFU, ties to the least recently used |
//! | `sieve` | SIEVE |
//! | `s3fifo` | S3-FIFO |
//! | `belady` | Belady's MIN (offline optimum) |
//! | `conversation` | conversation-aware ([`ConversationWeights`]) |
//! | `learned` | learned ([`LogisticModel`]) |
//!
//! and the parts they share: `keymap` (the key map of every policy and of the cache), `list`
//! (the linked list of LRU, FIFO and SIEVE), `priority` (the priority queue of the
//! conversation-aware and learned policies).

mod belady;
mod conversation;
mod keymap;
mod learned;
mod lfu;
mod list;
mod lru;
mod priority;
mod s3fifo;
mod sieve;

use serde::{Deserialize, Serialize};

use crate::BlockHash;

pub use conversation::{ConversationAware, ConversationWeights};
pub(crate) use keymap::KeyMap;
pub use learned::{Learned, LogisticModel};

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
            PolicyKind::Lru => Box::new(lru::ListPolicy::new(true)),
            PolicyKind::Fifo => Box::new(lru::ListPolicy::new(false)),
            PolicyKind::Lfu => Box::new(lfu::Lfu::default()),
            PolicyKind::S3Fifo => Box::new(s3fifo::S3Fifo::default()),
            PolicyKind::Sieve => Box::new(sieve::Sieve::default()),
            PolicyKind::Belady => Box::new(belady::Belady::default()),
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
