//! The server on a runtime of its own keeps serving while the caller's runtime is blocked, and
//! is gone after its shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use emulator::thread::ServerThread;
use emulator::{EmulatorConfig, Server, TierPreset};

/// `GET /health` over a plain socket from this thread: the status line, or why not.
fn health(addr: SocketAddr) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut buf = [0u8; 64];
        let n = tcp.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned())
    };
    attempt().unwrap_or_else(|e| format!("no answer: {:?}", e.kind()))
}

/// Starts the server with `start` on a current-thread runtime, then blocks that runtime's only
/// thread while another thread asks for `/health`.
fn answer_while_caller_blocked(thread: bool) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cfg = EmulatorConfig::for_tier(TierPreset::Baseline);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let _server: Box<dyn std::any::Any> = if thread {
        Box::new(rt.block_on(ServerThread::start(&cfg, listener)).unwrap())
    } else {
        Box::new(rt.block_on(Server::start(&cfg, listener)).unwrap())
    };
    // The caller's runtime does not run while this thread waits for the answer.
    std::thread::spawn(move || health(addr)).join().unwrap()
}

#[test]
fn serves_while_the_callers_runtime_is_busy() {
    // On the caller's runtime, the server cannot answer while that runtime is blocked: the
    // check can fail.
    assert_eq!(answer_while_caller_blocked(false), "no answer: WouldBlock");
    assert_eq!(answer_while_caller_blocked(true), "HTTP/1.1 200 OK");
}

#[test]
fn shutdown_stops_serving() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cfg = EmulatorConfig::for_tier(TierPreset::Baseline);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let server = rt.block_on(ServerThread::start(&cfg, listener)).unwrap();
    let addr = server.local_addr();
    assert_eq!(health(addr), "HTTP/1.1 200 OK");
    rt.block_on(server.shutdown()).unwrap();
    assert_eq!(health(addr), "no answer: ConnectionRefused");
}
