//! Property tests of the Prometheus text parser used by the engine-metrics sampler: what an
//! engine exposes parses back exactly (colons in names, escaped label values, NaN and
//! infinities, timestamps, comments); on any edit, no panic, and every error names its line.

use proptest::prelude::*;
use samplers::{parse_exposition, PromSample};
use testkit::edits::{apply, edit};

fn sample() -> impl Strategy<Value = PromSample> {
    (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,16}",
        prop::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,8}", "[a-z0-9 \"\\\\\né{}=,#]{0,10}"), 0..4),
        prop_oneof![
            6 => any::<f64>().prop_filter("finite", |v| v.is_finite()),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
        ],
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(metric, labels, value, timestamp_ms)| PromSample {
            metric,
            labels,
            value,
            timestamp_ms,
        })
}

fn render(s: &PromSample) -> String {
    let labels: Vec<String> = s
        .labels
        .iter()
        .map(|(k, v)| {
            format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
        })
        .collect();
    let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
    let value = match s.value {
        v if v.is_nan() => "NaN".to_owned(),
        v if v == f64::INFINITY => "+Inf".to_owned(),
        v if v == f64::NEG_INFINITY => "-Inf".to_owned(),
        v => v.to_string(),
    };
    let ts = s.timestamp_ms.map(|t| format!(" {t}")).unwrap_or_default();
    format!("{}{labels} {value}{ts}", s.metric)
}

fn same(a: &PromSample, b: &PromSample) -> bool {
    a.metric == b.metric
        && a.labels == b.labels
        && a.timestamp_ms == b.timestamp_ms
        && (a.value == b.value || (a.value.is_nan() && b.value.is_nan()))
}

/// The text of `samples` with a `# HELP` / `# TYPE` pair before each and CRLF where asked.
fn exposition(samples: &[PromSample], crlf: bool) -> String {
    let eol = if crlf { "\r\n" } else { "\n" };
    samples
        .iter()
        .map(|s| format!("# HELP {m} Some help.{eol}# TYPE {m} gauge{eol}{}{eol}", render(s), m = s.metric))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(samples in prop::collection::vec(sample(), 0..6), crlf in any::<bool>()) {
        let text = exposition(&samples, crlf);
        let parsed = parse_exposition(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(parsed.len(), samples.len());
        for (p, s) in parsed.iter().zip(&samples) {
            prop_assert!(same(p, s), "{:?} != {:?}", p, s);
        }
    }

    #[test]
    fn edited_expositions(samples in prop::collection::vec(sample(), 1..5), edits in prop::collection::vec(edit(), 1..3)) {
        let text = edits.iter().fold(exposition(&samples, false), |t, e| apply(&t, e).0);
        if let Err(e) = parse_exposition(&text) {
            prop_assert!(e.line >= 1 && e.line <= text.lines().count(), "line {} of {}", e.line, text);
            let prefix = format!("line {}: {}: ", e.line, e.field);
            prop_assert!(e.to_string().starts_with(&prefix), "{}", e);
            prop_assert!(!e.field.is_empty() && !e.message.is_empty(), "{}", e);
        }
    }

    #[test]
    fn arbitrary_text(text in "(.{0,60}\n){0,6}") {
        if let Err(e) = parse_exposition(&text) {
            prop_assert!(e.line >= 1 && e.line <= text.lines().count(), "line {} of {:?}", e.line, text);
        }
    }
}
