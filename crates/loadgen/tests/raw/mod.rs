//! A raw HTTP/1.1 server on 127.0.0.1 that plays a script per request: for answers no
//! well-behaved HTTP library would send (resets after the headers, bodies that never end,
//! one byte at a time, keep-alive connections closed after N requests).

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod cases;

/// One step of an answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes at once.
    Write(Vec<u8>),
    /// Write these bytes one at a time, this long apart.
    Trickle(Vec<u8>, Duration),
    /// Write these bytes `times` times (generated as they go, never held whole).
    Repeat(Vec<u8>, u64),
    /// Write these bytes every `Duration`, until the client goes away.
    Forever(Vec<u8>, Duration),
    /// Reset the connection (RST) and stop.
    Reset,
    /// Close the connection (FIN) and stop.
    Close,
}

/// The answer to one request: `steps` run in order; afterwards the connection is kept for the
/// next request unless a step ended it.
pub type Script = Arc<dyn Fn(ReqInfo) -> Vec<Step> + Send + Sync>;

/// Which request this is.
#[derive(Debug, Clone, Copy)]
pub struct ReqInfo {
    /// 0-based across the server.
    pub nth: usize,
    /// 0-based on its connection.
    pub on_connection: usize,
}

pub struct RawServer {
    pub url: String,
    /// Requests read in full.
    pub received: Arc<AtomicUsize>,
    /// Bytes of answer written (to show a cap cut a body short).
    pub written: Arc<std::sync::atomic::AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP/1.1 head: status line and headers, then a blank line.
pub fn head(status: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// A complete answer with `Content-Length`, keep-alive.
pub fn with_length(status: &str, content_type: &str, extra: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let len = body.len().to_string();
    let mut headers = vec![("Content-Type", content_type), ("Content-Length", len.as_str())];
    headers.extend_from_slice(extra);
    let mut out = head(status, &headers);
    out.extend_from_slice(body);
    out
}

/// A streaming head without a length: the body ends when the connection closes.
pub fn sse_head() -> Vec<u8> {
    head("200 OK", &[("Content-Type", "text/event-stream"), ("Connection", "close")])
}

/// A small valid completion stream of `n` content chunks (`é`), usage and `[DONE]`.
pub fn sse_body(n: u32) -> String {
    let mut s = String::new();
    for i in 0..n {
        let finish = if i + 1 == n { "\"length\"" } else { "null" };
        s.push_str(&format!("data: {{\"choices\":[{{\"text\":\"é\",\"finish_reason\":{finish}}}]}}\n\n"));
    }
    s.push_str(&format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":{n}}}}}\n\n"
    ));
    s.push_str("data: [DONE]\n\n");
    s
}

/// A kept-alive chunked streaming head.
pub fn chunked_head() -> Vec<u8> {
    head("200 OK", &[("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")])
}

/// `body` as a chunked body: one chunk per event, then the last chunk.
pub fn chunked(body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for event in body.split_inclusive("\n\n") {
        out.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Starts a server that answers each request with `script`, on its own thread.
pub fn start_raw(script: impl Fn(ReqInfo) -> Vec<Step> + Send + Sync + 'static) -> RawServer {
    let script: Script = Arc::new(script);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.set_nonblocking(true).expect("nonblocking listener");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let received = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (rcv, wrt) = (received.clone(), written.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let accept = async {
                loop {
                    let Ok((sock, _)) = listener.accept().await else { return };
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(serve(sock, script.clone(), rcv.clone(), wrt.clone()));
                }
            };
            tokio::select! {
                () = accept => {}
                _ = rx => {}
            }
        });
    });
    RawServer { url, received, written, shutdown: Some(tx), thread: Some(thread) }
}

async fn serve(
    mut sock: TcpStream,
    script: Script,
    received: Arc<AtomicUsize>,
    written: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut on_connection = 0;
    loop {
        if !read_request(&mut sock).await {
            return;
        }
        let nth = received.fetch_add(1, Ordering::SeqCst);
        for step in script(ReqInfo { nth, on_connection }) {
            let ok = match step {
                Step::Write(b) => write(&mut sock, &b, &written).await,
                Step::Trickle(b, every) => {
                    let mut ok = true;
                    for byte in b {
                        ok = write(&mut sock, &[byte], &written).await;
                        if !ok {
                            break;
                        }
                        tokio::time::sleep(every).await;
                    }
                    ok
                }
                Step::Repeat(b, times) => {
                    let mut ok = true;
                    for _ in 0..times {
                        ok = write(&mut sock, &b, &written).await;
                        if !ok {
                            break;
                        }
                    }
                    ok
                }
                Step::Forever(b, every) => {
                    while write(&mut sock, &b, &written).await {
                        tokio::time::sleep(every).await;
                    }
                    false
                }
                Step::Reset => {
                    // Linger 0 makes the close a reset; it does not block.
                    #[allow(deprecated)]
                    let _ = sock.set_linger(Some(Duration::ZERO));
                    false
                }
                Step::Close => {
                    let _ = sock.shutdown().await;
                    false
                }
            };
            if !ok {
                return; // dropping the socket closes (or resets) it
            }
        }
        on_connection += 1;
    }
}

async fn write(sock: &mut TcpStream, b: &[u8], written: &std::sync::atomic::AtomicU64) -> bool {
    let ok = sock.write_all(b).await.is_ok();
    if ok {
        written.fetch_add(b.len() as u64, Ordering::Relaxed);
    }
    ok
}

/// Reads one request (head and `Content-Length` body); false when the client closed first.
async fn read_request(sock: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return true;
            }
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The peak resident memory of this process (`VmHWM`), in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}

/// Resets the peak (`VmHWM`) to the current resident size; false where the kernel refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
