//! Applying documents' new state to an index: the one synchronous step a
//! build's scan, a reconciliation pass, a write through the proxy
//! (`fresh`) and a change stream's events all end in. A document's vector
//! is read (or encoded by the index's model) and set under its `_id`; a
//! document without one is removed.

use crate::index::vector::{is_packed_bits, lookup, read_stored, OwnedVector};
use crate::index::Similarity;
use crate::registry::{Change, SearchIndex};
use std::sync::atomic::Ordering;

/// What one document contributes to an index.
enum Outcome {
    /// Leave the index as it is (content unchanged, or queued for a retry).
    Keep,
    /// Index this vector; `content` hashes what a model encoded, `output`
    /// is the model's output to write back.
    Set {
        vector: OwnedVector,
        content: Option<u64>,
        output: Option<Vec<f32>>,
    },
    /// No usable vector: the document leaves the index.
    Unusable,
}

/// Adds (or replaces) the vectors of `docs` (for a full-text index, the
/// documents themselves): CPU work (and, for an `http`
/// model, network calls), for a blocking thread. A document without a
/// usable vector leaves the index. `scanning` counts the documents into the
/// build's progress. Models encode before the index is locked, so queries
/// never wait for a model.
pub fn add_documents<D: AsRef<bson::RawDocument>>(index: &SearchIndex, docs: &[D], scanning: bool) {
    let spec = &index.spec;
    let docs: Vec<(bson::RawBsonRef<'_>, &bson::RawDocument)> = docs
        .iter()
        .filter_map(|d| {
            let d = d.as_ref();
            d.get("_id").ok().flatten().map(|id| (id, d))
        })
        .collect();
    if scanning {
        index
            .scanned
            .fetch_add(docs.len() as u64, Ordering::Relaxed);
    }
    if index.spec.text.is_some() {
        // A full-text index takes whole documents (its engine analyzes them).
        let changes: Vec<Change<'_>> = docs
            .iter()
            .map(|(id, doc)| Change::Document(*id, doc))
            .collect();
        index.apply_changes(&changes);
        return;
    }
    let outcomes = if index.encoders.is_empty() {
        docs.iter()
            .map(|(_, doc)| {
                let value = lookup(doc, &spec.path);
                // Atlas indexes packed-bit vectors for euclidean only.
                let comparable = spec.similarity == Similarity::Euclidean || !is_packed_bits(value);
                comparable
                    .then(|| read_stored(value, spec.dims, spec.similarity))
                    .flatten()
                    .map_or(Outcome::Unusable, |vector| Outcome::Set {
                        vector,
                        content: None,
                        output: None,
                    })
            })
            .collect()
    } else {
        encode_documents(index, &docs)
    };
    let mut outputs = Vec::new();
    let mut changes = Vec::with_capacity(docs.len());
    for ((id, _), outcome) in docs.iter().zip(outcomes) {
        match outcome {
            Outcome::Keep => {}
            Outcome::Unusable => {
                if scanning {
                    index.skipped.fetch_add(1, Ordering::Relaxed);
                }
                changes.push(Change::Remove(*id));
            }
            Outcome::Set {
                vector,
                content,
                output,
            } => {
                if let Some(output) = output {
                    outputs.push((id.to_raw_bson(), output));
                }
                changes.push(Change::Set {
                    id: *id,
                    vector,
                    content,
                });
            }
        }
    }
    index.apply_changes(&changes);
    if spec.write_outputs {
        index.push_outputs(outputs);
    }
}

/// Runs the index's first model over its first key for `docs`, skipping
/// documents whose content is unchanged since they were encoded. When the
/// model fails, the documents are queued for a retry and left as they are.
fn encode_documents(
    index: &SearchIndex,
    docs: &[(bson::RawBsonRef<'_>, &bson::RawDocument)],
) -> Vec<Outcome> {
    let spec = &index.spec;
    let model = &index.encoders[0];
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(docs.len());
    let mut todo = Vec::new();
    let stored = index.contents(docs.iter().map(|(id, _)| *id));
    for (i, ((_, doc), stored)) in docs.iter().zip(stored).enumerate() {
        let Some(value) = lookup(doc, &spec.path) else {
            outcomes.push(Outcome::Unusable);
            continue;
        };
        let hash = content_hash(value);
        outcomes.push(Outcome::Keep);
        if stored != Some(hash) {
            todo.push((i, value, hash));
        }
    }
    if todo.is_empty() {
        return outcomes;
    }
    let values: Vec<bson::RawBsonRef<'_>> = todo.iter().map(|(_, v, _)| *v).collect();
    // An adapter trained on both sides maps stored vectors too.
    let adapter = index.adapter().filter(|a| a.both);
    match model.encode(&values) {
        Ok(results) => {
            for ((i, _, hash), result) in todo.into_iter().zip(results) {
                outcomes[i] = match result {
                    Ok(encoded) => match spec.similarity.prepare(match &adapter {
                        Some(a) => a.apply(&encoded.vector),
                        None => encoded.vector.clone(),
                    }) {
                        Some(vector) => Outcome::Set {
                            vector: OwnedVector::F32(vector),
                            content: Some(hash),
                            output: spec.write_outputs.then_some(encoded.vector),
                        },
                        None => Outcome::Unusable,
                    },
                    Err(why) => {
                        tracing::debug!(index = %index.name, "document not encoded: {why}");
                        Outcome::Unusable
                    }
                };
            }
        }
        Err(failure) => {
            tracing::warn!(index = %index.name, model = %model.name(), error = %failure, documents = todo.len(), "model failed: documents queued for a retry");
            index.add_pending(todo.iter().map(|(i, _, _)| docs[*i].0));
        }
    }
    outcomes
}

/// A hash of what a model reads from a document.
fn content_hash(value: bson::RawBsonRef<'_>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match value {
        bson::RawBsonRef::String(s) => (1u8, s.as_bytes()).hash(&mut h),
        bson::RawBsonRef::Array(a) => (2u8, a.as_bytes()).hash(&mut h),
        bson::RawBsonRef::Document(d) => (3u8, d.as_bytes()).hash(&mut h),
        bson::RawBsonRef::Binary(b) => (4u8, b.bytes).hash(&mut h),
        other => (5u8, format!("{other:?}")).hash(&mut h),
    }
    h.finish()
}
