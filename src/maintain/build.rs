//! Background index builds: scan the collection from the upstream and add
//! every valid vector. Documents whose field is missing, the wrong length,
//! not numeric (or, for cosine, all zeros) are counted as skipped, never
//! fatal. Inserts run on a blocking thread, a batch at a time, so queries
//! and all other traffic keep flowing.

use crate::config::Config;
use crate::error::Error;
use crate::index::ids::IdSet;
use crate::maintain::apply::add_documents;
use crate::maintain::snapshot;
use crate::maintain::stream::{self, ChangeStream};
use crate::models::Models;
use crate::registry::{Registry, SearchIndex, Status};
use crate::upstream;
use bson::{rawdoc, RawDocumentBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const BATCH: i32 = 1000;
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest wait between attempts of a build the upstream interrupted.
const MAX_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);
/// mongod's CursorNotFound: the scan's cursor died with the server.
const CURSOR_NOT_FOUND: i32 = 43;

/// Builds `index` from scratch, marks it READY (or FAILED with the reason),
/// then keeps it current from the collection's change stream for as long as
/// it lives. A renamed collection or an invalidated stream means a rebuild
/// from scratch; a dropped collection (or database) deletes the index from
/// `registry` and the catalog, as Atlas deletes a dropped collection's
/// search indexes.
pub async fn build(
    config: Arc<Config>,
    registry: Arc<Registry>,
    models: Arc<Models>,
    index: Arc<SearchIndex>,
) {
    if index.status().0 == Status::Failed {
        // Its engine could not start (see `SearchIndex::new`).
        return;
    }
    if !index.encoders.is_empty() {
        tokio::spawn(tend_models(config.clone(), index.clone()));
    }
    if index.spec.train.is_some() {
        crate::maintain::train::load(&config, &index).await;
    }
    if let Some((stream, present)) = restore(&config, &index).await {
        let caught_up = CatchUp {
            present,
            then: Box::new(|| {
                index.set_status(Status::Ready, None);
                tracing::info!(index = %index.name, vectors = index.vector_count(), "search index caught up with its change stream");
                crate::maintain::train::start(&config, &registry, &models, &index);
            }),
        };
        let Some(why) = follow(&config, &registry, &index, stream, Some(caught_up)).await else {
            return;
        };
        tracing::info!(index = %index.name, why, "rebuilding the index");
        index.reset();
    }
    let mut pause = RETRY_PAUSE;
    loop {
        index.set_status(Status::Building, None);
        let started = Instant::now();
        // Opened first: every change made during the scan is applied after it.
        let stream = match ChangeStream::open(&config, &index, None).await {
            Ok((stream, token)) => {
                index.set_resume_token(token);
                Some(stream)
            }
            Err(e) => {
                tracing::warn!(index = %index.name, error = %e, "no change stream: writes that bypass the proxy will not reach this index");
                None
            }
        };
        if let Err(e) = scan(&config, &index).await {
            if index.is_retired() {
                return;
            }
            // The upstream went away (restarted, stepped down) or lost the
            // cursor: build again from the start once it answers.
            if e.is_transient() || e.code.code == CURSOR_NOT_FOUND {
                tracing::warn!(index = %index.name, error = %e, retry_in_ms = pause.as_millis() as u64, "search index build interrupted by the upstream; retrying");
                index.set_status(
                    Status::Building,
                    Some(format!(
                        "interrupted by the upstream ({}); retrying",
                        e.message
                    )),
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
                index.reset();
                continue;
            }
            tracing::warn!(index = %index.name, error = %e, "search index build failed");
            index.set_status(Status::Failed, Some(e.message));
            return;
        }
        pause = RETRY_PAUSE;
        if index.is_retired() {
            return;
        }
        // The scan may have put back what a write through the proxy
        // replaced meanwhile: the stream's replay of that write applies.
        index.forget_all_written();
        let target = index.clone();
        match tokio::task::spawn_blocking(move || target.merge_segments()).await {
            Ok(Ok(())) => {}
            // Queries still work on many segments, only slower.
            Ok(Err(e)) => {
                tracing::warn!(index = %index.name, error = %e, "cannot merge the index's segments")
            }
            Err(e) => {
                tracing::warn!(index = %index.name, error = %e, "segment merge task failed")
            }
        }
        index.set_status(Status::Ready, None);
        save_snapshot(&config, &index).await;
        // Off the async workers: trimming a big heap takes a while.
        let _ = tokio::task::spawn_blocking(release_free_memory).await;
        tracing::info!(
            index = %index.name,
            namespace = %index.namespace(),
            vectors = index.vector_count(),
            skipped = index.skipped.load(Ordering::Relaxed),
            seconds = started.elapsed().as_secs_f64(),
            "search index ready"
        );
        crate::maintain::train::start(&config, &registry, &models, &index);
        let Some(stream) = stream else {
            reconcile_forever(&config, &index).await;
            return;
        };
        let Some(why) = follow(&config, &registry, &index, stream, None).await else {
            return;
        };
        tracing::info!(index = %index.name, why, "rebuilding the index");
        index.reset();
    }
}

/// How often documents whose encoding failed are tried again.
const ENCODE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// For model-encoded indexes, until the index is retired: writes model
/// outputs back into their documents (`writeOutputs`) as they are made,
/// and retries documents whose model failed every `ENCODE_RETRY`.
async fn tend_models(config: Arc<Config>, index: Arc<SearchIndex>) {
    let mut retry = tokio::time::interval(ENCODE_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let retry_due = tokio::select! {
            _ = index.work.notified() => false,
            _ = retry.tick() => true,
        };
        if index.is_retired() {
            return;
        }
        let outputs = index.take_outputs();
        if !outputs.is_empty() {
            let count = outputs.len();
            if let Err(e) = write_outputs(&config, &index, &outputs).await {
                tracing::warn!(index = %index.name, error = %e, count, "writing model outputs back failed; will retry");
                index.push_outputs(outputs);
            }
        }
        if retry_due && index.pending_count() > 0 {
            let ids = index.take_pending();
            let count = ids.ids.len();
            let outcome = reencode(&config, &index, &ids).await;
            if outcome.is_err() {
                index.add_pending(ids.ids.iter().map(|id| id.as_raw_bson_ref()));
            }
            index.retried();
            match outcome {
                Ok(()) => {
                    tracing::info!(index = %index.name, documents = count, still_pending = index.pending_count(), "retried documents whose model had failed")
                }
                Err(e) => {
                    tracing::warn!(index = %index.name, error = %e, "cannot re-read documents to encode; will retry");
                }
            }
        }
    }
}

/// Reads `ids` again and encodes them (documents gone since leave the index).
async fn reencode(config: &Config, index: &Arc<SearchIndex>, ids: &IdSet) -> Result<(), Error> {
    let conn = upstream::connect(config).await?;
    let db = index.db.as_str();
    let body =
        crate::maintain::fresh::refetch(&index.collection, db, ids, std::slice::from_ref(index));
    let mut cursor = conn.cursor(&body).await?;
    let mut docs = Vec::new();
    while let Some(batch) = cursor.next_batch().await? {
        docs.extend(batch);
    }
    let target = index.clone();
    let checked = IdSet::from_ids(ids);
    tokio::task::spawn_blocking(move || {
        crate::maintain::fresh::apply(std::slice::from_ref(&target), &docs, &checked, None)
    })
    .await
    .map_err(|e| Error::internal(format!("encoding task failed: {e}")))
}

/// Writes model outputs to `_outputs.<key>.<model>` of their documents, on
/// the proxy's own connection. The change events these writes cause find
/// the encoded content unchanged and cost nothing.
async fn write_outputs(
    config: &Config,
    index: &SearchIndex,
    outputs: &[(bson::RawBson, Vec<f32>)],
) -> Result<(), Error> {
    let Some(first) = index.spec.models.first() else {
        return Ok(());
    };
    let field = format!("_outputs.{}.{}", first.key, first.model);
    let conn = upstream::connect(config).await?;
    for chunk in outputs.chunks(1000) {
        let mut updates = bson::RawArrayBuf::new();
        for (id, vector) in chunk {
            let mut values = bson::RawArrayBuf::new();
            for x in vector {
                values.push(f64::from(*x));
            }
            let mut set = RawDocumentBuf::new();
            set.append(field.as_str(), values);
            updates.push(rawdoc! { "q": { "_id": id.clone() }, "u": { "$set": set } });
        }
        let body = rawdoc! {
            "update": index.collection.as_str(),
            "updates": updates,
            "ordered": false,
            "$db": index.db.as_str(),
        };
        let reply = conn.command(&body).await?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            let count = errors.into_iter().count();
            tracing::warn!(index = %index.name, count, "some model outputs could not be written back");
        }
    }
    Ok(())
}

/// Without change streams (a standalone upstream), a periodic full scan
/// repairs what writes that bypass the proxy changed.
async fn reconcile_forever(config: &Config, index: &Arc<SearchIndex>) {
    tracing::info!(
        index = %index.name,
        every_ms = config.reconcile_interval.as_millis() as u64,
        "upstream has no change streams: reconciling by periodic scans"
    );
    let mut tick = tokio::time::interval(config.reconcile_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        if index.is_retired() {
            return;
        }
        if let Err(e) = reconcile(config, index).await {
            tracing::warn!(index = %index.name, error = %e, "reconciliation scan failed");
        }
    }
}

/// The `find` that reads every document of `index`'s collection, with
/// what the index needs of each (`IndexSpec::projection`).
fn scan_command(index: &SearchIndex) -> RawDocumentBuf {
    let mut body = rawdoc! { "find": index.collection.as_str(), "filter": {} };
    if let Some(projection) = index.spec.projection() {
        body.append("projection", projection);
    }
    body.append("batchSize", BATCH);
    body.append("$db", index.db.as_str());
    body
}

/// Re-reads the whole collection: changed vectors are updated, documents
/// that were indexed before the scan began and are gone now are removed.
/// (Documents indexed during the scan stay: write-through put them there.)
pub async fn reconcile(config: &Config, index: &Arc<SearchIndex>) -> Result<(), Error> {
    let before = index.live_ids();
    let conn = upstream::connect(config).await?;
    let body = scan_command(index);
    let mut cursor = conn.cursor(&body).await?;
    let mut seen = IdSet::default();
    while let Some(batch) = cursor.next_batch().await? {
        for doc in &batch {
            if let Some(id) = doc.get("_id").ok().flatten() {
                seen.add(id);
            }
        }
        let target = index.clone();
        tokio::task::spawn_blocking(move || add_documents(&target, &batch, false))
            .await
            .map_err(|e| Error::internal(format!("reconciliation task failed: {e}")))?;
    }
    let mut gone = IdSet::default();
    for id in &before.ids {
        if !seen.contains(id.as_raw_bson_ref()) {
            gone.add(id.as_raw_bson_ref());
        }
    }
    if !gone.is_empty() {
        let target = index.clone();
        let none: [RawDocumentBuf; 0] = [];
        tokio::task::spawn_blocking(move || {
            crate::maintain::fresh::apply(std::slice::from_ref(&target), &none, &gone, None)
        })
        .await
        .map_err(|e| Error::internal(format!("reconciliation task failed: {e}")))?;
    }
    Ok(())
}

/// Loads the index's snapshot and resumes its change stream from the
/// stored token; returns the stream with the upstream's present (see
/// [`stream::present`]), which the index must catch up with before it is
/// READY. `None` (after saying why) when the index must be built from the
/// upstream instead.
///
/// Not READY at once: the stored token may lag the snapshot's contents
/// (writes through the proxy are applied before their events arrive), so
/// the replay passes through older states — an insert re-applied before
/// the delete that followed it — and would rank documents already gone.
async fn restore(
    config: &Config,
    index: &Arc<SearchIndex>,
) -> Option<(ChangeStream, Option<bson::Timestamp>)> {
    let dir = config.data_dir.clone()?;
    let target = index.clone();
    let loaded = tokio::task::spawn_blocking(move || snapshot::load(&dir, &target)).await;
    let token = match loaded {
        Ok(Ok(Some(token))) => token,
        Ok(Ok(None)) => {
            tracing::info!(index = %index.name, "no snapshot: building from the upstream");
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!(index = %index.name, error = %e, "snapshot unusable: rebuilding from the upstream");
            index.reset();
            return None;
        }
        Err(e) => {
            tracing::warn!(index = %index.name, error = %e, "snapshot load failed: rebuilding from the upstream");
            index.reset();
            return None;
        }
    };
    match ChangeStream::open(config, index, Some(token.clone())).await {
        Ok((stream, _)) => {
            let present = stream::present(config).await;
            index.set_resume_token(Some(token));
            index.restored.store(true, Ordering::Relaxed);
            index.set_status(
                Status::Building,
                Some("loaded from its snapshot; catching up with the change stream".into()),
            );
            tracing::info!(
                index = %index.name,
                vectors = index.vector_count(),
                "search index loaded from its snapshot; catching up from the change stream"
            );
            Some((stream, present))
        }
        Err(e) => {
            tracing::warn!(index = %index.name, error = %e, "cannot resume the change stream: rebuilding from the upstream");
            index.reset();
            None
        }
    }
}

/// Writes the index's snapshot when the proxy has a data directory.
pub async fn save_snapshot(config: &Config, index: &Arc<SearchIndex>) {
    let Some(dir) = config.data_dir.clone() else {
        return;
    };
    let target = index.clone();
    match tokio::task::spawn_blocking(move || snapshot::save(&dir, &target)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(index = %index.name, error = %e, "cannot write the index snapshot")
        }
        Err(e) => tracing::warn!(index = %index.name, error = %e, "snapshot task failed"),
    }
}

/// What to do once a stream has caught up with the upstream: after the
/// first batch that [reaches](stream::Changes::reach) `present`, `then`
/// runs once.
pub struct CatchUp<'a> {
    pub present: Option<bson::Timestamp>,
    pub then: Box<dyn FnOnce() + Send + 'a>,
}

/// Applies the change stream until the index is retired (`None`; a
/// dropped collection deletes it first) or it must be rebuilt
/// (`Some(why)`): the stream was invalidated (collection renamed), or the
/// oplog no longer holds its resume token (`ChangeStreamHistoryLost`, 286,
/// on reopening: the changes in between are lost to it). Other errors
/// reopen the stream from the last resume token, the index `STALE`
/// meanwhile.
pub async fn follow(
    config: &Config,
    registry: &Registry,
    index: &Arc<SearchIndex>,
    mut stream: ChangeStream,
    mut catch_up: Option<CatchUp<'_>>,
) -> Option<&'static str> {
    loop {
        if index.is_retired() {
            return None;
        }
        let next = stream.next().await;
        if index.is_retired() {
            // Deleted meanwhile (a drop through the proxy, or
            // `dropSearchIndex`): whatever the stream says is not its.
            return None;
        }
        match next {
            Ok((changes, token)) => {
                if changes.dropped {
                    tracing::info!(index = %index.name, namespace = %index.namespace(), "collection dropped: search index deleted");
                    if let Err(e) = crate::maintain::delete(config, registry, index).await {
                        // The definition stays stored: the next start
                        // loads it and its build finds the collection
                        // gone or new.
                        tracing::warn!(index = %index.name, error = %e, "cannot delete the dropped collection's index definition");
                        registry.remove(index);
                    }
                    return None;
                }
                if changes.invalidated {
                    return Some("the collection was renamed");
                }
                if let Some(c) = catch_up.as_mut().filter(|c| c.present.is_none()) {
                    // The first ask failed (the upstream was away): ask
                    // again, or an index under steady writes would wait
                    // for an empty batch for as long as they last.
                    c.present = stream::present(config).await;
                }
                let reached = catch_up
                    .as_ref()
                    .is_some_and(|c| changes.reach(c.present, token.as_deref()));
                if !changes.is_empty() {
                    let count = changes.len() as u64;
                    let target = index.clone();
                    let applied =
                        tokio::task::spawn_blocking(move || stream::apply(&target, &changes)).await;
                    if applied.is_err() {
                        tracing::warn!(index = %index.name, "applying changes failed");
                    }
                    index.changes_applied.fetch_add(count, Ordering::Relaxed);
                }
                if index.take_lost_writes().is_some() {
                    return Some("the full-text engine lost writes");
                }
                if token.is_some() {
                    index.set_resume_token(token);
                }
                if reached && !index.is_retired() {
                    if let Some(c) = catch_up.take() {
                        (c.then)();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(index = %index.name, error = %e, "change stream interrupted; resuming");
                index.set_stale(Some(format!(
                    "not following changes to {}: {}; resuming",
                    index.namespace(),
                    e.message
                )));
                let mut pause = RETRY_PAUSE;
                loop {
                    if index.is_retired() {
                        return None;
                    }
                    // A pause between attempts while the upstream is away.
                    tokio::time::sleep(pause).await;
                    match ChangeStream::open(config, index, index.resume_token()).await {
                        Ok((reopened, _)) => {
                            stream = reopened;
                            index.set_stale(None);
                            tracing::info!(index = %index.name, "change stream resumed");
                            break;
                        }
                        // The oplog no longer holds the token: the changes
                        // in between are lost to the stream, so rebuild.
                        Err(e)
                            if e.code.name == "ChangeStreamHistoryLost" || e.code.code == 286 =>
                        {
                            index.set_stale(None);
                            return Some(
                                "the oplog no longer holds the change stream's resume token",
                            );
                        }
                        Err(e) => {
                            index.set_stale(Some(format!(
                                "not following changes to {}: {}; resuming",
                                index.namespace(),
                                e.message
                            )));
                            pause = (pause * 2).min(MAX_RETRY_PAUSE);
                        }
                    }
                }
            }
        }
    }
}

async fn scan(config: &Config, index: &Arc<SearchIndex>) -> Result<(), Error> {
    let conn = upstream::connect(config).await?;
    let db = index.db.as_str();
    let count = conn
        .command(&rawdoc! { "count": index.collection.as_str(), "$db": db })
        .await?;
    let total = crate::wire::integer(count.get("n").ok().flatten()).unwrap_or(0);
    index
        .total
        .store(u64::try_from(total).unwrap_or(0), Ordering::Relaxed);

    let body = scan_command(index);
    let mut cursor = conn.cursor(&body).await?;
    let mut next_report = 0.1;
    let started = std::time::Instant::now();
    while let Some(batch) = cursor.next_batch().await? {
        if index.is_retired() {
            return Ok(());
        }
        let target = index.clone();
        tokio::task::spawn_blocking(move || add_documents(&target, &batch, true))
            .await
            .map_err(|e| Error::internal(format!("index build task failed: {e}")))?;
        let scanned = index.scanned.load(Ordering::Relaxed) as f64;
        let share = scanned / (total.max(1) as f64);
        if share >= next_report {
            let rate = scanned / started.elapsed().as_secs_f64().max(1e-9);
            let eta_s = ((total as f64 - scanned) / rate.max(1e-9)).max(0.0);
            tracing::info!(index = %index.name, scanned, total, docs_per_s = rate.round(), eta_s = eta_s.round(), "building search index: {:.0}%", share.min(1.0) * 100.0);
            next_report = (share * 10.0).floor() / 10.0 + 0.1;
        }
    }
    Ok(())
}

/// Hands the heap's free pages back to the system after a build. glibc
/// keeps what a build's scratch (scan batches, graph construction, the
/// snapshot buffer) freed in its arenas, where it stays resident:
/// measured with `benches/proxy_memory.py` on a 40,000 × 384 float index,
/// the proxy's anonymous memory grew 1.86× the raw vectors without this,
/// 1.75× with it (and 1.20× once `main` fixed glibc's mmap threshold, so
/// scan batches no longer land in the heap).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
