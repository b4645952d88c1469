//! `Flat`: brute-force search over contiguous vectors. The oracle.

use super::{exact_among, Hit, KeySet, Similarity, TopK, VectorIndex};

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

    fn search(&self, query: &[f32], k: usize, _ef: usize, allowed: Option<&KeySet>) -> Vec<Hit> {
        if let Some(allowed) = allowed {
            return exact_among(self, query, k, allowed.keys());
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
        top.into_sorted()
    }
}
