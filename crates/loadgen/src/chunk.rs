//! The parts of an OpenAI streaming chunk the load generator needs, parsed without allocating.
//!
//! A chunk is one `data:` event of `/v1/completions` or `/v1/chat/completions` with
//! `stream: true`. Only `choices[0]` is looked at (the load generator sends `n = 1`); the text is
//! never copied, only tested for being non-empty.
//!
//! [`Chunk::parse`] first runs a hand-written scanner (`scan`) that answers for the shapes servers
//! send; whatever it is not sure of goes to serde's derive on the types below, so every result,
//! error messages included, is serde's.

mod scan;

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

/// One parsed chunk.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct Chunk {
    #[serde(default)]
    pub(crate) choices: FirstChoice,
    #[serde(default)]
    pub(crate) usage: Option<Usage>,
    /// vLLM and others report a failure inside a 200 stream as `{"error": {...}}`.
    #[serde(default)]
    pub(crate) error: Option<IgnoredAny>,
}

impl Chunk {
    /// Parses the `data` of one event. The result, `Ok` or `Err` with its message, is always
    /// [`Chunk::parse_serde`]'s: the scanner answers only where it is sure to agree.
    pub(crate) fn parse(data: &str) -> Result<Chunk, serde_json::Error> {
        match scan::parse(data.as_bytes()) {
            Some(chunk) => Ok(chunk),
            None => Chunk::parse_serde(data),
        }
    }

    /// Parses the `data` of one event with serde's derive alone: the reference the scanner is
    /// held against, and what it leaves to.
    pub(crate) fn parse_serde(data: &str) -> Result<Chunk, serde_json::Error> {
        serde_json::from_str(data)
    }

    /// True when `choices[0]` is a token arrival: generated content (`text` for completions,
    /// `delta.content` or a reasoning field for chat), or a completion `text` that is empty but
    /// does not end the stream. vLLM sends the latter for a token whose bytes end inside a UTF-8
    /// character (its text follows with a later token), and `vllm bench serve` counts it as a
    /// token too. Not content: a role-only chat delta, and an empty completion chunk that carries
    /// the `finish_reason` (OpenAI and llama.cpp close a stream with one after the last token).
    pub(crate) fn has_content(&self) -> bool {
        self.choices.0.as_ref().is_some_and(|c| {
            c.text.is_some_and(|t| t.0 || c.finish_reason.is_none())
                || c.delta.as_ref().is_some_and(|d| d.content.0 || d.reasoning_content.0 || d.reasoning.0)
        })
    }

    /// True when `choices[0].finish_reason` is set: the server says generation ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.choices.0.as_ref().is_some_and(|c| c.finish_reason.is_some())
    }
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct Usage {
    #[serde(default)]
    pub(crate) prompt_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) completion_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct PromptTokensDetails {
    #[serde(default)]
    pub(crate) cached_tokens: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct Choice {
    /// `None`: absent or `null` (a chat chunk).
    #[serde(default)]
    text: Option<NonEmpty>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
struct Delta {
    #[serde(default)]
    content: NonEmpty,
    #[serde(default)]
    reasoning_content: NonEmpty,
    #[serde(default)]
    reasoning: NonEmpty,
}

/// `choices[0]`, skipping the other elements without building them.
#[derive(Debug, Default)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct FirstChoice(pub(crate) Option<Choice>);

impl<'de> Deserialize<'de> for FirstChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstChoice;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_unit<E: de::Error>(self) -> Result<FirstChoice, E> {
                Ok(FirstChoice(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstChoice, A::Error> {
                let first = seq.next_element::<Choice>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstChoice(first))
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether a string field is present and non-empty (`null` counts as empty).
#[derive(Debug, Default, Clone, Copy)]
#[cfg_attr(test, derive(PartialEq))]
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!v.is_empty()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(has_content, is_finished, completion_tokens, cached_tokens, error)` or the parse error.
    fn check(data: &str, expect: &str) {
        let got = match Chunk::parse(data) {
            Ok(c) => format!(
                "content={} finished={} completion={:?} prompt={:?} cached={:?} error={}",
                c.has_content(),
                c.is_finished(),
                c.usage.as_ref().and_then(|u| u.completion_tokens),
                c.usage.as_ref().and_then(|u| u.prompt_tokens),
                c.usage.as_ref().and_then(|u| u.prompt_tokens_details.as_ref()).and_then(|d| d.cached_tokens),
                c.error.is_some(),
            ),
            Err(e) => format!("parse error: {e}"),
        };
        assert_eq!(got, expect, "data: {data}");
    }

    #[test]
    fn chunks() {
        check(
            r#"{"id":"x","choices":[{"index":0,"text":"a","finish_reason":null}],"usage":null}"#,
            "content=true finished=false completion=None prompt=None cached=None error=false",
        );
        check(
            r#"{"choices":[{"text":"","finish_reason":"length"}]}"#,
            "content=false finished=true completion=None prompt=None cached=None error=false",
        );
        // vLLM: a token whose text is held back (it ends inside a UTF-8 character).
        check(
            r#"{"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":null,"stop_reason":null}]}"#,
            "content=true finished=false completion=None prompt=None cached=None error=false",
        );
        check(
            r#"{"choices":[{"text":null}]}"#,
            "content=false finished=false completion=None prompt=None cached=None error=false",
        );
        check(
            r#"{"choices":[{"text":"\n\"é\u00e9"}]}"#,
            "content=true finished=false completion=None prompt=None cached=None error=false",
        );
        check(
            r#"{"choices":[{"delta":{"role":"assistant"}}]}"#,
            "content=false finished=false completion=None prompt=None cached=None error=false",
        );
        check(
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            "content=false finished=false completion=None prompt=None cached=None error=false",
        );
        check(
            r#"{"choices":[{"delta":{"content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#,
            "content=true finished=false completion=Some(3) prompt=Some(7) cached=None error=false",
        );
        check(
            r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#,
            "content=true finished=false completion=None prompt=None cached=None error=false",
        );
        check(
            r#"{"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":8,"prompt_tokens_details":{"cached_tokens":64}}}"#,
            "content=false finished=false completion=Some(8) prompt=Some(100) cached=Some(64) error=false",
        );
        check(
            r#"{"choices":[{"text":"a"},{"text":"b","extra":[1,{"x":2}]}]}"#,
            "content=true finished=false completion=None prompt=None cached=None error=false",
        );
        check(
            r#"{"error":{"message":"boom","code":500}}"#,
            "content=false finished=false completion=None prompt=None cached=None error=true",
        );
        check(r#"{"choices":[{"text":"a"}"#, "parse error: EOF while parsing a list at line 1 column 24");
        check(
            r#"{"choices":5}"#,
            "parse error: invalid type: integer `5`, expected an array of choices at line 1 column 12",
        );
    }
}
