//! Block and chunk hashing.
//!
//! Two families of keys:
//! - vLLM v1 prefix-cache block hashes ([`block_hashes`], [`vllm_sha256_cbor_hashes`]): full blocks
//!   only, each block's hash chains the parent block's hash, the block's token ids and the extra
//!   keys, so equal hashes at position `i` mean equal prefixes up to the end of block `i`;
//! - LMCache chunk keys ([`chunk_keys`]): the same chaining over 256-token chunks, optionally
//!   with the last partial chunk.
//!
//! What is verified: [`vllm_sha256_cbor_hashes`] follows vLLM v1's `hash_block_tokens` with
//! `sha256_cbor` as published in recent vLLM sources (block hashes are 32-byte digests; the
//! parent digest, the tuple of token ids and the extra-keys tuple or `None` are CBOR-encoded
//! canonically, then SHA-256'd; `NONE_HASH = sha256_cbor(PYTHONHASHSEED)`). The tests pin vectors
//! computed with Python's `cbor2` and `hashlib` from that recipe. It has not been compared with a
//! running vLLM. Older vLLM releases (integer parent hashes, `sha256_cbor_64bit`) hash differently,
//! and which extra keys a request gets (LoRA name, multimodal ids, `cache_salt` on the first block
//! only) is up to the caller.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The hash of one KV block (or LMCache chunk): 64 bits, opaque.
///
/// For [`HashAlgo::Sha256Cbor`] it is the low 64 bits of the 32-byte digest read as a big-endian
/// integer (its last 8 bytes), which is what vLLM publishes in its KV events when
/// `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlockHash(pub u64);

impl BlockHash {
    /// vLLM's integer form of a 32-byte block digest: `int.from_bytes(d, "big") & (2**64 - 1)`.
    pub fn from_digest(digest: &[u8; 32]) -> BlockHash {
        let mut low = [0u8; 8];
        low.copy_from_slice(&digest[24..]);
        BlockHash(u64::from_be_bytes(low))
    }
}

impl std::fmt::Display for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Which hash function chains the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgo {
    /// xxh3-64 seeded with the parent hash: fast, stable across runs and machines.
    #[default]
    Xxh3,
    /// vLLM's `sha256_cbor` (see [`vllm_sha256_cbor_hashes`]), root parent derived from
    /// `PYTHONHASHSEED=0`.
    Sha256Cbor,
}

/// How prompts are cut into blocks and hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashConfig {
    /// Tokens per block (vLLM's `--block-size`, default 16). Must be at least 1; 0 yields no block.
    pub block_size: u32,
    pub algo: HashAlgo,
}

impl Default for HashConfig {
    fn default() -> Self {
        HashConfig { block_size: 16, algo: HashAlgo::Xxh3 }
    }
}

/// The parent hash of the first xxh3 block (an arbitrary fixed constant).
const XXH3_ROOT: u64 = 0x6b76_6c61_625f_626c; // "kvlab_bl"
/// The parent hash of the first LMCache chunk (distinct from blocks so the key spaces differ).
const CHUNK_ROOT: u64 = 0x6b76_6c61_625f_6368; // "kvlab_ch"

/// The `PYTHONHASHSEED` that [`vllm_sha256_cbor_hashes`] derives vLLM's `NONE_HASH` from.
pub const VLLM_DEFAULT_HASH_SEED: &str = "0";

/// Hashes of the full blocks of `tokens`, in order; a trailing partial block is not hashed.
///
/// Block `i`'s hash chains block `i - 1`'s hash (a fixed root for block 0), the block's token
/// ids and `extra_keys` (applied to every block, like a LoRA name in vLLM). Invariants: two token
/// sequences that agree on their first `k` full blocks (and have the same extra keys) agree on
/// their first `k` hashes; a change in block `k` changes the hashes of blocks `k..` only.
pub fn block_hashes(cfg: &HashConfig, tokens: &[u32], extra_keys: Option<&[u8]>) -> Vec<BlockHash> {
    if cfg.block_size == 0 {
        return Vec::new();
    }
    match cfg.algo {
        HashAlgo::Xxh3 => xxh3_chain(XXH3_ROOT, tokens.chunks_exact(cfg.block_size as usize), extra_keys),
        HashAlgo::Sha256Cbor => {
            let extras: Vec<ExtraKey<'_>> = extra_keys.map(ExtraKey::Bytes).into_iter().collect();
            vllm_chain(&vllm_none_hash(VLLM_DEFAULT_HASH_SEED), cfg.block_size, tokens, &extras)
                .iter()
                .map(BlockHash::from_digest)
                .collect()
        }
    }
}

/// LMCache chunk keys: `tokens` cut into chunks of `chunk_size` (LMCache's default is 256), each
/// key chaining the previous one. With `include_partial` the last, shorter chunk gets a key too
/// (LMCache's `save_unfull_chunk`); otherwise only full chunks do. Same prefix invariants as
/// [`block_hashes`]. `chunk_size` 0 yields no key.
pub fn chunk_keys(chunk_size: u32, tokens: &[u32], include_partial: bool) -> Vec<BlockHash> {
    if chunk_size == 0 {
        return Vec::new();
    }
    let chunks = tokens.chunks(chunk_size as usize);
    if include_partial {
        xxh3_chain(CHUNK_ROOT, chunks, None)
    } else {
        xxh3_chain(CHUNK_ROOT, tokens.chunks_exact(chunk_size as usize), None)
    }
}

fn xxh3_chain<'a>(
    root: u64,
    blocks: impl Iterator<Item = &'a [u32]>,
    extra_keys: Option<&[u8]>,
) -> Vec<BlockHash> {
    let mut parent = root;
    let mut buf = Vec::new();
    blocks
        .map(|block| {
            buf.clear();
            buf.extend(block.iter().flat_map(|t| t.to_le_bytes()));
            if let Some(extra) = extra_keys {
                // A separator and the length keep (tokens, extra) unambiguous.
                buf.push(0xff);
                buf.extend((extra.len() as u64).to_le_bytes());
                buf.extend_from_slice(extra);
            }
            parent = xxh3_64_with_seed(&buf, parent);
            BlockHash(parent)
        })
        .collect()
}

/// One element of vLLM's per-block `extra_keys` tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraKey<'a> {
    /// A string such as a LoRA name, a `cache_salt` or a multimodal identifier.
    Str(&'a str),
    /// Raw bytes (CBOR byte string).
    Bytes(&'a [u8]),
    /// An integer, e.g. a multimodal offset.
    Int(u64),
}

/// vLLM's `NONE_HASH` when `PYTHONHASHSEED` is set to `seed`: `sha256(cbor(seed))`.
///
/// (With `PYTHONHASHSEED` unset vLLM draws 32 random bytes per process, which no one can
/// reproduce.)
pub fn vllm_none_hash(seed: &str) -> [u8; 32] {
    let mut buf = Vec::new();
    cbor_text(&mut buf, seed);
    Sha256::digest(&buf).into()
}

/// vLLM v1's `sha256_cbor` block hashes, full 32-byte digests.
///
/// Block `i`'s digest is `sha256(cbor_canonical((parent, tuple(block_tokens), extra_keys)))`
/// where `parent` is block `i - 1`'s digest (CBOR byte string) or, for block 0,
/// [`vllm_none_hash`] of [`VLLM_DEFAULT_HASH_SEED`] (vLLM run with `PYTHONHASHSEED=0`), and
/// `extra_keys` is CBOR `null` when `extra_keys` is `None` or empty, else an array of the keys
/// (the same keys for every block). Only full blocks are hashed.
pub fn vllm_sha256_cbor_hashes(
    block_size: u32,
    tokens: &[u32],
    extra_keys: Option<&[ExtraKey<'_>]>,
) -> Vec<[u8; 32]> {
    vllm_sha256_cbor_hashes_with_root(&vllm_none_hash(VLLM_DEFAULT_HASH_SEED), block_size, tokens, extra_keys)
}

/// [`vllm_sha256_cbor_hashes`] with an explicit root parent (vLLM's `NONE_HASH`).
pub fn vllm_sha256_cbor_hashes_with_root(
    root: &[u8; 32],
    block_size: u32,
    tokens: &[u32],
    extra_keys: Option<&[ExtraKey<'_>]>,
) -> Vec<[u8; 32]> {
    if block_size == 0 {
        return Vec::new();
    }
    vllm_chain(root, block_size, tokens, extra_keys.unwrap_or(&[]))
}

fn vllm_chain(root: &[u8; 32], block_size: u32, tokens: &[u32], extras: &[ExtraKey<'_>]) -> Vec<[u8; 32]> {
    let mut parent = *root;
    let mut buf = Vec::new();
    tokens
        .chunks_exact(block_size as usize)
        .map(|block| {
            buf.clear();
            cbor_head(&mut buf, MAJOR_ARRAY, 3);
            cbor_head(&mut buf, MAJOR_BYTES, parent.len() as u64);
            buf.extend_from_slice(&parent);
            cbor_head(&mut buf, MAJOR_ARRAY, block.len() as u64);
            for &t in block {
                cbor_head(&mut buf, MAJOR_UINT, u64::from(t));
            }
            if extras.is_empty() {
                buf.push(CBOR_NULL);
            } else {
                cbor_head(&mut buf, MAJOR_ARRAY, extras.len() as u64);
                for extra in extras {
                    match *extra {
                        ExtraKey::Str(s) => cbor_text(&mut buf, s),
                        ExtraKey::Bytes(b) => {
                            cbor_head(&mut buf, MAJOR_BYTES, b.len() as u64);
                            buf.extend_from_slice(b);
                        }
                        ExtraKey::Int(i) => cbor_head(&mut buf, MAJOR_UINT, i),
                    }
                }
            }
            parent = Sha256::digest(&buf).into();
            parent
        })
        .collect()
}

const MAJOR_UINT: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const CBOR_NULL: u8 = 0xf6;

/// A CBOR head in its shortest form, as canonical (RFC 7049 §3.9) encoding requires.
fn cbor_head(buf: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        buf.push(m | arg as u8);
    } else if arg <= u64::from(u8::MAX) {
        buf.extend([m | 24, arg as u8]);
    } else if arg <= u64::from(u16::MAX) {
        buf.push(m | 25);
        buf.extend((arg as u16).to_be_bytes());
    } else if arg <= u64::from(u32::MAX) {
        buf.push(m | 26);
        buf.extend((arg as u32).to_be_bytes());
    } else {
        buf.push(m | 27);
        buf.extend(arg.to_be_bytes());
    }
}

fn cbor_text(buf: &mut Vec<u8>, s: &str) {
    cbor_head(buf, MAJOR_TEXT, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}
