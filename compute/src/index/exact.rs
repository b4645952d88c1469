//! `Flat`: brute-force search over contiguous vectors. The oracle.

use super::element::{Dtype, Element};
use super::engine::{retype, Engine, Widen};
use super::persist::{corrupt, Reader, Writer, KIND_FLAT};
use super::{exact_among, Hit, KeySet, Query, Similarity, VectorIndex};
use std::io;

/// Rows of `E` in one buffer, compared one by one.
pub struct Flat<E: Element = f32> {
    dims: usize,
    /// Elements per row (`E::row_len(dims)`).
    width: usize,
    similarity: Similarity,
    /// Slot `key` holds the row of `key` (zeros when absent).
    vectors: Vec<E>,
    live: KeySet,
    removed: Vec<bool>,
    count: usize,
}

impl<E: Element> Flat<E> {
    pub fn new(dims: usize, similarity: Similarity) -> Flat<E> {
        Flat {
            dims,
            width: E::row_len(dims),
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
    ) -> io::Result<Flat<E>> {
        let width = E::row_len(dims);
        let vectors = E::read(r)?;
        if width == 0 || vectors.len() % width != 0 {
            return Err(corrupt("flat vectors"));
        }
        let slots = vectors.len() / width;
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
            width,
            similarity,
            vectors,
            count: live.len(),
            live,
            removed,
        })
    }

    /// The same rows stored as `F` (see `Hnsw::widened`).
    fn widened<F: Element>(&self) -> Flat<F> {
        let width = F::row_len(self.dims);
        let mut vectors = vec![F::default(); self.removed.len() * width];
        let mut values = Vec::with_capacity(self.dims);
        for slot in 0..self.removed.len() {
            if !self.is_live(slot as u32) {
                continue;
            }
            let row = &self.vectors[slot * self.width..(slot + 1) * self.width];
            E::values(row, self.dims, &mut values);
            if let Some(row) = F::from_values(&values, self.similarity) {
                vectors[slot * width..(slot + 1) * width].copy_from_slice(&row);
            }
        }
        Flat {
            dims: self.dims,
            width,
            similarity: self.similarity,
            vectors,
            live: self.live.clone(),
            removed: self.removed.clone(),
            count: self.count,
        }
    }

    fn is_live(&self, key: u32) -> bool {
        self.live.contains(key) && !self.removed.get(key as usize).copied().unwrap_or(true)
    }
}

impl<E: Element> Widen for Flat<E> {
    fn widened_into<F: Element>(&self) -> Box<dyn VectorIndex<F>> {
        Box::new(self.widened::<F>())
    }
}

impl<E: Element> VectorIndex<E> for Flat<E> {
    fn dims(&self) -> usize {
        self.dims
    }

    fn similarity(&self) -> Similarity {
        self.similarity
    }

    fn insert(&mut self, key: u32, vector: &[E]) {
        assert_eq!(vector.len(), self.width, "vector length");
        let slot = key as usize;
        if self.removed.len() <= slot {
            self.removed.resize(slot + 1, true);
            self.vectors.resize((slot + 1) * self.width, E::default());
        }
        if self.is_live(key) {
            return;
        }
        self.vectors[slot * self.width..(slot + 1) * self.width].copy_from_slice(vector);
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

    fn slots(&self) -> usize {
        self.removed.len()
    }

    fn retyped(&self, dtype: Dtype) -> Engine {
        retype(self, dtype)
    }

    fn vector(&self, key: u32) -> Option<&[E]> {
        self.is_live(key)
            .then(|| &self.vectors[key as usize * self.width..(key as usize + 1) * self.width])
    }

    fn save(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut w = Writer::header(KIND_FLAT, E::DTYPE, self.dims, self.similarity);
        E::write(&mut w, &self.vectors);
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
        query: Query<'_, E>,
        k: usize,
        _ef: usize,
        allowed: Option<&KeySet>,
    ) -> (Vec<Hit>, usize) {
        if let Some(allowed) = allowed {
            return (exact_among(self, query, k, allowed.keys()), allowed.len());
        }
        (exact_among(self, query, k, self.live.keys()), self.count)
    }
}
