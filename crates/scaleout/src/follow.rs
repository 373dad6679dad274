//! Following a submitted run from the command line: the job ids, then (unless detached) the
//! watch until every task has left the queue, the summary table, and a verdict naming each failed
//! point (its state, node and log) and how to resume.

use std::path::{Path, PathBuf};

use crate::slurm::SlurmError;

use crate::slurm::{self, Submitted, WatchConfig, WatchEnd};

/// Why a followed run is not a success.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The watch failed.
    #[error(transparent)]
    Watch(#[from] SlurmError),
    /// Points ended without a result; one line per point.
    #[error(
        "{} of {total} points failed (resume with `cargo xtask bench --resume {}`):\n{}",
        points.len(),
        root.display(),
        points.join("\n")
    )]
    PointsFailed { total: usize, root: PathBuf, points: Vec<String> },
    /// Interrupted and cancelled.
    #[error("cancelled; nothing of the run is left in squeue")]
    Cancelled,
}

/// Resolves on Ctrl-C (never, where its handler cannot be installed): the interrupt of a watch.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Prints the job ids, then returns (`detach`) or watches the run to its end ([`finish`]).
pub async fn follow(submitted: &Submitted, detach: bool, watch: &WatchConfig) -> Result<(), FollowError> {
    eprintln!(
        "kvlab: submitted {} point(s) as Slurm job {}; results in {}",
        submitted.points.len(),
        submitted.job_ids.join(", "),
        submitted.root.display()
    );
    if detach {
        println!("{}", submitted.job_ids.join(","));
        eprintln!("kvlab: watch it with `cargo xtask bench --attach {}`", submitted.root.display());
        return Ok(());
    }
    finish(slurm::watch(&submitted.root, watch, ctrl_c()).await?)
}

/// Follows a resumed run: [`follow`], or, when every point was complete and nothing was
/// submitted, says so and [`attach`]es.
pub async fn follow_resumed(
    submitted: &Submitted,
    detach: bool,
    watch: &WatchConfig,
) -> Result<(), FollowError> {
    if submitted.job_ids.is_empty() {
        println!("every point of {} is complete; nothing to submit", submitted.root.display());
        return attach(&submitted.root, watch).await;
    }
    follow(submitted, detach, watch).await
}

/// Watches a submitted run again (its result root) to its end ([`finish`]).
pub async fn attach(root: &Path, watch: &WatchConfig) -> Result<(), FollowError> {
    finish(slurm::watch(root, watch, ctrl_c()).await?)
}

/// Prints the summary table; an error naming each failed point (state, node, log) when any failed.
pub fn finish(end: WatchEnd) -> Result<(), FollowError> {
    let (outcome, cancelled) = match end {
        WatchEnd::Finished(o) => (o, false),
        WatchEnd::Cancelled(o) => (o, true),
        WatchEnd::Detached(o) => {
            println!("{}", slurm::render_table(&o));
            return Ok(());
        }
    };
    println!("{}", slurm::render_table(&outcome));
    println!("index: {}", outcome.root.join("index.json").display());
    let failed = outcome.failed();
    if !failed.is_empty() {
        let points = failed
            .iter()
            .map(|p| {
                format!(
                    "point {} ({}): {} on {}; log: {}",
                    p.index,
                    p.name,
                    p.state,
                    p.node.as_deref().unwrap_or("no node"),
                    match &p.log {
                        Some(l) if l.is_file() => l.display().to_string(),
                        _ => "none (never started)".to_owned(),
                    }
                )
            })
            .collect();
        return Err(FollowError::PointsFailed {
            total: outcome.points.len(),
            root: outcome.root.clone(),
            points,
        });
    }
    if cancelled {
        return Err(FollowError::Cancelled);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slurm::{Outcome, PointOutcome};

    fn point(index: usize, state: &str, done: bool) -> PointOutcome {
        PointOutcome {
            index,
            name: format!("p{index}"),
            state: state.to_owned(),
            done,
            node: (index == 1).then(|| "node1".to_owned()),
            job_id: None,
            task_id: None,
            restarts: 0,
            attempts: 1,
            log: None,
            error: None,
        }
    }

    #[test]
    fn the_verdict_names_each_failed_point_and_how_to_resume() {
        let outcome = Outcome {
            root: PathBuf::from("/r/exp"),
            points: vec![point(0, "COMPLETED", true), point(1, "FAILED", false), point(2, "PENDING", false)],
            queued: 0,
        };
        let err = finish(WatchEnd::Finished(outcome.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "1 of 3 points failed (resume with `cargo xtask bench --resume /r/exp`):\n\
             point 1 (p1): FAILED on node1; log: none (never started)"
        );
        // A detached watch is no verdict; a cancelled one without failures is.
        assert!(finish(WatchEnd::Detached(outcome.clone())).is_ok());
        let done = Outcome { points: vec![point(0, "COMPLETED", true)], ..outcome };
        assert!(finish(WatchEnd::Finished(done.clone())).is_ok());
        assert_eq!(
            finish(WatchEnd::Cancelled(done)).unwrap_err().to_string(),
            "cancelled; nothing of the run is left in squeue"
        );
    }
}
