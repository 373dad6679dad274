//! Property test of the simulator's one trace writer: `sim::trace::to_bailian_jsonl` (the
//! converter behind `cargo xtask sim --convert-to`) writes a trace that the workload crate's
//! Bailian reader reads back equal, up to what the format defines: `chat_id` is the line index,
//! so a conversation is named by the index of its first request and a request without one is a
//! conversation of its own; a missing turn is turn 1; block ids are renumbered densely in order
//! of first appearance; times are relative to the earliest request.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use workload::{ParseOptions, Trace, TraceEntry, TraceFormat};

fn entry() -> impl Strategy<Value = TraceEntry> {
    (
        0u64..10_000_000_000_000, // up to about 3 hours, in nanoseconds
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(prop_oneof![0u64..20, any::<u64>()], 0..6),
        prop::option::of(prop_oneof![0u64..4, any::<u64>()]),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(at, input_len, output_len, hash_ids, session, turn)| TraceEntry {
            line: 0,
            at: Duration::from_nanos(at),
            input_len,
            output_len,
            hash_ids,
            session,
            turn,
        })
}

/// `entries` as the Bailian reader must give them back.
fn expected(entries: &[TraceEntry]) -> Vec<TraceEntry> {
    let earliest = entries.iter().map(|e| e.at).min().unwrap_or_default();
    let mut first_of_session: HashMap<u64, u64> = HashMap::new();
    let mut ids: HashMap<u64, u64> = HashMap::new();
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| TraceEntry {
            line: i as u64 + 1,
            at: e.at - earliest,
            input_len: e.input_len,
            output_len: e.output_len,
            hash_ids: e
                .hash_ids
                .iter()
                .map(|h| {
                    let n = ids.len() as u64;
                    *ids.entry(*h).or_insert(n)
                })
                .collect(),
            session: Some(match e.session {
                Some(s) => *first_of_session.entry(s).or_insert(i as u64),
                None => i as u64,
            }),
            turn: Some(e.turn.unwrap_or(1)),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn bailian_writer_round_trip(entries in prop::collection::vec(entry(), 1..12)) {
        let trace = Trace { format: TraceFormat::Bailian, entries, bad_lines: 0, first_bad_line: None };
        let text = sim::trace::to_bailian_jsonl(&trace);
        let back = Trace::parse(TraceFormat::Bailian, &text, "t.jsonl", &ParseOptions::default())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back.entries, expected(&trace.entries), "{}", text);
    }
}
