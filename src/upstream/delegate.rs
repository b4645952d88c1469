//! Reads run on a secondary as the proxy, for a client behind access
//! control.
//!
//! A client's authentication lives on the connection it authenticated
//! (its SCRAM proof answers that server's nonce), so it cannot be carried
//! to a secondary. A `mongos` solves the same problem by checking the
//! client's rights itself and reading from the shard as itself; likewise
//! does the same: the session checks the rights on the client's own
//! connection ([`crate::command::reads`]), then sends the read here.
//!
//! [`spawn`] gives the session an in-process [`Connection`] that behaves
//! like one to the secondary: every OP_MSG request written on it is run on
//! that one server by the driver (the proxy's credentials, its TLS), in
//! one driver session of its own so that the cursors it opens are
//! continued by later `getMore`s on it, and the reply comes back as an
//! OP_MSG frame. A server's error is an `ok: 0` reply with its code, name
//! and labels; a failure to reach the server (network, selection) closes
//! the connection, which the session treats as any upstream connection
//! that broke. Cursors still open when the connection is dropped are
//! killed.

use crate::conn::Connection;
use crate::error::Code;
use crate::wire::{msg, OpMsg};
use bson::{rawdoc, RawArrayBuf, RawDocument, RawDocumentBuf};
use mongodb::options::{SelectionCriteria, ServerAddress};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes in flight each way on the in-process pair.
const PIPE_BUFFER: usize = 256 * 1024;

/// Most cursors remembered for killing at the end (the session bounds
/// what it opens below this).
const MAX_OPEN_CURSORS: usize = 16 * 1024;

/// Longest the cursors left open are given to be killed.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Fields of a client's command the driver sets itself for its own
/// session and server: the client's session, cluster time and read
/// preference belong to the client's connection, not to this one.
const CLIENT_FIELDS: &[&str] = &[
    "$db",
    "lsid",
    "$clusterTime",
    "$readPreference",
    "txnNumber",
    "autocommit",
    "startTransaction",
];

/// A connection whose requests run on the server at `address` through
/// `client` (the proxy's reads client), as the proxy. Each runs for at
/// most `bound` plus the `maxTimeMS` it gives; past that its reply is
/// `MaxTimeMSExpired` (50) and the connection goes on. `seen` is the
/// latest cluster time the upstream itself signed in a reply the proxy
/// relayed ([`super::Deployment::note_cluster_time`]). The serving task
/// ends when the returned connection is dropped.
pub fn spawn(
    client: mongodb::Client,
    address: ServerAddress,
    bound: Duration,
    seen: Arc<AtomicU64>,
) -> Connection {
    let (near, far) = Connection::pair(PIPE_BUFFER);
    tokio::spawn(serve(far, client, address, bound, seen));
    near
}

async fn serve(
    mut end: Connection,
    client: mongodb::Client,
    address: ServerAddress,
    bound: Duration,
    seen: Arc<AtomicU64>,
) {
    let server = address.clone();
    let criteria = SelectionCriteria::Predicate(Arc::new(move |info| info.address() == &server));
    // Causal consistency stays the client's: its `afterClusterTime`, if
    // any, is in the command it sent.
    let session = client.start_session().causal_consistency(false).await;
    let Ok(mut session) = session else {
        return;
    };
    let mut open: HashMap<i64, (String, String)> = HashMap::new();
    while let Ok(Some(frame)) = end.read_frame().await {
        let Ok(request) = OpMsg::parse(&frame) else {
            break;
        };
        let reply = match prepare(&request) {
            Err(error) => error,
            Ok((db, command)) => {
                // The client's cluster time goes on (the driver sends the
                // later of it and its own): a causally consistent read's
                // `afterClusterTime` may be past what the secondary has
                // heard of otherwise. Only a time the upstream itself has
                // given out: a client must not make the proxy gossip a
                // forged one (a user holding `advanceClusterTime` would
                // move the whole deployment's clock).
                if let Some((time, at)) = cluster_time(request.body()) {
                    if at <= seen.load(Ordering::Relaxed) {
                        session.advance_cluster_time(&time);
                    }
                }
                let wait = Duration::from_millis(
                    crate::wire::integer(command.get("maxTimeMS").ok().flatten())
                        .filter(|ms| *ms > 0)
                        .map_or(0, |ms| ms as u64),
                );
                let database = client.database(&db);
                let run = database
                    .run_raw_command(command.clone())
                    .selection_criteria(criteria.clone());
                // `killCursors` takes no session (the driver refuses one).
                let run = if msg::first_key(&command) == Some("killCursors") {
                    run
                } else {
                    run.session(&mut session)
                };
                match tokio::time::timeout(bound + wait, run).await {
                    Ok(Ok(reply)) => match RawDocumentBuf::from_document(&reply) {
                        Ok(reply) => {
                            note_cursors(&mut open, &db, &command, &reply);
                            reply
                        }
                        Err(_) => break,
                    },
                    Ok(Err(e)) => match server_error(&e) {
                        Some(reply) => reply,
                        // The server could not be reached: as if the
                        // connection to it broke.
                        None => {
                            tracing::debug!(error = %e, %address, "delegated read failed");
                            break;
                        }
                    },
                    Err(_) => error_reply(
                        Code::relayed(50, "MaxTimeMSExpired"),
                        &format!(
                            "likewise: the read on secondary {address} took longer than {} ms",
                            (bound + wait).as_millis()
                        ),
                    ),
                }
            }
        };
        if request.flags & msg::MORE_TO_COME != 0 {
            // The client expects no reply.
            continue;
        }
        let out = msg::encode_body(super::next_request_id(), request.header.request_id, &reply);
        if end.write_frame(&out).await.is_err() {
            break;
        }
    }
    kill(&client, &criteria, open).await;
}

/// The database and the command to run from a client's request: its body
/// without [`CLIENT_FIELDS`]. Document sequences (which no read sends) are
/// refused.
fn prepare(request: &OpMsg<'_>) -> Result<(String, RawDocumentBuf), RawDocumentBuf> {
    if request.sections.len() != 1 {
        return Err(error_reply(
            Code::INVALID_OPTIONS,
            "likewise: a read sent to a secondary carries no document sequence",
        ));
    }
    let body = request.body();
    let Ok(db) = body.get_str("$db") else {
        return Err(error_reply(
            Code::relayed(40571, "Location40571"),
            "OP_MSG requests require a $db argument",
        ));
    };
    let mut command = RawDocumentBuf::new();
    for (key, value) in body.iter().flatten() {
        if !CLIENT_FIELDS.contains(&key) {
            command.append(key, value.to_raw_bson());
        }
    }
    Ok((db.to_string(), command))
}

/// The `$clusterTime` a client's command gossips, if well formed, and its
/// timestamp as [`timestamp_order`] gives it.
fn cluster_time(body: &RawDocument) -> Option<(mongodb::ClusterTime, u64)> {
    let time = body.get_document("$clusterTime").ok()?;
    let at = timestamp_order(time.get_timestamp("clusterTime").ok()?);
    Some((bson::from_slice(time.as_bytes()).ok()?, at))
}

/// A BSON timestamp as one number ordered as timestamps are (seconds,
/// then increment).
pub fn timestamp_order(t: bson::Timestamp) -> u64 {
    (u64::from(t.time) << 32) | u64::from(t.increment)
}

/// Keeps `open` in step with a successful reply: a cursor opened, one
/// exhausted, ones killed.
fn note_cursors(
    open: &mut HashMap<i64, (String, String)>,
    db: &str,
    command: &RawDocument,
    reply: &RawDocument,
) {
    let name = msg::first_key(command).unwrap_or("");
    if name == "killCursors" {
        for id in command.get_array("cursors").into_iter().flatten().flatten() {
            if let Some(id) = id.as_i64() {
                open.remove(&id);
            }
        }
        return;
    }
    let Ok(cursor) = reply.get_document("cursor") else {
        return;
    };
    let id = cursor.get_i64("id").unwrap_or(0);
    if name == "getMore" {
        if id == 0 {
            if let Ok(old) = command.get_i64("getMore") {
                open.remove(&old);
            }
        }
        return;
    }
    if id != 0 && open.len() < MAX_OPEN_CURSORS {
        let ns = cursor.get_str("ns").unwrap_or("");
        let collection = ns.split_once('.').map_or(ns, |(_, c)| c);
        open.insert(id, (db.to_string(), collection.to_string()));
    }
}

/// Kills the cursors left open, grouped by namespace, within [`KILL_WAIT`].
async fn kill(
    client: &mongodb::Client,
    criteria: &SelectionCriteria,
    open: HashMap<i64, (String, String)>,
) {
    let mut by_namespace: HashMap<(String, String), RawArrayBuf> = HashMap::new();
    for (id, namespace) in open {
        by_namespace.entry(namespace).or_default().push(id);
    }
    let killing = async {
        for ((db, collection), ids) in by_namespace {
            let command = rawdoc! { "killCursors": collection, "cursors": ids };
            let database = client.database(&db);
            let _ = database
                .run_raw_command(command)
                .selection_criteria(criteria.clone())
                .await;
        }
    };
    let _ = tokio::time::timeout(KILL_WAIT, killing).await;
}

/// The reply for a command the driver reports as failed: the server's
/// `ok: 0` with its code, name, message and labels, or the proxy's for a
/// command the driver refused to send. `None` when the server could not
/// be reached (network, pool, selection).
fn server_error(e: &mongodb::error::Error) -> Option<RawDocumentBuf> {
    use mongodb::error::ErrorKind;
    let c = match e.kind.as_ref() {
        ErrorKind::Command(c) => c,
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. } => return None,
        _ => return Some(super::driver_error(e.clone()).to_reply()),
    };
    let mut error = crate::error::Error::upstream(Code::relayed(c.code, &c.code_name), &c.message);
    let mut labels: Vec<_> = e.labels().iter().collect();
    labels.sort();
    for label in labels {
        error.label(label);
    }
    Some(error.to_reply())
}

fn error_reply(code: Code, message: &str) -> RawDocumentBuf {
    crate::error::Error::upstream(code, message.to_string()).to_reply()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cluster_time_a_client_gossips() {
        let at = |t: u32| {
            let body = rawdoc! {
                "find": "c",
                "$clusterTime": {
                    "clusterTime": bson::Timestamp { time: t, increment: 1 },
                    "signature": {
                        "hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0; 20] },
                        "keyId": 0_i64,
                    },
                },
            };
            cluster_time(&body).expect("a well-formed $clusterTime")
        };
        assert!(at(5).0 < at(6).0);
        assert!(at(5).1 < at(6).1);
        assert!(cluster_time(&rawdoc! { "find": "c" }).is_none());
        assert!(cluster_time(&rawdoc! { "find": "c", "$clusterTime": { "x": 1 } }).is_none());
    }

    #[test]
    fn the_client_s_session_fields_are_left_to_the_driver() {
        let body = rawdoc! {
            "find": "c", "filter": {}, "lsid": { "id": 1 }, "$db": "d",
            "$readPreference": { "mode": "secondary" }, "$clusterTime": {}, "readConcern": {},
        };
        let frame = msg::encode_body(7, 0, &body);
        let (db, command) = prepare(&OpMsg::parse(&frame).unwrap()).unwrap();
        assert_eq!(db, "d");
        let keys: Vec<_> = command
            .iter()
            .flatten()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(keys, ["find", "filter", "readConcern"]);
    }
}
