//! Prompt tokens by where the engine found them, from the counters it exports: the lab's answer
//! to "which tier served this run?".
//!
//! Read from a run's `samples/engine.csv` (long format), as the counters moved over the run's
//! measured requests (from the scrape at the end of its warm-up requests, for a run with some;
//! else from zero for an engine the lab started, which counts from its start, or from the first
//! scrape):
//! - `vllm:prompt_tokens_by_source_total{source=...}` (vLLM, and the emulator under the same name):
//!   `local_compute` is `computed`, `local_cache_hit` is `gpu`, `external_kv_transfer` is what the
//!   connector (LMCache) loaded;
//! - the connector's tokens go to the tier that served them: per tier where the engine says
//!   (the emulator's `kvlab_tier_hit_tokens_total{tier=...}`), else all to the run's tier (a
//!   vLLM run has one LMCache backend).

use std::collections::BTreeMap;

use crate::Table;

const BY_SOURCE: &str = "vllm:prompt_tokens_by_source_total";
const TIER_HITS: &str = "kvlab_tier_hit_tokens_total";

/// Where an engine's counters count from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CounterOrigin {
    /// The lab started the engine for the run: its counters started at zero (a request that
    /// was scheduled before the first scrape still counts).
    EngineStart,
    /// An engine that served before the run (`--engine external`): the first scrape.
    FirstScrape,
    /// The scrape at this `t` (seconds on the run clock), taken after the warm-up requests had
    /// ended and before the first measured one went out: the counters then are the warm-up's
    /// and what came before it; a series that first shows later counts from zero (the engine
    /// exports a labelled series once it has counted something). Without any scrape by then there
    /// is no origin, and nothing is counted.
    Scrape(f64),
}

/// `computed`, `gpu` and one entry per offload tier that served tokens (`cpu`, `disk`,
/// `redis`); `None` when the engine has no `prompt_tokens_by_source` counter.
pub fn tokens_by_source(engine: &Table, tier: &str, origin: CounterOrigin) -> Option<BTreeMap<String, u64>> {
    let label_deltas = |metric, label| label_deltas(engine, metric, label, origin);
    let by_source = label_deltas(BY_SOURCE, "source");
    if by_source.is_empty() {
        return None;
    }
    let get = |k: &str| by_source.get(k).copied().unwrap_or(0);
    let mut out = BTreeMap::from([
        ("computed".to_owned(), get("local_compute")),
        ("gpu".to_owned(), get("local_cache_hit")),
    ]);
    let external = get("external_kv_transfer");
    let per_tier = label_deltas(TIER_HITS, "tier");
    if per_tier.is_empty() {
        if external > 0 || tier != "baseline" {
            out.insert(tier.to_owned(), external);
        }
    } else {
        for (t, n) in per_tier {
            // kvcache's name of the Redis tier is `remote`.
            let name = if t == "remote" { "redis".to_owned() } else { t };
            *out.entry(name).or_default() += n;
        }
    }
    Some(out)
}

/// Per value of `label`: the counter's last value minus its origin (counters of an engine that
/// restarted are not handled: the lab starts one per run).
fn label_deltas(engine: &Table, metric: &str, label: &str, origin: CounterOrigin) -> BTreeMap<String, u64> {
    let (Some(t), Some(m), Some(l), Some(v)) =
        (engine.column("t"), engine.column("metric"), engine.column("labels"), engine.column("value"))
    else {
        return BTreeMap::new();
    };
    let at = |row: &Vec<String>| row.get(t).and_then(|c| c.parse::<f64>().ok());
    if let CounterOrigin::Scrape(from) = origin {
        if !engine.rows.iter().any(|row| at(row).is_some_and(|at| at <= from)) {
            return BTreeMap::new();
        }
    }
    // Per key: the origin's value and the last.
    let mut first_last: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for row in &engine.rows {
        if row.get(m).map(String::as_str) != Some(metric) {
            continue;
        }
        let Some(value) = row.get(v).and_then(|c| c.parse::<f64>().ok()).filter(|x| x.is_finite()) else {
            continue;
        };
        let Some(key) = row.get(l).and_then(|labels| label_value(labels, label)) else { continue };
        let first = if origin == CounterOrigin::FirstScrape { value } else { 0.0 };
        let entry = first_last.entry(key).or_insert((first, value));
        entry.1 = value;
        if let (CounterOrigin::Scrape(from), Some(at)) = (origin, at(row)) {
            if at <= from {
                entry.0 = value;
            }
        }
    }
    first_last.into_iter().map(|(k, (first, last))| (k, (last - first).max(0.0).round() as u64)).collect()
}

/// The value of `name` in a label set as `engine.csv` writes it (`a="x",b="y"`).
/// The labels are sorted by name and the values this module asks for hold no quote.
fn label_value(labels: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start =
        if labels.starts_with(&key) { key.len() } else { labels.find(&format!(",{key}"))? + key.len() + 1 };
    let rest = &labels[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(csv: &str, tier: &str, expect: Option<&[(&str, u64)]>) {
        let table = Table {
            columns: ["t", "metric", "labels", "value"].map(str::to_owned).to_vec(),
            rows: csv
                .lines()
                .map(|l| {
                    // t;metric;labels;value (labels hold commas).
                    l.split(';').map(str::to_owned).collect()
                })
                .collect(),
        };
        let got = tokens_by_source(&table, tier, CounterOrigin::FirstScrape);
        let expect = expect.map(|e| e.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect());
        assert_eq!(got, expect);
    }

    #[test]
    fn emulator_splits_by_tier_and_takes_the_run_s_delta() {
        let rows = "\
0;vllm:prompt_tokens_by_source_total;model_name=\"m\",source=\"local_compute\";100
0;vllm:prompt_tokens_by_source_total;model_name=\"m\",source=\"local_cache_hit\";0
0;vllm:prompt_tokens_by_source_total;model_name=\"m\",source=\"external_kv_transfer\";0
0;kvlab_tier_hit_tokens_total;model_name=\"m\",tier=\"disk\";0
5;vllm:prompt_tokens_by_source_total;model_name=\"m\",source=\"local_compute\";1100
5;vllm:prompt_tokens_by_source_total;model_name=\"m\",source=\"local_cache_hit\";512
5;vllm:prompt_tokens_by_source_total;model_name=\"m\",source=\"external_kv_transfer\";768
5;kvlab_tier_hit_tokens_total;model_name=\"m\",tier=\"disk\";768";
        check(rows, "disk", Some(&[("computed", 1000), ("disk", 768), ("gpu", 512)]));
    }

    #[test]
    fn vllm_gives_the_connector_s_tokens_to_the_run_s_tier() {
        let rows = "\
1;vllm:prompt_tokens_by_source_total;engine=\"0\",source=\"local_compute\";10
1;vllm:prompt_tokens_by_source_total;engine=\"0\",source=\"external_kv_transfer\";0
9;vllm:prompt_tokens_by_source_total;engine=\"0\",source=\"local_compute\";4010
9;vllm:prompt_tokens_by_source_total;engine=\"0\",source=\"external_kv_transfer\";2048";
        check(rows, "redis", Some(&[("computed", 4000), ("gpu", 0), ("redis", 2048)]));
        // The baseline tier has no connector: no tier entry.
        let base = "1;vllm:prompt_tokens_by_source_total;engine=\"0\",source=\"local_compute\";5";
        check(base, "baseline", Some(&[("computed", 0), ("gpu", 0)]));
    }

    #[test]
    fn an_engine_the_lab_started_counts_from_zero() {
        let table = Table {
            columns: ["t", "metric", "labels", "value"].map(str::to_owned).to_vec(),
            rows: vec![["0.2", BY_SOURCE, "source=\"local_compute\"", "2048"].map(str::to_owned).to_vec()],
        };
        let got = tokens_by_source(&table, "cpu", CounterOrigin::EngineStart).unwrap();
        assert_eq!(got["computed"], 2048);
    }

    #[test]
    fn a_run_with_warm_up_counts_from_the_scrape_at_its_end() {
        let rows = "\
0;vllm:prompt_tokens_by_source_total;source=\"local_compute\";0
0;kvlab_tier_hit_tokens_total;tier=\"cpu\";0
1.5;vllm:prompt_tokens_by_source_total;source=\"local_compute\";300
1.5;vllm:prompt_tokens_by_source_total;source=\"external_kv_transfer\";0
2.25;vllm:prompt_tokens_by_source_total;source=\"local_compute\";400
2.25;vllm:prompt_tokens_by_source_total;source=\"local_cache_hit\";16
2.25;vllm:prompt_tokens_by_source_total;source=\"external_kv_transfer\";256
2.25;kvlab_tier_hit_tokens_total;tier=\"cpu\";256
3;vllm:prompt_tokens_by_source_total;source=\"local_compute\";1400
3;vllm:prompt_tokens_by_source_total;source=\"local_cache_hit\";48
3;vllm:prompt_tokens_by_source_total;source=\"external_kv_transfer\";2304
3;kvlab_tier_hit_tokens_total;tier=\"cpu\";2304";
        let table = Table {
            columns: ["t", "metric", "labels", "value"].map(str::to_owned).to_vec(),
            rows: rows.lines().map(|l| l.split(';').map(str::to_owned).collect()).collect(),
        };
        let got = |origin| tokens_by_source(&table, "cpu", origin).map(|m| m.into_iter().collect::<Vec<_>>());
        let own = |v: &[(&str, u64)]| Some(v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect::<Vec<_>>());
        // The scrape at 2.25 s ended the warm-up: the measured requests' share alone.
        assert_eq!(got(CounterOrigin::Scrape(2.25)), own(&[("computed", 1000), ("cpu", 2048), ("gpu", 32)]));
        // The same rows from the engine's start count the warm-up too.
        assert_eq!(got(CounterOrigin::EngineStart), own(&[("computed", 1400), ("cpu", 2304), ("gpu", 48)]));
        // Without any scrape by the end of the warm-up there is no origin: nothing is claimed.
        assert_eq!(got(CounterOrigin::Scrape(-1.0)), None);
    }

    #[test]
    fn an_engine_without_the_counter_says_nothing() {
        check("1;llamacpp:prompt_tokens_total;;5", "cpu", None);
    }
}
