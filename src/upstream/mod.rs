//! The deployment behind the proxy.
//!
//! Two kinds of traffic reach it:
//!
//! - the proxy's own (index metadata, build scans, change streams, `_like`
//!   lists, `_outputs`, adapters) runs on one [`mongodb::Client`] per proxy
//!   — the official driver, with its pooling, timeouts, retries,
//!   authentication mechanisms, TLS and change-stream resumption
//!   ([`connect`], [`Own`], [`OwnCursor`]);
//! - each client connection is pinned, for its whole life, to one server
//!   the driver's server discovery and monitoring found
//!   ([`Deployment::open_for_client`], [`topology`]), and the few commands
//!   the proxy runs on the client's behalf travel on that connection under
//!   the client's own authentication ([`pinned`]).

pub mod delegate;
pub mod pinned;
pub mod topology;
pub mod uri;

use crate::conn::Connection;
use crate::error::{Code, Error};
use bson::{RawDocument, RawDocumentBuf};
use futures_util::StreamExt;
use mongodb::options::ServerAddress;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use topology::{Pin, Role, Topology};

pub use pinned::{check_ok, next_request_id};

/// What the deployment reads of the proxy's settings (the CLI's
/// `crate::config::Config` implements it): the connection string, the
/// timeouts and TLS of the proxy's own connections, the change streams'
/// pool size, the metadata database, and the `Deployment` itself.
pub trait Settings: Send + Sync {
    /// The `--upstream` connection string.
    fn upstream(&self) -> &uri::Upstream;
    /// `--connect-timeout-ms`.
    fn connect_timeout(&self) -> Duration;
    /// TLS for connections the proxy opens for clients (never with the
    /// proxy's own certificate).
    fn upstream_tls(&self) -> Option<&Arc<rustls::ClientConfig>>;
    /// `--max-search-indexes` (one change stream each).
    fn max_search_indexes(&self) -> usize;
    /// `--metadata-db`.
    fn metadata_db(&self) -> &str;
    /// `--request-timeout-ms`.
    fn request_timeout(&self) -> Option<Duration>;
    /// The deployment these settings name.
    fn deployment(&self) -> &Arc<Deployment>;
}

/// Settings shared behind an `Arc` are settings.
impl<S: Settings + ?Sized> Settings for Arc<S> {
    fn upstream(&self) -> &uri::Upstream {
        (**self).upstream()
    }
    fn connect_timeout(&self) -> Duration {
        (**self).connect_timeout()
    }
    fn upstream_tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        (**self).upstream_tls()
    }
    fn max_search_indexes(&self) -> usize {
        (**self).max_search_indexes()
    }
    fn metadata_db(&self) -> &str {
        (**self).metadata_db()
    }
    fn request_timeout(&self) -> Option<Duration> {
        (**self).request_timeout()
    }
    fn deployment(&self) -> &Arc<Deployment> {
        (**self).deployment()
    }
}

/// Longest a topology probe ([`Deployment::nudge`]) runs, and longest a
/// new client connection waits for one.
const NUDGE_WAIT: Duration = Duration::from_secs(5);

/// How long a new client connection waits for a server in its role when
/// the URI names no `serverSelectionTimeoutMS`: less than drivers'
/// handshake timeouts (pymongo's 20 s, the Java driver's 10 s), so a
/// client sees the proxy's reason rather than its own timeout; its driver's
/// server selection then tries again for as long as its own timeout.
const CLIENT_SERVER_SELECTION: Duration = Duration::from_secs(8);

/// The proxy's handle on the deployment: a driver client, started on first
/// use (so that `mongodb+srv` lookups and the monitors run inside the
/// runtime), and the topology its monitors report.
pub struct Deployment {
    client: tokio::sync::OnceCell<mongodb::Client>,
    /// The change streams' client ([`Deployment::stream_client`]).
    streams: tokio::sync::OnceCell<mongodb::Client>,
    /// The client reads for clients run on ([`Deployment::open_delegated`]).
    reads: tokio::sync::OnceCell<mongodb::Client>,
    topology: Arc<Topology>,
    /// A [`Deployment::nudge`] probe is running.
    nudging: tokio::sync::watch::Sender<bool>,
    /// The latest cluster time seen in a reply from the upstream
    /// ([`Deployment::note_cluster_time`]).
    cluster_time: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Deployment {
    fn default() -> Deployment {
        Deployment {
            client: tokio::sync::OnceCell::new(),
            streams: tokio::sync::OnceCell::new(),
            reads: tokio::sync::OnceCell::new(),
            topology: Arc::default(),
            nudging: tokio::sync::watch::Sender::new(false),
            cluster_time: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("started", &self.client.initialized())
            .finish()
    }
}

impl Deployment {
    /// The driver client, started from `config.upstream` the first time
    /// (resolving `mongodb+srv` then). Options the URI leaves out default
    /// to likewise's: `appName=likewise`, `connectTimeoutMS` from
    /// `--connect-timeout-ms`. A failed start (DNS, bad TLS files) is
    /// retried by the next call.
    pub async fn client(
        &self,
        config: &(impl Settings + ?Sized),
    ) -> Result<mongodb::Client, Error> {
        let topology = self.topology.clone();
        self.client
            .get_or_try_init(|| async move {
                let mut options = client_options(config).await?;
                options.sdam_event_handler =
                    Some(mongodb::event::EventHandler::callback(move |event| {
                        if let mongodb::event::sdam::SdamEvent::TopologyDescriptionChanged(e) =
                            event
                        {
                            topology.update(&e.new_description);
                        }
                    }));
                mongodb::Client::with_options(options).map_err(driver_error)
            })
            .await
            .cloned()
    }

    /// The driver client change streams run on: the same options, with a
    /// pool of its own sized for one stream per search index
    /// (`--max-search-indexes` + 16). Each stream's `getMore` holds a
    /// connection for its await, so on the shared pool a few dozen
    /// streams would queue every other command of the proxy's.
    pub async fn stream_client(
        &self,
        config: &(impl Settings + ?Sized),
    ) -> Result<mongodb::Client, Error> {
        self.streams
            .get_or_try_init(|| async move {
                let mut options = client_options(config).await?;
                let streams = u32::try_from(config.max_search_indexes()).unwrap_or(u32::MAX);
                options.max_pool_size = Some(streams.saturating_add(16));
                mongodb::Client::with_options(options).map_err(driver_error)
            })
            .await
            .cloned()
    }

    /// The driver client that reads for clients run on
    /// ([`Deployment::open_delegated`]): the same options, with a pool of
    /// its own (the URI's `maxPoolSize`, else [`READS_POOL`] per server),
    /// so that clients' reads never queue behind index builds.
    async fn reads_client(
        &self,
        config: &(impl Settings + ?Sized),
    ) -> Result<mongodb::Client, Error> {
        self.reads
            .get_or_try_init(|| async move {
                let mut options = client_options(config).await?;
                options.max_pool_size.get_or_insert(READS_POOL);
                mongodb::Client::with_options(options).map_err(driver_error)
            })
            .await
            .cloned()
    }

    /// Notes the `$clusterTime` of a reply the upstream sent (signed by
    /// the deployment): reads run as the proxy pass on a client's cluster
    /// time only up to the latest one noted ([`delegate`]).
    pub fn note_cluster_time(&self, reply: &RawDocument) {
        let time = reply
            .get_document("$clusterTime")
            .and_then(|t| t.get_timestamp("clusterTime"));
        if let Ok(time) = time {
            self.cluster_time.fetch_max(
                delegate::timestamp_order(time),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Takes `address` out of selection after it answered a pinned request
    /// with a "not primary" error, and has the driver look again now
    /// rather than at its next heartbeat ([`Deployment::nudge`]).
    pub fn demote(&self, config: &Arc<impl Settings + 'static>, address: &ServerAddress) {
        if self.topology.demote(address) {
            self.nudge(config);
        }
    }

    /// Has the driver find the primary now: a primary read of the metadata
    /// database through it fails on a server that is no longer primary
    /// (which the driver's SDAM error handling turns into a check), and
    /// while no primary is known its server selection checks every server
    /// at once rather than at the next heartbeat. One at a time.
    pub fn nudge(&self, config: &Arc<impl Settings + 'static>) {
        if self.nudging.send_replace(true) {
            return;
        }
        let config = config.clone();
        tokio::spawn(async move {
            let deployment = config.deployment().clone();
            // Cleared however the probe ends.
            struct Done(Arc<Deployment>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.nudging.send_replace(false);
                }
            }
            let _done = Done(deployment.clone());
            if let Ok(client) = deployment.client(&config).await {
                // A read only a primary answers, of the metadata database,
                // which the proxy may always read.
                let probe = bson::doc! {
                    "listCollections": 1,
                    "filter": { "name": "" },
                    "nameOnly": true,
                };
                let database = client.database(config.metadata_db());
                let probe = database.run_command(probe).selection_criteria(
                    mongodb::options::SelectionCriteria::ReadPreference(
                        mongodb::options::ReadPreference::Primary,
                    ),
                );
                match tokio::time::timeout(NUDGE_WAIT, probe).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "topology probe"),
                    Err(_) => tracing::debug!("topology probe unanswered"),
                }
            }
        });
    }

    /// The topology as the driver's monitors last reported it.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A new connection for a client, to the server its role calls for
    /// (`role`, or the topology's write role: primary, a `mongos`, the
    /// standalone), not authenticated: the client authenticates itself.
    /// TLS when the URI asks for it. Waits up to the URI's
    /// `serverSelectionTimeoutMS` (default 8 s, [`CLIENT_SERVER_SELECTION`])
    /// for such a server, and
    /// up to `--connect-timeout-ms` for the connection;
    /// `HostUnreachable` past either.
    /// `client` is the client's address (its IP picks its router).
    pub async fn open_for_client(
        &self,
        config: &Arc<impl Settings + 'static>,
        client: &str,
    ) -> Result<(Connection, Pin), Error> {
        self.open_for_client_within(config, None, &[], client, None)
            .await
    }

    /// [`Deployment::open_for_client`] for a server in `role` whose tags
    /// match `tag_sets`, waiting `wait` (`None`: `serverSelectionTimeoutMS`).
    pub async fn open_for_client_within(
        &self,
        config: &Arc<impl Settings + 'static>,
        role: Option<Role>,
        tag_sets: &[topology::TagSet],
        client: &str,
        wait: Option<Duration>,
    ) -> Result<(Connection, Pin), Error> {
        let pin = self
            .select_for_client(config, role, tag_sets, client, wait)
            .await?;
        let mut conn = open(config, &pin.address).await?;
        if pin.role == Role::Secondary {
            conn.to_secondary();
        }
        Ok((conn, pin))
    }

    /// The server a new client connection goes to, as
    /// [`Deployment::open_for_client_within`] describes.
    async fn select_for_client(
        &self,
        config: &Arc<impl Settings + 'static>,
        role: Option<Role>,
        tag_sets: &[topology::TagSet],
        client: &str,
        wait: Option<Duration>,
    ) -> Result<Pin, Error> {
        self.client(config).await?;
        let view = self.topology.view();
        let wanted = role.or(view.write_role());
        if wanted.is_none_or(|r| view.candidates(r).is_empty()) {
            self.nudge(config);
        }
        let wait = wait.unwrap_or_else(|| {
            config
                .upstream()
                .connection
                .server_selection_timeout
                .unwrap_or(CLIENT_SERVER_SELECTION)
        });
        // While the driver is being made to look (a pinned connection just
        // failed), its answer is waited for (within the same budget): the
        // view may still name the server that failed.
        let started = std::time::Instant::now();
        let mut nudging = self.nudging.subscribe();
        let _ =
            tokio::time::timeout(wait.min(NUDGE_WAIT), nudging.wait_for(|running| !*running)).await;
        self.topology
            .select(role, tag_sets, client, wait, started)
            .await
    }

    /// A connection to a secondary whose tags match `tag_sets`, chosen as
    /// [`Deployment::open_for_client_within`] chooses, on which every
    /// request runs as the proxy ([`delegate`]): for reads of a client
    /// behind access control, whose rights the caller has checked.
    /// `HostUnreachable` when no such secondary answers within `wait`.
    pub async fn open_delegated(
        &self,
        config: &Arc<impl Settings + 'static>,
        tag_sets: &[topology::TagSet],
        client: &str,
        wait: Option<Duration>,
    ) -> Result<(Connection, Pin), Error> {
        let reads = self.reads_client(config).await?;
        let pin = self
            .select_for_client(config, Some(Role::Secondary), tag_sets, client, wait)
            .await?;
        let bound = config
            .request_timeout()
            .unwrap_or_default()
            .max(OWN_TIMEOUT);
        let mut conn =
            delegate::spawn(reads, pin.address.clone(), bound, self.cluster_time.clone());
        conn.to_secondary();
        Ok((conn, pin))
    }
}

/// Connections per server the delegated reads' pool holds when the URI
/// sets no `maxPoolSize` (the driver's default of 10 would queue a busy
/// proxy's reads).
const READS_POOL: u32 = 100;

/// The driver's options from `config.upstream` (resolving `mongodb+srv`),
/// with likewise's defaults where the URI gives none: `appName=likewise`,
/// `connectTimeoutMS` from `--connect-timeout-ms`.
async fn client_options(
    config: &(impl Settings + ?Sized),
) -> Result<mongodb::options::ClientOptions, Error> {
    let mut options = mongodb::options::ClientOptions::parse(config.upstream().connection.clone())
        .await
        .map_err(driver_error)?;
    options.app_name.get_or_insert_with(|| "likewise".into());
    options
        .connect_timeout
        .get_or_insert(config.connect_timeout());
    Ok(options)
}

/// A connection to `address`, TLS when the URI says so.
async fn open(
    config: &(impl Settings + ?Sized),
    address: &ServerAddress,
) -> Result<Connection, Error> {
    let unreachable = |why: String| {
        Error::upstream(
            Code::HOST_UNREACHABLE,
            format!("likewise: upstream {address} unreachable: {why}"),
        )
    };
    let (host, port) = match address {
        ServerAddress::Tcp { host, port } => (host.clone(), port.unwrap_or(27017)),
        other => return Err(unreachable(format!("{other} is not a TCP address"))),
    };
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let timeout = config
        .upstream()
        .connection
        .connect_timeout
        .filter(|t| !t.is_zero())
        .unwrap_or(config.connect_timeout());
    let connect = async {
        let stream = TcpStream::connect(&target).await?;
        stream.set_nodelay(true)?;
        match config.upstream_tls() {
            Some(tls) => Connection::connect_tls(stream, &host, tls.clone()).await,
            None => Ok(Connection::new(stream)),
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("no connection within {timeout:?}"))),
    }
}

/// The proxy's own access to the deployment: a cheap handle on the one
/// driver client ([`connect`]).
#[derive(Clone)]
pub struct Own {
    client: mongodb::Client,
    /// The URI's `retryWrites` / `retryReads` (unset: retry).
    retry_writes: bool,
    retry_reads: bool,
}

impl Own {
    /// The GridFS bucket `bucket` of database `db` (writes acknowledged by
    /// a majority, so a failover does not lose files a catalog entry
    /// names).
    pub fn gridfs(&self, db: &str, bucket: &str) -> mongodb::gridfs::GridFsBucket {
        let options = mongodb::options::GridFsBucketOptions::builder()
            .bucket_name(bucket.to_string())
            .write_concern(mongodb::options::WriteConcern::majority())
            .build();
        self.client.database(db).gridfs_bucket(options)
    }
}

/// The proxy's own handle, starting the driver client on first use.
pub async fn connect(config: &(impl Settings + ?Sized)) -> Result<Own, Error> {
    let uri = &config.upstream().connection;
    Ok(Own {
        client: config.deployment().client(config).await?,
        retry_writes: uri.retry_writes != Some(false),
        retry_reads: uri.retry_reads != Some(false),
    })
}

/// Longest one of the proxy's own commands, or one batch of its cursors,
/// may take.
pub const OWN_TIMEOUT: Duration = Duration::from_secs(60);

/// `operation`, failed with a network timeout past [`OWN_TIMEOUT`].
async fn bounded<T>(
    operation: impl std::future::Future<Output = mongodb::error::Result<T>>,
) -> mongodb::error::Result<T> {
    match tokio::time::timeout(OWN_TIMEOUT, operation).await {
        Ok(outcome) => outcome,
        Err(_) => Err(mongodb::error::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("likewise: no answer within {} s", OWN_TIMEOUT.as_secs()),
        ))),
    }
}

/// A command body's database (`$db`, required) and the body without it.
fn split_db(body: &RawDocument) -> Result<(String, RawDocumentBuf), Error> {
    let mut db = None;
    let mut rest = RawDocumentBuf::new();
    for entry in body {
        let (key, value) = entry.map_err(|e| Error::internal(e.to_string()))?;
        if key == "$db" {
            db = value.as_str().map(str::to_string);
        } else {
            rest.append(key, value.to_raw_bson());
        }
    }
    let db = db.ok_or_else(|| Error::internal("a command of the proxy's own has no $db"))?;
    Ok((db, rest))
}

impl Own {
    /// Runs one command (its body names the database in `$db`) on the
    /// primary; `ok: 0` becomes an error with the server's code. The URI's
    /// defaults apply as the driver applies them to its own helpers (which
    /// `runCommand` does not): a write carries its `w` / `journal` /
    /// `wtimeoutMS` as `writeConcern`, a read its `readConcernLevel`. A command that fails on the
    /// network (a pooled connection the server closed) is sent once more
    /// unless the URI says `retryWrites=false` / `retryReads=false`: every
    /// command the proxy sends itself is idempotent (reads, and upserts,
    /// `$set`s, `$unset`s and deletes by `_id` or to a fixed state), which
    /// the driver cannot know of a generic command. Each attempt is
    /// bounded by [`OWN_TIMEOUT`] (`NetworkTimeout` past it): the driver
    /// has no socket timeout, and a half-open connection must not stall
    /// the proxy's work.
    pub async fn command(&self, body: &RawDocument) -> Result<RawDocumentBuf, Error> {
        let (db, rest, write) = self.prepare(body)?;
        let database = self.client.database(&db);
        let criteria = (!write)
            .then(|| self.client.selection_criteria().cloned())
            .flatten();
        let attempt = || {
            let mut action = database.run_raw_command(rest.clone());
            if let Some(c) = criteria.clone() {
                action = action.selection_criteria(c);
            }
            bounded(std::future::IntoFuture::into_future(action))
        };
        let reply = match attempt().await {
            Err(e) if is_network(&e) && self.may_retry(write) => {
                tracing::debug!(error = %e, "the proxy's own command failed on the network; sending it again");
                attempt().await
            }
            other => other,
        }
        .map_err(driver_error)?;
        RawDocumentBuf::from_document(&reply).map_err(|e| Error::internal(e.to_string()))
    }

    /// Runs a cursor-returning command (`find`, `aggregate`: reads, as
    /// [`Own::command`] runs them) and returns its cursor, read a batch at
    /// a time.
    pub async fn cursor(&self, body: &RawDocument) -> Result<OwnCursor, Error> {
        let (db, rest, _) = self.prepare(body)?;
        let database = self.client.database(&db);
        let attempt = || bounded(database.run_raw_cursor_command(rest.clone()).batch());
        let inner = match attempt().await {
            Err(e) if is_network(&e) && self.may_retry(false) => attempt().await,
            other => other,
        }
        .map_err(driver_error)?;
        Ok(OwnCursor { inner })
    }

    /// The body without `$db`, with the URI's write or read concern added
    /// (unless it has its own), and whether it is a write.
    fn prepare(&self, body: &RawDocument) -> Result<(String, RawDocumentBuf, bool), Error> {
        let (db, mut rest) = split_db(body)?;
        let name = crate::wire::msg::first_key(body).unwrap_or("");
        let write = matches!(name, "insert" | "update" | "delete" | "findAndModify");
        let concern = if write {
            self.client
                .write_concern()
                .filter(|w| **w != mongodb::options::WriteConcern::default())
                .map(|w| ("writeConcern", bson::to_raw_document_buf(w)))
        } else if matches!(name, "find" | "aggregate" | "count" | "distinct") {
            self.client
                .read_concern()
                .map(|r| ("readConcern", bson::to_raw_document_buf(r)))
        } else {
            None
        };
        if let Some((key, value)) = concern {
            if rest.get(key).ok().flatten().is_none() {
                let value = value.map_err(|e| Error::internal(e.to_string()))?;
                rest.append(key, value);
            }
        }
        Ok((db, rest, write))
    }

    /// Whether the URI lets a failed attempt be sent again.
    fn may_retry(&self, write: bool) -> bool {
        if write {
            self.retry_writes
        } else {
            self.retry_reads
        }
    }
}

/// A cursor of the proxy's own, read batch by batch (the driver kills it
/// when dropped early).
pub struct OwnCursor {
    inner: mongodb::raw_batch_cursor::RawBatchCursor,
}

impl OwnCursor {
    /// The next batch, `None` once the cursor is exhausted.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<RawDocumentBuf>>, Error> {
        loop {
            let next = tokio::time::timeout(OWN_TIMEOUT, self.inner.next())
                .await
                .map_err(|_| {
                    Error::upstream(
                        Code::NETWORK_TIMEOUT,
                        format!(
                            "likewise: a cursor batch took longer than {} s",
                            OWN_TIMEOUT.as_secs()
                        ),
                    )
                })?;
            let Some(batch) = next else {
                return Ok(None);
            };
            let batch = batch.map_err(driver_error)?;
            let docs = batch.doc_slices().map_err(driver_error)?;
            let mut out = Vec::new();
            for doc in docs {
                match doc {
                    Ok(bson::RawBsonRef::Document(d)) => out.push(d.to_owned()),
                    _ => {
                        return Err(Error::upstream(
                            Code::PROTOCOL_ERROR,
                            "likewise: malformed cursor reply",
                        ))
                    }
                }
            }
            // Empty getMore replies (a tailable cursor) are skipped.
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }
}

/// Whether the driver failed on the network (the command's fate unknown).
fn is_network(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
    )
}

/// A driver error as the proxy's: server errors keep their code and name;
/// network, pool and server-selection failures are `HostUnreachable` (6),
/// which counts as transient ([`Error::is_transient`]); authentication
/// failures are `AuthenticationFailed` (18).
pub fn driver_error(e: mongodb::error::Error) -> Error {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => {
            Error::upstream(Code::relayed(c.code, &c.code_name), c.message.clone())
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            Error::upstream(Code::relayed(w.code, &w.code_name), w.message.clone())
        }
        ErrorKind::Write(WriteFailure::WriteError(w)) => Error::upstream(
            Code::relayed(w.code, w.code_name.as_deref().unwrap_or("")),
            w.message.clone(),
        ),
        ErrorKind::Authentication { message, .. } => Error::upstream(
            Code::relayed(18, "AuthenticationFailed"),
            format!("likewise: authenticating to the upstream: {message}"),
        ),
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. } => Error::upstream(
            Code::HOST_UNREACHABLE,
            format!("likewise: upstream unreachable: {e}"),
        ),
        _ => Error::upstream(Code::INTERNAL_ERROR, format!("likewise: upstream: {e}")),
    }
}

/// Where a read that can run either way runs: on the proxy's own client,
/// or on a client's pinned connection under the client's authentication
/// (`evaluateSemanticIndex` reads what the client may read).
pub enum Reader<'c> {
    Own(&'c Own),
    Pinned(&'c mut Connection),
}

/// A cursor from a [`Reader`].
pub enum AnyCursor<'c> {
    Own(Box<OwnCursor>),
    Pinned(pinned::Cursor<'c>),
}

impl<'c> Reader<'c> {
    /// The same reader for a shorter while (a second read after one).
    pub fn reborrow(&mut self) -> Reader<'_> {
        match self {
            Reader::Own(own) => Reader::Own(own),
            Reader::Pinned(conn) => Reader::Pinned(conn),
        }
    }

    /// Runs a cursor-returning command (`$db` in its body).
    pub async fn cursor(self, body: &RawDocument) -> Result<AnyCursor<'c>, Error> {
        match self {
            Reader::Own(own) => own.cursor(body).await.map(|c| AnyCursor::Own(Box::new(c))),
            Reader::Pinned(conn) => {
                let db = body.get_str("$db").unwrap_or("admin").to_string();
                pinned::Cursor::open(conn, &db, body)
                    .await
                    .map(AnyCursor::Pinned)
            }
        }
    }
}

impl AnyCursor<'_> {
    /// The next batch, `None` once the cursor is exhausted.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<RawDocumentBuf>>, Error> {
        match self {
            AnyCursor::Own(c) => c.next_batch().await,
            AnyCursor::Pinned(c) => c.next_batch().await,
        }
    }
}
