//! Scale-out: an experiment's points run elsewhere than in the lab's own process. Slurm job
//! arrays (`slurm`: plan, submit, the per-point runner `kvlab-point`, watch, index) and the
//! Kubernetes Indexed Job manifest (`k8s`: the manifest, and `emit`, which writes it beside the
//! plan); `follow` watches a submitted run to its summary and verdict. Each point runs through the lab's own run lifecycle
//! (`lab::run`), so a point's result directory is the same wherever it ran.

pub mod follow;
pub mod k8s;
pub mod slurm;
