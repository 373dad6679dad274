//! The rule-based conversation-aware policy: recency, turn, depth and a finished penalty.

use serde::{Deserialize, Serialize};

use super::priority::{PriorityPolicy, Scorer};
use super::{AccessInfo, EvictionPolicy};

/// Tunable weights of [`ConversationAware`]. A block's priority, fixed when it is touched, is
///
/// `time_s + turn * ln(1 + turn) - depth * depth_index - finished * [turn >= finished_turn > 0]`
///
/// in seconds: the lowest priority leaves first. `time_s` (the request's time) carries the time
/// since the conversation's last turn (every turn touches all of its prefix blocks); `turn`
/// credits long conversations, which come back; `depth` makes deep blocks (reused only with
/// their whole prefix) leave before shallow ones; `finished` penalises a conversation that looks
/// finished (it reached `finished_turn` turns).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationWeights {
    pub turn: f64,
    pub depth: f64,
    pub finished: f64,
    pub finished_turn: u32,
}

impl Default for ConversationWeights {
    fn default() -> Self {
        ConversationWeights { turn: 30.0, depth: 0.5, finished: 0.0, finished_turn: 0 }
    }
}

impl Scorer for ConversationWeights {
    fn score(&self, info: &AccessInfo, _prev: Option<&AccessInfo>, _count: u32) -> f64 {
        let turn = f64::from(info.turn);
        let finished = self.finished_turn > 0 && info.turn >= self.finished_turn;
        info.time_ms as f64 / 1e3 + self.turn * turn.ln_1p()
            - self.depth * f64::from(info.depth)
            - if finished { self.finished } else { 0.0 }
    }
}

/// The rule-based conversation-aware policy (see [`ConversationWeights`]).
#[derive(Debug)]
pub struct ConversationAware;

impl ConversationAware {
    /// A fresh, empty policy with these weights.
    pub fn boxed(weights: ConversationWeights) -> Box<dyn EvictionPolicy> {
        Box::new(PriorityPolicy::new(weights))
    }
}
