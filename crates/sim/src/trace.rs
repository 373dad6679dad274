//! Traces prepared for replay: block keys at the simulator's block size, dense ids, next uses,
//! conversations.

use std::collections::HashMap;

use kvcache::BlockHash;
use serde::Serialize;
use workload::{ParseOptions, Trace, TraceEntry, TraceFormat};

use crate::SimError;

/// What kind of file a trace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Mooncake JSONL (512-token `hash_ids`).
    Mooncake,
    /// Qwen-Bailian JSONL (16-token `hash_ids`, `chat_id`, `parent_chat_id`, `turn`).
    Bailian,
    /// A conversation CSV: `timestamp` (s), `conversation_id`, `prompt_tokens`, `output_tokens`.
    ConversationCsv,
    /// kvlab's own `requests.jsonl`: each record's `prompt_blocks` (16-token chained hashes),
    /// replayed in send order; failed requests are left out (they were not served).
    KvlabRecords,
}

impl InputFormat {
    /// Guesses the format from the first non-empty line of `text`; `file` names it in errors.
    /// Refuses, with the reason, files the simulator cannot replay: kvlab's own
    /// `requests.jsonl` and Azure CSVs (no prefix information).
    pub fn detect(text: &str, file: &str) -> Result<InputFormat, SimError> {
        let (line_no, first) = text
            .lines()
            .enumerate()
            .find(|(_, l)| !l.trim().is_empty())
            .ok_or_else(|| SimError::Input(stats::Located::whole(file, "empty file")))?;
        let line = line_no + 1;
        let first = first.trim().trim_start_matches('\u{feff}');
        if first.starts_with('{') {
            if first.contains("\"token_source\"") || first.contains("\"first_token\"") {
                return Ok(InputFormat::KvlabRecords);
            }
            if first.contains("\"chat_id\"") {
                return Ok(InputFormat::Bailian);
            }
            if first.contains("\"hash_ids\"") {
                return Ok(InputFormat::Mooncake);
            }
            return Err(SimError::input(
                file,
                line,
                "(top level)",
                "JSON line with neither `hash_ids` nor `chat_id`",
            ));
        }
        let lower = first.to_ascii_lowercase();
        if lower.contains("contexttokens") {
            return Err(SimError::input(
                file,
                line,
                "(header)",
                "an Azure LLM inference CSV carries no prefix or conversation data (TIMESTAMP, \
                 ContextTokens, GeneratedTokens only): nothing to replay",
            ));
        }
        if lower.contains("conversation") {
            return Ok(InputFormat::ConversationCsv);
        }
        Err(SimError::input(
            file,
            line,
            "(top level)",
            "unknown trace format (expected Mooncake or Bailian JSONL, or a conversation CSV)",
        ))
    }
}

/// One request of a [`SimTrace`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimRequest {
    /// Milliseconds from the start of the trace.
    pub at_ms: u64,
    pub input_len: u32,
    pub output_len: u32,
    /// Its keys are `SimTrace::keys[start..end]`.
    pub start: u32,
    pub end: u32,
    pub session: u64,
    /// 1-based turn in its session.
    pub turn: u32,
    pub session_start_ms: u64,
    /// 1-based line in the source file.
    pub line: u64,
}

/// A trace ready for replay. Invariants: requests are sorted by `at_ms` (stable, file order for
/// ties); keys are dense ids `0..unique_blocks` (two keys are equal iff they stand for the same
/// prefix); `next_use[i]` is the index of the next request that uses `keys[i]` (`u32::MAX`:
/// none); every block but a request's last covers `block_tokens` tokens.
#[derive(Debug, Clone, Serialize)]
pub struct SimTrace {
    pub name: String,
    pub format: InputFormat,
    /// Tokens per key in the simulation.
    pub block_tokens: u32,
    /// Tokens per block in the source (Mooncake 512, Bailian 16, conversation CSV: the chosen size).
    pub source_block_tokens: u32,
    /// How source blocks became simulator blocks, for the output.
    pub granularity: String,
    pub requests: Vec<SimRequest>,
    #[serde(skip)]
    pub keys: Vec<BlockHash>,
    #[serde(skip)]
    pub next_use: Vec<u32>,
    pub unique_blocks: u64,
    /// Malformed lines skipped.
    pub bad_lines: u64,
}

impl SimTrace {
    /// The keys of request `r`.
    pub fn keys_of(&self, r: &SimRequest) -> &[BlockHash] {
        &self.keys[r.start as usize..r.end as usize]
    }

    /// Tokens of block `j` of request `r` (the last block may be partial).
    pub fn block_weight(&self, r: &SimRequest, j: usize) -> u64 {
        let b = u64::from(self.block_tokens);
        let n = u64::from(r.end - r.start);
        if j as u64 + 1 == n {
            let rest = u64::from(r.input_len).saturating_sub(j as u64 * b);
            rest.clamp(1, b)
        } else {
            b
        }
    }

    /// Total block accesses.
    pub fn accesses(&self) -> u64 {
        self.keys.len() as u64
    }
}

/// How to load a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// `None`: guess ([`InputFormat::detect`]).
    pub format: Option<InputFormat>,
    /// Simulator block size in tokens; `None`: the source's.
    pub block_tokens: Option<u32>,
    /// Count malformed lines instead of failing on the first.
    pub skip_bad_lines: bool,
    /// For conversation CSVs: tokens per synthesised block (default 16).
    pub csv_block_tokens: Option<u32>,
}

/// Parses and prepares a trace. `text` is the content of the file called `name` (errors give
/// `name:line: field ...`).
pub fn load(name: &str, text: &str, opts: &LoadOptions) -> Result<SimTrace, SimError> {
    let format = match opts.format {
        Some(f) => f,
        None => InputFormat::detect(text, name)?,
    };
    let parse = ParseOptions { skip_bad_lines: opts.skip_bad_lines };
    let trace = match format {
        InputFormat::Mooncake => Trace::parse(TraceFormat::Mooncake, text, name, &parse)?,
        InputFormat::Bailian => Trace::parse(TraceFormat::Bailian, text, name, &parse)?,
        InputFormat::ConversationCsv => {
            conversation_csv_to_trace(text, name, opts.csv_block_tokens.unwrap_or(16), opts.skip_bad_lines)?
        }
        InputFormat::KvlabRecords => records_to_trace(text, name, opts.skip_bad_lines)?,
    };
    let source = match format {
        InputFormat::ConversationCsv => opts.csv_block_tokens.unwrap_or(16),
        InputFormat::KvlabRecords => RECORD_BLOCK_TOKENS,
        _ => trace.format.block_size(),
    };
    prepare(name, format, &trace, source, opts.block_tokens.unwrap_or(source))
}

/// Turns a parsed trace (with `hash_ids` of `source` tokens each) into a [`SimTrace`] with
/// `block_tokens`-token keys. `block_tokens` must be a multiple or a divisor of `source`.
pub fn prepare(
    name: &str,
    format: InputFormat,
    trace: &Trace,
    source: u32,
    block_tokens: u32,
) -> Result<SimTrace, SimError> {
    if source == 0 || block_tokens == 0 {
        return Err(SimError::Invalid(format!("{name}: block sizes must be at least 1 token")));
    }
    let (group, split) = if block_tokens >= source {
        if !block_tokens.is_multiple_of(source) {
            return Err(SimError::Invalid(format!(
                "--block-size {block_tokens} is neither a multiple nor a divisor of the trace's {source}-token blocks"
            )));
        }
        (block_tokens / source, 1)
    } else {
        if !source.is_multiple_of(block_tokens) {
            return Err(SimError::Invalid(format!(
                "--block-size {block_tokens} is neither a multiple nor a divisor of the trace's {source}-token blocks"
            )));
        }
        (1, source / block_tokens)
    };
    let granularity = if group == 1 && split == 1 {
        format!("trace blocks of {source} tokens used as they are")
    } else if group > 1 {
        format!(
            "{group} trace blocks of {source} tokens grouped into one simulated block of {block_tokens} \
             (a partial last group is keyed by its last trace block)"
        )
    } else {
        format!(
            "each trace block of {source} tokens split into {split} simulated blocks of {block_tokens}; \
             sharing below {source} tokens is unknown, so hit ratios are a lower bound"
        )
    };
    let mut order: Vec<&TraceEntry> = trace.entries.iter().collect();
    order.sort_by_key(|e| e.at);

    let mut dense: HashMap<(u64, u32), u32> = HashMap::new();
    let mut keys = Vec::new();
    let mut requests = Vec::with_capacity(order.len());
    // Sessions: Bailian gives them; otherwise a request continues the conversation whose
    // latest request's last key appears in its prompt (at depth >= 1).
    let mut by_last_key: HashMap<u32, u64> = HashMap::new();
    let mut sessions: HashMap<u64, (u32, u64)> = HashMap::new();
    for (idx, e) in order.iter().enumerate() {
        let start = keys.len() as u32;
        let b = u64::from(block_tokens);
        let wanted = u64::from(e.input_len).div_ceil(b);
        let n_ids = e.hash_ids.len();
        let mut j = 0u64;
        while j < wanted {
            let (id, sub) = if group > 1 {
                let last = (((j + 1) * u64::from(group)) as usize).min(n_ids);
                if last == 0 || (j * u64::from(group)) as usize >= n_ids {
                    break;
                }
                (e.hash_ids[last - 1], 0)
            } else {
                let t = (j / u64::from(split)) as usize;
                let Some(&id) = e.hash_ids.get(t) else { break };
                (id, (j % u64::from(split)) as u32)
            };
            let next = dense.len() as u32;
            let k = *dense.entry((id, sub)).or_insert(next);
            keys.push(BlockHash(u64::from(k)));
            j += 1;
        }
        let end = keys.len() as u32;
        let at_ms = u64::try_from(e.at.as_millis()).unwrap_or(u64::MAX);
        let session = match e.session {
            Some(s) => s,
            None => keys[start as usize..end as usize]
                .iter()
                .enumerate()
                .skip(1)
                .rev()
                .find_map(|(_, k)| by_last_key.get(&(k.0 as u32)).copied())
                .unwrap_or(idx as u64 + (1 << 40)),
        };
        let entry = sessions.entry(session).or_insert((0, at_ms));
        entry.0 += 1;
        let turn = e.turn.unwrap_or(entry.0);
        let session_start_ms = entry.1;
        if let Some(last) = keys[start as usize..end as usize].last() {
            by_last_key.insert(last.0 as u32, session);
        }
        requests.push(SimRequest {
            at_ms,
            input_len: e.input_len,
            output_len: e.output_len,
            start,
            end,
            session,
            turn,
            session_start_ms,
            line: e.line,
        });
    }
    let next_use = next_uses(&requests, &keys, dense.len());
    Ok(SimTrace {
        name: name.to_owned(),
        format,
        block_tokens,
        source_block_tokens: source,
        granularity,
        requests,
        keys,
        next_use,
        unique_blocks: dense.len() as u64,
        bad_lines: trace.bad_lines,
    })
}

/// For every access, the index of the next request using the same key (`u32::MAX`: none).
fn next_uses(requests: &[SimRequest], keys: &[BlockHash], unique: usize) -> Vec<u32> {
    let mut next = vec![u32::MAX; keys.len()];
    let mut seen = vec![u32::MAX; unique];
    for (r, req) in requests.iter().enumerate().rev() {
        for i in req.start as usize..req.end as usize {
            let k = keys[i].0 as usize;
            next[i] = seen[k];
        }
        for i in req.start as usize..req.end as usize {
            seen[keys[i].0 as usize] = r as u32;
        }
    }
    next
}

/// Parses a conversation CSV (header with `timestamp`, a conversation column, prompt and output
/// token columns; timestamps in seconds) into a Bailian-shaped [`Trace`] whose `hash_ids` are
/// synthesised in `block_tokens`-token blocks. Assumption (stated in the output): each turn's
/// prompt starts with the conversation's history, so full block `j` of a conversation is the
/// same in every turn that reaches it; a partial last block is never shared.
pub fn conversation_csv_to_trace(
    text: &str,
    file: &str,
    block_tokens: u32,
    skip_bad_lines: bool,
) -> Result<Trace, SimError> {
    if block_tokens == 0 {
        return Err(SimError::Invalid("conversation CSV block size must be at least 1".into()));
    }
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((h, header)) = lines.next() else {
        return Err(SimError::input(file, 1, "(header)", "empty file: expected a header"));
    };
    let names: Vec<String> =
        header.trim_start_matches('\u{feff}').split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    let col = |cands: &[&str], what: &str| {
        names.iter().position(|n| cands.contains(&n.as_str())).ok_or_else(|| {
            SimError::input(
                file,
                h + 1,
                "(header)",
                format!("missing column {what} (one of {})", cands.join(", ")),
            )
        })
    };
    let c_ts = col(&["timestamp", "time", "ts"], "timestamp")?;
    let c_conv = col(&["conversation_id", "conversation", "session_id", "chat_id"], "conversation id")?;
    let c_in = col(&["prompt_tokens", "input_tokens", "input_length", "prompt_len"], "prompt tokens")?;
    let c_out = col(&["output_tokens", "completion_tokens", "output_length", "output_len"], "output tokens")?;

    let mut rows = Vec::new();
    let mut bad = 0;
    let mut first_bad = None;
    for (i, l) in lines {
        let line = i as u64 + 1;
        let cells: Vec<&str> = l.split(',').map(str::trim).collect();
        // Err: (field, message).
        let parsed = (|| -> Result<(f64, String, u32, u32), (String, String)> {
            if cells.len() != names.len() {
                return Err((
                    "(row)".into(),
                    format!("expected {} columns, found {}", names.len(), cells.len()),
                ));
            }
            let ts: f64 =
                cells[c_ts].parse().ok().filter(|t: &f64| t.is_finite() && *t >= 0.0).ok_or_else(|| {
                    (names[c_ts].clone(), format!("expected seconds, found {:?}", cells[c_ts]))
                })?;
            let num = |c: usize| {
                cells[c].parse::<u32>().map_err(|_| {
                    (names[c].clone(), format!("expected a non-negative integer, found {:?}", cells[c]))
                })
            };
            Ok((ts, cells[c_conv].to_owned(), num(c_in)?, num(c_out)?))
        })();
        match parsed {
            Ok(row) => rows.push((line, row)),
            Err((field, message)) => {
                let e = workload::Error::Trace(stats::Located::new(file, line as usize, field, message));
                if !skip_bad_lines {
                    return Err(e.into());
                }
                bad += 1;
                first_bad.get_or_insert(e);
            }
        }
    }
    let t0 = rows.iter().map(|(_, r)| r.0).fold(f64::INFINITY, f64::min);
    if rows.is_empty() {
        return Err(SimError::Input(stats::Located::whole(file, format!("no valid rows ({bad} bad)"))));
    }
    let mut convs: HashMap<String, (u64, u32)> = HashMap::new();
    let mut next_id = 0u64;
    let mut entries = Vec::with_capacity(rows.len());
    for (line, (ts, conv, input, output)) in rows {
        let n_conv = convs.len() as u64;
        let c = convs.entry(conv).or_insert((n_conv, 0));
        c.1 += 1;
        let full = input / block_tokens;
        // Full block j of conversation c is the pair (c, j): give it a stable id.
        let mut hash_ids: Vec<u64> = (0..u64::from(full)).map(|j| (c.0 << 24) | j).collect();
        if input % block_tokens != 0 {
            // The partial last block belongs to this request alone.
            hash_ids.push((1 << 63) | next_id);
            next_id += 1;
        }
        entries.push(TraceEntry {
            line,
            at: std::time::Duration::from_secs_f64(ts - t0),
            input_len: input,
            output_len: output,
            hash_ids,
            session: Some(c.0),
            turn: Some(c.1),
        });
    }
    Ok(Trace { format: TraceFormat::Bailian, entries, bad_lines: bad, first_bad_line: first_bad })
}

/// Writes `trace` as Qwen-Bailian JSONL (`chat_id` = line index, `parent_chat_id` = the
/// previous request of the same session or -1, `timestamp` in seconds, `hash_ids` remapped to
/// dense ids in order of first appearance): the converter from a conversation CSV to a trace.
pub fn to_bailian_jsonl(trace: &Trace) -> String {
    let mut out = String::new();
    let mut last_of_session: HashMap<u64, usize> = HashMap::new();
    let mut ids: HashMap<u64, u64> = HashMap::new();
    for (i, e) in trace.entries.iter().enumerate() {
        let parent = e.session.and_then(|s| last_of_session.insert(s, i)).map_or(-1, |p| p as i64);
        let hash_ids: Vec<u64> = e
            .hash_ids
            .iter()
            .map(|h| {
                let n = ids.len() as u64;
                *ids.entry(*h).or_insert(n)
            })
            .collect();
        let line = serde_json::json!({
            "chat_id": i,
            "parent_chat_id": parent,
            "timestamp": e.at.as_secs_f64(),
            "input_length": e.input_len,
            "output_length": e.output_len,
            "type": "text",
            "turn": e.turn.unwrap_or(1),
            "hash_ids": hash_ids,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// Tokens per block of `prompt_blocks` in kvlab's `requests.jsonl` (the engine block size).
pub const RECORD_BLOCK_TOKENS: u32 = 16;

/// kvlab's `requests.jsonl` as a trace: completed requests in send order, with their recorded
/// prompt block hashes. Errors name the file, the line and the field; `skip_bad_lines` counts
/// malformed lines instead. A torn last line (no final newline, not a record: the run was killed
/// while writing it) is skipped with a warning on stderr and counted in `bad_lines`.
pub fn records_to_trace(text: &str, file: &str, skip_bad_lines: bool) -> Result<Trace, SimError> {
    let (lines, bad) = if skip_bad_lines {
        stats::parse_json_lines_skipping::<stats::RequestRecord>(text)
    } else {
        let lines = stats::parse_json_lines(text).map_err(|e| SimError::Input(e.in_file(file)))?;
        (lines, Vec::new())
    };
    let mut bad_lines = bad.len() as u64;
    if let Some(t) = &lines.torn {
        eprintln!("warning: {}", t.warning(file));
        bad_lines += 1;
    }
    let mut rows = Vec::new();
    for (n, r) in lines.items {
        match r.prompt_blocks {
            Some(_) => rows.push((n as u64, r)),
            None if skip_bad_lines => bad_lines += 1,
            None => {
                return Err(SimError::input(
                    file,
                    n,
                    "prompt_blocks",
                    "missing (the run was written without prompt block hashes, so its prefixes cannot be \
                     replayed)",
                ))
            }
        }
    }
    rows.retain(|(_, r)| r.error.is_none());
    rows.sort_by(|(_, a), (_, b)| a.sent.total_cmp(&b.sent).then(a.id.cmp(&b.id)));
    let Some(start) = rows.first().map(|(_, r)| r.sent) else {
        return Err(SimError::Input(stats::Located::whole(
            file,
            "no completed request with `prompt_blocks` to replay",
        )));
    };
    let entries = rows
        .into_iter()
        .map(|(line, r)| {
            let hash_ids = r.prompt_blocks.unwrap_or_default();
            let input_len = r.prompt_tokens.unwrap_or(hash_ids.len() as u32 * RECORD_BLOCK_TOKENS).max(1);
            workload::TraceEntry {
                line,
                at: std::time::Duration::from_secs_f64((r.sent - start).max(0.0)),
                input_len,
                output_len: r.output_tokens,
                hash_ids,
                session: r.session,
                turn: r.turn,
            }
        })
        .collect();
    Ok(Trace { format: TraceFormat::Bailian, entries, bad_lines, first_bad_line: None })
}
