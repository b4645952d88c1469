//! The `k` best matches of a tantivy query over an index's segments,
//! walked by this thread and, when cores are free, helpers beside it
//! (Lucene's `IndexSearcher` slices; intra-segment slices as Lucene 10
//! has them where the weight walks ranges of documents), and how a built
//! index is merged into parts.
//!
//! The documents, laid end to end, are claimed as the walk goes: this
//! thread from the front, helpers from the back, so however late a
//! helper starts and whatever the segments' sizes, the threads finish
//! together ([`Claims`]). Every run of claims keeps its own best `k` and
//! publishes the `k`-th score once it holds `k` (Lucene's
//! `MaxScoreAccumulator` shares the same bound): the pruned walk of every
//! other run then skips what cannot beat it. Equal scores still go to the
//! earlier document: a run prunes at another's bound only strictly below
//! it when that run comes after it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use tantivy::query::{EnableScoring, Query, Weight};
use tantivy::{DocAddress, DocId, Score, Searcher, SegmentReader, TantivyError};

/// Documents per thread of a search: a search over `n` documents asks
/// for at most `n / MIN_SLICE_DOCS - 1` helpers (none below twice this),
/// and a part a build merges into holds this many unless the whole index
/// is smaller. Below it, handing part of a search to another thread
/// costs about what it saves (a thread's wake-up is tens of
/// microseconds; a seven-word query over 20,000 long documents takes
/// about 0.15 ms on one core, `scripts/bench text`).
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

/// A weight whose pruned walk (`Weight::for_each_pruning`) can start at
/// any document of a segment and stop at a limit that grows as it goes:
/// [`best_k_ranged`] then shares a segment between threads (Lucene 10's
/// intra-segment concurrency), so the work splits evenly whatever the
/// segments' sizes.
pub trait RangedWeight: Weight {
    /// Calls `callback` as `for_each_pruning` does, for the documents of
    /// `reader` from `start` on: before each step the walk asks
    /// `limit(want)`, `want` the end (exclusive) of the documents it would
    /// walk next, for the end of what it may score, and stops once the
    /// next document it would score is at or past that end. `limit` never
    /// returns less than it did. The walk returns only once no document
    /// before the last end `limit` gave (the whole segment, should it
    /// never ask) that it did not pass to `callback` could beat the
    /// threshold then in force: [`best_k_ranged`] takes what is left of
    /// the segment's claims as walked.
    /// Errors: tantivy's, reading the postings.
    fn for_each_pruning_from(
        &self,
        threshold: Score,
        reader: &SegmentReader,
        start: DocId,
        limit: &mut dyn FnMut(DocId) -> DocId,
        callback: &mut dyn FnMut(DocId, Score) -> Score,
    ) -> tantivy::Result<()>;
}

/// Fewest documents a thread claims of a segment walked by
/// [`RangedWeight`]s (four of the MaxScore walk's windows): each claim
/// taken from the back opens every term's postings again.
const MIN_PIECE_DOCS: u64 = 4096;

/// The `k` (at least 1) best-scoring live matches of `query`, best first,
/// equal scores in document order: what tantivy's `TopDocs` finds. The
/// segments are shared out among this thread and helpers ([`Claims`]);
/// a helper runs on another thread when `crate::cpu::beside` finds a
/// free core.
/// Errors: tantivy's, and a helper whose thread panicked.
pub fn best_k(
    searcher: &Searcher,
    query: &dyn Query,
    k: usize,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    best_k_in(searcher, query, k, crate::cores(), MIN_SLICE_DOCS)
}

/// [`best_k`] of a weight over `searcher` (from its own statistics) that
/// walks ranges of documents: the threads share segments too, in pieces
/// of 4,096 documents or a 32nd of a thread's share, whichever is more
/// (shorter where a segment ends or the threads meet).
pub fn best_k_ranged(
    searcher: &Searcher,
    weight: Arc<dyn RangedWeight>,
    k: usize,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    best_k_of(
        searcher,
        Walker::Ranges(weight),
        k,
        crate::cores(),
        MIN_SLICE_DOCS,
        MIN_PIECE_DOCS,
    )
}

/// [`best_k`] with at most `threads` threads, one more for each
/// `min_docs` documents.
pub(crate) fn best_k_in(
    searcher: &Searcher,
    query: &dyn Query,
    k: usize,
    threads: usize,
    min_docs: u64,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    let weight: Arc<dyn Weight> =
        Arc::from(query.weight(EnableScoring::enabled_from_searcher(searcher))?);
    best_k_of(searcher, Walker::Segments(weight), k, threads, min_docs, 0)
}

/// What walks the segments.
#[derive(Clone)]
pub(crate) enum Walker {
    /// Any weight: a thread walks whole segments.
    Segments(Arc<dyn Weight>),
    /// Threads walk pieces of segments.
    Ranges(Arc<dyn RangedWeight>),
}

/// The best `k` of `walker`'s matches over `searcher`, this thread walking
/// from the front and up to `threads - 1` helpers (one per `min_docs`
/// documents beyond the first) from the back; a ranged walker's pieces
/// hold at least `min_piece` documents (at least 1).
pub(crate) fn best_k_of(
    searcher: &Searcher,
    walker: Walker,
    k: usize,
    threads: usize,
    min_docs: u64,
    min_piece: u64,
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    let k = k.max(1);
    let claims = Arc::new(Claims::of(searcher, &walker, threads, min_docs, min_piece));
    let (send, receive) = mpsc::channel();
    for _ in 1..claims.threads {
        let (searcher, walker, claims, send) = (
            searcher.clone(),
            walker.clone(),
            claims.clone(),
            send.clone(),
        );
        crate::cpu::beside(move || {
            let Some(first) = claims.back(true) else {
                return;
            };
            // A helper that claimed always answers, even when it panics.
            let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                walk_back(&searcher, &walker, &claims, first, k)
            }))
            .unwrap_or_else(|_| {
                Err(TantivyError::InternalError(
                    "a search helper's thread panicked".into(),
                ))
            });
            // The receiver is gone only when this search failed already.
            let _ = send.send(walked);
        });
    }
    drop(send);
    // However this search ends, what no thread has claimed yet is left
    // alone: helpers still queued then return at once.
    let closing = Closing(&claims);
    let mut found = walk_front(searcher, &walker, &claims, k)?;
    let helpers = closing.close();
    for _ in 0..helpers {
        let part = answer(&receive)
            .ok_or_else(|| TantivyError::InternalError("a search helper's thread failed".into()))?;
        found.extend(part?);
    }
    found.sort_unstable_by(|a, b| b.cmp(a));
    found.truncate(k);
    Ok(found.into_iter().map(|r| (r.0, r.1)).collect())
}

/// Longest this thread spins for a helper's answer before it sleeps: a
/// helper still walking when the front runs out has at most its last
/// claim left, a few microseconds of work, while waking a thread that
/// sleeps on a channel takes tens of microseconds on a virtual machine
/// whose other core is idle.
const SPIN_FOR_ANSWER: std::time::Duration = std::time::Duration::from_micros(100);

/// The next answer on `receive`: spun for up to [`SPIN_FOR_ANSWER`], then
/// waited for. `None` when every sender is gone.
fn answer<T>(receive: &mpsc::Receiver<T>) -> Option<T> {
    let started = std::time::Instant::now();
    loop {
        for _ in 0..64 {
            match receive.try_recv() {
                Ok(answer) => return Some(answer),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        if started.elapsed() >= SPIN_FOR_ANSWER {
            return receive.recv().ok();
        }
    }
}

/// Closes the claims when dropped.
struct Closing<'a>(&'a Claims);

impl Closing<'_> {
    /// Closes the claims now: how many helpers claimed something.
    fn close(self) -> usize {
        self.0.close()
    }
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The documents of a search's segments, laid end to end in segment
/// order, as threads claim them (guided self-scheduling, Polychronopoulos
/// & Kuck, IEEE TC 1987): the calling thread claims from the front, a
/// piece at a time, and walks on without reopening anything while its
/// next piece is in the same segment; each helper claims from the back
/// a share of what is left (`left / threads`, at least a piece), so the
/// threads meet wherever their speeds and start times put them. Whole
/// segments are claimed when the walker cannot walk ranges. Every claim
/// lies within one segment; the front's run (one heap, across segments)
/// precedes every helper's claim.
struct Claims {
    /// Where each segment starts, and the total at the end.
    starts: Vec<u64>,
    threads: u64,
    /// Documents a front claim takes; 0: whole segments.
    piece: u64,
    state: std::sync::Mutex<Claimed>,
    bounds: Bounds,
}

#[derive(Default)]
struct Claimed {
    /// Everything before `front` and from `back` on is claimed.
    front: u64,
    back: u64,
    /// Helpers that claimed something; claims that started a run.
    helpers: usize,
}

/// A claimed piece: a segment's ordinal, its documents, and the slot of
/// [`Bounds`] its run publishes in.
struct Piece {
    ord: usize,
    docs: Range<DocId>,
    slot: usize,
}

impl Claims {
    /// The claims of a search of `searcher`'s segments by `walker`: at
    /// most `threads` threads, one more for each `min_docs` documents
    /// beyond the first, and for whole segments no more threads than
    /// segments that hold documents; a ranged walker's pieces hold at
    /// least `min_piece` documents.
    fn of(
        searcher: &Searcher,
        walker: &Walker,
        threads: usize,
        min_docs: u64,
        min_piece: u64,
    ) -> Claims {
        let sizes: Vec<u32> = searcher
            .segment_readers()
            .iter()
            .map(SegmentReader::max_doc)
            .collect();
        let total: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
        let mut threads = usize::try_from(total / min_docs.max(1))
            .unwrap_or(usize::MAX)
            .min(threads)
            .max(1);
        let piece = match walker {
            Walker::Ranges(_) => Some(min_piece),
            Walker::Segments(_) => {
                // Segments are not shared.
                threads = threads.min(sizes.iter().filter(|&&size| size > 0).count().max(1));
                None
            }
        };
        Claims::new(&sizes, threads, piece)
    }

    /// Claims of segments of `sizes` documents by `threads` threads, in
    /// pieces of at least `min_piece` documents, or whole segments
    /// (`None`).
    fn new(sizes: &[u32], threads: usize, min_piece: Option<u64>) -> Claims {
        let mut starts = Vec::with_capacity(sizes.len() + 1);
        let mut at = 0u64;
        starts.push(0);
        for &size in sizes {
            at += u64::from(size);
            starts.push(at);
        }
        let threads = threads.max(1) as u64;
        // At most 32 pieces per thread, whatever the index's size: each
        // back claim takes a slot of the bounds.
        let piece = min_piece.map_or(0, |least| least.max(1).max(at / (threads * 32)));
        let slots = match piece {
            0 => 0,
            piece => usize::try_from(at / piece + threads).unwrap_or(usize::MAX),
        } + sizes.len()
            + 1;
        Claims {
            starts,
            threads,
            piece,
            state: std::sync::Mutex::new(Claimed {
                back: at,
                ..Claimed::default()
            }),
            bounds: Bounds::new(slots),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Claimed> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The segment holding the document at `at` (of the laid-out ones).
    fn segment_of(&self, at: u64) -> usize {
        self.starts.partition_point(|&s| s <= at) - 1
    }

    /// The front's next piece (its run's slot is 0).
    fn front(&self) -> Option<Piece> {
        let mut state = self.state();
        if state.front >= state.back {
            return None;
        }
        let ord = self.segment_of(state.front);
        let (start, end) = (self.starts[ord], self.starts[ord + 1]);
        let from = state.front;
        let to = if self.piece == 0 {
            end
        } else {
            (from + self.piece).min(end)
        }
        .min(state.back);
        state.front = to;
        Some(Piece {
            ord,
            docs: local(from - start)..local(to - start),
            slot: 0,
        })
    }

    /// Where the front's claims in segment `ord` end once it claims on
    /// from where they end now up to `want` (a document number in the
    /// segment, exclusive), a piece at least, as far as the segment and
    /// the helpers' claims allow; `None` when it can claim nothing more
    /// there.
    fn front_within(&self, ord: usize, want: DocId) -> Option<DocId> {
        let mut state = self.state();
        let start = self.starts[ord];
        if state.front >= state.back || state.front >= self.starts[ord + 1] || self.piece == 0 {
            return None;
        }
        let to = (state.front + self.piece)
            .max(start + u64::from(want))
            .min(self.starts[ord + 1])
            .min(state.back);
        state.front = to;
        Some(local(to - start))
    }

    /// Claims what the front can of segment `ord`.
    fn front_past(&self, ord: usize) {
        let mut state = self.state();
        let end = self.starts[ord + 1].min(state.back);
        state.front = state.front.max(end);
    }

    /// A helper's next claim: its share of what is left, from the back.
    /// `None` once everything is claimed. `first`: the helper's first
    /// claim (it then owes an answer).
    fn back(&self, first: bool) -> Option<Piece> {
        let mut state = self.state();
        if state.front >= state.back {
            return None;
        }
        let to = state.back;
        let ord = self.segment_of(to - 1);
        let start = self.starts[ord];
        let share = ((to - state.front) / self.threads).max(self.piece);
        let from = if self.piece == 0 {
            start
        } else {
            to.saturating_sub(share).max(start)
        }
        .max(state.front);
        let slot = self.bounds.open(from);
        if slot == 0 {
            // No slot left (never, by the piece's size): the front walks it.
            return None;
        }
        state.back = from;
        state.helpers += usize::from(first);
        Some(Piece {
            ord,
            docs: local(from - start)..local(to - start),
            slot,
        })
    }

    /// Takes what is left from every thread but those walking already:
    /// how many helpers claimed something.
    fn close(&self) -> usize {
        let mut state = self.state();
        state.front = state.back;
        state.helpers
    }
}

/// A document number within a segment (segments hold fewer than 2^32).
fn local(at: u64) -> DocId {
    DocId::try_from(at).unwrap_or(DocId::MAX)
}

/// The matches one heap keeps: the `k` best, published as slot `slot`'s
/// bound once it holds `k`.
struct Heap<'a> {
    kept: BinaryHeap<Reverse<Ranked>>,
    k: usize,
    own: f32,
    bounds: &'a Bounds,
    slot: usize,
}

impl<'a> Heap<'a> {
    fn new(k: usize, bounds: &'a Bounds, slot: usize) -> Heap<'a> {
        Heap {
            kept: BinaryHeap::with_capacity(k + 1),
            k,
            own: f32::MIN,
            bounds,
            slot,
        }
    }

    /// The score a match must beat now.
    fn threshold(&self) -> f32 {
        self.own.max(self.bounds.floor(self.slot))
    }

    /// Keeps a match if it is among the best `k`; the new threshold.
    fn offer(&mut self, score: f32, at: DocAddress) -> f32 {
        self.kept.push(Reverse(Ranked(score, at)));
        if self.kept.len() > self.k {
            self.kept.pop();
        }
        if self.kept.len() == self.k {
            self.own = self.kept.peek().map_or(f32::MIN, |r| r.0 .0);
            self.bounds.raise(self.slot, self.own);
        }
        self.threshold()
    }

    fn into_found(self) -> impl Iterator<Item = Ranked> {
        self.kept.into_iter().map(|r| r.0)
    }
}

/// Walks `piece`'s documents into `heap`; `more`, when set, is asked for
/// where the piece ends once the walk reaches its end (ranged walkers).
fn walk_piece(
    searcher: &Searcher,
    walker: &Walker,
    piece: &Piece,
    heap: &mut Heap<'_>,
    more: Option<&Claims>,
) -> tantivy::Result<()> {
    let ord = piece.ord;
    let reader = searcher.segment_reader(u32::try_from(ord).unwrap_or(u32::MAX));
    let alive = reader.alive_bitset();
    let address = u32::try_from(ord).unwrap_or(u32::MAX);
    let threshold = heap.threshold();
    let mut callback = |doc: DocId, score: f32| {
        if alive.is_some_and(|a| a.is_deleted(doc)) {
            return heap.threshold();
        }
        heap.offer(score, DocAddress::new(address, doc))
    };
    match walker {
        Walker::Segments(weight) => weight.for_each_pruning(threshold, reader, &mut callback),
        Walker::Ranges(weight) => {
            let mut end = piece.docs.end;
            let mut limit = |want: DocId| {
                while end < want {
                    match more.and_then(|claims| claims.front_within(ord, want)) {
                        Some(further) => end = further,
                        None => break,
                    }
                }
                end
            };
            weight.for_each_pruning_from(
                threshold,
                reader,
                piece.docs.start,
                &mut limit,
                &mut callback,
            )
        }
    }
}

/// The calling thread's part: pieces from the front, one heap.
fn walk_front(
    searcher: &Searcher,
    walker: &Walker,
    claims: &Claims,
    k: usize,
) -> tantivy::Result<Vec<Ranked>> {
    let mut heap = Heap::new(k, &claims.bounds, 0);
    walk_front_into(searcher, walker, claims, &mut heap)?;
    Ok(heap.into_found().collect())
}

/// [`walk_front`] into `heap`.
fn walk_front_into(
    searcher: &Searcher,
    walker: &Walker,
    claims: &Claims,
    heap: &mut Heap<'_>,
) -> tantivy::Result<()> {
    while let Some(piece) = claims.front() {
        walk_piece(searcher, walker, &piece, heap, Some(claims))?;
        // The walk went as far in the segment as it could: what the front
        // can still claim there holds nothing that beats its threshold.
        claims.front_past(piece.ord);
    }
    Ok(())
}

/// A helper's part: claims from the back, `first` the first, a heap each
/// (a later claim lies before an earlier one, and a heap's bound holds
/// only for matches after what it keeps).
fn walk_back(
    searcher: &Searcher,
    walker: &Walker,
    claims: &Claims,
    first: Piece,
    k: usize,
) -> tantivy::Result<Vec<Ranked>> {
    let mut found = Vec::new();
    let mut next = Some(first);
    while let Some(piece) = next {
        let mut heap = Heap::new(k, &claims.bounds, piece.slot);
        walk_piece(searcher, walker, &piece, &mut heap, None)?;
        found.extend(heap.into_found());
        next = claims.back(false);
    }
    Ok(found)
}

/// Each run's `k`-th best score once it holds `k` matches, as
/// order-preserving bits (0: not yet), with where the run starts. Slot
/// 0 is the front's, which starts first; helpers' claims open the others.
struct Bounds {
    starts: Vec<AtomicU64>,
    scores: Vec<AtomicU32>,
    opened: AtomicUsize,
}

impl Bounds {
    fn new(slots: usize) -> Bounds {
        Bounds {
            starts: (0..slots.max(1)).map(|_| AtomicU64::new(0)).collect(),
            scores: (0..slots.max(1)).map(|_| AtomicU32::new(0)).collect(),
            opened: AtomicUsize::new(1),
        }
    }

    /// A new run's slot, starting at `start` (later than the front's);
    /// 0 when every slot is taken. Called under the claims' lock.
    fn open(&self, start: u64) -> usize {
        let slot = self.opened.load(Ordering::Acquire);
        if slot >= self.starts.len() {
            return 0;
        }
        self.starts[slot].store(start, Ordering::Relaxed);
        self.opened.store(slot + 1, Ordering::Release);
        slot
    }

    /// Run `me` holds `k` matches scoring at least `score`.
    fn raise(&self, me: usize, score: f32) {
        self.scores[me].fetch_max(ordered_bits(score), Ordering::Relaxed);
    }

    /// The score run `me` need not beat: another run already holds `k`
    /// matches that outrank any match of `me` scoring this or less (an
    /// earlier run wins ties, so a later one's bound counts only below
    /// it). `f32::MIN` while none does.
    fn floor(&self, me: usize) -> f32 {
        let mut floor = f32::MIN;
        let opened = self.opened.load(Ordering::Acquire);
        let mine = self.starts[me].load(Ordering::Relaxed);
        for at in 0..opened {
            let bits = self.scores[at].load(Ordering::Relaxed);
            if at == me || bits == 0 {
                continue;
            }
            let score = from_ordered_bits(bits);
            // A few steps below a later run's bound: block-max WAND's
            // upper bounds sum the same scores in another order, and may
            // round a match scoring exactly the bound below it.
            let below = (score - score.abs() * 4.0 * f32::EPSILON).next_down();
            let earlier = self.starts[at].load(Ordering::Relaxed) < mine;
            floor = floor.max(if earlier { score } else { below });
        }
        floor
    }
}

/// [`best_k_of`] on this thread alone, in a fixed order: the front
/// walks `front_first` pieces (its heap kept), then a helper walks
/// `helper_first` claims from the back, then the front walks what is
/// left (`threads` sets the helper's shares).
#[cfg(test)]
pub(crate) fn best_k_in_order(
    searcher: &Searcher,
    walker: &Walker,
    k: usize,
    threads: usize,
    min_piece: u64,
    (front_first, helper_first): (usize, usize),
) -> tantivy::Result<Vec<(f32, DocAddress)>> {
    let claims = Claims::of(searcher, walker, threads, 1, min_piece);
    let mut front = Heap::new(k, &claims.bounds, 0);
    for _ in 0..front_first {
        let Some(piece) = claims.front() else {
            break;
        };
        walk_piece(searcher, walker, &piece, &mut front, None)?;
    }
    let mut found = Vec::new();
    for at in 0..helper_first {
        let Some(piece) = claims.back(at == 0) else {
            break;
        };
        let mut heap = Heap::new(k, &claims.bounds, piece.slot);
        walk_piece(searcher, walker, &piece, &mut heap, None)?;
        found.extend(heap.into_found());
    }
    walk_front_into(searcher, walker, &claims, &mut front)?;
    found.extend(front.into_found());
    found.sort_unstable_by(|a, b| b.cmp(a));
    found.truncate(k);
    Ok(found.into_iter().map(|r| (r.0, r.1)).collect())
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
    fn a_later_run_bound_counts_only_strictly_below_it() {
        // Helpers open their runs back to front: the later run first.
        let bounds = Bounds::new(4);
        assert_eq!((bounds.open(30), bounds.open(20)), (1, 2));
        assert_eq!(bounds.open(10), 3);
        assert_eq!(bounds.open(5), 0, "every slot is taken");
        assert_eq!(bounds.floor(2), f32::MIN);
        bounds.raise(1, 3.0);
        let below = bounds.floor(2);
        assert!(
            below < 3.0f32.next_down().next_down() && below > 2.999,
            "run 1 starts after run 2: {below}"
        );
        bounds.raise(2, 2.5);
        assert_eq!(bounds.floor(1), 2.5, "run 2 starts before run 1");
        assert_eq!(
            bounds.floor(3),
            below,
            "the highest bound, from a later run"
        );
        bounds.raise(0, 4.0);
        assert_eq!(bounds.floor(3), 4.0, "the front's run starts first");
        bounds.raise(1, 1.0);
        assert_eq!(bounds.floor(2), 4.0, "bounds only rise");
    }

    #[test]
    fn the_front_claims_on_in_its_segment_as_far_as_helpers_and_the_segment_allow() {
        let claims = Claims::new(&[10_000, 5_000], 2, Some(4096));
        let first = claims.front().unwrap();
        assert_eq!((first.ord, first.docs.clone()), (0, 0..4096));
        // At least a piece, or as far as asked.
        assert_eq!(claims.front_within(0, 5_000), Some(8192));
        let back = claims.back(true).unwrap();
        assert_eq!((back.ord, back.docs.clone(), back.slot), (1, 904..5_000, 1));
        // Not past the segment's end.
        assert_eq!(claims.front_within(0, 20_000), Some(10_000));
        assert_eq!(claims.front_within(0, 20_000), None);
        // The next segment, up to the helper's claim.
        let next = claims.front().unwrap();
        assert_eq!((next.ord, next.docs.clone()), (1, 0..904));
        assert_eq!(claims.front_within(1, 5_000), None);
        claims.front_past(1);
        assert!(claims.back(false).is_none());
        assert_eq!(claims.close(), 1);

        // What the front has not walked of a segment is taken as walked,
        // not what a helper claimed.
        let claims = Claims::new(&[10_000, 5_000], 2, Some(1_000));
        assert_eq!(claims.front().unwrap().docs, 0..1_000);
        let back = claims.back(true).unwrap();
        assert_eq!((back.ord, back.docs), (1, 0..5_000));
        claims.front_past(0);
        assert!(claims.front().is_none());
        assert!(claims.back(false).is_none());
        assert_eq!(claims.close(), 1);
    }

    /// Every claim until none is left, the front's and helpers' in turns
    /// as `pattern` says (true: the front), as (laid-out start, end, by
    /// the front).
    fn claim_all(claims: &Claims, pattern: &[bool]) -> Vec<(u64, u64, bool)> {
        let mut out = Vec::new();
        let mut helped = false;
        for &front in pattern.iter().cycle() {
            let piece = if front {
                claims.front()
            } else {
                let piece = claims.back(!helped);
                helped |= piece.is_some();
                piece
            };
            let Some(piece) = piece else {
                break;
            };
            let start = claims.starts[piece.ord];
            assert!(piece.docs.start < piece.docs.end, "{:?}", piece.docs);
            assert!(
                start + u64::from(piece.docs.end) <= claims.starts[piece.ord + 1],
                "a claim lies within its segment"
            );
            assert_eq!(piece.slot == 0, front, "the front's run has slot 0");
            out.push((
                start + u64::from(piece.docs.start),
                start + u64::from(piece.docs.end),
                front,
            ));
        }
        assert_eq!(
            claims.close(),
            usize::from(helped),
            "the helper answers once"
        );
        out
    }

    #[test]
    fn claims_cover_every_document_once_the_front_from_the_start_helpers_from_the_end() {
        let sizes = [10_000, 0, 50_000, 3, 4_000];
        let total: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
        for piece in [None, Some(1), Some(4096), Some(100_000)] {
            for threads in [1, 2, 5] {
                for pattern in [&[true][..], &[false], &[true, false], &[false, true, true]] {
                    let claims = Claims::new(&sizes, threads, piece);
                    let mut got = claim_all(&claims, pattern);
                    let what = format!("{piece:?} {threads} {pattern:?}: {got:?}");
                    // The front's claims follow one another from 0; a
                    // helper's each end where the one before began.
                    let fronts: Vec<_> = got.iter().filter(|c| c.2).collect();
                    let backs: Vec<_> = got.iter().filter(|c| !c.2).collect();
                    for pair in fronts.windows(2) {
                        assert_eq!(pair[0].1, pair[1].0, "{what}");
                    }
                    assert!(fronts.first().is_none_or(|c| c.0 == 0), "{what}");
                    for pair in backs.windows(2) {
                        assert_eq!(pair[1].1, pair[0].0, "{what}");
                    }
                    assert!(backs.first().is_none_or(|c| c.1 == total), "{what}");
                    // Together, every document once.
                    got.sort();
                    let mut at = 0;
                    for claim in &got {
                        assert_eq!(claim.0, at, "{what}");
                        at = claim.1;
                    }
                    assert_eq!(at, total, "{what}");
                    // Whole segments, or pieces of at least the claims'
                    // size unless cut where a segment starts or ends or
                    // where the other side's claims begin or end.
                    let short = |c: &(u64, u64, bool)| c.1 - c.0 < claims.piece;
                    match piece {
                        None => assert!(got
                            .iter()
                            .all(|c| claims.starts.contains(&c.0) && claims.starts.contains(&c.1))),
                        Some(_) => {
                            for c in got.iter().filter(|c| short(c)) {
                                let cut = if c.2 {
                                    claims.starts.contains(&c.1)
                                        || got.iter().any(|d| !d.2 && d.0 == c.1)
                                } else {
                                    claims.starts.contains(&c.0)
                                        || got.iter().any(|d| d.2 && d.1 == c.0)
                                };
                                assert!(cut, "{what}: {c:?} is short");
                            }
                        }
                    }
                }
            }
        }
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
