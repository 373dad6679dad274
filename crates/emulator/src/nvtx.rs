//! NVTX ranges of the engine loop, named as vLLM names its per-step ranges in its CUDA profiler
//! mode (`--profiler-config '{"profiler": "cuda"}'`): `execute_new_{N}_cached_{M}`, N requests
//! scheduled for the first time (prefill) and M continuing (decode, or a further prefill chunk).
//! A Nsight Systems timeline of the emulator therefore reads like one of vLLM, and the same
//! `nsys stats` parsing serves both.
//!
//! Without the `nvtx` feature [`StepRange`] is zero-sized and the name is never formatted.

/// The range of one engine step, from its scheduling to the publication of its tokens.
#[derive(Debug)]
pub(crate) struct StepRange {
    #[cfg(feature = "nvtx")]
    _range: ::nvtx::Range,
}

impl StepRange {
    /// Opens `execute_new_{new}_cached_{cached}`.
    #[inline]
    pub(crate) fn start(new: u32, cached: u32) -> StepRange {
        #[cfg(not(feature = "nvtx"))]
        let _ = (new, cached);
        StepRange {
            #[cfg(feature = "nvtx")]
            _range: ::nvtx::Range::new(std::ffi::CString::new(step_name(new, cached)).unwrap_or_default()),
        }
    }

    /// Ends the range.
    #[inline]
    pub(crate) fn end(self) {}
}

/// vLLM's per-step range name.
pub fn step_name(new: u32, cached: u32) -> String {
    format!("execute_new_{new}_cached_{cached}")
}
