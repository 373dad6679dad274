//! The token ids a run against a server given with `--url` draws: below the vocabulary of the
//! model it serves, where the registry knows that model or `--vocab-size` gives its size, and a
//! hint naming `--vocab-size` when the server refuses the ids. The server here stands in for a
//! small-vocabulary vLLM: it lists one model, refuses another model's name (404) and any prompt
//! with a token id at or past its vocabulary (400, in vLLM's words), and streams two tokens
//! otherwise.

mod common;

use std::path::Path;

use common::workspace;
use engines::EngineKind;
use lab::run::{bench, BenchOptions};
use schema::config::Tier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server of `model` whose vocabulary has `vocab` tokens, on 127.0.0.1; its base URL.
async fn small_vocab_server(model: &'static str, vocab: u32) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            tokio::spawn(answer(sock, model, vocab));
        }
    });
    url
}

/// Reads one request and answers it; the connection is closed after each answer.
async fn answer(mut sock: tokio::net::TcpStream, model: &str, vocab: u32) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let (head, body) = loop {
        let Ok(n) = sock.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let len = text[..end]
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            break (text[..end].to_owned(), buf[end + 4..end + 4 + len].to_vec());
        }
    };
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let (status, content_type, reply) = match request_line.split(' ').take(2).collect::<Vec<_>>()[..] {
        ["GET", "/health"] => (200, "text/plain", String::new()),
        ["GET", "/metrics"] => (200, "text/plain", String::new()),
        ["GET", "/v1/models"] => (
            200,
            "application/json",
            serde_json::json!({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "vllm"}]})
                .to_string(),
        ),
        ["POST", "/v1/completions"] => completion(&body, model, vocab),
        _ => (404, "text/plain", "not found".to_owned()),
    };
    let reason = if status == 200 { "OK" } else { "Error" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// A completion: refused as vLLM refuses it, or two tokens streamed with usage.
fn completion(body: &[u8], model: &str, vocab: u32) -> (u16, &'static str, String) {
    let error = |status: u16, message: String| {
        let body = serde_json::json!({"error": {"message": message, "type": "BadRequestError", "param": null, "code": status}});
        (status, "application/json", body.to_string())
    };
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(body) else {
        return error(400, "invalid request body".to_owned());
    };
    if req["model"] != model {
        return error(404, format!("The model `{}` does not exist.", req["model"]));
    }
    let ids: Vec<u64> = req["prompt"].as_array().into_iter().flatten().filter_map(|t| t.as_u64()).collect();
    if let Some(max) = ids.iter().copied().filter(|&id| id >= u64::from(vocab)).max() {
        return error(400, format!("Token id {max} is out of vocabulary"));
    }
    let usage = serde_json::json!({"prompt_tokens": ids.len(), "completion_tokens": 2, "total_tokens": ids.len() + 2});
    let stream = format!(
        "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        serde_json::json!({"choices": [{"index": 0, "text": "a", "finish_reason": null}]}),
        serde_json::json!({"choices": [{"index": 0, "text": "b", "finish_reason": "length"}]}),
        serde_json::json!({"choices": [], "usage": usage}),
    );
    (200, "text/event-stream", stream)
}

/// What `cargo xtask loadgen --url URL --workload random` asks of the lab: six short requests,
/// two at a time, no `--model`.
fn loadgen_options(root: &Path, url: &str) -> BenchOptions {
    let mut opts = BenchOptions::new(root, Tier::Baseline);
    opts.engine = EngineKind::External;
    opts.url = Some(url.to_owned());
    opts.workload = Some("random".to_owned());
    opts.prompt_len = Some(64);
    opts.gen_len = Some(2);
    opts.num_requests = Some(6);
    opts.request_rate = Some(f64::INFINITY);
    opts.max_concurrency = Some(2);
    opts.progress = false;
    opts.ready_timeout = std::time::Duration::from_secs(10);
    opts.out = Some(root.join("results"));
    opts
}

/// `run.toml`'s model and token id range.
fn resolved(dir: &Path) -> (String, Option<(i64, i64)>) {
    let text = std::fs::read_to_string(dir.join("run.toml")).unwrap();
    let run: toml::Value = toml::from_str(&text).unwrap();
    let vocab = run["workload"].get("vocab").map(|v| {
        let v = v.as_array().unwrap();
        (v[0].as_integer().unwrap(), v[1].as_integer().unwrap())
    });
    (run["model"].as_str().unwrap().to_owned(), vocab)
}

/// A server of a registry model (the lab's tiny Llama, by its Hugging Face id), run without
/// `--model`: the run requests the model the server lists, and draws ids below its vocabulary
/// of 8,192 as a run that launches the engine does. The server refuses any other name and any
/// id past its vocabulary, so every request completing shows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_model_behind_url_gets_its_vocabulary() {
    let ws = workspace();
    let url = small_vocab_server("kvlab/tiny-llama-hf", 8192).await;
    let reports = bench(&loadgen_options(ws.path(), &url)).await.unwrap();
    let r = &reports[0];
    assert_eq!((r.summary.completed, r.summary.failed), (6, 0), "{}", r.table);
    assert_eq!(r.hint, None);
    assert_eq!(resolved(&r.dir), ("kvlab/tiny-llama-hf".to_owned(), Some((102, 8192))));
}

/// A model the registry does not know gets the default ids, which its server refuses: the run
/// says to pass `--vocab-size`, and with it every request completes; too small a size is
/// refused before anything runs, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_small_model_needs_vocab_size() {
    let ws = workspace();
    let url = small_vocab_server("my-small-model", 500).await;
    let opts = loadgen_options(ws.path(), &url);

    let reports = bench(&opts).await.unwrap();
    let r = &reports[0];
    assert_eq!((r.summary.completed, r.summary.failed), (0, 6), "{}", r.table);
    assert_eq!(resolved(&r.dir), ("my-small-model".to_owned(), None));
    let hint = r.hint.as_deref().expect("a hint for the refused ids");
    assert!(hint.contains("is out of vocabulary") && hint.contains("pass --vocab-size N"), "{hint}");
    let failed = lab::verdict::check_failures(&reports, 0.0).unwrap_err().to_string();
    assert!(failed.contains("6 of 6 requests failed") && failed.ends_with(hint), "{failed}");

    let mut sized = opts.clone();
    sized.vocab_size = Some(500);
    let reports = bench(&sized).await.unwrap();
    let r = &reports[0];
    assert_eq!((r.summary.completed, r.summary.failed), (6, 0), "{}", r.table);
    assert_eq!(resolved(&r.dir).1, Some((6, 500)));

    let mut tiny = opts.clone();
    tiny.vocab_size = Some(3);
    tiny.out = Some(ws.path().join("refused"));
    let err = bench(&tiny).await.unwrap_err().to_string();
    assert!(err.contains("--vocab-size 3: the model's vocabulary must have at least 16 tokens"), "{err}");
    assert!(!ws.path().join("refused").exists(), "a refused flag leaves no result directory");
}

/// `--vocab-size` wins over the registry: a registry model's server with a smaller vocabulary
/// than the registry says (a trimmed tokenizer) is served with the flag's range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vocab_size_wins_over_the_registry() {
    let ws = workspace();
    let url = small_vocab_server("kvlab/tiny-llama-hf", 1000).await;
    let mut opts = loadgen_options(ws.path(), &url);
    opts.vocab_size = Some(1000);
    let reports = bench(&opts).await.unwrap();
    let r = &reports[0];
    assert_eq!((r.summary.completed, r.summary.failed), (6, 0), "{}", r.table);
    assert_eq!(resolved(&r.dir).1, Some((12, 1000)));
}
