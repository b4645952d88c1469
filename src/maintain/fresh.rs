//! Write-through freshness: writes that pass through the proxy update every
//! index of their collection before the client sees the acknowledgement,
//! so the next vector query on any connection reflects them
//! (read-your-writes).
//!
//! Which documents a write touches: an insert carries them; an update,
//! delete or findAndModify names them by filter, so the documents matching
//! each filter are looked up just before the write is forwarded, and the
//! ids the reply reports (upserts, findAndModify's document) are added.
//! After the write those documents are read again: present ones are
//! (re)indexed, missing ones removed. All of it runs on the client's own
//! connection, ordered with the write itself.

pub use crate::index::ids::IdSet;
use crate::registry::{id_key, Change, SearchIndex};
use crate::wire::integer;
use crate::wire::OpMsg;
use bson::{rawdoc, RawBsonRef, RawDocument, RawDocumentBuf};
use std::collections::HashSet;
use std::sync::Arc;

/// A write command whose effect on indexes must be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Insert,
    Update,
    Delete,
    FindAndModify,
}

impl WriteKind {
    pub fn of(command: &str) -> Option<WriteKind> {
        match command {
            "insert" => Some(WriteKind::Insert),
            "update" => Some(WriteKind::Update),
            "delete" => Some(WriteKind::Delete),
            "findAndModify" | "findandmodify" => Some(WriteKind::FindAndModify),
            _ => None,
        }
    }
}

/// The filters whose matching documents an update, delete or findAndModify
/// may change.
pub fn filters(kind: WriteKind, msg: &OpMsg<'_>) -> Vec<RawDocumentBuf> {
    let body = msg.body();
    let (array, sequence, field) = match kind {
        WriteKind::Insert => return Vec::new(),
        WriteKind::Update => ("updates", "updates", "q"),
        WriteKind::Delete => ("deletes", "deletes", "q"),
        WriteKind::FindAndModify => {
            return body
                .get_document("query")
                .map(|q| vec![q.to_owned()])
                .unwrap_or_else(|_| vec![RawDocumentBuf::new()]);
        }
    };
    statements(msg, array, sequence)
        .into_iter()
        .filter_map(|s| s.get_document(field).ok().map(ToOwned::to_owned))
        .collect()
}

/// The statements of a write, from its body array or its kind-1 sequence.
fn statements<'a>(msg: &OpMsg<'a>, array: &str, sequence: &str) -> Vec<&'a RawDocument> {
    if let Ok(items) = msg.body().get_array(array) {
        return items
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_document())
            .collect();
    }
    msg.sequences()
        .filter(|s| s.identifier == sequence)
        .flat_map(|s| s.documents.iter().copied())
        .collect()
}

/// The `_id` a filter names exactly (`{_id: X}` with X not an operator
/// document): the only document it can match.
pub fn exact_id(filter: &RawDocument) -> Option<RawBsonRef<'_>> {
    let mut fields = filter.iter();
    let (key, value) = fields.next()?.ok()?;
    if key != "_id" || fields.next().is_some() {
        return None;
    }
    match value {
        RawBsonRef::Document(d) if d.iter().flatten().any(|(k, _)| k.starts_with('$')) => None,
        RawBsonRef::RegularExpression(_) => None,
        other => Some(other),
    }
}

/// Inserted documents the upstream accepted: all but those in
/// `writeErrors` and, for an ordered insert (the default), none from the
/// first error on, since the server stops there without reporting the rest.
pub fn inserted<'a>(msg: &OpMsg<'a>, reply: &RawDocument) -> Vec<&'a RawDocument> {
    let ordered = !matches!(
        msg.body().get("ordered"),
        Ok(Some(RawBsonRef::Boolean(false)))
    );
    let failed: HashSet<i64> = reply
        .get_array("writeErrors")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.as_document()
                .and_then(|e| integer(e.get("index").ok().flatten()))
        })
        .collect();
    let stop = if ordered {
        failed.iter().copied().min().unwrap_or(i64::MAX)
    } else {
        i64::MAX
    };
    statements(msg, "documents", "documents")
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (*i as i64) < stop && !failed.contains(&(*i as i64)))
        .map(|(_, d)| d)
        .collect()
}

/// Ids a reply names: upserted documents and findAndModify's document.
pub fn reply_ids(kind: WriteKind, reply: &RawDocument, into: &mut IdSet) {
    match kind {
        WriteKind::Update => {
            for u in reply.get_array("upserted").into_iter().flatten().flatten() {
                if let Some(id) = u.as_document().and_then(|u| u.get("_id").ok().flatten()) {
                    into.add(id);
                }
            }
        }
        WriteKind::FindAndModify => {
            if let Ok(value) = reply.get_document("value") {
                if let Some(id) = value.get("_id").ok().flatten() {
                    into.add(id);
                }
            }
            if let Ok(last) = reply.get_document("lastErrorObject") {
                if let Some(id) = last.get("upserted").ok().flatten() {
                    into.add(id);
                }
            }
        }
        WriteKind::Insert | WriteKind::Delete => {}
    }
}

/// The `find` that reads the current vectors of `ids` for `indexes`.
pub fn refetch(
    collection: &str,
    db: &str,
    ids: &IdSet,
    indexes: &[Arc<SearchIndex>],
) -> RawDocumentBuf {
    let mut body = rawdoc! {
        "find": collection,
        "filter": { "_id": { "$in": ids.array() } },
    };
    // The union of what each index reads; whole documents when any
    // reads them whole (a dynamic full-text mapping).
    let projections: Option<Vec<RawDocumentBuf>> =
        indexes.iter().map(|i| i.spec.projection()).collect();
    if let Some(projections) = projections {
        let mut paths: Vec<String> = projections
            .iter()
            .flat_map(|p| p.iter().flatten().map(|(k, _)| k.to_string()))
            .collect();
        paths.sort_unstable();
        paths.dedup();
        // A path and one beneath it collide in a projection: the shorter
        // returns the longer's value anyway.
        let kept: Vec<&String> = paths
            .iter()
            .filter(|p| {
                !paths.iter().any(|q| {
                    p.len() > q.len() && p.starts_with(q.as_str()) && p.as_bytes()[q.len()] == b'.'
                })
            })
            .collect();
        let mut projection = RawDocumentBuf::new();
        for path in kept {
            projection.append(path.as_str(), 1);
        }
        body.append("projection", projection);
    }
    body.append("batchSize", 100_000);
    body.append("$db", db);
    body
}

/// Applies a write through the proxy to `indexes`: `present` (re)indexed,
/// the `checked` ids not among them removed. CPU work: run it on a
/// blocking thread. With the write's `operationTime` (`at`), each document
/// is first noted as written then ([`SearchIndex::note_written`]), under
/// the index's `apply_lock`, so that the change stream never brings back a
/// state the write replaced. The documents are encoded under the lock
/// too: a change stream's newer event for one of them, applied while
/// they encoded, would otherwise be overwritten by this older state (and
/// so would a write through the proxy by a model retry's older read,
/// which comes this way with no `at`). A change stream's batch encodes
/// before it takes the lock ([`super::stream::apply`]), so this waits
/// only for other writes through the proxy.
pub fn apply<D: AsRef<RawDocument>>(
    indexes: &[Arc<SearchIndex>],
    present: &[D],
    checked: &IdSet,
    at: Option<bson::Timestamp>,
) {
    let mut found = IdSet::default();
    for doc in present {
        if let Some(id) = doc.as_ref().get("_id").ok().flatten() {
            found.add(id);
        }
    }
    for index in indexes {
        let _applying = index.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let prepared = super::apply::prepare(index, present, false);
        let Some(at) = at else {
            apply_prepared(index, prepared, |_| true, checked, &found);
            continue;
        };
        // A newer write through the proxy to the same document, on
        // another connection, applied first, or the change stream applied
        // a newer event while this write was in flight (this write's
        // re-read may predate it): that state stands.
        let newer = |id: RawBsonRef<'_>| {
            let key = id_key(id);
            index.written_after(&key, at) || index.streamed_after(&key, at)
        };
        let mut current = IdSet::default();
        for id in checked.ids.iter().map(|id| id.as_raw_bson_ref()) {
            if !newer(id) {
                current.add(id);
            }
        }
        let ids = found.ids.iter().chain(&current.ids);
        index.note_written(ids.map(|id| id_key(id.as_raw_bson_ref())), at);
        apply_prepared(index, prepared, |id| !newer(id), &current, &found);
    }
}

/// Applies `prepared` (the documents `wanted` accepts) and removes the
/// `checked` ids not in `found` (the ids of every prepared document), the
/// index's `apply_lock` held by the caller; then compacts the index if it
/// needs it.
pub fn apply_prepared(
    index: &Arc<SearchIndex>,
    prepared: super::apply::Prepared<'_>,
    wanted: impl Fn(RawBsonRef<'_>) -> bool,
    checked: &IdSet,
    found: &IdSet,
) {
    prepared.commit(index, wanted);
    let gone: Vec<Change<'_>> = checked
        .ids
        .iter()
        .map(|id| id.as_raw_bson_ref())
        .filter(|id| !found.contains(*id))
        .map(Change::Remove)
        .collect();
    index.apply_changes(&gone);
    if let Some(vectors) = index.compact_if_needed() {
        tracing::info!(index = %index.name, vectors, "compacted the index");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn only_plain_id_equality_names_one_document() {
        assert_eq!(exact_id(&rawdoc! { "_id": 7 }), Some(RawBsonRef::Int32(7)));
        assert!(exact_id(&rawdoc! { "_id": { "a": 1 } }).is_some());
        assert!(exact_id(&rawdoc! { "_id": { "$in": [1, 2] } }).is_none());
        assert!(exact_id(&rawdoc! { "_id": 7, "x": 1 }).is_none());
        assert!(exact_id(&rawdoc! { "x": 1 }).is_none());
        assert!(exact_id(&rawdoc! {}).is_none());
    }
}
