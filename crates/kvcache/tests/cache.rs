//! The tiered cache, driven by a small script language; each script's trace (results, residency
//! per tier in eviction order, stats) is an insta snapshot in `tests/snapshots`.
//!
//! Script lines: `tiers gpu=2 cpu=1 ...` and `policy lru|fifo` (before the first op),
//! `store k1 k2 ...`, `lookup k1 k2 ...`, `remove k`. Keys are names.

use std::fmt::Write;

use kvcache::{
    capacity_blocks, BlockHash, CacheConfig, CacheConfigError, PolicyKind, Tier, TierConfig, TieredCache,
};

struct Names(Vec<String>);

impl Names {
    fn key(&mut self, name: &str) -> BlockHash {
        let i = self.0.iter().position(|n| n == name).unwrap_or_else(|| {
            self.0.push(name.to_owned());
            self.0.len() - 1
        });
        // Spread the ids like real hashes would be.
        BlockHash((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
    fn name(&self, key: BlockHash) -> &str {
        let i = self.0.iter().position(|n| {
            let j = self.0.iter().position(|m| m == n).unwrap() as u64 + 1;
            BlockHash(j.wrapping_mul(0x9e37_79b9_7f4a_7c15)) == key
        });
        i.map_or("?", |i| &self.0[i])
    }
}

fn run(script: &str) -> String {
    let mut tiers = Vec::new();
    let mut policy = PolicyKind::Lru;
    let mut cache: Option<TieredCache> = None;
    let mut names = Names(Vec::new());
    let mut out = String::new();
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (op, args) = line.split_once(' ').unwrap_or((line, ""));
        let args: Vec<&str> = args.split_whitespace().collect();
        match op {
            "tiers" => {
                for a in args {
                    let (t, n) = a.split_once('=').unwrap();
                    tiers.push(TierConfig { tier: t.parse().unwrap(), capacity_blocks: n.parse().unwrap() });
                }
                continue;
            }
            "policy" => {
                policy = args[0].parse().unwrap();
                continue;
            }
            _ => {}
        }
        let c = cache.get_or_insert_with(|| {
            TieredCache::new(CacheConfig { tiers: tiers.clone(), policy, block_tokens: 16 })
        });
        writeln!(out, "> {line}").unwrap();
        let keys: Vec<BlockHash> = args.iter().map(|a| names.key(a)).collect();
        match op {
            "store" => {
                for m in c.store(&keys) {
                    let t = |t: Option<Tier>| t.map_or("-".to_owned(), |t| t.to_string());
                    writeln!(out, "  {} {} -> {}", names.name(m.key), t(m.from), t(m.to)).unwrap();
                }
            }
            "lookup" => {
                let l = c.lookup(&keys);
                let per: Vec<String> = l.per_tier.iter().map(|(t, n)| format!("{t}={n}")).collect();
                writeln!(out, "  hit {} blocks {} tokens ({})", l.hit_blocks, l.hit_tokens, per.join(" "))
                    .unwrap();
            }
            "remove" => {
                let t = c.remove(keys[0]);
                writeln!(out, "  removed from {t:?}").unwrap();
            }
            other => panic!("unknown op {other}"),
        }
        for t in c.tiers().collect::<Vec<_>>() {
            let resident: Vec<&str> = c.resident(t).into_iter().map(|k| names.name(k)).collect();
            assert_eq!(resident.len() as u64, c.len(t));
            writeln!(out, "  {t}: [{}]", resident.join(" ")).unwrap();
        }
    }
    if let Some(c) = cache {
        let s = c.stats();
        writeln!(
            out,
            "stats: lookups={} query={}b/{}t hit={}b/{}t dropped={} ratio={:.3}",
            s.lookups,
            s.query_blocks,
            s.query_tokens,
            s.hit_blocks,
            s.hit_tokens,
            s.dropped,
            s.hit_ratio()
        )
        .unwrap();
        for t in &s.tiers {
            writeln!(
                out,
                "  {}: cap={} hit={}b/{}t inserted={} promoted_out={} demoted_in={} evicted={} removed={}",
                t.tier,
                t.capacity_blocks,
                t.hit_blocks,
                t.hit_tokens,
                t.inserted,
                t.promoted_out,
                t.demoted_in,
                t.evicted,
                t.removed
            )
            .unwrap();
        }
    }
    out
}

/// Runs `script` and compares its trace with the snapshot `name`.
fn check(name: &str, script: &str) {
    insta::assert_snapshot!(name, run(script), script);
}

#[test]
fn gpu_only_lru_evicts_least_recently_used() {
    check(
        "gpu_only_lru",
        "tiers gpu=3
         store a b c
         store a
         store d
         lookup a b c d
         lookup a c d",
    );
}

#[test]
fn fifo_ignores_hits() {
    check(
        "gpu_only_fifo",
        "tiers gpu=3
         policy fifo
         store a b c
         store a
         store d
         lookup a c d",
    );
}

#[test]
fn overflow_demotes_down_the_tiers_and_drops_from_the_last() {
    check(
        "demote_chain",
        "tiers gpu=2 cpu=2 disk=1
         store a b c d e f
         lookup a b c d e f
         lookup b c d e f",
    );
}

#[test]
fn hits_in_lower_tiers_are_promoted_to_the_top() {
    check(
        "promote",
        "tiers gpu=2 cpu=2 remote=4
         store a b c d e f
         lookup a b c d e f
         store a b
         lookup a b c d e f
         remove c
         lookup a b c d",
    );
}

#[test]
fn a_prefix_hit_stops_at_the_first_missing_block() {
    check(
        "prefix_stops",
        "tiers gpu=4 cpu=4
         store a b c
         lookup a x c
         lookup x a b
         lookup
         remove a
         remove a
         lookup a b c",
    );
}

#[test]
fn zero_capacity_and_unsorted_tiers_are_normalised() {
    check(
        "normalised",
        "tiers disk=2 gpu=1 cpu=0
         store a b c d
         lookup a b c d",
    );
}

#[test]
fn no_tiers_caches_nothing() {
    check(
        "no_tiers",
        "store a b
         lookup a b",
    );
}

#[test]
fn config_validation_names_the_problem() {
    let cfg = |tiers: &[(Tier, u64)], block_tokens| CacheConfig {
        tiers: tiers.iter().map(|&(tier, capacity_blocks)| TierConfig { tier, capacity_blocks }).collect(),
        policy: PolicyKind::Lru,
        block_tokens,
    };
    assert_eq!(cfg(&[(Tier::Gpu, 1), (Tier::Disk, 1)], 16).validate(), Ok(()));
    assert_eq!(
        cfg(&[(Tier::Cpu, 1), (Tier::Cpu, 1)], 16).validate(),
        Err(CacheConfigError::DuplicateTier(Tier::Cpu))
    );
    let err = cfg(&[(Tier::Disk, 1), (Tier::Cpu, 1)], 16).validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "tier `disk` is listed before tier `cpu`; list tiers in lookup order (gpu, cpu, disk, remote)"
    );
    assert_eq!(cfg(&[], 0).validate(), Err(CacheConfigError::ZeroBlockTokens));
    assert_eq!(
        "ssd".parse::<Tier>().unwrap_err().to_string(),
        "unknown tier `ssd`; expected one of: gpu, cpu, disk, remote"
    );
    assert_eq!("fifo".parse::<PolicyKind>(), Ok(PolicyKind::Fifo));
    assert!(Tier::Gpu < Tier::Cpu && Tier::Cpu < Tier::Disk && Tier::Disk < Tier::Remote);
}

#[test]
fn capacity_in_blocks_follows_the_kv_geometry() {
    // Llama-3-8B: 2 x 32 layers x 8 kv heads x 128 x 2 bytes = 128 KiB per token, 2 MiB per block.
    let llama = costmodel::KvGeometry { layers: 32, kv_heads: 8, head_dim: 128, dtype_bytes: 2 };
    assert_eq!(capacity_blocks(1 << 30, &llama, 16), 512);
    assert_eq!(capacity_blocks((1 << 30) - 1, &llama, 16), 511);
    assert_eq!(capacity_blocks(1 << 30, &llama, 0), 0);
    let empty = costmodel::KvGeometry { layers: 0, kv_heads: 8, head_dim: 128, dtype_bytes: 2 };
    assert_eq!(capacity_blocks(1 << 30, &empty, 16), 0);
}

#[test]
fn lru_many_operations_keep_capacity_and_residency_consistent() {
    // A deterministic pseudo-random stream of stores over 3 tiers; after every store each tier is
    // within capacity and every key's tier agrees with the tier listings.
    let mut c = TieredCache::new(CacheConfig {
        tiers: vec![
            TierConfig { tier: Tier::Gpu, capacity_blocks: 7 },
            TierConfig { tier: Tier::Cpu, capacity_blocks: 13 },
            TierConfig { tier: Tier::Disk, capacity_blocks: 29 },
        ],
        policy: PolicyKind::Lru,
        block_tokens: 16,
    });
    let mut x = 12345u64;
    for _ in 0..2000 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let keys: Vec<BlockHash> = (0..(x >> 60)).map(|i| BlockHash((x >> 40) % 80 + i)).collect();
        let moves = c.store(&keys);
        let stored = moves.iter().filter(|m| m.from.is_none()).count() as u64;
        assert!(stored <= keys.len() as u64);
        for (t, cap) in [(Tier::Gpu, 7), (Tier::Cpu, 13), (Tier::Disk, 29)] {
            assert!(c.len(t) <= cap);
            for k in c.resident(t) {
                assert_eq!(c.tier_of(k), Some(t));
            }
        }
        assert_eq!(c.total_len(), c.len(Tier::Gpu) + c.len(Tier::Cpu) + c.len(Tier::Disk));
    }
    let s = c.stats();
    let (inserted, dropped) = (s.tiers[0].inserted, s.dropped);
    assert_eq!(inserted - dropped, c.total_len());
}
