//! The fast path of [`Chunk::parse`]: one pass over the bytes of a chunk that builds the same
//! [`Chunk`] serde's derive builds, without serde.
//!
//! The scanner reads only what [`Chunk`] holds (`choices[0]`'s `text`, `delta` and
//! `finish_reason`, `usage`, `error`) and skips every other value, checking it as serde_json
//! checks a value it ignores. Wherever it is not sure to agree with serde (malformed JSON, a key
//! with an escape, a duplicate of a field serde's derive checks, a number that is not a plain
//! `u32`, a value of a type serde would reject or read another way, an escape serde might
//! refuse, nesting deeper than [`MAX_SKIP_DEPTH`], anything after the object) it answers `None`,
//! and the caller asks serde, so results and error messages are serde's by construction.

use serde::de::IgnoredAny;

use super::{Choice, Chunk, Delta, FirstChoice, NonEmpty, PromptTokensDetails, Usage};

/// Containers nested deeper than this inside a skipped value are left to serde.
const MAX_SKIP_DEPTH: u32 = 64;

/// The chunk `data` holds, equal to what [`Chunk::parse_serde`] returns for it; `None` when the
/// scanner is not sure of that. `None` says nothing of `data` (it may be a valid chunk).
pub(super) fn parse(data: &[u8]) -> Option<Chunk> {
    let mut s = Scan { b: data, i: 0 };
    let chunk = s.chunk()?;
    s.ws();
    (s.i == s.b.len()).then_some(chunk)
}

/// A cursor over the bytes. Every method returns `None` when it is not sure, leaving the cursor
/// anywhere; the parse is then abandoned.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

/// Marks field `bit` of an object as seen; `None` when it was already (serde's derive rejects a
/// duplicate field, with a message the scanner leaves to it).
fn once(seen: &mut u8, bit: u8) -> Option<()> {
    let mask = 1 << bit;
    if *seen & mask != 0 {
        return None;
    }
    *seen |= mask;
    Some(())
}

/// The value of a hexadecimal digit.
fn hex(c: u8) -> Option<u16> {
    let v = match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => return None,
    };
    Some(u16::from(v))
}

impl<'a> Scan<'a> {
    /// The top-level object: `Chunk`'s fields, the other members skipped.
    fn chunk(&mut self) -> Option<Chunk> {
        let mut chunk = Chunk::default();
        let mut seen = 0;
        self.object(|s, key| {
            match key {
                b"choices" => {
                    once(&mut seen, 0)?;
                    chunk.choices = s.choices()?;
                }
                b"usage" => {
                    once(&mut seen, 1)?;
                    chunk.usage = if s.null()? { None } else { Some(s.usage()?) };
                }
                b"error" => {
                    once(&mut seen, 2)?;
                    chunk.error = s.ignored_or_null()?;
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(chunk)
    }

    /// `choices`: `null` (no choice), or an array whose first element is a `Choice` object; the
    /// other elements are skipped. Anything else is not sure.
    fn choices(&mut self) -> Option<FirstChoice> {
        if self.null()? {
            return Some(FirstChoice(None));
        }
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(FirstChoice(None));
        }
        let first = self.choice()?;
        loop {
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.skip()?;
                }
                b']' => {
                    self.i += 1;
                    return Some(FirstChoice(Some(first)));
                }
                _ => return None,
            }
        }
    }

    /// One choice, an object (serde's derive would also read an array, by position: not sure).
    fn choice(&mut self) -> Option<Choice> {
        let mut c = Choice::default();
        let mut seen = 0;
        self.object(|s, key| {
            match key {
                b"text" => {
                    once(&mut seen, 0)?;
                    c.text = if s.null()? { None } else { Some(NonEmpty(s.string()?)) };
                }
                b"delta" => {
                    once(&mut seen, 1)?;
                    c.delta = if s.null()? { None } else { Some(s.delta()?) };
                }
                b"finish_reason" => {
                    once(&mut seen, 2)?;
                    c.finish_reason = s.ignored_or_null()?;
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(c)
    }

    /// A chat delta object: its three text fields, each a string or `null`.
    fn delta(&mut self) -> Option<Delta> {
        let mut d = Delta::default();
        let mut seen = 0;
        self.object(|s, key| {
            match key {
                b"content" => {
                    once(&mut seen, 0)?;
                    d.content = s.non_empty()?;
                }
                b"reasoning_content" => {
                    once(&mut seen, 1)?;
                    d.reasoning_content = s.non_empty()?;
                }
                b"reasoning" => {
                    once(&mut seen, 2)?;
                    d.reasoning = s.non_empty()?;
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(d)
    }

    /// A usage object.
    fn usage(&mut self) -> Option<Usage> {
        let mut u = Usage::default();
        let mut seen = 0;
        self.object(|s, key| {
            match key {
                b"prompt_tokens" => {
                    once(&mut seen, 0)?;
                    u.prompt_tokens = s.u32_or_null()?;
                }
                b"completion_tokens" => {
                    once(&mut seen, 1)?;
                    u.completion_tokens = s.u32_or_null()?;
                }
                b"prompt_tokens_details" => {
                    once(&mut seen, 2)?;
                    u.prompt_tokens_details = if s.null()? { None } else { Some(s.details()?) };
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(u)
    }

    /// A `prompt_tokens_details` object.
    fn details(&mut self) -> Option<PromptTokensDetails> {
        let mut d = PromptTokensDetails::default();
        let mut seen = 0;
        self.object(|s, key| {
            match key {
                b"cached_tokens" => {
                    once(&mut seen, 0)?;
                    d.cached_tokens = s.u32_or_null()?;
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(d)
    }

    /// Walks an object whose `{` is next (after whitespace): for each member, reads its key and
    /// the `:`, then calls `member` with the key's bytes, which must consume the value. Not sure:
    /// a key with an escape or a control character, a trailing comma, anything malformed.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.key()?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A key whose `"` is next (after whitespace): its bytes, when it has no escape and no
    /// control character (so they are the key serde's derive would match).
    fn key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        let len = self.b.get(start..)?.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        self.i += len;
        if self.b[self.i] != b'"' {
            return None;
        }
        self.i += 1;
        Some(&self.b[start..start + len])
    }

    /// A string whose `"` is next (after whitespace); true when it is not empty (an escape is at
    /// least one character). Not sure: the end of the input, a control character, an escape serde
    /// might refuse (an unknown one, a surrogate not in a pair).
    fn string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            // Up to the next byte that is not plain string content.
            self.i += self.b.get(self.i..)?.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
            let c = self.b[self.i];
            self.i += 1;
            match c {
                b'"' => return Some(self.i - 1 > start),
                b'\\' => self.escape()?,
                _ => return None,
            }
        }
    }

    /// The rest of an escape, after its `\`.
    fn escape(&mut self) -> Option<()> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        match c {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => match self.hex4()? {
                // The first half of a surrogate pair: the second must follow.
                0xD800..=0xDBFF => {
                    self.literal(b"\\u")?;
                    matches!(self.hex4()?, 0xDC00..=0xDFFF).then_some(())
                }
                0xDC00..=0xDFFF => None,
                _ => Some(()),
            },
            _ => None,
        }
    }

    /// Four hexadecimal digits, as a number.
    fn hex4(&mut self) -> Option<u16> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut v = 0;
        for &d in digits {
            v = v << 4 | hex(d)?;
        }
        self.i += 4;
        Some(v)
    }

    /// A string or `null` (a `NonEmpty` field): whether it is a non-empty string.
    fn non_empty(&mut self) -> Option<NonEmpty> {
        if self.null()? {
            return Some(NonEmpty(false));
        }
        Some(NonEmpty(self.string()?))
    }

    /// An `Option<u32>` field: `null`, or a plain integer that fits. Not sure: a sign, a
    /// fraction, an exponent, a leading zero, a number past `u32::MAX`, another type.
    fn u32_or_null(&mut self) -> Option<Option<u32>> {
        if self.null()? {
            return Some(None);
        }
        let first = self.peek()?;
        if !first.is_ascii_digit()
            || (first == b'0' && self.b.get(self.i + 1).is_some_and(u8::is_ascii_digit))
        {
            return None;
        }
        let mut v: u32 = 0;
        while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
            v = v.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
            self.i += 1;
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i) {
            return None;
        }
        Some(Some(v))
    }

    /// An `Option<IgnoredAny>` field: `None` for `null`, otherwise the value skipped.
    fn ignored_or_null(&mut self) -> Option<Option<IgnoredAny>> {
        if self.null()? {
            return Some(None);
        }
        self.skip()?;
        Some(Some(IgnoredAny))
    }

    /// Consumes one value of any type, accepting only what serde_json accepts when it ignores a
    /// value (and not nesting deeper than [`MAX_SKIP_DEPTH`]).
    fn skip(&mut self) -> Option<()> {
        // Bit k: whether the container k levels up from the innermost open one is an object.
        let mut objects: u64 = 0;
        let mut depth = 0;
        loop {
            // A value starts here.
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.i += 1;
                    let is_object = open == b'{';
                    if self.peek()? == if is_object { b'}' } else { b']' } {
                        self.i += 1;
                    } else {
                        if depth == MAX_SKIP_DEPTH {
                            return None;
                        }
                        depth += 1;
                        objects = objects << 1 | u64::from(is_object);
                        if is_object {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value ended: close the containers it ends, or move on to the next element.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let in_object = objects & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        if in_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return None,
                }
                self.i += 1;
                objects >>= 1;
                depth -= 1;
            }
        }
    }

    /// The key of a skipped object's member and its `:`.
    fn member_key(&mut self) -> Option<()> {
        self.string()?;
        self.eat(b':')
    }

    /// A number in JSON's grammar: `-`? (`0` | `[1-9][0-9]*`) (`.` digits)? (`e` sign? digits)?.
    fn number(&mut self) -> Option<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match *self.b.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        // A digit after a leading zero.
        (!self.b.get(self.i).is_some_and(u8::is_ascii_digit)).then_some(())
    }

    /// Consumes decimal digits; how many.
    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    /// JSON whitespace (what serde_json skips: space, tab, line feed, carriage return).
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed; `None` at the end.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// Consumes `c`, the next byte after whitespace.
    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? != c {
            return None;
        }
        self.i += 1;
        Some(())
    }

    /// Consumes `word`, the next bytes (no whitespace skipped).
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.b.get(self.i..)?.starts_with(word) {
            return None;
        }
        self.i += word.len();
        Some(())
    }

    /// Consumes a `null` next (after whitespace): true; false when the next value is not one.
    fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    /// `data` parsed both ways: the scanner's answer (when it gives one) must be serde's, and
    /// [`Chunk::parse`] must be serde's in every case, errors and their messages included.
    fn differential(data: &str) -> Result<(), TestCaseError> {
        let serde = Chunk::parse_serde(data).map_err(|e| e.to_string());
        if let Some(fast) = parse(data.as_bytes()) {
            prop_assert_eq!(Ok(&fast), serde.as_ref(), "the scanner answered; data: {}", data);
        }
        let got = Chunk::parse(data).map_err(|e| e.to_string());
        prop_assert_eq!(got, serde, "data: {}", data);
        Ok(())
    }

    /// The scanner answers (does not leave to serde) for the chunks servers send, and agrees.
    #[test]
    fn answers_the_usual_shapes() {
        let usual = [
            // vLLM /v1/completions.
            r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" the","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}"#,
            r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"","logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":null}"#,
            // Continuous usage.
            r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"a","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":15,"completion_tokens":3,"prompt_tokens_details":null}}"#,
            // The final usage chunk.
            r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":100,"total_tokens":108,"completion_tokens":8,"prompt_tokens_details":{"cached_tokens":64}}}"#,
            // Chat: the role, content, reasoning, the end.
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"hmm","content":null},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"reasoning":"so"},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
            // Logprobs, several choices, escapes, a surrogate pair, pretty-printing.
            r#"{"choices":[{"index":0,"text":"\n\"\u00e9\ud83d\ude00","logprobs":{"tokens":["a"],"token_logprobs":[-0.25,1e-3,-1.5E+2],"top_logprobs":[{"a":-0.1}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"text":"a"},{"index":1,"text":"b","extra":[1,{"x":2},true,false,null]}]}"#,
            "{\n  \"choices\" : [ {\n    \"text\" : \"é😀\",\r\n\t\"finish_reason\" : null } ] ,\n \"usage\" : null\n}\n",
            // An error event.
            r#"{"error":{"object":"error","message":"boom","type":"InternalServerError","param":null,"code":500}}"#,
            r#"{}"#,
        ];
        for data in usual {
            let fast = parse(data.as_bytes()).unwrap_or_else(|| panic!("left to serde: {data}"));
            assert_eq!(fast, Chunk::parse_serde(data).expect("a valid chunk"), "data: {data}");
        }
    }

    /// Left to serde: the cases the scanner must not decide (serde rejects or reads them in a
    /// way the scanner does not follow).
    #[test]
    fn leaves_the_doubtful_to_serde() {
        let doubtful = [
            r#"{"choices":5}"#,
            r#"{"choices":[{"text":"a"}"#,
            r#"{"choices":[{"te\u0078t":"a"}]}"#,
            r#"{"choices":[{"text":"a","text":"b"}]}"#,
            r#"{"choices":[["a",null,null]]}"#,
            r#"{"choices":[null]}"#,
            r#"{"usage":{"prompt_tokens":1.0}}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
            r#"{"usage":{"prompt_tokens":4294967296}}"#,
            r#"{"usage":{"prompt_tokens":01}}"#,
            r#"{"choices":[{"text":"\ud800"}]}"#,
            r#"{"choices":[{"text":"a\udc00"}]}"#,
            r#"{"choices":[{"text":"\x"}]}"#,
            "{\"choices\":[{\"text\":\"\u{1}\"}]}",
            r#"{"id":1,}"#,
            r#"{} x"#,
            r#"[]"#,
        ];
        for data in doubtful {
            assert!(parse(data.as_bytes()).is_none(), "answered: {data}");
            differential(data).unwrap();
        }
        // A value nested past the scanner's depth, and one just within it.
        let deep =
            |n: usize| format!(r#"{{"x":{}1{},"choices":[{{"text":"a"}}]}}"#, "[".repeat(n), "]".repeat(n));
        let limit = usize::try_from(MAX_SKIP_DEPTH).unwrap();
        assert!(parse(deep(limit).as_bytes()).is_some());
        assert!(parse(deep(limit + 1).as_bytes()).is_none());
        for n in [limit, limit + 1, 200] {
            differential(&deep(n)).unwrap();
        }
    }

    /// Whitespace, JSON's four kinds and a few that are not JSON's.
    fn ws() -> impl Strategy<Value = String> {
        prop_oneof![
            600 => Just(String::new()),
            200 => proptest::collection::vec(prop_oneof![Just(" "), Just("\n"), Just("\t"), Just("\r")], 1..3)
                .prop_map(|v| v.concat()),
            1 => prop_oneof![Just("\u{c}"), Just("\u{a0}"), Just("\u{b}")].prop_map(String::from),
        ]
    }

    /// A JSON string literal (quotes included): plain, empty, escaped, non-ASCII, or broken.
    fn string() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            100 => "[a-z ]{1,4}",
            50 => prop_oneof![Just("é"), Just("😀"), Just("€"), Just("\u{7f}")].prop_map(String::from),
            50 => prop_oneof![
                Just(r#"\""#), Just(r"\\"), Just(r"\/"), Just(r"\n"), Just(r"\t"), Just(r"\b"), Just(r"\f"),
                Just(r"\r"), Just(r"\u00e9"), Just(r"\u0000"), Just(r"\uD83D\uDE00"), Just(r"\ud83d\ude00"),
            ]
            .prop_map(String::from),
            6 => prop_oneof![
                Just(r"\ud800"), Just(r"\udc00"), Just(r"\ud800\u0041"), Just(r"\u12"), Just(r"\uzzzz"),
                Just(r"\x"), Just("\u{1}"), Just("\n"), Just("\t"), Just(r"\"),
            ]
            .prop_map(String::from),
        ];
        prop_oneof![
            1 => Just(r#""""#.to_string()),
            3 => proptest::collection::vec(piece, 1..4).prop_map(|v| format!("\"{}\"", v.concat())),
        ]
    }

    /// A JSON number, valid or not, in or out of `u32`.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            100 => (0u32..1000).prop_map(|n| n.to_string()),
            50 => any::<u32>().prop_map(|n| n.to_string()),
            50 => prop_oneof![
                Just("0"), Just("4294967295"), Just("4294967296"), Just("18446744073709551616"),
                Just("123456789012345678901234567890"), Just("-1"), Just("-0"), Just("1.5"), Just("1.0"),
                Just("-0.25"), Just("1e3"), Just("1E+2"), Just("2e-5"), Just("1e400"), Just("-1e400"),
            ]
            .prop_map(String::from),
            8 => prop_oneof![Just("01"), Just("1."), Just("-"), Just(".5"), Just("1e"), Just("+1"), Just("0x1"), Just("1e+")]
                .prop_map(String::from),
        ]
    }

    /// Any value: scalars (and near-misses of the literals), nested arrays and objects.
    fn junk() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            30 => string(),
            30 => number(),
            10 => prop_oneof![Just("true"), Just("false"), Just("null")].prop_map(String::from),
            1 => prop_oneof![Just("nul"), Just("tru"), Just("nulll"), Just("True")].prop_map(String::from),
        ];
        scalar.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                (proptest::collection::vec((ws(), inner.clone()), 0..4), ws()).prop_map(|(v, w)| format!(
                    "[{}{w}]",
                    v.into_iter().map(|(w, x)| w + &x).collect::<Vec<_>>().join(",")
                )),
                (proptest::collection::vec((key(), ws(), inner), 0..4), ws()).prop_map(|(v, w)| format!(
                    "{{{}{w}}}",
                    v.into_iter().map(|(k, w, x)| format!("{k}:{w}{x}")).collect::<Vec<_>>().join(",")
                )),
            ]
        })
    }

    /// A key (quotes included): one of the fields the chunk types read (at any level, so also in
    /// the wrong place), one spelled with an escape, or another.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            30 => prop_oneof![
                Just("choices"), Just("usage"), Just("error"), Just("text"), Just("delta"),
                Just("finish_reason"), Just("content"), Just("reasoning_content"), Just("reasoning"),
                Just("prompt_tokens"), Just("completion_tokens"), Just("prompt_tokens_details"),
                Just("cached_tokens"), Just("index"), Just("role"), Just("id"), Just("logprobs"),
            ]
            .prop_map(|k| format!("\"{k}\"")),
            1 => prop_oneof![Just(r#""te\u0078t""#), Just(r#""usag\u0065""#), Just(r#""""#), Just(r#""a\"b""#)]
                .prop_map(String::from),
            10 => string(),
        ]
    }

    /// A member `"key": value` with whitespace around each part.
    fn member(key: &'static str, value: BoxedStrategy<String>) -> BoxedStrategy<String> {
        (ws(), ws(), ws(), value, ws())
            .prop_map(move |(a, b, c, v, d)| format!("{a}\"{key}\"{b}:{c}{v}{d}"))
            .boxed()
    }

    /// An object of `fields` (each present or not), extra members of any key, a duplicate now
    /// and then, in any order.
    fn object(fields: Vec<BoxedStrategy<String>>) -> BoxedStrategy<String> {
        let present = fields.into_iter().map(|f| proptest::option::weighted(0.7, f)).collect::<Vec<_>>();
        let extra = proptest::collection::vec(
            (ws(), key(), ws(), junk()).prop_map(|(a, k, b, v)| format!("{a}{k}{b}:{v}")),
            0..3,
        );
        (present, extra, any::<bool>(), any::<Index>(), ws())
            .prop_flat_map(|(present, extra, dup, which, w)| {
                let mut members: Vec<String> = present.into_iter().flatten().chain(extra).collect();
                if dup && !members.is_empty() {
                    members.push(which.get(&members).clone());
                }
                (Just(members).prop_shuffle(), Just(w))
            })
            .prop_map(|(members, w)| format!("{{{}{w}}}", members.join(",")))
            .boxed()
    }

    /// `typed`, or now and then `null` or any value in its place.
    fn or_other(typed: BoxedStrategy<String>) -> BoxedStrategy<String> {
        prop_oneof![12 => typed, 3 => Just("null".to_string()), 1 => junk()].boxed()
    }

    /// A text field's value: serde reads these strings whole, so an escape it refuses there
    /// (a surrogate not in a pair) is an error, where in a skipped string it is not.
    fn text() -> BoxedStrategy<String> {
        let surrogates = prop_oneof![
            Just(r#""\ud800""#),
            Just(r#""a\udc00""#),
            Just(r#""\ud800\u0041""#),
            Just(r#""\ud800x""#),
            Just(r#""\udbff\udfff""#),
            Just(r#""\ud800\n""#),
        ];
        or_other(prop_oneof![6 => string(), 2 => surrogates.prop_map(String::from)].boxed())
    }

    fn count() -> BoxedStrategy<String> {
        or_other(number().boxed())
    }

    fn choice() -> BoxedStrategy<String> {
        let delta = object(vec![
            member("role", Just(r#""assistant""#.to_string()).boxed()),
            member("content", text()),
            member("reasoning_content", text()),
            member("reasoning", text()),
        ]);
        object(vec![
            member("index", number().boxed()),
            member("text", text()),
            member("delta", or_other(delta)),
            member("logprobs", or_other(junk().boxed())),
            member(
                "finish_reason",
                or_other(prop_oneof![Just(r#""stop""#), Just(r#""length""#)].prop_map(String::from).boxed()),
            ),
            member("stop_reason", or_other(junk().boxed())),
        ])
    }

    /// A chunk-like object: the real fields, mostly well-typed, with everything else mixed in.
    fn chunk() -> BoxedStrategy<String> {
        let choices =
            (proptest::collection::vec((ws(), prop_oneof![6 => choice(), 1 => junk().boxed()]), 0..3), ws())
                .prop_map(|(v, w)| {
                    format!("[{}{w}]", v.into_iter().map(|(w, c)| w + &c).collect::<Vec<_>>().join(","))
                });
        let details = object(vec![member("cached_tokens", count())]);
        let usage = object(vec![
            member("prompt_tokens", count()),
            member("completion_tokens", count()),
            member("total_tokens", count()),
            member("prompt_tokens_details", or_other(details)),
        ]);
        let error = object(vec![member("message", string().boxed()), member("code", number().boxed())]);
        object(vec![
            member("id", string().boxed()),
            member("object", Just(r#""text_completion""#.to_string()).boxed()),
            member("model", string().boxed()),
            member("choices", or_other(choices.boxed())),
            member("usage", or_other(usage)),
            member("error", or_other(error)),
        ])
    }

    /// A chunk, whole or damaged: cut short, a byte left out, something put in, or a tail.
    fn data() -> impl Strategy<Value = String> {
        let insert = prop_oneof![
            Just("\""),
            Just(","),
            Just("}"),
            Just("]"),
            Just("{"),
            Just("["),
            Just(":"),
            Just("\\"),
            Just("0"),
            Just("-"),
            Just("."),
            Just("e"),
            Just("null"),
            Just(" "),
            Just("é"),
            Just("\u{0}"),
        ];
        (chunk(), 0..12u8, any::<Index>(), insert, ws()).prop_map(|(s, how, at, ins, w)| {
            let cuts: Vec<usize> = (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect();
            let cut = *at.get(&cuts);
            match how {
                0 => s[..cut].to_string(),
                1 => {
                    let next = cuts.iter().copied().find(|&i| i > cut).unwrap_or(cut);
                    format!("{}{}", &s[..cut], &s[next..])
                }
                2 => format!("{}{ins}{}", &s[..cut], &s[cut..]),
                3 => format!("{w}{s}{w}{ins}"),
                _ => format!("{w}{s}{w}"),
            }
        })
    }

    /// The differential test's first check runs only where the scanner answers; this holds that
    /// it answers (and agrees) for a good share of the same generated inputs, so that check
    /// cannot pass by the scanner leaving everything to serde.
    #[test]
    fn the_scanner_answers_for_many_generated_chunks() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = data();
        let n = 2000;
        let mut answered = 0;
        for _ in 0..n {
            let data = strategy.new_tree(&mut runner).expect("a value").current();
            if let Some(fast) = parse(data.as_bytes()) {
                answered += 1;
                assert_eq!(Ok(fast), Chunk::parse_serde(&data).map_err(|e| e.to_string()), "data: {data}");
            }
        }
        eprintln!("the scanner answered {answered} of {n}");
        // 315 of 2,000 with the deterministic runner: most generated chunks are damaged on purpose.
        assert!(answered * 10 >= n, "the scanner answered only {answered} of {n} generated chunks");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// Wherever the scanner answers, it gives serde's chunk; `Chunk::parse` is serde's on
        /// every input, error or not.
        #[test]
        fn scanner_agrees_with_serde(data in data()) {
            differential(&data)?;
        }
    }
}
