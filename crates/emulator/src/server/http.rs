//! The HTTP connections: accepted under `max_connections`, told to close at a stop, closed
//! lingering when the client is still sending.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Serves `app` on `listener` until `stop` completes, then lets open connections finish (they
/// are told to close after their current request) and returns when all have closed. At most
/// `max_connections` connections are open at once: past that, accepting waits for one to close.
pub(crate) async fn serve_http(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    // Each connection task holds a receiver: all have ended when `closed` resolves.
    let (close_tx, close_rx) = watch::channel(());
    let (signal_tx, signal_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let tcp = tokio::select! {
            c = listener.accept() => match c {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        // Out of file descriptors, most likely: wait for some to close.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // As uvicorn (asyncio) does: without it, a response written in two parts waits for the
        // client's delayed ACK (40 ms) and every streamed token can be held back by Nagle.
        let _ = tcp.set_nodelay(true);
        // A second handle on the socket outlives hyper's, for the lingering close below.
        let Some((tcp, linger)) = with_second_handle(tcp) else { continue };
        let service = TowerToHyperService::new(app.clone());
        let mut signal = signal_rx.clone();
        let close = close_rx.clone();
        tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // The only change is to `true` (or the sender went away): stop either way.
                _ = signal.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            lingering_close(linger).await;
            drop(permit);
            drop(close);
        });
    }
    drop(listener);
    let _ = signal_tx.send(true);
    drop(close_rx);
    close_tx.closed().await;
}

/// The stream for hyper, and a duplicate handle on the same socket that keeps it open after
/// hyper drops its own (`None` when the socket cannot be duplicated: the connection is dropped).
fn with_second_handle(tcp: tokio::net::TcpStream) -> Option<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std = tcp.into_std().ok()?;
    let second = std.try_clone().ok()?;
    Some((tokio::net::TcpStream::from_std(std).ok()?, second))
}

/// Lingering close, as nginx and Apache do it: when the client is still sending (a body the
/// server refused with 413 without reading it), read and discard for up to a second before
/// closing. Closing a socket with unread input sends a reset, which can destroy the response
/// before the client reads it. A connection with nothing pending closes at once.
async fn lingering_close(sock: std::net::TcpStream) {
    use std::io::Read as _;
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 16 * 1024];
    // The handle is non-blocking: `WouldBlock` means nothing is pending.
    match (&sock).read(&mut buf) {
        Ok(n) if n > 0 => {}
        _ => return,
    }
    let Ok(mut tcp) = tokio::net::TcpStream::from_std(sock) else { return };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}
