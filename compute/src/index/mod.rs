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
    /// Stores many rows, as [`VectorIndex::insert`] each, with up to
    /// `threads` threads where the index can use them (HNSW plans batches
    /// in parallel); one at a time otherwise.
    fn insert_many(&mut self, items: &[(u32, &[E])], threads: usize) {
        let _ = threads;
        for &(key, row) in items {
            self.insert(key, row);
        }
    }
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
    /// How a graph search for `query` restricted to `allowed` would go:
    /// the beam it needs and about how many vectors it would compare,
    /// with the index's measured costs; `None` where there is no graph
    /// (scanning is all).
    fn filtered_walk(
        &self,
        _query: Query<'_, E>,
        _ef: usize,
        _allowed: &KeySet,
    ) -> Option<WalkPlan<'_>> {
        None
    }
    /// The walk a [`filtered_walk`](VectorIndex::filtered_walk) plan
    /// describes: the `k` nearest allowed keys and how many vectors it
    /// compared; no hits when it gave up after comparing more than
    /// `budget` vectors.
    fn walk(
        &self,
        query: Query<'_, E>,
        k: usize,
        plan: &WalkPlan<'_>,
        allowed: &KeySet,
        _budget: usize,
    ) -> (Vec<Hit>, usize) {
        self.search_counted(query, k, plan.ef, Some(allowed))
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

/// A graph index's estimate of a filtered walk (see
/// [`VectorIndex::filtered_walk`]).
pub struct WalkPlan<'a> {
    /// The beam the walk uses (at least the `ef` asked for).
    pub ef: usize,
    /// About how many vectors the walk compares with the query.
    pub compared: usize,
    /// The index's measured costs of walking and scanning.
    pub costs: &'a PlanCosts,
    /// Where the walk starts on the bottom layer, when the plan's own
    /// descent found it.
    pub from: Option<u32>,
}

/// What one vector comparison costs each filtered strategy, measured on
/// the queries an index answers (nanoseconds per vector compared,
/// exponentially weighted over recent queries): a walk's comparisons
/// cost more than a scan's (random rows, heap upkeep, the visited set),
/// and by how much depends on the dimensions and the machine (measured
/// with `scripts/bench ann` on 100k × 128 clustered, AMD EPYC: about
/// 230 ns walking against 70 ns scanning).
#[derive(Debug, Default)]
pub struct PlanCosts {
    /// `f64` bits; 0 until measured.
    walk_ns: std::sync::atomic::AtomicU64,
    scan_ns: std::sync::atomic::AtomicU64,
    /// Set by [`PlanCosts::pin`]: no more measuring.
    pinned: std::sync::atomic::AtomicBool,
}

/// Strategies smaller than this many comparisons are not timed (the
/// clock's own cost and noise would dominate).
const TIMED_AT_LEAST: usize = 256;

impl PlanCosts {
    /// How many scan comparisons one walk comparison costs: measured once
    /// both strategies ran, else `1 + 256 / dims` (the distance's share of
    /// a walk step grows with the dimensions: 3 at 128, as measured above).
    pub fn walk_to_scan(&self, dims: usize) -> f64 {
        use std::sync::atomic::Ordering::Relaxed;
        let walk = f64::from_bits(self.walk_ns.load(Relaxed));
        let scan = f64::from_bits(self.scan_ns.load(Relaxed));
        if walk > 0.0 && scan > 0.0 {
            (walk / scan).clamp(0.5, 20.0)
        } else {
            1.0 + 256.0 / dims.max(1) as f64
        }
    }

    /// Fixes the walk-to-scan ratio and stops measuring: for tests, whose
    /// strategy must not depend on how loaded the machine is.
    pub fn pin(&self, walk_to_scan: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.pinned.store(true, Relaxed);
        self.walk_ns.store(walk_to_scan.to_bits(), Relaxed);
        self.scan_ns.store(1.0f64.to_bits(), Relaxed);
    }

    /// Records one strategy's run: `compared` vectors in `elapsed`. Each
    /// sample counts within 4× of the average so far, so one run slowed
    /// by the machine (a preempted thread, a cold cache) cannot swing the
    /// choice for many queries.
    fn record(&self, walk: bool, elapsed: std::time::Duration, compared: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if compared < TIMED_AT_LEAST || self.pinned.load(Relaxed) {
            return;
        }
        let cell = if walk { &self.walk_ns } else { &self.scan_ns };
        let now = elapsed.as_nanos() as f64 / compared as f64;
        let was = f64::from_bits(cell.load(Relaxed));
        // A 1/16 weight: about the last 16 queries; racing updates may
        // drop one, which only slows the average down.
        let next = if was > 0.0 {
            was + (now.clamp(was / 4.0, was * 4.0) - was) / 16.0
        } else {
            now
        };
        cell.store(next.to_bits(), Relaxed);
    }
}

/// k-NN among the `allowed` keys, by the cheaper strategy for this query:
/// an exact scan of exactly those keys, or a filtered graph walk when the
/// index's estimate of its comparisons (see
/// [`VectorIndex::filtered_walk`]: it samples how many allowed vectors
/// sit around the query, so a filter correlated with the data is seen
/// for what it is here), weighted by the measured per-comparison costs
/// of the two ([`PlanCosts`]), is below the scan's. Always
/// `min(k, allowed)` results, since a walk that comes back short is
/// completed by an exact scan. Returns the hits, the strategy's name (for
/// explain) and how many vectors were compared.
pub fn search_allowed<'a, E: Element>(
    index: &dyn VectorIndex<E>,
    query: impl Into<Query<'a, E>>,
    k: usize,
    ef: usize,
    allowed: &KeySet,
) -> (Vec<Hit>, &'static str, usize) {
    let query = query.into();
    let exact = || exact_among(index, query, k, allowed.keys());
    // A walk compares at least its breadth: no more matches than that are
    // scanned without planning (the plan's descent and sampling would
    // cost about as much as the scan).
    if allowed.len() <= ef.max(k) {
        return (
            exact(),
            "exact scan of filter matches (selective filter)",
            allowed.len(),
        );
    }
    let plan = index.filtered_walk(query, ef.max(k), allowed);
    let ratio = plan
        .as_ref()
        .map_or(1.0, |p| p.costs.walk_to_scan(index.dims()));
    let walk = plan
        .as_ref()
        .map_or(f64::INFINITY, |p| p.compared as f64 * ratio);
    let plan = match plan {
        Some(plan) if walk < allowed.len() as f64 => plan,
        plan => {
            let started = std::time::Instant::now();
            let hits = exact();
            if let Some(plan) = plan {
                plan.costs.record(false, started.elapsed(), allowed.len());
            }
            return (
                hits,
                "exact scan of filter matches (selective filter)",
                allowed.len(),
            );
        }
    };
    // A walk that compares twice what the whole scan would cost gives up:
    // the estimate was wrong (the matches lie far from the query), and
    // the scan then costs at most three times the better strategy (the
    // slack keeps an estimate's noise from wasting walks near the break
    // -even point).
    let budget = (2.0 * allowed.len() as f64 / ratio) as usize;
    let started = std::time::Instant::now();
    let (hits, examined) = index.walk(query, k, &plan, allowed, budget);
    if hits.len() < k.min(allowed.len()) {
        return (
            exact(),
            "filtered graph search, completed by exact scan",
            examined + allowed.len(),
        );
    }
    plan.costs.record(true, started.elapsed(), examined);
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
