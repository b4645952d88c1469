//! Training semantic indexes in the background, and evaluating any index.
//!
//! Once an index whose definition asks for training is built, `start`
//! spawns `run`: read the collection, split each document into a (query,
//! item) pair, encode both sides with the index's models, hold out the
//! validation split, fit an adapter (`train::train`) on a blocking thread
//! while the listing shows status TRAINING with each epoch's loss and
//! metrics, then store the adapter in `<metadata db>.adapters` and install
//! it. The index stays queryable throughout (with no adapter, or the
//! previous one); a failure (too few pairs, NaN loss) is reported and
//! changes nothing. A restarted proxy loads the stored adapter instead of
//! training again.

use crate::config::Config;
use crate::error::{Code, Error};
use crate::index::ids::IdSet;
use crate::index::vector::lookup;
use crate::maintain::catalog;
use crate::models::Model;
use crate::registry::{SearchIndex, Status};
use crate::train::{self, Adapter, Metric, Pairs, Splitter};
use crate::upstream;
use bson::{rawdoc, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use std::sync::Arc;
use std::time::Instant;

const ADAPTERS: &str = "adapters";

/// Which documents are held out.
pub enum Split {
    /// Everything is validation (evaluation).
    All,
    /// A share of documents, chosen by a hash of `_id`.
    Fraction(f64),
    /// These documents.
    Ids(IdSet),
}

impl Split {
    fn is_valid(&self, id: RawBsonRef<'_>) -> bool {
        match self {
            Split::All => true,
            Split::Fraction(f) => (id_hash(id) % 10_000) as f64 / 10_000.0 < *f,
            Split::Ids(ids) => ids.contains(id),
        }
    }
}

/// A hash of an `_id` that never changes: the first 8 bytes of the SHA-256
/// of its BSON encoding (as the value of an empty key), so a stored
/// validation split stays the same across toolchains and crate versions
/// (`DefaultHasher` and `Debug` output promise neither).
fn id_hash(id: RawBsonRef<'_>) -> u64 {
    use sha2::{Digest, Sha256};
    let mut one = bson::RawDocumentBuf::new();
    one.append("", id.to_raw_bson());
    let digest = Sha256::digest(one.as_bytes());
    u64::from_le_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ])
}

/// The key whose content is a query for the trained adapter.
pub fn query_key(index: &SearchIndex) -> Option<&str> {
    let spec = index.spec.train.as_ref()?;
    match spec.splitter {
        Splitter::Fields { query } => index.spec.models.get(query).map(|m| m.key.as_str()),
        Splitter::ArrayElement => index.spec.models.first().map(|m| m.key.as_str()),
    }
}

/// Loads the stored adapter of `index`, if it was trained before. `true`
/// when one was installed.
pub async fn load(config: &Config, index: &SearchIndex) -> bool {
    let stored = catalog::find(config, ADAPTERS, rawdoc! { "_id": index.id.as_str() })
        .await
        .map(|docs| docs.into_iter().next());
    let doc = match stored {
        Ok(Some(doc)) => doc,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(index = %index.name, error = %e, "cannot read the stored adapter");
            return false;
        }
    };
    let dims = crate::wire::integer(doc.get("dims").ok().flatten()).unwrap_or(0) as usize;
    let both = doc.get_bool("both").unwrap_or(false);
    let adapter = doc
        .get_binary("weights")
        .ok()
        .and_then(|b| Adapter::from_bytes(dims, both, b.bytes))
        .filter(|a| a.dims == index.spec.dims);
    let Some(adapter) = adapter else {
        tracing::warn!(index = %index.name, "stored adapter does not fit the index: training again");
        return false;
    };
    let metrics = |key: &str| {
        doc.get_document(key).ok().map(|d| {
            d.iter()
                .flatten()
                .filter_map(|(k, v)| v.as_f64().map(|x| (k.to_string(), x)))
                .collect::<Vec<_>>()
        })
    };
    {
        let mut t = index.training();
        t.before = metrics("before");
        t.after = metrics("after");
        t.trained_at = doc.get_datetime("trainedAt").ok();
    }
    index.set_adapter(Some(Arc::new(adapter)));
    tracing::info!(index = %index.name, "trained adapter loaded");
    true
}

pub async fn delete_stored(config: &Config, index_id: &str) -> Result<(), Error> {
    catalog::remove(config, ADAPTERS, index_id).await
}

async fn save(config: &Config, index: &SearchIndex, adapter: &Adapter) -> Result<(), Error> {
    let t = index.training().clone();
    let metrics =
        |m: &Option<Vec<(String, f64)>>| train::metrics_doc(m.as_deref().unwrap_or_default());
    let doc = rawdoc! {
        "_id": index.id.as_str(),
        "dims": adapter.dims as i32,
        "both": adapter.both,
        "weights": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: adapter.to_bytes() },
        "before": metrics(&t.before),
        "after": metrics(&t.after),
        "trainedAt": bson::DateTime::now(),
    };
    catalog::upsert(config, ADAPTERS, &index.id, doc).await
}

/// Starts training `index` in the background if its definition asks for it
/// and it has neither an adapter nor a run under way.
pub fn start(config: &Arc<Config>, index: &Arc<SearchIndex>) {
    if index.spec.train.is_none() || index.adapter().is_some() {
        return;
    }
    {
        let mut t = index.training();
        if t.planned_epochs > 0 || t.error.is_some() {
            return;
        }
        t.planned_epochs = index.spec.train.as_ref().map_or(0, |s| s.epochs);
    }
    tokio::spawn(run(config.clone(), index.clone()));
}

async fn run(config: Arc<Config>, index: Arc<SearchIndex>) {
    index.set_status(Status::Training, None);
    match train_once(&config, &index).await {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(index = %index.name, error = %e.message, "training failed; the index stays as it was");
            index.training().error = Some(e.message);
        }
    }
    if !index.is_retired() {
        index.set_status(Status::Ready, None);
    }
}

async fn train_once(config: &Config, index: &Arc<SearchIndex>) -> Result<(), Error> {
    let spec = index
        .spec
        .train
        .clone()
        .ok_or_else(|| Error::internal("no training spec"))?;
    let started = Instant::now();
    let conn = upstream::connect(config).await?;
    let split = match &spec.validation {
        train::Validation::Fraction(f) => Split::Fraction(*f),
        train::Validation::Filter(filter) => {
            let find = crate::rewrite::matching_ids(
                &index.collection,
                &index.db,
                filter,
                &mut crate::rewrite::InSession::none(),
            );
            let mut cursor = conn.cursor(&find).await?;
            let mut ids = IdSet::default();
            while let Some(batch) = cursor.next_batch().await? {
                for doc in &batch {
                    if let Some(id) = doc.get("_id").ok().flatten() {
                        ids.add(id);
                    }
                }
            }
            Split::Ids(ids)
        }
    };
    let (train_pairs, valid_pairs) = collect_pairs(
        upstream::Reader::Own(&conn),
        index,
        &spec.splitter,
        &RawDocumentBuf::new(),
        &split,
        spec.max_pairs,
        spec.seed,
    )
    .await?;
    if train_pairs.len() < train::spec::MIN_TRAIN_PAIRS
        || valid_pairs.len() < train::spec::MIN_VALID_PAIRS
    {
        return Err(Error::client(
            Code::BAD_VALUE,
            format!(
                "too few pairs to train: {} training and {} validation pairs, need at least {} and {}",
                train_pairs.len(),
                valid_pairs.len(),
                train::spec::MIN_TRAIN_PAIRS,
                train::spec::MIN_VALID_PAIRS
            ),
        ));
    }
    let before = train::evaluate(
        &Adapter::identity(train_pairs.dims, false),
        &valid_pairs,
        &spec.metrics,
    );
    {
        let mut t = index.training();
        t.train_pairs = train_pairs.len();
        t.valid_pairs = valid_pairs.len();
        t.before = Some(before.clone());
    }
    tracing::info!(
        index = %index.name,
        train_pairs = train_pairs.len(),
        valid_pairs = valid_pairs.len(),
        seconds = started.elapsed().as_secs_f64(),
        before = %show(&before),
        "training: pairs encoded"
    );
    let target = index.clone();
    let fit_spec = spec.clone();
    let fitting = Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let outcome = train::train(&fit_spec, &train_pairs, &valid_pairs, |epoch| {
            let done = epoch.epoch as f64;
            let eta = fitting.elapsed().as_secs_f64() / done * (fit_spec.epochs as f64 - done);
            tracing::info!(
                index = %target.name,
                epoch = epoch.epoch,
                epochs = fit_spec.epochs,
                loss = epoch.loss,
                eta_s = eta,
                metrics = %show(&epoch.metrics),
                "training epoch"
            );
            target.training().epochs.push(epoch.clone());
            !target.is_retired()
        });
        outcome.map(|adapter| {
            let after = train::evaluate(&adapter, &valid_pairs, &fit_spec.metrics);
            (adapter, after)
        })
    })
    .await
    .map_err(|e| Error::internal(format!("training task failed: {e}")))?;
    let (adapter, after) = result.map_err(|e| Error::client(Code::OPERATION_FAILED, e))?;
    if index.is_retired() {
        return Ok(());
    }
    {
        let mut t = index.training();
        t.after = Some(after.clone());
        t.trained_at = Some(bson::DateTime::now());
    }
    save(config, index, &adapter).await?;
    let adapter = Arc::new(adapter);
    if adapter.both {
        let (target, a) = (index.clone(), adapter.clone());
        tokio::task::spawn_blocking(move || readapt(&target, &a))
            .await
            .map_err(|e| Error::internal(format!("re-adapting failed: {e}")))?;
    }
    index.set_adapter(Some(adapter));
    tracing::info!(
        index = %index.name,
        seconds = started.elapsed().as_secs_f64(),
        before = %show(&before),
        after = %show(&after),
        "training done: adapter stored and in use"
    );
    Ok(())
}

/// Maps every stored vector through `adapter` (for `adapt: "both"`), into a
/// fresh index swapped in at the end, so queries keep the old one until then.
fn readapt(index: &SearchIndex, adapter: &Adapter) {
    index.remap(|x| adapter.apply(x));
}

fn show(metrics: &[(String, f64)]) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads documents matching `filter` on `conn`, splits each into a (query,
/// item) pair and encodes both sides: (training pairs, validation pairs).
/// Items come from the index itself when it stores exactly them unadapted.
pub async fn collect_pairs(
    reader: upstream::Reader<'_>,
    index: &Arc<SearchIndex>,
    splitter: &Splitter,
    filter: &RawDocument,
    split: &Split,
    max_pairs: usize,
    seed: u64,
) -> Result<(Pairs, Pairs), Error> {
    let spec = &index.spec;
    let (query_slot, item_key) = match splitter {
        Splitter::Fields { query } => (*query, spec.models[0].key.as_str()),
        Splitter::ArrayElement => (0, spec.models[0].key.as_str()),
    };
    let query_key = spec.models[query_slot].key.as_str();
    let from_index =
        matches!(splitter, Splitter::Fields { .. }) && index.adapter().is_none_or(|a| !a.both);
    let mut projection = rawdoc! { "_id": 1 };
    for key in [query_key, item_key] {
        if projection.get(key).ok().flatten().is_none() {
            projection.append(key, 1);
        }
    }
    let body = rawdoc! {
        "find": index.collection.as_str(),
        "filter": filter.to_owned(),
        "projection": projection,
        "batchSize": 1000,
        "$db": index.db.as_str(),
    };
    let mut cursor = reader.cursor(&body).await?;
    let dims = spec.dims;
    let (mut train_set, mut valid_set) = (Pairs::new(dims), Pairs::new(dims));
    while let Some(batch) = cursor.next_batch().await? {
        if train_set.len() + valid_set.len() >= max_pairs {
            break;
        }
        let mut ids = Vec::new();
        let mut queries = Vec::new();
        let mut items = Vec::new();
        for doc in &batch {
            let Some(id) = doc.get("_id").ok().flatten() else {
                continue;
            };
            let Some((query, item)) = split_document(doc, splitter, query_key, item_key, id, seed)
            else {
                continue;
            };
            ids.push(id.to_raw_bson());
            queries.push(query);
            items.push(item);
        }
        let query_model = index.encoders[query_slot].clone();
        let item_model = index.encoders[0].clone();
        let target = index.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            let q = encode_all(&query_model, &queries)?;
            let x = if from_index {
                target.stored_vectors(ids.iter().map(RawBson::as_raw_bson_ref))
            } else {
                encode_all(&item_model, &items)?
            };
            Ok::<_, Error>((ids, q, x))
        })
        .await
        .map_err(|e| Error::internal(format!("encoding task failed: {e}")))??;
        let (ids, q, x) = encoded;
        for ((id, q), x) in ids.iter().zip(q).zip(x) {
            if let (Some(q), Some(x)) = (q, x) {
                let set = if split.is_valid(id.as_raw_bson_ref()) {
                    &mut valid_set
                } else {
                    &mut train_set
                };
                set.push(&q, &x);
            }
        }
    }
    Ok((train_set, valid_set))
}

/// A document's (query, item) contents, or `None` if it has no pair.
fn split_document(
    doc: &RawDocument,
    splitter: &Splitter,
    query_key: &str,
    item_key: &str,
    id: RawBsonRef<'_>,
    seed: u64,
) -> Option<(RawBson, RawBson)> {
    match splitter {
        Splitter::Fields { .. } => {
            let q = lookup(doc, query_key)?;
            let x = lookup(doc, item_key)?;
            Some((q.to_raw_bson(), x.to_raw_bson()))
        }
        Splitter::ArrayElement => {
            let RawBsonRef::Array(array) = lookup(doc, item_key)? else {
                return None;
            };
            let elements: Vec<RawBsonRef<'_>> = array.into_iter().flatten().collect();
            if elements.len() < 2 {
                return None;
            }
            let pick = ((id_hash(id) ^ seed) % elements.len() as u64) as usize;
            let rest: Vec<&str> = elements
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != pick)
                .filter_map(|(_, e)| e.as_str())
                .collect();
            Some((
                elements[pick].to_raw_bson(),
                RawBson::String(rest.join(" ")),
            ))
        }
    }
}

fn encode_all(model: &Model, values: &[RawBson]) -> Result<Vec<Option<Vec<f32>>>, Error> {
    let refs: Vec<RawBsonRef<'_>> = values.iter().map(RawBson::as_raw_bson_ref).collect();
    let out = model.encode(&refs).map_err(|f| {
        Error::client(
            Code::OPERATION_FAILED,
            format!("model '{}' failed: {f}", model.name()),
        )
    })?;
    Ok(out.into_iter().map(|r| r.ok().map(|e| e.vector)).collect())
}

/// `evaluateSemanticIndex`: the metrics of the index as it serves now, and
/// without its adapter, on documents matching `filter` (read on the
/// client's own connection).
pub async fn evaluate(
    reader: upstream::Reader<'_>,
    index: &Arc<SearchIndex>,
    splitter: &Splitter,
    metrics: &[Metric],
    filter: &RawDocument,
    max_pairs: usize,
) -> Result<RawDocumentBuf, Error> {
    let seed = index.spec.train.as_ref().map_or(42, |s| s.seed);
    let (_, pairs) = collect_pairs(
        reader,
        index,
        splitter,
        filter,
        &Split::All,
        max_pairs,
        seed,
    )
    .await?;
    if pairs.is_empty() {
        return Err(Error::client(
            Code::BAD_VALUE,
            "no document of the filter has both sides of a pair",
        ));
    }
    let adapter = index.adapter();
    let metrics = metrics.to_vec();
    let (now, untrained, count) = tokio::task::spawn_blocking(move || {
        let untrained = train::evaluate(&Adapter::identity(pairs.dims, false), &pairs, &metrics);
        let now = match &adapter {
            Some(a) => train::evaluate(a, &pairs, &metrics),
            None => untrained.clone(),
        };
        (now, untrained, pairs.len())
    })
    .await
    .map_err(|e| Error::internal(format!("evaluation failed: {e}")))?;
    let doc = train::metrics_doc;
    Ok(rawdoc! {
        "ok": 1.0,
        "index": index.name.as_str(),
        "pairs": count as i64,
        "trained": index.adapter().is_some(),
        "metrics": doc(&now),
        "untrained": doc(&untrained),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_hash_is_fixed_by_the_ids_bytes() {
        // Worked out independently (Python: sha256 of bson.encode({"": id})).
        assert_eq!(id_hash(RawBsonRef::Int32(7)), 9830890065283356331);
        assert_eq!(id_hash(RawBsonRef::String("x")), 8488577094139102635);
    }

    #[test]
    fn splitters_make_pairs() {
        let doc =
            rawdoc! { "_id": 7, "title": "short", "text": "long text", "photos": ["a", "b", "c"] };
        let id = RawBsonRef::Int32(7);
        let fields = split_document(
            &doc,
            &Splitter::Fields { query: 1 },
            "title",
            "text",
            id,
            42,
        )
        .unwrap();
        assert_eq!(
            fields,
            (
                RawBson::String("short".into()),
                RawBson::String("long text".into())
            )
        );
        // One element is the query; the rest, joined in order, the item.
        let (query, item) =
            split_document(&doc, &Splitter::ArrayElement, "photos", "photos", id, 42).unwrap();
        let RawBson::String(query) = query else {
            panic!("query is text")
        };
        let RawBson::String(item) = item else {
            panic!("item is text")
        };
        let rest: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|e| *e != query)
            .collect();
        assert_eq!(item, rest.join(" "));
        // Same seed, same pick; a one-element array has no pair.
        assert_eq!(
            split_document(&doc, &Splitter::ArrayElement, "photos", "photos", id, 42)
                .unwrap()
                .0,
            RawBson::String(query)
        );
        let single = rawdoc! { "_id": 1, "photos": ["a"] };
        assert!(split_document(
            &single,
            &Splitter::ArrayElement,
            "photos",
            "photos",
            RawBsonRef::Int32(1),
            42
        )
        .is_none());
        assert!(split_document(
            &doc,
            &Splitter::Fields { query: 1 },
            "missing",
            "text",
            id,
            42
        )
        .is_none());
    }

    #[test]
    fn fraction_splits_are_stable() {
        let split = Split::Fraction(0.25);
        let held: usize = (0..4000)
            .filter(|i| split.is_valid(RawBsonRef::Int32(*i)))
            .count();
        assert!(
            (800..1200).contains(&held),
            "{held} of 4000 held out at 25%"
        );
        assert_eq!(
            split.is_valid(RawBsonRef::Int32(5)),
            split.is_valid(RawBsonRef::Int32(5))
        );
    }
}
