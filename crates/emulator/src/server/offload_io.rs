//! The offload tiers' real I/O, on the wall clock beside the model: the reads of a request's
//! hits before it is queued, the writes in a background task.

use std::sync::Arc;

use kvcache::{BlockHash, Tier};
use tokio::sync::mpsc;

use super::{lock, Shared};
use crate::offload::{Access, Change};
use crate::store::Read;

/// Applies store changes to the tiers in order; a failed write is forgotten by the index.
pub(crate) async fn writer_loop(sh: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Vec<Change>>) {
    while let Some(changes) = rx.recv().await {
        for c in changes {
            if !sh.stores.apply(c).await {
                if let Change::Write(tier, key) = c {
                    lock(&sh.index).remove(tier, key);
                }
            }
        }
    }
}

/// Reads the prompt's offload hits for real, chunk by chunk, beyond the GPU prefix hit; stops
/// at the first chunk that is missing or fails (a failure is a counted tier error, and the
/// chunk is forgotten so it is stored again).
///
/// The reads run on the wall clock, not the model's: the request's model clock has started at
/// its arrival, and the step that takes it charges the modelled load time of these chunks. They
/// overlap the request's modelled wait and load, and delay it only when they outlast them.
pub(crate) async fn load_offload(
    sh: &Shared,
    keys: &[BlockHash],
    gpu_hit: u32,
    access: &Access,
) -> Vec<Tier> {
    let mut hits = lock(&sh.index).lookup(keys, access);
    let chunk = sh.resolved.cfg.offload.chunk_tokens;
    let first = (gpu_hit / chunk) as usize;
    for c in first..hits.len() {
        match sh.stores.read(hits[c], keys[c]).await {
            Read::Ok => {}
            Read::Missing | Read::Failed => {
                lock(&sh.index).remove(hits[c], keys[c]);
                hits.truncate(c);
                break;
            }
        }
    }
    hits
}
