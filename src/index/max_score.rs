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
//! explanations, counts) is tantivy's own `BooleanQuery` of `TermQuery`s.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use tantivy::fieldnorm::FieldNormReader;
use tantivy::postings::BlockSegmentPostings;
use tantivy::query::{
    Bm25StatisticsProvider, Bm25Weight, BooleanQuery, EnableScoring, Explanation, Occur, Query,
    Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, Score, SegmentReader, Term, TERMINATED};

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
}

impl TermDisjunction {
    /// The disjunction of `terms` (repeats count again, as repeated
    /// clauses do).
    pub fn new(terms: Vec<Term>) -> TermDisjunction {
        TermDisjunction {
            terms,
            window: WINDOW,
        }
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

impl Query for TermDisjunction {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let EnableScoring::Enabled {
            statistics_provider,
            searcher,
        } = scoring
        else {
            return self.boolean().weight(scoring);
        };
        // tantivy's weight and the walk's per-term weights read the same
        // statistics: each is looked up in the segments once.
        let statistics = Cached::new(statistics_provider);
        let weights = self
            .terms
            .iter()
            .map(|t| Bm25Weight::for_terms(&statistics, std::slice::from_ref(t)))
            .collect::<tantivy::Result<Vec<_>>>()?;
        let inner = self
            .boolean()
            .weight(EnableScoring::enabled_from_statistics_provider(
                &statistics,
                searcher,
            ))?;
        let bounds = weights.iter().map(bounds).collect();
        Ok(Box::new(MaxScoreWeight {
            inner,
            terms: self.terms.clone(),
            weights,
            bounds,
            window: self.window,
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        for term in &self.terms {
            visitor(term, false);
        }
    }
}

struct MaxScoreWeight {
    /// tantivy's weight of the same query, for everything but the walk.
    inner: Box<dyn Weight>,
    terms: Vec<Term>,
    /// Each term's BM25 weight, in clause order.
    weights: Vec<Bm25Weight>,
    /// Each term's score bounds, in clause order (see [`bounds`]).
    bounds: Vec<Bounds>,
    /// Most documents a window of the walk spans.
    window: u32,
}

/// The searcher's BM25 statistics, each asked for once per query.
struct Cached<'a> {
    inner: &'a dyn Bm25StatisticsProvider,
    tokens: RefCell<HashMap<Field, u64>>,
    documents: Cell<Option<u64>>,
    frequencies: RefCell<HashMap<Term, u64>>,
}

impl<'a> Cached<'a> {
    fn new(inner: &'a dyn Bm25StatisticsProvider) -> Cached<'a> {
        Cached {
            inner,
            tokens: RefCell::default(),
            documents: Cell::default(),
            frequencies: RefCell::default(),
        }
    }
}

impl Bm25StatisticsProvider for Cached<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        if let Some(n) = self.tokens.borrow().get(&field) {
            return Ok(*n);
        }
        let n = self.inner.total_num_tokens(field)?;
        self.tokens.borrow_mut().insert(field, n);
        Ok(n)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        if let Some(n) = self.documents.get() {
            return Ok(n);
        }
        let n = self.inner.total_num_docs()?;
        self.documents.set(Some(n));
        Ok(n)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        if let Some(n) = self.frequencies.borrow().get(term) {
            return Ok(*n);
        }
        let n = self.inner.doc_freq(term)?;
        self.frequencies.borrow_mut().insert(term.clone(), n);
        Ok(n)
    }
}

/// The most one term adds to a document's score.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// In a field with norms: over every field-norm id, the score at the
    /// largest frequency a length in that id's bucket allows. Lengths are
    /// coded into 256 buckets, rounded down, so a term can occur more
    /// often than its document's coded length; tantivy's
    /// `Bm25Weight::max_score` takes the last bucket alone.
    with_norms: Score,
    /// In a field without norms, where every document scores as one token
    /// long (as `TermQuery` reads it) and the frequency has no bound.
    without_norms: Score,
}

/// `weight`'s [`Bounds`] (BM25 grows with the frequency and falls with
/// the length).
fn bounds(weight: &Bm25Weight) -> Bounds {
    let with_norms = (0..=u8::MAX)
        .map(|id| {
            let most = match id.checked_add(1) {
                Some(next) => FieldNormReader::id_to_fieldnorm(next).saturating_sub(1),
                None => u32::MAX,
            };
            weight.score(id, most.max(FieldNormReader::id_to_fieldnorm(id)).max(1))
        })
        .fold(0.0, Score::max);
    let one_token = FieldNormReader::constant(1, 1).fieldnorm_id(0);
    Bounds {
        with_norms,
        without_norms: weight.score(one_token, u32::MAX),
    }
}

impl Weight for MaxScoreWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        self.inner.scorer(reader, boost)
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.inner.explain(reader, doc)
    }

    fn count(&self, reader: &SegmentReader) -> tantivy::Result<u32> {
        self.inner.count(reader)
    }

    fn for_each(
        &self,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(DocId, Score),
    ) -> tantivy::Result<()> {
        self.inner.for_each(reader, callback)
    }

    fn for_each_no_score(
        &self,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(&[DocId]),
    ) -> tantivy::Result<()> {
        self.inner.for_each_no_score(reader, callback)
    }

    fn for_each_pruning(
        &self,
        threshold: Score,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(DocId, Score) -> Score,
    ) -> tantivy::Result<()> {
        let mut lists = Vec::with_capacity(self.terms.len());
        for (clause, ((term, weight), bounds)) in self
            .terms
            .iter()
            .zip(&self.weights)
            .zip(&self.bounds)
            .enumerate()
        {
            let inverted = reader.inverted_index(term.field())?;
            let Some(info) = inverted.get_term_info(term)? else {
                continue;
            };
            let block =
                inverted.read_block_postings_from_terminfo(&info, IndexRecordOption::WithFreqs)?;
            // As `TermQuery` reads them: a field without norms scores as
            // if every value were one token long.
            let (norms, max) = match reader.fieldnorms_readers().get_field(term.field())? {
                Some(norms) => (norms, bounds.with_norms),
                None => (
                    FieldNormReader::constant(reader.max_doc(), 1),
                    bounds.without_norms,
                ),
            };
            lists.push(List {
                block,
                at: 0,
                norms,
                max,
                weight: weight.clone(),
                clause,
            });
        }
        walk(lists, self.terms.len(), threshold, self.window, callback);
        Ok(())
    }
}

/// Documents in a full block of tantivy's postings (its private
/// `COMPRESSION_BLOCK_SIZE`, bitpacking's `BitPacker4x::BLOCK_LEN`); only
/// the last block of a list holds fewer. Checked by
/// `tests::postings_come_in_blocks_of_128`.
const BLOCK: usize = 128;

/// One term's postings in a segment, read a block at a time.
struct List {
    /// The block of postings the cursor is in (tantivy pads the last
    /// block's documents with `TERMINATED`, as `SegmentPostings` relies
    /// on; so does this cursor).
    block: BlockSegmentPostings,
    /// The cursor's place in the block.
    at: usize,
    norms: FieldNormReader,
    weight: Bm25Weight,
    /// The most this term adds to a score.
    max: Score,
    /// Its clause's position in the query.
    clause: usize,
}

impl List {
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
/// (`threshold`, then what `callback` returns), in document order; a
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
    mut lists: Vec<List>,
    clauses: usize,
    mut threshold: Score,
    window: u32,
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
        let end = base.saturating_add(window).min(TERMINATED);
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
                };
                for k in [1, 10, 100] {
                    let got = crate::index::slices::best_k_in(&searcher, &query, k, 1, 1).unwrap();
                    assert_eq!(got, all[..k], "{words:?} window={window} k={k}");
                }
            }
        }
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
