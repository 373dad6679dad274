//! Reading a result directory: `run.toml`, `summary.json`, `requests.jsonl` and `samples/*.csv`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stats::{RequestRecord, Summary};

use crate::Error;

/// One result directory, read back.
///
/// Invariants: `summary` and `records` come from the same directory; `samples` holds only the
/// sample files that exist (a run without a GPU has no `gpu`), keyed by file stem.
#[derive(Debug, Clone)]
pub struct RunData {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// `run.toml`'s `label`, else the directory name.
    pub label: String,
    /// `run.toml`'s `baseline`: the name of the regression baseline this run is checked against.
    pub baseline: Option<String>,
    /// The configured request rate (`run.toml` `workload.request_rate`); `None` when unset or
    /// infinite (everything sent at once).
    pub request_rate: Option<f64>,
    /// The engine's GPU KV cache in blocks when the run set it (`run.toml` `num_gpu_blocks`).
    pub gpu_blocks: Option<u64>,
    pub summary: Summary,
    /// Every line of `requests.jsonl`, warm-ups included.
    pub records: Vec<RequestRecord>,
    /// `samples/<stem>.csv`, by stem (`gpu`, `disk`, `cpu`, `process`, `engine`).
    pub samples: BTreeMap<String, Table>,
    /// Why the run is incomplete, when it is: interrupted (`env.json` says `"interrupted": true`),
    /// or part of an experiment root whose `index.json` says `"complete": false` (a Slurm run
    /// still going, or with failed points). Reports mark such runs.
    pub incomplete: Option<String>,
}

impl RunData {
    /// Reads a result directory. `summary.json` and `requests.jsonl` are required; `run.toml` and
    /// the sample files are optional. Errors name the file, and the line and field where known.
    ///
    /// A partial directory (the run was killed: a torn last line in `requests.jsonl`, no
    /// `summary.json`) loads too: the torn line is skipped with a warning, the summary is computed
    /// from the records that are there, and [`RunData::incomplete`] says why.
    pub fn load(dir: &Path) -> Result<RunData, Error> {
        let summary_path = dir.join("summary.json");
        let summary = if summary_path.exists() { Some(read_summary(&summary_path)?) } else { None };
        let (records, torn) = read_records_torn(&dir.join("requests.jsonl"))?;
        let run_toml = dir.join("run.toml");
        let mut label = None;
        let mut baseline = None;
        let mut request_rate = None;
        let mut gpu_blocks = None;
        if run_toml.exists() {
            let text = read(&run_toml)?;
            let value: toml::Table = parse_toml(&run_toml, &text)?;
            let field = |key: &str| Error::Field { file: run_toml.clone(), field: key.to_owned() };
            label = match value.get("label") {
                None => None,
                Some(v) => Some(v.as_str().ok_or_else(|| field("label"))?.to_owned()),
            };
            baseline = match value.get("baseline") {
                None => None,
                Some(v) => Some(v.as_str().ok_or_else(|| field("baseline"))?.to_owned()),
            };
            gpu_blocks = match value.get("num_gpu_blocks") {
                None => None,
                Some(v) => Some(
                    v.as_integer()
                        .and_then(|i| u64::try_from(i).ok())
                        .ok_or_else(|| field("num_gpu_blocks"))?,
                ),
            };
            if let Some(rate) = value.get("workload").and_then(|w| w.get("request_rate")) {
                let rate = match rate {
                    toml::Value::Float(f) => *f,
                    toml::Value::Integer(i) => *i as f64,
                    _ => return Err(field("workload.request_rate")),
                };
                request_rate = rate.is_finite().then_some(rate);
            }
        }
        let label = label.unwrap_or_else(|| {
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".to_owned())
        });
        let mut samples = BTreeMap::new();
        for stem in ["gpu", "disk", "cpu", "process", "engine"] {
            let path = dir.join("samples").join(format!("{stem}.csv"));
            if path.exists() {
                samples.insert(stem.to_owned(), Table::read(&path)?);
            }
        }
        let mut incomplete = incompleteness(dir);
        let summary = match summary {
            Some(summary) => summary,
            None => {
                let why = format!(
                    "no summary.json (the run was killed): the summary is computed from the {} requests \
                     that finished in requests.jsonl",
                    records.len()
                );
                eprintln!("warning: {}: {why}", dir.display());
                incomplete.get_or_insert(why);
                stats::summarize(&records, &summary_config(dir))
            }
        };
        if let Some(t) = torn {
            incomplete.get_or_insert_with(|| {
                format!("requests.jsonl ends in a torn line (line {}, skipped): the run was killed", t.line)
            });
        }
        Ok(RunData {
            dir: dir.to_owned(),
            label,
            baseline,
            request_rate,
            gpu_blocks,
            summary,
            records,
            samples,
            incomplete,
        })
    }

    /// The label shown in legends and tables: `label`, with ` (emulated)` for emulated runs.
    pub fn display_label(&self) -> String {
        if self.summary.emulated {
            format!("{} (emulated)", self.label)
        } else {
            self.label.clone()
        }
    }

    /// Records that count in statistics: not warm-up, completed.
    pub fn completed(&self) -> impl Iterator<Item = &RequestRecord> {
        self.records.iter().filter(|r| !r.warmup && r.error.is_none())
    }
}

/// Reads `summary.json`; errors name the file, line and field ([`parse_summary`]).
pub fn read_summary(path: &Path) -> Result<Summary, Error> {
    parse_summary(&read(path)?, path)
}

/// Parses the text of a `summary.json`; `file` names it in errors, with the line, the column
/// and the field.
pub fn parse_summary(text: &str, file: &Path) -> Result<Summary, Error> {
    stats::parse_json(text).map_err(|e| json_error(file, 0, e))
}

/// A JSON error at `first_line + e.line` of `file`: `file:LINE: FIELD: message (column C)`.
pub(crate) fn json_error(file: &Path, first_line: usize, e: stats::TextError) -> Error {
    Error::Config(e.in_file_from(file.display().to_string(), first_line))
}

/// Reads `requests.jsonl` (blank lines are skipped; a torn last line, left by a killed run, is
/// skipped with a warning on stderr).
pub fn read_records(path: &Path) -> Result<Vec<RequestRecord>, Error> {
    read_records_torn(path).map(|(records, _)| records)
}

/// [`read_records`], also saying whether a torn last line was skipped.
pub(crate) fn read_records_torn(path: &Path) -> Result<(Vec<RequestRecord>, Option<stats::TornLine>), Error> {
    let text = read(path)?;
    let lines = stats::parse_json_lines::<RequestRecord>(&text)
        .map_err(|e| Error::Config(e.in_file(path.display().to_string())))?;
    if let Some(t) = &lines.torn {
        eprintln!("warning: {}", t.warning(&path.display().to_string()));
    }
    Ok((lines.items.into_iter().map(|(_, r)| r).collect(), lines.torn))
}

/// The summary settings of a run without `summary.json`: engine, tier and `emulated` from
/// `run.toml` (defaults where it is missing or unreadable).
fn summary_config(dir: &Path) -> stats::SummaryConfig {
    let run: Option<toml::Table> =
        std::fs::read_to_string(dir.join("run.toml")).ok().and_then(|t| toml::from_str(&t).ok());
    let text = |key: &str| run.as_ref().and_then(|r| r.get(key)?.as_str().map(str::to_owned));
    stats::SummaryConfig {
        engine: text("engine").unwrap_or_else(|| "unknown".to_owned()),
        tier: text("tier").unwrap_or_else(|| "unknown".to_owned()),
        emulated: run.as_ref().and_then(|r| r.get("emulated")?.as_bool()).unwrap_or(false),
        ..Default::default()
    }
}

pub(crate) fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

/// Parses TOML text into `T`; an error is `file:LINE: KEY: message (column C)`, KEY being the
/// path of the field the parser was in (`(top level)` outside any).
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, Error> {
    stats::parse_toml(text).map_err(|e| Error::Config(e.in_file(path.display().to_string())))
}

/// A sample CSV file: a header and rows of cells, read by column name.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Reads a CSV file with a header row. Every row must have as many cells as the header.
    ///
    /// A torn last row (no final newline and a parse error or a short row: the sampler was
    /// killed while writing it) is skipped with a warning on stderr.
    pub fn read(path: &Path) -> Result<Table, Error> {
        let text = read(path)?;
        match Table::parse(path, &text) {
            Ok(table) if !stats::split_torn_tail(&text).1.is_some_and(|_| table.last_row_short()) => {
                Ok(table)
            }
            result => match stats::split_torn_tail(&text) {
                (complete, Some((_, torn))) => {
                    eprintln!("warning: {}", torn.warning(&path.display().to_string()));
                    Table::parse(path, complete)
                }
                (_, None) => result,
            },
        }
    }

    fn last_row_short(&self) -> bool {
        self.rows.last().is_some_and(|r| r.len() < self.columns.len())
    }

    fn parse(path: &Path, text: &str) -> Result<Table, Error> {
        let mut reader =
            csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(text.as_bytes());
        let parse = |e: csv::Error| {
            let line = e.position().map_or(1, |p| p.line() as usize);
            Error::Config(stats::Located::new(path.display().to_string(), line, "(row)", e.to_string()))
        };
        let columns = reader.headers().map_err(parse)?.iter().map(str::to_owned).collect();
        let mut rows = Vec::new();
        for row in reader.records() {
            rows.push(row.map_err(parse)?.iter().map(str::to_owned).collect());
        }
        Ok(Table { columns, rows })
    }

    /// The index of a column.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// `(t, value)` of a numeric column, rows with an empty or non-numeric cell left out; empty
    /// when either column is missing.
    pub fn series(&self, name: &str) -> Vec<(f64, f64)> {
        let (Some(t), Some(c)) = (self.column("t"), self.column(name)) else {
            return Vec::new();
        };
        self.rows
            .iter()
            .filter_map(|row| Some((row.get(t)?.parse().ok()?, row.get(c)?.parse().ok()?)))
            .filter(|(t, v): &(f64, f64)| t.is_finite() && v.is_finite())
            .collect()
    }

    /// Like [`Table::series`], with the values of rows at the same `t` combined (several GPUs):
    /// summed, or averaged when `mean` is set.
    pub fn series_combined(&self, name: &str, mean: bool) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64, u32)> = Vec::new();
        for (t, v) in self.series(name) {
            match out.last_mut() {
                Some(last) if last.0 == t => {
                    last.1 += v;
                    last.2 += 1;
                }
                _ => out.push((t, v, 1)),
            }
        }
        out.into_iter().map(|(t, v, n)| (t, if mean { v / f64::from(n) } else { v })).collect()
    }

    /// `(t, value)` of one metric of a long-format `engine.csv` (`t,metric,labels,value`), the
    /// values of all label sets at one scrape summed.
    pub fn metric(&self, metric: &str) -> Vec<(f64, f64)> {
        let (Some(t), Some(m), Some(v)) = (self.column("t"), self.column("metric"), self.column("value"))
        else {
            return Vec::new();
        };
        let mut out: Vec<(f64, f64)> = Vec::new();
        for row in &self.rows {
            if row.get(m).map(String::as_str) != Some(metric) {
                continue;
            }
            let (Some(Ok(time)), Some(Ok(value))) =
                (row.get(t).map(|c| c.parse::<f64>()), row.get(v).map(|c| c.parse::<f64>()))
            else {
                continue;
            };
            match out.last_mut() {
                Some(last) if last.0 == time => last.1 += value,
                _ => out.push((time, value)),
            }
        }
        out
    }
}

/// Reads the markers of a partial run; unreadable or absent files say nothing.
fn incompleteness(dir: &Path) -> Option<String> {
    let json = |path: &Path| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    if json(&dir.join("env.json")).is_some_and(|env| env["interrupted"] == serde_json::Value::Bool(true)) {
        return Some("the run was interrupted: the summary covers the requests that finished".to_owned());
    }
    let index = dir.parent().map(|root| root.join("index.json"))?;
    if json(&index).is_some_and(|idx| idx["complete"] == serde_json::Value::Bool(false)) {
        return Some(format!("its experiment is not complete ({} says complete = false)", index.display()));
    }
    None
}
