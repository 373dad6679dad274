//! The experiment and tier schema: what a run is asked to do, read from `configs/` and
//! experiment files and checked before anything starts. Experiments and their points
//! (`config`), tiers and their LMCache settings (`config`, `lmcache`), the engine kinds and GPU
//! selections runs name (`EngineKind`, `GpuSelection`), and what a configuration can be wrong with (`error`).
//!
//! Nothing here starts a process or opens a socket; it reads the files it is pointed at.

pub mod config;
pub mod error;
mod kind;
pub mod lmcache;

pub use kind::{EngineKind, GpuSelection};
