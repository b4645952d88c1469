//! Search-index administration in Atlas's shape: `createSearchIndexes`,
//! `updateSearchIndex`, `dropSearchIndex`, and `$listSearchIndexes` (as an
//! aggregation stage, and as a `listSearchIndexes` command), for
//! `vectorSearch` and `search` (full-text, `search_definition`) indexes.

use super::search_definition;
use crate::error::{Code, Error};
use crate::index::hnsw::HnswParams;
use crate::index::{Quantization, Similarity};
use crate::registry::{IndexSpec, SearchIndex, Status};
use crate::wire::integer;
use bson::{rawdoc, RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf};
use std::sync::Arc;

use crate::index::MAX_DIMENSIONS;

fn bad(message: impl Into<String>) -> Error {
    Error::client(Code::BAD_VALUE, message)
}

/// One index in a `createSearchIndexes` request.
#[derive(Debug)]
pub struct NewIndex {
    pub name: String,
    pub definition: RawDocumentBuf,
    /// One per vector field (see [`parse_definition`]).
    pub specs: Vec<IndexSpec>,
}

/// Which index an update or drop names.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: Option<String>,
    pub id: Option<String>,
}

/// Reads `{createSearchIndexes: coll, indexes: [{name?, type?, definition}]}`.
pub fn parse_create(body: &RawDocument) -> Result<Vec<NewIndex>, Error> {
    let indexes = body
        .get_array("indexes")
        .map_err(|_| bad("createSearchIndexes needs an 'indexes' array"))?;
    let mut out = Vec::new();
    for entry in indexes {
        let Ok(RawBsonRef::Document(spec)) = entry else {
            return Err(bad("each entry of 'indexes' must be a document"));
        };
        let name = match spec.get("name") {
            Ok(Some(RawBsonRef::String(n))) if !n.is_empty() => n.to_string(),
            Ok(None) => "default".to_string(),
            _ => return Err(bad("index 'name' must be a non-empty string")),
        };
        let definition = spec
            .get_document("definition")
            .map_err(|_| bad("index needs a 'definition' document"))?;
        // Atlas's default type is `search`.
        let full_text = match spec.get("type") {
            Ok(Some(RawBsonRef::String("vectorSearch"))) => false,
            Ok(Some(RawBsonRef::String("search")) | None) => true,
            Ok(Some(RawBsonRef::String(other))) => {
                return Err(Error::client(
                    Code::INVALID_OPTIONS,
                    format!("index type must be 'search' or 'vectorSearch', not '{other}'"),
                ))
            }
            _ => return Err(bad("index 'type' must be a string")),
        };
        if full_text && !search_definition::is_search_definition(definition) {
            return Err(Error::client(
                Code::INVALID_OPTIONS,
                if definition.get("fields").ok().flatten().is_some() {
                    "a 'search' index needs 'mappings': for vector fields, set type: 'vectorSearch'"
                } else {
                    "a search index definition needs 'mappings'"
                },
            ));
        }
        if !full_text && search_definition::is_search_definition(definition) {
            return Err(Error::client(
                Code::INVALID_OPTIONS,
                "a 'vectorSearch' index takes 'fields', not 'mappings': for full text, set type: 'search'",
            ));
        }
        out.push(NewIndex {
            name,
            specs: parse_definition(definition)?,
            definition: definition.to_owned(),
        });
    }
    if out.is_empty() {
        return Err(bad("'indexes' is empty"));
    }
    Ok(out)
}

/// Most vector and `autoEmbed` fields one index definition may hold (each
/// is an index of its own, with its own change stream).
pub const MAX_VECTOR_FIELDS: usize = 8;

/// Reads a definition into one spec per vector field, in order: Atlas's
/// `{fields: [{type: "vector", path, numDimensions, similarity,
/// hnswOptions?} | {type: "autoEmbed", path, model?, ...} | {type:
/// "filter", path}...]}` (several vector fields allowed, as in Atlas,
/// `$vectorSearch`'s `path` choosing one; every one shares the filter
/// fields), or a semantic definition (`{models, keys, ...}`, one spec).
pub fn parse_definition(definition: &RawDocument) -> Result<Vec<IndexSpec>, Error> {
    if search_definition::is_search_definition(definition) {
        return Ok(vec![IndexSpec::full_text(search_definition::parse(
            definition,
        )?)]);
    }
    if definition.get("models").ok().flatten().is_some() {
        return Ok(vec![parse_semantic(definition)?]);
    }
    let fields = definition
        .get_array("fields")
        .map_err(|_| bad("definition needs a 'fields' array"))?;
    let mut vectors = Vec::new();
    let mut filters = Vec::new();
    for field in fields {
        let Ok(RawBsonRef::Document(field)) = field else {
            return Err(bad("each entry of 'fields' must be a document"));
        };
        let path = field
            .get_str("path")
            .map_err(|_| bad("each field needs a string 'path'"))?
            .to_string();
        match field.get_str("type") {
            Ok("vector") => {
                let (dims, similarity, hnsw) = parse_vector_field(field)?;
                vectors.push(IndexSpec {
                    target_recall: target_recall(field)?,
                    quantization: quantization(field)?,
                    ..IndexSpec::vector(path, dims, similarity, hnsw)
                });
            }
            Ok("autoEmbed") => {
                let (model, similarity) = parse_auto_embed_field(field)?;
                vectors.push(IndexSpec {
                    models: vec![crate::models::ModelKey {
                        model,
                        key: path.clone(),
                    }],
                    target_recall: target_recall(field)?,
                    quantization: quantization(field)?,
                    // dims: the model's, once resolved
                    ..IndexSpec::vector(path, 0, similarity, HnswParams::default())
                });
            }
            Ok("filter") => filters.push(path),
            _ => {
                return Err(bad(
                    "field 'type' must be 'vector', 'autoEmbed' or 'filter'",
                ))
            }
        }
    }
    if vectors.is_empty() {
        return Err(bad(
            "definition needs at least one field of type 'vector' or 'autoEmbed'",
        ));
    }
    if vectors.len() > MAX_VECTOR_FIELDS {
        return Err(bad(format!(
            "a definition may hold at most {MAX_VECTOR_FIELDS} vector and autoEmbed fields"
        )));
    }
    for (i, spec) in vectors.iter().enumerate() {
        if vectors[..i].iter().any(|s| s.path == spec.path) {
            return Err(bad(format!("path '{}' is indexed twice", spec.path)));
        }
    }
    for spec in &mut vectors {
        spec.filters = filters.clone();
    }
    Ok(vectors)
}

/// Reads Atlas's automated-embedding field, `{type: "autoEmbed", path,
/// modality?: "text", model?, similarity?}`, as (model, similarity): the
/// path's text is encoded by the named model (one registered with
/// `createModel`; Atlas's model names, such as `voyage-4`, can be
/// registered as `http` models for the provider's endpoint), or by the
/// proxy's default text model ([`crate::models::DEFAULT_MODEL`]) when
/// `model` is left out. Similarity defaults to cosine (for the unit-length
/// outputs of text models, the same ranking and scores as `dotProduct`).
fn parse_auto_embed_field(field: &RawDocument) -> Result<(String, Similarity), Error> {
    match field.get("modality") {
        Ok(None) | Ok(Some(RawBsonRef::String("text"))) => {}
        _ => {
            return Err(Error::client(
                Code::INVALID_OPTIONS,
                "'modality' of an autoEmbed field must be 'text'",
            ))
        }
    }
    let model = match field.get("model") {
        Ok(None) => crate::models::DEFAULT_MODEL.to_string(),
        Ok(Some(RawBsonRef::String(m))) if !m.is_empty() => m.to_string(),
        _ => {
            return Err(bad(
                "'model' of an autoEmbed field must be a non-empty string",
            ))
        }
    };
    let similarity = match field.get("similarity") {
        Ok(None) => Similarity::Cosine,
        Ok(Some(RawBsonRef::String(s))) => Similarity::parse(s)
            .ok_or_else(|| bad("'similarity' must be 'cosine', 'euclidean' or 'dotProduct'"))?,
        _ => return Err(bad("'similarity' must be a string")),
    };
    for (key, _) in field.iter().flatten() {
        if !["type", "path", "modality", "model", "similarity"].contains(&key) {
            return Err(Error::client(
                Code::INVALID_OPTIONS,
                format!("autoEmbed field option '{key}' is not supported by likewise"),
            ));
        }
    }
    Ok((model, similarity))
}

/// The seed's `create_semantic_index`: `{createSemanticIndex: coll, name,
/// models: [...], keys: [...], measure, writeOutputs?, hnswOptions?,
/// filters?}`. The stored definition is the command without its first key
/// and `$db`, so it parses back with `parse_definition`.
pub fn parse_create_semantic(body: &RawDocument) -> Result<NewIndex, Error> {
    check_semantic_keys(body, true)?;
    let name = match body.get("name") {
        Ok(Some(RawBsonRef::String(n))) if !n.is_empty() => n.to_string(),
        _ => return Err(bad("createSemanticIndex needs a non-empty string 'name'")),
    };
    let mut definition = RawDocumentBuf::new();
    for (k, v) in body.iter().flatten().skip(1) {
        if !k.starts_with('$') && !matches!(k, "name" | "lsid" | "txnNumber") {
            definition.append(k, v.to_raw_bson());
        }
    }
    Ok(NewIndex {
        name,
        specs: vec![parse_semantic(&definition)?],
        definition,
    })
}

fn strings(definition: &RawDocument, key: &str) -> Result<Vec<String>, Error> {
    let array = definition
        .get_array(key)
        .map_err(|_| bad(format!("'{key}' must be an array of strings")))?;
    let mut out = Vec::new();
    for item in array {
        match item {
            Ok(RawBsonRef::String(s)) if !s.is_empty() => out.push(s.to_string()),
            _ => {
                return Err(bad(format!(
                    "'{key}' must be an array of non-empty strings"
                )))
            }
        }
    }
    Ok(out)
}

/// Refuses the keys of a semantic definition (and of its `train`) that
/// likewise does not know, so a misspelt option is an error rather than a
/// default silently used. Checked when a client gives a definition
/// (`createSemanticIndex`, `updateSearchIndex`), not when a stored one is
/// read back. `command`: `definition` is the whole command, whose own
/// fields (its first key, `name`, drivers' session and option fields) are
/// skipped.
pub fn check_semantic_keys(definition: &RawDocument, command: bool) -> Result<(), Error> {
    const KNOWN: &[&str] = &[
        "models",
        "keys",
        "measure",
        "writeOutputs",
        "hnswOptions",
        "filters",
        "loss",
        "metrics",
        "splitter",
        "validation",
        "train",
        "targetRecall",
        "quantization",
        "oversampling",
    ];
    const COMMAND: &[&str] = &[
        "name",
        "lsid",
        "txnNumber",
        "comment",
        "maxTimeMS",
        "writeConcern",
        "apiVersion",
        "apiStrict",
        "apiDeprecationErrors",
        "autocommit",
        "startTransaction",
    ];
    const TRAIN: &[&str] = &[
        "epochs",
        "batchSize",
        "learningRate",
        "temperature",
        "weightDecay",
        "adapt",
        "seed",
        "maxPairs",
        "fineTune",
        "layers",
        "freezeEmbeddings",
        "maxTokens",
    ];
    let skip = usize::from(command);
    for (key, _) in definition.iter().flatten().skip(skip) {
        let ours = KNOWN.contains(&key);
        if !ours && !(command && (key.starts_with('$') || COMMAND.contains(&key))) {
            return Err(bad(format!(
                "unknown option '{key}' in a semantic index definition: use {}",
                KNOWN.join(", ")
            )));
        }
    }
    if let Ok(train) = definition.get_document("train") {
        if let Some((key, _)) = train.iter().flatten().find(|(k, _)| !TRAIN.contains(k)) {
            return Err(bad(format!(
                "unknown option 'train.{key}': use {}",
                TRAIN.join(", ")
            )));
        }
    }
    Ok(())
}

/// Reads a semantic index definition. Dimensions come from the models, so
/// `dims` is 0 until `IndexSpec::resolve_models` fills it in.
fn parse_semantic(definition: &RawDocument) -> Result<IndexSpec, Error> {
    let models = strings(definition, "models")?;
    let keys = strings(definition, "keys")?;
    if models.is_empty() {
        return Err(bad("'models' must name at least one model"));
    }
    if models.len() != keys.len() {
        return Err(bad(format!(
            "'models' and 'keys' must have the same length (models[i] encodes keys[i]); got {} and {}",
            models.len(),
            keys.len()
        )));
    }
    for key in &keys {
        if key.starts_with('$') || key.starts_with("_outputs") || key == "_id" {
            return Err(bad(format!("'{key}' cannot be a key of a semantic index")));
        }
    }
    let similarity = match definition.get_str("measure") {
        Ok("css" | "cosine") => Similarity::Cosine,
        Ok("dot") => Similarity::DotProduct,
        Ok("l2") => Similarity::Euclidean,
        Ok(other) => {
            return Err(bad(format!(
                "unknown measure '{other}': use 'css' (cosine), 'cosine', 'dot' or 'l2'"
            )))
        }
        Err(_) => Similarity::Cosine,
    };
    let write_outputs = match definition.get("writeOutputs") {
        Ok(Some(RawBsonRef::Boolean(b))) => b,
        Ok(None) => false,
        _ => return Err(bad("'writeOutputs' must be a boolean")),
    };
    let mut hnsw = HnswParams::default();
    if let Ok(options) = definition.get_document("hnswOptions") {
        hnsw = hnsw_options(options)?;
    }
    let filters = match definition.get("filters") {
        Ok(Some(_)) => strings(definition, "filters")?,
        _ => Vec::new(),
    };
    let train = crate::train::TrainSpec::parse(definition, &keys).map_err(bad)?;
    Ok(IndexSpec {
        path: keys[0].clone(),
        dims: 0,
        similarity,
        hnsw,
        filters,
        models: models
            .into_iter()
            .zip(keys)
            .map(|(model, key)| crate::models::ModelKey { model, key })
            .collect(),
        write_outputs,
        train,
        text: None,
        target_recall: target_recall(definition)?,
        quantization: quantization(definition)?,
    })
}

/// Most candidates rescored per result (`oversampling`).
const MAX_OVERSAMPLING: i64 = 100;

/// Atlas's `quantization` of a vector field (`none`, `scalar`, `binary`),
/// with likewise's `oversampling` (an integer from 1 to 100: candidates
/// rescored with the full vectors per result asked for).
fn quantization(field: &RawDocument) -> Result<Option<(Quantization, usize)>, Error> {
    let quantization = match field.get("quantization") {
        Ok(None) | Ok(Some(RawBsonRef::String("none"))) => None,
        Ok(Some(RawBsonRef::String("scalar"))) => Some(Quantization::Scalar),
        Ok(Some(RawBsonRef::String("binary"))) => Some(Quantization::Binary),
        _ => return Err(bad("'quantization' must be 'none', 'scalar' or 'binary'")),
    };
    let oversampling = match field.get("oversampling") {
        Ok(None) => 0,
        Ok(Some(v)) => match (integer(Some(v)), quantization) {
            (Some(n @ 1..=MAX_OVERSAMPLING), Some(_)) => n as usize,
            (_, None) => return Err(bad("'oversampling' needs a 'quantization'")),
            _ => {
                return Err(bad(format!(
                    "'oversampling' must be an integer from 1 to {MAX_OVERSAMPLING}"
                )))
            }
        },
        Err(_) => return Err(bad("'oversampling' is malformed")),
    };
    Ok(quantization.map(|q| (q, oversampling)))
}

/// The `targetRecall` a vector field (or semantic definition) asks for: a
/// number from 0.5 to 0.999.
fn target_recall(field: &RawDocument) -> Result<Option<f64>, Error> {
    match field.get("targetRecall") {
        Ok(None) => Ok(None),
        Ok(Some(v)) => crate::wire::number(Some(v))
            .filter(|r| (0.5..=0.999).contains(r))
            .map(Some)
            .ok_or_else(|| bad("'targetRecall' must be a number from 0.5 to 0.999")),
        Err(_) => Err(bad("'targetRecall' is malformed")),
    }
}

fn parse_vector_field(field: &RawDocument) -> Result<(usize, Similarity, HnswParams), Error> {
    let dims = integer(field.get("numDimensions").ok().flatten())
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=MAX_DIMENSIONS).contains(n))
        .ok_or_else(|| {
            bad(format!(
                "'numDimensions' must be an integer from 1 to {MAX_DIMENSIONS}"
            ))
        })?;
    let similarity = field
        .get_str("similarity")
        .ok()
        .and_then(Similarity::parse)
        .ok_or_else(|| bad("'similarity' must be 'cosine', 'euclidean' or 'dotProduct'"))?;
    let mut hnsw = HnswParams::default();
    if let Ok(options) = field.get_document("hnswOptions") {
        hnsw = hnsw_options(options)?;
    }
    Ok((dims, similarity, hnsw))
}

fn hnsw_options(options: &RawDocument) -> Result<HnswParams, Error> {
    let mut hnsw = HnswParams::default();
    {
        if let Some(m) = options.get("maxEdges").ok().flatten() {
            hnsw.max_edges = integer(Some(m))
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (16..=64).contains(n))
                .ok_or_else(|| bad("'hnswOptions.maxEdges' must be an integer from 16 to 64"))?;
        }
        if let Some(c) = options.get("numEdgeCandidates").ok().flatten() {
            hnsw.num_edge_candidates = integer(Some(c))
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (100..=3200).contains(n))
                .ok_or_else(|| {
                    bad("'hnswOptions.numEdgeCandidates' must be an integer from 100 to 3200")
                })?;
        }
    }
    Ok(hnsw)
}

/// Reads the `name` or `id` of `updateSearchIndex` / `dropSearchIndex`.
pub fn parse_target(body: &RawDocument) -> Result<Target, Error> {
    let name = body.get_str("name").ok().map(str::to_string);
    let id = body.get_str("id").ok().map(str::to_string);
    // mongod's own checks and wording (`search_index_commands.cpp`).
    match (&name, &id) {
        (None, None) => Err(Error::client(
            Code::INVALID_OPTIONS,
            "Must set either 'name' or 'id'.",
        )),
        (Some(_), Some(_)) => Err(Error::client(
            Code::INVALID_OPTIONS,
            "Cannot set both 'name' and 'id'.",
        )),
        _ => Ok(Target { name, id }),
    }
}

/// The `$listSearchIndexes` filter: `{name?}` or `{id?}`.
pub fn parse_list_filter(stage: &RawDocument) -> Target {
    Target {
        name: stage.get_str("name").ok().map(str::to_string),
        id: stage.get_str("id").ok().map(str::to_string),
    }
}

/// One `$listSearchIndexes` result in Atlas's shape (`id`, `name`,
/// `type`, `status`, `queryable`, `latestDefinitionVersion`,
/// `latestDefinition`, `message` when it failed or is stale, and
/// `statusDetail`: one entry for the one host serving the index, with its
/// `mainIndex` and, while `updateSearchIndex` builds a new definition,
/// `stagedIndex`), plus likewise's own `progress` (of the newest
/// definition; vectors summed over its vector fields) and `training`.
///
/// `parts` are the serving parts of the index (one per vector field, the
/// first first), `staged` those of a definition staged to replace it. An
/// index is as far along as its least ready part. While a definition is
/// staged the index reports `BUILDING` (`TRAINING` while the serving
/// generation trains: a fine-tuning run's re-encoding; `FAILED` when the
/// staged build failed) and stays queryable on the old definition, as
/// Atlas does
/// (`latestDefinition` is the staged one).
pub fn describe(parts: &[Arc<SearchIndex>], staged: &[Arc<SearchIndex>]) -> RawDocumentBuf {
    let index = &parts[0];
    let (main_status, main_detail) = least_ready(parts);
    let latest: &[Arc<SearchIndex>] = if staged.is_empty() { parts } else { staged };
    let (status, message) = if staged.is_empty() {
        (main_status, main_detail)
    } else {
        match least_ready(staged) {
            (Status::Failed, why) => (Status::Failed, why),
            // A fine-tuning run's new generation: the serving one says
            // TRAINING until the swap.
            _ if main_status == Status::Training => (Status::Training, main_detail),
            _ => (Status::Building, None),
        }
    };
    let queryable = parts.iter().all(|p| p.queryable());
    let first = &latest[0];
    let scanned = first.scanned.load(std::sync::atomic::Ordering::Relaxed);
    let total = first.total.load(std::sync::atomic::Ordering::Relaxed);
    let skipped = first.skipped.load(std::sync::atomic::Ordering::Relaxed);
    let (indexed, slots, bytes) = latest
        .iter()
        .map(|p| (p.vector_count(), p.slot_count(), p.vector_bytes()))
        .fold((0, 0, 0), |(a, b, c), (x, y, z)| (a + x, b + y, c + z));
    let mut host = rawdoc! {
        "hostname": "likewise",
        "status": status.name(),
        "queryable": queryable,
        "mainIndex": definition_detail(parts),
    };
    if !staged.is_empty() {
        host.append("stagedIndex", definition_detail(staged));
    }
    let mut out = rawdoc! {
        "id": index.id.as_str(),
        "name": index.name.as_str(),
        "type": if index.spec.text.is_some() { "search" } else { "vectorSearch" },
        "status": status.name(),
        "queryable": queryable,
        "latestDefinitionVersion": definition_version(first),
        "latestDefinition": first.definition.clone(),
        "statusDetail": [host],
        "progress": {
            "documentsScanned": i64::try_from(scanned).unwrap_or(i64::MAX),
            "documentsTotal": i64::try_from(total).unwrap_or(i64::MAX),
            "vectorsIndexed": i64::try_from(indexed).unwrap_or(i64::MAX),
            "documentsSkipped": i64::try_from(skipped).unwrap_or(i64::MAX),
            "changesApplied": i64::try_from(first.changes_applied.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX),
            "restoredFromSnapshot": latest.iter().all(|p| p.restored.load(std::sync::atomic::Ordering::Relaxed)),
            "slots": i64::try_from(slots).unwrap_or(i64::MAX),
            "vectorBytes": i64::try_from(bytes).unwrap_or(i64::MAX),
            "pendingEncodes": i64::try_from(latest.iter().map(|p| p.pending_count()).sum::<usize>()).unwrap_or(i64::MAX),
        },
    };
    if let Some(message) = message {
        out.append("message", message);
    }
    let mut recall = bson::RawArrayBuf::new();
    for part in latest.iter() {
        if let Some(target) = part.spec.target_recall {
            let mut entry = rawdoc! { "path": part.spec.path.as_str(), "target": target };
            if let Some((breadth, measured)) = part.tuned_recall() {
                entry.append("measured", measured);
                entry.append("numCandidates", i64::try_from(breadth).unwrap_or(i64::MAX));
            }
            recall.push(entry);
        }
    }
    if !recall.is_empty() {
        out.append("recall", recall);
    }
    if index.spec.train.is_some() {
        let (training, metrics) = describe_training(index);
        out.append("training", training);
        if let Some(metrics) = metrics {
            out.append("metrics", metrics);
        }
    }
    out
}

/// `{version, createdAt}` of an index's definition.
fn definition_version(index: &SearchIndex) -> RawDocumentBuf {
    rawdoc! {
        "version": index.definition_version.0,
        "createdAt": index.definition_version.1,
    }
}

/// The status of the least ready of an index's parts (failed first, then
/// deleting, pending, building, stale, training, ready), with its detail.
fn least_ready(parts: &[Arc<SearchIndex>]) -> (Status, Option<String>) {
    let rank = |s: Status| match s {
        Status::Failed => 0,
        Status::Deleting => 1,
        Status::Pending => 2,
        Status::Building => 3,
        Status::Stale => 4,
        Status::Training => 5,
        Status::Ready => 6,
    };
    parts
        .iter()
        .map(|p| p.status())
        .min_by_key(|(s, _)| rank(*s))
        .unwrap_or((Status::Pending, None))
}

/// A `mainIndex` / `stagedIndex` entry of `statusDetail`: `status`,
/// `queryable`, `definitionVersion`, `definition`, and `message` when
/// there is something to say (why it failed, or is stale).
fn definition_detail(parts: &[Arc<SearchIndex>]) -> RawDocumentBuf {
    let index = &parts[0];
    let (status, detail) = least_ready(parts);
    let mut out = rawdoc! {
        "status": status.name(),
        "queryable": parts.iter().all(|p| p.queryable()),
        "definitionVersion": definition_version(index),
        "definition": index.definition.clone(),
    };
    if let Some(message) = detail {
        out.append("message", message);
    }
    out
}

use crate::train::metrics_doc as metric_doc;

/// `training: {epochsDone, epochs, loss, history, pairs, trained, error?,
/// fineTune?}` and, once trained, `metrics: {before, adapter?, after}` on
/// the validation split. `fineTune: {phase, epoch, step, steps, loss,
/// pairsPerSecond, etaSeconds, modelVersion?}` while and after the text
/// model is fine-tuned (the progress fields once its first step is
/// taken). A history entry has `metrics` when its epoch was measured.
fn describe_training(index: &SearchIndex) -> (RawDocumentBuf, Option<RawDocumentBuf>) {
    let t = index.training().clone();
    let mut history = RawArrayBuf::new();
    for e in &t.epochs {
        let mut epoch = rawdoc! { "epoch": e.epoch as i32, "loss": f64::from(e.loss) };
        // Fine-tuning measures only the end of its run.
        if !e.metrics.is_empty() {
            epoch.append("metrics", metric_doc(&e.metrics));
        }
        history.push(epoch);
    }
    let fine_tuned = t
        .fine_tune
        .as_ref()
        .is_some_and(|f| f.phase == "done" && f.version.is_some());
    let mut training = rawdoc! {
        "epochsDone": t.epochs.len() as i32,
        // Planned by the run under way, else by the definition.
        "epochs": if t.planned_epochs > 0 {
            t.planned_epochs
        } else {
            index.spec.train.as_ref().map_or(0, |s| s.epochs)
        } as i32,
        "trained": index.adapter().is_some() || fine_tuned,
        "pairs": { "train": t.train_pairs as i64, "validation": t.valid_pairs as i64 },
        "history": history,
    };
    if let Some(last) = t.epochs.last() {
        training.append("loss", f64::from(last.loss));
    }
    if let Some(at) = t.trained_at {
        training.append("trainedAt", at);
    }
    if let Some(error) = &t.error {
        training.append("error", error.as_str());
    }
    if let Some(f) = &t.fine_tune {
        let mut doc = rawdoc! { "phase": f.phase };
        // Progress once the weights train (not while measuring, waiting).
        if f.steps > 0 {
            doc.append("epoch", f.epoch as i64);
            doc.append("step", f.step as i64);
            doc.append("steps", f.steps as i64);
            doc.append("loss", f64::from(f.loss));
            doc.append("pairsPerSecond", f.pairs_per_s);
            doc.append("etaSeconds", f.eta_s);
        }
        if let Some(v) = &f.version {
            doc.append("modelVersion", v.as_str());
        }
        training.append("fineTune", doc);
    }
    let metrics = t.before.as_ref().map(|b| {
        let mut m = rawdoc! { "before": metric_doc(b) };
        if let Some(a) = t.fine_tune.as_ref().and_then(|f| f.adapter.as_ref()) {
            m.append("adapter", metric_doc(a));
        }
        if let Some(a) = &t.after {
            m.append("after", metric_doc(a));
        }
        m
    });
    (training, metrics)
}

/// A finished cursor reply, the shape drivers expect from a listing.
pub fn cursor_reply(namespace: &str, docs: Vec<RawDocumentBuf>) -> RawDocumentBuf {
    let mut batch = RawArrayBuf::new();
    for d in docs {
        batch.push(d);
    }
    rawdoc! {
        "cursor": { "id": 0_i64, "ns": namespace, "firstBatch": batch },
        "ok": 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_mongosh_sends() {
        let body = rawdoc! {
            "createSearchIndexes": "movies",
            "indexes": [{
                "name": "vec",
                "type": "vectorSearch",
                "definition": { "fields": [
                    { "type": "vector", "path": "plot_embedding", "numDimensions": 1536, "similarity": "dotProduct",
                      "hnswOptions": { "maxEdges": 32, "numEdgeCandidates": 200 } },
                    { "type": "filter", "path": "year" },
                ]},
            }],
            "$db": "db",
        };
        let parsed = parse_create(&body).unwrap();
        assert_eq!(parsed.len(), 1);
        let spec = &parsed[0].specs[0];
        assert_eq!(spec.path, "plot_embedding");
        assert_eq!(spec.dims, 1536);
        assert_eq!(spec.similarity, Similarity::DotProduct);
        assert_eq!(spec.hnsw.max_edges, 32);
        assert_eq!(spec.hnsw.num_edge_candidates, 200);
        assert_eq!(spec.filters, ["year"]);
    }

    #[test]
    fn every_vector_field_is_a_part_sharing_the_filters() {
        let specs = parse_definition(&rawdoc! { "fields": [
            { "type": "filter", "path": "year" },
            { "type": "vector", "path": "a", "numDimensions": 3, "similarity": "cosine" },
            { "type": "autoEmbed", "path": "text" },
            { "type": "vector", "path": "b", "numDimensions": 5, "similarity": "euclidean" },
        ] })
        .unwrap();
        let paths: Vec<_> = specs.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, ["a", "text", "b"]);
        assert!(specs.iter().all(|s| s.filters == ["year"]));
        assert_eq!((specs[0].dims, specs[2].dims), (3, 5));
        assert_eq!(specs[1].models[0].model, crate::models::DEFAULT_MODEL);
        let twice = parse_definition(&rawdoc! { "fields": [
            { "type": "vector", "path": "a", "numDimensions": 3, "similarity": "cosine" },
            { "type": "vector", "path": "a", "numDimensions": 3, "similarity": "cosine" },
        ] });
        assert!(twice.unwrap_err().message.contains("indexed twice"));
        let mut fields = bson::RawArrayBuf::new();
        for n in 0..=MAX_VECTOR_FIELDS {
            fields.push(rawdoc! { "type": "vector", "path": format!("p{n}"), "numDimensions": 2, "similarity": "cosine" });
        }
        let many = parse_definition(&rawdoc! { "fields": fields });
        assert!(many.unwrap_err().message.contains("at most 8"));
    }

    #[test]
    fn bad_definitions_are_explained() {
        for (definition, needle) in [
            (rawdoc! { "fields": [] }, "one field of type 'vector'"),
            (
                rawdoc! { "fields": [{ "type": "vector", "path": "v", "numDimensions": 0, "similarity": "cosine" }] },
                "numDimensions",
            ),
            (
                rawdoc! { "fields": [{ "type": "vector", "path": "v", "numDimensions": 3.5, "similarity": "cosine" }] },
                "numDimensions",
            ),
            (
                rawdoc! { "fields": [{ "type": "vector", "path": "v", "numDimensions": 3, "similarity": "manhattan" }] },
                "similarity",
            ),
            (
                rawdoc! { "fields": [{ "type": "vector", "path": "v", "numDimensions": 3, "similarity": "cosine", "hnswOptions": { "maxEdges": 2 } }] },
                "maxEdges",
            ),
        ] {
            let err = parse_definition(&definition).unwrap_err();
            assert!(err.message.contains(needle), "{}", err.message);
            assert_eq!(err.code, Code::BAD_VALUE);
        }
        // Atlas's default type is `search`: `mappings` make a full-text
        // index; vector `fields` under it are refused, and the reverse.
        let search_type = rawdoc! { "indexes": [{ "name": "x", "definition": { "mappings": { "dynamic": true } } }] };
        let parsed = parse_create(&search_type).unwrap();
        assert!(parsed[0].specs[0].text.is_some());
        let vector_without_type =
            rawdoc! { "indexes": [{ "name": "x", "definition": { "fields": [] } }] };
        let err = parse_create(&vector_without_type).unwrap_err();
        assert_eq!(err.code, Code::INVALID_OPTIONS);
        assert!(
            err.message.contains("type: 'vectorSearch'"),
            "{}",
            err.message
        );
        let mappings_as_vector = rawdoc! { "indexes": [{ "name": "x", "type": "vectorSearch",
        "definition": { "mappings": { "dynamic": true } } }] };
        assert_eq!(
            parse_create(&mappings_as_vector).unwrap_err().code,
            Code::INVALID_OPTIONS
        );
    }
}
