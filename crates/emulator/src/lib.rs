//! kvlab's embedded engine: an emulated vLLM + LMCache.
//!
//! One scheduler core (vLLM v1's shape: continuous batching, token budget, chunked prefill,
//! prefix caching over a GPU block pool, preemption by recomputation), kvlab's one cost model
//! (the `costmodel` crate: models and GPUs from its registry, step, load and store times, shared
//! with the simulator) and one offload index (the `kvcache` crate's model, also shared with the
//! simulator), behind two clocks:
//!
//! - real time: [`serve`] runs an OpenAI-compatible HTTP server; an engine task steps the core
//!   and sleeps each step's modelled duration. The offload tiers store real bytes (RAM, chunk
//!   files, Redis), scaled by [`EmulatorConfig::byte_scale`]; an I/O error in a tier is counted
//!   (`kvlab_tier_errors_total`, split into `kvlab_tier_read_errors_total` and
//!   `kvlab_tier_write_errors_total`) and the chunk is recomputed, never a crash; a Redis that
//!   went away is reconnected to on the next command. The redis tier keys its chunks under
//!   `kvlab:{run_id}:` and deletes them at shutdown ([`EmulatorConfig::run_id`]). The server
//!   enforces [`ServerLimits`] (body size, `max_tokens`, connections);
//! - virtual time: [`run_virtual`] replays a whole `workload::Plan` as discrete events, without
//!   sockets, and returns the records the load generator would have written. The offload tiers
//!   are metadata only there (no bytes move). The same input gives byte-identical output.
//!
//! The offload tiers evict with [`OffloadConfig::policy`]; each access passes the request's
//! conversation to the policy: in real time the OpenAI `user` field names the conversation and
//! the turn is the count of requests seen from that user; in virtual time both come from the
//! plan's session and turn.
//!
//! Everything it produces is labelled emulated: `/v1/models` says `owned_by: kvlab-emulated`,
//! every response carries `x-kvlab-engine: emulated`, `/metrics` has `kvlab_emulated 1`.
//!
//! Text is tokenized as one token per byte; generated text is deterministic printable ASCII, one
//! character per token, and always `max_tokens` long (the emulated model never emits EOS, so
//! `ignore_eos` and `min_tokens` are accepted and hold trivially).

mod blocks;
mod config;
mod cost;
mod metrics;
pub mod nvtx;
mod offload;
pub mod scenario;
mod sched;
mod server;
mod store;
pub mod thread;
mod virt;

pub use config::{
    DiskTierConfig, EmulatorConfig, LinkOverrides, OffloadConfig, RemoteTierConfig, SchedulerConfig,
    ServerLimits, TierPreset,
};
pub use server::{serve, Server};

/// The response header on everything the emulator serves, with the value `emulated`.
pub const ENGINE_HEADER: &str = "x-kvlab-engine";
/// `owned_by` of the emulator's models in `/v1/models`.
pub const OWNED_BY: &str = "kvlab-emulated";
pub use virt::run_virtual;

/// What can go wrong starting or running the emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid configuration; the message names the field (and file and line when parsed).
    #[error("emulator config: {0}")]
    Config(String),
    #[error("unknown {what} {name:?} (known: {known})")]
    UnknownName { what: &'static str, name: String, known: String },
    /// A workload request the emulator cannot take (virtual time).
    #[error("workload request {id}: {message}")]
    Plan { id: u64, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Token ids of a prompt: token-ID prompts as given, text as one token per byte, chat as the
/// bytes of the messages' contents, concatenated (so a conversation's turns share a prefix).
pub(crate) fn prompt_tokens(prompt: &workload::Prompt) -> std::borrow::Cow<'_, [u32]> {
    use workload::Prompt;
    match prompt {
        Prompt::Tokens(t) => std::borrow::Cow::Borrowed(t),
        Prompt::Text(s) => std::borrow::Cow::Owned(s.bytes().map(u32::from).collect()),
        Prompt::Chat(msgs) => {
            std::borrow::Cow::Owned(msgs.iter().flat_map(|m| m.content.bytes().map(u32::from)).collect())
        }
    }
}

/// The check vLLM makes before accepting a request; the message is vLLM's.
pub(crate) fn check_lengths(prompt_len: u32, max_tokens: u32, max_model_len: u32) -> Result<(), String> {
    if prompt_len == 0 {
        return Err("The prompt is empty; it must have at least one token.".to_owned());
    }
    if max_tokens == 0 {
        return Err("max_tokens must be at least 1, got 0.".to_owned());
    }
    let total = u64::from(prompt_len) + u64::from(max_tokens);
    if total > u64::from(max_model_len) {
        return Err(format!(
            "This model's maximum context length is {max_model_len} tokens. However, you \
             requested {total} tokens ({prompt_len} in the messages, {max_tokens} in the \
             completion). Please reduce the length of the messages or completion."
        ));
    }
    Ok(())
}
