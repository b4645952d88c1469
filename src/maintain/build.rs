//! Background index builds: scan the collection from the upstream and add
//! every valid vector. Documents whose field is missing, the wrong length,
//! not numeric (or, for cosine, all zeros) are counted as skipped, never
//! fatal. Inserts run on a blocking thread, a batch at a time, so queries
//! and all other traffic keep flowing.

use crate::config::Config;
use crate::error::Error;
use crate::index::registry::{SearchIndex, Status};
use crate::index::vector::{lookup, read_vector};
use crate::upstream::{self, Cursor};
use bson::{rawdoc, RawDocumentBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const BATCH: i32 = 1000;

/// Builds `index` from scratch and marks it READY, or FAILED with the reason.
pub async fn build(config: Arc<Config>, index: Arc<SearchIndex>) {
    index.set_status(Status::Building, None);
    let started = Instant::now();
    match scan(&config, &index).await {
        Ok(()) if index.is_retired() => {}
        Ok(()) => {
            index.set_status(Status::Ready, None);
            tracing::info!(
                index = %index.name,
                namespace = %index.namespace(),
                vectors = index.data.read().map(|d| d.index.len()).unwrap_or_default(),
                skipped = index.skipped.load(Ordering::Relaxed),
                seconds = started.elapsed().as_secs_f64(),
                "search index ready"
            );
        }
        Err(e) => {
            tracing::warn!(index = %index.name, error = %e, "search index build failed");
            index.set_status(Status::Failed, Some(e.message));
        }
    }
}

async fn scan(config: &Config, index: &Arc<SearchIndex>) -> Result<(), Error> {
    let mut conn = upstream::connect(config).await?;
    let db = index.db.as_str();
    let count = upstream::command(
        &mut conn,
        &rawdoc! { "count": index.collection.as_str(), "$db": db },
    )
    .await?;
    let total = crate::command::search_index::integer(count.get("n").ok().flatten()).unwrap_or(0);
    index
        .total
        .store(u64::try_from(total).unwrap_or(0), Ordering::Relaxed);

    let mut projection = RawDocumentBuf::new();
    projection.append("_id", 1);
    projection.append(index.spec.path.as_str(), 1);
    let body = rawdoc! {
        "find": index.collection.as_str(),
        "filter": {},
        "projection": projection,
        "batchSize": BATCH,
        "$db": db,
    };
    let mut cursor = Cursor::open(&mut conn, db, &body).await?;
    let mut next_report = 0.1;
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
            tracing::info!(index = %index.name, scanned, total, "building search index: {:.0}%", share.min(1.0) * 100.0);
            next_report = (share * 10.0).floor() / 10.0 + 0.1;
        }
    }
    Ok(())
}

/// Adds (or replaces) the vectors of `docs`: CPU work, for a blocking
/// thread. A document without a usable vector leaves the index. `scanning`
/// counts the documents into the build's progress.
pub fn add_documents<D: AsRef<bson::RawDocument>>(index: &SearchIndex, docs: &[D], scanning: bool) {
    let spec = &index.spec;
    let mut data = index.data.write().unwrap_or_else(|e| e.into_inner());
    for doc in docs {
        let doc = doc.as_ref();
        if scanning {
            index.scanned.fetch_add(1, Ordering::Relaxed);
        }
        let Some(id) = doc.get("_id").ok().flatten() else {
            continue;
        };
        let vector = read_vector(lookup(doc, &spec.path), spec.dims)
            .ok()
            .and_then(|v| spec.similarity.prepare(v));
        let Some(vector) = vector else {
            if scanning {
                index.skipped.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(old) = data.ids.retire(id) {
                data.index.remove(old);
            }
            continue;
        };
        let (key, old) = data.ids.assign(id);
        if let Some(old) = old {
            data.index.remove(old);
        }
        data.index.insert(key, &vector);
    }
}
