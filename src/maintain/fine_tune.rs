//! Fine-tuning a semantic index's text model end to end
//! (`train: {fineTune: true}`), in the background, while the index keeps
//! answering queries with the model it has (status TRAINING).
//!
//! A run reads the collection's (query, item) pairs as text, measures the
//! untrained model (and, for comparison, an adapter trained on its
//! outputs) on the held-out pairs, then trains the model's weights with
//! `train::finetune` on a blocking thread, reporting each step in the
//! listing, the logs and the metrics. The result is a new **model
//! version** (`<model>@<index>-v<n>`, [`versions`]): its files stored in
//! the upstream, its entry (parent, run, metrics, file hashes) in the
//! model catalog. The index is then re-encoded with it as a new
//! generation, through the staged-definition path `updateSearchIndex`
//! uses: the definition with the version in place of its parent is stored
//! beside the serving one, built in the background, and swapped in when
//! complete (`Registry::promote`), so queries see the old generation or
//! the new one, never a mixture, across a crash too. Outputs written
//! back go under the version's name (`_outputs.<key>.<version>`).
//!
//! Runs go one at a time per proxy. Dropping the index stops a run within
//! one step while the weights train (and between the phases around
//! that); a run that diverges (a loss that is not a number, or a probe
//! loss gone back towards chance over an epoch: `finetune::DIVERGED`)
//! stops and says why in `training.error`. Either way the index keeps
//! serving as it was, and a version already stored when the run learns it
//! cannot be used (the index dropped or its definition updated meanwhile)
//! is deleted again.
//!
//! Of the proxies on one upstream that serve the index, one runs it: the
//! run holds the index's lease ([`lease`]); the others wait (phase
//! `waiting`) and then take up the definition it stored ([`adopt`]), or
//! run it themselves if its holder went away without a result.

use crate::command::search_index::parse_definition;
use crate::config::Config;
use crate::error::{Code, Error};
use crate::maintain::pairs::{encode_all, show, split_of, PairReader, RawPairs, Split};
use crate::maintain::{catalog, lease, versions};
use crate::models::bert::ModelFiles;
use crate::models::{Lineage, Model, ModelDef, Models};
use crate::registry::{FineTuneState, Registry, SearchIndex, Status};
use crate::train::finetune::{self, BertGraph, FineTuneSpec, Trainable};
use crate::train::{self, Adapter, Pairs, TrainSpec};
use crate::upstream;
use bson::{rawdoc, RawArrayBuf, RawBson, RawDocumentBuf};
use std::sync::Arc;
use std::time::Instant;

/// Whether `index` encodes with a model version its own fine-tuning made
/// (so this generation is the run's result, not a reason to run again).
pub fn made_here(index: &SearchIndex) -> bool {
    index
        .encoders
        .first()
        .and_then(|m| m.def.lineage.as_ref())
        .is_some_and(|l| l.index_id == index.id)
}

/// Fills the listing's training record of a generation that encodes with
/// its own run's version from the version's stored run.
pub fn restore_record(index: &SearchIndex) {
    let Some(model) = index.encoders.first() else {
        return;
    };
    let Some(lineage) = &model.def.lineage else {
        return;
    };
    let run = &lineage.training;
    let metrics = |key: &str| run.get_document(key).ok().map(train::metrics_of);
    let int = |key: &str| crate::wire::integer(run.get(key).ok().flatten()).unwrap_or(0) as usize;
    let mut t = index.training();
    t.epochs = run
        .get_array("losses")
        .map(|a| {
            a.into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, l)| {
                    Some(train::Epoch {
                        epoch: i + 1,
                        loss: l.as_f64()? as f32,
                        metrics: Vec::new(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    t.planned_epochs = int("epochs");
    t.train_pairs = int("trainPairs");
    t.valid_pairs = int("validPairs");
    t.before = metrics("before");
    t.after = metrics("after");
    t.trained_at = run.get_datetime("trainedAt").ok();
    t.fine_tune = Some(FineTuneState {
        phase: "done",
        epoch: t.planned_epochs,
        step: int("steps"),
        steps: int("steps"),
        loss: t.epochs.last().map_or(0.0, |e| e.loss),
        pairs_per_s: run.get_f64("pairsPerSecond").unwrap_or(0.0),
        eta_s: 0.0,
        version: Some(model.def.name.clone()),
        adapter: metrics("adapter"),
        adapter_started: false,
    });
}

/// Starts fine-tuning `index`'s text model in the background, unless a run
/// is under way or has failed.
pub fn start(
    config: &Arc<Config>,
    registry: &Arc<Registry>,
    models: &Arc<Models>,
    index: &Arc<SearchIndex>,
) {
    // A generation staged to replace this one (a restart while the run's
    // result was being re-encoded, or an update) makes a run here moot.
    let successor = registry
        .staged(&index.db, &index.collection, &index.name)
        .into_iter()
        .find(|s| s.id == index.id && !Arc::ptr_eq(s, index));
    if let Some(next) = successor {
        if made_here(&next) {
            index.training().fine_tune = Some(FineTuneState {
                phase: "reEncoding",
                version: next.encoders.first().map(|m| m.def.name.clone()),
                ..FineTuneState::default()
            });
            index.set_status(Status::Training, None);
        }
        return;
    }
    {
        let mut t = index.training();
        if t.error.is_some() {
            return;
        }
        if let Some(f) = &t.fine_tune {
            // Under way: a rebuild meanwhile set READY; the old generation
            // still serves while the run goes on.
            if f.phase != "done" {
                drop(t);
                index.set_status(Status::Training, None);
            }
            return;
        }
        t.planned_epochs = index.spec.train.as_ref().map_or(0, |s| s.epochs);
        t.fine_tune = Some(FineTuneState {
            phase: "measuring",
            ..FineTuneState::default()
        });
    }
    let (config, registry, models, index) = (
        config.clone(),
        registry.clone(),
        models.clone(),
        index.clone(),
    );
    tokio::spawn(async move {
        index.set_status(Status::Training, None);
        match lead(&config, &registry, &models, &index).await {
            // The old generation serves (TRAINING) until the new one
            // replaces it.
            Ok(true) => {}
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(index = %index.name, error = %e.message, "fine-tuning failed; the index stays as it was");
                let mut t = index.training();
                t.error = Some(e.message);
                t.fine_tune = None;
            }
        }
        // TRAINING ends here unless the old generation serves on until the
        // new one replaces it; any other status (a rebuild) is left alone.
        let re_encoding = index
            .training()
            .fine_tune
            .as_ref()
            .is_some_and(|f| f.phase == "reEncoding");
        if !index.is_retired() && !re_encoding && index.status().0 == Status::Training {
            index.set_status(Status::Ready, None);
        }
    });
}

/// Runs the fine-tuning of `index` here, unless another proxy on the
/// upstream is running it: then waits for that proxy (phase `waiting`)
/// and takes up what it stored ([`adopt`]), or runs it here if that proxy
/// went away without a result. One proxy at a time holds the run's lease
/// (`fineTune:<index id>`, [`lease`]) from before the pairs are read
/// until the new generation is staged and stored. Returns as [`run`].
async fn lead(
    config: &Arc<Config>,
    registry: &Arc<Registry>,
    models: &Arc<Models>,
    index: &Arc<SearchIndex>,
) -> Result<bool, Error> {
    let key = format!("fineTune:{}", index.id);
    let waiting = |owner: &str| {
        tracing::info!(index = %index.name, owner = %owner, "another proxy is fine-tuning this index; waiting for its result");
        if let Some(f) = index.training().fine_tune.as_mut() {
            f.phase = "waiting";
        }
    };
    let lease = match lease::acquire(config, &key, || index.is_retired(), waiting).await? {
        lease::Acquired::GaveUp => return Ok(false),
        lease::Acquired::Free(lease) | lease::Acquired::AfterWaiting(lease) => lease,
    };
    // Another proxy may have finished a run before this one looked (its
    // lease already released): what it stored is taken up, not redone.
    if adopt(config, registry, models, index).await? {
        return Ok(true);
    }
    if let Some(f) = index.training().fine_tune.as_mut() {
        f.phase = "measuring";
    }
    // One run at a time per proxy: each holds a model's graph, its
    // optimiser state and its pairs.
    let _turn = RUNS.acquire().await;
    let outcome = run(config, registry, models, index, &lease).await;
    drop(lease);
    outcome
}

/// The error a run stops with when its lease was taken over meanwhile.
fn lease_lost() -> Error {
    Error::client(
        Code::OPERATION_FAILED,
        "fine-tuning stopped: another proxy took this index's run over (this one missed its lease renewals);          its result is stored, and a restart loads it",
    )
}

/// After waiting for another proxy's run of `index`: stages the
/// definition that proxy stored for it (the run's result, or a client's
/// update that came first), as `updateSearchIndex` would, loading the
/// models it names. `false` when nothing new is stored (that proxy went
/// away without a result: the run is this proxy's to do); `true` when
/// there is nothing left to run here (staged, or the index is gone).
async fn adopt(
    config: &Arc<Config>,
    registry: &Arc<Registry>,
    models: &Arc<Models>,
    index: &Arc<SearchIndex>,
) -> Result<bool, Error> {
    let filter = rawdoc! { "_id": index.id.as_str() };
    let Some(stored) = catalog::find(config, catalog::INDEXES, filter)
        .await?
        .into_iter()
        .next()
    else {
        // Dropped through another proxy (or its entry fails its
        // signature): nothing to run or take up.
        index.training().fine_tune = None;
        return Ok(true);
    };
    let holder = match stored.get_document("staged") {
        Ok(staged) => staged.to_owned(),
        Err(_) => stored.clone(),
    };
    let definition = holder
        .get_document("definition")
        .map_err(|_| Error::internal("stored index definition lacks 'definition'"))?;
    if definition == index.definition.as_ref() {
        return Ok(false);
    }
    let names: Vec<String> = parse_definition(definition)?
        .iter()
        .flat_map(|part| part.models.iter().map(|m| m.model.clone()))
        .collect();
    crate::maintain::ensure_models(config, models, &names).await?;
    let parts: Vec<Arc<SearchIndex>> = catalog::parts(&stored, &holder, models)?
        .into_iter()
        .map(Arc::new)
        .collect();
    let version = parts
        .first()
        .filter(|p| made_here(p))
        .and_then(|p| p.encoders.first())
        .map(|m| m.def.name.clone());
    tracing::info!(index = %index.name, model = ?version, "taking up the definition another proxy stored for this index");
    let staged = crate::maintain::stage_update(config, registry, models, parts, Some(index));
    let mut t = index.training();
    if staged {
        if let Some(f) = t.fine_tune.as_mut() {
            f.phase = "reEncoding";
            f.version = version;
        }
    } else {
        // Replaced meanwhile: the generation that replaced it serves.
        t.fine_tune = None;
    }
    Ok(true)
}

/// Fine-tuning runs one at a time in a proxy.
static RUNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Most training pairs the comparison adapter is trained on (a sample of
/// the run's, so its cost stays small beside fine-tuning's).
const COMPARISON_PAIRS: usize = 20_000;

/// Text pairs read from the collection, and the (query, item) contents'
/// texts of each split.
struct TextPairs {
    train: Vec<(String, String)>,
    valid: Vec<(String, String)>,
}

/// A value's text, as a `text` model reads it: a string, or an array of
/// strings joined with spaces.
fn text_of(value: &RawBson) -> Option<String> {
    match value {
        RawBson::String(s) => Some(s.clone()),
        RawBson::Array(a) => crate::models::joined_text(a),
        _ => None,
    }
}

async fn read_texts(
    conn: &upstream::Own,
    index: &SearchIndex,
    spec: &TrainSpec,
    split: &Split,
) -> Result<TextPairs, Error> {
    let mut reader = PairReader::open(
        upstream::Reader::Own(conn),
        index,
        &spec.splitter,
        &RawDocumentBuf::new(),
        spec.seed,
    )
    .await?;
    let mut out = TextPairs {
        train: Vec::new(),
        valid: Vec::new(),
    };
    while out.train.len() + out.valid.len() < spec.max_pairs {
        let Some(RawPairs {
            ids,
            queries,
            items,
        }) = reader.next().await?
        else {
            break;
        };
        for ((id, q), x) in ids.iter().zip(&queries).zip(&items) {
            let (Some(q), Some(x)) = (text_of(q), text_of(x)) else {
                continue;
            };
            if split.is_valid(id.as_raw_bson_ref()) {
                out.valid.push((q, x));
            } else {
                out.train.push((q, x));
            }
        }
    }
    Ok(out)
}

/// `pairs` encoded by `model` (pairs it cannot encode left out).
fn encode_pairs(model: &Model, pairs: &[(String, String)]) -> Result<Pairs, Error> {
    let side = |query: bool| -> Vec<RawBson> {
        pairs
            .iter()
            .map(|(q, x)| RawBson::String(if query { q.clone() } else { x.clone() }))
            .collect()
    };
    let (q, x) = (
        encode_all(model, &side(true))?,
        encode_all(model, &side(false))?,
    );
    let mut out = Pairs::new(model.dimensions());
    for (q, x) in q.into_iter().zip(x) {
        if let (Some(q), Some(x)) = (q, x) {
            out.push(&q, &x);
        }
    }
    Ok(out)
}

/// `pairs` encoded by `encoder` (no adapter, as the index stores them).
fn encode_texts(
    encoder: &crate::models::bert::BertEncoder,
    pairs: &[(String, String)],
) -> Result<Pairs, Error> {
    let fail = |e: String| Error::client(Code::OPERATION_FAILED, e);
    let queries: Vec<&str> = pairs.iter().map(|(q, _)| q.as_str()).collect();
    let items: Vec<&str> = pairs.iter().map(|(_, x)| x.as_str()).collect();
    let batch = crate::models::DEFAULT_BATCH;
    let q = encoder.encode(&queries, batch).map_err(fail)?;
    let x = encoder.encode(&items, batch).map_err(fail)?;
    let mut out = Pairs::new(encoder.dimensions());
    for (q, x) in q.iter().zip(&x) {
        out.push(&q.vector, &x.vector);
    }
    Ok(out)
}

/// A setting given as a 32-bit float, as the decimal it was written as
/// (`0.0001`, not `9.999999747378752e-5`), for storing and reporting.
fn as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// `definition` with every entry of its `models` naming `parent` naming
/// `version` instead.
fn with_version(definition: &RawDocumentBuf, parent: &str, version: &str) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for (key, value) in definition.iter().flatten() {
        if key != "models" {
            out.append(key, value.to_raw_bson());
            continue;
        }
        match value {
            bson::RawBsonRef::String(s) if s == parent => out.append(key, version),
            bson::RawBsonRef::Array(models) => {
                let mut renamed = RawArrayBuf::new();
                for m in models.into_iter().flatten() {
                    match m.as_str() {
                        Some(s) if s == parent => renamed.push(version),
                        _ => renamed.push(m.to_raw_bson()),
                    }
                }
                out.append(key, renamed);
            }
            other => out.append(key, other.to_raw_bson()),
        }
    }
    out
}

/// One run; `Ok(true)` once the new generation is staged, `Ok(false)`
/// when the index was dropped meanwhile.
async fn run(
    config: &Arc<Config>,
    registry: &Arc<Registry>,
    models: &Arc<Models>,
    index: &Arc<SearchIndex>,
    lease: &lease::Lease,
) -> Result<bool, Error> {
    let spec = index
        .spec
        .train
        .clone()
        .ok_or_else(|| Error::internal("no training spec"))?;
    let fine = spec
        .fine_tune
        .ok_or_else(|| Error::internal("no fine-tuning spec"))?;
    if index.is_retired() {
        return Ok(false);
    }
    let started = Instant::now();
    let parent = index
        .encoders
        .first()
        .cloned()
        .ok_or_else(|| Error::internal("a semantic index without models"))?;
    let encoder = parent.text_encoder().cloned().ok_or_else(|| {
        Error::client(
            Code::BAD_VALUE,
            format!(
                "'train.fineTune' needs a 'text' model; '{}' is not one",
                parent.name()
            ),
        )
    })?;
    let files = versions::files_of(config, &parent.def).await?;
    let conn = upstream::connect(config).await?;
    let split = split_of(&conn, index, &spec.validation).await?;
    let texts = read_texts(&conn, index, &spec, &split).await?;
    {
        let mut t = index.training();
        t.train_pairs = texts.train.len();
        t.valid_pairs = texts.valid.len();
    }
    let need = spec.batch_size.max(train::spec::MIN_TRAIN_PAIRS);
    if texts.train.len() < need || texts.valid.len() < train::spec::MIN_VALID_PAIRS {
        return Err(Error::client(
            Code::BAD_VALUE,
            format!(
                "too few pairs to fine-tune: {} training and {} validation pairs, need at least {need} and {}",
                texts.train.len(),
                texts.valid.len(),
                train::spec::MIN_VALID_PAIRS
            ),
        ));
    }
    // Before: the untrained model, and an adapter on its outputs.
    // The adapter `adapt` would train, for comparison.
    let (model, metrics_wanted, adapter_spec) = (
        parent.clone(),
        spec.metrics.clone(),
        spec.adapter_settings(),
    );
    let texts = Arc::new(texts);
    let (read, watched) = (texts.clone(), index.clone());
    let (before, adapter) = tokio::task::spawn_blocking(move || {
        let valid = encode_pairs(&model, &read.valid)?;
        let before = train::evaluate(
            &Adapter::identity(valid.dims, false),
            &valid,
            &metrics_wanted,
        );
        if watched.is_retired() {
            return Ok((before, None));
        }
        let sample = &read.train[..read.train.len().min(COMPARISON_PAIRS)];
        let trained = encode_pairs(&model, sample)?;
        let adapter = train::train(&adapter_spec, &trained, &valid, |_| !watched.is_retired())
            .map(|a| train::evaluate(&a, &valid, &metrics_wanted))
            .ok();
        Ok::<_, Error>((before, adapter))
    })
    .await
    .map_err(|e| Error::internal(format!("evaluation task failed: {e}")))??;
    if index.is_retired() {
        return Ok(false);
    }
    {
        let mut t = index.training();
        t.before = Some(before.clone());
        if let Some(f) = t.fine_tune.as_mut() {
            f.adapter = adapter.clone();
            f.phase = "fineTuning";
        }
    }
    tracing::info!(
        index = %index.name,
        train_pairs = texts.train.len(),
        valid_pairs = texts.valid.len(),
        before = %show(&before),
        adapter = %adapter.as_deref().map(show).unwrap_or_default(),
        "fine-tuning: pairs read"
    );
    // The weights, trained on a blocking thread.
    let target = index.clone();
    let read = texts.clone();
    let run_spec = FineTuneSpec {
        epochs: spec.epochs,
        batch_size: spec.batch_size,
        learning_rate: as_written(spec.learning_rate),
        weight_decay: as_written(spec.weight_decay),
        temperature: as_written(spec.temperature),
        seed: spec.seed,
    };
    let trainable = Trainable {
        layers: fine.layers,
        embeddings: !fine.freeze_embeddings,
    };
    let base = files.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let queries: Vec<&str> = read.train.iter().map(|(q, _)| q.as_str()).collect();
        let items: Vec<&str> = read.train.iter().map(|(_, x)| x.as_str()).collect();
        let cut = |ids: Vec<u32>| match fine.max_tokens {
            Some(m) => finetune::truncate(ids, m),
            None => ids,
        };
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = encoder
            .tokenize(&queries)?
            .into_iter()
            .zip(encoder.tokenize(&items)?.into_iter().map(cut))
            .collect();
        let graph = BertGraph::from_files(&base, trainable)?;
        let per_epoch = pairs.len() / run_spec.batch_size.max(2);
        let (mut sum, mut count) = (0.0f64, 0usize);
        let epochs = finetune::fine_tune(&graph, &pairs, &run_spec, |p| {
            sum += f64::from(p.loss);
            count += 1;
            let eta = (p.steps - p.step) as f64 * run_spec.batch_size as f64 / p.pairs_per_s;
            {
                let mut t = target.training();
                if let Some(f) = t.fine_tune.as_mut() {
                    f.epoch = p.epoch;
                    f.step = p.step;
                    f.steps = p.steps;
                    f.loss = p.loss;
                    f.pairs_per_s = p.pairs_per_s;
                    f.eta_s = eta;
                }
                if per_epoch > 0 && p.step % per_epoch == 0 {
                    t.epochs.push(train::Epoch {
                        epoch: p.epoch,
                        loss: (sum / count as f64) as f32,
                        metrics: Vec::new(),
                    });
                    (sum, count) = (0.0, 0);
                }
            }
            if p.step % 10 == 0 || p.step == p.steps {
                tracing::info!(
                    index = %target.name,
                    epoch = p.epoch,
                    step = p.step,
                    steps = p.steps,
                    loss = p.loss,
                    pairs_per_s = p.pairs_per_s,
                    eta_s = eta,
                    "fine-tuning step"
                );
            }
            !target.is_retired()
        })?;
        let weights = graph.to_safetensors()?;
        Ok::<_, String>((epochs, weights))
    })
    .await
    .map_err(|e| Error::internal(format!("fine-tuning task failed: {e}")))?;
    let (epochs, weights) = outcome.map_err(|e| Error::client(Code::OPERATION_FAILED, e))?;
    if index.is_retired() {
        tracing::info!(index = %index.name, "fine-tuning stopped: the index was dropped");
        return Ok(false);
    }
    let tuned_files = ModelFiles {
        config: files.config.clone(),
        tokenizer: files.tokenizer.clone(),
        weights,
    };
    let seconds = started.elapsed().as_secs_f64();
    let pairs_per_s = index
        .training()
        .fine_tune
        .as_ref()
        .map_or(0.0, |f| f.pairs_per_s);
    let trained_at = bson::DateTime::now();
    let mut training = rawdoc! {
        "epochs": spec.epochs as i32,
        "losses": epochs.iter().map(|e| f64::from(e.loss)).collect::<bson::RawArrayBuf>(),
        "steps": (texts.train.len() / spec.batch_size.max(2) * spec.epochs) as i64,
        "trainPairs": texts.train.len() as i64,
        "validPairs": texts.valid.len() as i64,
        "batchSize": spec.batch_size as i32,
        "learningRate": as_written(spec.learning_rate),
        "freezeEmbeddings": fine.freeze_embeddings,
        "seconds": seconds,
        "pairsPerSecond": pairs_per_s,
        "before": train::metrics_doc(&before),
        "trainedAt": trained_at,
    };
    if let Some(layers) = fine.layers {
        training.append("layers", layers as i32);
    }
    if let Some(m) = fine.max_tokens {
        training.append("maxTokens", m as i32);
    }
    if let Some(a) = &adapter {
        training.append("adapter", train::metrics_doc(a));
    }

    // The version: evaluated, then claimed under a name no stored model
    // has, its files stored, and registered.
    let unnamed = ModelDef {
        path: None,
        lineage: Some(Lineage {
            parent: parent.name().to_string(),
            index_id: index.id.clone(),
            index: format!("{}.{}", index.namespace(), index.name),
            training: RawDocumentBuf::new(),
            files: versions::hashes(&tuned_files),
        }),
        ..parent.def.clone()
    };
    let (read, metrics_wanted, evaluated) =
        (texts.clone(), spec.metrics.clone(), tuned_files.clone());
    let after = tokio::task::spawn_blocking(move || {
        let encoder = crate::models::bert::BertEncoder::from_files(&evaluated)
            .map_err(|e| Error::client(Code::OPERATION_FAILED, e))?;
        let valid = encode_texts(&encoder, &read.valid)?;
        Ok::<_, Error>(train::evaluate(
            &Adapter::identity(valid.dims, false),
            &valid,
            &metrics_wanted,
        ))
    })
    .await
    .map_err(|e| Error::internal(format!("evaluating the fine-tuned model failed: {e}")))??;
    training.append("after", train::metrics_doc(&after));
    if index.is_retired() {
        return Ok(false);
    }
    if lease.lost() {
        return Err(lease_lost());
    }
    let def = claim_version(config, models, index, unnamed, training).await?;
    let name = def.name.clone();
    let stored = async {
        versions::store(config, &name, &tuned_files).await?;
        let (loader, files) = (models.clone(), tuned_files.clone());
        tokio::task::spawn_blocking(move || loader.load_version(def, &files))
            .await
            .map_err(|e| Error::internal(format!("loading the fine-tuned model failed: {e}")))?
    }
    .await;
    let version = match stored {
        Ok(version) => version,
        Err(e) => {
            discard_version(config, models, &name).await;
            return Err(e);
        }
    };
    models.insert(Arc::new(version));
    {
        let mut t = index.training();
        t.after = Some(after.clone());
        t.trained_at = Some(trained_at);
        if let Some(f) = t.fine_tune.as_mut() {
            f.phase = "reEncoding";
            f.version = Some(name.clone());
            f.eta_s = 0.0;
        }
    }
    tracing::info!(
        index = %index.name,
        model = %name,
        seconds,
        pairs_per_s,
        before = %show(&before),
        after = %show(&after),
        "fine-tuning done: model version stored; re-encoding the index with it"
    );

    // The new generation, staged like an updated definition, but only
    // over the generation the run started from.
    let definition = with_version(&index.definition, parent.name(), &name);
    let mut specs = Vec::new();
    for mut part in parse_definition(&definition)? {
        let encoders = part.resolve_models(models)?;
        specs.push((part, encoders));
    }
    let parts: Vec<Arc<SearchIndex>> = SearchIndex::parts(
        &index.id,
        &index.db,
        &index.collection,
        &index.name,
        &definition,
        specs,
        (index.definition_version.0 + 1, bson::DateTime::now()),
    )
    .into_iter()
    .map(Arc::new)
    .collect();
    let first = parts[0].clone();
    if lease.lost() {
        discard_version(config, models, &name).await;
        return Err(lease_lost());
    }
    if !crate::maintain::stage_update(config, registry, models, parts, Some(index)) {
        discard_version(config, models, &name).await;
        if index.is_retired() {
            return Ok(false);
        }
        return Err(Error::client(
            Code::OPERATION_FAILED,
            "fine-tuning finished after the index's definition was updated: its version was discarded",
        ));
    }
    // Stored beside the serving definition, so a restart builds it too.
    catalog::save_with_staged(config, index, Some(&first)).await?;
    if first.is_retired() {
        // A client's update replaced it meanwhile: that one is stored.
        if let Some(update) = registry
            .staged(&index.db, &index.collection, &index.name)
            .into_iter()
            .find(|s| s.id == index.id)
        {
            catalog::save_with_staged(config, index, Some(&update)).await?;
        }
    }
    Ok(true)
}

/// Stores `def` as a version of `index`'s model under the first name
/// `<parent>@<index>-v<n>` no stored model has (claimed by inserting its
/// entry, so two proxies never share one), with `training` as its run.
async fn claim_version(
    config: &Config,
    models: &Models,
    index: &SearchIndex,
    mut def: ModelDef,
    training: RawDocumentBuf,
) -> Result<ModelDef, Error> {
    let parent = def
        .lineage
        .as_ref()
        .map(|l| l.parent.clone())
        .unwrap_or_default();
    if let Some(l) = def.lineage.as_mut() {
        l.training = training;
    }
    for n in 1..=10_000 {
        def.name = versions::version_name(&parent, &index.name, n);
        if models.get(&def.name).is_some() {
            continue;
        }
        if catalog::insert_model(config, &def).await? {
            return Ok(def);
        }
    }
    Err(Error::client(
        Code::OPERATION_FAILED,
        format!(
            "no free model version name for '{parent}' and index '{}'",
            index.name
        ),
    ))
}

/// Forgets version `name`: its files, its entry, its loaded model. Best
/// effort (logged): what it leaves is unused.
async fn discard_version(config: &Config, models: &Models, name: &str) {
    if let Err(e) = versions::delete_files(config, name).await {
        tracing::warn!(model = %name, error = %e, "cannot delete an unused model version's files");
    }
    if let Err(e) = catalog::delete_model(config, name).await {
        tracing::warn!(model = %name, error = %e, "cannot delete an unused model version's entry");
    }
    models.remove(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_definition_names_the_version_where_it_named_the_parent() {
        let def = rawdoc! {
            "models": ["minilm", "other", "minilm"],
            "keys": ["text", "title", "name"],
            "measure": "dot",
        };
        let out = with_version(&def, "minilm", "minilm@docs-v1");
        assert_eq!(
            out,
            rawdoc! {
                "models": ["minilm@docs-v1", "other", "minilm@docs-v1"],
                "keys": ["text", "title", "name"],
                "measure": "dot",
            }
        );
        let single = rawdoc! { "models": "minilm", "keys": "text" };
        assert_eq!(
            with_version(&single, "minilm", "v"),
            rawdoc! { "models": "v", "keys": "text" }
        );
    }

    #[test]
    fn texts_are_strings_or_arrays_of_strings() {
        assert_eq!(text_of(&RawBson::String("a".into())), Some("a".into()));
        let mut a = RawArrayBuf::new();
        a.push("x");
        a.push("y");
        assert_eq!(text_of(&RawBson::Array(a)), Some("x y".into()));
        assert_eq!(text_of(&RawBson::Int32(1)), None);
    }
}
