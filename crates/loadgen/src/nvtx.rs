//! NVTX ranges of the client, for Nsight Systems timelines (`cargo xtask profile`).
//!
//! One process-wide (start/end) range per request: `prefill` from the send to the first token,
//! then `decode` to the end of the stream. Start/end ranges, not push/pop: requests overlap and
//! a request's future moves between the runtime's threads. [`WorkloadRange`] spans the whole
//! workload (`workload`); `nsys profile --capture-range=nvtx` starts and stops on it for engines
//! without a CUDA profiler API of their own.
//!
//! Without the `nvtx` feature every type here is zero-sized and every call is empty, so the
//! client's hot path carries no `cfg` and pays nothing. With it and no profiler attached, NVTX
//! calls are a load and a branch each.

/// The NVTX range name of the client's workload range, used as nsys's capture range.
pub const WORKLOAD_RANGE: &str = "workload";

/// The phase range of one request: `prefill` until [`RequestRange::first_token`], then `decode`
/// until dropped.
#[derive(Debug)]
pub(crate) struct RequestRange {
    #[cfg(feature = "nvtx")]
    open: Option<::nvtx::Range>,
    #[cfg(feature = "nvtx")]
    decoding: bool,
}

impl RequestRange {
    /// Opens the request's `prefill` range.
    pub(crate) fn start() -> RequestRange {
        #[cfg(feature = "nvtx")]
        let active = ACTIVE.load(std::sync::atomic::Ordering::Relaxed);
        RequestRange {
            #[cfg(feature = "nvtx")]
            open: active.then(|| ::nvtx::Range::new(c"prefill")),
            #[cfg(feature = "nvtx")]
            decoding: !active,
        }
    }

    /// Ends `prefill` and opens `decode` (once; later calls do nothing).
    #[inline]
    pub(crate) fn first_token(&mut self) {
        #[cfg(feature = "nvtx")]
        if !self.decoding {
            self.decoding = true;
            self.open = None;
            self.open = Some(::nvtx::Range::new(c"decode"));
        }
    }
}

/// The range over a whole workload: `workload`, ended when dropped. Public for the lab, which
/// opens it around the load generator when a run is profiled.
///
/// A push/pop range, pushed and popped on a thread of its own: nsys's NVTX capture range
/// (`--capture-range=nvtx`) is defined for push/pop ranges, and the workload's future may end on
/// another thread than the one it started on.
#[derive(Debug)]
pub struct WorkloadRange {
    #[cfg(feature = "nvtx")]
    holder: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl WorkloadRange {
    /// Opens the `workload` range; it is open when this returns.
    pub fn start() -> WorkloadRange {
        #[cfg(feature = "nvtx")]
        {
            let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
            let (open_tx, open_rx) = std::sync::mpsc::channel::<()>();
            let holder = std::thread::Builder::new()
                .name("nvtx-workload".to_owned())
                .spawn(move || {
                    let range = ::nvtx::LocalRange::new(c"workload");
                    let _ = open_tx.send(());
                    // Returns when the sender is dropped or sends.
                    let _ = end_rx.recv();
                    drop(range);
                })
                .ok();
            if holder.is_some() {
                let _ = open_rx.recv();
            }
            WorkloadRange { holder: holder.map(|h| (end_tx, h)) }
        }
        #[cfg(not(feature = "nvtx"))]
        WorkloadRange {}
    }
}

impl Drop for WorkloadRange {
    fn drop(&mut self) {
        #[cfg(feature = "nvtx")]
        if let Some((end, thread)) = self.holder.take() {
            let _ = end.send(());
            let _ = thread.join();
        }
    }
}

/// Whether this build emits NVTX ranges (the `nvtx` feature).
pub const ENABLED: bool = cfg!(feature = "nvtx");

#[cfg(feature = "nvtx")]
static ACTIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the per-request ranges of requests sent from now on off (`false`) or back on, in a
/// build with the `nvtx` feature (without it there are none either way). For measuring the
/// ranges' cost against the same build without them.
pub fn set_request_ranges(on: bool) {
    #[cfg(feature = "nvtx")]
    ACTIVE.store(on, std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "nvtx"))]
    let _ = on;
}
