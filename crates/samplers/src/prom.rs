//! A parser for the Prometheus text exposition format (version 0.0.4, and the OpenMetrics lines an
//! engine may add: `# EOF`, exemplars).
//!
//! Written here rather than taken from a crate because engines name their metrics with colons
//! (`vllm:num_requests_running`), which the format allows and generic parsers drop silently; a
//! scrape must never lose a metric without saying so.

use std::fmt::Write as _;

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    /// The metric name as exposed, colons included; histogram series keep their suffix
    /// (`_bucket`, `_sum`, `_count`).
    pub metric: String,
    /// Label pairs in the order exposed, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value; `NaN`, `+Inf` and `-Inf` are allowed.
    pub value: f64,
    /// The optional timestamp in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl PromSample {
    /// The labels as one canonical string: sorted by name, `name="value"` joined by commas, the
    /// value escaped as in the exposition format; empty when there are none.
    pub fn labels_text(&self) -> String {
        let mut labels: Vec<_> = self.labels.iter().collect();
        labels.sort();
        let mut out = String::new();
        for (i, (name, value)) in labels.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{name}=\"");
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out
    }
}

/// A line of metrics text that is not valid exposition format.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {field}: {message}")]
pub struct PromParseError {
    /// 1-based line number.
    pub line: usize,
    /// The metric at fault, or `(top level)` for a line with no metric name.
    pub field: String,
    pub message: String,
}

/// Parses a whole exposition text into its samples, in order. Comment lines (`# HELP`,
/// `# TYPE`, others) are skipped; the first malformed sample line is an error naming its line.
pub fn parse_exposition(text: &str) -> Result<Vec<PromSample>, PromParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample =
            parse_line(line).map_err(|(field, message)| PromParseError { line: i + 1, field, message })?;
        samples.push(sample);
    }
    Ok(samples)
}

/// A sample line; an error is `(field, message)`, the field being the metric.
fn parse_line(line: &str) -> Result<PromSample, (String, String)> {
    let mut p = Cursor { rest: line };
    let metric = p.take_while(|c, first| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
    });
    if metric.is_empty() {
        return Err(("(top level)".to_owned(), format!("expected a metric name at {:?}", p.rest)));
    }
    let mut labels = Vec::new();
    if p.eat('{') {
        loop {
            p.skip_ws();
            if p.eat('}') {
                break;
            }
            let name = p
                .take_while(|c, first| c.is_ascii_alphabetic() || c == '_' || (!first && c.is_ascii_digit()));
            if name.is_empty() {
                return Err(at(metric, format!("expected a label name at {:?}", p.rest)));
            }
            p.skip_ws();
            if !p.eat('=') {
                return Err(at(metric, format!("expected `=` after label {name}")));
            }
            p.skip_ws();
            let value = p.quoted().map_err(|e| at(metric, format!("label {name}: {e}")))?;
            labels.push((name.to_owned(), value));
            p.skip_ws();
            if p.eat(',') {
                continue;
            }
            if p.eat('}') {
                break;
            }
            return Err(at(metric, format!("expected `,` or `}}` after label {name}")));
        }
    }
    if !p.skip_ws() {
        return Err(at(metric, "expected a space before the value".to_owned()));
    }
    let value_text = p.word();
    let value =
        parse_value(value_text).ok_or_else(|| at(metric, format!("value {value_text:?} is not a number")))?;
    p.skip_ws();
    let timestamp_ms = match p.rest.chars().next() {
        None | Some('#') => None, // `#` starts an OpenMetrics exemplar
        Some(_) => {
            let ts = p.word();
            let ms = ts
                .parse::<i64>()
                .ok()
                .or_else(|| ts.parse::<f64>().ok().filter(|f| f.is_finite()).map(|f| f as i64))
                .ok_or_else(|| at(metric, format!("timestamp {ts:?} is not a number")))?;
            p.skip_ws();
            if !(p.rest.is_empty() || p.rest.starts_with('#')) {
                return Err(at(metric, format!("unexpected text after the timestamp: {:?}", p.rest)));
            }
            Some(ms)
        }
    };
    Ok(PromSample { metric: metric.to_owned(), labels, value, timestamp_ms })
}

/// An error about `metric`.
fn at(metric: &str, message: String) -> (String, String) {
    (metric.to_owned(), message)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        s => s.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn take_while(&mut self, ok: impl Fn(char, bool) -> bool) -> &'a str {
        let end = self.rest.char_indices().find(|&(i, c)| !ok(c, i == 0)).map_or(self.rest.len(), |(i, _)| i);
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        taken
    }

    /// Skips spaces and tabs; true when there were any.
    fn skip_ws(&mut self) -> bool {
        let before = self.rest.len();
        self.rest = self.rest.trim_start_matches([' ', '\t']);
        self.rest.len() != before
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn word(&mut self) -> &'a str {
        self.take_while(|c, _| c != ' ' && c != '\t')
    }

    /// A double-quoted label value with `\\`, `\"` and `\n` escapes.
    fn quoted(&mut self) -> Result<String, String> {
        if !self.eat('"') {
            return Err("value must be double-quoted".to_owned());
        }
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, other)) => return Err(format!("unknown escape \\{other}")),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated quoted value".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders each sample as `metric|labels|value|timestamp` or the error.
    fn check(input: &str, expect: &str) {
        let got = match parse_exposition(input) {
            Ok(samples) => samples
                .iter()
                .map(|s| {
                    let ts = s.timestamp_ms.map_or(String::new(), |t| t.to_string());
                    format!("{}|{}|{}|{ts}", s.metric, s.labels_text(), s.value)
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect.trim(), "input:\n{input}");
    }

    #[test]
    fn plain_and_colon_names() {
        check(
            "# HELP vllm:num_requests_running Number of requests.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3\n\
             process_cpu_seconds_total 12.5\n",
            "vllm:num_requests_running|engine=\"0\",model_name=\"m\"|3|\n\
             process_cpu_seconds_total||12.5|",
        );
    }

    #[test]
    fn histogram_lines_special_values_and_timestamps() {
        check(
            "lmcache:retrieve_speed_bucket{le=\"0.5\"} 4\n\
             lmcache:retrieve_speed_bucket{le=\"+Inf\"} 9 1700000000000\n\
             lmcache:retrieve_speed_sum 7.25\n\
             x NaN\n\
             y -Inf\n\
             z 1e3\n",
            "lmcache:retrieve_speed_bucket|le=\"0.5\"|4|\n\
             lmcache:retrieve_speed_bucket|le=\"+Inf\"|9|1700000000000\n\
             lmcache:retrieve_speed_sum||7.25|\n\
             x||NaN|\n\
             y||-inf|\n\
             z||1000|",
        );
    }

    #[test]
    fn label_values_with_commas_braces_quotes_and_escapes() {
        check(
            "m{b=\"x,}y\", a=\"say \\\"hi\\\"\\n\\\\\",} 1\n",
            "m|a=\"say \\\"hi\\\"\\n\\\\\",b=\"x,}y\"|1|",
        );
        check("m{} 2\n", "m||2|");
    }

    #[test]
    fn openmetrics_exemplar_and_eof() {
        check("c_total 5 # {trace_id=\"abc\"} 1.0\n# EOF\n", "c_total||5|");
    }

    #[test]
    fn errors_name_the_line() {
        check("ok 1\n\nbad{a=\"1\" 2\n", "error: line 3: bad: expected `,` or `}` after label a");
        check("m{a=1} 2", "error: line 1: m: label a: value must be double-quoted");
        check("m{a=\"1} 2", "error: line 1: m: label a: unterminated quoted value");
        check("m abc", "error: line 1: m: value \"abc\" is not a number");
        check("m 1 2 3", "error: line 1: m: unexpected text after the timestamp: \"3\"");
        check("m 1 later", "error: line 1: m: timestamp \"later\" is not a number");
        check("m", "error: line 1: m: expected a space before the value");
        check("9m 1", "error: line 1: (top level): expected a metric name at \"9m 1\"");
        check("m{a=\"\\x\"} 1", "error: line 1: m: label a: unknown escape \\x");
    }
}
