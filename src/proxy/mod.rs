//! One client connection <-> one pinned upstream connection.
//!
//! Each client gets its own upstream connection, to the server the
//! topology calls for (the primary, a `mongos`, the standalone), so
//! authentication, cursors, sessions, transactions and exhaust replies
//! belong to that pair and the proxy tracks none of them. When that server
//! loses its role (a failover), the connection pair ends: the request in
//! flight, or the next one, gets the error a `mongos` would give, with the
//! labels drivers retry on, and the driver's retry arrives on a new
//! connection pinned to the new server. The pump is sequential: read one request,
//! forward it (original bytes unless the proxy owns the command), relay
//! replies until one without `moreToCome` — or none at all when the request
//! itself had `moreToCome` (w:0 writes must never get an invented reply).

mod admin;
mod for_client;
mod fusion;
mod models;
mod neighbourhood;
mod query;
mod session;
mod write;

use crate::config::Config;
use crate::conn::Connection;
use crate::registry::Registry;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;

/// State shared by every connection of one proxy.
pub struct Shared {
    pub config: Arc<Config>,
    /// The search indexes this proxy serves.
    pub registry: Arc<Registry>,
    /// Neighbourhoods cached in documents.
    pub neighbourhoods: Arc<crate::maintain::neighbourhood::Registry>,
    /// The models semantic indexes encode with.
    pub models: Arc<crate::models::Models>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What connections that have not authenticated may hold in frame
    /// buffers, all together (only when the proxy has upstream
    /// credentials, i.e. the upstream checks who clients are).
    pub unauthenticated: Arc<crate::conn::Budget>,
    /// Becomes `true` once stored definitions (models, indexes,
    /// neighbourhoods) are loaded at start-up.
    pub restored: tokio::sync::watch::Sender<bool>,
    request_ids: AtomicI32,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        Shared {
            unauthenticated: Arc::new(crate::conn::Budget::new(config.unauthenticated_buffer)),
            config: Arc::new(config),
            registry: Arc::new(Registry::default()),
            neighbourhoods: Arc::default(),
            models: Arc::default(),
            metrics: Arc::default(),
            restored: tokio::sync::watch::Sender::new(false),
            request_ids: AtomicI32::new(1),
        }
    }

    /// Waits (bounded) until start-up has loaded the stored definitions, so
    /// a client arriving right after a restart never finds its indexes
    /// missing. Errors, past the wait, with `NotYetInitialized` (94): the
    /// catalog is still unreadable (the upstream is down), and answering
    /// from an empty one would report indexes missing or let a second
    /// definition be created under an existing name.
    pub async fn wait_restored(&self) -> Result<(), crate::error::Error> {
        let mut ready = self.restored.subscribe();
        let loaded = matches!(
            tokio::time::timeout(RESTORE_WAIT, ready.wait_for(|done| *done)).await,
            Ok(Ok(_))
        );
        if loaded {
            return Ok(());
        }
        Err(crate::error::Error::upstream(
            crate::error::Code::NOT_YET_INITIALIZED,
            "likewise has not loaded its search index definitions yet (the upstream has \
                 not answered since start-up); try again shortly",
        ))
    }

    /// Request ids for messages the proxy makes itself.
    pub fn next_request_id(&self) -> i32 {
        self.request_ids.fetch_add(1, Ordering::Relaxed) & i32::MAX
    }
}

/// Longest a vector or admin command waits for start-up to load definitions.
const RESTORE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves one client until it disconnects or its upstream fails.
pub async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let metrics = shared.metrics.clone();
    // The client's host: all its connections go to one router.
    let peer = stream
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    let client = match &shared.config.client_tls {
        Some(tls) => {
            let handshake = Connection::accept_tls(stream, tls.clone());
            match tokio::time::timeout(shared.config.connect_timeout, handshake).await {
                Ok(Ok(client)) => Some(client),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "client TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("client TLS handshake timed out");
                    None
                }
            }
        }
        None => Some(Connection::new(stream)),
    };
    if let Some(mut client) = client {
        if shared.config.upstream.credentials.is_some() {
            client.limit_by(shared.unauthenticated.clone());
        }
        let opened = shared
            .config
            .deployment
            .open_for_client(&shared.config, &peer)
            .await;
        match opened {
            Ok((upstream, pin)) => {
                session::Session::new(client, upstream, pin, peer, shared)
                    .run()
                    .await
            }
            Err(err) => session::refuse(client, &shared, err).await,
        }
    }
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
}
