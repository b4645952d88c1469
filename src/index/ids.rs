//! Maps document `_id`s (any BSON value) to dense `u32` index keys.
//!
//! A key names one vector of one document: when a document's vector
//! changes it gets a new key and the old one is retired, so index backends
//! never update a vector in place.

use bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocumentBuf};
use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub struct IdMap {
    /// The `_id` as its canonical bytes (a one-field document) -> live key.
    by_id: HashMap<Vec<u8>, u32>,
    /// Key -> `_id`; `None` once retired.
    ids: Vec<Option<RawBson>>,
}

pub(crate) fn canonical(id: RawBsonRef<'_>) -> Vec<u8> {
    let mut doc = RawDocumentBuf::new();
    doc.append("", id.to_raw_bson());
    doc.into_bytes()
}

impl IdMap {
    /// A fresh key for `id`, retiring the key it had. Returns (new, old).
    pub fn assign(&mut self, id: RawBsonRef<'_>) -> (u32, Option<u32>) {
        let key = u32::try_from(self.ids.len()).expect("fewer than 2^32 vectors");
        self.ids.push(Some(id.to_raw_bson()));
        let old = self.by_id.insert(canonical(id), key);
        if let Some(old) = old {
            self.ids[old as usize] = None;
        }
        (key, old)
    }

    /// Retires the key of `id`, returning it.
    pub fn retire(&mut self, id: RawBsonRef<'_>) -> Option<u32> {
        let key = self.by_id.remove(&canonical(id))?;
        self.ids[key as usize] = None;
        Some(key)
    }

    pub fn key_of(&self, id: RawBsonRef<'_>) -> Option<u32> {
        self.by_id.get(&canonical(id)).copied()
    }

    pub fn id_of(&self, key: u32) -> Option<&RawBson> {
        self.ids.get(key as usize).and_then(Option::as_ref)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every live key with its `_id`, and the number of keys ever issued.
    pub fn entries(&self) -> (usize, Vec<(u32, &RawBson)>) {
        let live = self
            .ids
            .iter()
            .enumerate()
            .filter_map(|(key, id)| id.as_ref().map(|id| (key as u32, id)))
            .collect();
        (self.ids.len(), live)
    }

    /// (keys ever issued, live keys), without listing them.
    pub fn entries_count(&self) -> (usize, usize) {
        (self.ids.len(), self.by_id.len())
    }

    /// Rebuilds a map from `entries` (keys below `issued`).
    pub fn from_entries(issued: usize, entries: Vec<(u32, RawBson)>) -> Option<IdMap> {
        let mut map = IdMap {
            by_id: HashMap::with_capacity(entries.len()),
            ids: vec![None; issued],
        };
        for (key, id) in entries {
            let slot = map.ids.get_mut(key as usize)?;
            if slot.is_some()
                || map
                    .by_id
                    .insert(canonical(id.as_raw_bson_ref()), key)
                    .is_some()
            {
                return None;
            }
            *slot = Some(id);
        }
        Some(map)
    }

    /// Every live key.
    pub fn live_keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_id.values().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// `_id`s, deduplicated by their canonical bytes.
#[derive(Default)]
pub struct IdSet {
    seen: HashSet<Vec<u8>>,
    pub ids: Vec<RawBson>,
}

impl IdSet {
    pub fn add(&mut self, id: RawBsonRef<'_>) {
        if self.seen.insert(canonical(id)) {
            self.ids.push(id.to_raw_bson());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: RawBsonRef<'_>) -> bool {
        self.seen.contains(&canonical(id))
    }

    /// A copy of another set.
    pub fn from_ids(other: &IdSet) -> IdSet {
        let mut out = IdSet::default();
        for id in &other.ids {
            out.add(id.as_raw_bson_ref());
        }
        out
    }

    pub fn array(&self) -> RawArrayBuf {
        let mut out = RawArrayBuf::new();
        for id in &self.ids {
            out.push(id.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassigning_retires_the_old_key() {
        let mut ids = IdMap::default();
        let (a, none) = ids.assign(RawBsonRef::String("a"));
        assert_eq!(none, None);
        let (b, _) = ids.assign(RawBsonRef::Int32(7));
        let (a2, old) = ids.assign(RawBsonRef::String("a"));
        assert_eq!(old, Some(a));
        assert_ne!(a2, a);
        assert_eq!(ids.id_of(a), None);
        assert_eq!(ids.key_of(RawBsonRef::String("a")), Some(a2));
        assert_eq!(ids.retire(RawBsonRef::Int32(7)), Some(b));
        assert_eq!(ids.len(), 1);
    }
}
