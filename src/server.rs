//! Accept loop: one task per client connection, a connection limit, and
//! shutdown when the given future completes.

use crate::config::Config;
use crate::proxy;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Serves clients from `listener` until `shutdown` resolves. Connections in
/// flight are dropped when the runtime ends.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
    let shared = Arc::new(proxy::Shared::new(config));
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
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
                tokio::spawn(async move {
                    tracing::debug!(%peer, "client connected");
                    proxy::serve(stream, shared).await;
                    tracing::debug!(%peer, "client disconnected");
                    drop(permit);
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
}
