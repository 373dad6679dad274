//! Hostile servers: each case is classified, keeps `completed + failed == sent`, and panics
//! nowhere. The cases are one table (`raw/cases.rs`); `hostile_memory.rs` runs the same table in
//! a process of its own and measures the client's memory in each.

mod common;
mod raw;

use std::time::{Duration, Instant};

use common::{config, plan};
use raw::{head, start_raw, Step};
use workload::Mode;

#[tokio::test]
async fn every_hostile_case_is_classified() {
    let cases = raw::cases::all();
    assert!(cases.len() >= 18, "the table lost cases: {}", cases.len());
    for case in &cases {
        let started = Instant::now();
        case.check().await;
        // The caps and timeouts end each case early: nothing waits for a 1 GB body or a stream
        // that never ends.
        assert!(started.elapsed() < Duration::from_secs(20), "{}: {:?}", case.name, started.elapsed());
    }
}

/// An endless `GET /v1/models` answer: model discovery stops at its cap with a clear error.
#[tokio::test]
async fn endless_model_list() {
    let server = start_raw(|_| {
        vec![
            Step::Write(head("200 OK", &[("Content-Type", "application/json"), ("Connection", "close")])),
            Step::Write(br#"{"data":[{"id":""#.to_vec()),
            Step::Forever(vec![b'm'; 64 << 10], Duration::ZERO),
        ]
    });
    let mut c = config(&server.url);
    c.model = None;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut sink = loadgen::ResultWriter::in_dir(tmp.path()).expect("result dir");
    let err = loadgen::run(&plan(1, 2, Mode::Open), &c, &mut sink, Instant::now()).await.unwrap_err();
    assert_eq!(
        err.to_string().replace(&server.url, "URL"),
        "no model configured and none discovered from URL/v1/models: the answer is longer than 1048576 bytes"
    );
}
