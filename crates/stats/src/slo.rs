//! Service-level objectives for goodput, in the `vllm bench serve --goodput` syntax.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::RequestRecord;

/// Latency objectives in milliseconds; a completed request is *good* when it meets every one
/// that is set (`metric <= objective`). A request with at most one output token has TPOT 0.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2el_ms: Option<f64>,
}

/// A malformed `--goodput` argument.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SloError {
    #[error("goodput {arg:?}: expected KEY:MILLISECONDS, e.g. ttft:500")]
    Syntax { arg: String },
    #[error("goodput {arg:?}: unknown metric {key:?} (expected ttft, tpot or e2el)")]
    UnknownMetric { arg: String, key: String },
    #[error("goodput {arg:?}: {value:?} is not a non-negative number of milliseconds")]
    BadValue { arg: String, value: String },
    #[error("goodput {arg:?}: metric {key:?} given twice")]
    Duplicate { arg: String, key: String },
}

impl Slo {
    /// Parse `["ttft:500", "tpot:50", "e2el:2000"]`. Each argument may also hold several
    /// space-separated pairs. Values are non-negative milliseconds; each metric at most once.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Slo, SloError> {
        let mut slo = Slo::default();
        for pair in args.iter().flat_map(|a| a.as_ref().split_whitespace()) {
            let Some((key, value)) = pair.split_once(':') else {
                return Err(SloError::Syntax { arg: pair.to_string() });
            };
            let slot = match key {
                "ttft" => &mut slo.ttft_ms,
                "tpot" => &mut slo.tpot_ms,
                "e2el" => &mut slo.e2el_ms,
                _ => return Err(SloError::UnknownMetric { arg: pair.to_string(), key: key.to_string() }),
            };
            let ms = value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| SloError::BadValue { arg: pair.to_string(), value: value.to_string() })?;
            if slot.replace(ms).is_some() {
                return Err(SloError::Duplicate { arg: pair.to_string(), key: key.to_string() });
            }
        }
        Ok(slo)
    }

    /// No objective set.
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }

    /// Whether a completed record meets every objective that is set.
    pub fn is_met_by(&self, record: &RequestRecord) -> bool {
        let within = |objective: Option<f64>, seconds: f64| objective.is_none_or(|ms| seconds * 1000.0 <= ms);
        within(self.ttft_ms, record.ttft())
            && within(self.tpot_ms, record.tpot().unwrap_or(0.0))
            && within(self.e2el_ms, record.e2el())
    }
}

impl fmt::Display for Slo {
    /// The `--goodput` syntax: `ttft:500 tpot:50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [("ttft", self.ttft_ms), ("tpot", self.tpot_ms), ("e2el", self.e2el_ms)];
        let mut first = true;
        for (key, value) in parts {
            if let Some(ms) = value {
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "{key}:{ms}")?;
                first = false;
            }
        }
        Ok(())
    }
}
