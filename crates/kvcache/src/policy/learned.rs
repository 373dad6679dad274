//! The learned policy: a logistic-regression reuse predictor turned into a priority.

use serde::{Deserialize, Serialize};

use super::priority::{PriorityPolicy, Scorer};
use super::{AccessInfo, EvictionPolicy};

/// A logistic-regression reuse predictor over five features of a block access (see
/// [`LogisticModel::features`]), standardised with `mean` and `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogisticModel {
    pub bias: f64,
    pub weights: [f64; 5],
    pub mean: [f64; 5],
    pub scale: [f64; 5],
    /// Seconds of priority a certain reuse is worth (priority = `time_s + horizon_s * p`).
    pub horizon_s: f64,
}

impl Default for LogisticModel {
    /// A hand-set prior: recent, often used, shallow blocks of long conversations come back.
    fn default() -> Self {
        LogisticModel {
            bias: 0.0,
            weights: [-1.0, 1.0, -0.5, 0.5, -0.2],
            mean: [3.0, 0.5, 8.0, 1.0, 4.0],
            scale: [2.0, 1.0, 8.0, 2.0, 2.0],
            horizon_s: 300.0,
        }
    }
}

impl LogisticModel {
    /// Feature names, in the order of [`LogisticModel::features`].
    pub const FEATURES: [&'static str; 5] =
        ["ln(1+s since last access)", "ln(1+access count)", "prefix depth", "turn", "ln(1+session age s)"];

    /// The raw features of an access: time since the block's previous access (`prev`, or a
    /// day if none), how many times it was accessed before, its depth, the turn and the
    /// session's age.
    pub fn features(info: &AccessInfo, prev: Option<&AccessInfo>, count: u32) -> [f64; 5] {
        let since_ms = prev.map_or(86_400_000, |p| info.time_ms.saturating_sub(p.time_ms));
        let age_ms = info.time_ms.saturating_sub(info.session_start_ms);
        [
            (since_ms as f64 / 1e3).ln_1p(),
            f64::from(count).ln_1p(),
            f64::from(info.depth),
            f64::from(info.turn),
            (age_ms as f64 / 1e3).ln_1p(),
        ]
    }

    /// The predicted probability of reuse, in (0, 1).
    pub fn predict(&self, x: &[f64; 5]) -> f64 {
        let mut z = self.bias;
        for (((x, w), m), s) in x.iter().zip(&self.weights).zip(&self.mean).zip(&self.scale) {
            let s = if *s > 0.0 { *s } else { 1.0 };
            z += w * (x - m) / s;
        }
        1.0 / (1.0 + (-z).exp())
    }
}

impl Scorer for LogisticModel {
    fn score(&self, info: &AccessInfo, prev: Option<&AccessInfo>, count: u32) -> f64 {
        info.time_ms as f64 / 1e3 + self.horizon_s * self.predict(&LogisticModel::features(info, prev, count))
    }
}

/// The learned policy: priority `time_s + horizon_s * P(reuse)` from a [`LogisticModel`].
#[derive(Debug)]
pub struct Learned;

impl Learned {
    /// A fresh, empty policy with this model.
    pub fn boxed(model: LogisticModel) -> Box<dyn EvictionPolicy> {
        Box::new(PriorityPolicy::new(model))
    }
}
