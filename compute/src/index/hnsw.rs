//! HNSW (Malkov & Yashunin, 2016): a layered proximity graph.
//!
//! Links live in fixed rows ended by a sentinel: `2 * max_edges` per node
//! on layer 0, `max_edges` per node and layer above, where only about one
//! node in `max_edges` has rows. Searches reuse a
//! per-thread scratch (visited bitset, candidate heap) and prefetch the
//! vectors they are about to compare, since at 100k vectors and beyond the
//! graph walk waits on memory more than on arithmetic. Removal is a tombstone: a
//! removed node still routes searches but is never returned. A search
//! restricted to an allowed set walks the same graph and only admits
//! allowed nodes to the result set, widening until it has `ef` of them or
//! the reachable graph is exhausted.

use super::element::{Dtype, Element, RowDistance};
use super::engine::{retype, Engine, Widen};
use super::persist::{corrupt, Reader, Writer, KIND_HNSW};
use super::{Hit, KeySet, PlanCosts, Query, Similarity, VectorIndex, WalkPlan};
use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io;

/// Build parameters, named as in Atlas's `hnswOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on the upper layers (twice this on layer 0).
    pub max_edges: usize,
    /// Search breadth while inserting.
    pub num_edge_candidates: usize,
    /// Seed of the level generator, so builds are reproducible.
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            max_edges: 16,
            num_edge_candidates: 100,
            seed: 0x00c0_ffee,
        }
    }
}

const MAX_LEVEL: usize = 16;

/// At most `1 / DUPLICATE_SHARE` of a node's links go to copies of one
/// vector (see `select`).
const DUPLICATE_SHARE: usize = 4;

/// Layer-0 link lists a filtered walk's plan reads around the query to
/// sample the filter's local share (see `filtered_walk`): with 32 links
/// each, about 260 nodes.
const SAMPLED_LISTS: usize = 8;

/// Live vectors from which `Hnsw::insert_many` plans a batch in
/// parallel (below it, one at a time).
const PARALLEL_FROM: usize = 2_000;

/// A parallel batch is at most this share of the live vectors (its
/// members find each other only by comparing all pairs), and between 8
/// and 128 per thread.
const BATCH_SHARE: usize = 64;

/// A parallel batch's largest size whatever the thread count: each member
/// compares itself with every other (see `Hnsw::plan`).
const MAX_BATCH: usize = 512;

/// How many neighbours ahead of the one being compared are prefetched.
const PREFETCH_AHEAD: usize = 2;

/// Per-thread buffers reused by every search on that thread.
#[derive(Default)]
struct Scratch {
    visited: Vec<u64>,
    fresh: Vec<u32>,
    candidates: BinaryHeap<Reverse<Near>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// A hint to load `bytes` from `at` into the cache; no effect on
/// correctness, nothing on targets without one.
#[inline(always)]
fn prefetch(at: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults, whatever the address; this one
        // is inside the row anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                at.wrapping_add(line).cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, bytes);
}

/// No upper layers (in `upper_at`).
const NONE: u32 = u32::MAX;

/// Rows per block of `Rows`.
const BLOCK_ROWS: usize = 1024;

/// Fixed-width rows stored in blocks of `BLOCK_ROWS`: growing allocates a
/// new block and never copies (or leaves behind) what is there, so an
/// index built one insert at a time holds about what it stores, not twice
/// that after reallocations.
#[derive(Clone)]
struct Rows<T> {
    width: usize,
    rows: usize,
    blocks: Vec<Box<[T]>>,
}

impl<T: Copy + Default> Rows<T> {
    fn new(width: usize) -> Rows<T> {
        Rows {
            width,
            rows: 0,
            blocks: Vec::new(),
        }
    }

    fn from_flat(width: usize, flat: &[T]) -> Option<Rows<T>> {
        if width == 0 || flat.len() % width != 0 {
            return None;
        }
        let mut rows = Rows::new(width);
        rows.grow_to(flat.len() / width);
        for (i, row) in flat.chunks_exact(width).enumerate() {
            rows.row_mut(i).copy_from_slice(row);
        }
        Some(rows)
    }

    fn len(&self) -> usize {
        self.rows
    }

    fn grow_to(&mut self, rows: usize) {
        while self.blocks.len() * BLOCK_ROWS < rows {
            self.blocks
                .push(vec![T::default(); BLOCK_ROWS * self.width].into_boxed_slice());
        }
        self.rows = self.rows.max(rows);
    }

    fn row(&self, i: usize) -> &[T] {
        &self.blocks[i / BLOCK_ROWS][(i % BLOCK_ROWS) * self.width..][..self.width]
    }

    fn row_mut(&mut self, i: usize) -> &mut [T] {
        &mut self.blocks[i / BLOCK_ROWS][(i % BLOCK_ROWS) * self.width..][..self.width]
    }

    fn flat(&self) -> Vec<T> {
        (0..self.rows)
            .flat_map(|i| self.row(i).iter().copied())
            .collect()
    }
}

/// An HNSW graph over vectors stored as `E` (see `element`).
pub struct Hnsw<E: Element = f32> {
    dims: usize,
    similarity: Similarity,
    params: HnswParams,
    /// Links per node on layer 0.
    m0: usize,
    distance: RowDistance<E>,
    vectors: Rows<E>,
    /// Top layer of each slot; `None` where no vector was inserted.
    level: Vec<Option<u8>>,
    removed: Vec<bool>,
    /// Layer 0: `m0` links per node, ended by `NONE` when fewer.
    links0: Rows<u32>,
    /// Layers 1.. of the nodes that have them: row `upper_at[node] +
    /// layer - 1` of `upper`; `NONE` for layer-0-only nodes.
    upper_at: Vec<u32>,
    upper: Rows<u32>,
    entry: Option<u32>,
    top_level: usize,
    live: usize,
    /// Filtered strategies' measured costs (see `search_allowed`).
    plan_costs: PlanCosts,
    rng: u64,
}

/// A (distance, key) pair ordered by distance, then key.
#[derive(Clone, Copy, PartialEq)]
struct Near(f32, u32);

impl Eq for Near {}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

impl<E: Element> Hnsw<E> {
    pub fn new(dims: usize, similarity: Similarity, params: HnswParams) -> Hnsw<E> {
        let max_edges = params.max_edges.clamp(2, 512);
        Hnsw {
            dims,
            similarity,
            params: HnswParams {
                max_edges,
                ..params
            },
            m0: 2 * max_edges,
            distance: E::distance_fn(similarity),
            vectors: Rows::new(E::row_len(dims).max(1)),
            level: Vec::new(),
            removed: Vec::new(),
            links0: Rows::new(2 * max_edges),
            upper_at: Vec::new(),
            upper: Rows::new(max_edges),
            entry: None,
            top_level: 0,
            live: 0,
            plan_costs: PlanCosts::default(),
            rng: params.seed | 1,
        }
    }

    pub(crate) fn read(
        r: &mut Reader<'_>,
        dims: usize,
        similarity: Similarity,
    ) -> io::Result<Hnsw<E>> {
        let max_edges = r.usize()?;
        let num_edge_candidates = r.usize()?;
        let seed = r.u64()?;
        if !(2..=512).contains(&max_edges) {
            return Err(corrupt("maxEdges"));
        }
        let mut h = Hnsw::new(
            dims,
            similarity,
            HnswParams {
                max_edges,
                num_edge_candidates,
                seed,
            },
        );
        h.rng = r.u64()?;
        h.vectors = Rows::from_flat(E::row_len(dims).max(1), &E::read(r)?)
            .ok_or_else(|| corrupt("hnsw vectors"))?;
        let levels = r.u32s()?;
        let slots = levels.len();
        if h.vectors.len() != slots {
            return Err(corrupt("hnsw vectors"));
        }
        h.level = levels
            .iter()
            .map(|&l| match l {
                u32::MAX => Ok(None),
                l if l as usize <= MAX_LEVEL => Ok(Some(l as u8)),
                _ => Err(corrupt("hnsw level")),
            })
            .collect::<io::Result<_>>()?;
        h.removed = vec![false; slots];
        for k in r.u32s()? {
            *h.removed
                .get_mut(k as usize)
                .ok_or_else(|| corrupt("hnsw removed key"))? = true;
        }
        let links0 = r.u32s()?;
        if !links0.iter().all(|n| (*n as usize) < slots) {
            return Err(corrupt("hnsw link target"));
        }
        let counts = r.u32s()?;
        if links0.len() != slots * h.m0 || counts.len() != slots {
            return Err(corrupt("hnsw layer 0"));
        }
        if counts.iter().any(|&c| c as usize > h.m0) {
            return Err(corrupt("hnsw link count"));
        }
        h.links0.grow_to(slots);
        for (node, &count) in counts.iter().enumerate() {
            h.set_neighbours(node as u32, 0, &links0[node * h.m0..][..count as usize]);
        }
        h.upper_at = vec![NONE; slots];
        for node in 0..slots {
            let layers = r.usize()?;
            if layers != h.level[node].map_or(0, usize::from) {
                return Err(corrupt("hnsw upper layers"));
            }
            h.add_upper(node, layers);
            for layer in 1..=layers {
                let links = r.u32s()?;
                if links.len() > max_edges || !links.iter().all(|&n| (n as usize) < slots) {
                    return Err(corrupt("hnsw upper links"));
                }
                h.set_neighbours(node as u32, layer, &links);
            }
        }
        let entry = r.u32()?;
        h.entry = (entry != u32::MAX).then_some(entry);
        if h.entry
            .is_some_and(|e| h.level.get(e as usize).copied().flatten().is_none())
        {
            return Err(corrupt("hnsw entry point"));
        }
        h.top_level = r.usize()?;
        h.live = (0..slots)
            .filter(|&n| h.level[n].is_some() && !h.removed[n])
            .count();
        Ok(h)
    }

    fn vec_of(&self, node: u32) -> &[E] {
        self.vectors.row(node as usize)
    }

    /// The same graph over the same vectors stored as `F` (a dtype that
    /// holds every value of `E`: see `element::Dtype`), so distances, and
    /// with them every link, stay what they were.
    pub fn widened<F: Element>(&self) -> Hnsw<F> {
        let mut values = Vec::with_capacity(self.dims);
        let mut vectors = Rows::new(F::row_len(self.dims).max(1));
        vectors.grow_to(self.vectors.len());
        for node in 0..self.vectors.len() {
            if self.level[node].is_none() {
                continue;
            }
            E::values(self.vec_of(node as u32), self.dims, &mut values);
            if let Some(row) = F::from_values(&values, self.similarity) {
                vectors.row_mut(node).copy_from_slice(&row);
            }
        }
        Hnsw {
            dims: self.dims,
            similarity: self.similarity,
            params: self.params,
            m0: self.m0,
            distance: F::distance_fn(self.similarity),
            vectors,
            level: self.level.clone(),
            removed: self.removed.clone(),
            links0: self.links0.clone(),
            upper_at: self.upper_at.clone(),
            upper: self.upper.clone(),
            entry: self.entry,
            top_level: self.top_level,
            live: self.live,
            plan_costs: PlanCosts::default(),
            rng: self.rng,
        }
    }

    /// The rows holding `layer`'s links, and the node's row in them.
    fn links_row(&self, node: u32, layer: usize) -> (&Rows<u32>, usize) {
        if layer == 0 {
            (&self.links0, node as usize)
        } else {
            (
                &self.upper,
                self.upper_at[node as usize] as usize + layer - 1,
            )
        }
    }

    fn neighbours(&self, node: u32, layer: usize) -> &[u32] {
        let (rows, at) = self.links_row(node, layer);
        let row = rows.row(at);
        &row[..row.iter().position(|&l| l == NONE).unwrap_or(row.len())]
    }

    /// Gives `node` empty rows on layers `1..=layers`.
    fn add_upper(&mut self, node: usize, layers: usize) {
        if layers > 0 {
            self.upper_at[node] = self.upper.len() as u32;
            self.upper.grow_to(self.upper.len() + layers);
        }
        for layer in 1..=layers {
            self.set_neighbours(node as u32, layer, &[]);
        }
    }

    /// Asks the CPU to start loading a node's vector.
    #[inline(always)]
    fn prefetch_vector(&self, node: u32) {
        let row = self.vectors.row(node as usize);
        prefetch(row.as_ptr().cast(), std::mem::size_of_val(row));
    }

    #[inline(always)]
    fn prefetch_links(&self, node: u32, layer: usize) {
        let (rows, at) = self.links_row(node, layer);
        let row = rows.row(at);
        prefetch(row.as_ptr().cast(), row.len() * 4);
    }

    fn set_neighbours(&mut self, node: u32, layer: usize, links: &[u32]) {
        let (_, at) = self.links_row(node, layer);
        let rows = if layer == 0 {
            &mut self.links0
        } else {
            &mut self.upper
        };
        let row = rows.row_mut(at);
        row[..links.len()].copy_from_slice(links);
        if let Some(end) = row.get_mut(links.len()) {
            *end = NONE;
        }
    }

    fn random_level(&mut self) -> usize {
        // xorshift64*, then the exponential level distribution with mL = 1/ln(M).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let bits = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        let uniform = (bits as f64 + 1.0) / (1u64 << 53) as f64;
        let ml = 1.0 / (self.params.max_edges as f64).ln();
        ((-uniform.ln() * ml) as usize).min(MAX_LEVEL)
    }

    fn grow(&mut self, slot: usize) {
        if self.level.len() > slot {
            return;
        }
        let n = slot + 1;
        self.vectors.grow_to(n);
        self.level.resize(n, None);
        self.removed.resize(n, false);
        self.links0.grow_to(n);
        self.upper_at.resize(n, NONE);
    }

    /// Greedy descent from `entry` through the layers above `to_layer - 1`
    /// (the top down to `to_layer`): the node nearest the query it ends on.
    fn descend<D: Fn(&[E]) -> f32>(
        &self,
        dist: &D,
        entry: u32,
        to_layer: usize,
        examined: &mut usize,
    ) -> Near {
        *examined += 1;
        let mut best = Near(dist(self.vec_of(entry)), entry);
        for layer in (to_layer..=self.top_level).rev() {
            best = self.greedy(dist, best, layer, examined);
        }
        best
    }

    /// Greedy descent on one layer from `start` towards `query`.
    fn greedy<D: Fn(&[E]) -> f32>(
        &self,
        dist: &D,
        mut best: Near,
        layer: usize,
        examined: &mut usize,
    ) -> Near {
        loop {
            let mut improved = false;
            for &n in self.neighbours(best.1, layer) {
                *examined += 1;
                let d = dist(self.vec_of(n));
                if d < best.0 {
                    best = Near(d, n);
                    improved = true;
                }
            }
            if !improved {
                return best;
            }
        }
    }

    /// Beam search on one layer. Only nodes that `admit` accepts enter the
    /// results; every node routes. Returns results nearest first.
    fn search_layer<D: Fn(&[E]) -> f32>(
        &self,
        dist: &D,
        entries: &[Near],
        ef: usize,
        layer: usize,
        admit: impl Fn(u32) -> bool,
        (examined, budget): (&mut usize, usize),
    ) -> Vec<Near> {
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch {
                visited,
                fresh,
                candidates,
            } = scratch;
            visited.clear();
            visited.resize(self.level.len().div_ceil(64), 0);
            let mut seen = |n: u32| {
                let (w, b) = (n as usize / 64, n % 64);
                let fresh = visited[w] & (1 << b) == 0;
                visited[w] |= 1 << b;
                fresh
            };
            candidates.clear();
            let mut results: BinaryHeap<Near> = BinaryHeap::with_capacity(ef + 1);
            for &e in entries {
                if seen(e.1) {
                    candidates.push(Reverse(e));
                    if admit(e.1) {
                        results.push(e);
                    }
                }
            }
            while results.len() > ef {
                results.pop();
            }
            while let Some(Reverse(current)) = candidates.pop() {
                if results.len() >= ef && results.peek().is_some_and(|w| current.0 > w.0) {
                    break;
                }
                if *examined > budget {
                    return Vec::new();
                }
                if let Some(Reverse(next)) = candidates.peek() {
                    self.prefetch_links(next.1, layer);
                }
                fresh.clear();
                fresh.extend(
                    self.neighbours(current.1, layer)
                        .iter()
                        .copied()
                        .filter(|&n| seen(n)),
                );
                for &n in fresh.iter().take(PREFETCH_AHEAD) {
                    self.prefetch_vector(n);
                }
                for (i, &n) in fresh.iter().enumerate() {
                    if let Some(&ahead) = fresh.get(i + PREFETCH_AHEAD) {
                        self.prefetch_vector(ahead);
                    }
                    *examined += 1;
                    let d = dist(self.vec_of(n));
                    if results.len() < ef || results.peek().is_some_and(|w| d < w.0) {
                        candidates.push(Reverse(Near(d, n)));
                        if admit(n) {
                            results.push(Near(d, n));
                            if results.len() > ef {
                                results.pop();
                            }
                        }
                    }
                }
            }
            results.into_sorted_vec()
        })
    }

    /// The neighbour-selection heuristic: keep a candidate unless a
    /// neighbour already kept is nearer to it than the base is, which
    /// spreads links across directions. Ties keep it, and copies of one
    /// vector may hold up to a quarter of the links: with repeated
    /// vectors (the same text embedded twice, updates back and forth) a
    /// strict test leaves a node a single link into its copies, and copies
    /// filling every link would trap searches; either cuts islands out of
    /// the graph. `candidates` are nearest first.
    fn select(&self, candidates: &[Near], m: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for &Near(d, c) in candidates {
            if kept.len() >= m {
                break;
            }
            let cv = self.vec_of(c);
            let mut copies = 0;
            let diverse = kept.iter().all(|&s| {
                let sv = self.vec_of(s);
                let to_kept = (self.distance)(cv, sv);
                if to_kept == d && cv == sv {
                    copies += 1;
                }
                to_kept >= d
            });
            if diverse && copies < m / DUPLICATE_SHARE {
                kept.push(c);
            }
        }
        kept
    }

    /// Stores `key`'s row and draws its level, without linking it (no
    /// search reaches it until [`Hnsw::link`]): its level, `None` when
    /// the key was stored before (keys are never reused; a repeat is a
    /// no-op).
    fn place(&mut self, key: u32, vector: &[E]) -> Option<usize> {
        assert_eq!(vector.len(), E::row_len(self.dims), "vector length");
        let slot = key as usize;
        self.grow(slot);
        if self.level[slot].is_some() {
            return None;
        }
        self.vectors.row_mut(slot).copy_from_slice(vector);
        self.set_neighbours(key, 0, &[]);
        let level = self.random_level();
        self.level[slot] = Some(u8::try_from(level).expect("level <= 16"));
        self.add_upper(slot, level);
        self.live += 1;
        Some(level)
    }

    /// The links a placed `key` at `level` gets on each layer it shares
    /// with the graph, top first: a descent from the entry point, then a
    /// beam search of breadth `num_edge_candidates` per layer and the
    /// selection heuristic. `mates` (`(key, level)`) are vectors placed
    /// with it but not linked yet, which no search can reach: each one
    /// whose level reaches a layer is a candidate there too, so a batch
    /// of near vectors (a scan in order along a line) links to itself.
    /// Reads the graph only, so several run at once. Needs an entry point.
    fn plan(&self, key: u32, level: usize, mates: &[(u32, usize)]) -> Vec<(usize, Vec<u32>)> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let query = self.vec_of(key);
        let distance = self.distance;
        let dist = |row: &[E]| distance(query, row);
        let mut examined = 0;
        let best = self.descend(&dist, entry, level + 1, &mut examined);
        let mut entries = vec![best];
        let ef = self.params.num_edge_candidates.max(self.params.max_edges);
        let mut plan = Vec::with_capacity(level.min(self.top_level) + 1);
        for layer in (0..=level.min(self.top_level)).rev() {
            let found = self.search_layer(
                &dist,
                &entries,
                ef,
                layer,
                |n| n != key,
                (&mut examined, usize::MAX),
            );
            // The nearest `max_edges` mates at most: the selection
            // heuristic's cost grows with every candidate it weighs.
            let mut near_mates: Vec<Near> = mates
                .iter()
                .filter(|&&(mate, reach)| mate != key && reach >= layer)
                .map(|&(mate, _)| Near(dist(self.vec_of(mate)), mate))
                .collect();
            let chosen = if near_mates.is_empty() {
                self.select(&found, self.params.max_edges)
            } else {
                let keep = self.params.max_edges.min(near_mates.len());
                near_mates.select_nth_unstable(keep - 1);
                near_mates.truncate(keep);
                let mut candidates = found.clone();
                candidates.append(&mut near_mates);
                candidates.sort();
                self.select(&candidates, self.params.max_edges)
            };
            plan.push((layer, chosen));
            entries = found;
        }
        plan
    }

    /// Gives `key` its planned links and links each neighbour back; a
    /// level above the graph's top makes `key` the entry point.
    fn link(&mut self, key: u32, level: usize, plan: Vec<(usize, Vec<u32>)>) {
        for (layer, chosen) in plan {
            self.set_neighbours(key, layer, &chosen);
            for &n in &chosen {
                self.link_back(n, key, layer);
            }
        }
        if level > self.top_level {
            self.top_level = level;
            self.entry = Some(key);
        }
    }

    fn link_back(&mut self, node: u32, new: u32, layer: usize) {
        let links = self.with_back_link(node, self.neighbours(node, layer), new, layer);
        self.set_neighbours(node, layer, &links);
    }

    /// `node`'s links on `layer` once `new` links to it: `links` (its
    /// current ones) with `new` added, or, when they are full, the
    /// selection heuristic's pick of both. Reads the graph only.
    fn with_back_link(&self, node: u32, links: &[u32], new: u32, layer: usize) -> Vec<u32> {
        let cap = if layer == 0 {
            self.m0
        } else {
            self.params.max_edges
        };
        if links.contains(&new) {
            // Batch mates that chose each other.
            return links.to_vec();
        }
        if links.len() < cap {
            let mut grown = links.to_vec();
            grown.push(new);
            return grown;
        }
        let base = self.vec_of(node);
        let mut candidates: Vec<Near> = links
            .iter()
            .chain(std::iter::once(&new))
            .map(|&n| Near((self.distance)(base, self.vec_of(n)), n))
            .collect();
        candidates.sort();
        self.select(&candidates, cap)
    }

    /// Runs `work` over `items` split among up to `threads` scoped
    /// threads, the graph read only; the results in `items`' order.
    fn in_parallel<T: Sync, R: Send>(
        &self,
        items: &[T],
        threads: usize,
        work: impl Fn(&Self, &T) -> R + Sync,
    ) -> Vec<R> {
        let per_thread = items.len().div_ceil(threads.max(1)).max(1);
        let work = &work;
        std::thread::scope(|scope| {
            let workers: Vec<_> = items
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || chunk.iter().map(|t| work(self, t)).collect::<Vec<R>>())
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("an index build thread panicked"))
                .collect()
        })
    }
}

impl<E: Element> Hnsw<E> {
    /// The search behind every query form: `dist` gives a stored row's
    /// distance to the query; the layer-0 walk starts `from` a node when
    /// given (a plan's descent already found it), else descends from the
    /// entry point, and gives up (no hits) once it compared more than
    /// `budget` vectors.
    fn search_by<D: Fn(&[E]) -> f32>(
        &self,
        dist: &D,
        k: usize,
        ef: usize,
        allowed: Option<&KeySet>,
        (from, budget): (Option<u32>, usize),
    ) -> (Vec<Hit>, usize) {
        let Some(entry) = self.entry else {
            return (Vec::new(), 0);
        };
        if k == 0 {
            return (Vec::new(), 0);
        }
        let mut examined = 0;
        let best = match from {
            Some(node) => {
                examined += 1;
                Near(dist(self.vec_of(node)), node)
            }
            None => self.descend(dist, entry, 1, &mut examined),
        };
        let admit = |n: u32| !self.removed[n as usize] && allowed.is_none_or(|a| a.contains(n));
        let hits = self
            .search_layer(dist, &[best], ef.max(k), 0, admit, (&mut examined, budget))
            .into_iter()
            .take(k)
            .map(|Near(distance, key)| Hit { key, distance })
            .collect();
        (hits, examined)
    }
}

impl<E: Element> Hnsw<E> {
    /// The filtered planner's measured costs (tests pin them, see
    /// [`PlanCosts::pin`]).
    pub fn plan_costs(&self) -> &PlanCosts {
        &self.plan_costs
    }
}

impl<E: Element> Widen for Hnsw<E> {
    fn widened_into<F: Element>(&self) -> Box<dyn VectorIndex<F>> {
        Box::new(self.widened::<F>())
    }
}

impl<E: Element> VectorIndex<E> for Hnsw<E> {
    fn dims(&self) -> usize {
        self.dims
    }

    fn similarity(&self) -> Similarity {
        self.similarity
    }

    fn insert(&mut self, key: u32, vector: &[E]) {
        let Some(level) = self.place(key, vector) else {
            return;
        };
        if self.entry.is_none() {
            self.entry = Some(key);
            self.top_level = level;
            return;
        }
        let plan = self.plan(key, level, &[]);
        self.link(key, level, plan);
    }

    /// Inserts `items` (each `(key, row)`, as [`VectorIndex::insert`]),
    /// with up to `threads` threads: the graph is searched for a batch of
    /// new vectors at once (a 64th of the live vectors, 8 to 128 per
    /// thread and at most 512 in all, on scoped threads, the graph read
    /// only), each gets its
    /// links, and its neighbours' new lists are worked out in parallel too
    /// (per neighbour, in batch order) and written. A batch's members
    /// cannot reach each other through the graph, so each also weighs
    /// every mate as a candidate (see [`Hnsw::plan`]); until the index
    /// holds 2,000 vectors, and with one thread, vectors go in one at a
    /// time. The result is a
    /// valid graph of the same shape; it differs from a one-at-a-time
    /// build only in which near neighbours each vector found.
    fn insert_many(&mut self, items: &[(u32, &[E])], threads: usize) {
        let threads = threads.max(1);
        let mut rest = items;
        while let Some((&(key, row), tail)) = rest.split_first() {
            // A few vectors (a write, not a scan) are not worth threads.
            if threads == 1
                || self.live < PARALLEL_FROM
                || self.entry.is_none()
                || rest.len() < threads * 8
            {
                self.insert(key, row);
                rest = tail;
                continue;
            }
            let size = (self.live / BATCH_SHARE)
                .min(threads * 128)
                .min(MAX_BATCH)
                .max(threads * 8);
            let (batch, tail) = rest.split_at(rest.len().min(size));
            rest = tail;
            let placed: Vec<(u32, usize)> = batch
                .iter()
                .filter_map(|&(key, row)| self.place(key, row).map(|level| (key, level)))
                .collect();
            let plans = self.in_parallel(&placed, threads, |graph, &(key, level)| {
                graph.plan(key, level, &placed)
            });
            // The new vectors' own links, then their neighbours' links
            // back: each (neighbour, layer)'s new list is worked out from
            // its requests in batch order, the lists in parallel (each
            // reads only its own list and vectors), then written.
            let mut back: Vec<(u32, usize, u32)> = Vec::new();
            for (&(key, _), plan) in placed.iter().zip(&plans) {
                for (layer, chosen) in plan {
                    self.set_neighbours(key, *layer, chosen);
                    back.extend(chosen.iter().map(|&n| (n, *layer, key)));
                }
            }
            back.sort_by_key(|&(n, layer, _)| (n, layer));
            let groups: Vec<&[(u32, usize, u32)]> =
                back.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)).collect();
            let lists = self.in_parallel(&groups, threads, |graph, group| {
                let (node, layer, _) = group[0];
                let mut links = graph.neighbours(node, layer).to_vec();
                for &(_, _, new) in group.iter() {
                    links = graph.with_back_link(node, &links, new, layer);
                }
                links
            });
            for (group, links) in groups.iter().zip(lists) {
                self.set_neighbours(group[0].0, group[0].1, &links);
            }
            for &(key, level) in &placed {
                if level > self.top_level {
                    self.top_level = level;
                    self.entry = Some(key);
                }
            }
        }
    }

    fn remove(&mut self, key: u32) -> bool {
        let slot = key as usize;
        if self.level.get(slot).copied().flatten().is_none() || self.removed[slot] {
            return false;
        }
        self.removed[slot] = true;
        self.live -= 1;
        true
    }

    fn len(&self) -> usize {
        self.live
    }

    fn slots(&self) -> usize {
        self.level.len()
    }

    fn retyped(&self, dtype: Dtype) -> Engine {
        retype(self, dtype)
    }

    fn vector(&self, key: u32) -> Option<&[E]> {
        let slot = key as usize;
        (self.level.get(slot).copied().flatten().is_some() && !self.removed[slot])
            .then(|| self.vec_of(key))
    }

    fn save(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut w = Writer::header(KIND_HNSW, E::DTYPE, self.dims, self.similarity);
        w.usize(self.params.max_edges);
        w.usize(self.params.num_edge_candidates);
        w.u64(self.params.seed);
        w.u64(self.rng);
        E::write(&mut w, &self.vectors.flat());
        let levels: Vec<u32> = self
            .level
            .iter()
            .map(|l| l.map_or(u32::MAX, u32::from))
            .collect();
        w.u32s(&levels);
        let removed: Vec<u32> = (0..self.removed.len())
            .filter(|&n| self.removed[n])
            .map(|n| n as u32)
            .collect();
        w.u32s(&removed);
        // On disk: the links (`m0` per node), then the counts.
        let mut links0 = Vec::with_capacity(self.links0.len() * self.m0);
        let mut counts = Vec::with_capacity(self.links0.len());
        for n in 0..self.links0.len() {
            let links = match self.level[n] {
                Some(_) => self.neighbours(n as u32, 0),
                None => &[],
            };
            links0.extend(links.iter().chain(std::iter::repeat(&0)).take(self.m0));
            counts.push(links.len() as u32);
        }
        w.u32s(&links0);
        w.u32s(&counts);
        for (node, level) in self.level.iter().enumerate() {
            let layers = level.map_or(0, usize::from);
            w.usize(layers);
            for layer in 1..=layers {
                w.u32s(self.neighbours(node as u32, layer));
            }
        }
        w.u32(self.entry.unwrap_or(u32::MAX));
        w.usize(self.top_level);
        w.finish(out)
    }

    /// Estimates the walk from the share of allowed nodes around the
    /// query: after the descent to layer 0, the nodes one and two links
    /// from where it lands (through its first `SAMPLED_LISTS` links) are
    /// checked against `allowed` (no distances; the walk starts there),
    /// and that local share, with the global one as a prior worth a
    /// quarter of the sample, is `s` (a local share of 0 can still mean
    /// matches one cluster away: 16% of the queries at 50% correlated,
    /// whose walks compared about 2,200 vectors, not the 50,000 of a scan).
    /// The walk has to gather `ef` allowed results, so it explores about
    /// `ef / s` nodes, comparing about `m0 / 16` vectors each, and never
    /// fewer than an unfiltered search's `ef · m0 / 3` (both measured
    /// with `scripts/bench ann` on 100k × 128 clustered: 1,679 compared
    /// at s = 0.1, 19,397 at 0.01, 1,077 at 0.5, for ef 100 and m0 32).
    /// Where allowed nodes are rarer around the query than overall (a
    /// filter correlated with the data), the beam widens by
    /// `(global / s)^¼`, at most 1.3×, for recall (`√` cost 15% of the
    /// queries/s at 50% correlated for 0.017 recall@10).
    fn filtered_walk(
        &self,
        query: Query<'_, E>,
        ef: usize,
        allowed: &KeySet,
    ) -> Option<WalkPlan<'_>> {
        let entry = self.entry?;
        let unfiltered = ef * self.m0 / 3;
        if unfiltered as f64 * self.plan_costs.walk_to_scan(self.dims) >= allowed.len() as f64 {
            // No walk is cheaper than this scan: no need to look closer.
            return Some(WalkPlan {
                ef,
                compared: unfiltered,
                costs: &self.plan_costs,
                from: None,
            });
        }
        let global = allowed.len() as f64 / self.live.max(1) as f64;
        let distance = self.distance;
        let dist = |row: &[E]| match query {
            Query::Native(q) => distance(q, row),
            Query::By(dist) => dist(row),
        };
        let best = self.descend(&dist, entry, 1, &mut 0);
        let (mut sampled, mut admitted) = (0usize, 0usize);
        for &n in self.neighbours(best.1, 0).iter().take(SAMPLED_LISTS) {
            for &m in std::iter::once(&n).chain(self.neighbours(n, 0)) {
                sampled += 1;
                admitted += usize::from(!self.removed[m as usize] && allowed.contains(m));
            }
        }
        let share = if sampled == 0 {
            global
        } else {
            (admitted as f64 + global * (sampled / 4) as f64) / (sampled + sampled / 4) as f64
        }
        .max(1.0 / self.live.max(1) as f64);
        let widen = (global / share).powf(0.25).clamp(1.0, 1.3);
        let ef = ((ef as f64 * widen) as usize).max(ef);
        let unfiltered = (ef * self.m0 / 3) as f64;
        let explored = ef as f64 / share * self.m0 as f64 / 16.0;
        let compared = unfiltered.max(explored).min(self.live as f64) as usize;
        Some(WalkPlan {
            ef,
            compared,
            costs: &self.plan_costs,
            from: Some(best.1),
        })
    }

    fn walk(
        &self,
        query: Query<'_, E>,
        k: usize,
        plan: &WalkPlan<'_>,
        allowed: &KeySet,
        budget: usize,
    ) -> (Vec<Hit>, usize) {
        let distance = self.distance;
        let start = (plan.from, budget);
        match query {
            Query::Native(query) => self.search_by(
                &|row: &[E]| distance(query, row),
                k,
                plan.ef,
                Some(allowed),
                start,
            ),
            Query::By(dist) => self.search_by(&dist, k, plan.ef, Some(allowed), start),
        }
    }

    fn search_counted(
        &self,
        query: Query<'_, E>,
        k: usize,
        ef: usize,
        allowed: Option<&KeySet>,
    ) -> (Vec<Hit>, usize) {
        match query {
            Query::Native(query) => {
                let distance = self.distance;
                self.search_by(
                    &|row: &[E]| distance(query, row),
                    k,
                    ef,
                    allowed,
                    (None, usize::MAX),
                )
            }
            Query::By(dist) => self.search_by(&dist, k, ef, allowed, (None, usize::MAX)),
        }
    }
}
