//! The per-connection request loop.

use super::Shared;
use crate::command::{Command, Hello};
use crate::conn::{Connection, ReadError};
use crate::error::{Code, Error, Side};
use crate::maintain::fresh::WriteKind;
use crate::rewrite;
use crate::upstream::pinned as upstream;
use crate::upstream::topology::{Pin, Role, View};
use crate::wire::{self, msg, query, Compressor, Header, OpCode, OpMsg, OpQuery};
use bson::{RawBsonRef, RawDocument, RawDocumentBuf};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub(super) struct Session {
    pub(super) client: Connection,
    pub(super) upstream: Connection,
    pub(super) shared: Arc<Shared>,
    /// The server `upstream` is connected to, and the role it was chosen
    /// for.
    pin: Pin,
    /// Every later view of the topology, to notice `pin` losing its role.
    views: tokio::sync::watch::Receiver<View>,
    /// The request being served, and whether any reply to it went out.
    current: Option<ReplyTo>,
    answered: bool,
    /// The last request was one without a reply (`moreToCome`).
    unanswered: bool,
    /// A connection to a secondary, for reads whose read preference sends
    /// them there (opened on first use), and the cursors opened on it.
    secondary: Option<(Connection, Pin)>,
    secondary_cursors: std::collections::HashSet<i64>,
    /// The cursors the `getMore` being served on the secondary continues.
    current_cursor_ids: Option<Vec<i64>>,
    /// The failure ending the pair was counted against the secondary.
    failure_counted: bool,
    /// The client's host (IP address).
    peer: String,
    /// The secondary's connection is in place of the pinned one.
    swapped: bool,
    /// When the request now upstream was sent, until its first reply.
    forwarded_at: Option<Instant>,
    /// A reply to the client is partly written (a timeout cut it short).
    client_dirty: bool,
    /// The `find` rights the client's connection was found to have
    /// (`ForClient::authorize`): vector queries and the reads the proxy
    /// runs as itself on a secondary ([`Session::read_route`]) check them.
    rights: super::for_client::Rights,
    /// The read routed to the secondary runs there as the proxy.
    read_as_proxy: bool,
}

/// How a request ended when it did not end well.
pub(super) enum Failure {
    /// Tell the client (if the request expects a reply) and keep serving.
    Reply { request: ReplyTo, error: Error },
    /// The connection pair is finished.
    Close(String),
    /// The upstream failed under a request (its server lost its role, or
    /// the connection broke): the request, if nothing of its answer went
    /// out, gets `error` (labelled for drivers' retries); then the
    /// connection pair is finished.
    Upstream(Error),
}

/// Enough about a request to answer it in its own dialect.
#[derive(Clone, Copy, Default)]
pub(super) struct ReplyTo {
    pub(super) request_id: i32,
    pub(super) legacy: bool,
    pub(super) more_to_come: bool,
    /// What the request is to drivers' retry rules, for the labels on
    /// errors the proxy makes itself.
    pub(super) retry: Retry,
}

/// Longest the proxy waits for the replies to a request abandoned at
/// `--request-timeout-ms` before the client's next request can be sent.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A request as the retryable-writes and transactions specifications see
/// it: what label a transient error on it must carry for a driver to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Retry {
    /// Nothing to label (reads retry on the code alone).
    #[default]
    None,
    /// A retryable write (`txnNumber` outside a transaction), or
    /// `commitTransaction` / `abortTransaction`: `RetryableWriteError`.
    Write,
    /// Any other command inside a transaction (`autocommit: false`):
    /// `TransientTransactionError`.
    Transaction,
}

impl Retry {
    /// Reads a command body.
    pub(super) fn of(body: &RawDocument) -> Retry {
        let name = msg::first_key(body).unwrap_or("");
        let in_transaction = matches!(body.get("autocommit"), Ok(Some(RawBsonRef::Boolean(false))));
        if matches!(name, "commitTransaction" | "abortTransaction") {
            return Retry::Write;
        }
        if in_transaction {
            return Retry::Transaction;
        }
        let has_txn_number = body.get("txnNumber").ok().flatten().is_some();
        let write = matches!(
            name,
            "insert" | "update" | "delete" | "findAndModify" | "findandmodify" | "bulkWrite"
        );
        if has_txn_number && write {
            Retry::Write
        } else {
            Retry::None
        }
    }

    /// The label drivers retry on, if any.
    fn label(self) -> Option<&'static str> {
        match self {
            Retry::None => None,
            Retry::Write => Some("RetryableWriteError"),
            Retry::Transaction => Some("TransientTransactionError"),
        }
    }
}

impl Session {
    pub(super) fn new(
        client: Connection,
        upstream: Connection,
        pin: Pin,
        peer: String,
        shared: Arc<Shared>,
    ) -> Session {
        let views = shared.config.deployment.topology().subscribe();
        shared.metrics.pinned(&pin.address.to_string(), true);
        Session {
            client,
            upstream,
            pin,
            views,
            current: None,
            answered: false,
            secondary: None,
            secondary_cursors: Default::default(),
            current_cursor_ids: None,
            failure_counted: false,
            peer,
            swapped: false,
            shared,
            forwarded_at: None,
            client_dirty: false,
            rights: Default::default(),
            unanswered: false,
            read_as_proxy: false,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let frame = match self.client.read_frame().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(ReadError::Framing(e)) => {
                    // The stream cannot be resynchronised: a clean close.
                    tracing::warn!(error = %e, "closing client after a bad frame");
                    return;
                }
                Err(e @ ReadError::OverBudget) => {
                    tracing::warn!(error = %e, "closing unauthenticated client");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "client read failed");
                    return;
                }
            };
            let in_flight = &self.shared.metrics.requests_in_flight;
            in_flight.fetch_add(1, Ordering::Relaxed);
            let mut outcome = self.handle(frame).await;
            // A command the proxy ran on the pinned connection itself (a
            // rights probe, a filter read) found it broken: the pair ends
            // as for any upstream failure.
            if self.upstream.is_broken() {
                if let Err(Failure::Reply { error, .. }) = &outcome {
                    let why = format!("failed under a command ({})", error.message);
                    outcome = Err(Failure::Upstream(self.failover(&why)));
                }
            }
            self.shared
                .metrics
                .requests_in_flight
                .fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Ok(()) => {}
                Err(Failure::Reply { request, error }) => {
                    self.shared.metrics.error(&error);
                    if error.side == Side::Client {
                        tracing::debug!(%error, "rejected client request");
                    } else {
                        tracing::warn!(%error, "request failed");
                    }
                    if request.more_to_come {
                        // No reply may be sent; the client cannot learn of the error.
                        return;
                    }
                    let reply = encode_error(&self.shared, request, &error);
                    if self.client.write_frame(&reply).await.is_err() {
                        return;
                    }
                }
                Err(Failure::Close(why)) => {
                    tracing::debug!(%why, "closing client connection");
                    return;
                }
                Err(Failure::Upstream(error)) => {
                    self.shared.metrics.error(&error);
                    if !self.failure_counted {
                        self.shared
                            .metrics
                            .server_failed(&self.pin.address.to_string());
                    }
                    tracing::info!(%error, server = %self.pin.address, "closing client connection: its upstream failed");
                    // The driver may not know yet: have it look now, so the
                    // client's retry finds the server's successor.
                    self.shared.config.deployment.nudge(&self.shared.config);
                    let request = self.current.filter(|r| !r.more_to_come);
                    if let Some(request) = request.filter(|_| !self.answered && !self.client_dirty)
                    {
                        let reply = encode_error(&self.shared, request, &error);
                        let _ = self.client.write_frame(&reply).await;
                    }
                    return;
                }
            }
        }
    }

    /// The client's connection and the shared state, for the work the
    /// proxy does on the client's behalf ([`super::admin`],
    /// [`super::query`]).
    fn for_client(&mut self) -> super::for_client::ForClient<'_> {
        super::for_client::ForClient {
            upstream: &mut self.upstream,
            shared: &self.shared,
            rights: &mut self.rights,
            delegated: self.swapped && self.read_as_proxy,
        }
    }

    /// Whether the pinned server still has the role it was chosen for.
    fn pin_holds(&self) -> bool {
        self.views.borrow().still_serves(&self.pin)
    }

    /// The failure for a request whose own work on the pinned connection
    /// (a vector query's rights probe, filter read or fetch) failed: when
    /// the primary it is pinned to said it no longer is, the pair ends as
    /// for a forwarded reply (demoted, `ShutdownInProgress` with the retry
    /// labels); any other error is the client's reply.
    fn own_request_failed(&self, request: ReplyTo, error: Error) -> Failure {
        if self.pin.role == Role::Primary
            && error.side == Side::Upstream
            && NOT_PRIMARY_CODES.contains(&error.code.code)
        {
            return self.primary_lost();
        }
        Failure::Reply { request, error }
    }

    /// For an error reply to the proxy's own request on a pinned primary:
    /// the failover when it says the server is no longer primary.
    fn lost_primary(&self, reply: &RawDocument) -> Option<Failure> {
        (self.pin.role == Role::Primary && matches!(not_primary(reply), NotPrimary::NotRun))
            .then(|| self.primary_lost())
    }

    /// The pinned primary said it no longer is: demoted in the topology,
    /// and the pair ends.
    fn primary_lost(&self) -> Failure {
        self.shared
            .config
            .deployment
            .demote(&self.shared.config, &self.pin.address);
        Failure::Upstream(self.failover("answered that it is no longer primary"))
    }

    /// The error for a request on a connection whose server lost its role
    /// or broke: `ShutdownInProgress` (91), as if that server were
    /// shutting down, because that is the one server error on which every
    /// driver drops its whole pool to the server (the SDAM
    /// specification's "node is shutting down" rule): each of its pooled
    /// connections is pinned to the same lost server, and a retry on one
    /// of them would fail again. It is transient, so retryable writes and
    /// reads are retried (with the labels of [`encode_error`]) on a new
    /// connection, which is pinned to the new server.
    fn failover(&self, why: &str) -> Error {
        Error::upstream(
            crate::error::Code::relayed(91, "ShutdownInProgress"),
            format!(
                "likewise: this connection's upstream server {} {why}; the connection closes, \
                 retry on a new one",
                self.pin.address,
            ),
        )
    }

    /// The pinned upstream connection was closed while idle (a server's
    /// or a middlebox's idle timeout; SecantusDB closes connections idle
    /// for 5 minutes): nothing of the next request has gone out on it, so
    /// a client that holds no authentication on it gets a new connection
    /// to the deployment, as drivers replace a pooled connection found
    /// closed, and never sees the close. An authenticated client's
    /// identity lived on the old connection and cannot be carried over:
    /// its request fails as a failover does (`ShutdownInProgress`), and
    /// the client connects and authenticates again. When no new
    /// connection can be opened, the same.
    async fn replace_closed_upstream(&mut self) {
        // After a request without a reply (`moreToCome`) a close may be
        // its answer (a primary that stepped down closes the connection
        // of an unacknowledged write): that one stays a failover.
        if self.client.is_authenticated() || self.unanswered || !self.upstream.peer_closed() {
            return;
        }
        let opened = self
            .shared
            .config
            .deployment
            .open_for_client(&self.shared.config, &self.peer)
            .await;
        match opened {
            Ok((upstream, pin)) => {
                tracing::debug!(server = %pin.address, "replaced an upstream connection closed while idle");
                let metrics = &self.shared.metrics;
                metrics.pinned(&self.pin.address.to_string(), false);
                metrics.pinned(&pin.address.to_string(), true);
                self.upstream = upstream;
                self.pin = pin;
                // Found on the old connection; the new one is as
                // unauthenticated, but is asked afresh.
                self.rights = Default::default();
            }
            Err(e) => tracing::debug!(error = %e, "cannot replace a closed upstream connection"),
        }
    }

    async fn handle(&mut self, frame: Bytes) -> Result<(), Failure> {
        self.current = None;
        self.answered = false;
        self.drain_upstream().await?;
        if self.swapped {
            // A request served on the secondary was cut short.
            self.leave_secondary();
        }
        self.replace_closed_upstream().await;
        let header = Header::parse(&frame).map_err(|e| Failure::Close(e.to_string()))?;
        // What inflating will take counts against the unauthenticated
        // connections' budget too: 30 bytes of zlib can claim 48 MB.
        let _inflating = match header.op_code {
            OpCode::Compressed if frame.len() >= 24 => {
                let declared = usize::try_from(wire::read_i32(&frame, 20)).unwrap_or(0);
                self.client
                    .draw(declared)
                    .map_err(|e| Failure::Close(e.to_string()))?
            }
            _ => None,
        };
        let plain = ReplyTo {
            request_id: header.request_id,
            legacy: false,
            more_to_come: false,
            retry: Retry::None,
        };
        let (compressor, message) = wire::inflate(frame).map_err(|e| Failure::Reply {
            request: plain,
            error: e.into(),
        })?;
        let op_code = Header::parse(&message)
            .map_err(|e| Failure::Close(e.to_string()))?
            .op_code;
        match op_code {
            OpCode::Msg => self.handle_msg(message, compressor).await,
            OpCode::Query => self.handle_query(message).await,
            other => Err(Failure::Reply {
                request: plain,
                error: Error::client(
                    Code::PROTOCOL_ERROR,
                    format!("likewise: unsupported opcode {}", other.as_i32()),
                ),
            }),
        }
    }

    async fn handle_msg(
        &mut self,
        message: Bytes,
        compressor: Option<Compressor>,
    ) -> Result<(), Failure> {
        let mut request = ReplyTo {
            request_id: wire::read_i32(&message, 4),
            legacy: false,
            more_to_come: message.len() >= 20
                && wire::read_u32(&message, 16) & msg::MORE_TO_COME != 0,
            retry: Retry::None,
        };
        let parsed = OpMsg::parse(&message).map_err(|e| Failure::Reply {
            request,
            error: e.into(),
        })?;
        request.retry = Retry::of(parsed.body());
        self.current = Some(request);
        self.unanswered = request.more_to_come;
        if !self.pin_holds() {
            return Err(Failure::Upstream(self.failover(&format!(
                "is no longer the {}; the request was not run",
                self.pin.role.name()
            ))));
        }
        // Before anything walks the command: every walk below is bounded.
        parsed
            .check_depth(wire::MAX_BSON_DEPTH)
            .map_err(|e| Failure::Reply {
                request,
                error: e.into(),
            })?;
        if let Some(name) = parsed.command_name() {
            self.shared.metrics.command(name);
        }
        let Some(limit) = self.shared.config.request_timeout else {
            return self.dispatch(request, &message, &parsed, compressor).await;
        };
        let limit = limit + client_wait(parsed.body());
        match tokio::time::timeout(limit, self.dispatch(request, &message, &parsed, compressor))
            .await
        {
            Ok(outcome) => outcome,
            // Half a frame went to the client or the upstream: neither stream
            // can carry another message. Closing is a network error to the
            // driver, which retries what its rules allow.
            Err(_) if self.client_dirty || self.upstream.interrupted_write() => Err(
                Failure::Close("a request timed out in the middle of a message".into()),
            ),
            // The streams are whole: the client gets NetworkTimeout (with the
            // label its retry rules need) and keeps its connection; replies
            // still owed upstream are dropped before its next request.
            Err(_) => {
                tracing::warn!(timeout_ms = limit.as_millis() as u64, "request timed out");
                Err(Failure::Reply {
                    request,
                    error: Error::upstream(
                        Code::NETWORK_TIMEOUT,
                        format!(
                            "likewise: the request took longer than {} ms (--request-timeout-ms)",
                            limit.as_millis()
                        ),
                    ),
                })
            }
        }
    }

    /// Serves one parsed OP_MSG request on the server its read preference
    /// calls for: a secondary for `secondary`, `secondaryPreferred` and
    /// `nearest` (as a `mongos` routes them, [`Session::read_route`]),
    /// the pinned server otherwise. The secondary's connection is opened
    /// on first use and kept; while a request is served there it takes the
    /// place of the pinned connection, so everything below (relaying,
    /// failover, a vector query's filter reads) works on it unchanged.
    async fn dispatch(
        &mut self,
        request: ReplyTo,
        message: &Bytes,
        parsed: &OpMsg<'_>,
        compressor: Option<Compressor>,
    ) -> Result<(), Failure> {
        let Some(route) = self.read_route(parsed.body()).await? else {
            return self
                .dispatch_here(request, message, parsed, compressor)
                .await;
        };
        if route == Route::Cursor {
            let ids = cursor_ids(parsed.body());
            if parsed.command_name() == Some("killCursors") {
                for id in &ids {
                    self.secondary_cursors.remove(id);
                }
            } else {
                self.current_cursor_ids = Some(ids);
            }
        }
        self.swap_secondary();
        self.swapped = true;
        // If a request timeout drops this future in the middle, `handle`
        // swaps the connections back before the next request (after
        // draining what the secondary still owes).
        let outcome = self
            .dispatch_here(request, message, parsed, compressor)
            .await;
        let mut secondary_lost = self.upstream.is_broken();
        let outcome = match outcome {
            // The secondary failed: it is dropped and the read gets a
            // transient error drivers retry reads on; the client's
            // connection (on the primary) goes on — unless part of an
            // answer already went out.
            Err(Failure::Upstream(error)) => {
                secondary_lost = true;
                self.shared
                    .metrics
                    .server_failed(&self.pin.address.to_string());
                if self.answered || self.client_dirty {
                    self.failure_counted = true;
                    Err(Failure::Upstream(error))
                } else {
                    Err(Failure::Reply {
                        request,
                        error: Error::upstream(Code::HOST_UNREACHABLE, error.message),
                    })
                }
            }
            other => other,
        };
        self.leave_secondary();
        if secondary_lost {
            self.drop_secondary();
        }
        outcome
    }

    /// Puts the pinned connection back in place after a request served on
    /// the secondary (finished, or cut short by a timeout).
    fn leave_secondary(&mut self) {
        self.swap_secondary();
        self.swapped = false;
        self.current_cursor_ids = None;
    }

    /// Exchanges the pinned connection with the secondary's.
    fn swap_secondary(&mut self) {
        if let Some(secondary) = self.secondary.as_mut() {
            std::mem::swap(&mut self.upstream, &mut secondary.0);
            std::mem::swap(&mut self.pin, &mut secondary.1);
        }
    }

    /// Where a command goes when not to the pinned server: `Some` for a
    /// command a `mongos` would send to a secondary — `$readPreference`
    /// `secondary`, `secondaryPreferred` or `nearest` outside a
    /// transaction — and for a `getMore` / `killCursors` of a cursor opened
    /// there. Only behind a replica set. A client's authentication lives
    /// on its pinned connection and cannot be carried to another server,
    /// so behind access control (the URI holds the proxy's credentials)
    /// the secondary's connection runs reads as the proxy
    /// ([`crate::upstream::delegate`]), and only reads needing no right
    /// but `find` go there, once the client is found to have it on every
    /// collection they touch ([`Session::check_read_right`]); without the
    /// proxy's credentials, a client that authenticated reads on the
    /// primary. `secondaryPreferred` and `nearest` fall back to the
    /// primary when no secondary answers at once; `secondary` waits for
    /// one as server selection does.
    async fn read_route(&mut self, body: &RawDocument) -> Result<Option<Route>, Failure> {
        let name = msg::first_key(body).unwrap_or("");
        if is_authentication(name) || name == "logout" || Hello::is_hello(name) {
            // Whoever the connection speaks for next, its rights are asked
            // again, and the cursors read for the earlier identity are
            // closed with the secondary's connection.
            self.rights.clear();
            self.drop_secondary();
        }
        // Behind access control the proxy reads as itself, once the
        // client's rights are checked; without its own credentials it
        // cannot, and a client that authenticated reads on the primary.
        let as_proxy = self.shared.config.upstream.credentials.is_some();
        if self.pin.role != Role::Primary || (!as_proxy && self.client.is_authenticated()) {
            return Ok(None);
        }
        if name == "getMore" || name == "killCursors" {
            // Only when every cursor named is the secondary's (a mixed
            // `killCursors` goes to the primary, which reports the others
            // not found; those time out on the secondary).
            let ids = cursor_ids(body);
            let there = !ids.is_empty() && ids.iter().all(|id| self.secondary_cursors.contains(id));
            return Ok(there.then_some(Route::Cursor));
        }
        if !is_routable_read(name, body)
            || matches!(body.get("autocommit"), Ok(Some(RawBsonRef::Boolean(false))))
        {
            return Ok(None);
        }
        let Ok(preference) = body.get_document("$readPreference") else {
            return Ok(None);
        };
        let required = match preference.get_str("mode").unwrap_or("primary") {
            "secondary" => true,
            "secondaryPreferred" | "nearest" => false,
            _ => return Ok(None),
        };
        let refuse = |why: String| Failure::Reply {
            request: self.current.unwrap_or_default(),
            error: Error::client(Code::relayed(133, "FailedToSatisfyReadPreference"), why),
        };
        // The proxy cannot see how far behind a secondary is: a staleness
        // bound is met by the primary where the mode allows it, and
        // refused where it does not.
        if preference
            .get("maxStalenessSeconds")
            .ok()
            .flatten()
            .is_some()
        {
            if !required {
                return Ok(None);
            }
            return Err(refuse(
                "likewise does not measure secondaries' staleness: maxStalenessSeconds \
                 needs mode secondaryPreferred or nearest (served by the primary) or no bound"
                    .into(),
            ));
        }
        let Some(tag_sets) = read_tags(preference) else {
            return Err(refuse(format!(
                "likewise: a read preference may name at most {MAX_TAG_SETS} tag sets of \
                 {MAX_TAG_SETS} tags each"
            )));
        };
        // Past the cursor bound, reads stay on the primary until some of
        // the secondary's cursors close.
        if self.secondary_cursors.len() >= MAX_SECONDARY_CURSORS {
            return Ok(None);
        }
        let collections = if as_proxy {
            // Only a read that needs nothing but `find` rights is run as
            // the proxy, and only once the client is found to have them
            // (asked below, once the secondary is open).
            let (Some(collections), Ok(_)) = (
                crate::command::reads::collections_read(body),
                body.get_str("$db"),
            ) else {
                return Ok(None);
            };
            collections
        } else {
            Vec::new()
        };
        let alive = self.secondary.as_ref().is_some_and(|(conn, pin)| {
            let view = self.views.borrow();
            !conn.is_broken()
                && view.still_serves(pin)
                && view
                    .tagged(Role::Secondary, &tag_sets)
                    .contains(&&pin.address)
        });
        if !alive {
            self.drop_secondary();
            let wait = if required {
                None
            } else {
                Some(std::time::Duration::ZERO)
            };
            let deployment = &self.shared.config.deployment;
            let opened = if as_proxy {
                deployment
                    .open_delegated(&self.shared.config, &tag_sets, &self.peer, wait)
                    .await
            } else {
                deployment
                    .open_for_client_within(
                        &self.shared.config,
                        Some(Role::Secondary),
                        &tag_sets,
                        &self.peer,
                        wait,
                    )
                    .await
            };
            match opened {
                Ok((conn, pin)) => {
                    self.shared.metrics.pinned(&pin.address.to_string(), true);
                    self.secondary = Some((conn, pin));
                }
                Err(_) if !required => return Ok(None),
                Err(error) => {
                    return Err(Failure::Reply {
                        request: self.current.unwrap_or_default(),
                        error,
                    })
                }
            }
        }
        // The rights, confirmed on the client's own connection now, so that
        // none found earlier ages out while the read runs as the proxy.
        if let Ok(db) = body.get_str("$db") {
            for collection in &collections {
                self.check_read_right(db, collection, name).await?;
            }
        }
        self.read_as_proxy = as_proxy;
        Ok(Some(Route::Read))
    }

    /// Checks, on the client's own connection, that it has the `find`
    /// right on `db.collection` (a right found is trusted for
    /// [`super::for_client::RIGHTS_TTL`]). `Unauthorized` (13) with mongod's wording when it
    /// has not; the probe's other failures as for any of the proxy's own
    /// requests on the pinned connection.
    async fn check_read_right(
        &mut self,
        db: &str,
        collection: &str,
        command: &str,
    ) -> Result<(), Failure> {
        let request = self.current.unwrap_or_default();
        self.for_client()
            .authorize(super::for_client::Action::Find, db, collection, command)
            .await
            .map_err(|error| self.own_request_failed(request, error))
    }

    /// Closes the secondary's connection (its cursors with it).
    fn drop_secondary(&mut self) {
        if let Some((_, pin)) = self.secondary.take() {
            self.shared.metrics.pinned(&pin.address.to_string(), false);
        }
        self.secondary_cursors.clear();
    }

    /// Serves one parsed OP_MSG request on the connection in place.
    async fn dispatch_here(
        &mut self,
        request: ReplyTo,
        message: &Bytes,
        parsed: &OpMsg<'_>,
        compressor: Option<Compressor>,
    ) -> Result<(), Failure> {
        match Command::classify(parsed.body()) {
            Command::Hello(hello) => {
                self.send_upstream(message).await?;
                if parsed
                    .body()
                    .get("speculativeAuthenticate")
                    .ok()
                    .flatten()
                    .is_some()
                {
                    return self.relay_speculative_hello(compressor, &hello).await;
                }
                // A client that insists on awaitable hello may get a stream
                // of replies: every one of them is rewritten.
                self.relay_replies(compressor, Some(&hello)).await
            }
            Command::SearchIndexAdmin(admin) => {
                let reply = match self.shared.wait_restored().await {
                    Ok(()) => {
                        self.for_client()
                            .search_index_admin(admin, parsed.body())
                            .await
                    }
                    Err(e) => Err(e),
                }
                .map_err(|error| Failure::Reply { request, error })?;
                self.reply(request, &reply, compressor).await
            }
            Command::Vector(kind) => {
                let rewritten = match self.shared.wait_restored().await {
                    Ok(()) => self.for_client().vector_command(kind, parsed.body()).await,
                    Err(e) => Err(e),
                }
                .map_err(|error| self.own_request_failed(request, error))?;
                if let Some(fetch) = &rewritten.fetch_only {
                    let ranked = rewritten.fetched();
                    let reply = upstream::round_trip(&mut self.upstream, fetch)
                        .await
                        .map_err(|error| Failure::Reply { request, error })?;
                    if !crate::wire::reply_ok(&reply) {
                        if let Some(failure) = self.lost_primary(&reply) {
                            return Err(failure);
                        }
                        return self.reply(request, &reply, compressor).await;
                    }
                    if let Some(ordered) = rewrite::put_in_order(&reply, ranked) {
                        return self.reply(request, &ordered, compressor).await;
                    }
                    // More than one batch after all: close that cursor and
                    // let the upstream order them.
                    self.for_client().kill_cursor_of(&reply, fetch).await;
                }
                let ranked = rewritten.ranked(parsed.body());
                self.send_upstream(&msg::encode_body(request.request_id, 0, &ranked))
                    .await?;
                self.relay_replies(compressor, None).await
            }
            Command::ExplainVector(kind) => {
                let reply = match self.shared.wait_restored().await {
                    Ok(()) => self.for_client().explain_vector(kind, parsed.body()).await,
                    Err(e) => Err(e),
                }
                .map_err(|error| self.own_request_failed(request, error))?;
                self.reply(request, &reply, compressor).await
            }
            Command::Passthrough => {
                if let Some((name, kind)) = parsed
                    .command_name()
                    .and_then(|n| WriteKind::of(n).map(|k| (n, k)))
                {
                    let indexes = self.indexes_for_write(parsed.body(), name);
                    if !indexes.is_empty() {
                        return self
                            .indexed_write(kind, parsed, message, compressor, indexes)
                            .await;
                    }
                }
                if let Some(name) = parsed.command_name().filter(|_| !parsed.more_to_come()) {
                    let dropped = self.indexes_dropped_by(parsed.body(), name);
                    if !dropped.is_empty() {
                        return self.dropping_write(message, compressor, dropped).await;
                    }
                }
                self.send_upstream(message).await?;
                if parsed.more_to_come() {
                    return Ok(());
                }
                if parsed.command_name().is_some_and(is_authentication) {
                    return self.relay_authentication(compressor).await;
                }
                self.relay_replies(compressor, None).await
            }
        }
    }

    /// Relays the upstream's answer to an authentication step, and once a
    /// conversation succeeds (`ok: 1` and `done: true`, or `authenticate`
    /// answered `ok: 1`) lifts the unauthenticated connections' budget from
    /// this client.
    async fn relay_authentication(
        &mut self,
        compressor: Option<Compressor>,
    ) -> Result<(), Failure> {
        let reply = self.read_upstream().await?;
        if let Ok(parsed) = OpMsg::parse(&reply) {
            let body = parsed.body();
            let done = body.get_bool("done").unwrap_or(false)
                || body.get("conversationId").ok().flatten().is_none();
            if crate::wire::reply_ok(body) && done {
                self.client.authenticated();
            }
        }
        self.send_client(&reply, compressor).await
    }

    /// Relays the reply to a hello carrying `speculativeAuthenticate`,
    /// rewritten as every hello reply is; a conversation the server
    /// finished in it (X.509 does) lifts the unauthenticated budget as
    /// `relay_authentication` does.
    async fn relay_speculative_hello(
        &mut self,
        compressor: Option<Compressor>,
        hello: &Hello,
    ) -> Result<(), Failure> {
        let reply = self.read_upstream().await?;
        if let Ok(parsed) = OpMsg::parse(&reply) {
            let done = parsed
                .body()
                .get_document("speculativeAuthenticate")
                .is_ok_and(|s| s.get_bool("done").unwrap_or(false));
            if crate::wire::reply_ok(parsed.body()) && done {
                self.client.authenticated();
            }
        }
        let rewritten = rewrite_msg_reply(&reply, |body| hello.handle_reply(body))?;
        self.send_client(rewritten.as_deref().unwrap_or(&reply), compressor)
            .await
    }

    /// Sends a reply the proxy made itself.
    async fn reply(
        &mut self,
        request: ReplyTo,
        body: &RawDocument,
        compressor: Option<Compressor>,
    ) -> Result<(), Failure> {
        if request.more_to_come {
            return Ok(());
        }
        let out = msg::encode_body(self.shared.next_request_id(), request.request_id, body);
        self.send_client(&out, compressor).await
    }

    /// Legacy OP_QUERY: only the handshake is still valid. It is sent upstream
    /// as the equivalent OP_MSG and answered with an OP_REPLY.
    async fn handle_query(&mut self, message: Bytes) -> Result<(), Failure> {
        let request = ReplyTo {
            request_id: wire::read_i32(&message, 4),
            legacy: true,
            more_to_come: false,
            retry: Retry::None,
        };
        let fail = |error: Error| Failure::Reply { request, error };
        self.current = Some(request);
        if !self.pin_holds() {
            return Err(Failure::Upstream(self.failover(&format!(
                "is no longer the {}; the request was not run",
                self.pin.role.name()
            ))));
        }
        let query = OpQuery::parse(&message).map_err(|e| fail(e.into()))?;
        let command = query.command();
        wire::check_depth(command, wire::MAX_BSON_DEPTH).map_err(|e| fail(e.into()))?;
        let name = msg::first_key(command).unwrap_or("");
        if !query.namespace.ends_with(".$cmd") || !Hello::is_hello(name) {
            return Err(fail(Error::client(
                Code::UNSUPPORTED_OP_QUERY_COMMAND,
                format!(
                    "Unsupported OP_QUERY command: {name}. The client driver may require an upgrade."
                ),
            )));
        }
        let hello = Hello::parse(command);
        let body = with_db(command, query.database()).map_err(fail)?;
        let request_id = query.header.request_id;
        self.send_upstream(&msg::encode_body(request_id, 0, &body))
            .await?;
        let reply = self.read_upstream().await?;
        let parsed = OpMsg::parse(&reply).map_err(|e| upstream_garbage(&e))?;
        let doc = hello.handle_reply(parsed.body());
        let doc: &RawDocument = doc.as_deref().unwrap_or(parsed.body());
        let out = query::encode_reply(self.shared.next_request_id(), request_id, doc);
        self.send_client(&out, None).await
    }

    /// Relays upstream replies until one arrives without `moreToCome`
    /// (exhaust cursors and streamed replies send several), rewriting each
    /// as a router's hello reply when `hello` is given.
    async fn relay_replies(
        &mut self,
        compressor: Option<Compressor>,
        hello: Option<&Hello>,
    ) -> Result<(), Failure> {
        loop {
            let reply = self.read_upstream().await?;
            let more = reply.len() >= 20
                && Header::parse(&reply).map(|h| h.op_code) == Ok(OpCode::Msg)
                && wire::read_u32(&reply, 16) & msg::MORE_TO_COME != 0;
            let rewritten = match hello {
                Some(hello) => rewrite_msg_reply(&reply, |body| hello.handle_reply(body))?,
                None => None,
            };
            self.send_client(rewritten.as_deref().unwrap_or(&reply), compressor)
                .await?;
            if !more {
                return Ok(());
            }
        }
    }

    pub(super) async fn send_upstream(&mut self, message: &[u8]) -> Result<(), Failure> {
        self.forwarded_at = Some(Instant::now());
        let written = self.upstream.write_frame(message).await;
        written.map_err(|e| Failure::Upstream(self.failover(&format!("failed: {e}"))))
    }

    /// The next upstream reply, inflated if the upstream compressed it.
    /// Ends with [`Failure::Upstream`] when the connection breaks or its
    /// server loses its role while the reply is awaited. A reply that says
    /// the server is no longer primary takes it out of selection
    /// ([`crate::upstream::topology::Topology::demote`]) and ends the pair
    /// the same way.
    pub(super) async fn read_upstream(&mut self) -> Result<Bytes, Failure> {
        let read = tokio::select! {
            // A reply already here wins over news of a failover.
            biased;
            read = self.upstream.read_frame() => read,
            () = lost(&mut self.views, &self.pin) => {
                return Err(Failure::Upstream(self.failover(&format!(
                    "is no longer the {} (the request was in flight)",
                    self.pin.role.name()
                ))));
            }
        };
        let broken = |why: String| Failure::Upstream(self.failover(&why));
        let frame = match read {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(broken("closed the connection".into())),
            Err(e) => return Err(broken(format!("failed: {e}"))),
        };
        if let Some(sent) = self.forwarded_at.take() {
            self.shared.metrics.upstream_latency.observe(sent.elapsed());
        }
        let (_, reply) = wire::inflate(frame).map_err(|e| upstream_garbage(&e))?;
        // Parsed once for all that reads it.
        let said = match OpMsg::parse(&reply) {
            Ok(parsed) => {
                let body = parsed.body();
                if self.swapped {
                    self.note_cursor(body);
                }
                if self.shared.config.upstream.credentials.is_some() {
                    self.shared.config.deployment.note_cluster_time(body);
                }
                not_primary(body)
            }
            Err(_) => NotPrimary::No,
        };
        if self.pin.role != Role::Primary || matches!(said, NotPrimary::No) {
            return Ok(reply);
        }
        tracing::info!(server = %self.pin.address, "upstream says it is no longer primary");
        self.shared
            .config
            .deployment
            .demote(&self.shared.config, &self.pin.address);
        if matches!(said, NotPrimary::NotRun) {
            // Not run: answered as a failover, so the driver drops its
            // pool (stale pins all) and retries on a new connection.
            return Err(Failure::Upstream(
                self.failover("answered that it is no longer primary"),
            ));
        }
        // The write ran; its reply (counts, the server's labels) goes to
        // the client as it is, and the demotion ends the pair once it is
        // sent (`send_client`).
        Ok(reply)
    }

    /// Reads and drops the replies the upstream still owes to a request
    /// abandoned at `--request-timeout-ms`, so the pinned connection (and
    /// the client's authentication on it) serves the next request. Waits
    /// at most [`DRAIN_WAIT`]; past it the client connection closes, a
    /// network error its driver retries on a new one.
    async fn drain_upstream(&mut self) -> Result<(), Failure> {
        if self.upstream.outstanding() == 0 {
            return Ok(());
        }
        let drain = async {
            while self.upstream.outstanding() > 0 {
                match self.upstream.read_frame().await {
                    Ok(Some(_)) => {}
                    _ => return Err(()),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(DRAIN_WAIT, drain).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Failure::Close(
                "the upstream did not answer a request abandoned at the request timeout".into(),
            )),
        }
    }

    /// Sends a reply, compressed the way the request was.
    pub(super) async fn send_client(
        &mut self,
        reply: &[u8],
        compressor: Option<Compressor>,
    ) -> Result<(), Failure> {
        let packed;
        let bytes = match compressor {
            Some(c) => {
                packed = wire::compressed::compress(reply, c)
                    .map_err(|e| Failure::Close(format!("compressing a reply: {e}")))?;
                &packed[..]
            }
            None => reply,
        };
        self.client_dirty = true;
        self.answered = true;
        self.client
            .write_frame(bytes)
            .await
            .map_err(|e| Failure::Close(format!("client write failed: {e}")))?;
        self.client_dirty = false;
        if !self.pin_holds() {
            // The reply went out; the connection's server is no longer
            // in its role, so the driver's next request (its retry, if
            // the reply was an error) must come on a new connection.
            return Err(Failure::Close(format!(
                "{} is no longer the {}",
                self.pin.address,
                self.pin.role.name()
            )));
        }
        Ok(())
    }
}

impl Session {
    /// Notes the cursor a reply from the secondary opened (so its
    /// `getMore`s are sent there), or forgets one it exhausted. At most
    /// [`MAX_SECONDARY_CURSORS`] are noted; past that, reads stay on the
    /// primary until some are closed.
    fn note_cursor(&mut self, reply: &RawDocument) {
        let ok = crate::wire::reply_ok(reply);
        let id = reply.get_document("cursor").and_then(|c| c.get_i64("id"));
        match id {
            // A failed or exhausted getMore: its cursor is gone.
            _ if !ok => self.forget_current_cursors(),
            Ok(0) => self.forget_current_cursors(),
            Ok(id) if self.secondary_cursors.len() < MAX_SECONDARY_CURSORS => {
                self.secondary_cursors.insert(id);
            }
            _ => {}
        }
    }
}

impl Session {
    /// Forgets the cursors the `getMore` being served continued.
    fn forget_current_cursors(&mut self) {
        for id in self.current_cursor_ids.take().unwrap_or_default() {
            self.secondary_cursors.remove(&id);
        }
    }
}

/// Most cursors one client connection may have open on its secondary.
const MAX_SECONDARY_CURSORS: usize = 10_000;

/// Why a request is served on the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Its read preference sends it there.
    Read,
    /// It continues or closes a cursor opened there.
    Cursor,
}

/// Most tag sets a read preference may name, and most tags in each.
const MAX_TAG_SETS: usize = 32;

/// A read preference's `tags`: tag sets in order of preference; `None`
/// past [`MAX_TAG_SETS`] (a client must not make the proxy copy a 48 MB
/// list on every request).
fn read_tags(preference: &RawDocument) -> Option<Vec<crate::upstream::topology::TagSet>> {
    let Ok(sets) = preference.get_array("tags") else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    for set in sets.into_iter().flatten() {
        let Some(set) = set.as_document() else {
            continue;
        };
        if out.len() == MAX_TAG_SETS {
            return None;
        }
        let mut tags = Vec::new();
        for (key, value) in set.into_iter().flatten() {
            if tags.len() == MAX_TAG_SETS {
                return None;
            }
            if let Some(value) = value.as_str() {
                tags.push((key.to_string(), value.to_string()));
            }
        }
        tags.sort();
        out.push(tags);
    }
    Some(out)
}

/// Commands a `mongos` sends where their read preference says: reads
/// (an `aggregate` that writes with `$out` or `$merge` stays on the
/// primary).
fn is_routable_read(name: &str, body: &RawDocument) -> bool {
    match name {
        "find" | "count" | "distinct" => true,
        "aggregate" => !body.get_array("pipeline").is_ok_and(|stages| {
            stages.into_iter().flatten().any(|stage| {
                stage.as_document().is_some_and(|d| {
                    d.get("$out").ok().flatten().is_some()
                        || d.get("$merge").ok().flatten().is_some()
                })
            })
        }),
        _ => false,
    }
}

/// The cursor ids a `getMore` or `killCursors` names.
fn cursor_ids(body: &RawDocument) -> Vec<i64> {
    match msg::first_key(body) {
        Some("getMore") => body.get_i64("getMore").into_iter().collect(),
        Some("killCursors") => body
            .get_array("cursors")
            .map(|a| a.into_iter().flatten().filter_map(|v| v.as_i64()).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared
            .metrics
            .pinned(&self.pin.address.to_string(), false);
        if let Some((_, pin)) = &self.secondary {
            self.shared.metrics.pinned(&pin.address.to_string(), false);
        }
    }
}

/// Resolves once `views` shows `pin` no longer in its role.
async fn lost(views: &mut tokio::sync::watch::Receiver<View>, pin: &Pin) {
    loop {
        if !views.borrow_and_update().still_serves(pin) {
            return;
        }
        if views.changed().await.is_err() {
            // The topology is gone with the proxy: never resolves.
            std::future::pending::<()>().await;
        }
    }
}

/// The codes with which a replica-set member says it is not (or no
/// longer) primary, or is shutting down: the "not writable primary" and
/// "node is recovering" errors of the SDAM specification.
const NOT_PRIMARY_CODES: &[i32] = &[10107, 13435, 13436, 189, 91, 11600, 11602, 10058];

/// Whether a reply body is an error of [`NOT_PRIMARY_CODES`], or a
/// write whose write concern failed with one.
fn not_primary(body: &RawDocument) -> NotPrimary {
    let listed = |code: Result<i32, _>| code.is_ok_and(|c| NOT_PRIMARY_CODES.contains(&c));
    if crate::wire::reply_ok(body) {
        let concern = body.get_document("writeConcernError");
        if concern.is_ok_and(|w| listed(w.get_i32("code"))) {
            return NotPrimary::AfterWriting;
        }
        return NotPrimary::No;
    }
    if listed(body.get_i32("code")) {
        NotPrimary::NotRun
    } else {
        NotPrimary::No
    }
}

/// What a reply says about its server being primary.
enum NotPrimary {
    No,
    /// The command failed with a "not primary" code: it did not run.
    NotRun,
    /// The write ran, and its write concern failed with one (the server
    /// stepped down while waiting for replication).
    AfterWriting,
}

/// The wait a request itself asks the server for, which a request timeout
/// must allow: `maxAwaitTimeMS` (awaitable hello, change streams), or the
/// `maxTimeMS` of a `getMore` (its await time on a tailable cursor).
fn client_wait(body: &RawDocument) -> std::time::Duration {
    let ms = |key: &str| {
        crate::wire::integer(body.get(key).ok().flatten())
            .filter(|ms| *ms > 0)
            .map_or(0, |ms| ms as u64)
    };
    let get_more = msg::first_key(body) == Some("getMore");
    std::time::Duration::from_millis(ms("maxAwaitTimeMS").max(if get_more {
        ms("maxTimeMS")
    } else {
        0
    }))
}

/// Applies `rewrite` to the body of an OP_MSG reply, keeping its header ids
/// and its other sections; `None` when the body stays as it is.
fn rewrite_msg_reply(
    reply: &[u8],
    rewrite: impl FnOnce(&RawDocument) -> Option<RawDocumentBuf>,
) -> Result<Option<Vec<u8>>, Failure> {
    let parsed = OpMsg::parse(reply).map_err(|e| upstream_garbage(&e))?;
    let Some(body) = rewrite(parsed.body()) else {
        return Ok(None);
    };
    let sections: Vec<msg::Section<'_>> = parsed
        .sections
        .iter()
        .map(|s| match s {
            msg::Section::Body(_) => msg::Section::Body(&body),
            other => other.clone(),
        })
        .collect();
    Ok(Some(msg::encode(
        parsed.header.request_id,
        parsed.header.response_to,
        parsed.flags,
        &sections,
    )))
}

/// `command` with `$db` set, as OP_MSG requires.
fn with_db(command: &RawDocument, db: &str) -> Result<RawDocumentBuf, Error> {
    let mut out = RawDocumentBuf::new();
    for entry in command {
        let (key, value) = entry.map_err(|e| Error::client(Code::INVALID_BSON, e.to_string()))?;
        if key != "$db" {
            out.append(key, value.to_raw_bson());
        }
    }
    out.append("$db", db);
    Ok(out)
}

fn upstream_garbage(e: &wire::WireError) -> Failure {
    Failure::Close(format!("upstream sent an undecodable reply: {e}"))
}

/// The error reply for `request`. A transient error the proxy made itself
/// (the upstream unreachable, closed mid-request, or past
/// `--request-timeout-ms`) carries the label a `mongos` would give it, so
/// drivers retry the write or the transaction.
fn encode_error(shared: &Shared, request: ReplyTo, error: &Error) -> Vec<u8> {
    let labelled;
    let error = match request.retry.label().filter(|_| error.is_transient()) {
        Some(label) => {
            let mut with = error.clone();
            with.label(label);
            labelled = with;
            &labelled
        }
        None => error,
    };
    let body = error.to_reply();
    if request.legacy {
        query::encode_reply(shared.next_request_id(), request.request_id, &body)
    } else {
        msg::encode_body(shared.next_request_id(), request.request_id, &body)
    }
}

/// Serves a client whose upstream could not be reached: its first request
/// gets the error (so the driver reports it at once), then the connection
/// closes.
pub(super) async fn refuse(mut client: Connection, shared: &Shared, error: Error) {
    tracing::warn!(%error, "refusing client");
    let Ok(Some(frame)) = client.read_frame().await else {
        return;
    };
    let Ok(header) = Header::parse(&frame) else {
        return;
    };
    let request = ReplyTo {
        request_id: header.request_id,
        legacy: header.op_code == OpCode::Query,
        more_to_come: false,
        retry: Retry::None,
    };
    let _ = client
        .write_frame(&encode_error(shared, request, &error))
        .await;
}

/// Commands that carry an authentication conversation.
fn is_authentication(name: &str) -> bool {
    matches!(name, "saslStart" | "saslContinue" | "authenticate")
}
