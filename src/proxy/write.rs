//! Writes to collections that have search indexes: forwarded as their
//! original bytes, with the indexes brought up to date before the client
//! sees the acknowledgement (see `maintain::fresh`).

use super::session::{Failure, Session};
use crate::maintain::fresh::{self, IdSet, WriteKind};
use crate::registry::SearchIndex;
use crate::upstream::pinned::{check_ok, Cursor};
use crate::wire::{Compressor, OpMsg};
use bson::{RawBsonRef, RawDocument, RawDocumentBuf};
use std::sync::Arc;

impl Session {
    /// The indexes a write must keep current; none inside a multi-document
    /// transaction, whose writes become visible only at commit.
    pub(super) fn indexes_for_write(
        &self,
        body: &RawDocument,
        command: &str,
    ) -> Vec<Arc<SearchIndex>> {
        if matches!(body.get("autocommit"), Ok(Some(RawBsonRef::Boolean(false)))) {
            return Vec::new();
        }
        match (body.get_str(command), body.get_str("$db")) {
            (Ok(collection), Ok(db)) => self.shared.registry.maintained(db, collection),
            _ => Vec::new(),
        }
    }

    /// The search indexes a `drop` (of their collection) or `dropDatabase`
    /// (of their database) deletes if it succeeds.
    pub(super) fn indexes_dropped_by(
        &self,
        body: &RawDocument,
        command: &str,
    ) -> Vec<Arc<SearchIndex>> {
        let Ok(db) = body.get_str("$db") else {
            return Vec::new();
        };
        let registry = &self.shared.registry;
        let mut indexes = match (command, body.get_str(command)) {
            ("drop", Ok(collection)) => registry.list(db, collection),
            ("dropDatabase", _) => registry.in_database(db),
            _ => return Vec::new(),
        };
        // One entry per index, not per part.
        indexes.sort_by(|a, b| a.id.cmp(&b.id));
        indexes.dedup_by(|a, b| a.id == b.id);
        indexes
    }

    /// Forwards a `drop` or `dropDatabase` and, once the upstream has done
    /// it (or the collection was already gone, 26 `NamespaceNotFound`),
    /// deletes `indexes` before relaying the reply: a `createSearchIndexes`
    /// right after the drop finds no index of the same name, as on Atlas.
    /// A deletion that fails (the upstream went away meanwhile) is left to
    /// the change stream, which sees the drop too.
    pub(super) async fn dropping_write(
        &mut self,
        message: &[u8],
        compressor: Option<Compressor>,
        indexes: Vec<Arc<SearchIndex>>,
    ) -> Result<(), Failure> {
        self.send_upstream(message).await?;
        let reply = self.read_upstream().await?;
        let done = OpMsg::parse(&reply).is_ok_and(|r| {
            crate::wire::reply_ok(r.body())
                || r.body().get_i32("code") == Ok(crate::error::Code::NAMESPACE_NOT_FOUND.code)
        });
        if done {
            let config = self.shared.config.clone();
            for index in &indexes {
                match crate::maintain::delete(&config, &self.shared.registry, index).await {
                    Ok(()) => {
                        tracing::info!(index = %index.name, namespace = %index.namespace(), "collection dropped: search index deleted")
                    }
                    Err(e) => {
                        tracing::warn!(index = %index.name, error = %e, "cannot delete the dropped collection's search index; the change stream will")
                    }
                }
            }
        }
        self.send_client(&reply, compressor).await
    }

    pub(super) async fn indexed_write(
        &mut self,
        kind: WriteKind,
        parsed: &OpMsg<'_>,
        message: &[u8],
        compressor: Option<Compressor>,
        indexes: Vec<Arc<SearchIndex>>,
    ) -> Result<(), Failure> {
        // Unacknowledged (`w: 0`): nothing says whether, or how, the write
        // happened, so the client's documents are not taken at their word;
        // the change stream brings the indexes up to date.
        if parsed.more_to_come() {
            return self.send_upstream(message).await;
        }
        let body = parsed.body();
        let db = body.get_str("$db").unwrap_or_default().to_string();
        let collection = parsed
            .command_name()
            .and_then(|name| body.get_str(name).ok())
            .unwrap_or_default()
            .to_string();

        // Which documents the write may change, asked before it runs. A
        // filter the upstream rejects will fail the write too: no harm.
        let mut touched = IdSet::default();
        // In the client's session (never a transaction here: those writes
        // keep no index current).
        let mut session = crate::rewrite::InSession::of(parsed.body());
        for filter in fresh::filters(kind, parsed) {
            if let Some(id) = fresh::exact_id(&filter) {
                touched.add(id); // the filter names the document: no lookup
                continue;
            }
            let find = crate::rewrite::matching_ids(&collection, &db, &filter, &mut session);
            let Ok(mut cursor) = Cursor::open(&mut self.upstream, &db, &find).await else {
                continue;
            };
            while let Ok(Some(batch)) = cursor.next_batch().await {
                for doc in &batch {
                    if let Some(id) = doc.get("_id").ok().flatten() {
                        touched.add(id);
                    }
                }
            }
        }

        // In flight from here until applied: the change stream keeps
        // note of the events it applies meanwhile, which may be newer
        // than the state this write reads back.
        let _in_flight: Vec<_> = indexes.iter().map(|i| i.write_in_flight()).collect();
        self.send_upstream(message).await?;
        let reply = self.read_upstream().await?;
        let reply_body: RawDocumentBuf = match OpMsg::parse(&reply) {
            Ok(m) => m.body().to_owned(),
            Err(_) => RawDocumentBuf::new(),
        };
        if check_ok(&reply_body).is_ok() {
            let mut present: Vec<RawDocumentBuf> = Vec::new();
            if kind == WriteKind::Insert {
                present.extend(
                    fresh::inserted(parsed, &reply_body)
                        .into_iter()
                        .map(ToOwned::to_owned),
                );
            }
            fresh::reply_ids(kind, &reply_body, &mut touched);
            if !touched.is_empty() {
                let find = fresh::refetch(&collection, &db, &touched, &indexes);
                let reread = async {
                    let mut cursor = Cursor::open(&mut self.upstream, &db, &find).await?;
                    while let Some(batch) = cursor.next_batch().await? {
                        present.extend(batch);
                    }
                    Ok::<(), crate::error::Error>(())
                };
                if let Err(e) = reread.await {
                    // Not knowing their state, treat none of them as gone (a
                    // client without `find` must not make the proxy drop
                    // documents from an index): the change stream will.
                    tracing::warn!(error = %e, "cannot re-read written documents");
                    touched = IdSet::default();
                }
            }
            // When the write happened: its change events, no newer, must
            // not bring back what it replaced.
            let at = reply_body.get_timestamp("operationTime").ok();
            let applied =
                tokio::task::spawn_blocking(move || fresh::apply(&indexes, &present, &touched, at))
                    .await;
            if let Err(e) = applied {
                tracing::warn!(error = %e, "updating indexes after a write failed");
            }
        }
        self.send_client(&reply, compressor).await
    }
}
