//! Sweeps (trace x policy x capacity, in parallel), the learned policy's training and the
//! conversation-aware grid search.

use costmodel::{CostModel, KvGeometry};
use kvcache::{AccessInfo, ConversationWeights, LogisticModel, PolicyKind, Tier, TierConfig};
use rayon::prelude::*;
use serde::Serialize;

use crate::capacity::Capacity;
use crate::replay::{replay, PolicySpec, ReplayConfig, ReplayResult, TierModel};
use crate::trace::SimTrace;
use crate::SimError;

/// The cache every sweep point shares, apart from the swept tier's capacity.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The tier whose capacity is swept.
    pub tier: Tier,
    /// Other tiers, at fixed capacities.
    pub fixed: Vec<(Tier, Capacity)>,
    /// How stacked tiers share blocks.
    pub tier_model: TierModel,
    /// Needed for capacities in bytes.
    pub kv: Option<KvGeometry>,
    /// Estimates TTFT saved.
    pub cost: Option<CostModel>,
    pub max_num_batched_tokens: u32,
    /// The learned policy trains on the first `train_fraction` of each trace's time range.
    pub train_fraction: f64,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            tier: Tier::Cpu,
            fixed: Vec::new(),
            tier_model: TierModel::default(),
            kv: None,
            cost: None,
            max_num_batched_tokens: 8192,
            train_fraction: 0.5,
        }
    }
}

/// One point of a sweep: a row of `sim.csv`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub trace: String,
    pub policy: String,
    /// As the user wrote it.
    pub capacity: String,
    /// The swept tier's capacity in blocks (`u64::MAX`: unbounded).
    pub capacity_blocks: u64,
    pub block_size: u32,
    pub result: ReplayResult,
}

/// The tiers of one sweep point, in lookup order.
fn tiers(trace: &SimTrace, cfg: &SweepConfig, capacity: Capacity) -> Result<Vec<TierConfig>, SimError> {
    let mut out = vec![TierConfig {
        tier: cfg.tier,
        capacity_blocks: capacity.blocks(trace.block_tokens, cfg.kv.as_ref())?,
    }];
    for &(tier, cap) in &cfg.fixed {
        if tier == cfg.tier {
            return Err(SimError::Invalid(format!("tier `{tier}` is both swept and fixed")));
        }
        out.push(TierConfig { tier, capacity_blocks: cap.blocks(trace.block_tokens, cfg.kv.as_ref())? });
    }
    out.sort_by_key(|t| t.tier);
    Ok(out)
}

/// Every (trace, policy, capacity) point, replayed in parallel; rows in input order (trace,
/// then policy, then capacity). The policy [`PolicyKind::Learned`] given by kind is trained per
/// trace first ([`train_learned`]).
pub fn sweep(
    traces: &[SimTrace],
    policies: &[PolicySpec],
    capacities: &[Capacity],
    cfg: &SweepConfig,
) -> Result<Vec<Row>, SimError> {
    let mut points = Vec::new();
    for (t, trace) in traces.iter().enumerate() {
        let learned = policies
            .iter()
            .any(|p| *p == PolicySpec::from(PolicyKind::Learned))
            .then(|| train_learned(trace, cfg.train_fraction, 300.0).model);
        for &p in policies {
            let spec = match (p, learned) {
                (PolicySpec::Kind { policy: PolicyKind::Learned }, Some(model)) => {
                    PolicySpec::Learned { model }
                }
                _ => p,
            };
            for &c in capacities {
                points.push((t, p, spec, c, tiers(trace, cfg, c)?));
            }
        }
    }
    let rows = points
        .into_par_iter()
        .map(|(t, p, spec, c, tiers)| {
            let trace = &traces[t];
            let rc = ReplayConfig {
                tiers,
                tier_model: cfg.tier_model,
                policy: spec,
                from_ms: 0,
                to_ms: u64::MAX,
                cost: cfg.cost.as_ref(),
                max_num_batched_tokens: cfg.max_num_batched_tokens,
            };
            let capacity_blocks = c.blocks(trace.block_tokens, cfg.kv.as_ref()).unwrap_or(u64::MAX);
            Row {
                trace: trace.name.clone(),
                policy: p.name().to_owned(),
                capacity: c.to_string(),
                capacity_blocks,
                block_size: trace.block_tokens,
                result: replay(trace, &rc),
            }
        })
        .collect();
    Ok(rows)
}

/// The time (ms) splitting a trace into a training range `[0, split)` and a test range
/// `[split, end]`.
pub fn split_ms(trace: &SimTrace, fraction: f64) -> u64 {
    let end = trace.requests.last().map_or(0, |r| r.at_ms);
    (end as f64 * fraction.clamp(0.0, 1.0)) as u64
}

/// A trained [`LogisticModel`] with its fit on both ranges.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trained {
    pub model: LogisticModel,
    pub split_ms: u64,
    pub train_samples: u64,
    /// Log loss on the training range and on the (disjoint, later) test range.
    pub train_log_loss: f64,
    pub test_log_loss: f64,
    /// Fraction of correct reuse predictions (p >= 0.5) on each range.
    pub train_accuracy: f64,
    pub test_accuracy: f64,
}

/// Samples `(features, reused within horizon)` of every block access in `[from, to)`.
fn samples(trace: &SimTrace, from: u64, to: u64, horizon_s: f64) -> Vec<([f64; 5], bool)> {
    let mut prev: Vec<Option<(AccessInfo, u32)>> = vec![None; trace.unique_blocks as usize];
    let mut out = Vec::new();
    for req in &trace.requests {
        for (j, k) in trace.keys_of(req).iter().enumerate() {
            let i = req.start as usize + j;
            let info = AccessInfo {
                time_ms: req.at_ms,
                next_use: u64::MAX,
                session: Some(req.session),
                turn: req.turn,
                depth: j as u32,
                session_start_ms: req.session_start_ms,
            };
            let slot = &mut prev[k.0 as usize];
            if (from..to).contains(&req.at_ms) {
                let x = LogisticModel::features(&info, slot.as_ref().map(|p| &p.0), slot.map_or(0, |p| p.1));
                let reused = match trace.next_use[i] {
                    u32::MAX => false,
                    n => {
                        let at = trace.requests[n as usize].at_ms;
                        // Labels must not look past the range's end.
                        at < to && (at - req.at_ms) as f64 <= horizon_s * 1e3
                    }
                };
                out.push((x, reused));
            }
            *slot = Some((info, slot.map_or(1, |p| p.1 + 1)));
        }
    }
    out
}

fn evaluate(model: &LogisticModel, data: &[([f64; 5], bool)]) -> (f64, f64) {
    if data.is_empty() {
        return (0.0, 0.0);
    }
    let mut loss = 0.0;
    let mut right = 0u64;
    for (x, y) in data {
        let p = model.predict(x).clamp(1e-9, 1.0 - 1e-9);
        loss -= if *y { p.ln() } else { (1.0 - p).ln() };
        right += u64::from((p >= 0.5) == *y);
    }
    (loss / data.len() as f64, right as f64 / data.len() as f64)
}

/// Trains the learned policy's logistic regression (full-batch gradient descent on
/// standardised features) on the accesses of the first `train_fraction` of the trace's time:
/// label = the block is used again within `horizon_s` (and before the split). Reports the fit
/// on the training range and on the disjoint test range after it.
pub fn train_learned(trace: &SimTrace, train_fraction: f64, horizon_s: f64) -> Trained {
    let split = split_ms(trace, train_fraction);
    let mut train = samples(trace, 0, split, horizon_s);
    let test = samples(trace, split, u64::MAX, horizon_s);
    // Bounded work: keep every n-th sample.
    let stride = (train.len() / 100_000).max(1);
    if stride > 1 {
        train = train.into_iter().step_by(stride).collect();
    }
    let n = train.len().max(1) as f64;
    let mut mean = [0.0; 5];
    let mut scale = [1.0; 5];
    for f in 0..5 {
        mean[f] = train.iter().map(|s| s.0[f]).sum::<f64>() / n;
        let var = train.iter().map(|s| (s.0[f] - mean[f]).powi(2)).sum::<f64>() / n;
        scale[f] = if var > 0.0 { var.sqrt() } else { 1.0 };
    }
    let mut model = LogisticModel { bias: 0.0, weights: [0.0; 5], mean, scale, horizon_s };
    for _ in 0..300 {
        let mut gb = 0.0;
        let mut gw = [0.0; 5];
        for (x, y) in &train {
            let err = model.predict(x) - f64::from(u8::from(*y));
            gb += err;
            for (f, g) in gw.iter_mut().enumerate() {
                *g += err * (x[f] - mean[f]) / scale[f];
            }
        }
        model.bias -= 0.5 * gb / n;
        for (w, g) in model.weights.iter_mut().zip(gw) {
            *w -= 0.5 * g / n;
        }
    }
    let (train_log_loss, train_accuracy) = evaluate(&model, &train);
    let (test_log_loss, test_accuracy) = evaluate(&model, &test);
    Trained {
        model,
        split_ms: split,
        train_samples: train.len() as u64,
        train_log_loss,
        test_log_loss,
        train_accuracy,
        test_accuracy,
    }
}

/// How far ahead the learned policy's training label looks: a block counts as reused when it is
/// used again within this many seconds (and before the split).
pub const LEARNED_HORIZON_S: f64 = 300.0;

/// The learned policy on one trace (`sim.json`'s `learned`): its training, and the trained model
/// and LRU on both ranges at the held-out capacity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LearnedReport {
    pub trace: String,
    pub training: Trained,
    pub held_out: HeldOut,
    pub lru: HeldOut,
}

/// Trains the learned policy on the first `cfg.train_fraction` of `trace`'s time
/// ([`train_learned`], [`LEARNED_HORIZON_S`]) and evaluates it, and LRU, on both ranges with the
/// swept tier at `capacity` (the sweep's [`held_out_capacity`]) and `cfg`'s fixed tiers.
pub fn learned_report(
    trace: &SimTrace,
    cfg: &SweepConfig,
    capacity: Capacity,
) -> Result<LearnedReport, SimError> {
    let training = train_learned(trace, cfg.train_fraction, LEARNED_HORIZON_S);
    let tiers = swept_tiers(trace, cfg, capacity)?;
    let model = PolicySpec::Learned { model: training.model };
    let trained = held_out(trace, model, &tiers, cfg.tier_model, training.split_ms);
    let lru = held_out(trace, PolicyKind::Lru.into(), &tiers, cfg.tier_model, training.split_ms);
    Ok(LearnedReport { trace: trace.name.clone(), training, held_out: trained, lru })
}

/// The conversation-aware weights tuned on one trace (`sim.json`'s `tuned`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TunedReport {
    pub trace: String,
    pub result: Tuned,
}

/// [`tune_conversation_aware`] on `trace` with the swept tier at `capacity` and `cfg`'s fixed
/// tiers, split at `cfg.train_fraction`.
pub fn tuned_report(
    trace: &SimTrace,
    cfg: &SweepConfig,
    capacity: Capacity,
) -> Result<TunedReport, SimError> {
    let tiers = swept_tiers(trace, cfg, capacity)?;
    let result = tune_conversation_aware(trace, &tiers, cfg.tier_model, cfg.train_fraction);
    Ok(TunedReport { trace: trace.name.clone(), result })
}

/// The default capacities of a sweep: 12 from 1% to 100% of the largest trace's unique blocks
/// (geometric), and inf.
pub fn default_capacities(traces: &[SimTrace]) -> Vec<Capacity> {
    let unique = traces.iter().map(|t| t.unique_blocks).max().unwrap_or(1).max(1) as f64;
    let mut caps: Vec<Capacity> = (0..12)
        .map(|i| Capacity::Blocks((unique * 0.01 * 100f64.powf(f64::from(i) / 11.0)).round().max(1.0) as u64))
        .collect();
    caps.dedup();
    caps.push(Capacity::Infinite);
    caps
}

/// The capacity the held-out reports use: the middle finite one of the sweep's (infinite when
/// it has none).
pub fn held_out_capacity(capacities: &[Capacity]) -> Capacity {
    let finite: Vec<Capacity> = capacities.iter().copied().filter(|c| *c != Capacity::Infinite).collect();
    finite.get(finite.len() / 2).copied().unwrap_or(Capacity::Infinite)
}

/// The tiers of one point of the sweep: the swept tier at `capacity` and the fixed ones, in tier
/// order.
fn swept_tiers(trace: &SimTrace, cfg: &SweepConfig, capacity: Capacity) -> Result<Vec<TierConfig>, SimError> {
    let mut tiers = vec![TierConfig {
        tier: cfg.tier,
        capacity_blocks: capacity.blocks(trace.block_tokens, cfg.kv.as_ref())?,
    }];
    for &(tier, c) in &cfg.fixed {
        tiers.push(TierConfig { tier, capacity_blocks: c.blocks(trace.block_tokens, cfg.kv.as_ref())? });
    }
    tiers.sort_by_key(|t| t.tier);
    Ok(tiers)
}

/// Hit ratios of one policy on the training and the test range of a trace (the cache is warmed
/// by everything before each counted request).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldOut {
    pub policy: String,
    pub capacity_blocks: u64,
    pub train_token_hit_ratio: f64,
    pub test_token_hit_ratio: f64,
}

/// Evaluates `policy` on both ranges split at `split`.
pub fn held_out(
    trace: &SimTrace,
    policy: PolicySpec,
    tiers: &[TierConfig],
    tier_model: TierModel,
    split: u64,
) -> HeldOut {
    let run = |from, to| {
        let cfg = ReplayConfig {
            tiers: tiers.to_vec(),
            tier_model,
            policy,
            from_ms: from,
            to_ms: to,
            cost: None,
            max_num_batched_tokens: 8192,
        };
        replay(trace, &cfg).token_hit_ratio()
    };
    HeldOut {
        policy: policy.name().to_owned(),
        capacity_blocks: tiers.first().map_or(0, |t| t.capacity_blocks),
        train_token_hit_ratio: run(0, split),
        test_token_hit_ratio: run(split, u64::MAX),
    }
}

/// The result of [`tune_conversation_aware`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tuned {
    pub best: ConversationWeights,
    pub split_ms: u64,
    pub candidates: u64,
    /// The best setting, and LRU, on the training range (where it was chosen) and the held-out
    /// test range.
    pub tuned: HeldOut,
    pub lru: HeldOut,
}

/// Grid search over [`ConversationWeights`] (turn, depth, finished penalty and turn) on the
/// first `train_fraction` of the trace's time, best token hit ratio wins (ties: the earlier
/// candidate); reported on the held-out rest.
pub fn tune_conversation_aware(
    trace: &SimTrace,
    tiers: &[TierConfig],
    tier_model: TierModel,
    train_fraction: f64,
) -> Tuned {
    let split = split_ms(trace, train_fraction);
    let mut grid = Vec::new();
    for turn in [0.0, 10.0, 30.0, 100.0, 300.0] {
        for depth in [0.0, 0.1, 0.5, 2.0] {
            for (finished, finished_turn) in [(0.0, 0), (60.0, 3), (600.0, 3), (60.0, 6), (600.0, 6)] {
                grid.push(ConversationWeights { turn, depth, finished, finished_turn });
            }
        }
    }
    let scores: Vec<f64> = grid
        .par_iter()
        .map(|w| held_out_train(trace, PolicySpec::Conversation { weights: *w }, tiers, tier_model, split))
        .collect();
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
        }
    }
    let weights = grid[best];
    Tuned {
        best: weights,
        split_ms: split,
        candidates: grid.len() as u64,
        tuned: held_out(trace, PolicySpec::Conversation { weights }, tiers, tier_model, split),
        lru: held_out(trace, PolicyKind::Lru.into(), tiers, tier_model, split),
    }
}

fn held_out_train(
    trace: &SimTrace,
    policy: PolicySpec,
    tiers: &[TierConfig],
    tier_model: TierModel,
    split: u64,
) -> f64 {
    let cfg = ReplayConfig {
        tiers: tiers.to_vec(),
        tier_model,
        policy,
        from_ms: 0,
        to_ms: split,
        cost: None,
        max_num_batched_tokens: 8192,
    };
    replay(trace, &cfg).token_hit_ratio()
}
