//! (query, item) pairs from a collection, for training and evaluation:
//! which documents are held out ([`Split`], the definition's
//! `validation`), each document split into its query and item contents
//! by the definition's `splitter` ([`PairReader`]), and the contents
//! encoded ([`encode_all`]).

use crate::error::{Code, Error};
use crate::index::ids::IdSet;
use crate::index::vector::lookup;
use crate::models::Model;
use crate::registry::SearchIndex;
use crate::train::{self, Splitter};
use crate::upstream;
use bson::{rawdoc, RawBson, RawBsonRef, RawDocument};

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
    /// Whether the document `id` is held out.
    pub fn is_valid(&self, id: RawBsonRef<'_>) -> bool {
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

/// The documents `validation` holds out of `index`'s collection (a
/// filter's matches read on `conn`).
pub async fn split_of(
    conn: &upstream::Own,
    index: &SearchIndex,
    validation: &train::Validation,
) -> Result<Split, Error> {
    Ok(match validation {
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
    })
}

/// Metrics as `name=value` pairs for the logs.
pub fn show(metrics: &[(String, f64)]) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One batch of (query, item) pairs as the documents hold them: `_id`s,
/// query contents and item contents, in step.
pub struct RawPairs {
    pub ids: Vec<RawBson>,
    pub queries: Vec<RawBson>,
    pub items: Vec<RawBson>,
}

/// Reads the documents matching `filter` and splits each into its (query,
/// item) contents, a batch of at most 1000 documents at a time.
pub struct PairReader<'c> {
    cursor: upstream::AnyCursor<'c>,
    splitter: Splitter,
    query_key: String,
    item_key: String,
    seed: u64,
}

impl<'c> PairReader<'c> {
    /// Opens the read of `index`'s collection on `reader`.
    pub async fn open(
        reader: upstream::Reader<'c>,
        index: &SearchIndex,
        splitter: &Splitter,
        filter: &RawDocument,
        seed: u64,
    ) -> Result<PairReader<'c>, Error> {
        let spec = &index.spec;
        let query_slot = match splitter {
            Splitter::Fields { query } => *query,
            Splitter::ArrayElement => 0,
        };
        let item_key = spec.models[0].key.clone();
        let query_key = spec.models[query_slot].key.clone();
        let mut projection = rawdoc! { "_id": 1 };
        for key in [&query_key, &item_key] {
            if projection.get(key).ok().flatten().is_none() {
                projection.append(key.as_str(), 1);
            }
        }
        let body = rawdoc! {
            "find": index.collection.as_str(),
            "filter": filter.to_owned(),
            "projection": projection,
            "batchSize": 1000,
            "$db": index.db.as_str(),
        };
        Ok(PairReader {
            cursor: reader.cursor(&body).await?,
            splitter: splitter.clone(),
            query_key,
            item_key,
            seed,
        })
    }

    /// The next batch's pairs (documents without a pair skipped), `None`
    /// at the end.
    pub async fn next(&mut self) -> Result<Option<RawPairs>, Error> {
        let Some(batch) = self.cursor.next_batch().await? else {
            return Ok(None);
        };
        let mut out = RawPairs {
            ids: Vec::new(),
            queries: Vec::new(),
            items: Vec::new(),
        };
        for doc in &batch {
            let Some(id) = doc.get("_id").ok().flatten() else {
                continue;
            };
            let Some((query, item)) = split_document(
                doc,
                &self.splitter,
                &self.query_key,
                &self.item_key,
                id,
                self.seed,
            ) else {
                continue;
            };
            out.ids.push(id.to_raw_bson());
            out.queries.push(query);
            out.items.push(item);
        }
        Ok(Some(out))
    }
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

/// Each value's vector from `model`, `None` for one it cannot encode.
/// Errors: the model failed as a whole.
pub fn encode_all(model: &Model, values: &[RawBson]) -> Result<Vec<Option<Vec<f32>>>, Error> {
    let refs: Vec<RawBsonRef<'_>> = values.iter().map(RawBson::as_raw_bson_ref).collect();
    let out = model.encode(&refs).map_err(|f| {
        Error::client(
            Code::OPERATION_FAILED,
            format!("model '{}' failed: {f}", model.name()),
        )
    })?;
    Ok(out.into_iter().map(|r| r.ok().map(|e| e.vector)).collect())
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
