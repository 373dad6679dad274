//! The result directory of a run: `results/<label>_<YYYYmmdd-HHMMSS>/` or an explicit one.
//!
//! [`ResultWriter`] owns the directory and its `requests.jsonl`; others (the lab: `run.toml`,
//! `env.json`, samples) add their files through [`ResultWriter::write_json`] /
//! [`ResultWriter::write_text`] or next to [`ResultWriter::dir`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use stats::{write_atomic, RequestRecord};

/// The per-request log, one JSON line per finished request.
pub(crate) const REQUESTS_JSONL: &str = "requests.jsonl";
/// The flat per-request table, written at the end.
pub(crate) const REQUESTS_CSV: &str = "requests.csv";
/// The run's summary, written at the end.
pub(crate) const SUMMARY_JSON: &str = "summary.json";

/// A file operation of the result directory failed. Files written before stay as they are.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct ResultsError {
    /// What was being done (`"creating"`, `"writing"`, ...).
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Writes the files of one run into one directory.
///
/// Invariant: every record passed to [`ResultWriter::append`] is in `requests.jsonl`, as one
/// line, and handed to the operating system (flushed) before `append` returns; a killed process
/// loses none of them.
#[derive(Debug)]
pub struct ResultWriter {
    dir: PathBuf,
    requests: Option<BufWriter<File>>,
}

/// Now, as `YYYYmmdd-HHMMSS` (local time where the system tells the offset, else UTC): the
/// wall clock, for names only; durations come from `Instant`.
#[allow(clippy::disallowed_methods)]
pub fn timestamp() -> String {
    let now = time::OffsetDateTime::now_local().unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(time::macros::format_description!("[year][month][day]-[hour][minute][second]"))
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

impl ResultWriter {
    /// Creates a fresh `<root>/<label>_<YYYYmmdd-HHMMSS>/` (local time where the system tells the
    /// offset, else UTC; `-2`, `-3`, ... appended when the name is taken). Characters of `label`
    /// other than ASCII letters, digits, `.`, `-` and `_` become `_`.
    pub fn create(root: &Path, label: &str) -> Result<ResultWriter, ResultsError> {
        ResultWriter::create_named(root, label, &timestamp())
    }

    fn create_named(root: &Path, label: &str, stamp: &str) -> Result<ResultWriter, ResultsError> {
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
            .collect();
        let label =
            if label.is_empty() || label.chars().all(|c| c == '.') { "run".to_string() } else { label };
        fs::create_dir_all(root).map_err(|source| ResultsError {
            action: "creating",
            path: root.into(),
            source,
        })?;
        let mut last = root.join(format!("{label}_{stamp}"));
        for n in 1..=1000u32 {
            let name = if n == 1 { format!("{label}_{stamp}") } else { format!("{label}_{stamp}-{n}") };
            last = root.join(name);
            match fs::create_dir(&last) {
                Ok(()) => return Ok(ResultWriter { dir: last, requests: None }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(ResultsError { action: "creating", path: last, source }),
            }
        }
        Err(ResultsError {
            action: "creating",
            path: last,
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "1000 runs with this label in the same second",
            ),
        })
    }

    /// Uses `dir` (created if missing). Refuses a directory that already holds a
    /// `requests.jsonl`, so a run never mixes its records with another's.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Result<ResultWriter, ResultsError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| ResultsError {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        let jsonl = dir.join(REQUESTS_JSONL);
        if jsonl.exists() {
            return Err(ResultsError {
                action: "refusing to overwrite",
                path: jsonl,
                source: io::Error::new(io::ErrorKind::AlreadyExists, "a previous run's records are there"),
            });
        }
        Ok(ResultWriter { dir, requests: None })
    }

    /// The run's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one line per record to `requests.jsonl` (created on first use) and flushes.
    pub fn append(&mut self, records: &[RequestRecord]) -> Result<(), ResultsError> {
        let mut out = self.take_requests()?;
        let result = out.append(records);
        self.requests = Some(out.file);
        result
    }

    /// `requests.jsonl` (created if missing), to be appended to by another thread; give it back
    /// with [`ResultWriter::restore_requests`].
    pub(crate) fn take_requests(&mut self) -> Result<RequestsFile, ResultsError> {
        let path = self.dir.join(REQUESTS_JSONL);
        let file = match self.requests.take() {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| ResultsError { action: "writing", path: path.clone(), source })?;
                BufWriter::with_capacity(64 * 1024, file)
            }
        };
        Ok(RequestsFile { path, file })
    }

    pub(crate) fn restore_requests(&mut self, file: RequestsFile) {
        self.requests = Some(file.file);
    }

    /// Writes `requests.csv` (columns of [`stats::csv_header`]), replacing any previous one.
    pub fn write_csv(&self, records: &[RequestRecord]) -> Result<(), ResultsError> {
        let path = self.dir.join(REQUESTS_CSV);
        let err = |source| ResultsError { action: "writing", path: path.clone(), source };
        let mut w = csv::Writer::from_writer(Vec::new());
        let csv_err = |e: csv::Error| err(io::Error::other(e));
        w.write_record(stats::csv_header()).map_err(csv_err)?;
        for record in records {
            w.write_record(stats::csv_row(record)).map_err(csv_err)?;
        }
        let bytes = w.into_inner().map_err(|e| err(io::Error::other(e.to_string())))?;
        write_atomic(&path, &bytes).map_err(err)
    }

    /// Writes `name` (relative to the directory) as pretty JSON with a final newline.
    pub fn write_json<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), ResultsError> {
        let path = self.dir.join(name);
        let mut text = serde_json::to_string_pretty(value).map_err(|e| ResultsError {
            action: "serializing",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        text.push('\n');
        write_atomic(&path, text.as_bytes()).map_err(|source| ResultsError {
            action: "writing",
            path,
            source,
        })
    }

    /// Writes `name` (relative to the directory) with `contents`.
    pub fn write_text(&self, name: &str, contents: &str) -> Result<(), ResultsError> {
        let path = self.dir.join(name);
        fs::write(&path, contents).map_err(|source| ResultsError { action: "writing", path, source })
    }
}

/// `requests.jsonl`, open for appending.
#[derive(Debug)]
pub(crate) struct RequestsFile {
    path: PathBuf,
    file: BufWriter<File>,
}

impl RequestsFile {
    /// Appends one line per record and flushes.
    pub(crate) fn append(&mut self, records: &[RequestRecord]) -> Result<(), ResultsError> {
        let err = |source| ResultsError { action: "writing", path: self.path.clone(), source };
        for record in records {
            serde_json::to_writer(&mut self.file, record).map_err(|e| err(io::Error::other(e)))?;
            self.file.write_all(b"\n").map_err(err)?;
        }
        self.file.flush().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(label: &str, expect: &[&str]) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("results");
        let mut got = Vec::new();
        for _ in 0..expect.len() {
            let w = ResultWriter::create_named(&root, label, "20250101-120000").unwrap();
            got.push(w.dir().strip_prefix(&root).unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(got, expect);
    }

    #[test]
    fn directory_names() {
        check("disk", &["disk_20250101-120000", "disk_20250101-120000-2", "disk_20250101-120000-3"]);
        check("a/b c", &["a_b_c_20250101-120000"]);
        check("..", &["run_20250101-120000"]);
        check("", &["run_20250101-120000"]);
    }

    #[test]
    fn timestamped_name_has_the_format() {
        let tmp = tempfile::tempdir().unwrap();
        let w = ResultWriter::create(tmp.path(), "x").unwrap();
        let name = w.dir().file_name().unwrap().to_string_lossy().into_owned();
        let stamp = name.strip_prefix("x_").unwrap();
        assert_eq!(stamp.len(), "YYYYmmdd-HHMMSS".len(), "{name}");
        assert!(
            stamp.chars().enumerate().all(|(i, c)| if i == 8 { c == '-' } else { c.is_ascii_digit() }),
            "{name}"
        );
    }

    #[test]
    fn in_dir_refuses_previous_records() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = ResultWriter::in_dir(tmp.path().join("out")).unwrap();
        w.append(&[]).unwrap();
        let err = ResultWriter::in_dir(tmp.path().join("out")).unwrap_err();
        assert_eq!(err.action, "refusing to overwrite");
        assert!(err.to_string().contains("requests.jsonl"), "{err}");
    }

    #[test]
    fn write_error_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let w = ResultWriter::in_dir(tmp.path()).unwrap();
        let err = w.write_text("missing-dir/x.txt", "x").unwrap_err();
        assert!(err.to_string().starts_with("writing "), "{err}");
        assert!(err.path.ends_with("missing-dir/x.txt"), "{err}");
    }
}
