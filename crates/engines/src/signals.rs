//! Signals: the stop of a run (Ctrl-C or SIGTERM) and signals sent to the processes and process
//! groups the lab started, through rustix's `kill(2)` (no `kill` program is spawned).

pub use rustix::process::Signal;
use rustix::process::{kill_process, kill_process_group, Pid};

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (what `scancel` and Slurm's time limit
/// send). Where a handler cannot be installed, that signal is simply not awaited (it then keeps
/// its default action).
pub async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = int => {}
        () = term => {}
    }
}

fn pid(raw: u32) -> Option<Pid> {
    // 0 and values past i32 would mean "my group" or "every process": never meant here.
    i32::try_from(raw).ok().and_then(Pid::from_raw)
}

/// Sends `sig` to process `pid`; whether it was delivered (false: no such process, not ours).
pub fn signal(raw: u32, sig: Signal) -> bool {
    pid(raw).is_some_and(|p| kill_process(p, sig).is_ok())
}

/// Sends `sig` to every process of group `pgid`; whether it was delivered.
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    pid(pgid).is_some_and(|p| kill_process_group(p, sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_reach_a_process_and_its_group_and_never_pid_zero() {
        // A child in a group of its own: SIGTERM to the group ends it.
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        assert!(signal_group(child.id(), Signal::TERM));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(Signal::TERM.as_raw()));
        // Then to the process alone: SIGKILL.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(signal(child.id(), Signal::KILL));
        assert_eq!(child.wait().unwrap().signal(), Some(Signal::KILL.as_raw()));
        // 0 (our own group) and pids past i32 are refused, not sent.
        assert!(!signal(0, Signal::TERM));
        assert!(!signal_group(0, Signal::TERM));
        assert!(!signal(u32::MAX, Signal::TERM));
    }
}
