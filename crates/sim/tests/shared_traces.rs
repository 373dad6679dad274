//! Validation on the shared Mooncake traces (`../shared/traces` beside the clone): the
//! infinite-capacity hit ratio against the Mooncake FAST'25 paper's Table 2, and the policy
//! properties on real data.

use kvcache::{PolicyKind, Tier};
use sim::{LoadOptions, ReplayConfig, SimTrace};

fn load(file: &str) -> SimTrace {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/traces/").to_owned() + file;
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("shared trace missing: {path} ({e}); CI checks out ../shared beside the clone")
    });
    sim::trace::load(file, &text, &LoadOptions::default()).expect("shared trace parses")
}

/// (block-weighted pooled, token-weighted pooled, mean per-request token ratio) at infinite
/// capacity.
fn infinite(trace: &SimTrace) -> (f64, f64, f64) {
    let r = sim::replay(trace, &ReplayConfig::single(Tier::Cpu, u64::MAX, PolicyKind::Lru.into()));
    (r.block_hit_ratio(), r.token_hit_ratio(), r.mean_request_token_hit_ratio)
}

#[test]
fn infinite_capacity_matches_the_mooncake_paper() {
    let conv = load("mooncake_conversation_trace.jsonl");
    let synth = load("mooncake_synthetic_trace.jsonl");
    assert_eq!(conv.accesses(), 288_500);
    let c = infinite(&conv);
    let s = infinite(&synth);
    // Mooncake FAST'25, Table 2: cache ratio about 40% (conversation) and 66% (synthetic). The
    // pooled token-weighted ratio lands within 3 points of both (37.4%, 65.1%); the mean of
    // per-request ratios matches the conversation figure closely (40.9%) but not the synthetic
    // one (43.2%), so pooled is the definition that reproduces the table.
    let near = |got: f64, paper: f64, tol: f64| (got - paper).abs() <= tol;
    assert!(near(c.1, 0.40, 0.03) && near(s.1, 0.66, 0.03), "token pooled: {c:?} {s:?}");
    assert!(near(c.0, 0.366, 0.002) && near(s.0, 0.640, 0.002), "block pooled: {c:?} {s:?}");
    assert!(near(c.2, 0.409, 0.002) && near(s.2, 0.432, 0.002), "per request: {c:?} {s:?}");
}

#[test]
fn policy_properties_hold_on_the_conversation_trace() {
    let conv = load("mooncake_conversation_trace.jsonl");
    let hits = |p: PolicyKind, cap: u64| {
        sim::replay(&conv, &ReplayConfig::single(Tier::Cpu, cap, p.into())).hit_blocks
    };
    let mut last_lru = 0;
    for cap in [2_000, 8_000, 32_000, 128_000] {
        let best = hits(PolicyKind::Belady, cap);
        for p in PolicyKind::ALL {
            let h = hits(p, cap);
            assert!(h <= best, "{p} ({h}) beats belady ({best}) at {cap}");
        }
        let lru = hits(PolicyKind::Lru, cap);
        assert!(lru >= last_lru, "lru fell from {last_lru} to {lru} at {cap}");
        last_lru = lru;
    }
    let unbounded = hits(PolicyKind::Lru, u64::MAX);
    for p in PolicyKind::ALL {
        assert_eq!(hits(p, u64::MAX), unbounded, "{p} at infinite capacity");
    }
}
