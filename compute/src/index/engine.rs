//! `Engine`: one index whose rows are of whichever dtype its vectors need
//! (see `element`). It starts as `f32`, takes the dtype of its first
//! vector, and widens (keeping its graph) when a vector of a wider dtype
//! arrives, so int8 and packed-bit vectors are stored at their own size
//! for as long as every vector of the index is of that dtype.
//!
//! Queries of any dtype search it: one its rows can hold exactly is
//! compared with the row kernel; any other (an `f32` query over `i8`
//! rows) through the distance of the widened, prepared vectors, which is
//! the same number (`element` module docs).

use super::element::{prepared, Dtype, Element};
use super::hnsw::{Hnsw, HnswParams};
use super::quantized::{Quantization, Quantized};
use super::{exact_among, search_allowed, Hit, KeySet, Query, Similarity, VectorIndex};
use std::borrow::Cow;
use std::cell::RefCell;
use std::io;

/// A vector as a document or a query gives it: `f32` values prepared
/// (`Similarity::prepare`), `i8` values, or packed bits (most significant
/// bit first, `dims.div_ceil(8)` bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VectorRef<'a> {
    F32(&'a [f32]),
    I8(&'a [i8]),
    Bits(&'a [u8]),
}

impl VectorRef<'_> {
    pub fn dtype(&self) -> Dtype {
        match self {
            VectorRef::F32(_) => Dtype::F32,
            VectorRef::I8(_) => Dtype::I8,
            VectorRef::Bits(_) => Dtype::Bits,
        }
    }

    /// The values, `dims` long (prepared for `f32`, raw for the others).
    pub(crate) fn values(&self, dims: usize, out: &mut Vec<f32>) {
        match self {
            VectorRef::F32(v) => f32::values(v, dims, out),
            VectorRef::I8(v) => i8::values(v, dims, out),
            VectorRef::Bits(v) => u8::values(v, dims, out),
        }
    }

    /// This vector as a row of `E`, when `E` holds it exactly.
    fn row_as<E: Element>(&self, dims: usize, similarity: Similarity) -> Option<Vec<E>> {
        let mut values = Vec::with_capacity(dims);
        self.values(dims, &mut values);
        if E::DTYPE == Dtype::F32 {
            if let VectorRef::F32(_) = self {
                // Already prepared.
                return E::from_values(&values, Similarity::Euclidean);
            }
        }
        E::from_values(&values, similarity)
    }
}

/// An index over rows of one dtype, or a quantized one (codes walked,
/// full vectors rescored; see `quantized`).
pub enum Engine {
    F32(Box<dyn VectorIndex<f32>>),
    I8(Box<dyn VectorIndex<i8>>),
    Bits(Box<dyn VectorIndex<u8>>),
    Quantized(Box<Quantized>),
}

/// Runs `$body` with `$index` bound to the engine's index, whatever its
/// element type (`$quantized` for a quantized engine).
macro_rules! each {
    ($engine:expr, $index:ident => $body:expr, $q:ident => $quantized:expr) => {
        match $engine {
            Engine::F32($index) => $body,
            Engine::I8($index) => $body,
            Engine::Bits($index) => $body,
            Engine::Quantized($q) => $quantized,
        }
    };
}

/// What a search does, for `run`.
enum Op<'a> {
    Exact { keys: &'a [u32] },
    Allowed { ef: usize, allowed: &'a KeySet },
    Graph { ef: usize },
}

impl Engine {
    /// An empty HNSW index (`f32` until its first vector).
    pub fn hnsw(dims: usize, similarity: Similarity, params: HnswParams) -> Engine {
        Engine::F32(Box::new(Hnsw::<f32>::new(dims, similarity, params)))
    }

    /// An empty quantized HNSW index (`oversampling` 0: the default).
    pub fn quantized(
        dims: usize,
        similarity: Similarity,
        params: HnswParams,
        quantization: Quantization,
        oversampling: usize,
    ) -> Engine {
        Engine::Quantized(Box::new(Quantized::new(
            dims,
            similarity,
            params,
            quantization,
            oversampling,
        )))
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            Engine::F32(_) => Dtype::F32,
            Engine::I8(_) => Dtype::I8,
            Engine::Bits(_) => Dtype::Bits,
            Engine::Quantized(q) => q.dtype(),
        }
    }

    pub fn dims(&self) -> usize {
        each!(self, i => i.dims(), q => q.dims())
    }

    pub fn similarity(&self) -> Similarity {
        each!(self, i => i.similarity(), q => q.similarity())
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        each!(self, i => i.len(), q => q.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row slots ever used (live and removed).
    pub fn slots(&self) -> usize {
        each!(self, i => i.slots(), q => q.slots())
    }

    /// Bytes one stored row takes.
    pub fn row_bytes(&self) -> usize {
        self.dtype().row_bytes(self.dims())
    }

    /// Stores `vector` under a fresh key: an index that never held a
    /// vector takes its dtype, one of a narrower dtype widens first.
    /// A vector the similarity cannot compare (a zero vector under cosine)
    /// is not stored; callers check that first.
    pub fn insert(&mut self, key: u32, vector: VectorRef<'_>) {
        if let Engine::Quantized(q) = self {
            return q.insert(key, vector);
        }
        let wanted = vector.dtype();
        if wanted > self.dtype() || (wanted != self.dtype() && self.slots() == 0) {
            *self = match &*self {
                Engine::F32(i) => i.retyped(wanted),
                Engine::I8(i) => i.retyped(wanted),
                Engine::Bits(i) => i.retyped(wanted),
                Engine::Quantized(_) => unreachable!("handled above"),
            };
        }
        let (dims, similarity) = (self.dims(), self.similarity());
        match self {
            Engine::F32(i) => match vector {
                VectorRef::F32(v) => i.insert(key, v),
                other => {
                    if let Some(row) = other.row_as::<f32>(dims, similarity) {
                        i.insert(key, &row)
                    }
                }
            },
            Engine::I8(i) => {
                if let Some(row) = vector.row_as::<i8>(dims, similarity) {
                    i.insert(key, &row)
                }
            }
            Engine::Bits(i) => {
                if let Some(row) = vector.row_as::<u8>(dims, similarity) {
                    i.insert(key, &row)
                }
            }
            Engine::Quantized(_) => {}
        }
    }

    /// Inserts many vectors, as [`Engine::insert`] each: float rows into
    /// a float engine go in together, with up to `threads` threads
    /// ([`VectorIndex::insert_many`]); anything else one at a time.
    pub fn insert_many(&mut self, items: &[(u32, VectorRef<'_>)], threads: usize) {
        let rows: Option<Vec<(u32, &[f32])>> = match self {
            Engine::F32(_) => items
                .iter()
                .map(|(key, v)| match v {
                    VectorRef::F32(row) => Some((*key, *row)),
                    _ => None,
                })
                .collect(),
            _ => None,
        };
        match (self, rows) {
            (Engine::F32(index), Some(rows)) => index.insert_many(&rows, threads),
            (engine, _) => {
                for (key, v) in items {
                    engine.insert(*key, *v);
                }
            }
        }
    }

    pub fn remove(&mut self, key: u32) -> bool {
        each!(self, i => i.remove(key), q => q.remove(key))
    }

    /// The stored vector of a live key, prepared `f32` (what an `f32`
    /// index would hold for it).
    pub fn vector(&self, key: u32) -> Option<Cow<'_, [f32]>> {
        match self {
            Engine::F32(i) => i.vector(key).map(Cow::Borrowed),
            Engine::I8(i) => i.vector(key).map(|row| Cow::Owned(widen(row, i.as_ref()))),
            Engine::Bits(i) => i.vector(key).map(|row| Cow::Owned(widen(row, i.as_ref()))),
            Engine::Quantized(q) => q.vector(key).map(Cow::Owned),
        }
    }

    /// The packed bits a live key holds, when this is a bit index.
    pub(crate) fn bits_of(&self, key: u32) -> Option<&[u8]> {
        match self {
            Engine::Bits(i) => i.vector(key),
            _ => None,
        }
    }

    /// Whether `key` holds exactly `vector`.
    pub fn holds(&self, key: u32, vector: VectorRef<'_>) -> bool {
        let (dims, similarity) = (self.dims(), self.similarity());
        match self {
            Engine::F32(i) => i
                .vector(key)
                .is_some_and(|row| vector.row_as::<f32>(dims, similarity).as_deref() == Some(row)),
            Engine::I8(i) => i
                .vector(key)
                .is_some_and(|row| vector.row_as::<i8>(dims, similarity).as_deref() == Some(row)),
            Engine::Bits(i) => i
                .vector(key)
                .is_some_and(|row| vector.row_as::<u8>(dims, similarity).as_deref() == Some(row)),
            Engine::Quantized(q) => q.holds(key, vector),
        }
    }

    /// Stores the row of `key` under `new_key` in `to`, at its dtype.
    pub fn copy_row(&self, key: u32, to: &mut Engine, new_key: u32) {
        let full;
        let row = match self {
            Engine::F32(i) => i.vector(key).map(VectorRef::F32),
            Engine::I8(i) => i.vector(key).map(VectorRef::I8),
            Engine::Bits(i) => i.vector(key).map(VectorRef::Bits),
            Engine::Quantized(q) => {
                full = q.vector(key);
                full.as_deref().map(VectorRef::F32)
            }
        };
        if let Some(row) = row {
            to.insert(new_key, row);
        }
    }

    /// Exact k-NN among `keys` (see `index::exact_among`).
    pub fn exact_among(&self, query: VectorRef<'_>, k: usize, keys: &[u32]) -> Vec<Hit> {
        each!(
            self,
            i => run(i.as_ref(), query, k, Op::Exact { keys }).0,
            q => q.exact_among(query, k, keys)
        )
    }

    /// k-NN among `allowed` by the cheaper strategy (see
    /// `index::search_allowed`): hits, strategy, vectors compared.
    pub fn search_allowed(
        &self,
        query: VectorRef<'_>,
        k: usize,
        ef: usize,
        allowed: &KeySet,
    ) -> (Vec<Hit>, &'static str, usize) {
        each!(
            self,
            i => run(i.as_ref(), query, k, Op::Allowed { ef, allowed }),
            q => q.search_allowed(query, k, ef, allowed)
        )
    }

    /// An unfiltered graph search of breadth `ef`: hits and vectors
    /// compared.
    pub fn search_counted(&self, query: VectorRef<'_>, k: usize, ef: usize) -> (Vec<Hit>, usize) {
        each!(
            self,
            i => {
                let (hits, _, examined) = run(i.as_ref(), query, k, Op::Graph { ef });
                (hits, examined)
            },
            q => q.search_counted(query, k, ef)
        )
    }

    /// Writes a snapshot that `persist::load` reads back into an equal
    /// engine.
    pub fn save(&self, out: &mut dyn io::Write) -> io::Result<()> {
        each!(self, i => i.save(out), q => q.save(out))
    }
}

/// An index that can hold its rows as another element type.
pub(crate) trait Widen {
    /// The same index over the same rows stored as `F` (which holds every
    /// stored value exactly).
    fn widened_into<F: Element>(&self) -> Box<dyn VectorIndex<F>>;
}

/// `VectorIndex::retyped` for any index that can widen.
pub(crate) fn retype(index: &impl Widen, dtype: Dtype) -> Engine {
    match dtype {
        Dtype::F32 => Engine::F32(index.widened_into()),
        Dtype::I8 => Engine::I8(index.widened_into()),
        Dtype::Bits => Engine::Bits(index.widened_into()),
    }
}

fn widen<E: Element>(row: &[E], index: &dyn VectorIndex<E>) -> Vec<f32> {
    let mut out = Vec::with_capacity(index.dims());
    prepared(row, index.dims(), index.similarity(), &mut out);
    out
}

/// Runs `op` for `query` on an index of `E`: with the row kernel when `E`
/// holds the query exactly, else with the distance of the widened rows.
fn run<E: Element>(
    index: &dyn VectorIndex<E>,
    query: VectorRef<'_>,
    k: usize,
    op: Op<'_>,
) -> (Vec<Hit>, &'static str, usize) {
    let (dims, similarity) = (index.dims(), index.similarity());
    let native = query.row_as::<E>(dims, similarity);
    let mut wide = Vec::with_capacity(dims);
    query.values(dims, &mut wide);
    if query.dtype() != Dtype::F32 {
        // As the widened rows: prepared.
        wide = similarity.prepare(wide).unwrap_or_default();
    }
    let distance = similarity.distance_fn();
    let scratch = RefCell::new(Vec::with_capacity(dims));
    let by = |row: &[E]| {
        let mut buf = scratch.borrow_mut();
        prepared(row, dims, similarity, &mut buf);
        distance(&wide, &buf)
    };
    let query = match &native {
        Some(row) => Query::Native(row),
        None => Query::By(&by),
    };
    match op {
        Op::Exact { keys } => (exact_among(index, query, k, keys), "", keys.len()),
        Op::Allowed { ef, allowed } => search_allowed(index, query, k, ef, allowed),
        Op::Graph { ef } => {
            let (hits, examined) = index.search_counted(query, k, ef, None);
            (hits, "", examined)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(hits: &[Hit]) -> Vec<u32> {
        hits.iter().map(|h| h.key).collect()
    }

    /// Vectors keep their dtype while they can, widen when they must, and
    /// every query form finds what an `f32` index of the same vectors finds.
    #[test]
    fn dtypes_narrow_while_they_can_and_answer_as_f32_would() {
        for similarity in [
            Similarity::Euclidean,
            Similarity::Cosine,
            Similarity::DotProduct,
        ] {
            let dims = 12;
            let rows: Vec<Vec<i8>> = (0..300)
                .map(|i| {
                    (0..dims)
                        .map(|d| (((i * 31 + d * 17) % 251) as i32 - 125) as i8)
                        .collect()
                })
                .collect();
            let mut typed = Engine::hnsw(dims, similarity, HnswParams::default());
            let mut float = Engine::hnsw(dims, similarity, HnswParams::default());
            for (key, row) in rows.iter().enumerate() {
                typed.insert(key as u32, VectorRef::I8(row));
                let values: Vec<f32> = row.iter().map(|&x| f32::from(x)).collect();
                float.insert(
                    key as u32,
                    VectorRef::F32(&similarity.prepare(values).unwrap()),
                );
            }
            assert_eq!((typed.dtype(), float.dtype()), (Dtype::I8, Dtype::F32));
            assert_eq!(typed.row_bytes() * 4, float.row_bytes());
            let all: Vec<u32> = (0..300).collect();
            let q8: Vec<i8> = (0..dims).map(|d| (d as i8) * 9 - 50).collect();
            let qf: Vec<f32> = similarity
                .prepare(q8.iter().map(|&x| f32::from(x) + 0.5).collect())
                .unwrap();
            for query in [VectorRef::I8(&q8), VectorRef::F32(&qf)] {
                let want = float.exact_among(query_as_f32(query, similarity).as_ref(), 10, &all);
                assert_eq!(
                    ids(&typed.exact_among(query, 10, &all)),
                    ids(&want),
                    "{similarity:?}"
                );
                let graph = typed.search_counted(query, 10, 100).0;
                assert!(
                    ids(&graph)
                        .iter()
                        .filter(|k| ids(&want).contains(k))
                        .count()
                        >= 9
                );
            }
            assert_eq!(
                typed.vector(7).unwrap().as_ref(),
                float.vector(7).unwrap().as_ref(),
                "{similarity:?}"
            );
            // A float vector widens the index; what it held stays found.
            let odd = similarity.prepare(vec![0.25; dims]).unwrap();
            typed.insert(300, VectorRef::F32(&odd));
            assert_eq!(typed.dtype(), Dtype::F32);
            assert!(typed.holds(300, VectorRef::F32(&odd)));
            assert!(typed.holds(5, VectorRef::I8(&rows[5])));
            let want = ids(&float.exact_among(VectorRef::I8(&q8), 10, &all));
            assert_eq!(ids(&typed.exact_among(VectorRef::I8(&q8), 10, &all)), want);
        }
    }

    fn query_as_f32(query: VectorRef<'_>, similarity: Similarity) -> Owned {
        match query {
            VectorRef::I8(v) => Owned(
                similarity
                    .prepare(v.iter().map(|&x| f32::from(x)).collect())
                    .unwrap(),
            ),
            VectorRef::F32(v) => Owned(v.to_vec()),
            VectorRef::Bits(_) => unreachable!(),
        }
    }

    struct Owned(Vec<f32>);

    impl Owned {
        fn as_ref(&self) -> VectorRef<'_> {
            VectorRef::F32(&self.0)
        }
    }

    #[test]
    fn packed_bits_are_searched_by_hamming_distance() {
        let dims = 16;
        let mut engine = Engine::hnsw(dims, Similarity::Euclidean, HnswParams::default());
        let rows: Vec<[u8; 2]> = (0..200u32)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) >> 7) as u16;
                x.to_be_bytes()
            })
            .collect();
        for (key, row) in rows.iter().enumerate() {
            engine.insert(key as u32, VectorRef::Bits(row));
        }
        assert_eq!((engine.dtype(), engine.row_bytes()), (Dtype::Bits, 2));
        // A snapshot keeps the dtype and answers alike.
        let mut bytes = Vec::new();
        engine.save(&mut bytes).unwrap();
        let loaded = super::super::persist::load(&bytes).unwrap();
        assert_eq!(loaded.dtype(), Dtype::Bits);
        let query = VectorRef::Bits(&[0xff, 0x00]);
        assert_eq!(
            loaded.search_counted(query, 5, 50),
            engine.search_counted(query, 5, 50)
        );
        let target = [0b1011_0010u8, 0b0100_1111];
        let hamming = |r: &[u8; 2]| {
            ((r[0] ^ target[0]).count_ones() + (r[1] ^ target[1]).count_ones()) as f32
        };
        let all: Vec<u32> = (0..200).collect();
        let hits = engine.exact_among(VectorRef::Bits(&target), 10, &all);
        let mut want: Vec<f32> = rows.iter().map(hamming).collect();
        want.sort_by(f32::total_cmp);
        assert_eq!(
            hits.iter().map(|h| h.distance).collect::<Vec<_>>(),
            want[..10]
        );
        // An int8 vector of 0s and 1s widens the bits to int8, not f32.
        let ones = [1i8; 16];
        engine.insert(200, VectorRef::I8(&ones));
        assert_eq!(engine.dtype(), Dtype::I8);
        let again = engine.exact_among(VectorRef::Bits(&target), 10, &all);
        assert_eq!(
            again.iter().map(|h| h.distance).collect::<Vec<_>>(),
            want[..10]
        );
    }
}
