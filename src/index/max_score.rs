//! Top-k of a disjunction of terms (the `text` operator: any word on any
//! path, scored by the sum of BM25 scores) by MaxScore (Turtle & Flood,
//! "Query evaluation: strategies and optimizations", IP&M 1995), in place
//! of tantivy's block-max WAND for queries of many terms.
//!
//! Terms are ordered by their BM25 upper bound. Once the `k`-th best score
//! (the threshold) exceeds what the weakest terms could add up to
//! together, those terms are *non-essential*: no document holding only
//! them can enter the top `k`, so candidates come from the essential
//! terms' postings alone, and a non-essential term's postings are only
//! sought to a candidate while the candidate could still beat the
//! threshold. Long queries of common and rare words walk the rare words'
//! postings; block-max WAND keeps every list in document order at each
//! step instead, which cost most of a seven-word query's time.
//!
//! The walk goes window by window (1,024 documents, `WINDOW`), as Lucene's
//! `MaxScoreBulkScorer` does: the essential lists add their parts along
//! their postings, a block of 128 at a time, then each document met
//! takes the non-essential parts (see `walk`).
//!
//! Scores are tantivy's, term for term ([`Bm25Weight`] over the
//! searcher's statistics, field norms as `TermQuery` reads them), summed
//! in clause order. Everything but the pruned top-k walk (scorers,
//! explanations, counts) is tantivy's own `BooleanQuery` of `TermQuery`s,
//! its weight built only when one of those is asked for. Each term is
//! looked up once in each segment: its place there gives both the
//! statistics and the walk's postings (on `benches/text.rs`, AMD EPYC,
//! 2 cores, three alternating runs: 3,810–4,030 queries/s on one thread
//! against 3,580–3,650 when the weight looked terms up twice and built
//! tantivy's weight too; p50 0.21–0.22 ms against 0.24–0.25 ms).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use tantivy::fieldnorm::FieldNormReader;
use tantivy::index::SegmentId;
use tantivy::postings::BlockSegmentPostings;
use tantivy::postings::TermInfo;
use tantivy::query::{
    Bm25StatisticsProvider, Bm25Weight, BooleanQuery, EnableScoring, Explanation, Occur, Query,
    Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, Score, Searcher, SegmentReader, Term, TERMINATED};

use super::slices::RangedWeight;

/// Fewest terms a disjunction needs for MaxScore; shorter ones keep
/// tantivy's block-max WAND, which has little to gain from ordering one
/// or two lists. Measured with `benches/text.rs` (100,000 documents,
/// 1,000 queries, AMD EPYC, 2 cores, three runs each, alternating), when
/// the walk went a document at a time: seven-word queries over two paths
/// (14 terms) ran at 1,793 against 1,595 queries/s on one thread and
/// 2,539 against 2,070 with slices beside each other, p99 1.9 against
/// 2.4 ms; two-word queries (4 terms) ran on par. Windows made the walk
/// 1.7 times as fast again.
pub const MIN_TERMS: usize = 3;

/// `Should` clauses of `TermQuery`s (with frequencies), each scoring its
/// BM25 score; a document's score is their sum.
#[derive(Clone, Debug)]
pub struct TermDisjunction {
    terms: Vec<Term>,
    /// Most documents a window of the walk spans ([`WINDOW`]).
    window: u32,
    /// Terms' places found by earlier queries on the same index.
    known: Option<std::sync::Arc<KnownPlaces>>,
}

/// Most (segment, term) places one index's [`KnownPlaces`] keeps; past
/// it, it starts again empty. About 150 bytes each (the term twice, its
/// place, the map's own), some 5 MB at most.
const MOST_KNOWN_PLACES: usize = 1 << 15;

/// Where terms' postings are in each segment, as earlier queries on one
/// index looked them up: a segment never changes once written (deletes
/// mark documents; a term's document frequency counts them still), so
/// a place found once holds for as long as the segment lives. A query's
/// words recur across queries, and a term looked up in a term dictionary
/// not in the CPU's caches costs microseconds (the dictionary's states
/// are read one after another), while a place known costs one hash
/// lookup. At most [`MOST_KNOWN_PLACES`] are kept. When a query misses
/// some, those of segments its searcher does not hold (merged away, or a
/// newer searcher's) are dropped as its own are noted.
#[derive(Default)]
pub struct KnownPlaces {
    by_segment: std::sync::Mutex<HashMap<SegmentId, HashMap<Term, Option<TermInfo>>>>,
}

impl std::fmt::Debug for KnownPlaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KnownPlaces")
    }
}

impl KnownPlaces {
    /// [`places`], answered from those known where it can be, and the
    /// others noted.
    fn places(
        &self,
        searcher: &Searcher,
        terms: &[Term],
    ) -> tantivy::Result<Vec<(SegmentId, Places)>> {
        let readers = searcher.segment_readers();
        let mut out: Vec<(SegmentId, Places)> = Vec::with_capacity(readers.len());
        let mut missing = Vec::new();
        {
            let known = self.by_segment.lock().unwrap_or_else(|e| e.into_inner());
            for (ordinal, reader) in readers.iter().enumerate() {
                let here = known.get(&reader.segment_id());
                let mut infos = Vec::with_capacity(terms.len());
                for (clause, term) in terms.iter().enumerate() {
                    match here.and_then(|terms| terms.get(term)) {
                        Some(info) => infos.push(info.clone()),
                        None => {
                            infos.push(None);
                            missing.push((ordinal, clause));
                        }
                    }
                }
                out.push((reader.segment_id(), infos));
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        for &(ordinal, clause) in &missing {
            let term = &terms[clause];
            out[ordinal].1[clause] = readers[ordinal]
                .inverted_index(term.field())?
                .get_term_info(term)?;
        }
        let mut known = self.by_segment.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = Vec::new();
        known.retain(|id, places| {
            let live = out.iter().any(|(segment, _)| segment == id);
            if !live {
                dropped.push(std::mem::take(places));
            }
            live
        });
        let mut held: usize = known.values().map(HashMap::len).sum();
        if held + missing.len() > MOST_KNOWN_PLACES {
            dropped.push(HashMap::new());
            dropped.extend(known.drain().map(|(_, places)| places));
            held = 0;
        }
        for (ordinal, clause) in missing {
            if held >= MOST_KNOWN_PLACES {
                break;
            }
            let (id, infos) = &out[ordinal];
            let previous = known
                .entry(*id)
                .or_default()
                .insert(terms[clause].clone(), infos[clause].clone());
            held += usize::from(previous.is_none());
        }
        drop(known);
        // Freed once the lock is let go.
        drop(dropped);
        Ok(out)
    }
}

impl TermDisjunction {
    /// The disjunction of `terms` (repeats count again, as repeated
    /// clauses do).
    pub fn new(terms: Vec<Term>) -> TermDisjunction {
        TermDisjunction {
            terms,
            window: WINDOW,
            known: None,
        }
    }

    /// [`TermDisjunction::new`], its terms' places read from and noted in
    /// `known` (one index's, shared by its queries).
    pub fn with_known_places(
        terms: Vec<Term>,
        known: std::sync::Arc<KnownPlaces>,
    ) -> TermDisjunction {
        TermDisjunction {
            known: Some(known),
            ..TermDisjunction::new(terms)
        }
    }

    /// How many term clauses it has.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Whether it has no term clause.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    fn boolean(&self) -> BooleanQuery {
        BooleanQuery::new(
            self.terms
                .iter()
                .map(|t| {
                    let q: Box<dyn Query> =
                        Box::new(TermQuery::new(t.clone(), IndexRecordOption::WithFreqs));
                    (Occur::Should, q)
                })
                .collect(),
        )
    }
}

impl TermDisjunction {
    /// The weight of a search over `searcher` with its own statistics,
    /// and the most postings its walk reads: every clause's term's
    /// document frequency in every segment, summed (a walk reads each
    /// clause's postings at most once). A cost known before the walk, so
    /// a caller can tell a search it may run on its own thread from one
    /// to hand to others.
    /// Errors: tantivy's, reading the term dictionaries.
    pub fn weight_and_postings(
        &self,
        searcher: &Searcher,
    ) -> tantivy::Result<(Box<dyn RangedWeight>, u64)> {
        let weight = self.max_score_weight(searcher, searcher)?;
        let postings = weight
            .places
            .iter()
            .flatten()
            .flat_map(|(_, infos)| infos.iter().flatten())
            .map(|info| u64::from(info.doc_freq))
            .sum();
        Ok((Box::new(weight), postings))
    }

    fn max_score_weight(
        &self,
        statistics_provider: &dyn Bm25StatisticsProvider,
        searcher: &Searcher,
    ) -> tantivy::Result<MaxScoreWeight> {
        // Where the statistics are the searcher's own (a search's), each
        // term is looked up once in each segment: its postings' place
        // there serves the walk, and their counts the statistics. The
        // provider is taken to be the searcher when it sits at its
        // address (`EnableScoring::enabled_from_searcher`); a provider
        // wrapping a searcher as its first field would pass too, and
        // this crate makes none.
        let places = std::ptr::addr_eq(statistics_provider, searcher)
            .then(|| match &self.known {
                Some(known) => known.places(searcher, &self.terms),
                None => places(searcher, &self.terms),
            })
            .transpose()?;
        let statistics = Cached::new(statistics_provider);
        if let Some(places) = &places {
            let mut known = statistics.known.borrow_mut();
            for (clause, term) in self.terms.iter().enumerate() {
                let count = places
                    .iter()
                    .filter_map(|(_, infos)| infos[clause].as_ref())
                    .map(|info| u64::from(info.doc_freq))
                    .sum();
                known.frequencies.insert(term.clone(), count);
            }
        }
        // As `Bm25Weight::for_terms` weighs one term, without the idf's
        // explanation tree (built per term, never read here):
        // explanations come from tantivy's own weight (`inner`).
        let total_num_docs = statistics.total_num_docs()?;
        let weights = self
            .terms
            .iter()
            .map(|term| {
                let total_num_tokens = statistics.total_num_tokens(term.field())?;
                let average_fieldnorm = total_num_tokens as Score / total_num_docs as Score;
                Ok(Bm25Weight::for_one_term_without_explain(
                    statistics.doc_freq(term)?,
                    total_num_docs,
                    average_fieldnorm,
                ))
            })
            .collect::<tantivy::Result<Vec<_>>>()?;
        let bounds = bounds(&weights, &self.terms);
        Ok(MaxScoreWeight {
            inner: OnceLock::new(),
            query: self.clone(),
            searcher: searcher.clone(),
            statistics: statistics.known.into_inner(),
            weights,
            bounds,
            places,
        })
    }
}

impl Query for TermDisjunction {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let EnableScoring::Enabled {
            statistics_provider,
            searcher,
        } = scoring
        else {
            return self.boolean().weight(scoring);
        };
        Ok(Box::new(
            self.max_score_weight(statistics_provider, searcher)?,
        ))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        for term in &self.terms {
            visitor(term, false);
        }
    }
}

/// Each segment's id and the place of each of `terms` in it (`None`
/// where the segment lacks the term), in the searcher's segment order.
fn places(searcher: &Searcher, terms: &[Term]) -> tantivy::Result<Vec<(SegmentId, Places)>> {
    searcher
        .segment_readers()
        .iter()
        .map(|reader| {
            let infos = terms
                .iter()
                .map(|term| Ok(reader.inverted_index(term.field())?.get_term_info(term)?))
                .collect::<tantivy::Result<Places>>()?;
            Ok((reader.segment_id(), infos))
        })
        .collect()
}

/// Where each term's postings are in one segment, in clause order.
type Places = Vec<Option<TermInfo>>;

struct MaxScoreWeight {
    /// tantivy's weight of the same query, for everything but the walk
    /// (explanations, counts, scorers), built when first asked for.
    inner: OnceLock<Box<dyn Weight>>,
    query: TermDisjunction,
    /// The searcher the weight was made for, and the statistics it read,
    /// for `inner`.
    searcher: Searcher,
    statistics: Known,
    /// Each term's BM25 weight, in clause order.
    weights: Vec<Bm25Weight>,
    /// Each term's score bounds, in clause order (see [`bounds`]).
    bounds: Vec<Bounds>,
    /// The terms' places in the searcher's segments, when read once for
    /// both the statistics and the walk.
    places: Option<Vec<(SegmentId, Places)>>,
}

impl MaxScoreWeight {
    /// tantivy's own weight of the query, over the same statistics.
    fn inner(&self) -> tantivy::Result<&dyn Weight> {
        if let Some(inner) = self.inner.get() {
            return Ok(inner.as_ref());
        }
        let built =
            self.query
                .boolean()
                .weight(EnableScoring::enabled_from_statistics_provider(
                    &self.statistics,
                    &self.searcher,
                ))?;
        Ok(self.inner.get_or_init(|| built).as_ref())
    }
}

/// BM25 statistics asked for so far.
#[derive(Default)]
struct Known {
    tokens: HashMap<Field, u64>,
    documents: Option<u64>,
    frequencies: HashMap<Term, u64>,
}

impl Bm25StatisticsProvider for Known {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        self.tokens.get(&field).copied().ok_or_else(unknown)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        self.documents.ok_or_else(unknown)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        self.frequencies.get(term).copied().ok_or_else(unknown)
    }
}

/// A statistic the weight never read (its terms' are all read).
fn unknown() -> tantivy::TantivyError {
    tantivy::TantivyError::InternalError("a BM25 statistic the query never read".into())
}

/// The searcher's BM25 statistics, each asked for once per query.
struct Cached<'a> {
    inner: &'a dyn Bm25StatisticsProvider,
    known: RefCell<Known>,
}

impl<'a> Cached<'a> {
    fn new(inner: &'a dyn Bm25StatisticsProvider) -> Cached<'a> {
        Cached {
            inner,
            known: RefCell::default(),
        }
    }
}

impl Bm25StatisticsProvider for Cached<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        if let Some(n) = self.known.borrow().tokens.get(&field) {
            return Ok(*n);
        }
        let n = self.inner.total_num_tokens(field)?;
        self.known.borrow_mut().tokens.insert(field, n);
        Ok(n)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        if let Some(n) = self.known.borrow().documents {
            return Ok(n);
        }
        let n = self.inner.total_num_docs()?;
        self.known.borrow_mut().documents = Some(n);
        Ok(n)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        if let Some(n) = self.known.borrow().frequencies.get(term) {
            return Ok(*n);
        }
        let n = self.inner.doc_freq(term)?;
        self.known.borrow_mut().frequencies.insert(term.clone(), n);
        Ok(n)
    }
}

/// The most one term adds to a document's score.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// In a field with norms: the score at the best pair ([`best_pair`]).
    with_norms: Score,
    /// In a field without norms, where every document scores as one token
    /// long (as `TermQuery` reads it) and the frequency has no bound.
    without_norms: Score,
}

/// Each of `weights`' [`Bounds`] (BM25 grows with the frequency and falls
/// with the length), in the order of `terms`, their terms. The
/// (field-norm id, frequency) pair that scores best is found once per
/// field: a term's weight scales its field's term-frequency factor
/// (`Bm25Weight::score` is `weight · tf / (tf + norm(id))`, the norms
/// from the field's average length), so every term of a field whose
/// weight is positive scores best at the same pair (the pair is taken
/// from a term that scores above 0).
fn bounds(weights: &[Bm25Weight], terms: &[Term]) -> Vec<Bounds> {
    let one_token = FieldNormReader::constant(1, 1).fieldnorm_id(0);
    let mut best: HashMap<Field, (u8, u32)> = HashMap::new();
    weights
        .iter()
        .zip(terms)
        .map(|(weight, term)| {
            let (id, frequency) = match best.get(&term.field()) {
                Some(pair) => *pair,
                None => {
                    let pair = best_pair(weight);
                    // A weight of 0 (tantivy's idf rounds to 0 for a term
                    // in every document of a large enough index) scores
                    // every pair alike: it cannot tell the field's best.
                    if weight.score(pair.0, pair.1) > 0.0 {
                        best.insert(term.field(), pair);
                    }
                    pair
                }
            };
            Bounds {
                with_norms: weight.score(id, frequency),
                without_norms: weight.score(one_token, u32::MAX),
            }
        })
        .collect()
}

/// The (field-norm id, frequency) pair `weight` scores best: over every
/// field-norm id, the largest frequency a length in that id's bucket
/// allows. Lengths are coded into 256 buckets, rounded down, so a term
/// can occur more often than its document's coded length; tantivy's
/// `Bm25Weight::max_score` takes the last bucket alone.
fn best_pair(weight: &Bm25Weight) -> (u8, u32) {
    (0..=u8::MAX)
        .map(|id| {
            let most = match id.checked_add(1) {
                Some(next) => FieldNormReader::id_to_fieldnorm(next).saturating_sub(1),
                None => u32::MAX,
            };
            (id, most.max(FieldNormReader::id_to_fieldnorm(id)).max(1))
        })
        .fold((0, 1), |best, pair| {
            if weight.score(pair.0, pair.1) > weight.score(best.0, best.1) {
                pair
            } else {
                best
            }
        })
}

impl Weight for MaxScoreWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        self.inner()?.scorer(reader, boost)
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.inner()?.explain(reader, doc)
    }

    fn count(&self, reader: &SegmentReader) -> tantivy::Result<u32> {
        self.inner()?.count(reader)
    }

    fn for_each(
        &self,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(DocId, Score),
    ) -> tantivy::Result<()> {
        self.inner()?.for_each(reader, callback)
    }

    fn for_each_no_score(
        &self,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(&[DocId]),
    ) -> tantivy::Result<()> {
        self.inner()?.for_each_no_score(reader, callback)
    }

    fn for_each_pruning(
        &self,
        threshold: Score,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(DocId, Score) -> Score,
    ) -> tantivy::Result<()> {
        self.for_each_pruning_from(threshold, reader, 0, &mut |_| TERMINATED, callback)
    }
}

impl RangedWeight for MaxScoreWeight {
    fn for_each_pruning_from(
        &self,
        threshold: Score,
        reader: &SegmentReader,
        start: DocId,
        limit: &mut dyn FnMut(DocId) -> DocId,
        callback: &mut dyn FnMut(DocId, Score) -> Score,
    ) -> tantivy::Result<()> {
        let places = self.places.as_ref().and_then(|places| {
            let id = reader.segment_id();
            places
                .iter()
                .find(|(at, _)| *at == id)
                .map(|(_, infos)| infos)
        });
        // Each term the segment holds, weakest first: (clause, its place,
        // its field's norms, its bound).
        let mut held = Vec::with_capacity(self.query.terms.len());
        for (clause, term) in self.query.terms.iter().enumerate() {
            let info = match places {
                Some(infos) => infos[clause].clone(),
                None => reader.inverted_index(term.field())?.get_term_info(term)?,
            };
            let Some(info) = info else {
                continue;
            };
            let bounds = &self.bounds[clause];
            // As `TermQuery` reads them: a field without norms scores as
            // if every value were one token long.
            let (norms, max) = match reader.fieldnorms_readers().get_field(term.field())? {
                Some(norms) => (norms, bounds.with_norms),
                None => (
                    FieldNormReader::constant(reader.max_doc(), 1),
                    bounds.without_norms,
                ),
            };
            held.push((clause, info, norms, max));
        }
        held.sort_by(|a, b| a.3.total_cmp(&b.3));
        let mut lists = Vec::with_capacity(held.len());
        for (clause, info, norms, max) in held {
            let inverted = reader.inverted_index(self.query.terms[clause].field())?;
            let mut list = List {
                block: inverted
                    .read_block_postings_from_terminfo(&info, IndexRecordOption::WithFreqs)?,
                at: 0,
                norms,
                max,
                weight: &self.weights[clause],
                clause,
            };
            if start > 0 {
                list.seek(start);
            }
            lists.push(list);
        }
        walk(
            lists,
            self.query.terms.len(),
            threshold,
            self.query.window,
            limit,
            callback,
        );
        Ok(())
    }
}

/// Documents in a full block of tantivy's postings (its private
/// `COMPRESSION_BLOCK_SIZE`, bitpacking's `BitPacker4x::BLOCK_LEN`); only
/// the last block of a list holds fewer. Checked by
/// `tests::postings_come_in_blocks_of_128`.
const BLOCK: usize = 128;

/// One term's postings in a segment, read a block at a time.
struct List<'a> {
    /// The block of postings the cursor is in (tantivy pads the last
    /// block's documents with `TERMINATED`, as `SegmentPostings` relies
    /// on; so does this cursor).
    block: BlockSegmentPostings,
    /// The cursor's place in the block.
    at: usize,
    norms: FieldNormReader,
    weight: &'a Bm25Weight,
    /// The most this term adds to a score.
    max: Score,
    /// Its clause's position in the query.
    clause: usize,
}

impl List<'_> {
    /// The document under the cursor (`TERMINATED` past the last).
    fn doc(&self) -> DocId {
        self.block.doc(self.at)
    }

    /// The term's score in the document under the cursor, `doc`.
    fn score(&self, doc: DocId) -> Score {
        self.weight
            .score(self.norms.fieldnorm_id(doc), self.block.freq(self.at))
    }

    /// Moves the cursor to the first document at or after `target` (as
    /// `SegmentPostings::seek`); returns it.
    fn seek(&mut self, target: DocId) -> DocId {
        if self.doc() >= target {
            return self.doc();
        }
        // The next one first: most seeks of a common term land there.
        if self.at + 1 < BLOCK && self.block.doc(self.at + 1) >= target {
            self.at += 1;
        } else {
            self.at = self.block.seek(target);
        }
        self.doc()
    }

    /// Adds this list's part of each document it holds before `end` to
    /// the window from `base` (see [`walk`]), moving the cursor past them.
    fn add_to(&mut self, window: &mut Window, base: DocId, end: DocId, me: usize) {
        loop {
            let docs = self.block.docs();
            while self.at < docs.len() {
                let doc = docs[self.at];
                if doc >= end {
                    return;
                }
                let i = (doc - base) as usize;
                let part = self.score(doc);
                window.parts[i * window.lists + me] = part;
                window.sums[i] += part;
                window.met[i / 64] |= 1 << (i % 64);
                self.at += 1;
            }
            if docs.len() < BLOCK {
                // The last block: the cursor rests on its padding.
                return;
            }
            self.block.advance();
            self.at = 0;
        }
    }
}

/// What a window of the walk gathers, per document of the window. Every
/// entry is zero again once a walk is done with it.
#[derive(Default)]
struct Window {
    /// How many lists the walk has.
    lists: usize,
    /// The sum of the parts added so far.
    sums: Vec<Score>,
    /// Every list's part (`parts[i * lists + list]`, 0 where the list
    /// lacks the document).
    parts: Vec<Score>,
    /// Whether any essential list holds the document.
    met: Vec<u64>,
}

thread_local! {
    /// The last walk's buffers on this thread, zeros, for the next walk
    /// (clearing a fresh window's parts cost 4% of a query's time).
    static KEPT: std::cell::RefCell<Option<Window>> = const { std::cell::RefCell::new(None) };
}

impl Window {
    /// Zeroed buffers for `lists` lists over `width` documents: this
    /// thread's kept ones, grown if need be. At most [`PARTS`] parts.
    fn take(lists: usize, width: usize) -> Window {
        let mut window = KEPT
            .with(|kept| kept.borrow_mut().take())
            .unwrap_or_default();
        window.lists = lists;
        let grow = |v: &mut Vec<Score>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut window.sums, width);
        grow(&mut window.parts, width * lists);
        if window.met.len() < width.div_ceil(64) {
            window.met.resize(width.div_ceil(64), 0);
        }
        window
    }

    /// Keeps the buffers (all zeros: a walk that ends normally leaves
    /// them so; one that panics drops them) for this thread's next walk.
    fn keep(self) {
        KEPT.with(|kept| *kept.borrow_mut() = Some(self));
    }
}

/// Most documents one window of the walk spans (Lucene's
/// `MaxScoreBulkScorer` scores windows of 4,096). A window also keeps
/// every list's part of each document's score, so it narrows as lists are
/// added: [`PARTS`] parts at most, and never under 64 documents. Measured
/// with `benches/text.rs` (100,000 documents, 1,000 seven-word queries
/// over two paths, AMD EPYC, 2 cores), windows of 512 to 4,096 ran alike
/// (3,190 to 3,250 queries/s on one thread).
const WINDOW: u32 = 1024;

/// Most score parts a window keeps (256 KiB of `f32`s): a query of
/// [`crate::index::text::MAX_TERMS`] terms walks windows of 64 documents.
const PARTS: usize = 1 << 16;

/// Calls `callback` with each document that scores above the threshold
/// (`threshold`, then what `callback` returns), in document order, up
/// to the end `limit(want)` gives before each window (`want` its end); a
/// document scoring no more than the threshold in force may be skipped.
/// `clauses`: the query's number of clauses (scores are summed in clause
/// order, as tantivy's explanations sum them).
///
/// Window by window (`window` documents, from the first document an
/// essential list holds), as Lucene's `MaxScoreBulkScorer` does: each
/// essential list adds its part of every document it holds in the window
/// to that document's sum, a list at a time along its postings; then each
/// document met, in order, takes the non-essential lists' parts while it
/// could still beat the threshold.
fn walk(
    mut lists: Vec<List<'_>>,
    clauses: usize,
    mut threshold: Score,
    window: u32,
    limit: &mut dyn FnMut(DocId) -> DocId,
    callback: &mut dyn FnMut(DocId, Score) -> Score,
) {
    lists.sort_by(|a, b| a.max.total_cmp(&b.max));
    // upto[i]: the most lists[..i] add together, a little over the exact
    // sum, so that no rounding of a real sum (in whatever order) exceeds it.
    let mut upto = Vec::with_capacity(lists.len() + 1);
    let mut sum = 0f64;
    upto.push(0.0);
    for list in &lists {
        sum += f64::from(list.max);
        upto.push((sum * (1.0 + 1e-5)) as Score);
    }
    // Lists below `essential` are non-essential: together they cannot
    // beat the threshold.
    let essential_from =
        |threshold: Score| upto[1..].iter().take_while(|&&u| u <= threshold).count();
    let mut essential = essential_from(threshold);
    let n = lists.len();
    let window = window.min((PARTS / n.max(1)) as u32 / 64 * 64).max(64);
    let width = window as usize;
    let mut gathered = Window::take(n, width);
    let words = width.div_ceil(64);
    // Each clause's list, if its term is in the segment.
    let mut list_of = vec![None; clauses];
    for (at, list) in lists.iter().enumerate() {
        list_of[list.clause] = Some(at);
    }
    while essential < n {
        let base = lists[essential..]
            .iter()
            .map(List::doc)
            .min()
            .unwrap_or(TERMINATED);
        if base == TERMINATED {
            break;
        }
        let until = limit(base.saturating_add(window));
        if base >= until {
            break;
        }
        let end = base.saturating_add(window).min(until);
        let window_essential = essential;
        for (at, list) in lists.iter_mut().enumerate().skip(window_essential) {
            list.add_to(&mut gathered, base, end, at);
        }
        for word in 0..words {
            let mut bits = std::mem::take(&mut gathered.met[word]);
            while bits != 0 {
                let i = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let doc = base + i as DocId;
                let mut score = std::mem::take(&mut gathered.sums[i]);
                let row = &mut gathered.parts[i * n..(i + 1) * n];
                // The non-essential lists, strongest first, while the
                // candidate could still beat the threshold.
                let mut complete = true;
                for at in (0..window_essential).rev() {
                    if score + upto[at + 1] <= threshold {
                        complete = false;
                        break;
                    }
                    let list = &mut lists[at];
                    if list.seek(doc) == doc {
                        let part = list.score(doc);
                        row[at] = part;
                        score += part;
                    }
                }
                if complete {
                    // Summed in clause order, as the score tantivy
                    // reports; this sum, not the walk's, is compared with
                    // the threshold.
                    let total: Score = list_of.iter().flatten().map(|&at| row[at]).sum();
                    if total > threshold {
                        threshold = callback(doc, total);
                        essential = essential.max(essential_from(threshold));
                    }
                }
                row.fill(0.0);
            }
        }
    }
    gathered.keep();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::schema::{Schema, TextFieldIndexing, TextOptions};
    use tantivy::{doc, DocAddress, Index, IndexWriter, Searcher};

    /// Every match of `query` in the one segment, scored without pruning,
    /// best first (equal scores in document order).
    fn every_match(searcher: &Searcher, query: &dyn Query) -> Vec<(Score, DocAddress)> {
        let weight = query
            .weight(EnableScoring::enabled_from_searcher(searcher))
            .unwrap();
        let mut all: Vec<(Score, DocAddress)> = Vec::new();
        weight
            .for_each(searcher.segment_reader(0), &mut |doc, score| {
                all.push((score, DocAddress::new(0, doc)));
            })
            .unwrap();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        all
    }

    /// One field `t` (`options`) holding `texts`, a document each, in one
    /// segment.
    fn one_segment(
        options: TextOptions,
        texts: impl IntoIterator<Item = String>,
    ) -> (Searcher, Field) {
        let mut schema = Schema::builder();
        let field = schema.add_text_field("t", options);
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for text in texts {
            writer.add_document(doc!(field => text)).unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        assert_eq!(searcher.segment_readers().len(), 1);
        (searcher, field)
    }

    /// In a field without norms every document scores as one token long,
    /// so a word repeated many times scores above tantivy's `max_score`
    /// bound: the walk must still find that document.
    #[test]
    fn a_field_without_norms_keeps_its_frequent_words_in_the_top_k() {
        let indexing = TextFieldIndexing::default()
            .set_index_option(IndexRecordOption::WithFreqs)
            .set_fieldnorms(false);
        // `y` in 30 documents, `x` once in 60 and 40 times in one late
        // document: once a `y` document leads, `x` alone seems unable to
        // beat it by tantivy's bound, yet the late document does.
        let texts = (0..300).map(|n| match n {
            290 => vec!["x"; 40].join(" "),
            n if n % 10 == 0 => "y".to_string(),
            n if n % 5 == 1 => "x".to_string(),
            _ => "filler".to_string(),
        });
        let (searcher, field) =
            one_segment(TextOptions::default().set_indexing_options(indexing), texts);
        assert!(searcher
            .segment_reader(0)
            .fieldnorms_readers()
            .get_field(field)
            .unwrap()
            .is_none());
        let term = |w: &str| Term::from_field_text(field, w);
        let query = TermDisjunction::new(vec![term("x"), term("y"), term("absent")]);
        let all = every_match(&searcher, &query);
        let x = Bm25Weight::for_terms(&searcher, &[term("x")]).unwrap();
        assert_eq!(all[0].1, DocAddress::new(0, 290));
        assert!(
            all[0].0 > x.max_score(),
            "the repeated word beats tantivy's bound: {all:?}"
        );
        for k in [1, 2, 5] {
            let got = crate::index::slices::best_k_in(&searcher, &query, k, 1, 1).unwrap();
            assert_eq!(
                got.iter().map(|h| h.1).collect::<Vec<_>>(),
                all[..k].iter().map(|h| h.1).collect::<Vec<_>>(),
                "k={k}"
            );
        }
    }
    /// Windows narrower than the segment (64 and 100 documents, and the
    /// default) find what scoring every match finds, scores and order.
    #[test]
    fn walks_over_many_windows_find_what_scoring_every_match_finds() {
        const VOCABULARY: [&str; 9] = [
            "alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "tau", "rho",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let texts: Vec<String> = (0..5_000)
            .map(|_| {
                let length = 1 + next() as usize % 12;
                // Skewed: early words are common, later ones rare.
                (0..length)
                    .map(|_| VOCABULARY[((next() % 81) as f64).sqrt() as usize])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let (searcher, field) = one_segment(tantivy::schema::TEXT, texts);
        let term = |w: &str| Term::from_field_text(field, w);
        for words in [
            vec!["alpha", "beta", "gamma"],
            vec!["rho", "tau", "sigma", "kappa", "omega", "delta", "gamma"],
            vec!["alpha", "alpha", "rho", "missing"],
        ] {
            let terms: Vec<Term> = words.iter().map(|w| term(w)).collect();
            let all = every_match(&searcher, &TermDisjunction::new(terms.clone()).boolean());
            assert!(all.len() > 1_000, "{words:?}: {} matches", all.len());
            for window in [64, 100, WINDOW] {
                let query = TermDisjunction {
                    terms: terms.clone(),
                    window,
                    known: None,
                };
                let (weight, _) = query.weight_and_postings(&searcher).unwrap();
                let walker = crate::index::slices::Walker::Ranges(std::sync::Arc::from(weight));
                for k in [1, 10, 100] {
                    let got = crate::index::slices::best_k_in(&searcher, &query, k, 1, 1).unwrap();
                    assert_eq!(got, all[..k], "{words:?} window={window} k={k}");
                    // In pieces that cut windows, the front and a helper
                    // taking some in turn.
                    for (piece, order) in [
                        (300, (0, 0)),
                        (300, (0, 3)),
                        (1_000, (2, 1)),
                        (777, (1, 9)),
                        (300, (5, 2)),
                    ] {
                        let got = crate::index::slices::best_k_in_order(
                            &searcher, &walker, k, 2, piece, order,
                        )
                        .unwrap();
                        assert_eq!(
                            got,
                            all[..k],
                            "{words:?} window={window} k={k} piece={piece} {order:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn known_places_are_the_places_looked_up_and_follow_the_segments() {
        let mut schema = Schema::builder();
        let field = schema.add_text_field("t", tantivy::schema::TEXT);
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        let reader = index.reader().unwrap();
        let term = |w: &str| Term::from_field_text(field, w);
        let terms = vec![term("a"), term("b"), term("missing"), term("a")];
        let known = KnownPlaces::default();
        let held = |known: &KnownPlaces| {
            let by_segment = known.by_segment.lock().unwrap();
            let mut ids: Vec<SegmentId> = by_segment.keys().copied().collect();
            ids.sort();
            (ids, by_segment.values().map(HashMap::len).sum::<usize>())
        };
        for (round, texts) in [["a b", "a a c"], ["b", "a d d"]].iter().enumerate() {
            for text in texts {
                writer.add_document(doc!(field => *text)).unwrap();
            }
            writer.commit().unwrap();
            reader.reload().unwrap();
            let searcher = reader.searcher();
            assert_eq!(searcher.segment_readers().len(), round + 1);
            // Asked twice: looked up, then known; the same both times as
            // reading the dictionaries.
            let looked_up = places(&searcher, &terms).unwrap();
            for _ in 0..2 {
                let got = known.places(&searcher, &terms).unwrap();
                assert_eq!(got.len(), looked_up.len());
                for ((id, infos), (want_id, want)) in got.iter().zip(&looked_up) {
                    assert_eq!(id, want_id);
                    let frequencies = |infos: &Places| {
                        infos
                            .iter()
                            .map(|i| i.as_ref().map(|i| i.doc_freq))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(frequencies(infos), frequencies(want));
                    assert_eq!(
                        infos
                            .iter()
                            .map(|i| i.as_ref().map(|i| i.postings_range.clone()))
                            .collect::<Vec<_>>(),
                        want.iter()
                            .map(|i| i.as_ref().map(|i| i.postings_range.clone()))
                            .collect::<Vec<_>>()
                    );
                }
            }
            // One place per distinct term and segment, absent terms too.
            let mut ids: Vec<SegmentId> = looked_up.iter().map(|(id, _)| *id).collect();
            ids.sort();
            assert_eq!(held(&known), (ids, 3 * (round + 1)));
        }
        // Merged into one segment: the old segments' places are dropped.
        let ids = index.searchable_segment_ids().unwrap();
        writer.merge(&ids).wait().unwrap();
        writer.commit().unwrap();
        reader.reload().unwrap();
        let searcher = reader.searcher();
        assert_eq!(searcher.segment_readers().len(), 1);
        let got = known.places(&searcher, &terms).unwrap();
        assert_eq!(got[0].1[0].as_ref().map(|i| i.doc_freq), Some(3));
        assert_eq!(
            held(&known),
            (vec![searcher.segment_readers()[0].segment_id()], 3)
        );
        // More new terms than the bound leaves room for: it starts again
        // and holds at most the bound.
        let many: Vec<Term> = (0..MOST_KNOWN_PLACES + 10)
            .map(|i| term(&format!("w{i}")))
            .collect();
        let got = known.places(&searcher, &many).unwrap();
        assert!(got[0].1.iter().all(Option::is_none));
        assert_eq!(held(&known).1, MOST_KNOWN_PLACES);
    }

    /// The walk reads each term's place in each segment once, with the
    /// statistics; given statistics from elsewhere, it looks the places
    /// up itself. Either way, over two segments, it offers every match
    /// with tantivy's own score, finds the same best `k`, and tantivy's
    /// weight (built only when asked for, here by `explain`) explains
    /// the same scores.
    #[test]
    fn places_read_once_or_looked_up_score_alike_over_segments() {
        let mut schema = Schema::builder();
        let field = schema.add_text_field("t", tantivy::schema::TEXT);
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2 {
            for _ in 0..700 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let words: Vec<&str> = (0..1 + state % 9)
                    .map(|i| ["a", "b", "c", "d", "e", "f"][((state >> (4 * i)) % 6) as usize])
                    .collect();
                writer.add_document(doc!(field => words.join(" "))).unwrap();
            }
            writer.commit().unwrap();
        }
        let searcher = index.reader().unwrap().searcher();
        assert_eq!(searcher.segment_readers().len(), 2);
        let term = |w: &str| Term::from_field_text(field, w);
        let query = TermDisjunction::new(vec![term("a"), term("b"), term("c"), term("f")]);
        let by_score = |all: &mut Vec<(Score, DocAddress)>| {
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        };
        let tantivys = query
            .boolean()
            .weight(EnableScoring::enabled_from_searcher(&searcher))
            .unwrap();
        let mut all = Vec::new();
        for (ord, reader) in searcher.segment_readers().iter().enumerate() {
            tantivys
                .for_each(reader, &mut |doc, score| {
                    all.push((score, DocAddress::new(ord as u32, doc)));
                })
                .unwrap();
        }
        by_score(&mut all);
        assert!(all.len() > 1_000, "{} matches", all.len());
        /// The searcher's statistics, from another provider.
        struct Elsewhere<'a>(&'a Searcher);
        impl Bm25StatisticsProvider for Elsewhere<'_> {
            fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
                self.0.total_num_tokens(field)
            }
            fn total_num_docs(&self) -> tantivy::Result<u64> {
                Bm25StatisticsProvider::total_num_docs(self.0)
            }
            fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
                self.0.doc_freq(term)
            }
        }
        let elsewhere = Elsewhere(&searcher);
        for scoring in [
            EnableScoring::enabled_from_searcher(&searcher),
            EnableScoring::enabled_from_statistics_provider(&elsewhere, &searcher),
        ] {
            let weight = query.weight(scoring).unwrap();
            let mut offered = Vec::new();
            for (ord, reader) in searcher.segment_readers().iter().enumerate() {
                weight
                    .for_each_pruning(Score::MIN, reader, &mut |doc, score| {
                        offered.push((score, DocAddress::new(ord as u32, doc)));
                        Score::MIN
                    })
                    .unwrap();
            }
            by_score(&mut offered);
            assert_eq!(offered, all);
        }
        for k in [1, 10, 100] {
            let got = crate::index::slices::best_k_in(&searcher, &query, k, 1, 1).unwrap();
            assert_eq!(got, all[..k], "k={k}");
        }
        for (score, address) in &all[..3] {
            assert_eq!(query.explain(&searcher, *address).unwrap().value(), *score);
        }
    }

    /// A term in every document of a large index weighs 0 (tantivy's idf
    /// rounds to 0): its scores cannot pick its field's best pair, and the
    /// field's other terms still get their true bounds.
    #[test]
    fn a_term_that_weighs_nothing_leaves_its_fields_bounds_true() {
        let field = Schema::builder().add_text_field("t", tantivy::schema::TEXT);
        let term = |w: &str| Term::from_field_text(field, w);
        let everywhere = Bm25Weight::for_one_term(100_000_000, 100_000_000, 5.0);
        assert_eq!(everywhere.score(10, 3), 0.0);
        let rare = Bm25Weight::for_one_term(10, 100_000_000, 5.0);
        // A document as long as its coded length, one word repeated.
        let repeated = (0..=u8::MAX)
            .map(|id| rare.score(id, FieldNormReader::id_to_fieldnorm(id).max(1)))
            .fold(0.0, Score::max);
        // (0, 1), the pair a weight of 0 leaves, is not the field's best.
        assert!(repeated > rare.score(0, 1));
        let got = bounds(&[everywhere, rare.clone()], &[term("a"), term("b")]);
        assert_eq!(got[0].with_norms, 0.0);
        assert!(got[1].with_norms >= repeated, "{got:?}");
        let (id, tf) = best_pair(&rare);
        assert_eq!(got[1].with_norms, rare.score(id, tf));
    }

    /// [`BLOCK`] is tantivy's block size: a list of 300 documents comes
    /// as blocks of 128, 128 and 44, then ends (`TERMINATED`).
    #[test]
    fn postings_come_in_blocks_of_128() {
        let (searcher, field) = one_segment(tantivy::schema::TEXT, (0..300).map(|_| "w".into()));
        let inverted = searcher.segment_reader(0).inverted_index(field).unwrap();
        let mut block = inverted
            .read_block_postings(
                &Term::from_field_text(field, "w"),
                IndexRecordOption::WithFreqs,
            )
            .unwrap()
            .unwrap();
        let mut lengths = Vec::new();
        for _ in 0..3 {
            lengths.push(block.docs().len());
            block.advance();
        }
        assert_eq!(lengths, [BLOCK, BLOCK, 300 - 2 * BLOCK]);
        assert_eq!(block.docs().len(), 0);
        assert_eq!(block.doc(0), TERMINATED);
    }
}
