//! Property tests of the readers of `summary.json` and `requests.jsonl` lines (serde_json into
//! [`Summary`] and [`RequestRecord`]): what the lab writes reads back equal, whatever the run
//! did; on any edit, no panic, and every error names its line and column.

use proptest::prelude::*;
use stats::{summarize, RequestError, RequestRecord, Summary, SummaryConfig, TokenSource, RECORD_VERSION};
use testkit::edits::{apply, edit};

fn record() -> impl Strategy<Value = RequestRecord> {
    (
        0u64..1000,
        any::<bool>(),
        0.0f64..100.0,
        0.0f64..1.0,
        prop::collection::vec(1u32..4, 0..6),
        prop::option::of(0u32..5000),
        prop::option::of(0u32..5000),
        prop::option::of(0usize..5),
    )
        .prop_map(|(id, warmup, sent, ttft, chunk_tokens, prompt, cached, error)| {
            let first = sent + ttft;
            let chunks: Vec<(f64, u32)> =
                chunk_tokens.iter().enumerate().map(|(i, &k)| (first + 0.01 * i as f64, k)).collect();
            let error = error.map(|e| match e {
                0 => RequestError::Connect { message: "refused".into() },
                1 => RequestError::HttpStatus { status: 503, body: "loading \"é\"".into() },
                2 => RequestError::StreamCut { message: "cut".into() },
                3 => RequestError::MalformedEvent { message: "bad".into() },
                _ => RequestError::Timeout { message: "slow".into() },
            });
            RequestRecord {
                v: RECORD_VERSION,
                id,
                warmup,
                intended: sent,
                sent,
                queued_until: None,
                first_byte: (!chunks.is_empty()).then_some(first),
                first_token: chunks.first().map(|c| c.0),
                end: chunks.last().map_or(first, |c| c.0),
                output_tokens: chunk_tokens.iter().sum(),
                chunks,
                prompt_tokens: prompt,
                cached_tokens: cached,
                token_source: TokenSource::Chunks,
                error,
                session: None,
                turn: None,
                prompt_blocks: None,
            }
        })
}

/// serde_json's position: `... at line N column M`, N within the text (or just past it).
fn check_error(msg: &str, text: &str) -> Result<(), TestCaseError> {
    let at = msg.rfind(" at line ").ok_or_else(|| TestCaseError::fail(format!("no line: {msg}")))?;
    let mut words = msg[at + " at line ".len()..].split(' ');
    let line: usize =
        words.next().and_then(|l| l.parse().ok()).ok_or_else(|| TestCaseError::fail(msg.to_owned()))?;
    prop_assert_eq!(words.next(), Some("column"), "{}", msg);
    // One past the last line: an unexpected end after a final line end.
    prop_assert!(line >= 1 && line <= text.lines().count() + 1, "line {} in {}", line, msg);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the records (none completed, all warm-up, none at all), `summary.json` and
    /// each `requests.jsonl` line read back equal to what was written.
    #[test]
    fn written_files_read_back(records in prop::collection::vec(record(), 0..8)) {
        let summary = summarize(&records, &SummaryConfig::default());
        let text = serde_json::to_string_pretty(&summary).expect("serializes");
        let back: Summary = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, summary);
        for r in &records {
            let line = serde_json::to_string(r).expect("serializes");
            let back: RequestRecord = serde_json::from_str(&line).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
            prop_assert_eq!(&back, r);
        }
    }

    #[test]
    fn edited_summaries(records in prop::collection::vec(record(), 1..4), edits in prop::collection::vec(edit(), 1..3)) {
        let summary = summarize(&records, &SummaryConfig::default());
        let original = serde_json::to_string_pretty(&summary).expect("serializes");
        let text = edits.iter().fold(original, |t, e| apply(&t, e).0);
        if let Err(e) = serde_json::from_str::<Summary>(&text) {
            check_error(&e.to_string(), &text)?;
        }
    }

    #[test]
    fn edited_record_lines(r in record(), edits in prop::collection::vec(edit(), 1..3)) {
        let original = serde_json::to_string_pretty(&r).expect("serializes");
        let text = edits.iter().fold(original, |t, e| apply(&t, e).0);
        if let Err(e) = serde_json::from_str::<RequestRecord>(&text) {
            check_error(&e.to_string(), &text)?;
        }
    }
}
