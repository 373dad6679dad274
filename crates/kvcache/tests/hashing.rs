//! Block hashing and chunk keys.

use kvcache::{
    block_hashes, chunk_keys, vllm_none_hash, vllm_sha256_cbor_hashes, BlockHash, ExtraKey, HashAlgo,
    HashConfig,
};

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn cfg(algo: HashAlgo) -> HashConfig {
    HashConfig { block_size: 16, algo }
}

const ALGOS: [HashAlgo; 2] = [HashAlgo::Xxh3, HashAlgo::Sha256Cbor];

#[test]
fn only_full_blocks_are_hashed() {
    for algo in ALGOS {
        let tokens: Vec<u32> = (0..47).collect();
        assert_eq!(block_hashes(&cfg(algo), &tokens, None).len(), 2, "{algo:?}");
        assert_eq!(block_hashes(&cfg(algo), &tokens[..15], None), vec![], "{algo:?}");
        // The partial tail does not change the full blocks' hashes.
        assert_eq!(
            block_hashes(&cfg(algo), &tokens, None),
            block_hashes(&cfg(algo), &tokens[..32], None),
            "{algo:?}"
        );
    }
    let zero = HashConfig { block_size: 0, algo: HashAlgo::Xxh3 };
    assert_eq!(block_hashes(&zero, &[1, 2, 3], None), vec![]);
}

#[test]
fn equal_prefixes_share_leading_hashes_and_a_change_in_block_k_changes_k_onwards() {
    for algo in ALGOS {
        let base: Vec<u32> = (0..16 * 5).map(|i| i * 7 % 1000).collect();
        let h = block_hashes(&cfg(algo), &base, None);
        assert_eq!(h.len(), 5);
        for k in 0..5 {
            let mut changed = base.clone();
            changed[16 * k + 3] += 1;
            let h2 = block_hashes(&cfg(algo), &changed, None);
            assert_eq!(h[..k], h2[..k], "{algo:?}: blocks before {k} must not change");
            for j in k..5 {
                assert_ne!(h[j], h2[j], "{algo:?}: block {j} must change after a change in {k}");
            }
        }
        // Same tokens, different extra keys: every block differs.
        let salted = block_hashes(&cfg(algo), &base, Some(b"lora-a"));
        assert!(h.iter().zip(&salted).all(|(a, b)| a != b), "{algo:?}");
        // Hashes within one sequence are distinct (repeated blocks chain differently).
        let repeated = vec![5u32; 16 * 3];
        let r = block_hashes(&cfg(algo), &repeated, None);
        assert!(r[0] != r[1] && r[1] != r[2], "{algo:?}");
    }
}

/// Pinned so a change of the hash (which would invalidate stored keys) is noticed. Expected values
/// produced with Python's `xxhash` 3.x: the parent is the seed, tokens are little-endian u32:
///
/// ```python
/// p = 0x6b766c61625f626c  # blocks; chunks start from 0x6b766c61625f6368
/// p = xxhash.xxh3_64_intdigest(b"".join(struct.pack("<I", t) for t in block), seed=p)
/// ```
#[test]
fn xxh3_hashes_match_vectors_computed_with_python_xxhash() {
    let tokens: Vec<u32> = (0..256).collect();
    let got = block_hashes(&cfg(HashAlgo::Xxh3), &tokens[..32], None);
    assert_eq!(got, [BlockHash(0xcbe0b925d725b5dc), BlockHash(0xc66547aa0c23568d)]);
    assert_eq!(chunk_keys(256, &tokens, false), [BlockHash(0x4e2f99e330a5d162)]);
}

/// Expected vectors produced with Python's `cbor2` 6.3 following vLLM v1's `sha256_cbor` and
/// `hash_block_tokens`:
///
/// ```python
/// def sha256_cbor(x): return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()
/// none = sha256_cbor("0")                      # init_none_hash with PYTHONHASHSEED=0
/// p = none
/// for each full block: p = sha256_cbor((p, tuple(block_tokens), extra_keys))
/// ```
#[test]
fn sha256_cbor_matches_vectors_computed_with_python_cbor2() {
    assert_eq!(hex(&vllm_none_hash("0")), "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e");

    let tokens: Vec<u32> = (0..40).collect();
    let got: Vec<String> = vllm_sha256_cbor_hashes(16, &tokens, None).iter().map(hex).collect();
    assert_eq!(
        got,
        [
            "d830de3d42c00f25a2949b5d12d98642664a44872c1614c5b0147556276afc9c",
            "fedd9e4abebebbe6f6cf96b682f08d316063fe2f22a5c552192dd62904fcccac",
        ]
    );
    // BlockHash is vLLM's integer form: int.from_bytes(digest, "big") & (2**64 - 1).
    assert_eq!(
        block_hashes(&cfg(HashAlgo::Sha256Cbor), &tokens, None),
        [BlockHash(12687895063098490012), BlockHash(1814341696565857452)]
    );

    // Every CBOR integer width (1, 2, 3, 5 bytes).
    let big = [0, 23, 24, 255, 256, 65535, 65536, 128255, 151935, 4294967295, 7, 8, 9, 10, 11, 12];
    assert_eq!(
        hex(&vllm_sha256_cbor_hashes(16, &big, None)[0]),
        "4a84b3bdb72671ba6f061c859d194b35c3c1de283fa20e8f21b3b7b83762c035"
    );

    // Extra keys ("my-lora", "salt") on every block; an empty tuple is hashed as None (vLLM
    // returns None for no extra keys).
    let extra = [ExtraKey::Str("my-lora"), ExtraKey::Str("salt")];
    let got: Vec<String> = vllm_sha256_cbor_hashes(16, &tokens[..32], Some(&extra)).iter().map(hex).collect();
    assert_eq!(
        got,
        [
            "7cd6f066786427505de6f60576a0ebec4066d387f7f4338e398c3b1a8dc54451",
            "4dfb9b341cf5d8ebb7dd93d12662b463b11ce7ccb336d7711d25831d85102bf4",
        ]
    );
    assert_eq!(vllm_sha256_cbor_hashes(16, &tokens, Some(&[])), vllm_sha256_cbor_hashes(16, &tokens, None));
}

#[test]
fn chunk_keys_chain_and_optionally_include_the_partial_chunk() {
    let tokens: Vec<u32> = (0..600).collect();
    let full = chunk_keys(256, &tokens, false);
    let with_partial = chunk_keys(256, &tokens, true);
    assert_eq!(full.len(), 2);
    assert_eq!(with_partial.len(), 3);
    assert_eq!(full[..], with_partial[..2]);
    // The partial key depends on the partial chunk's length.
    assert_ne!(chunk_keys(256, &tokens[..599], true)[2], with_partial[2]);
    // Chained: a change in chunk 0 changes every key.
    let mut changed = tokens.clone();
    changed[0] = 9999;
    let c = chunk_keys(256, &changed, true);
    assert!(c.iter().zip(&with_partial).all(|(a, b)| a != b));
    // Chunk keys and 16-token block keys live in different key spaces.
    let blocks = block_hashes(&HashConfig { block_size: 256, algo: HashAlgo::Xxh3 }, &tokens, None);
    assert_ne!(blocks[0], full[0]);
    assert_eq!(chunk_keys(0, &tokens, true), vec![]);
}
