//! `Flat`: brute-force search over contiguous vectors. The oracle.

use super::persist::{corrupt, Reader, Writer, KIND_FLAT};
use super::{exact_among, Hit, KeySet, Similarity, TopK, VectorIndex};
use std::io;

pub struct Flat {
    dims: usize,
    similarity: Similarity,
    /// Slot `key` holds the vector of `key` (zeros when absent).
    vectors: Vec<f32>,
    live: KeySet,
    removed: Vec<bool>,
    count: usize,
}

impl Flat {
    pub fn new(dims: usize, similarity: Similarity) -> Flat {
        Flat {
            dims,
            similarity,
            vectors: Vec::new(),
            live: KeySet::default(),
            removed: Vec::new(),
            count: 0,
        }
    }

    pub(crate) fn read(
        r: &mut Reader<'_>,
        dims: usize,
        similarity: Similarity,
    ) -> io::Result<Flat> {
        let vectors = r.f32s()?;
        if vectors.len() % dims != 0 {
            return Err(corrupt("flat vectors"));
        }
        let slots = vectors.len() / dims;
        let keys = r.u32s()?;
        let mut removed = vec![true; slots];
        for &k in &keys {
            *removed
                .get_mut(k as usize)
                .ok_or_else(|| corrupt("flat key"))? = false;
        }
        let live = KeySet::from_keys(keys);
        Ok(Flat {
            dims,
            similarity,
            vectors,
            count: live.len(),
            live,
            removed,
        })
    }

    fn is_live(&self, key: u32) -> bool {
        self.live.contains(key) && !self.removed.get(key as usize).copied().unwrap_or(true)
    }
}

impl VectorIndex for Flat {
    fn dims(&self) -> usize {
        self.dims
    }

    fn similarity(&self) -> Similarity {
        self.similarity
    }

    fn insert(&mut self, key: u32, vector: &[f32]) {
        assert_eq!(vector.len(), self.dims, "vector length");
        let slot = key as usize;
        if self.removed.len() <= slot {
            self.removed.resize(slot + 1, true);
            self.vectors.resize((slot + 1) * self.dims, 0.0);
        }
        if self.is_live(key) {
            return;
        }
        self.vectors[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(vector);
        self.removed[slot] = false;
        self.live.insert(key);
        self.count += 1;
    }

    fn remove(&mut self, key: u32) -> bool {
        if !self.is_live(key) {
            return false;
        }
        self.removed[key as usize] = true;
        self.count -= 1;
        true
    }

    fn len(&self) -> usize {
        self.count
    }

    fn vector(&self, key: u32) -> Option<&[f32]> {
        self.is_live(key)
            .then(|| &self.vectors[key as usize * self.dims..(key as usize + 1) * self.dims])
    }

    fn save(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut w = Writer::header(KIND_FLAT, self.dims, self.similarity);
        w.f32s(&self.vectors);
        let live: Vec<u32> = self
            .live
            .keys()
            .iter()
            .copied()
            .filter(|&k| self.is_live(k))
            .collect();
        w.u32s(&live);
        w.finish(out)
    }

    fn search_counted(
        &self,
        query: &[f32],
        k: usize,
        _ef: usize,
        allowed: Option<&KeySet>,
    ) -> (Vec<Hit>, usize) {
        if let Some(allowed) = allowed {
            return (exact_among(self, query, k, allowed.keys()), allowed.len());
        }
        let mut top = TopK::new(k);
        for &key in self.live.keys() {
            if let Some(v) = self.vector(key) {
                top.push(Hit {
                    key,
                    distance: self.similarity.distance(query, v),
                });
            }
        }
        (top.into_sorted(), self.count)
    }
}
