//! Vector indexes: synchronous, no I/O, no async runtime.
//!
//! An index maps dense `u32` keys (assigned by the proxy's `_id` map, never
//! reused for another vector) to vectors and answers k-nearest-neighbour queries,
//! optionally restricted to an allowed set of keys. Updating a document's
//! vector is `remove(old key)` + `insert(new key)`, so implementations never
//! change a stored vector in place.
//!
//! `exact::Flat` is the oracle every approximate index is measured against.

pub mod element;
pub mod engine;
pub mod exact;
pub mod hnsw;
pub mod metric;
pub mod persist;
pub mod quantized;

pub use element::{Dtype, Element};
pub use engine::{Engine, VectorRef};
pub use metric::Similarity;
pub use quantized::{Quantization, Quantized};

/// A query as a search takes it: a row of the index's own element type
/// (compared with the index's kernel), or a function giving a stored row's
/// distance to a query of another type.
#[derive(Clone, Copy)]
pub enum Query<'a, E> {
    Native(&'a [E]),
    By(&'a dyn Fn(&[E]) -> f32),
}

impl<'a, E> From<&'a [E]> for Query<'a, E> {
    fn from(row: &'a [E]) -> Self {
        Query::Native(row)
    }
}

impl<'a, E> From<&'a Vec<E>> for Query<'a, E> {
    fn from(row: &'a Vec<E>) -> Self {
        Query::Native(row)
    }
}

/// One search result: a key and its distance (smaller is nearer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub key: u32,
    pub distance: f32,
}

/// A set of keys, as a bitset (for membership) and a list (for scanning).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    bits: Vec<u64>,
    keys: Vec<u32>,
}

impl KeySet {
    pub fn from_keys(keys: impl IntoIterator<Item = u32>) -> KeySet {
        let mut set = KeySet::default();
        for key in keys {
            set.insert(key);
        }
        set
    }

    pub fn insert(&mut self, key: u32) {
        let (word, bit) = (key as usize / 64, key % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.keys.push(key);
        }
    }

    #[inline]
    pub fn contains(&self, key: u32) -> bool {
        self.bits
            .get(key as usize / 64)
            .is_some_and(|w| w & (1 << (key % 64)) != 0)
    }

    pub fn keys(&self) -> &[u32] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What every index backend provides, over rows of `E` (`f32` rows
/// prepared, see `Similarity::prepare`; `element` for the others).
pub trait VectorIndex<E: Element = f32>: Send + Sync {
    fn dims(&self) -> usize;
    fn similarity(&self) -> Similarity;
    /// Stores a row (`E::row_len(dims)` long) under a fresh key.
    fn insert(&mut self, key: u32, vector: &[E]);
    /// Removes a key; it is never returned by a search again.
    fn remove(&mut self, key: u32) -> bool;
    /// Live (not removed) vectors.
    fn len(&self) -> usize;
    /// Row slots ever used, live and removed.
    fn slots(&self) -> usize;
    /// The same index over rows of `dtype`, which must hold every stored
    /// value exactly (a wider dtype; any while nothing was stored).
    fn retyped(&self, dtype: Dtype) -> Engine;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The stored row of a live key.
    fn vector(&self, key: u32) -> Option<&[E]>;
    /// The `k` nearest live keys to a prepared query, nearest first, among
    /// `allowed` when given. `ef` is the search breadth of approximate
    /// indexes (at least `k` is used); exact indexes ignore it.
    fn search(&self, query: &[E], k: usize, ef: usize, allowed: Option<&KeySet>) -> Vec<Hit> {
        self.search_counted(Query::Native(query), k, ef, allowed).0
    }
    /// `search` for any query form, also reporting how many vectors it
    /// compared the query with.
    fn search_counted(
        &self,
        query: Query<'_, E>,
        k: usize,
        ef: usize,
        allowed: Option<&KeySet>,
    ) -> (Vec<Hit>, usize);
    /// About how many vector comparisons a graph search restricted to
    /// `allowed` of the live vectors costs, in units of one comparison of
    /// an exact scan; `None` where there is no graph (scanning is all).
    fn filtered_cost(&self, _ef: usize, _allowed: usize) -> Option<usize> {
        None
    }
    /// Writes a snapshot that `persist::load` reads back into an equal index.
    fn save(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;
}

/// Exact k-NN over an explicit list of keys, using any index's stored
/// vectors: the strategy for selective filters, and always right.
pub fn exact_among<'a, E: Element>(
    index: &dyn VectorIndex<E>,
    query: impl Into<Query<'a, E>>,
    k: usize,
    keys: &[u32],
) -> Vec<Hit> {
    let distance = E::distance_fn(index.similarity());
    let query = query.into();
    let mut top = TopK::new(k);
    for &key in keys {
        if let Some(v) = index.vector(key) {
            let distance = match query {
                Query::Native(q) => distance(q, v),
                Query::By(dist) => dist(v),
            };
            top.push(Hit { key, distance });
        }
    }
    top.into_sorted()
}

/// k-NN among the `allowed` keys, by the cheaper strategy for the filter's
/// selectivity: an exact scan of exactly those keys, or a filtered graph
/// search when the index estimates that cheaper (see `filtered_cost`;
/// broad filters over big indexes). Always `min(k, allowed)` results, since
/// a graph search that comes back short is completed by an exact scan.
/// Returns the hits, the strategy's name (for explain) and how many vectors
/// were compared.
pub fn search_allowed<'a, E: Element>(
    index: &dyn VectorIndex<E>,
    query: impl Into<Query<'a, E>>,
    k: usize,
    ef: usize,
    allowed: &KeySet,
) -> (Vec<Hit>, &'static str, usize) {
    let query = query.into();
    let exact = || exact_among(index, query, k, allowed.keys());
    // A filter that passes a fraction `s` of the index widens the beam by
    // `1 / √s` (at most 4×): when the allowed vectors sit together away
    // from the query (a filter correlated with the data), the beam meets
    // them late and needs the room; the walk itself already goes about
    // `1 / s` further to admit `ef` allowed nodes, so a full `1 / s` more
    // (as before) cost 2.4× the queries/s at s = 0.5 for no recall
    // (`scripts/bench ann`, 30k clustered: 0.9985 either way, correlated).
    let ef = ef.max(k);
    let widen = (index.len() as f64 / allowed.len().max(1) as f64).sqrt();
    let ef = ((ef as f64 * widen) as usize).clamp(ef, 4 * ef);
    let graph_cost = index.filtered_cost(ef, allowed.len());
    if graph_cost.is_none_or(|cost| cost >= allowed.len()) {
        return (
            exact(),
            "exact scan of filter matches (selective filter)",
            allowed.len(),
        );
    }
    let (hits, examined) = index.search_counted(query, k, ef, Some(allowed));
    if hits.len() < k.min(allowed.len()) {
        return (
            exact(),
            "filtered graph search, completed by exact scan",
            examined + allowed.len(),
        );
    }
    (hits, "filtered graph search", examined)
}

/// Keeps the `k` nearest hits seen.
pub(crate) struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<Ranked>,
}

#[derive(PartialEq)]
struct Ranked(Hit);

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .distance
            .total_cmp(&other.0.distance)
            .then(self.0.key.cmp(&other.0.key))
    }
}

impl TopK {
    pub(crate) fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: std::collections::BinaryHeap::with_capacity(k + 1),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, hit: Hit) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Ranked(hit));
        } else if let Some(worst) = self.heap.peek() {
            if Ranked(hit) < *worst {
                self.heap.pop();
                self.heap.push(Ranked(hit));
            }
        }
    }

    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0)
            .collect()
    }
}
