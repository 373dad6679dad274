//! The real-time server on a runtime of its own, on OS threads of its own.
//!
//! An engine embedded in the lab's process must not do its work where the load generator takes
//! its timestamps: [`ServerThread`] runs [`Server`] on a multi-thread tokio runtime whose worker
//! threads (`kvlab-emulator`, half the cores, at least one) serve HTTP and step the engine, and
//! nothing else. The caller's runtime only waits for it to start and stop.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{EmulatorConfig, Error, Server};

/// A [`Server`] running on its own runtime. Dropping it without [`ServerThread::shutdown`] stops
/// the server too (without waiting for it).
pub struct ServerThread {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<Result<(), Error>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Starts the engine on a new runtime and serves HTTP on `listener` (bound on any runtime;
    /// it moves to the new one). Fails as [`Server::start`] does, or when the threads cannot
    /// be started.
    pub async fn start(cfg: &EmulatorConfig, listener: TcpListener) -> Result<ServerThread, Error> {
        let io = |context: &str| {
            let context = context.to_owned();
            move |source| Error::Io { context, source }
        };
        let listener = listener.into_std().map_err(io("moving the listener to the emulator's runtime"))?;
        let workers = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("kvlab-emulator")
            .enable_all()
            .build()
            .map_err(io("starting the emulator's runtime"))?;
        let cfg = cfg.clone();
        let (started_tx, started_rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kvlab-emulator-main".into())
            .spawn(move || {
                rt.block_on(async move {
                    let started = match TcpListener::from_std(listener) {
                        Ok(listener) => Server::start(&cfg, listener).await,
                        Err(source) => Err(Error::Io { context: "emulator listener".to_owned(), source }),
                    };
                    let server = match started {
                        Ok(server) => {
                            let _ = started_tx.send(Ok(server.local_addr()));
                            server
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    // A stop, or the handle dropped.
                    let _ = stopped.await;
                    let _ = done_tx.send(server.shutdown().await);
                });
            })
            .map_err(io("starting the emulator's thread"))?;
        match started_rx.await {
            Ok(Ok(addr)) => Ok(ServerThread { addr, stop: Some(stop), done, thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Io {
                context: "emulator thread".to_owned(),
                source: std::io::Error::other("the emulator's thread ended before the server started"),
            }),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server as [`Server::shutdown`] does, then waits for its threads to end.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = (&mut self.done).await.unwrap_or_else(|_| {
            Err(Error::Io {
                context: "emulator thread".to_owned(),
                source: std::io::Error::other("the emulator's thread ended without stopping the server"),
            })
        });
        if let Some(thread) = self.thread.take() {
            // The runtime is dropped as the thread ends: its workers are joined there.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}
