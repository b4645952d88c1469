//! The vectors of one index, keyed by document `_id`: the catalog's layer
//! above an engine (`crate::index::VectorIndex`). Engines know only dense
//! `u32` keys; this type owns the `_id` ↔ key map ([`IdMap`]), so no
//! caller ever sees a key, and a re-keyed document (every changed vector
//! gets a fresh key) can never be looked up by its old one.
//!
//! Synchronous and I/O-free; reached only through
//! [`SearchIndex::read_vectors`](super::SearchIndex::read_vectors) and
//! [`SearchIndex::write_vectors`](super::SearchIndex::write_vectors), which
//! hold the index's lock for the closure.

use super::IndexSpec;
use crate::index::ids::{IdMap, IdSet};
use crate::index::{persist, Engine, Hit, KeySet, VectorRef};
use bson::{RawBson, RawBsonRef, RawDocumentBuf};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io;

/// Dead slots (retired keys) tolerated before compaction, beyond the
/// number of live vectors.
const COMPACT_SLACK: usize = 1024;

/// Up to this many live vectors, [`Vectors::nearest_to`] scans exactly.
pub const NEAREST_EXACT_MAX: usize = 20_000;

/// Every live vector of an index and the `_id` it belongs to.
pub struct Vectors {
    ids: IdMap,
    /// Its rows at the narrowest dtype that holds every vector (int8 and
    /// packed-bit vectors at their own size).
    engine: Engine,
    /// For model-encoded indexes: a hash of the content each key's vector
    /// was encoded from, so re-applying an unchanged document (write-through
    /// and the change stream both report a write; written-back outputs come
    /// back as changes) never encodes it again.
    content: HashMap<u32, u64>,
}

/// What [`Vectors::search`] found: `_id`s nearest first with their
/// distances (the engine's, smaller is nearer; see `Similarity::distance`),
/// the strategy's name (for explain) and how many vectors it compared.
#[derive(Debug, Default)]
pub struct Searched {
    pub hits: Vec<(RawBson, f32)>,
    pub strategy: &'static str,
    pub examined: usize,
}

impl Vectors {
    /// No vectors, in the engine `spec` asks for (HNSW with its parameters,
    /// quantized when it says so).
    pub fn empty(spec: &IndexSpec) -> Vectors {
        let engine = match spec.quantization {
            None => Engine::hnsw(spec.dims, spec.similarity, spec.hnsw),
            Some((quantization, oversampling)) => Engine::quantized(
                spec.dims,
                spec.similarity,
                spec.hnsw,
                quantization,
                oversampling,
            ),
        };
        Vectors {
            ids: IdMap::default(),
            engine,
            content: HashMap::new(),
        }
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.engine.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots the engine holds, live and retired (what memory is
    /// proportional to until the next compaction).
    pub fn slots(&self) -> usize {
        self.ids.entries_count().0
    }

    /// Bytes one stored vector takes (its dtype's row).
    pub fn row_bytes(&self) -> usize {
        self.engine.row_bytes()
    }

    /// The stored vector of `id` as prepared `f32`s, if it has one.
    pub fn vector(&self, id: RawBsonRef<'_>) -> Option<Cow<'_, [f32]>> {
        self.ids.key_of(id).and_then(|key| self.engine.vector(key))
    }

    /// The content hash `id`'s vector was encoded from (model indexes).
    pub fn content(&self, id: RawBsonRef<'_>) -> Option<u64> {
        self.ids
            .key_of(id)
            .and_then(|key| self.content.get(&key).copied())
    }

    /// The `_id`s of every live vector.
    pub fn ids(&self) -> IdSet {
        let mut out = IdSet::default();
        for (_, id) in self.ids.entries().1 {
            out.add(id.as_raw_bson_ref());
        }
        out
    }

    /// Stores `vector` (`f32` prepared, `spec.dims` long) as `id`'s, with
    /// the hash of the content it was encoded from. Re-storing an unchanged
    /// vector keeps its key (no churn, no tombstone) and only records the
    /// hash. Returns whether the vector changed.
    pub fn upsert(
        &mut self,
        id: RawBsonRef<'_>,
        vector: VectorRef<'_>,
        content: Option<u64>,
    ) -> bool {
        self.upsert_many(&[(id, vector, content)], 1)[0]
    }

    /// [`Vectors::upsert`] of each item, in order, the new vectors inserted
    /// together with up to `threads` threads (`Engine::insert_many`):
    /// whether each changed the index. An `_id` whose old vector must go
    /// first sends the vectors gathered so far in before it, so a batch
    /// naming one `_id` twice ends as the one-at-a-time calls would.
    pub fn upsert_many(
        &mut self,
        items: &[(RawBsonRef<'_>, VectorRef<'_>, Option<u64>)],
        threads: usize,
    ) -> Vec<bool> {
        let mut changed = Vec::with_capacity(items.len());
        let mut pending: Vec<(u32, VectorRef<'_>)> = Vec::new();
        for &(id, vector, content) in items {
            let current = self.ids.key_of(id);
            if current.is_some_and(|key| self.engine.holds(key, vector)) {
                if let (Some(key), Some(hash)) = (current, content) {
                    self.content.insert(key, hash);
                }
                changed.push(false);
                continue;
            }
            let (key, old) = self.ids.assign(id);
            if let Some(old) = old {
                self.engine
                    .insert_many(&std::mem::take(&mut pending), threads);
                self.engine.remove(old);
                self.content.remove(&old);
            }
            pending.push((key, vector));
            if let Some(hash) = content {
                self.content.insert(key, hash);
            }
            changed.push(true);
        }
        self.engine.insert_many(&pending, threads);
        changed
    }

    /// Removes `id`'s vector. Returns whether it had one.
    pub fn remove(&mut self, id: RawBsonRef<'_>) -> bool {
        let Some(old) = self.ids.retire(id) else {
            return false;
        };
        self.engine.remove(old);
        self.content.remove(&old);
        true
    }

    /// The `k` nearest `_id`s to a prepared `query`, among `allowed` when
    /// given. `exact` scans; otherwise the graph is searched with breadth
    /// `num_candidates`, and a filter is served by the cheaper of a scan of
    /// its matches and a filtered graph search (`index::search_allowed`),
    /// so a filter always gets `min(k, matches)` results.
    pub fn search(
        &self,
        query: VectorRef<'_>,
        k: usize,
        num_candidates: usize,
        allowed: Option<&IdSet>,
        exact: bool,
    ) -> Searched {
        let allowed = allowed.map(|ids| {
            KeySet::from_keys(
                ids.ids
                    .iter()
                    .filter_map(|id| self.ids.key_of(id.as_raw_bson_ref())),
            )
        });
        let engine = &self.engine;
        let scan = |keys: &[u32]| (engine.exact_among(query, k, keys), keys.len());
        let ((hits, examined), strategy) = match (allowed.as_ref(), exact) {
            (Some(a), true) => (scan(a.keys()), "exact scan of filter matches"),
            (None, true) => (
                scan(&self.ids.live_keys().collect::<Vec<_>>()),
                "exact scan",
            ),
            (Some(a), false) => {
                let (hits, strategy, examined) = engine.search_allowed(query, k, num_candidates, a);
                ((hits, examined), strategy)
            }
            (None, false) => (
                engine.search_counted(query, k, num_candidates),
                "graph search",
            ),
        };
        Searched {
            hits: self.to_ids(&hits),
            strategy,
            examined,
        }
    }

    /// The `n` nearest neighbours of `id` (itself excluded), nearest first,
    /// and the distance of the last, or infinity when there are fewer than
    /// `n` others. Exact up to [`NEAREST_EXACT_MAX`] live vectors, a wide
    /// graph search (breadth `max(10 n, 200)`) above. `None` when `id` has
    /// no vector.
    pub fn nearest_to(&self, id: RawBsonRef<'_>, n: usize) -> Option<(Vec<RawBson>, f32)> {
        let key = self.ids.key_of(id)?;
        let vector = self.engine.vector(key)?;
        let query = VectorRef::F32(&vector);
        let hits: Vec<Hit> = if self.engine.len() <= NEAREST_EXACT_MAX {
            let live: Vec<u32> = self.ids.live_keys().collect();
            self.engine.exact_among(query, n + 1, &live)
        } else {
            self.engine
                .search_counted(query, n + 1, (10 * n).max(200))
                .0
        };
        let near: Vec<&Hit> = hits.iter().filter(|h| h.key != key).take(n).collect();
        let radius = if near.len() < n {
            f32::INFINITY
        } else {
            near.last().map_or(f32::INFINITY, |h| h.distance)
        };
        let ids = near
            .iter()
            .filter_map(|h| self.ids.id_of(h.key).cloned())
            .collect();
        Some((ids, radius))
    }

    /// A new set of the same `_id`s with every vector (as prepared
    /// `f32`s) mapped through `f` (which must keep them prepared and
    /// `spec.dims` long), content hashes kept. The result stores `f32`
    /// (quantized anew when `spec` quantizes).
    pub fn mapped(&self, spec: &IndexSpec, f: impl Fn(&[f32]) -> Vec<f32>) -> Vectors {
        let mut fresh = Vectors::empty(spec);
        for (key, id) in self.ids.entries().1 {
            if let Some(vector) = self.engine.vector(key) {
                let (new_key, _) = fresh.ids.assign(id.as_raw_bson_ref());
                fresh.engine.insert(new_key, VectorRef::F32(&f(&vector)));
                if let Some(hash) = self.content.get(&key) {
                    fresh.content.insert(new_key, *hash);
                }
            }
        }
        fresh
    }

    /// Rebuilds with dense keys once dead slots (from deletes and updates)
    /// outnumber live ones, so memory stays proportional to the live data
    /// under delete-heavy load. Rows keep their dtype (a quantized index
    /// learns its codes again). Returns whether it compacted.
    pub fn compact_if_needed(&mut self, spec: &IndexSpec) -> bool {
        let live = self.engine.len();
        if self.slots() - live <= live.max(COMPACT_SLACK) {
            return false;
        }
        let mut fresh = Vectors::empty(spec);
        for (key, id) in self.ids.entries().1 {
            let (new_key, _) = fresh.ids.assign(id.as_raw_bson_ref());
            self.engine.copy_row(key, &mut fresh.engine, new_key);
            if let Some(hash) = self.content.get(&key) {
                fresh.content.insert(new_key, *hash);
            }
        }
        *self = fresh;
        true
    }

    fn to_ids(&self, hits: &[Hit]) -> Vec<(RawBson, f32)> {
        hits.iter()
            .filter_map(|hit| Some((self.ids.id_of(hit.key)?.clone(), hit.distance)))
            .collect()
    }

    /// Appends the snapshot section of these vectors to `out`: keys issued
    /// (u64 LE), live entries (u64 LE), each entry's key (u32 LE) and
    /// `_id` (as a one-field BSON document with an empty name), then the
    /// engine's own snapshot (`VectorIndex::save`) prefixed by its length
    /// (u64 LE). Content hashes are not kept (a restored index re-encodes
    /// a document on its next change).
    pub fn save(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let (issued, entries) = self.ids.entries();
        out.extend_from_slice(&(issued as u64).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (key, id) in entries {
            out.extend_from_slice(&key.to_le_bytes());
            let mut holder = RawDocumentBuf::new();
            holder.append("", id.clone());
            out.extend_from_slice(holder.as_bytes());
        }
        // The engine's snapshot straight into `out` (no second copy of
        // it), its length patched in front afterwards.
        let at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        self.engine.save(out)?;
        let len = (out.len() - at - 8) as u64;
        out[at..at + 8].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// Reads what [`Vectors::save`] wrote, which must run to the end of
    /// `r`. Errors (`InvalidData`, "snapshot corrupt: ...") when it is
    /// malformed or does not match `spec` (dimensions, similarity).
    pub fn load(spec: &IndexSpec, r: &mut Reader<'_>) -> io::Result<Vectors> {
        let issued = r.size()?;
        let count = r.size()?;
        if count > r.remaining() {
            return Err(corrupt("entry count"));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let key = r.u32()?;
            let holder = r.doc()?;
            let id: RawBson = holder
                .iter()
                .next()
                .and_then(Result::ok)
                .map(|(_, v)| v.to_raw_bson())
                .ok_or_else(|| corrupt("id"))?;
            entries.push((key, id));
        }
        let engine_len = r.size()?;
        let engine = persist::load(r.take(engine_len)?)?;
        if r.remaining() != 0 {
            return Err(corrupt("trailing bytes"));
        }
        if engine.len() != entries.len()
            || engine.dims() != spec.dims
            || engine.similarity() != spec.similarity
        {
            return Err(corrupt("index does not match its ids or definition"));
        }
        let ids = IdMap::from_entries(issued, entries).ok_or_else(|| corrupt("id map"))?;
        if ids.live_keys().any(|key| engine.vector(key).is_none()) {
            return Err(corrupt("an id without a vector"));
        }
        Ok(Vectors {
            ids,
            engine,
            content: HashMap::new(),
        })
    }
}

pub use crate::index::bytes::{corrupt, Reader};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hnsw::HnswParams;
    use crate::index::Similarity;

    fn spec() -> IndexSpec {
        IndexSpec::vector("v".into(), 2, Similarity::Euclidean, HnswParams::default())
    }

    #[test]
    fn ids_are_the_only_handle_and_survive_rekeying_and_compaction() {
        let spec = spec();
        let mut v = Vectors::empty(&spec);
        for i in 0..10 {
            assert!(v.upsert(
                RawBsonRef::Int32(i),
                VectorRef::F32(&[i as f32, 0.0]),
                Some(i as u64)
            ));
        }
        // Unchanged: keeps its key, records the hash.
        assert!(!v.upsert(RawBsonRef::Int32(3), VectorRef::F32(&[3.0, 0.0]), Some(99)));
        assert_eq!(v.content(RawBsonRef::Int32(3)), Some(99));
        // Moved: a new key, found by its id at its new place.
        assert!(v.upsert(RawBsonRef::Int32(3), VectorRef::F32(&[100.0, 0.0]), None));
        assert_eq!(
            v.vector(RawBsonRef::Int32(3)).as_deref(),
            Some(&[100.0, 0.0][..])
        );
        assert!(v.remove(RawBsonRef::Int32(4)));
        assert!(!v.remove(RawBsonRef::Int32(4)));
        assert_eq!(v.len(), 9);
        let near = v.search(VectorRef::F32(&[99.0, 0.0]), 2, 10, None, false);
        assert_eq!(near.hits[0].0, RawBson::Int32(3));
        let mut allowed = IdSet::default();
        allowed.add(RawBsonRef::Int32(4)); // removed: never returned
        allowed.add(RawBsonRef::Int32(0));
        let filtered = v.search(VectorRef::F32(&[4.0, 0.0]), 5, 10, Some(&allowed), false);
        let ids: Vec<_> = filtered.hits.iter().map(|h| h.0.clone()).collect();
        assert_eq!(ids, vec![RawBson::Int32(0)]);
        let (list, _) = v.nearest_to(RawBsonRef::Int32(0), 2).unwrap();
        assert_eq!(list, vec![RawBson::Int32(1), RawBson::Int32(2)]);
        assert!(v.nearest_to(RawBsonRef::Int32(4), 2).is_none());

        let mut bytes = Vec::new();
        v.save(&mut bytes).unwrap();
        let back = Vectors::load(&spec, &mut Reader::new(&bytes, 0)).unwrap();
        assert_eq!(back.ids().ids.len(), 9);
        assert_eq!(
            back.vector(RawBsonRef::Int32(3)).as_deref(),
            Some(&[100.0, 0.0][..])
        );
        // Truncated or with trailing bytes: corrupt, not a panic.
        assert!(Vectors::load(&spec, &mut Reader::new(&bytes[..bytes.len() - 1], 0)).is_err());
        bytes.push(0);
        assert!(Vectors::load(&spec, &mut Reader::new(&bytes, 0)).is_err());

        let doubled = v.mapped(&spec, |x| x.iter().map(|a| a * 2.0).collect());
        assert_eq!(
            doubled.vector(RawBsonRef::Int32(1)).as_deref(),
            Some(&[2.0, 0.0][..])
        );
        assert_eq!(doubled.content(RawBsonRef::Int32(1)), Some(1));
    }

    #[test]
    fn compaction_keeps_every_live_id() {
        let spec = spec();
        let mut v = Vectors::empty(&spec);
        for round in 0..3 {
            for i in 0..1000 {
                v.upsert(
                    RawBsonRef::Int32(i),
                    VectorRef::F32(&[i as f32, round as f32]),
                    None,
                );
            }
        }
        assert_eq!(v.slots(), 3000);
        assert!(v.compact_if_needed(&spec));
        assert_eq!((v.len(), v.slots()), (1000, 1000));
        assert_eq!(
            v.vector(RawBsonRef::Int32(7)).as_deref(),
            Some(&[7.0, 2.0][..])
        );
    }
}
