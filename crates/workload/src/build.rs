//! From a [`WorkloadSpec`] + [`ArrivalSpec`] + seed to a [`Plan`].

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Gamma};

use crate::spec::{
    ArrivalSpec, PromptFormat, RagSpec, RandomSpec, Schedule, SessionsSpec, SharedPrefixSpec, Source, Vocab,
    WorkloadSpec,
};
use crate::{ChatMessage, Dependency, Error, Limits, Mode, Plan, Prompt, Request, RequestMeta, Trace};

/// Random streams, one per purpose, so that changing one part of a spec does not reshuffle the
/// others (and equal block ids give equal tokens across requests).
#[derive(Clone, Copy)]
#[repr(u64)]
enum Domain {
    Lengths = 1,
    Arrivals = 2,
    Shuffle = 3,
    Unique = 4,
    Prefix = 5,
    Document = 6,
    System = 7,
    Tools = 8,
    User = 9,
    Answer = 10,
    TraceBlock = 11,
    Think = 12,
}

fn stream(seed: u64, domain: Domain, index: u64) -> ChaCha8Rng {
    let key = seed ^ (domain as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = ChaCha8Rng::seed_from_u64(key);
    rng.set_stream(index);
    rng
}

fn tokens(rng: &mut ChaCha8Rng, len: usize, vocab: Vocab) -> Vec<u32> {
    (0..len).map(|_| rng.gen_range(vocab.start..vocab.end)).collect()
}

/// Deterministic tokens of block `index` in `domain`: equal arguments give equal tokens.
fn block(seed: u64, domain: Domain, index: u64, len: u32, vocab: Vocab) -> Vec<u32> {
    tokens(&mut stream(seed, domain, index), len as usize, vocab)
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    System,
    User,
    Assistant,
}

/// A request before it is placed in time.
struct Draft {
    segments: Vec<(Role, Vec<u32>)>,
    max_tokens: u32,
    meta: RequestMeta,
    /// Within a unit, turns after the first wait for the previous one plus this.
    think_time: Duration,
}

impl Draft {
    fn user(tokens: Vec<u32>, max_tokens: u32, meta: RequestMeta) -> Draft {
        Draft { segments: vec![(Role::User, tokens)], max_tokens, meta, think_time: Duration::ZERO }
    }
}

/// Requests released together by one arrival: one request, or one session whose later turns
/// depend on the earlier ones. `trace_at` is the trace timestamp, for [`Schedule::Trace`].
struct Unit {
    drafts: Vec<Draft>,
    trace_at: Option<Duration>,
}

/// Build the plan. The same arguments give byte-identical plans (serialized).
///
/// `trace` must be the parsed trace when `spec.source` is [`Source::Trace`] and is ignored
/// otherwise. Open-loop requests are ordered by intended send time; a session's turns follow
/// its first turn in order. The first `arrival.warmup` requests are warm-ups.
pub fn build_plan(
    spec: &WorkloadSpec,
    arrival: &ArrivalSpec,
    seed: u64,
    trace: Option<&Trace>,
) -> Result<Plan, Error> {
    validate(spec, arrival)?;
    let vocab = spec.vocab;
    let mut units = match &spec.source {
        Source::Random(s) => random(s, seed, vocab),
        Source::SharedPrefix(s) => shared_prefix(s, seed, vocab),
        Source::Rag(s) => rag(s, seed, vocab),
        Source::Sessions(s) => sessions(s, seed, vocab),
        Source::Trace(s) => {
            let trace = trace.ok_or(Error::TraceMissing)?;
            if trace.format != s.format {
                return Err(Error::Invalid(format!(
                    "the trace given is {:?} but the spec says {:?}",
                    trace.format, s.format
                )));
            }
            let limit = s.max_requests.map_or(usize::MAX, |m| m.try_into().unwrap_or(usize::MAX));
            replay(trace, limit, seed, vocab)
        }
    };

    let (mode, times) = match arrival.schedule {
        Schedule::Closed { concurrency } => (Mode::Closed { concurrency }, None),
        Schedule::Trace { speedup } => {
            // Stable: equal timestamps keep file order.
            units.sort_by_key(|u| u.trace_at);
            let times = units
                .iter()
                .map(|u| {
                    let secs = u.trace_at.unwrap_or_default().as_secs_f64() / speedup;
                    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
                })
                .collect();
            (Mode::Open, Some(times))
        }
        schedule => (Mode::Open, Some(arrivals(schedule, units.len(), seed))),
    };

    let duration = arrival.duration_s.map(Duration::from_secs_f64);
    let mut requests = Vec::new();
    for (i, unit) in units.into_iter().enumerate() {
        let send_at = times.as_ref().map(|t| t[i]);
        if let (Some(at), Some(limit)) = (send_at, duration) {
            if at > limit {
                continue;
            }
        }
        for (turn, draft) in unit.drafts.into_iter().enumerate() {
            let id = requests.len() as u64;
            let (prompt, prompt_len) = render(draft.segments, spec.format);
            requests.push(Request {
                id,
                prompt,
                prompt_len,
                max_tokens: draft.max_tokens,
                send_at: if turn == 0 { send_at } else { None },
                depends_on: (turn > 0).then(|| Dependency { parent: id - 1, think_time: draft.think_time }),
                meta: draft.meta,
            });
        }
    }

    Ok(Plan {
        requests,
        mode,
        limits: Limits { max_concurrency: arrival.max_concurrency, duration, warmup: arrival.warmup },
    })
}

fn validate(spec: &WorkloadSpec, arrival: &ArrivalSpec) -> Result<(), Error> {
    let invalid = |m: String| Err(Error::Invalid(m));
    if spec.vocab.start >= spec.vocab.end {
        return invalid(format!("vocab: start {} must be below end {}", spec.vocab.start, spec.vocab.end));
    }
    match &spec.source {
        Source::Random(s) => {
            s.prompt_len.validate("prompt_len", 0)?;
            s.output_len.validate("output_len", 1)?;
            if s.prefix_len == 0 {
                s.prompt_len.validate("prompt_len (with prefix_len 0)", 1)?;
            }
        }
        Source::SharedPrefix(s) => {
            if s.groups == 0 {
                return invalid("shared_prefix: groups must be at least 1".into());
            }
            s.suffix_len.validate("suffix_len", 0)?;
            s.output_len.validate("output_len", 1)?;
            if s.prefix_len == 0 {
                s.suffix_len.validate("suffix_len (with prefix_len 0)", 1)?;
            }
        }
        Source::Rag(s) => {
            s.doc_len.validate("doc_len", 1)?;
            s.question_len.validate("question_len", 0)?;
            s.output_len.validate("output_len", 1)?;
        }
        Source::Sessions(s) => {
            s.turns.validate("turns", 1)?;
            s.user_len.validate("user_len", 1)?;
            s.output_len.validate("output_len", 1)?;
            s.think_time.validate("think_time")?;
        }
        Source::Trace(_) => {}
    }
    let rate_ok = |rate: f64| rate > 0.0 && !rate.is_nan();
    match arrival.schedule {
        Schedule::Poisson { rate } | Schedule::Constant { rate } if !rate_ok(rate) => {
            return invalid(format!("schedule: rate {rate} must be > 0 (inf: all at once)"));
        }
        Schedule::Gamma { rate, burstiness }
            if !(rate_ok(rate) && burstiness > 0.0 && burstiness.is_finite()) =>
        {
            return invalid(format!(
                "schedule: gamma needs rate > 0 and a finite burstiness > 0 \
                 (got rate {rate}, burstiness {burstiness})"
            ));
        }
        Schedule::Trace { speedup } if !(speedup > 0.0 && speedup.is_finite()) => {
            return invalid(format!("schedule: trace speedup {speedup} must be finite and > 0"));
        }
        Schedule::Trace { .. } if !matches!(spec.source, Source::Trace(_)) => {
            return invalid("schedule: \"trace\" needs a trace source".into());
        }
        Schedule::Closed { concurrency: 0 } => {
            return invalid("schedule: closed-loop concurrency must be at least 1".into());
        }
        _ => {}
    }
    if let Some(d) = arrival.duration_s {
        if !(d >= 0.0 && d.is_finite()) {
            return invalid(format!("duration_s {d} must be finite and >= 0"));
        }
    }
    if arrival.max_concurrency == Some(0) {
        return invalid("max_concurrency must be at least 1".into());
    }
    Ok(())
}

/// Open-loop send times of `n` arrivals: the first at 0, then cumulative inter-arrival times.
fn arrivals(schedule: Schedule, n: usize, seed: u64) -> Vec<Duration> {
    let mut rng = stream(seed, Domain::Arrivals, 0);
    let mut gaps: Box<dyn FnMut(&mut ChaCha8Rng) -> f64> = match schedule {
        Schedule::Poisson { rate } | Schedule::Gamma { rate, .. } | Schedule::Constant { rate }
            if rate.is_infinite() =>
        {
            Box::new(|_| 0.0)
        }
        Schedule::Poisson { rate } => match Exp::new(rate) {
            Ok(exp) => Box::new(move |r| exp.sample(r)),
            Err(_) => Box::new(|_| 0.0),
        },
        Schedule::Gamma { rate, burstiness } => match Gamma::new(burstiness, 1.0 / (rate * burstiness)) {
            Ok(gamma) => Box::new(move |r| gamma.sample(r)),
            Err(_) => Box::new(|_| 0.0),
        },
        Schedule::Constant { rate } => Box::new(move |_| 1.0 / rate),
        Schedule::Trace { .. } | Schedule::Closed { .. } => Box::new(|_| 0.0),
    };
    let mut at = 0.0f64;
    (0..n)
        .map(|i| {
            if i > 0 {
                at += gaps(&mut rng);
            }
            Duration::try_from_secs_f64(at).unwrap_or(Duration::MAX)
        })
        .collect()
}

fn random(s: &RandomSpec, seed: u64, vocab: Vocab) -> Vec<Unit> {
    let mut lengths = stream(seed, Domain::Lengths, 0);
    let prefix = block(seed, Domain::Prefix, u64::MAX, s.prefix_len, vocab);
    (0..s.num_requests)
        .map(|i| {
            let len = s.prompt_len.sample(&mut lengths);
            let max_tokens = s.output_len.sample(&mut lengths);
            let mut prompt = prefix.clone();
            prompt.extend(block(seed, Domain::Unique, i, len, vocab));
            single(Draft::user(prompt, max_tokens, RequestMeta::default()))
        })
        .collect()
}

fn shared_prefix(s: &SharedPrefixSpec, seed: u64, vocab: Vocab) -> Vec<Unit> {
    let mut groups: Vec<u64> = (0..s.num_requests).map(|i| i % u64::from(s.groups)).collect();
    groups.shuffle(&mut stream(seed, Domain::Shuffle, 0));
    let prefixes: Vec<Vec<u32>> =
        (0..s.groups).map(|g| block(seed, Domain::Prefix, u64::from(g), s.prefix_len, vocab)).collect();
    let mut lengths = stream(seed, Domain::Lengths, 0);
    groups
        .into_iter()
        .enumerate()
        .map(|(i, group)| {
            let len = s.suffix_len.sample(&mut lengths);
            let max_tokens = s.output_len.sample(&mut lengths);
            let mut prompt = prefixes[group as usize].clone();
            prompt.extend(block(seed, Domain::Unique, i as u64, len, vocab));
            let meta = RequestMeta { group: Some(group), ..RequestMeta::default() };
            single(Draft::user(prompt, max_tokens, meta))
        })
        .collect()
}

fn rag(s: &RagSpec, seed: u64, vocab: Vocab) -> Vec<Unit> {
    let mut lengths = stream(seed, Domain::Lengths, 0);
    let docs: Vec<Vec<u32>> = (0..s.documents)
        .map(|d| {
            let len = s.doc_len.sample(&mut lengths);
            block(seed, Domain::Document, u64::from(d), len, vocab)
        })
        .collect();
    let mut queries: Vec<u64> = (0..u64::from(s.documents))
        .flat_map(|d| std::iter::repeat_n(d, s.queries_per_doc as usize))
        .collect();
    queries.shuffle(&mut stream(seed, Domain::Shuffle, 0));
    queries
        .into_iter()
        .enumerate()
        .map(|(i, doc)| {
            let len = s.question_len.sample(&mut lengths);
            let max_tokens = s.output_len.sample(&mut lengths);
            let mut prompt = docs[doc as usize].clone();
            prompt.extend(block(seed, Domain::Unique, i as u64, len, vocab));
            let meta = RequestMeta { group: Some(doc), ..RequestMeta::default() };
            single(Draft::user(prompt, max_tokens, meta))
        })
        .collect()
}

fn sessions(s: &SessionsSpec, seed: u64, vocab: Vocab) -> Vec<Unit> {
    let mut system = block(seed, Domain::System, 0, s.system_prompt_len, vocab);
    system.extend(block(seed, Domain::Tools, 0, s.tools_len, vocab));
    let mut lengths = stream(seed, Domain::Lengths, 0);
    let mut think = stream(seed, Domain::Think, 0);
    (0..u64::from(s.sessions))
        .map(|session| {
            let turns = s.turns.sample(&mut lengths);
            let mut history = vec![(Role::System, system.clone())];
            let drafts = (1..=turns)
                .map(|turn| {
                    let index = (session << 32) | u64::from(turn);
                    let user_len = s.user_len.sample(&mut lengths);
                    let max_tokens = s.output_len.sample(&mut lengths);
                    history.push((Role::User, block(seed, Domain::User, index, user_len, vocab)));
                    let draft = Draft {
                        segments: history.clone(),
                        max_tokens,
                        meta: RequestMeta {
                            session: Some(session),
                            turn: Some(turn),
                            ..RequestMeta::default()
                        },
                        think_time: if turn > 1 { s.think_time.sample(&mut think) } else { Duration::ZERO },
                    };
                    // The next turn carries this turn's answer, synthesized at its exact length.
                    let answer = block(seed, Domain::Answer, index, max_tokens, vocab);
                    history.push((Role::Assistant, answer));
                    draft
                })
                .collect();
            Unit { drafts, trace_at: None }
        })
        .collect()
}

fn replay(trace: &Trace, limit: usize, seed: u64, vocab: Vocab) -> Vec<Unit> {
    let block_size = trace.format.block_size();
    trace
        .entries
        .iter()
        .take(limit)
        .map(|e| {
            // Empty prompts and zero max_tokens are refused by servers: at least 1 of each.
            let input_len = e.input_len.max(1) as usize;
            let mut prompt = Vec::with_capacity(input_len);
            for &id in &e.hash_ids {
                if prompt.len() >= input_len {
                    break;
                }
                prompt.extend(block(seed, Domain::TraceBlock, id, block_size, vocab));
            }
            prompt.truncate(input_len);
            if prompt.len() < input_len {
                let rest = (input_len - prompt.len()) as u32;
                prompt.extend(block(seed, Domain::Unique, e.line, rest, vocab));
            }
            let meta =
                RequestMeta { session: e.session, turn: e.turn, group: None, trace_line: Some(e.line) };
            Unit { drafts: vec![Draft::user(prompt, e.output_len.max(1), meta)], trace_at: Some(e.at) }
        })
        .collect()
}

fn single(draft: Draft) -> Unit {
    Unit { drafts: vec![draft], trace_at: None }
}

/// The printable ASCII character (`!`..=`~`) standing for a token in the text forms.
fn token_char(id: u32) -> char {
    char::from(0x21 + (id % 94) as u8)
}

fn render(segments: Vec<(Role, Vec<u32>)>, format: PromptFormat) -> (Prompt, u32) {
    let len: usize = segments.iter().map(|(_, t)| t.len()).sum();
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let prompt = match format {
        PromptFormat::Tokens => Prompt::Tokens(segments.into_iter().flat_map(|(_, t)| t).collect()),
        PromptFormat::Text => {
            Prompt::Text(segments.iter().flat_map(|(_, t)| t.iter().map(|&id| token_char(id))).collect())
        }
        PromptFormat::Chat => {
            let mut messages: Vec<ChatMessage> = Vec::new();
            let mut last_role = None;
            for (role, tokens) in segments {
                let text: String = tokens.iter().map(|&id| token_char(id)).collect();
                if last_role == Some(role) {
                    if let Some(m) = messages.last_mut() {
                        m.content.push_str(&text);
                        continue;
                    }
                }
                if text.is_empty() && role == Role::System {
                    continue;
                }
                last_role = Some(role);
                let role = match role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                messages.push(ChatMessage { role: role.to_string(), content: text });
            }
            Prompt::Chat(messages)
        }
    };
    (prompt, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_chars_are_printable_ascii() {
        let chars: String = (0..94).map(token_char).collect();
        assert_eq!(chars.len(), 94);
        assert!(chars.starts_with('!') && chars.ends_with('~'), "{chars}");
        assert_eq!(token_char(94), '!');
    }
}
