//! The KV-cache model: block hashing as vLLM v1 does it, LMCache chunk keys, storage tiers and
//! eviction policies. Pure: no I/O, no clock, no failure on valid input; shared by the simulator
//! and the emulated engine.
//!
//! - [`block_hashes`] / [`chunk_keys`] turn token ids into chained keys;
//! - [`TieredCache`] tracks which keys are resident in which [`Tier`], looks prefixes up in
//!   LMCache's order (GPU, CPU, disk, remote), promotes hits, demotes on overflow and counts hits
//!   per tier in blocks and tokens;
//! - [`EvictionPolicy`] is the seam for policies ([`PolicyKind::Lru`] by default).

mod cache;
mod hash;
mod policy;

pub use cache::{
    capacity_blocks, CacheConfig, CacheConfigError, HitStats, Lookup, Movement, Tier, TierConfig, TierStats,
    TieredCache,
};
pub use hash::{
    block_hashes, chunk_keys, vllm_none_hash, vllm_sha256_cbor_hashes, vllm_sha256_cbor_hashes_with_root,
    BlockHash, ExtraKey, HashAlgo, HashConfig, VLLM_DEFAULT_HASH_SEED,
};
pub use policy::{
    AccessInfo, ConversationAware, ConversationWeights, EvictionPolicy, Learned, LogisticModel, PolicyKind,
};

/// A name (tier, policy) that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{got}`; expected one of: {expected}")]
pub struct ParseNameError {
    pub what: &'static str,
    pub got: String,
    pub expected: String,
}
