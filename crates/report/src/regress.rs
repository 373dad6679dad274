//! Regression gates: summaries against baselines, with the thresholds of `configs/regress.toml`.
//!
//! A baseline is an insta snapshot (`<dir>/<name>.snap`: insta's `---` header, then the JSON) of
//! a summary whose numbers are rounded to `[baseline] decimals` and whose volatile fields
//! (timestamps, hostnames, revisions; see [`REDACTED`]) are redacted, so blessing the same
//! numbers twice writes the same file. `cargo insta review`-style tools read it as a JSON snapshot.
//!
//! The thresholds file:
//!
//! ```toml
//! [baseline]
//! decimals = 3                                   # precision kept in snapshots
//!
//! [metrics]                                      # summary.json field names
//! p99_ttft_ms = { max_rise = "10%" }             # relative to the baseline
//! request_throughput = { max_fall = "5%" }
//! mean_tpot_ms = { max_rise = 2.0 }              # absolute, in the metric's unit
//! failed = { max = 0 }                           # a bound on the new value alone
//!
//! [tier.cpu]                                     # more rules for the cpu tier's summaries
//! median_ttft_ms = { max = 220 }                 # "query TTFT at most 0.22 s"
//!
//! [[gain]]                                       # between two tiers of the same check
//! metric = "p50_ttft_ms"
//! tier = "cpu"
//! over = "baseline"
//! at_least = 3.0                                 # cpu at least 3x better than baseline
//! ```
//!
//! Unknown keys are refused; every error names the file, line and key.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use stats::Summary;
use toml::Spanned;

use crate::result::{json_error, parse_toml, read};
use crate::Error;

/// Fields redacted from baselines wherever they appear: they change from run to run without
/// saying anything about performance.
pub const REDACTED: &[&str] = &["hostname", "host", "timestamp", "started", "run_id", "git_revision"];

/// The value redacted fields get.
const REDACTION: &str = "[redacted]";

/// The header line insta writes; the path is the crate file that writes the snapshot.
const SNAPSHOT_SOURCE: &str = "crates/report/src/regress.rs";

/// The parsed thresholds file.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Decimal places kept in baselines (and in the comparison).
    pub decimals: u32,
    pub metrics: Vec<MetricRule>,
    pub gains: Vec<GainRule>,
}

/// Limits on one metric, any combination of them.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRule {
    pub metric: String,
    /// Applies only to summaries of this tier (`[tier.<name>]`); `None`: to every summary.
    pub tier: Option<String>,
    /// How much the metric may rise over the baseline.
    pub max_rise: Option<Limit>,
    /// How much the metric may fall under the baseline.
    pub max_fall: Option<Limit>,
    /// The new value may not exceed this.
    pub max: Option<f64>,
    /// The new value may not be under this.
    pub min: Option<f64>,
}

/// A change limit: relative to the baseline (a fraction: `"10%"` is 0.1) or absolute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Relative(f64),
    Absolute(f64),
}

/// "`tier` at least `at_least`× better than `over` on `metric`", among the summaries of one check.
/// Better is lower for latencies and counts of failures, higher for throughputs (see
/// [`lower_is_better`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GainRule {
    pub metric: String,
    pub tier: String,
    pub over: String,
    pub at_least: f64,
}

/// Whether a smaller value of a summary metric is better.
pub fn lower_is_better(metric: &str) -> bool {
    !(metric.contains("throughput")
        || metric.contains("goodput")
        || matches!(metric, "completed" | "cached_tokens_total" | "total_output_tokens" | "sent"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    baseline: Option<RawBaseline>,
    #[serde(default)]
    metrics: BTreeMap<Spanned<String>, RawRule>,
    /// `[tier.<name>]`: more rules for the summaries of one tier.
    #[serde(default)]
    tier: BTreeMap<String, BTreeMap<Spanned<String>, RawRule>>,
    #[serde(default)]
    gain: Vec<Spanned<RawGain>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseline {
    decimals: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    max_rise: Option<Spanned<RawLimit>>,
    max_fall: Option<Spanned<RawLimit>>,
    max: Option<f64>,
    min: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Number(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGain {
    metric: Spanned<String>,
    tier: String,
    over: String,
    at_least: Spanned<f64>,
}

/// The numeric metrics a summary has (its `summary.json` fields).
fn known_metrics() -> Vec<String> {
    let empty = stats::summarize(&[], &stats::SummaryConfig::default());
    match serde_json::to_value(empty) {
        Ok(Value::Object(map)) => {
            map.into_iter().filter(|(k, v)| v.is_number() || k == "request_goodput").map(|(k, _)| k).collect()
        }
        _ => Vec::new(),
    }
}

impl Thresholds {
    /// Reads and parses a thresholds file.
    pub fn load(path: &Path) -> Result<Thresholds, Error> {
        Thresholds::parse(&read(path)?, path)
    }

    /// Parses the text of a thresholds file; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Thresholds, Error> {
        let raw: RawConfig = parse_toml(file, text)?;
        let err = |span: std::ops::Range<usize>, key: String, message: String| {
            Error::Config(stats::Located::new(
                file.display().to_string(),
                stats::line_col(text, span.start).0,
                key,
                message,
            ))
        };
        let known = known_metrics();
        let check_metric = |name: &Spanned<String>, key: String| {
            if known.iter().any(|k| k == name.get_ref()) {
                Ok(())
            } else {
                Err(err(
                    name.span(),
                    key,
                    format!(
                        "unknown metric `{}`; expected a numeric summary.json field such as p99_ttft_ms",
                        name.get_ref()
                    ),
                ))
            }
        };
        let decimals = match raw.baseline {
            None => 3,
            Some(b) => match u32::try_from(*b.decimals.get_ref()) {
                Ok(d) if d <= 12 => d,
                _ => {
                    return Err(err(b.decimals.span(), "baseline.decimals".into(), "expected 0 to 12".into()))
                }
            },
        };
        let mut metrics = Vec::new();
        let mut raw_metrics: Vec<(Option<String>, Spanned<String>, RawRule)> =
            raw.metrics.into_iter().map(|(name, rule)| (None, name, rule)).collect();
        for (tier, rules) in raw.tier {
            raw_metrics.extend(rules.into_iter().map(|(name, rule)| (Some(tier.clone()), name, rule)));
        }
        raw_metrics.sort_by_key(|(_, name, _)| name.span().start);
        for (tier, name, rule) in raw_metrics {
            let name_span = name.span();
            let key = match &tier {
                None => format!("metrics.{}", name.get_ref()),
                Some(tier) => format!("tier.{tier}.{}", name.get_ref()),
            };
            check_metric(&name, key.clone())?;
            let limit = |l: Option<Spanned<RawLimit>>, which: &str| -> Result<Option<Limit>, Error> {
                let Some(l) = l else { return Ok(None) };
                let span = l.span();
                let bad = |m: &str| err(span.clone(), format!("{key}.{which}"), m.to_owned());
                let limit = match l.into_inner() {
                    RawLimit::Number(x) => Limit::Absolute(x),
                    RawLimit::Text(t) => {
                        let pct = t.trim().strip_suffix('%').ok_or_else(|| {
                            bad(&format!("expected a percentage such as \"10%\" or a number, got {t:?}"))
                        })?;
                        let pct: f64 =
                            pct.trim().parse().map_err(|_| bad(&format!("`{t}` is not a percentage")))?;
                        Limit::Relative(pct / 100.0)
                    }
                };
                match limit {
                    Limit::Relative(x) | Limit::Absolute(x) if !(x.is_finite() && x >= 0.0) => {
                        Err(bad("must be a finite number, 0 or more"))
                    }
                    limit => Ok(Some(limit)),
                }
            };
            let rule = MetricRule {
                max_rise: limit(rule.max_rise, "max_rise")?,
                max_fall: limit(rule.max_fall, "max_fall")?,
                max: rule.max,
                min: rule.min,
                metric: name.into_inner(),
                tier,
            };
            if rule.max_rise.is_none() && rule.max_fall.is_none() && rule.max.is_none() && rule.min.is_none()
            {
                return Err(err(name_span, key, "no limit: set max_rise, max_fall, max or min".into()));
            }
            metrics.push(rule);
        }
        let mut gains = Vec::new();
        for (i, gain) in raw.gain.into_iter().enumerate() {
            let gain = gain.into_inner();
            check_metric(&gain.metric, format!("gain[{i}].metric"))?;
            if !(gain.at_least.get_ref().is_finite() && *gain.at_least.get_ref() > 0.0) {
                return Err(err(
                    gain.at_least.span(),
                    format!("gain[{i}].at_least"),
                    "must be a number above 0".into(),
                ));
            }
            gains.push(GainRule {
                metric: gain.metric.into_inner(),
                tier: gain.tier,
                over: gain.over,
                at_least: gain.at_least.into_inner(),
            });
        }
        Ok(Thresholds { decimals, metrics, gains })
    }
}

/// A summary to check: the baseline it is checked against, and its numbers.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Baseline name: the snapshot is `<baselines>/<name>.snap`.
    pub name: String,
    pub summary: Summary,
}

/// Rounds every float of a JSON value to `decimals` places, and redacts [`REDACTED`] fields.
pub fn normalize(value: Value, decimals: u32) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if REDACTED.contains(&k.as_str()) {
                        (k, Value::String(REDACTION.to_owned()))
                    } else {
                        (k, normalize(v, decimals))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| normalize(v, decimals)).collect()),
        Value::Number(n) if n.is_f64() => {
            let scale = 10f64.powi(decimals as i32);
            let x = n.as_f64().map_or(0.0, |x| (x * scale).round() / scale);
            serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
        }
        other => other,
    }
}

/// A directory of baseline snapshots.
#[derive(Debug, Clone)]
pub struct Baselines {
    pub dir: PathBuf,
}

impl Baselines {
    pub fn new(dir: impl Into<PathBuf>) -> Baselines {
        Baselines { dir: dir.into() }
    }

    /// The snapshot file of a baseline.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.snap"))
    }

    /// Reads a baseline's JSON. Errors name the file and line of malformed content.
    pub fn read(&self, name: &str) -> Result<Value, Error> {
        let path = self.path(name);
        if !path.exists() {
            return Err(Error::NoBaseline { name: name.to_owned(), path });
        }
        Baselines::parse(&read(&path)?, &path)
    }

    /// Parses the text of a baseline snapshot (insta's `---` header, then JSON); `file` names it
    /// in errors, with the line of the file and the field.
    pub fn parse(text: &str, file: &Path) -> Result<Value, Error> {
        let (header_lines, body) = split_snapshot(text).ok_or_else(|| {
            Error::Config(stats::Located::new(
                file.display().to_string(),
                1,
                "(header)",
                "not an insta snapshot: expected a `---` header",
            ))
        })?;
        stats::parse_json(body).map_err(|e| json_error(file, header_lines, e))
    }

    /// Writes (blesses) the baseline of a subject; returns the file written.
    pub fn write(&self, subject: &Subject, decimals: u32) -> Result<PathBuf, Error> {
        let path = self.path(&subject.name);
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io { path: self.dir.clone(), source })?;
        stats::write_atomic(&path, snapshot_text(subject, decimals).as_bytes())
            .map_err(|source| Error::Io { path: path.clone(), source })?;
        Ok(path)
    }
}

/// The snapshot file's text: insta's header, then the normalized summary as pretty JSON.
pub fn snapshot_text(subject: &Subject, decimals: u32) -> String {
    let value = normalize(serde_json::to_value(&subject.summary).unwrap_or(Value::Null), decimals);
    let json = serde_json::to_string_pretty(&value).unwrap_or_default();
    format!("---\nsource: {SNAPSHOT_SOURCE}\nexpression: {}\n---\n{json}\n", subject.name)
}

/// (lines of the header, the body) of an insta snapshot.
fn split_snapshot(text: &str) -> Option<(usize, &str)> {
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---\n")?;
    let header_lines = rest[..end].lines().count() + 2;
    Some((header_lines, &rest[end + 5..]))
}

/// The outcome of one line of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Beyond its threshold.
    Regressed,
    /// Could not be evaluated (a gain whose tiers are not both in the check; a null metric).
    Skipped,
}

/// One line of the regression table.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRow {
    /// The baseline name, or `tier/over` for a gain.
    pub subject: String,
    pub metric: String,
    pub baseline: Option<f64>,
    pub now: Option<f64>,
    pub threshold: String,
    pub verdict: Verdict,
}

/// Every line of a check.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub rows: Vec<CheckRow>,
}

fn get(value: &Value, metric: &str) -> Option<f64> {
    value.get(metric)?.as_f64()
}

fn fmt_limit(l: Limit) -> String {
    match l {
        Limit::Relative(x) => format!("{}%", x * 100.0),
        Limit::Absolute(x) => format!("{x}"),
    }
}

/// Checks `subjects` against their baselines. A missing or malformed baseline is an error.
pub fn check(subjects: &[Subject], baselines: &Baselines, thresholds: &Thresholds) -> Result<Outcome, Error> {
    let mut rows = Vec::new();
    let mut loaded = Vec::new();
    for subject in subjects {
        let base = baselines.read(&subject.name)?;
        let now =
            normalize(serde_json::to_value(&subject.summary).unwrap_or(Value::Null), thresholds.decimals);
        let tier = subject.summary.tier.as_str();
        for rule in thresholds.metrics.iter().filter(|r| r.tier.as_deref().is_none_or(|t| t == tier)) {
            rows.extend(check_metric(&subject.name, rule, get(&base, &rule.metric), get(&now, &rule.metric)));
        }
        loaded.push((subject, base, now));
    }
    for gain in &thresholds.gains {
        let find = |tier: &str| loaded.iter().find(|(s, _, _)| s.summary.tier == tier);
        let ratio = |of: Option<f64>, over: Option<f64>| -> Option<f64> {
            let (of, over) = (of?, over?);
            let r = if lower_is_better(&gain.metric) { over / of } else { of / over };
            r.is_finite().then_some(r)
        };
        let (base, now) = match (find(&gain.tier), find(&gain.over)) {
            (Some((_, bt, nt)), Some((_, bo, no))) => (
                ratio(get(bt, &gain.metric), get(bo, &gain.metric)),
                ratio(get(nt, &gain.metric), get(no, &gain.metric)),
            ),
            _ => (None, None),
        };
        let verdict = match now {
            None => Verdict::Skipped,
            Some(g) if g >= gain.at_least => Verdict::Pass,
            Some(_) => Verdict::Regressed,
        };
        rows.push(CheckRow {
            subject: format!("{} over {}", gain.tier, gain.over),
            metric: format!("gain {}", gain.metric),
            baseline: base,
            now,
            threshold: format!(">= {}x", gain.at_least),
            verdict,
        });
    }
    Ok(Outcome { rows })
}

fn check_metric(subject: &str, rule: &MetricRule, base: Option<f64>, now: Option<f64>) -> Vec<CheckRow> {
    let row = |threshold: String, verdict| CheckRow {
        subject: subject.to_owned(),
        metric: rule.metric.clone(),
        baseline: base,
        now,
        threshold,
        verdict,
    };
    let Some(n) = now else {
        // A null metric (goodput without SLOs) fails only if the baseline had a value.
        let verdict = if base.is_some() { Verdict::Regressed } else { Verdict::Skipped };
        return vec![row("present".into(), verdict)];
    };
    let mut out = Vec::new();
    let judge = |ok: bool| if ok { Verdict::Pass } else { Verdict::Regressed };
    for (limit, rise) in [(rule.max_rise, true), (rule.max_fall, false)] {
        let Some(limit) = limit else { continue };
        let word = if rise { "rise" } else { "fall" };
        let threshold = format!("{word} <= {}", fmt_limit(limit));
        let Some(b) = base else {
            out.push(row(threshold, Verdict::Regressed));
            continue;
        };
        let change = if rise { n - b } else { b - n };
        let allowed = match limit {
            Limit::Relative(x) => b.abs() * x,
            Limit::Absolute(x) => x,
        };
        // Relative to a zero baseline nothing may change; a hair of slack absorbs float noise.
        out.push(row(threshold, judge(change <= allowed + 1e-9 * b.abs().max(1.0))));
    }
    if let Some(max) = rule.max {
        out.push(row(format!("<= {max}"), judge(n <= max)));
    }
    if let Some(min) = rule.min {
        out.push(row(format!(">= {min}"), judge(n >= min)));
    }
    out
}

impl Outcome {
    /// The rows that regressed.
    pub fn regressions(&self) -> impl Iterator<Item = &CheckRow> {
        self.rows.iter().filter(|r| r.verdict == Verdict::Regressed)
    }

    /// No row regressed.
    pub fn passed(&self) -> bool {
        self.regressions().next().is_none()
    }

    /// The table: baseline, metric, baseline value, now, delta, threshold, verdict.
    pub fn table(&self) -> String {
        let mut builder = tabled::builder::Builder::default();
        builder.push_record(["baseline", "metric", "baseline value", "now", "delta", "threshold", "verdict"]);
        let num = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.3}"));
        for r in &self.rows {
            let delta = match (r.baseline, r.now) {
                (Some(b), Some(n)) if b != 0.0 => {
                    format!("{:+.3} ({:+.1}%)", n - b, (n - b) / b.abs() * 100.0)
                }
                (Some(b), Some(n)) => format!("{:+.3}", n - b),
                _ => "—".to_owned(),
            };
            let verdict = match r.verdict {
                Verdict::Pass => "ok",
                Verdict::Regressed => "REGRESSED",
                Verdict::Skipped => "skipped",
            };
            builder.push_record([
                r.subject.clone(),
                r.metric.clone(),
                num(r.baseline),
                num(r.now),
                delta,
                r.threshold.clone(),
                verdict.to_owned(),
            ]);
        }
        let mut table = builder.build();
        table.with(tabled::settings::Style::sharp());
        table.to_string()
    }

    /// One line per regression, naming baseline and metric; empty when the check passed.
    pub fn summary_line(&self) -> String {
        let mut out = String::new();
        for r in self.regressions() {
            let _ = write!(out, "{}: {} regressed ({}); ", r.subject, r.metric, r.threshold);
        }
        out.trim_end_matches("; ").to_owned()
    }
}

/// The subject of a result directory: its `summary.json`, checked against the baseline named
/// by `run.toml`'s `baseline` key, else its `label`, else the directory name.
///
/// A killed run (no `summary.json`) is checked on the summary computed from the records it has,
/// its torn last line skipped with a warning, as [`crate::RunData::load`] reads it.
pub fn subject_from_dir(dir: &Path) -> Result<Subject, Error> {
    let summary_path = dir.join("summary.json");
    let summary = if summary_path.exists() {
        crate::read_summary(&summary_path)?
    } else {
        crate::RunData::load(dir)?.summary
    };
    let run_toml = dir.join("run.toml");
    let mut name = None;
    if run_toml.exists() {
        let text = read(&run_toml)?;
        let table: toml::Table = parse_toml(&run_toml, &text)?;
        for key in ["baseline", "label"] {
            if let Some(v) = table.get(key) {
                let v = v
                    .as_str()
                    .ok_or_else(|| Error::Field { file: run_toml.clone(), field: key.to_owned() })?;
                name = Some(v.to_owned());
                break;
            }
        }
    }
    let name = name
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "run".to_owned());
    Ok(Subject { name, summary })
}

/// Why [`pinned_subjects`] failed: a run's result directory could not be written (`E`, the
/// writer's error), or the report over them.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Write(E),
    #[error(transparent)]
    Report(#[from] Error),
}

/// The subjects of a pinned scenario run elsewhere (the emulator's, in virtual time): each run's
/// result directory `<out>/<name>` written by its writer and read back, then the report over them
/// written into `out`. Returns the subjects in order and the report.
pub fn pinned_subjects<E, W>(
    out: &Path,
    runs: impl IntoIterator<Item = (Subject, W)>,
) -> Result<(Vec<Subject>, crate::ReportOutput), PinnedError<E>>
where
    E: std::error::Error + 'static,
    W: FnOnce(&Path) -> Result<(), E>,
{
    let mut data = Vec::new();
    let mut subjects = Vec::new();
    for (subject, write) in runs {
        let dir = out.join(&subject.name);
        write(&dir).map_err(PinnedError::Write)?;
        data.push(crate::RunData::load(&dir)?);
        subjects.push(subject);
    }
    let written = crate::write_report(&data, out)?;
    Ok((subjects, written))
}
