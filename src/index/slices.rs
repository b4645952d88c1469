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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use tantivy::query::{EnableScoring, Query, Weight};
use tantivy::{DocAddress, Searcher, TantivyError};

/// Fewest documents a slice searched beside another holds, and a merged
/// part at least holds: below this, handing half a search to another
/// thread costs about what it saves (a thread's wake-up is tens of
/// microseconds; a seven-word query over 20,000 long documents takes
/// about 0.15 ms on one core, `scripts/bench text`).
pub const MIN_SLICE_DOCS: u64 = 25_000;

/// Segments of one level tantivy's log merge policy merges into one
/// (its default, set explicitly by `merge_policy`): a build's parts stay
/// fewer, so they are never merged back together.
const MERGE_FAN_IN: usize = 8;

/// The merge policy of a text index's writer: tantivy's log merge
/// policy, merging [`MERGE_FAN_IN`] segments of a level.
pub fn merge_policy() -> Box<tantivy::indexer::LogMergePolicy> {
    let mut policy = tantivy::indexer::LogMergePolicy::default();
    policy.set_min_num_segments(MERGE_FAN_IN);
    Box::new(policy)
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
/// thread when `crate::cpu::beside` finds a free core, else on this one.
/// Errors: tantivy's, and a slice whose thread panicked.
pub fn best_k(
    searcher: &Searcher,
    query: &dyn Query,
    k: usize,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    best_k_in(searcher, query, k, crate::cores(), MIN_SLICE_DOCS)
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
    let k = k.max(1);
    let weight: Arc<dyn Weight> =
        Arc::from(query.weight(EnableScoring::enabled_from_searcher(searcher))?);
    let slices = slices(searcher, threads, min_docs);
    let bounds = Arc::new(Bounds::new(slices.len()));
    let (send, receive) = mpsc::channel();
    let mut here = vec![0];
    let mut away = 0;
    for (at, slice) in slices.iter().enumerate().skip(1) {
        let (searcher, weight, bounds, send, slice) = (
            searcher.clone(),
            weight.clone(),
            bounds.clone(),
            send.clone(),
            slice.clone(),
        );
        let job = move || {
            // The receiver is gone only when this search failed already.
            let _ = send.send(walk(&searcher, weight.as_ref(), slice, k, &bounds, at));
        };
        if crate::cpu::beside(job) {
            away += 1;
        } else {
            here.push(at);
        }
    }
    // Only the jobs hold senders now: a job that panics drops its own,
    // and `recv` then fails rather than waiting for ever.
    drop(send);
    let mut found = Vec::with_capacity(k * slices.len());
    for at in here {
        found.extend(walk(
            searcher,
            weight.as_ref(),
            slices[at].clone(),
            k,
            &bounds,
            at,
        )?);
    }
    for _ in 0..away {
        let part = receive
            .recv()
            .map_err(|_| TantivyError::InternalError("a search slice's thread failed".into()))?;
        found.extend(part?);
    }
    found.sort_unstable_by(|a, b| b.cmp(a));
    found.truncate(k);
    Ok(found.into_iter().map(|r| (r.0, r.1)).collect())
}

/// Runs of consecutive segment ordinals holding about equal numbers of
/// documents: at most `threads`, each of about `min_docs` documents or
/// more (one run for a smaller index), together every segment.
fn slices(searcher: &Searcher, threads: usize, min_docs: u64) -> Vec<Range<usize>> {
    let sizes: Vec<u64> = searcher
        .segment_readers()
        .iter()
        .map(|r| u64::from(r.max_doc()))
        .collect();
    let total: u64 = sizes.iter().sum();
    let count = usize::try_from(total / min_docs.max(1))
        .unwrap_or(usize::MAX)
        .min(threads)
        .min(sizes.len())
        .max(1);
    let mut out = Vec::with_capacity(count);
    let (mut start, mut sum) = (0, 0u64);
    for (at, size) in sizes.iter().enumerate() {
        sum += size;
        // Close a slice once it reaches its share of the whole, leaving
        // a segment for each slice still to come.
        let due = total * (out.len() as u64 + 1) / count as u64;
        let left = sizes.len() - at - 1;
        if out.len() + 1 < count && sum >= due && left >= count - out.len() - 1 {
            out.push(start..at + 1);
            start = at + 1;
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
        let reader = searcher.segment_reader(u32::try_from(ord).unwrap_or(u32::MAX));
        let ord = u32::try_from(ord).unwrap_or(u32::MAX);
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
            floor = floor.max(if at < me { score } else { score.next_down() });
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
        assert_eq!(bounds.floor(1), 3.0f32.next_down());
        assert_eq!(bounds.floor(2), 2.0);
        bounds.raise(2, 1.0);
        assert_eq!(bounds.floor(0), 3.0f32.next_down(), "bounds only rise");
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
