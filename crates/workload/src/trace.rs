//! Readers for production traces: Mooncake JSONL, Qwen-Bailian JSONL and Azure CSV.
//!
//! Readers take the file's text and its name (for errors) and produce a [`Trace`]: one
//! [`TraceEntry`] per valid line, with its offset from the trace's earliest timestamp.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use stats::Located;

use crate::Error;

/// The supported trace formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceFormat {
    /// Mooncake (FAST'25) JSONL: `timestamp` (ms), `input_length`, `output_length`, `hash_ids`
    /// of 512-token blocks.
    Mooncake,
    /// Alibaba Qwen-Bailian JSONL: `chat_id`, `parent_chat_id` (-1 for a root), `timestamp`
    /// (s), `input_length`, `output_length`, `type`, `turn`, `hash_ids` of 16-token blocks.
    Bailian,
    /// Azure LLM inference CSV: `TIMESTAMP,ContextTokens,GeneratedTokens`; no prefix data.
    Azure,
}

impl TraceFormat {
    /// Tokens per hash id (0: the format carries no hash ids).
    pub fn block_size(self) -> u32 {
        match self {
            TraceFormat::Mooncake => 512,
            TraceFormat::Bailian => 16,
            TraceFormat::Azure => 0,
        }
    }
}

/// Options of [`Trace::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Count malformed lines in [`Trace::bad_lines`] instead of failing on the first.
    pub skip_bad_lines: bool,
}

/// A parsed trace. Invariant: `entries` is non-empty, in file order, and the smallest `at` is 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub format: TraceFormat,
    pub entries: Vec<TraceEntry>,
    /// Malformed lines skipped (only with [`ParseOptions::skip_bad_lines`]).
    pub bad_lines: u64,
    /// The error of the first skipped line, for the user.
    pub first_bad_line: Option<Error>,
}

/// One request of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEntry {
    /// 1-based line in the file.
    pub line: u64,
    /// Offset from the trace's earliest timestamp.
    pub at: Duration,
    pub input_len: u32,
    pub output_len: u32,
    /// Prefix block ids (each covers [`TraceFormat::block_size`] tokens); empty for Azure.
    pub hash_ids: Vec<u64>,
    /// Bailian: the root `chat_id` of the conversation.
    pub session: Option<u64>,
    /// Bailian: `turn`.
    pub turn: Option<u32>,
}

/// A line before timestamps are made relative: the timestamp in nanoseconds, signed.
struct Raw {
    entry: TraceEntry,
    nanos: i128,
    chat: Option<(i64, i64)>,
}

impl Trace {
    /// Parse `text` (the content of `file_name`). Blank lines are ignored. Errors name the file,
    /// the 1-based line and the field: `trace.jsonl:17: hash_ids: expected an array`.
    pub fn parse(
        format: TraceFormat,
        text: &str,
        file_name: &str,
        options: &ParseOptions,
    ) -> Result<Trace, Error> {
        let mut raws = Vec::new();
        let mut bad_lines = 0;
        let mut first_bad_line = None;
        let mut lines = text.lines().enumerate().map(|(i, l)| (i as u64 + 1, l));
        let azure_columns = match format {
            TraceFormat::Azure => Some(azure_header(&mut lines, file_name)?),
            _ => None,
        };
        for (line, content) in lines {
            if content.trim().is_empty() {
                continue;
            }
            let parsed = match (format, &azure_columns) {
                (TraceFormat::Azure, Some(cols)) => parse_azure(content, line, cols),
                _ => parse_json_line(format, content, line),
            };
            match parsed {
                Ok(raw) => raws.push(raw),
                Err(Bad { field, message }) => {
                    let error = Error::Trace(Located::new(file_name, line as usize, field, message));
                    if !options.skip_bad_lines {
                        return Err(error);
                    }
                    bad_lines += 1;
                    first_bad_line.get_or_insert(error);
                }
            }
        }
        let Some(first) = raws.iter().map(|r| r.nanos).min() else {
            return Err(Error::Trace(Located::whole(
                file_name,
                format!("no valid {format:?} lines ({bad_lines} bad)"),
            )));
        };
        resolve_sessions(&mut raws);
        let entries = raws
            .into_iter()
            .map(|mut raw| {
                let offset = u64::try_from(raw.nanos - first).unwrap_or(u64::MAX);
                raw.entry.at = Duration::from_nanos(offset);
                raw.entry
            })
            .collect();
        Ok(Trace { format, entries, bad_lines, first_bad_line })
    }
}

/// Bailian: each entry's session is the root of its `parent_chat_id` chain.
fn resolve_sessions(raws: &mut [Raw]) {
    let parents: HashMap<i64, i64> = raws.iter().filter_map(|r| r.chat).collect();
    for raw in raws.iter_mut() {
        let Some((mut id, _)) = raw.chat else { continue };
        // Bounded walk: a cycle in a malformed trace must not hang.
        for _ in 0..parents.len() {
            match parents.get(&id) {
                Some(&parent) if parent >= 0 && parent != id => id = parent,
                _ => break,
            }
        }
        raw.entry.session = u64::try_from(id).ok();
    }
}

/// What is wrong with a line: the field (`hash_ids[3]`, `(top level)`) and why.
struct Bad {
    field: String,
    message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> Bad {
    Bad { field: field.into(), message: message.into() }
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value, Bad> {
    obj.get(name).ok_or_else(|| bad(name, "missing"))
}

fn get_u32(obj: &Map<String, Value>, name: &str) -> Result<u32, Bad> {
    field(obj, name)?
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad(name, "expected a non-negative integer below 2^32"))
}

fn get_i64(obj: &Map<String, Value>, name: &str) -> Result<i64, Bad> {
    field(obj, name)?.as_i64().ok_or_else(|| bad(name, "expected an integer"))
}

/// A timestamp number in `unit_nanos` units, as nanoseconds.
fn get_time(obj: &Map<String, Value>, name: &str, unit_nanos: f64) -> Result<i128, Bad> {
    let value = field(obj, name)?;
    if let Some(i) = value.as_i64() {
        return Ok(i128::from(i) * unit_nanos as i128);
    }
    value
        .as_f64()
        .filter(|f| f.is_finite())
        .map(|f| (f * unit_nanos).round() as i128)
        .ok_or_else(|| bad(name, "expected a number"))
}

fn parse_json_line(format: TraceFormat, content: &str, line: u64) -> Result<Raw, Bad> {
    let value: Value = stats::parse_json(content)
        .map_err(|e| bad(e.field.clone(), format!("invalid JSON: {}", e.message_with_column())))?;
    let Value::Object(obj) = value else {
        return Err(bad("(top level)", "expected a JSON object"));
    };
    let unit_nanos = match format {
        TraceFormat::Mooncake => 1e6, // milliseconds
        _ => 1e9,                     // seconds
    };
    let nanos = get_time(&obj, "timestamp", unit_nanos)?;
    let input_len = get_u32(&obj, "input_length")?;
    let output_len = get_u32(&obj, "output_length")?;
    let hash_ids = match obj.get("hash_ids") {
        // Bailian files without block data exist; Mooncake always has them.
        None if format == TraceFormat::Bailian => Vec::new(),
        _ => {
            let Value::Array(items) = field(&obj, "hash_ids")? else {
                return Err(bad("hash_ids", "expected an array"));
            };
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64().ok_or_else(|| bad(format!("hash_ids[{i}]"), "expected a non-negative integer"))
                })
                .collect::<Result<Vec<u64>, Bad>>()?
        }
    };
    let (chat, turn) = match format {
        TraceFormat::Bailian => {
            let chat_id = get_i64(&obj, "chat_id")?;
            let parent = match obj.get("parent_chat_id") {
                None => -1,
                Some(_) => get_i64(&obj, "parent_chat_id")?,
            };
            let turn = match obj.get("turn") {
                None => 1,
                Some(_) => get_u32(&obj, "turn")?,
            };
            (Some((chat_id, parent)), Some(turn))
        }
        _ => (None, None),
    };
    Ok(Raw {
        entry: TraceEntry { line, at: Duration::ZERO, input_len, output_len, hash_ids, session: None, turn },
        nanos,
        chat,
    })
}

/// Column indices of TIMESTAMP, ContextTokens, GeneratedTokens, and the column count.
struct AzureColumns {
    timestamp: usize,
    context: usize,
    generated: usize,
    count: usize,
}

fn azure_header<'a>(
    lines: &mut impl Iterator<Item = (u64, &'a str)>,
    file_name: &str,
) -> Result<AzureColumns, Error> {
    let header = lines.find(|(_, l)| !l.trim().is_empty());
    let err = |line: u64, message: String| {
        Error::Trace(Located::new(file_name, line as usize, "(header)", message))
    };
    let Some((line, header)) = header else {
        return Err(err(1, "empty file: expected the header TIMESTAMP,ContextTokens,GeneratedTokens".into()));
    };
    let names: Vec<&str> = header.trim().trim_start_matches('\u{feff}').split(',').map(str::trim).collect();
    let find = |name: &str| {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| err(line, format!("missing column {name:?}")))
    };
    Ok(AzureColumns {
        timestamp: find("TIMESTAMP")?,
        context: find("ContextTokens")?,
        generated: find("GeneratedTokens")?,
        count: names.len(),
    })
}

fn parse_azure(content: &str, line: u64, cols: &AzureColumns) -> Result<Raw, Bad> {
    let cells: Vec<&str> = content.trim().split(',').map(str::trim).collect();
    if cells.len() != cols.count {
        return Err(bad("(row)", format!("expected {} columns, found {}", cols.count, cells.len())));
    }
    let number = |idx: usize, name: &str| {
        cells[idx]
            .parse::<u32>()
            .map_err(|_| bad(name, format!("expected a non-negative integer, found {:?}", cells[idx])))
    };
    let nanos = parse_datetime(cells[cols.timestamp]).ok_or_else(|| {
        bad(
            "TIMESTAMP",
            format!("expected YYYY-MM-DD HH:MM:SS[.fraction], found {:?}", cells[cols.timestamp]),
        )
    })?;
    Ok(Raw {
        entry: TraceEntry {
            line,
            at: Duration::ZERO,
            input_len: number(cols.context, "ContextTokens")?,
            output_len: number(cols.generated, "GeneratedTokens")?,
            hash_ids: Vec::new(),
            session: None,
            turn: None,
        },
        nanos,
        chat: None,
    })
}

/// `2023-11-16 18:15:46.6805900` (or with a `T`) as nanoseconds since 1970-01-01, ignoring any
/// time zone (only differences matter).
fn parse_datetime(s: &str) -> Option<i128> {
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let time = time.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: i64 = t.next()?.parse().ok()?;
    // Years beyond 9999 would overflow the seconds arithmetic below.
    if !(1..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let frac_nanos: i64 =
        if frac.is_empty() { 0 } else { frac.parse::<i64>().ok()? * 10i64.pow(9 - frac.len() as u32) };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(frac_nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_become_nanoseconds() {
        let check = |s: &str, expect: Option<i128>| assert_eq!(parse_datetime(s), expect, "{s}");
        check("1970-01-01 00:00:00", Some(0));
        check("1970-01-02 00:00:01.5", Some(86_401_500_000_000));
        // 2023-11-16 is day 19677 since the epoch.
        check(
            "2023-11-16 18:15:46.6805900",
            Some((19_677 * 86_400 + 18 * 3600 + 15 * 60 + 46) * 1_000_000_000 + 680_590_000),
        );
        check("2024-03-01T00:00:00Z", Some(19_783 * 86_400 * 1_000_000_000));
        check("2023-13-01 00:00:00", None);
        check("2023-11-16", None);
        check("2023-11-16 18:15:46.1234567891", None);
        check("2023-11-16 18:15:4x", None);
    }
}
