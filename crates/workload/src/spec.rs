//! The serializable description of a workload and of its arrival schedule.
//!
//! Both structs deny unknown fields so that they can sit in an experiment TOML and a typo is an
//! error, not a silently ignored setting.

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Exp, LogNormal, Normal};
use serde::{Deserialize, Serialize};

use crate::Error;

/// What to send. Combine with an [`ArrivalSpec`] (when) and a seed in [`crate::build_plan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub source: Source,
    /// How prompts go on the wire.
    #[serde(default)]
    pub format: PromptFormat,
    /// Token IDs are drawn from this range.
    #[serde(default)]
    pub vocab: Vocab,
}

/// Where the requests come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Independent random prompts (`vllm bench serve --dataset-name random`).
    Random(RandomSpec),
    /// `groups` groups, each with a common prefix of `prefix_len` tokens.
    SharedPrefix(SharedPrefixSpec),
    /// Long documents, each reused by several queries (the RAG case).
    Rag(RagSpec),
    /// Agentic multi-turn sessions sharing a system prompt and tools.
    Sessions(SessionsSpec),
    /// Replay of a production trace; the caller reads `path` and parses it into a
    /// [`crate::Trace`] (see [`TraceSpec::parse`]).
    Trace(TraceSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomSpec {
    /// Requests in the plan, warm-up included.
    #[serde(default = "default_num_requests")]
    pub num_requests: u64,
    /// Length of the random part of each prompt.
    pub prompt_len: LengthDist,
    pub output_len: LengthDist,
    /// A prefix of this many tokens common to every request, before the random part.
    #[serde(default)]
    pub prefix_len: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedPrefixSpec {
    /// Requests in the plan, warm-up included; spread evenly over the groups, in random order.
    #[serde(default = "default_num_requests")]
    pub num_requests: u64,
    pub groups: u32,
    /// Tokens of each group's common prefix.
    pub prefix_len: u32,
    /// Tokens after the prefix, unique to each request.
    pub suffix_len: LengthDist,
    pub output_len: LengthDist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RagSpec {
    pub documents: u32,
    pub doc_len: LengthDist,
    /// Each document is queried this many times; the queries are shuffled.
    pub queries_per_doc: u32,
    /// The question appended after the document.
    pub question_len: LengthDist,
    pub output_len: LengthDist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSpec {
    /// Sessions; each starts at one arrival of the schedule.
    pub sessions: u32,
    /// Turns per session (at least 1).
    pub turns: LengthDist,
    /// System prompt shared by every session.
    pub system_prompt_len: u32,
    /// Tool definitions shared by every session, after the system prompt.
    #[serde(default)]
    pub tools_len: u32,
    /// New user message of each turn.
    pub user_len: LengthDist,
    /// Answer length of each turn; the next turn's prompt carries a synthesized answer of
    /// exactly this length.
    pub output_len: LengthDist,
    /// Between the end of a turn and the next turn's request.
    pub think_time: SecondsDist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSpec {
    pub format: crate::TraceFormat,
    /// The trace file, read by the caller (relative paths are the caller's business).
    pub path: String,
    /// Count malformed lines instead of failing on the first.
    #[serde(default)]
    pub skip_bad_lines: bool,
    /// Replay only the first this many (valid) lines.
    #[serde(default)]
    pub max_requests: Option<u64>,
}

impl TraceSpec {
    /// Parse the text of [`TraceSpec::path`] with this spec's format and options.
    pub fn parse(&self, text: &str, file_name: &str) -> Result<crate::Trace, Error> {
        let options = crate::ParseOptions { skip_bad_lines: self.skip_bad_lines };
        crate::Trace::parse(self.format, text, file_name, &options)
    }
}

fn default_num_requests() -> u64 {
    1000
}

/// How prompts go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// Token-ID arrays for `/v1/completions`: exact lengths, no tokenizer.
    #[default]
    Tokens,
    /// Text with one printable ASCII character (`!`..=`~`) per token, for engines where one
    /// character is one token (the lab's tiny llama.cpp model, the emulator).
    Text,
    /// Chat messages made of such text; sessions become system/user/assistant turns. Lengths
    /// exclude the chat template.
    Chat,
}

/// Token IDs are drawn uniformly from `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocab {
    pub start: u32,
    pub end: u32,
}

impl Default for Vocab {
    /// Ordinary tokens of common tokenizers, clear of their special tokens.
    fn default() -> Self {
        Vocab { start: 1000, end: 30000 }
    }
}

impl Vocab {
    /// The smallest vocabulary [`Vocab::within`] takes: below it the range would hold a handful
    /// of ids (or none).
    pub const MIN_VOCAB_SIZE: u32 = 16;

    /// The ids to draw for a model whose vocabulary has `vocab_size` tokens: the default range
    /// when the vocabulary holds it, else `vocab_size / 80 .. vocab_size` (at least 4: clear of
    /// the usual special tokens at the bottom), every id one the model knows. `None` when
    /// `vocab_size` is below [`Vocab::MIN_VOCAB_SIZE`].
    pub fn within(vocab_size: u32) -> Option<Vocab> {
        let default = Vocab::default();
        match vocab_size {
            n if n < Self::MIN_VOCAB_SIZE => None,
            n if n >= default.end => Some(default),
            n => Some(Vocab { start: (n / 80).max(4), end: n }),
        }
    }
}

/// A distribution of token counts. Samples are rounded and clamped to `[min, max]` (default
/// `[1, u32::MAX]`) for `normal` and `lognormal`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum LengthDist {
    Fixed {
        value: u32,
    },
    /// Uniform over `min..=max`.
    Uniform {
        min: u32,
        max: u32,
    },
    Normal {
        mean: f64,
        std: f64,
        #[serde(default)]
        min: Option<u32>,
        #[serde(default)]
        max: Option<u32>,
    },
    /// Log-normal with this mean and standard deviation *of the lengths* (not of their log).
    Lognormal {
        mean: f64,
        std: f64,
        #[serde(default)]
        min: Option<u32>,
        #[serde(default)]
        max: Option<u32>,
    },
}

impl LengthDist {
    /// A fixed length.
    pub fn fixed(value: u32) -> Self {
        LengthDist::Fixed { value }
    }

    /// Reject parameters that cannot be sampled, or that allow fewer than `least` tokens.
    pub(crate) fn validate(&self, what: &str, least: u32) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Invalid(format!("{what}: {msg}")));
        match *self {
            LengthDist::Fixed { value } if value < least => {
                bad(format!("fixed value {value} is below {least}"))
            }
            LengthDist::Uniform { min, max } if min > max => {
                bad(format!("uniform min {min} is above max {max}"))
            }
            LengthDist::Uniform { min, .. } if min < least => {
                bad(format!("uniform min {min} is below {least}"))
            }
            LengthDist::Normal { mean, std, min, max } | LengthDist::Lognormal { mean, std, min, max } => {
                if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
                    return bad(format!("mean {mean} and std {std} must be finite, std >= 0"));
                }
                if matches!(self, LengthDist::Lognormal { .. }) && mean <= 0.0 {
                    return bad(format!("lognormal mean {mean} must be > 0"));
                }
                let (lo, hi) = (min.unwrap_or(1), max.unwrap_or(u32::MAX));
                if lo > hi {
                    return bad(format!("min {lo} is above max {hi}"));
                }
                if lo < least {
                    return bad(format!("min {lo} is below {least}"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Draw one length. Only call after [`LengthDist::validate`].
    pub(crate) fn sample<R: Rng>(&self, rng: &mut R) -> u32 {
        let clamp = |x: f64, min: Option<u32>, max: Option<u32>| {
            let (lo, hi) = (min.unwrap_or(1), max.unwrap_or(u32::MAX));
            (x.round().clamp(f64::from(lo), f64::from(hi))) as u32
        };
        match *self {
            LengthDist::Fixed { value } => value,
            LengthDist::Uniform { min, max } => rng.gen_range(min..=max),
            LengthDist::Normal { mean, std, min, max } => {
                let x = Normal::new(mean, std).map_or(mean, |d| d.sample(rng));
                clamp(x, min, max)
            }
            LengthDist::Lognormal { mean, std, min, max } => {
                // Length mean m and std s: sigma^2 = ln(1 + s^2/m^2), mu = ln(m) - sigma^2/2.
                let sigma2 = (1.0 + (std * std) / (mean * mean)).ln();
                let mu = mean.ln() - sigma2 / 2.0;
                let x = LogNormal::new(mu, sigma2.sqrt()).map_or(mean, |d| d.sample(rng));
                clamp(x, min, max)
            }
        }
    }
}

/// A distribution of durations in seconds (think time).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum SecondsDist {
    Fixed { value: f64 },
    Uniform { min: f64, max: f64 },
    Exponential { mean: f64 },
}

impl SecondsDist {
    pub(crate) fn validate(&self, what: &str) -> Result<(), Error> {
        let ok = match *self {
            SecondsDist::Fixed { value } => value.is_finite() && value >= 0.0,
            SecondsDist::Uniform { min, max } => {
                min.is_finite() && max.is_finite() && 0.0 <= min && min <= max
            }
            SecondsDist::Exponential { mean } => mean.is_finite() && mean >= 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!("{what}: {self:?} needs finite, non-negative seconds (min <= max)")))
        }
    }

    pub(crate) fn sample<R: Rng>(&self, rng: &mut R) -> Duration {
        let secs = match *self {
            SecondsDist::Fixed { value } => value,
            SecondsDist::Uniform { min, max } => rng.gen_range(min..=max),
            SecondsDist::Exponential { mean } if mean > 0.0 => {
                Exp::new(1.0 / mean).map_or(mean, |d| d.sample(rng))
            }
            SecondsDist::Exponential { .. } => 0.0,
        };
        Duration::try_from_secs_f64(secs).unwrap_or_default()
    }
}

/// When requests are released, and the limits on sending them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrivalSpec {
    pub schedule: Schedule,
    /// At most this many requests in flight.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// The first this many requests of the plan are warm-ups (they count toward its size).
    #[serde(default)]
    pub warmup: u32,
    /// Stop sending after this many seconds; open-loop arrivals later than that are left out.
    #[serde(default)]
    pub duration_s: Option<f64>,
}

impl ArrivalSpec {
    /// A schedule with no limits.
    pub fn new(schedule: Schedule) -> Self {
        ArrivalSpec { schedule, max_concurrency: None, warmup: 0, duration_s: None }
    }
}

/// Arrival process of requests (of sessions, for [`Source::Sessions`]).
///
/// A `rate` is per second; `inf` sends everything at t = 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Exponential inter-arrival times.
    Poisson { rate: f64 },
    /// Gamma inter-arrival times as `vllm bench serve`: shape = burstiness,
    /// scale = 1 / (rate * burstiness); burstiness 1 is Poisson, below 1 burstier.
    Gamma { rate: f64, burstiness: f64 },
    /// Evenly spaced.
    Constant { rate: f64 },
    /// The trace's own timestamps divided by `speedup` (2 = twice as fast).
    Trace {
        #[serde(default = "one")]
        speedup: f64,
    },
    /// Closed loop: `concurrency` workers, each sends when its previous request finished.
    Closed { concurrency: u32 },
}

fn one() -> f64 {
    1.0
}
