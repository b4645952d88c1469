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
//! Scores are tantivy's, term for term ([`Bm25Weight`] over the
//! searcher's statistics, field norms as `TermQuery` reads them), summed
//! in clause order. Everything but the pruned top-k walk (scorers,
//! explanations, counts) is tantivy's own `BooleanQuery` of `TermQuery`s.

use tantivy::fieldnorm::FieldNormReader;
use tantivy::postings::{Postings, SegmentPostings};
use tantivy::query::{
    Bm25Weight, BooleanQuery, EnableScoring, Explanation, Occur, Query, Scorer, TermQuery, Weight,
};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, DocSet, Score, SegmentReader, Term, TERMINATED};

/// Fewest terms a disjunction needs for MaxScore; shorter ones keep
/// tantivy's block-max WAND, which has little to gain from ordering one
/// or two lists. Measured with `benches/text.rs` (100,000 documents,
/// 1,000 queries, AMD EPYC, 2 cores, three runs each, alternating):
/// seven-word queries over two paths (14 terms) ran at 1,793 against
/// 1,595 queries/s on one thread and 2,539 against 2,070 with slices
/// beside each other, p99 1.9 against 2.4 ms; two-word queries (4 terms)
/// ran on par.
pub const MIN_TERMS: usize = 3;

/// `Should` clauses of `TermQuery`s (with frequencies), each scoring its
/// BM25 score; a document's score is their sum.
#[derive(Clone, Debug)]
pub struct TermDisjunction {
    terms: Vec<Term>,
}

impl TermDisjunction {
    /// The disjunction of `terms` (repeats count again, as repeated
    /// clauses do).
    pub fn new(terms: Vec<Term>) -> TermDisjunction {
        TermDisjunction { terms }
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
        let inner = self.boolean().weight(scoring)?;
        let EnableScoring::Enabled {
            statistics_provider,
            ..
        } = scoring
        else {
            return Ok(inner);
        };
        let weights = self
            .terms
            .iter()
            .map(|t| Bm25Weight::for_terms(statistics_provider, std::slice::from_ref(t)))
            .collect::<tantivy::Result<Vec<_>>>()?;
        Ok(Box::new(MaxScoreWeight {
            inner,
            terms: self.terms.clone(),
            weights,
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
        for (clause, (term, weight)) in self.terms.iter().zip(&self.weights).enumerate() {
            let inverted = reader.inverted_index(term.field())?;
            let Some(info) = inverted.get_term_info(term)? else {
                continue;
            };
            let postings =
                inverted.read_postings_from_terminfo(&info, IndexRecordOption::WithFreqs)?;
            // As `TermQuery` reads them: a field without norms scores as
            // if every value were one token long.
            let norms = reader
                .fieldnorms_readers()
                .get_field(term.field())?
                .unwrap_or_else(|| FieldNormReader::constant(reader.max_doc(), 1));
            lists.push(List {
                postings,
                norms,
                max: weight.max_score(),
                weight: weight.clone(),
                clause,
            });
        }
        walk(lists, self.terms.len(), threshold, callback);
        Ok(())
    }
}

/// One term's postings in a segment.
struct List {
    postings: SegmentPostings,
    norms: FieldNormReader,
    weight: Bm25Weight,
    /// The most this term adds to a score.
    max: Score,
    /// Its clause's position in the query.
    clause: usize,
}

impl List {
    fn score(&self, doc: DocId) -> Score {
        self.weight
            .score(self.norms.fieldnorm_id(doc), self.postings.term_freq())
    }
}

/// Calls `callback` with each document that scores above the threshold
/// (`threshold`, then what `callback` returns), in document order; a
/// document scoring no more than the threshold in force may be skipped.
/// `clauses`: the query's number of clauses (scores are summed in clause
/// order, as tantivy's explanations sum them).
fn walk(
    mut lists: Vec<List>,
    clauses: usize,
    mut threshold: Score,
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
    let mut parts = vec![0.0 as Score; clauses];
    while essential < lists.len() {
        let doc = lists[essential..]
            .iter()
            .map(|l| l.postings.doc())
            .min()
            .unwrap_or(TERMINATED);
        if doc == TERMINATED {
            break;
        }
        let mut score = 0.0;
        for list in &lists[essential..] {
            if list.postings.doc() == doc {
                let part = list.score(doc);
                parts[list.clause] += part;
                score += part;
            }
        }
        // The non-essential lists, strongest first, while the candidate
        // could still beat the threshold.
        let mut complete = true;
        for at in (0..essential).rev() {
            if score + upto[at + 1] <= threshold {
                complete = false;
                break;
            }
            let list = &mut lists[at];
            if list.postings.doc() < doc {
                list.postings.seek(doc);
            }
            if list.postings.doc() == doc {
                let part = list.score(doc);
                parts[list.clause] += part;
                score += part;
            }
        }
        if complete && score > threshold {
            let total: Score = parts.iter().sum();
            if total > threshold {
                threshold = callback(doc, total);
                essential = essential.max(essential_from(threshold));
            }
        }
        parts.fill(0.0);
        for list in &mut lists[essential..] {
            if list.postings.doc() == doc {
                list.postings.advance();
            }
        }
    }
}
