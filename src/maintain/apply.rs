//! Applying documents' new state to an index: the one synchronous step a
//! build's scan, a reconciliation pass, a write through the proxy
//! (`fresh`) and a change stream's events all end in. A document's vector
//! is read (or encoded by the index's model) and set under its `_id`; a
//! document without one is removed.

use crate::index::vector::{is_packed_bits, lookup, read_stored, OwnedVector};
use crate::index::Similarity;
use crate::registry::{Change, SearchIndex};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What one document contributes to an index.
enum Outcome {
    /// Leave the index as it is: its content for the document was this
    /// hash, the document's own (`Some`), or the model failed and the
    /// document is queued for a retry (`None`).
    Keep(Option<u64>),
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
/// never wait for a model. [`prepare`] then [`Prepared::commit`] of every
/// document.
pub fn add_documents<D: AsRef<bson::RawDocument>>(index: &SearchIndex, docs: &[D], scanning: bool) {
    prepare(index, docs, scanning).commit(index, |_| true);
}

/// `docs` read for `index`: each one's vector read, or encoded by the
/// index's model (the slow part: a change stream's batch runs it before
/// taking the index's `apply_lock`, so writes through the proxy never
/// wait for a batch to encode). Nothing is applied until
/// [`Prepared::commit`]. `scanning`: as [`add_documents`].
pub fn prepare<'a, D: AsRef<bson::RawDocument>>(
    index: &SearchIndex,
    docs: &'a [D],
    scanning: bool,
) -> Prepared<'a> {
    let spec = &index.spec;
    let docs: Vec<(bson::RawBsonRef<'a>, &'a bson::RawDocument)> = docs
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
    // The adapter the model's output goes through, as encoded here.
    let adapter = index.adapter();
    let outcomes = if index.spec.text.is_some() {
        // A full-text index takes whole documents (its engine analyzes
        // them when they are applied).
        Vec::new()
    } else if index.encoders.is_empty() {
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
    Prepared {
        docs,
        outcomes,
        scanning,
        adapter,
    }
}

/// Documents read for an index by [`prepare`], not yet applied.
pub struct Prepared<'a> {
    /// Each document with its `_id`.
    docs: Vec<(bson::RawBsonRef<'a>, &'a bson::RawDocument)>,
    /// What each contributes, in the same order (empty for a full-text
    /// index, which takes the documents themselves).
    outcomes: Vec<Outcome>,
    scanning: bool,
    /// The index's adapter when the documents were encoded.
    adapter: Option<Arc<crate::train::Adapter>>,
}

impl Prepared<'_> {
    /// Applies the documents whose `_id` `wanted` accepts, as
    /// [`add_documents`] would have. A document left as it was because
    /// its content was unchanged (`Outcome::Keep`) is encoded again here
    /// if the index's content for it changed since [`prepare`] (another
    /// write applied meanwhile), so the index ends with this document's
    /// vector, not that write's; every document is encoded again if the
    /// index's adapter changed since (training installed one). Call it
    /// under the index's `apply_lock` when writes race.
    pub fn commit(self, index: &SearchIndex, wanted: impl Fn(bson::RawBsonRef<'_>) -> bool) {
        if index.spec.text.is_some() {
            let changes: Vec<Change<'_>> = self
                .docs
                .iter()
                .filter(|(id, _)| wanted(*id))
                .map(|(id, doc)| Change::Document(*id, doc))
                .collect();
            index.apply_changes(&changes);
            return;
        }
        let mut docs = Vec::with_capacity(self.docs.len());
        let mut outcomes = Vec::with_capacity(self.docs.len());
        for (doc, outcome) in self.docs.into_iter().zip(self.outcomes) {
            if wanted(doc.0) {
                docs.push(doc);
                outcomes.push(outcome);
            }
        }
        let adapter = index.adapter();
        let same_adapter = match (&self.adapter, &adapter) {
            (Some(was), Some(now)) => Arc::ptr_eq(was, now),
            (None, None) => true,
            _ => false,
        };
        if !index.encoders.is_empty() && !same_adapter {
            outcomes = encode_documents(index, &docs);
        }
        revisit_kept(index, &docs, &mut outcomes);
        let spec = &index.spec;
        let mut outputs = Vec::new();
        let mut changes = Vec::with_capacity(docs.len());
        for ((id, _), outcome) in docs.iter().zip(outcomes) {
            match outcome {
                Outcome::Keep(_) => {}
                Outcome::Unusable => {
                    if self.scanning {
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
}

/// Encodes again each document of `docs` whose outcome kept the index's
/// vector because the index held the same content (`Outcome::Keep(Some)`)
/// when the index's content for it is no longer that (a write applied
/// between [`prepare`] and [`Prepared::commit`]).
fn revisit_kept(
    index: &SearchIndex,
    docs: &[(bson::RawBsonRef<'_>, &bson::RawDocument)],
    outcomes: &mut [Outcome],
) {
    let kept: Vec<usize> = (0..docs.len())
        .filter(|&i| matches!(outcomes[i], Outcome::Keep(Some(_))))
        .collect();
    if kept.is_empty() {
        return;
    }
    let now = index.contents(kept.iter().map(|&i| docs[i].0));
    let stale: Vec<usize> = kept
        .into_iter()
        .zip(now)
        .filter(|&(i, now)| !matches!(outcomes[i], Outcome::Keep(Some(was)) if now == Some(was)))
        .map(|(i, _)| i)
        .collect();
    if stale.is_empty() {
        return;
    }
    let again: Vec<_> = stale.iter().map(|&i| docs[i]).collect();
    for (i, outcome) in stale.into_iter().zip(encode_documents(index, &again)) {
        outcomes[i] = outcome;
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
        outcomes.push(Outcome::Keep(Some(hash)));
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
            for (i, _, _) in todo {
                outcomes[i] = Outcome::Keep(None);
            }
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
