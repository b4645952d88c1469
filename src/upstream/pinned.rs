//! Commands the proxy runs on a client's pinned connection, on the
//! client's behalf and under its authentication (authorisation probes, a
//! vector query's filter reads, a write's re-reads): the driver cannot
//! speak on a connection a client authenticated, so these few are framed
//! here. Request ids come from [`next_request_id`], a range clients do not
//! use, so replies never cross.

use crate::conn::Connection;
use crate::error::{Code, Error};
use crate::wire::{self, msg, OpMsg};
use bson::{rawdoc, RawBsonRef, RawDocument, RawDocumentBuf};
use std::sync::atomic::{AtomicI32, Ordering};

static REQUEST_IDS: AtomicI32 = AtomicI32::new(1 << 30);

/// Request ids for the proxy's own requests: a range clients do not use in
/// practice, and unique within the process.
pub fn next_request_id() -> i32 {
    REQUEST_IDS.fetch_add(1, Ordering::Relaxed) & i32::MAX
}

/// Runs one command and returns its reply body; `ok: 0` replies become
/// errors carrying the upstream's code and message.
pub async fn command(conn: &mut Connection, body: &RawDocument) -> Result<RawDocumentBuf, Error> {
    let reply = round_trip(conn, body).await?;
    check_ok(&reply)?;
    Ok(reply)
}

/// Runs one command and returns its reply body as it came, `ok: 0`
/// included (with its labels, for the client to see).
pub async fn round_trip(
    conn: &mut Connection,
    body: &RawDocument,
) -> Result<RawDocumentBuf, Error> {
    let request_id = next_request_id();
    let on_secondary;
    let body = if conn.is_secondary() && body.get("$readPreference").ok().flatten().is_none() {
        let mut with = body.to_owned();
        with.append("$readPreference", rawdoc! { "mode": "secondaryPreferred" });
        on_secondary = with;
        &on_secondary
    } else {
        body
    };
    conn.write_frame(&msg::encode_body(request_id, 0, body))
        .await
        .map_err(|e| {
            conn.mark_broken();
            Error::upstream(
                Code::HOST_UNREACHABLE,
                format!("likewise: upstream write failed: {e}"),
            )
        })?;
    let frame = match conn.read_frame().await {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            conn.mark_broken();
            return Err(closed());
        }
        Err(e) => {
            conn.mark_broken();
            return Err(Error::upstream(
                Code::HOST_UNREACHABLE,
                format!("likewise: upstream read failed: {e}"),
            ));
        }
    };
    let (_, message) = wire::inflate(frame).map_err(garbage)?;
    let parsed = OpMsg::parse(&message).map_err(garbage)?;
    if parsed.header.response_to != request_id {
        return Err(Error::upstream(
            Code::PROTOCOL_ERROR,
            "likewise: upstream answered another request",
        ));
    }
    Ok(parsed.body().to_owned())
}

fn closed() -> Error {
    Error::upstream(
        Code::HOST_UNREACHABLE,
        "likewise: upstream closed the connection",
    )
}

fn garbage(e: wire::WireError) -> Error {
    Error::upstream(
        Code::PROTOCOL_ERROR,
        format!("likewise: bad upstream reply: {e}"),
    )
}

/// Turns an `ok: 0` reply into an error with the upstream's code.
pub fn check_ok(reply: &RawDocument) -> Result<(), Error> {
    if crate::wire::reply_ok(reply) {
        return Ok(());
    }
    let message = reply
        .get_str("errmsg")
        .unwrap_or("command failed")
        .to_string();
    let code = reply.get_i32("code").unwrap_or(Code::INTERNAL_ERROR.code);
    let name = reply.get_str("codeName").unwrap_or("UnknownError");
    let code = Code::relayed(code, name);
    let mut error = Error::upstream(code, message);
    for label in reply
        .get_array("errorLabels")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(label) = label.as_str() {
            error.label(label);
        }
    }
    Err(error)
}

/// A cursor opened on a client's pinned connection, read batch by batch
/// with `getMore`.
pub struct Cursor<'c> {
    conn: &'c mut Connection,
    db: String,
    collection: String,
    id: i64,
    pending: Option<Vec<RawDocumentBuf>>,
    /// The opening command's session and transaction fields, which its
    /// `getMore`s and `killCursors` carry too (a cursor opened in a
    /// session is continued only in it).
    session: RawDocumentBuf,
}

/// The fields that put a command in a client's logical session and
/// transaction, as a cursor's later commands must repeat them.
const CURSOR_SESSION_FIELDS: &[&str] = &["lsid", "txnNumber", "autocommit"];

impl<'c> Cursor<'c> {
    /// Runs a cursor-returning command (`find`, `aggregate`).
    pub async fn open(
        conn: &'c mut Connection,
        db: &str,
        body: &RawDocument,
    ) -> Result<Cursor<'c>, Error> {
        let reply = command(conn, body).await?;
        let (id, collection, batch) = read_batch(&reply, "firstBatch")?;
        let mut session = RawDocumentBuf::new();
        for key in CURSOR_SESSION_FIELDS {
            if let Ok(Some(value)) = body.get(key) {
                session.append(*key, value.to_raw_bson());
            }
        }
        Ok(Cursor {
            conn,
            db: db.to_string(),
            collection,
            id,
            pending: Some(batch),
            session,
        })
    }

    /// `command` with the opening command's session fields.
    fn in_session(&self, mut command: RawDocumentBuf) -> RawDocumentBuf {
        for (key, value) in self.session.iter().flatten() {
            command.append(key, value.to_raw_bson());
        }
        command
    }

    /// Kills the cursor if it is still open (a failure only leaves it to
    /// time out).
    pub async fn kill(self) {
        if self.id == 0 {
            return;
        }
        let kill = self.in_session(rawdoc! {
            "killCursors": self.collection.as_str(), "cursors": [self.id], "$db": self.db.as_str(),
        });
        if let Err(e) = command(self.conn, &kill).await {
            tracing::debug!(error = %e, "killCursors of an abandoned cursor failed");
        }
    }

    /// The next batch, `None` once the cursor is exhausted.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<RawDocumentBuf>>, Error> {
        if let Some(batch) = self.pending.take() {
            return Ok(Some(batch));
        }
        if self.id == 0 {
            return Ok(None);
        }
        let get_more = self.in_session(rawdoc! {
            "getMore": self.id, "collection": self.collection.as_str(), "$db": self.db.as_str(),
        });
        let reply = command(self.conn, &get_more).await?;
        let (id, _, batch) = read_batch(&reply, "nextBatch")?;
        self.id = id;
        Ok(Some(batch))
    }
}

fn read_batch(reply: &RawDocument, key: &str) -> Result<(i64, String, Vec<RawDocumentBuf>), Error> {
    let malformed = || Error::upstream(Code::PROTOCOL_ERROR, "likewise: malformed cursor reply");
    let cursor = reply.get_document("cursor").map_err(|_| malformed())?;
    let id = cursor.get_i64("id").map_err(|_| malformed())?;
    let collection = cursor
        .get_str("ns")
        .ok()
        .and_then(|ns| ns.split_once('.').map(|(_, c)| c.to_string()))
        .unwrap_or_default();
    let mut docs = Vec::new();
    for doc in cursor.get_array(key).map_err(|_| malformed())? {
        match doc {
            Ok(RawBsonRef::Document(d)) => docs.push(d.to_owned()),
            _ => return Err(malformed()),
        }
    }
    Ok((id, collection, docs))
}
