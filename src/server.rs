//! Accept loop: one task per client connection, a connection limit, and
//! shutdown when the given future completes.
//!
//! Connections can be spread over several single-threaded runtimes
//! (`Workers`): a connection's reads, writes and wake-ups then stay on one
//! thread, which spares the cross-thread wake-ups a work-stealing runtime
//! pays on every message.

use crate::config::Config;
use crate::proxy;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Serves clients from `listener` until `shutdown` resolves, spawning each
/// connection on the current runtime. Connections in flight are dropped
/// when the runtime ends.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
    run_on(listener, config, shutdown, &[]).await
}

/// Like `run`, but connections are spawned round-robin on `workers` (the
/// current runtime when empty).
pub async fn run_on(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    workers: &[Handle],
) {
    run_shared(
        listener,
        Arc::new(proxy::Shared::new(config)),
        shutdown,
        workers,
    )
    .await
}

/// Like `run_on`, with state the caller also holds (for metrics).
pub async fn run_shared(
    listener: TcpListener,
    shared: Arc<proxy::Shared>,
    shutdown: impl Future<Output = ()>,
    workers: &[Handle],
) {
    let restoring = shared.clone();
    tokio::spawn(async move {
        crate::maintain::restore(
            restoring.config.clone(),
            restoring.registry.clone(),
            restoring.neighbourhoods.clone(),
            restoring.models.clone(),
        )
        .await;
        restoring.restored.send_replace(true);
    });
    let saver = tokio::spawn(crate::maintain::keep_saving(
        shared.config.clone(),
        shared.registry.clone(),
    ));
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut next_worker = 0usize;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                if workers.is_empty() {
                    tokio::spawn(serve_one(stream, peer, shared, permit));
                    continue;
                }
                // A socket is bound to the reactor that registered it: hand
                // the worker a std socket and let it register its own.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot hand a connection to a worker");
                        continue;
                    }
                };
                next_worker = (next_worker + 1) % workers.len();
                workers[next_worker].spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => serve_one(stream, peer, shared, permit).await,
                        Err(e) => tracing::warn!(error = %e, "cannot register a connection"),
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!("likewise stopped accepting connections");
    drop(listener);
    finish_in_flight(&shared).await;
    saver.abort();
    crate::maintain::save_changed(&shared.config, &shared.registry).await;
}

/// Waits, up to the shutdown timeout, for requests being answered to
/// finish; idle connections are then closed with the runtime.
async fn finish_in_flight(shared: &proxy::Shared) {
    let deadline = tokio::time::Instant::now() + shared.config.shutdown_timeout;
    let in_flight = &shared.metrics.requests_in_flight;
    while in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                requests = in_flight.load(std::sync::atomic::Ordering::Relaxed),
                "shutdown timeout: abandoning requests in flight"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<proxy::Shared>,
    permit: OwnedSemaphorePermit,
) {
    tracing::debug!(%peer, "client connected");
    proxy::serve(stream, shared).await;
    tracing::debug!(%peer, "client disconnected");
    drop(permit);
}

/// Single-threaded runtimes, each driven by its own thread, to serve
/// connections on (thread-per-core). Stopped and joined on drop.
/// How long a stopping runtime waits for its blocking threads (an index
/// build's encode batch, a search) before abandoning them: what shutdown
/// owes (requests in flight, snapshots) is done before it.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    pub fn start(count: usize, thread_name: &str) -> std::io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for _ in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(thread_name.to_string())
                    .spawn(move || {
                        let _ = runtime.block_on(stopped);
                        // Blocking work still running (a query's search,
                        // say) is abandoned rather than waited for.
                        runtime.shutdown_timeout(SHUTDOWN_GRACE);
                    })?,
            );
        }
        Ok(workers)
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
