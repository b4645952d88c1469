//! The `k` best matches of a tantivy query over an index's segments,
//! searched in slices that run beside each other when cores are free
//! (Lucene's `IndexSearcher` leaf slices), and how a built index is
//! merged so that it has slices to search.
//!
//! Every slice keeps its own best `k` and publishes the `k`-th score
//! once it holds `k` (Lucene's `MaxScoreAccumulator` shares the same
//! bound): the block-max WAND walk of every other slice then skips what
//! cannot beat it. Slices are runs of consecutive segments, so equal
//! scores still go to the earlier document: a slice prunes at another's
//! bound only strictly below it when that slice comes after it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use tantivy::query::{EnableScoring, Query, Weight};
use tantivy::{DocAddress, Searcher, TantivyError};

/// Fewest documents a slice searched beside another holds, and a part a
/// build merges into holds unless the whole index is smaller: below this,
/// handing half a search to another thread costs about what it saves (a
/// thread's wake-up is tens of microseconds; a seven-word query over
/// 20,000 long documents takes about 0.15 ms on one core, `scripts/bench
/// text`).
pub const MIN_SLICE_DOCS: u64 = 25_000;

/// Segments one background merge joins (tantivy's log merge policy's
/// default least per level; a level's candidates are merged in runs of
/// exactly this many). A build makes fewer parts than this.
const MERGE_FAN_IN: usize = 8;

/// How a text index's segments merge in the background: tantivy's log
/// merges among the segments of at most `part / share` documents, where
/// `part` is what one part ([`parts_for`]) of the segments' documents
/// would hold, [`MERGE_FAN_IN`] similar segments at a time (tantivy's
/// policy merges a whole level at once). So no merge makes a segment of
/// more than `MERGE_FAN_IN · part / share` documents, and the segments
/// stay a few dozen per part at most whatever the index's size: a commit,
/// which applies its deletes to every segment and reopens each, never
/// meets one segment per commit since the build began.
#[derive(Debug, Clone, Copy)]
pub struct PartMerges {
    share: u64,
}

impl PartMerges {
    /// While a build runs: segments below a 32nd of a part merge (into at
    /// most a quarter of a part), so the build's final merge can deal
    /// them into parts of equal size.
    pub const BUILDING: PartMerges = PartMerges {
        share: 4 * MERGE_FAN_IN as u64,
    };
    /// Once the index serves: segments below a 16th of a part merge (into
    /// at most half a part), so the parts a build made are never merged
    /// together. Deleted documents in a part stay until a rebuild, as
    /// they did in the one segment a build made before.
    pub const SERVING: PartMerges = PartMerges {
        share: 2 * MERGE_FAN_IN as u64,
    };
}

impl tantivy::indexer::MergePolicy for PartMerges {
    fn compute_merge_candidates(
        &self,
        segments: &[tantivy::index::SegmentMeta],
    ) -> Vec<tantivy::indexer::MergeCandidate> {
        let total: u64 = segments.iter().map(|s| u64::from(s.num_docs())).sum();
        let part = total / parts_for(total) as u64;
        let mut log = tantivy::indexer::LogMergePolicy::default();
        log.set_min_num_segments(MERGE_FAN_IN);
        log.set_max_docs_before_merge(usize::try_from(part / self.share).unwrap_or(usize::MAX));
        // A level's segments come largest first: runs of similar sizes;
        // what is left of a level waits for more.
        log.compute_merge_candidates(segments)
            .into_iter()
            .flat_map(|level| {
                level
                    .0
                    .chunks_exact(MERGE_FAN_IN)
                    .map(|run| tantivy::indexer::MergeCandidate(run.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// How many parts an index of `docs` documents is merged into at the end
/// of a build: one per core, each of at least [`MIN_SLICE_DOCS`], fewer
/// than [`MERGE_FAN_IN`], at least one.
pub fn parts_for(docs: u64) -> usize {
    let by_size = usize::try_from(docs / MIN_SLICE_DOCS).unwrap_or(usize::MAX);
    by_size.min(crate::cores()).clamp(1, MERGE_FAN_IN - 1)
}

/// `sizes` (documents per segment) dealt into `parts` groups of about
/// equal totals, largest first onto the lightest group (the LPT rule);
/// each group lists indexes into `sizes`. Groups come out non-empty, at
/// most `parts` of them.
pub fn groups_of(sizes: &[u64], parts: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| Reverse(sizes[i]));
    let mut groups: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); parts.max(1)];
    for i in order {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(total, _)| *total)
            .expect("at least one group");
        lightest.0 += sizes[i];
        lightest.1.push(i);
    }
    groups
        .into_iter()
        .map(|(_, members)| members)
        .filter(|members| !members.is_empty())
        .collect()
}

/// The `k` (at least 1) best-scoring live matches of `query`, best first,
/// equal scores in document order: what tantivy's `TopDocs` finds. The
/// segments are searched in slices ([`slices`]); a slice runs on another
/// thread when `crate::cpu::beside` finds a free core, else on this one
/// (whichever starts it first).
/// Errors: tantivy's, and a slice whose thread panicked.
pub fn best_k(
    searcher: &Searcher,
    query: &dyn Query,
    k: usize,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    best_k_in(searcher, query, k, crate::cores(), MIN_SLICE_DOCS)
}

/// [`best_k`] of a query whose weight over `searcher` (from its own
/// statistics) is made already.
pub fn best_k_weighted(
    searcher: &Searcher,
    weight: Arc<dyn Weight>,
    k: usize,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    best_k_of(searcher, weight, k, crate::cores(), MIN_SLICE_DOCS)
}

/// [`best_k`] in at most `threads` slices of at least `min_docs`
/// documents.
pub(crate) fn best_k_in(
    searcher: &Searcher,
    query: &dyn Query,
    k: usize,
    threads: usize,
    min_docs: u64,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    let weight: Arc<dyn Weight> =
        Arc::from(query.weight(EnableScoring::enabled_from_searcher(searcher))?);
    best_k_of(searcher, weight, k, threads, min_docs)
}

fn best_k_of(
    searcher: &Searcher,
    weight: Arc<dyn Weight>,
    k: usize,
    threads: usize,
    min_docs: u64,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    let k = k.max(1);
    let slices = slices(searcher, threads, min_docs);
    let bounds = Arc::new(Bounds::new(slices.len()));
    // Whoever starts a slice first claims it: a helper thread, or this
    // one once its own slices are done (a helper still waiting for a
    // thread then costs nothing, and never holds the search up).
    let claimed: Arc<Vec<AtomicBool>> =
        Arc::new((0..slices.len()).map(|_| AtomicBool::new(false)).collect());
    let (send, receive) = mpsc::channel();
    for (at, slice) in slices.iter().enumerate().skip(1) {
        let (searcher, weight, bounds, claimed, send, slice) = (
            searcher.clone(),
            weight.clone(),
            bounds.clone(),
            claimed.clone(),
            send.clone(),
            slice.clone(),
        );
        let job = move || {
            if !claimed[at].swap(true, Ordering::AcqRel) {
                // A claimed slice always answers, even when its walk panics.
                let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    walk(&searcher, weight.as_ref(), slice, k, &bounds, at)
                }))
                .unwrap_or_else(|_| {
                    Err(TantivyError::InternalError(
                        "a search slice's thread panicked".into(),
                    ))
                });
                // The receiver is gone only when this search failed already.
                let _ = send.send(walked);
            }
        };
        crate::cpu::beside(job);
    }
    // Only the jobs hold senders now: `recv` fails rather than waiting for
    // ever should one be dropped unrun.
    drop(send);
    // However this search ends, slices no thread has started yet are
    // left alone: queued helpers then return at once.
    let _unclaimed = ClaimAll(claimed.clone());
    let mut found = Vec::with_capacity(k * slices.len());
    let mut owed = 0;
    for (at, slice) in slices.iter().enumerate() {
        if claimed[at].swap(true, Ordering::AcqRel) {
            owed += 1;
            continue;
        }
        found.extend(walk(
            searcher,
            weight.as_ref(),
            slice.clone(),
            k,
            &bounds,
            at,
        )?);
    }
    for _ in 0..owed {
        let part = receive
            .recv()
            .map_err(|_| TantivyError::InternalError("a search slice's thread failed".into()))?;
        found.extend(part?);
    }
    found.sort_unstable_by(|a, b| b.cmp(a));
    found.truncate(k);
    Ok(found.into_iter().map(|r| (r.0, r.1)).collect())
}

/// Claims every slice when dropped.
struct ClaimAll(Arc<Vec<AtomicBool>>);

impl Drop for ClaimAll {
    fn drop(&mut self) {
        for slice in self.0.iter() {
            slice.store(true, Ordering::Release);
        }
    }
}

/// Runs of consecutive segment ordinals holding about equal numbers of
/// documents: at most `threads`, each of at least `min_docs` documents
/// (one run for a smaller index), together every segment.
fn slices(searcher: &Searcher, threads: usize, min_docs: u64) -> Vec<Range<usize>> {
    let sizes: Vec<u64> = searcher
        .segment_readers()
        .iter()
        .map(|r| u64::from(r.max_doc()))
        .collect();
    let total: u64 = sizes.iter().sum();
    let min_docs = min_docs.max(1);
    let count = usize::try_from(total / min_docs)
        .unwrap_or(usize::MAX)
        .min(threads)
        .max(1);
    let share = total / count as u64;
    let mut out = Vec::with_capacity(count);
    let (mut start, mut sum, mut seen) = (0, 0u64, 0u64);
    for (at, size) in sizes.iter().enumerate() {
        sum += size;
        seen += size;
        // Close a slice at its share of the whole, if what is left makes
        // a slice of at least `min_docs` too.
        if out.len() + 1 < count && sum >= share && total - seen >= min_docs {
            out.push(start..at + 1);
            start = at + 1;
            sum = 0;
        }
    }
    out.push(start..sizes.len());
    out
}

/// The best `k` of the segments `ords`, as [`best_k`] keeps them, as
/// slice `me` of `bounds`.
fn walk(
    searcher: &Searcher,
    weight: &dyn Weight,
    ords: Range<usize>,
    k: usize,
    bounds: &Bounds,
    me: usize,
) -> tantivy::Result<Vec<Ranked>> {
    let mut heap: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(k + 1);
    let mut own = f32::MIN;
    for ord in ords {
        let ord = u32::try_from(ord).unwrap_or(u32::MAX);
        let reader = searcher.segment_reader(ord);
        let alive = reader.alive_bitset();
        let threshold = own.max(bounds.floor(me));
        weight.for_each_pruning(threshold, reader, &mut |doc, score| {
            if !alive.is_some_and(|a| a.is_deleted(doc)) {
                heap.push(Reverse(Ranked(score, DocAddress::new(ord, doc))));
                if heap.len() > k {
                    heap.pop();
                }
                if heap.len() == k {
                    own = heap.peek().map_or(f32::MIN, |r| r.0 .0);
                    bounds.raise(me, own);
                }
            }
            own.max(bounds.floor(me))
        })?;
    }
    Ok(heap.into_iter().map(|r| r.0).collect())
}

/// Each slice's `k`-th best score once it holds `k` matches, as
/// order-preserving bits (0: not yet).
struct Bounds(Vec<AtomicU32>);

impl Bounds {
    fn new(slices: usize) -> Bounds {
        Bounds((0..slices).map(|_| AtomicU32::new(0)).collect())
    }

    /// Slice `me` holds `k` matches scoring at least `score`.
    fn raise(&self, me: usize, score: f32) {
        self.0[me].fetch_max(ordered_bits(score), Ordering::Relaxed);
    }

    /// The score slice `me` need not beat: another slice already holds
    /// `k` matches that outrank any match of `me` scoring this or less
    /// (an earlier slice wins ties, so a later one's bound counts only
    /// below it). `f32::MIN` while none does.
    fn floor(&self, me: usize) -> f32 {
        let mut floor = f32::MIN;
        for (at, bits) in self.0.iter().enumerate() {
            let bits = bits.load(Ordering::Relaxed);
            if at == me || bits == 0 {
                continue;
            }
            let score = from_ordered_bits(bits);
            // A few steps below a later slice's bound: block-max WAND's
            // upper bounds sum the same scores in another order, and may
            // round a match scoring exactly the bound below it.
            let below = (score - score.abs() * 4.0 * f32::EPSILON).next_down();
            floor = floor.max(if at < me { score } else { below });
        }
        floor
    }
}

/// `x`'s bits, mapped so that unsigned order is `f32::total_cmp`'s; never
/// 0 for a number.
fn ordered_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

fn from_ordered_bits(bits: u32) -> f32 {
    if bits >> 31 == 1 {
        f32::from_bits(bits & 0x7fff_ffff)
    } else {
        f32::from_bits(!bits)
    }
}

/// A match kept by [`best_k`]: higher scores first, then earlier
/// documents.
#[derive(PartialEq)]
struct Ranked(f32, DocAddress);

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Ranked) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Ranked) -> std::cmp::Ordering {
        self.0
            .total_cmp(&other.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_bits_keep_the_order_of_scores() {
        let scores = [f32::MIN, -3.5, -0.0, 0.0, 1e-30, 0.5, 7.25, f32::MAX];
        for pair in scores.windows(2) {
            assert!(ordered_bits(pair[0]) < ordered_bits(pair[1]), "{pair:?}");
        }
        for s in scores {
            assert_ne!(ordered_bits(s), 0);
            assert_eq!(from_ordered_bits(ordered_bits(s)).to_bits(), s.to_bits());
        }
    }

    #[test]
    fn a_later_slice_bound_counts_only_strictly_below_it() {
        let bounds = Bounds::new(3);
        assert_eq!(bounds.floor(1), f32::MIN);
        bounds.raise(0, 2.0);
        bounds.raise(2, 3.0);
        let below = bounds.floor(1);
        assert!(
            below < 3.0f32.next_down().next_down() && below > 2.999,
            "{below}"
        );
        assert_eq!(bounds.floor(2), 2.0);
        bounds.raise(2, 1.0);
        assert_eq!(bounds.floor(0), below, "bounds only rise");
    }

    #[test]
    fn background_merges_join_small_segments_and_leave_parts_apart() {
        use tantivy::indexer::MergePolicy;
        let index = tantivy::Index::create_in_ram(tantivy::schema::Schema::builder().build());
        let meta =
            |docs| index.new_segment_meta(tantivy::index::SegmentId::generate_random(), docs);
        // Two parts a build made, and 400 small commits since.
        let mut segments = vec![meta(120_000), meta(120_000)];
        segments.extend((0..400).map(|_| meta(500)));
        for policy in [PartMerges::BUILDING, PartMerges::SERVING] {
            let candidates = policy.compute_merge_candidates(&segments);
            // Eight at a time, never a whole level at once.
            assert!(
                candidates.iter().all(|c| c.0.len() == MERGE_FAN_IN),
                "{policy:?}"
            );
            let merged: Vec<_> = candidates.iter().flat_map(|c| c.0.iter()).collect();
            assert_eq!(merged.len(), 400, "{policy:?}");
            assert!(
                !merged.contains(&&segments[0].id()) && !merged.contains(&&segments[1].id()),
                "{policy:?}"
            );
        }
        // While building, segments over a 32nd of a part (here 336,000
        // documents in at most 7 parts) are left for the final merge to
        // place, eight of a level or not.
        let mut building = vec![meta(120_000), meta(120_000)];
        building.extend((0..8).map(|_| meta(12_000)));
        assert!(PartMerges::BUILDING
            .compute_merge_candidates(&building)
            .is_empty());
        // Once serving, eight small segments beside the parts merge.
        let mut serving = vec![meta(120_000), meta(120_000)];
        serving.extend((0..8).map(|_| meta(2_000)));
        let candidates = PartMerges::SERVING.compute_merge_candidates(&serving);
        assert_eq!(candidates.len(), 1);
        assert!(candidates[0]
            .0
            .iter()
            .all(|id| serving[2..].iter().any(|m| m.id() == *id)));
        // Eight parts of one level (tantivy's plain log policy merges
        // them): never merged while serving, on any number of cores.
        let parts: Vec<_> = (0..8).map(|_| meta(60_000)).collect();
        assert!(PartMerges::SERVING
            .compute_merge_candidates(&parts)
            .is_empty());
        let mut plain = tantivy::indexer::LogMergePolicy::default();
        plain.set_min_num_segments(MERGE_FAN_IN);
        assert!(!plain.compute_merge_candidates(&parts).is_empty());
    }

    #[test]
    fn groups_share_the_documents_evenly() {
        let sizes = [10, 40, 30, 20, 5, 5];
        let groups = groups_of(&sizes, 2);
        assert_eq!(groups.len(), 2);
        let totals: Vec<u64> = groups
            .iter()
            .map(|g| g.iter().map(|&i| sizes[i]).sum())
            .collect();
        assert_eq!(totals.iter().sum::<u64>(), 110);
        assert!(totals.iter().all(|&t| t == 55), "{totals:?}");
        let mut all: Vec<usize> = groups.concat();
        all.sort_unstable();
        assert_eq!(all, (0..sizes.len()).collect::<Vec<_>>());
        assert_eq!(groups_of(&[7], 4), vec![vec![0]]);
    }
}
