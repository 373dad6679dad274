//! Eviction policies driven directly by a tiny script: `insert k...`, `access k...`,
//! `remove k`, `evict`, `cap N`, `next k=N` (Belady's next use), `info k turn=.. t=..`.
//! The output lists every eviction and the final eviction order; it is an insta snapshot.

use std::fmt::Write;

use kvcache::{AccessInfo, BlockHash, EvictionPolicy, PolicyKind};
use proptest::prelude::*;

fn key(name: &str) -> BlockHash {
    BlockHash(name.bytes().fold(0u64, |h, b| h * 256 + u64::from(b)))
}

fn name(k: BlockHash) -> String {
    let bytes: Vec<u8> = k.0.to_be_bytes().into_iter().filter(|&b| b != 0).collect();
    String::from_utf8(bytes).unwrap()
}

/// Runs `script` on a fresh `policy`; `k=v` arguments of insert/access set the access's
/// `next_use` (Belady), `turn`, `depth` and `time_ms` as `k:next:turn:depth:time`.
fn run(policy: PolicyKind, script: &str) -> String {
    let mut p = policy.build();
    let mut out = String::new();
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (op, args) = line.split_once(' ').unwrap_or((line, ""));
        for arg in args.split_whitespace() {
            let mut parts = arg.split(':');
            let k = key(parts.next().unwrap());
            let mut num = || parts.next().map(|v| v.parse::<u64>().unwrap());
            let info = AccessInfo {
                next_use: num().unwrap_or(u64::MAX),
                turn: num().unwrap_or(0) as u32,
                depth: num().unwrap_or(0) as u32,
                time_ms: num().unwrap_or(0),
                ..AccessInfo::UNKNOWN
            };
            match op {
                "cap" => p.set_capacity(arg.parse().unwrap()),
                "insert" => p.on_insert_with(k, &info),
                "access" => p.on_access_with(k, &info),
                "remove" => p.on_remove(k),
                other => panic!("unknown op {other}"),
            }
        }
        if op == "evict" {
            let predicted = p.victim();
            let got = p.evict();
            assert_eq!(predicted, got, "victim() must predict evict()");
            writeln!(out, "evict -> {}", got.map_or("none".into(), name)).unwrap();
        }
    }
    let order: Vec<String> = p.eviction_order().into_iter().map(name).collect();
    writeln!(out, "len {} order [{}]", p.len(), order.join(" ")).unwrap();
    out
}

fn check(policy: PolicyKind, script: &str) {
    insta::assert_snapshot!(format!("{policy}"), run(policy, script), script);
}

/// One script, every recency/frequency policy: a, b, c, d inserted; a hit twice, c hit once.
const SCRIPT: &str = "
    cap 4
    insert a b c d
    access a
    access a c
    evict
    insert e
    evict
    insert f
    evict
    evict
";

#[test]
fn lru() {
    check(PolicyKind::Lru, SCRIPT);
}

#[test]
fn fifo() {
    check(PolicyKind::Fifo, SCRIPT);
}

#[test]
fn lfu() {
    check(PolicyKind::Lfu, SCRIPT);
}

#[test]
fn sieve() {
    check(PolicyKind::Sieve, SCRIPT);
}

#[test]
fn s3fifo() {
    check(PolicyKind::S3Fifo, SCRIPT);
}

#[test]
fn belady_evicts_the_farthest_next_use() {
    check(
        PolicyKind::Belady,
        "
        insert a:5 b:2 c:9 d
        evict
        evict
        access a:1
        insert e:3
        evict
        ",
    );
}

#[test]
fn conversation_aware_keeps_long_conversations_and_shallow_blocks() {
    // x: turn 1 block depth 0; y: turn 5 depth 0; z: turn 5 depth 40 (all at t=0);
    // w: turn 1 depth 0 at t=60s.
    check(
        PolicyKind::ConversationAware,
        "
        insert x:0:1:0:0 y:0:5:0:0 z:0:5:40:0 w:0:1:0:60000
        evict
        evict
        ",
    );
}

#[test]
fn evicting_an_empty_policy_gives_none() {
    for kind in PolicyKind::ALL {
        assert_eq!(run(kind, "evict"), "evict -> none\nlen 0 order []\n", "{kind}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8),
    Access(u8),
    Remove(u8),
    Evict,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24).prop_map(Op::Insert),
        3 => (0u8..24).prop_map(Op::Access),
        1 => (0u8..24).prop_map(Op::Remove),
        2 => Just(Op::Evict),
    ]
}

proptest! {
    /// Every policy tracks exactly the keys inserted and not yet removed or evicted, evicts only
    /// tracked keys, and `victim()` predicts `evict()`.
    #[test]
    fn policies_track_exactly_the_resident_keys(ops in prop::collection::vec(op(), 0..200), cap in 1u64..10) {
        for kind in PolicyKind::ALL {
            let mut p: Box<dyn EvictionPolicy> = kind.build();
            p.set_capacity(cap);
            let mut resident = std::collections::BTreeSet::new();
            for (t, op) in ops.iter().enumerate() {
                let info = AccessInfo { time_ms: t as u64 * 100, next_use: (t as u64 * 7) % 13, ..AccessInfo::UNKNOWN };
                match *op {
                    Op::Insert(k) if !resident.contains(&k) => {
                        p.on_insert_with(BlockHash(u64::from(k)), &info);
                        resident.insert(k);
                    }
                    Op::Access(k) if resident.contains(&k) => p.on_access_with(BlockHash(u64::from(k)), &info),
                    Op::Remove(k) if resident.contains(&k) => {
                        p.on_remove(BlockHash(u64::from(k)));
                        resident.remove(&k);
                    }
                    Op::Evict => {
                        let predicted = p.victim();
                        let got = p.evict();
                        prop_assert_eq!(predicted, got, "{}", kind);
                        match got {
                            Some(BlockHash(k)) => prop_assert!(resident.remove(&(k as u8)), "{} evicted untracked {}", kind, k),
                            None => prop_assert!(resident.is_empty(), "{}", kind),
                        }
                    }
                    _ => {}
                }
                prop_assert_eq!(p.len(), resident.len(), "{}", kind);
            }
            let mut order: Vec<u8> = p.eviction_order().into_iter().map(|k| k.0 as u8).collect();
            order.sort_unstable();
            prop_assert_eq!(order, resident.iter().copied().collect::<Vec<_>>(), "{}", kind);
        }
    }
}
