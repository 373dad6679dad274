//! Flattening of [`RequestRecord`]s into the `requests.csv` table (the writer is the caller's).

use crate::RequestRecord;

const HEADER: [&str; 19] = [
    "id",
    "warmup",
    "intended",
    "sent",
    "first_byte",
    "first_token",
    "end",
    "ttft_ms",
    "e2el_ms",
    "tpot_ms",
    "prompt_tokens",
    "output_tokens",
    "cached_tokens",
    "token_source",
    "error_class",
    "error_detail",
    "session",
    "turn",
    "queued_until",
];

/// Column names of `requests.csv`, in the order of [`csv_row`].
pub fn csv_header() -> &'static [&'static str] {
    &HEADER
}

/// One `requests.csv` row: times in seconds on the run clock, latencies in ms; absent values
/// (no first token, no usage, no error, a failed request's latencies) are empty cells. Values
/// are unquoted; the writer quotes `error_detail` as CSV requires.
pub fn csv_row(r: &RequestRecord) -> Vec<String> {
    fn opt<T: ToString>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    let ok = r.error.is_none();
    vec![
        r.id.to_string(),
        r.warmup.to_string(),
        r.intended.to_string(),
        r.sent.to_string(),
        opt(r.first_byte),
        opt(r.first_token),
        r.end.to_string(),
        opt(ok.then(|| r.ttft() * 1000.0)),
        opt(ok.then(|| r.e2el() * 1000.0)),
        opt(r.tpot().filter(|_| ok).map(|s| s * 1000.0)),
        opt(r.prompt_tokens),
        r.output_tokens.to_string(),
        opt(r.cached_tokens),
        r.token_source.as_str().to_string(),
        opt(r.error.as_ref().map(|e| e.class())),
        opt(r.error.as_ref().map(|e| e.detail())),
        opt(r.session),
        opt(r.turn),
        opt(r.queued_until),
    ]
}
