//! Follows a collection's change stream so writes that bypass this proxy
//! (other applications, other likewise instances) reach its indexes.
//!
//! The stream is opened before the build scan starts, so every change made
//! during or after the scan is applied once the scan is done; applying a
//! change is idempotent (documents come as `fullDocument: "updateLookup"`,
//! their current state), so overlap with the scan or with write-through
//! does no harm. The last resume token is kept on the index for snapshots.

use crate::config::Config;
use crate::conn::Connection;
use crate::error::{Code, Error};
use crate::index::registry::SearchIndex;
use crate::maintain::fresh::{self, IdSet};
use crate::upstream;
use bson::{rawdoc, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use std::collections::HashMap;
use std::sync::Arc;

/// How long each `getMore` waits for new changes.
const AWAIT_MS: i32 = 500;

pub struct ChangeStream {
    conn: Connection,
    db: String,
    collection: String,
    cursor: i64,
    /// Events of the opening batch (a resumed stream may have some).
    pending: Option<Changes>,
}

/// What a batch of change events means for an index: the last state of
/// each document it names, in the order the events came.
#[derive(Default)]
pub struct Changes {
    slot: HashMap<Vec<u8>, usize>,
    last: Vec<(RawBson, Option<RawDocumentBuf>)>,
    /// The collection was dropped, renamed or the stream invalidated.
    pub invalidated: bool,
}

impl Changes {
    fn set(&mut self, id: RawBsonRef<'_>, doc: Option<RawDocumentBuf>) {
        let mut key = RawDocumentBuf::new();
        key.append("", id.to_raw_bson());
        match self.slot.get(key.as_bytes()) {
            Some(&i) => self.last[i].1 = doc,
            None => {
                self.slot.insert(key.into_bytes(), self.last.len());
                self.last.push((id.to_raw_bson(), doc));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }
}

impl ChangeStream {
    /// Opens the stream, after `resume` when given. Returns it with the
    /// token of its starting point.
    pub async fn open(
        config: &Config,
        index: &SearchIndex,
        resume: Option<RawDocumentBuf>,
    ) -> Result<(ChangeStream, Option<RawDocumentBuf>), Error> {
        let mut conn = upstream::connect(config).await?;
        let mut stage = rawdoc! { "fullDocument": "updateLookup" };
        if let Some(token) = resume {
            stage.append("resumeAfter", token);
        }
        let body = rawdoc! {
            "aggregate": index.collection.as_str(),
            "pipeline": [{ "$changeStream": stage }],
            "cursor": {},
            "$db": index.db.as_str(),
        };
        let reply = upstream::command(&mut conn, &body).await?;
        let (id, token, changes) = read_reply(&reply, "firstBatch")?;
        let stream = ChangeStream {
            conn,
            db: index.db.clone(),
            collection: index.collection.clone(),
            cursor: id,
            pending: Some(changes),
        };
        Ok((stream, token))
    }

    /// Waits briefly for changes; returns them with the new resume token.
    pub async fn next(&mut self) -> Result<(Changes, Option<RawDocumentBuf>), Error> {
        if let Some(changes) = self.pending.take() {
            return Ok((changes, None));
        }
        if self.cursor == 0 {
            let changes = Changes {
                invalidated: true,
                ..Changes::default()
            };
            return Ok((changes, None));
        }
        let body = rawdoc! {
            "getMore": self.cursor,
            "collection": self.collection.as_str(),
            "maxTimeMS": AWAIT_MS,
            "$db": self.db.as_str(),
        };
        let reply = upstream::command(&mut self.conn, &body).await?;
        let (id, token, changes) = read_reply(&reply, "nextBatch")?;
        self.cursor = id;
        Ok((changes, token))
    }
}

fn read_reply(
    reply: &RawDocument,
    batch: &str,
) -> Result<(i64, Option<RawDocumentBuf>, Changes), Error> {
    let cursor = reply.get_document("cursor").map_err(|_| {
        Error::upstream(
            Code::PROTOCOL_ERROR,
            "likewise: change stream reply has no cursor",
        )
    })?;
    let id = cursor.get_i64("id").unwrap_or(0);
    let token = cursor
        .get_document("postBatchResumeToken")
        .ok()
        .map(ToOwned::to_owned);
    let mut changes = Changes::default();
    for event in cursor.get_array(batch).into_iter().flatten().flatten() {
        if let Some(event) = event.as_document() {
            read_event(event, &mut changes);
        }
    }
    changes.invalidated |= id == 0;
    Ok((id, token, changes))
}

fn read_event(event: &RawDocument, changes: &mut Changes) {
    let id = event
        .get_document("documentKey")
        .ok()
        .and_then(|k| k.get("_id").ok().flatten());
    match (event.get_str("operationType").unwrap_or(""), id) {
        ("insert" | "update" | "replace", Some(id)) => {
            let doc = match event.get("fullDocument") {
                Ok(Some(RawBsonRef::Document(doc))) => Some(doc.to_owned()),
                _ => None, // deleted before the lookup: a later event says so
            };
            changes.set(id, doc);
        }
        ("delete", Some(id)) => changes.set(id, None),
        ("drop" | "rename" | "dropDatabase" | "invalidate", _) => changes.invalidated = true,
        _ => {}
    }
}

/// Applies a batch of changes to one index (CPU work: a blocking thread).
pub fn apply(index: &Arc<SearchIndex>, changes: &Changes) {
    let present: Vec<&RawDocumentBuf> = changes
        .last
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .collect();
    let mut gone = IdSet::default();
    for (id, doc) in &changes.last {
        if doc.is_none() {
            gone.add(id.as_raw_bson_ref());
        }
    }
    fresh::apply(std::slice::from_ref(index), &present, &gone);
}
