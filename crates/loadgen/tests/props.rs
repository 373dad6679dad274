//! Property tests of the parsers of what a server sends: the SSE byte stream (split into reads
//! at every point) and the OpenAI completion and chat chunks.

use loadgen::parse::{chunk, sse_stream, StreamReport};
use loadgen::LoadgenConfig;
use proptest::prelude::*;
use stats::TokenSource;

/// One SSE item a server may send.
#[derive(Debug, Clone)]
enum Item {
    /// A content chunk (completion `text` or chat `delta.content`).
    Content {
        text: String,
        chat: bool,
    },
    /// A role-only chat delta: not a token.
    Role,
    Comment(String),
    Retry(u32),
    /// The final usage chunk.
    Usage(u32),
    Done,
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => ("[a-zé€😀\"\\\\ ]{1,6}", any::<bool>()).prop_map(|(text, chat)| Item::Content { text, chat }),
        1 => Just(Item::Role),
        1 => "[a-z é]{0,8}".prop_map(Item::Comment),
        1 => (0u32..10_000).prop_map(Item::Retry),
        1 => (0u32..100).prop_map(Item::Usage),
        1 => Just(Item::Done),
    ]
}

/// The wire text of `items` with `eol` line ends (`\n`, `\r\n`, `\r`, or `mixed`: all three).
fn render(items: &[Item], eol: &str) -> String {
    let mut s = String::new();
    let mut k = 0;
    let mut eol = move || {
        k += 1;
        match eol {
            // Never a `\r` right before a `\n`: that would be one `\r\n`.
            "mixed" => ["\r\n", "\r", "\r\n", "\n"][k % 4],
            e => e,
        }
        .to_owned()
    };
    for it in items {
        let line = match it {
            Item::Content { text, chat: false } => {
                format!("data: {{\"choices\":[{{\"text\":{}}}]}}", serde_json::to_string(text).unwrap())
            }
            Item::Content { text, chat: true } => format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":{}}}}}]}}",
                serde_json::to_string(text).unwrap()
            ),
            Item::Role => r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#.to_string(),
            Item::Comment(c) => format!(":{c}"),
            Item::Retry(ms) => format!("retry: {ms}"),
            Item::Usage(n) => {
                format!(r#"data: {{"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":{n}}}}}"#)
            }
            Item::Done => "data: [DONE]".to_string(),
        };
        s.push_str(&line);
        s.push_str(&eol());
        s.push_str(&eol());
    }
    s
}

/// What the client must make of `items`: everything up to the first `[DONE]` counts.
fn expected(items: &[Item]) -> (u32, TokenSource, usize, bool) {
    let mut chunks = 0;
    let mut usage = None;
    for it in items {
        match it {
            Item::Content { text, .. } if !text.is_empty() => chunks += 1,
            Item::Usage(n) => usage = Some(*n),
            Item::Done => return finish(chunks, usage, true),
            _ => {}
        }
    }
    finish(chunks, usage, false)
}

fn finish(chunks: usize, usage: Option<u32>, done: bool) -> (u32, TokenSource, usize, bool) {
    match usage {
        Some(n) => (n, TokenSource::Usage, chunks, done),
        None => (chunks as u32, TokenSource::Chunks, chunks, done),
    }
}

fn cfg() -> LoadgenConfig {
    LoadgenConfig::new("http://127.0.0.1:1")
}

fn summary(r: &StreamReport) -> (u32, TokenSource, usize, bool) {
    (r.output_tokens, r.token_source, r.content_chunks, r.done)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Split into two reads at every byte (multi-byte characters and `\r\n` included), and into
    /// one read per byte, the stream gives the same result as in one read, and the right one.
    #[test]
    fn sse_split_anywhere(items in prop::collection::vec(item(), 0..8), eol in prop_oneof!["\n", "\r\n", "\r", "mixed"]) {
        let text = render(&items, &eol);
        let bytes = text.as_bytes();
        let whole = sse_stream(&[bytes], &cfg());
        let (tokens, source, chunks, done) = expected(&items);
        prop_assert_eq!(summary(&whole), (tokens, source, chunks, done), "{:?}", text);
        prop_assert_eq!(whole.error.is_none(), done, "{:?}: {:?}", text, whole.error);
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            prop_assert_eq!(&sse_stream(&[a, b], &cfg()), &whole, "split at {}", i);
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&sse_stream(&singles, &cfg()), &whole);
    }

    /// A stray byte (often not UTF-8) somewhere in a valid stream: the split still changes
    /// nothing, including how many chunks counted before the failure.
    #[test]
    fn sse_split_with_a_stray_byte(items in prop::collection::vec(item(), 1..6), at in any::<prop::sample::Index>(),
                                   byte in any::<u8>(), step in 1usize..9, eol in prop_oneof!["\n", "\r\n", "\r", "mixed"]) {
        let mut bytes = render(&items, &eol).into_bytes();
        let i = at.index(bytes.len() + 1);
        bytes.insert(i, byte);
        let whole = sse_stream(&[&bytes], &cfg());
        let reads: Vec<&[u8]> = bytes.chunks(step).collect();
        prop_assert_eq!(&sse_stream(&reads, &cfg()), &whole, "{:?}", String::from_utf8_lossy(&bytes));
    }

    /// Any bytes in any reads: no panic; an error is classified; with tiny caps too.
    #[test]
    fn sse_arbitrary_bytes(reads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
                           max_event in 1usize..64, max_body in 1u64..512) {
        let refs: Vec<&[u8]> = reads.iter().map(Vec::as_slice).collect();
        let r = sse_stream(&refs, &cfg());
        if let Some(e) = &r.error {
            prop_assert!(["stream_cut", "malformed_event"].contains(&e.class()), "{:?}", e);
        }
        // Below the caps, how the bytes are split into reads changes nothing, bad bytes included.
        let whole = reads.concat();
        prop_assert_eq!(&sse_stream(&[&whole], &cfg()), &r);
        let mut small = cfg();
        small.max_event_bytes = max_event;
        small.max_body_bytes = max_body;
        let total: usize = reads.iter().map(Vec::len).sum();
        let r = sse_stream(&refs, &small);
        if total as u64 > max_body {
            prop_assert!(r.error.is_some());
        }
    }

    /// An event over the cap fails, however the stream is split, and what came before counts.
    #[test]
    fn sse_event_cap(len in 1usize..4096, cap in 64usize..1024, split in 0usize..4096) {
        let text = format!("data: {{\"choices\":[{{\"text\":\"a\"}}]}}\n\ndata: {}\n\ndata: [DONE]\n\n", "x".repeat(len));
        let mut c = cfg();
        c.max_event_bytes = cap;
        let bytes = text.as_bytes();
        let (a, b) = bytes.split_at(split.min(bytes.len()));
        let r = sse_stream(&[a, b], &c);
        let event_len = len + "data: \n\n".len();
        if event_len > cap {
            let e = r.error.as_ref().expect("over the cap");
            prop_assert_eq!(e.detail(), format!("an SSE event longer than the cap of {cap} bytes"));
        } else {
            prop_assert_eq!(e_class(&r), Some("malformed_event"), "x.. is not JSON");
        }
        prop_assert_eq!(r.content_chunks, 1);
    }

    /// Any text as a chunk: no panic; an error carries serde_json's line and column.
    #[test]
    fn chunk_arbitrary_text(data in ".{0,200}") {
        if let Err(e) = chunk(&data) {
            prop_assert!(e.contains(" line ") && e.contains(" column "), "{}", e);
        }
    }

    /// Chunks built from their parts parse back to those parts, whatever else is around them.
    #[test]
    fn chunk_round_trip(text in prop::option::of(".{0,10}"), chat in any::<bool>(), finish in any::<bool>(),
                        completion in prop::option::of(any::<u32>()), cached in prop::option::of(any::<u32>()),
                        extra_choices in 0usize..3) {
        let content = match (&text, chat) {
            (Some(t), false) => format!(r#""text":{}"#, serde_json::to_string(t).unwrap()),
            (Some(t), true) => format!(r#""delta":{{"content":{}}}"#, serde_json::to_string(t).unwrap()),
            (None, _) => r#""text":null"#.to_string(),
        };
        let finish_reason = if finish { r#""stop""# } else { "null" };
        let mut choices = vec![format!(r#"{{"index":0,{content},"finish_reason":{finish_reason}}}"#)];
        choices.extend((0..extra_choices).map(|i| format!(r#"{{"index":{},"text":"zz","x":[1,{{}}]}}"#, i + 1)));
        let usage = match completion {
            Some(n) => format!(
                r#"{{"prompt_tokens":1,"completion_tokens":{n}{}}}"#,
                cached.map(|c| format!(r#","prompt_tokens_details":{{"cached_tokens":{c}}}"#)).unwrap_or_default()
            ),
            None => "null".into(),
        };
        let data = format!(r#"{{"id":"x","object":"o","choices":[{}],"usage":{usage}}}"#, choices.join(","));
        let c = chunk(&data).map_err(|e| TestCaseError::fail(format!("{e}: {data}")))?;
        // An empty completion text is a token (vLLM holds back a partial character) unless it
        // closes the stream; an empty chat delta never is.
        let token = text.as_ref().is_some_and(|t| !t.is_empty() || (!chat && !finish));
        prop_assert_eq!(c.has_content, token);
        prop_assert_eq!(c.is_finished, finish);
        prop_assert_eq!(c.completion_tokens, completion);
        prop_assert_eq!(c.cached_tokens, completion.and(cached));
        prop_assert!(!c.is_error);
    }
}

fn e_class(r: &StreamReport) -> Option<&'static str> {
    r.error.as_ref().map(|e| e.class())
}

/// Found by `sse_split_anywhere`: a body whose last line end is a lone `\r` lost its last event
/// (the event parser waited for a `\n` that could still follow).
#[test]
fn final_lone_cr_ends_the_last_event() {
    let r = sse_stream(&[b"data: {\"choices\":[{\"text\":\"a\"}]}\r\r"], &cfg());
    assert_eq!(summary(&r), (1, TokenSource::Chunks, 1, false));
    let r = sse_stream(&[b"data: {\"choices\":[{\"text\":\"a\"}]}\r\rdata: [DONE]\r", b"\r"], &cfg());
    assert_eq!((summary(&r), r.error), ((1, TokenSource::Chunks, 1, true), None));
}

/// Found by `sse_split_with_a_stray_byte`: bad UTF-8 after `[DONE]` failed the request or not
/// depending on whether it came in the same read as `[DONE]`. It is drained and ignored.
#[test]
fn bad_utf8_after_done_is_ignored_however_split() {
    let body = b"data: [DONE]\n\nd\x80ata: {\"choices\":[{\"text\":\"a\"}]}\n\n";
    let whole = sse_stream(&[body], &cfg());
    assert_eq!((summary(&whole), &whole.error), ((0, TokenSource::Chunks, 0, true), &None));
    let singles: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(sse_stream(&singles, &cfg()), whole);
}

/// Found by the `sse_stream` fuzz target: a read that ended between the `\r` and the `\n` of
/// an event's last line end, followed by a bad byte, failed before the event was counted.
#[test]
fn crlf_cut_by_a_read_then_bad_byte() {
    let (a, b): (&[u8], &[u8]) = (b"data: {\"choices\":[{\"text\":\"a\"}]}\r\n\r", b"\nd\xff");
    let whole = sse_stream(&[&[a, b].concat()], &cfg());
    assert_eq!(summary(&whole), (1, TokenSource::Chunks, 1, false));
    assert_eq!(e_class(&whole), Some("malformed_event"));
    assert_eq!(sse_stream(&[a, b], &cfg()), whole);
}

/// Found by the `sse_stream` fuzz target: an event ended by `\r\n\r` (a lone `\r` after a
/// `\r\n`) waited in the event parser for the next byte, and a bad byte there failed the
/// request before the event counted, unless a read ended in between.
#[test]
fn lone_cr_event_end_then_bad_byte() {
    let (a, b): (&[u8], &[u8]) = (b"data: {\"choices\":[{\"text\":\"a\"}]}\r\n\r", b"x\xe9e\r\n\r");
    let whole = sse_stream(&[&[a, b].concat()], &cfg());
    assert_eq!(summary(&whole), (1, TokenSource::Chunks, 1, false));
    assert_eq!(e_class(&whole), Some("malformed_event"));
    assert_eq!(sse_stream(&[a, b], &cfg()), whole);
}
