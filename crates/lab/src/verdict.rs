//! Whether a bench run passed: unlike `vllm bench serve`, a run where requests failed never looks
//! like a success.

use std::path::PathBuf;

use crate::run::RunReport;

/// A run where more requests failed than allowed (or where none was sent).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{run}: {failed} of {sent} requests failed (allowed fraction {max_failed_fraction}); records are in {}",
    records.display()
)]
pub struct TooManyFailed {
    /// The result directory's name.
    pub run: String,
    pub failed: u64,
    pub sent: u64,
    pub max_failed_fraction: f64,
    /// The run's `requests.jsonl`.
    pub records: PathBuf,
}

/// The first run whose failed fraction exceeds `max_failed_fraction` (or that sent nothing).
/// The requests a point's `time_limit` cut short (`interrupted`) are not failures of the engine.
pub fn check_failures(reports: &[RunReport], max_failed_fraction: f64) -> Result<(), TooManyFailed> {
    for report in reports {
        let s = &report.summary;
        let cut = if report.time_limit_reached {
            s.failed_by_class.get("interrupted").copied().unwrap_or(0)
        } else {
            0
        };
        let sent = s.completed + s.failed - cut;
        let failed = s.failed - cut;
        let fraction = if sent == 0 { 1.0 } else { failed as f64 / sent as f64 };
        if sent == 0 || fraction > max_failed_fraction {
            return Err(TooManyFailed {
                run: report.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                failed,
                sent,
                max_failed_fraction,
                records: report.dir.join("requests.jsonl"),
            });
        }
    }
    Ok(())
}
