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
use crate::maintain::catalog;
use crate::maintain::fine_tune;
use crate::maintain::pairs::{encode_all, show, split_of, PairReader, RawPairs, Split};
use crate::models::Model;
use crate::models::Models;
use crate::registry::{Registry, SearchIndex, Status};
use crate::train::{self, Adapter, Metric, Pairs, Splitter};
use crate::upstream;
use bson::{rawdoc, RawBson, RawDocument, RawDocumentBuf};
use std::sync::Arc;
use std::time::Instant;

const ADAPTERS: &str = "adapters";

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
    let metrics = |key: &str| doc.get_document(key).ok().map(train::metrics_of);
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
pub fn start(
    config: &Arc<Config>,
    registry: &Arc<Registry>,
    models: &Arc<Models>,
    index: &Arc<SearchIndex>,
) {
    let Some(spec) = &index.spec.train else {
        return;
    };
    if let Some(fine) = spec.fine_tune {
        if !fine_tune::made_here(index) {
            fine_tune::start(config, registry, models, index);
            return;
        }
        // This generation encodes with the version its own run made.
        if index.training().fine_tune.is_none() {
            fine_tune::restore_record(index);
        }
        if !fine.adapter || index.adapter().is_some() {
            return;
        }
        // `adapt` as well: an adapter on the fine-tuned outputs, whose
        // epochs and metrics the listing then shows (the fine-tuning
        // run's stay in the version's `listModels` entry).
        {
            let mut t = index.training();
            if t.error.is_some() {
                return;
            }
            let Some(f) = t.fine_tune.as_mut() else {
                return;
            };
            if f.adapter_started {
                return;
            }
            f.adapter_started = true;
            t.epochs.clear();
            t.after = None;
            t.planned_epochs = spec.epochs;
        }
        tokio::spawn(run(config.clone(), index.clone()));
        return;
    }
    if index.adapter().is_some() {
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
        .as_ref()
        .map(train::TrainSpec::adapter_settings)
        .ok_or_else(|| Error::internal("no training spec"))?;
    let started = Instant::now();
    let conn = upstream::connect(config).await?;
    let split = split_of(&conn, index, &spec.validation).await?;
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
    // Under the index's apply lock: no write lands between the vectors'
    // re-adaptation and the adapter's installation (it would be lost in
    // the swap, or stored unadapted).
    let (target, a) = (index.clone(), adapter);
    tokio::task::spawn_blocking(move || {
        let _applying = target.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        if a.both {
            readapt(&target, &a);
        }
        target.set_adapter(Some(a));
    })
    .await
    .map_err(|e| Error::internal(format!("re-adapting failed: {e}")))?;
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

/// Reads documents matching `filter` on `reader`, splits each into a
/// (query, item) pair and encodes both sides: (training pairs, validation
/// pairs). Items come from the index itself when it stores exactly them
/// unadapted.
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
    let query_slot = match splitter {
        Splitter::Fields { query } => *query,
        Splitter::ArrayElement => 0,
    };
    let from_index =
        matches!(splitter, Splitter::Fields { .. }) && index.adapter().is_none_or(|a| !a.both);
    let mut pairs = PairReader::open(reader, index, splitter, filter, seed).await?;
    let dims = spec.dims;
    let (mut train_set, mut valid_set) = (Pairs::new(dims), Pairs::new(dims));
    while train_set.len() + valid_set.len() < max_pairs {
        let Some(RawPairs {
            ids,
            queries,
            items,
        }) = pairs.next().await?
        else {
            break;
        };
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

/// `evaluateSemanticIndex`: the metrics of the index as it serves now,
/// and without its adapter, on documents matching `filter` (read on the
/// client's own connection). `parent` is the model the index's fine-tuned
/// version was made from, if it encodes with one: then `untrained` is the
/// parent's (both sides of the filter's pairs encoded by it) and
/// `fineTuned` the version's without an adapter (items as the index
/// stores them), and `fineTuning` the run's own held-out comparison (with
/// no `untrained` once the parent model is dropped).
pub async fn evaluate(
    mut reader: upstream::Reader<'_>,
    index: &Arc<SearchIndex>,
    splitter: &Splitter,
    metrics: &[Metric],
    filter: &RawDocument,
    max_pairs: usize,
    parent: Option<Arc<Model>>,
) -> Result<RawDocumentBuf, Error> {
    let seed = index.spec.train.as_ref().map_or(42, |s| s.seed);
    let (_, pairs) = collect_pairs(
        reader.reborrow(),
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
    // A fine-tuned version whose parent was dropped has no untrained side.
    let version = index
        .encoders
        .first()
        .is_some_and(|m| m.def.lineage.is_some());
    let mut parent_pairs = None;
    if let Some(model) = parent {
        let mut read = PairReader::open(reader, index, splitter, filter, seed).await?;
        let mut out = Pairs::new(pairs.dims);
        while out.len() < max_pairs {
            let Some(batch) = read.next().await? else {
                break;
            };
            let model = model.clone();
            let encoded = tokio::task::spawn_blocking(move || {
                Ok::<_, Error>((
                    encode_all(&model, &batch.queries)?,
                    encode_all(&model, &batch.items)?,
                ))
            })
            .await
            .map_err(|e| Error::internal(format!("encoding task failed: {e}")))??;
            for (q, x) in encoded.0.into_iter().zip(encoded.1) {
                if let (Some(q), Some(x)) = (q, x) {
                    out.push(&q, &x);
                }
            }
        }
        parent_pairs = Some(out);
    }
    let adapter = index.adapter();
    let metrics = metrics.to_vec();
    let (now, own, untrained, count) = tokio::task::spawn_blocking(move || {
        let own = train::evaluate(&Adapter::identity(pairs.dims, false), &pairs, &metrics);
        let now = match &adapter {
            Some(a) => train::evaluate(a, &pairs, &metrics),
            None => own.clone(),
        };
        let untrained = parent_pairs
            .as_ref()
            .map(|p| train::evaluate(&Adapter::identity(p.dims, false), p, &metrics));
        (now, own, untrained, pairs.len())
    })
    .await
    .map_err(|e| Error::internal(format!("evaluation failed: {e}")))?;
    let doc = train::metrics_doc;
    let mut reply = rawdoc! {
        "ok": 1.0,
        "index": index.name.as_str(),
        "pairs": count as i64,
        "trained": index.adapter().is_some() || version,
        "metrics": doc(&now),
    };
    match (untrained, version) {
        (None, false) => reply.append("untrained", doc(&own)),
        (untrained, _) => {
            if let Some(untrained) = untrained {
                reply.append("untrained", doc(&untrained));
            }
            reply.append("fineTuned", doc(&own));
            // The run's own comparison on its held-out pairs, adapter
            // included.
            if let Some(run) = index
                .encoders
                .first()
                .and_then(|m| m.def.lineage.as_ref())
                .map(|l| &l.training)
            {
                let mut held_out = RawDocumentBuf::new();
                for key in ["before", "adapter", "after"] {
                    if let Ok(m) = run.get_document(key) {
                        held_out.append(key, m.to_owned());
                    }
                }
                reply.append("fineTuning", held_out);
            }
        }
    }
    Ok(reply)
}
