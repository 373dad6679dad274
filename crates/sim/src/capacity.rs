//! Cache capacities: blocks, tokens or bytes, and their conversion to blocks.

use serde::Serialize;

use crate::SimError;

/// A capacity as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    Blocks(u64),
    Tokens(u64),
    /// Bytes of KV memory (needs the model's KV geometry).
    Bytes(u64),
    /// Unbounded.
    Infinite,
}

impl Capacity {
    /// Parses `1000` (blocks), `10k` (blocks), `10k-tokens`, `64Mi-tokens`, `2GiB`, `500MB`,
    /// `inf`. Suffixes k/M/G are powers of 1000, Ki/Mi/Gi of 1024; bytes end in `B`.
    pub fn parse(s: &str) -> Result<Capacity, SimError> {
        let t = s.trim();
        let bad = || {
            SimError::Invalid(format!(
                "capacity {s:?}: expected blocks (1000, 10k), tokens (10k-tokens), bytes (2GiB, 500MB) or inf"
            ))
        };
        if t.eq_ignore_ascii_case("inf") || t.eq_ignore_ascii_case("infinite") {
            return Ok(Capacity::Infinite);
        }
        let (body, kind) = if let Some(b) = t.strip_suffix("-tokens").or_else(|| t.strip_suffix("tokens")) {
            (b, 1)
        } else if let Some(b) = t.strip_suffix("-blocks").or_else(|| t.strip_suffix("blocks")) {
            (b, 0)
        } else if let Some(b) = t.strip_suffix('B') {
            (b, 2)
        } else {
            (t, 0)
        };
        let body = body.trim();
        let (digits, mult) = [
            ("Ki", 1u64 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("Ti", 1 << 40),
            ("k", 1_000),
            ("K", 1_000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
            ("T", 1_000_000_000_000),
        ]
        .iter()
        .find_map(|(suf, m)| body.strip_suffix(suf).map(|d| (d, *m)))
        .unwrap_or((body, 1));
        let value: f64 = digits.trim().parse().map_err(|_| bad())?;
        if !(value.is_finite() && value >= 0.0) {
            return Err(bad());
        }
        let n = (value * mult as f64).round() as u64;
        Ok(match kind {
            0 => Capacity::Blocks(n),
            1 => Capacity::Tokens(n),
            _ => Capacity::Bytes(n),
        })
    }

    /// Blocks of `block_tokens` tokens (rounded down); bytes need `kv`. Infinite is `u64::MAX`.
    pub fn blocks(self, block_tokens: u32, kv: Option<&costmodel::KvGeometry>) -> Result<u64, SimError> {
        Ok(match self {
            Capacity::Blocks(n) => n,
            Capacity::Tokens(n) => n / u64::from(block_tokens.max(1)),
            Capacity::Bytes(n) => {
                let kv = kv.ok_or_else(|| {
                    SimError::Invalid(format!(
                        "capacity {self}: a capacity in bytes needs --model (its KV geometry)"
                    ))
                })?;
                kvcache::capacity_blocks(n, kv, block_tokens)
            }
            Capacity::Infinite => u64::MAX,
        })
    }
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Capacity::Blocks(n) => write!(f, "{n}"),
            Capacity::Tokens(n) => write!(f, "{n}-tokens"),
            Capacity::Bytes(n) => write!(f, "{n}B"),
            Capacity::Infinite => f.write_str("inf"),
        }
    }
}
