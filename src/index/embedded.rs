//! Atlas Search's `embeddedDocuments`: each element of an array of
//! documents indexed as a document of its own, so that an
//! `embeddedDocument` query (like `$elemMatch`) holds all its clauses in
//! one element.
//!
//! Lucene (and so Atlas) keeps the elements as child documents in the
//! parent's index, joined by block position. tantivy has no block join,
//! so a [`crate::index::text::TextIndex`] keeps one child index per
//! `embeddedDocuments` path whose documents carry their parent's `_id`
//! (indexed and as a fast column). A query runs the inner operator over
//! the child index, collects every matching element's score by parent
//! ([`ElementMatches`], scores combined by [`EmbeddedAggregate`]), and
//! answers in the parent index with [`ParentScores`]: the parents found,
//! by their `_id` terms, with those scores. Its cost is proportional to
//! the elements that match, plus a term lookup per matching parent in
//! each segment of the parent index.

use bson::{RawBsonRef, RawDocument};
use std::collections::HashMap;
use std::sync::Arc;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::BytesColumn;
use tantivy::query::{EnableScoring, Explanation, Query, Scorer, Weight};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader, Term};
use tantivy::{DocSet, TERMINATED};

/// How the scores of a parent's matching elements combine (Atlas's
/// `score.embedded.aggregate`; `sum` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbeddedAggregate {
    #[default]
    Sum,
    Maximum,
    Minimum,
    Mean,
}

impl EmbeddedAggregate {
    /// The aggregate Atlas names `name`, if any.
    pub fn parse(name: &str) -> Option<EmbeddedAggregate> {
        Some(match name {
            "sum" => EmbeddedAggregate::Sum,
            "maximum" => EmbeddedAggregate::Maximum,
            "minimum" => EmbeddedAggregate::Minimum,
            "mean" => EmbeddedAggregate::Mean,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            EmbeddedAggregate::Sum => "sum",
            EmbeddedAggregate::Maximum => "maximum",
            EmbeddedAggregate::Minimum => "minimum",
            EmbeddedAggregate::Mean => "mean",
        }
    }
}

/// One parent's matching elements so far.
#[derive(Debug, Clone, Copy)]
struct Combined {
    sum: f32,
    max: f32,
    min: f32,
    count: u32,
}

impl Combined {
    fn of(score: f32) -> Combined {
        Combined {
            sum: score,
            max: score,
            min: score,
            count: 1,
        }
    }

    fn add(&mut self, other: Combined) {
        self.sum += other.sum;
        self.max = self.max.max(other.max);
        self.min = self.min.min(other.min);
        self.count += other.count;
    }

    fn value(self, aggregate: EmbeddedAggregate) -> f32 {
        match aggregate {
            EmbeddedAggregate::Sum => self.sum,
            EmbeddedAggregate::Maximum => self.max,
            EmbeddedAggregate::Minimum => self.min,
            EmbeddedAggregate::Mean => self.sum / self.count as f32,
        }
    }
}

/// The documents of `doc` at the dotted `path` that an
/// `embeddedDocuments` field indexes: the elements of an array of
/// documents there (arrays on the way are walked through), or a lone
/// document.
pub fn elements_at<'a>(doc: &'a RawDocument, path: &str, out: &mut Vec<&'a RawDocument>) {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let Ok(Some(value)) = doc.get(head) else {
        return;
    };
    let mut visit = |value: RawBsonRef<'a>| match (value, rest) {
        (RawBsonRef::Document(d), None) => out.push(d),
        (RawBsonRef::Document(d), Some(rest)) => elements_at(d, rest, out),
        _ => {}
    };
    match value {
        RawBsonRef::Array(items) => items.into_iter().flatten().for_each(&mut visit),
        other => visit(other),
    }
}

/// A collector of every matching element's score, combined by parent
/// `_id` (the canonical bytes the child index's `_id` fast column holds).
pub struct ElementMatches;

/// [`ElementMatches`] within one segment: scores by the `_id` column's
/// term ordinal.
pub struct SegmentMatches {
    ids: BytesColumn,
    by_ord: HashMap<u64, Combined>,
}

impl Collector for ElementMatches {
    type Fruit = HashMap<Vec<u8>, CombinedScores>;
    type Child = SegmentMatches;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<SegmentMatches> {
        let ids = segment
            .fast_fields()
            .bytes("_id")?
            .unwrap_or_else(|| BytesColumn::empty(segment.max_doc()));
        Ok(SegmentMatches {
            ids,
            by_ord: HashMap::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(
        &self,
        fruits: Vec<HashMap<Vec<u8>, CombinedScores>>,
    ) -> tantivy::Result<HashMap<Vec<u8>, CombinedScores>> {
        let mut out: HashMap<Vec<u8>, CombinedScores> = HashMap::new();
        for fruit in fruits {
            for (id, scores) in fruit {
                match out.get_mut(&id) {
                    Some(have) => have.0.add(scores.0),
                    None => {
                        out.insert(id, scores);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A parent's combined element scores (opaque outside this module).
#[derive(Debug, Clone, Copy)]
pub struct CombinedScores(Combined);

impl CombinedScores {
    /// The parent's score under `aggregate`.
    pub fn value(self, aggregate: EmbeddedAggregate) -> f32 {
        self.0.value(aggregate)
    }
}

impl SegmentCollector for SegmentMatches {
    type Fruit = HashMap<Vec<u8>, CombinedScores>;

    fn collect(&mut self, doc: DocId, score: Score) {
        if let Some(ord) = self.ids.term_ords(doc).next() {
            self.by_ord
                .entry(ord)
                .and_modify(|c| c.add(Combined::of(score)))
                .or_insert_with(|| Combined::of(score));
        }
    }

    fn harvest(self) -> HashMap<Vec<u8>, CombinedScores> {
        let mut out = HashMap::with_capacity(self.by_ord.len());
        for (ord, combined) in self.by_ord {
            let mut id = Vec::new();
            if let Ok(true) = self.ids.ord_to_bytes(ord, &mut id) {
                out.insert(id, CombinedScores(combined));
            }
        }
        out
    }
}

/// A query over the parent index matching the documents whose `_id`
/// (canonical bytes, as indexed in `id_field`) `scores` holds, each with
/// its score.
#[derive(Clone)]
pub struct ParentScores {
    pub id_field: Field,
    pub scores: Arc<HashMap<Vec<u8>, Score>>,
    pub aggregate: EmbeddedAggregate,
}

impl std::fmt::Debug for ParentScores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParentScores")
            .field("parents", &self.scores.len())
            .field("aggregate", &self.aggregate)
            .finish()
    }
}

impl Query for ParentScores {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl ParentScores {
    /// The segment's documents holding the ids, with their scores, in
    /// document order.
    fn docs(&self, reader: &SegmentReader) -> tantivy::Result<Vec<(DocId, Score)>> {
        let inverted = reader.inverted_index(self.id_field)?;
        let mut out = Vec::new();
        for (id, score) in self.scores.iter() {
            let term = Term::from_field_bytes(self.id_field, id);
            if let Some(mut postings) = inverted.read_postings(&term, IndexRecordOption::Basic)? {
                while postings.doc() != TERMINATED {
                    out.push((postings.doc(), *score));
                    postings.advance();
                }
            }
        }
        out.sort_unstable_by_key(|(doc, _)| *doc);
        Ok(out)
    }
}

impl Weight for ParentScores {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let docs = self.docs(reader)?;
        Ok(Box::new(ListScorer { docs, at: 0, boost }))
    }

    /// The document's score, found by its stored `_id`.
    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let stored: tantivy::TantivyDocument = reader.get_store_reader(1)?.get(doc)?;
        let score = stored
            .get_first(self.id_field)
            .and_then(|v| v.as_bytes())
            .and_then(|id| self.scores.get(id));
        match score {
            Some(score) => {
                let description = format!(
                    "embeddedDocument: the {} of its matching elements' scores",
                    self.aggregate.name()
                );
                Ok(Explanation::new_with_string(description, *score))
            }
            None => Err(tantivy::TantivyError::InvalidArgument(format!(
                "document #{doc} does not match"
            ))),
        }
    }
}

/// Documents and scores from a list, in document order.
struct ListScorer {
    docs: Vec<(DocId, Score)>,
    at: usize,
    boost: Score,
}

impl DocSet for ListScorer {
    fn advance(&mut self) -> DocId {
        if self.at < self.docs.len() {
            self.at += 1;
        }
        self.doc()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        let rest = &self.docs[self.at..];
        self.at += rest.partition_point(|(d, _)| *d < target);
        self.doc()
    }

    fn doc(&self) -> DocId {
        self.docs.get(self.at).map_or(TERMINATED, |(d, _)| *d)
    }

    fn size_hint(&self) -> u32 {
        u32::try_from(self.docs.len() - self.at.min(self.docs.len())).unwrap_or(u32::MAX)
    }
}

impl Scorer for ListScorer {
    fn score(&mut self) -> Score {
        self.docs.get(self.at).map_or(0.0, |(_, s)| *s * self.boost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn elements_are_found_through_arrays_and_documents() {
        let doc = rawdoc! {
            "items": [{ "n": 1 }, 5, { "n": 2 }],
            "a": [{ "b": [{ "n": 3 }] }, { "b": { "n": 4 } }],
            "one": { "n": 5 },
        };
        let ns = |path: &str| -> Vec<i32> {
            let mut out = Vec::new();
            elements_at(&doc, path, &mut out);
            out.iter().map(|d| d.get_i32("n").unwrap()).collect()
        };
        assert_eq!(ns("items"), vec![1, 2]);
        assert_eq!(ns("a.b"), vec![3, 4]);
        assert_eq!(ns("one"), vec![5]);
        assert!(ns("missing").is_empty());
        assert!(ns("items.n").is_empty());
    }

    #[test]
    fn aggregates_combine_as_atlas_names_them() {
        let mut c = Combined::of(1.0);
        c.add(Combined::of(3.0));
        c.add(Combined::of(2.0));
        assert_eq!(c.value(EmbeddedAggregate::Sum), 6.0);
        assert_eq!(c.value(EmbeddedAggregate::Maximum), 3.0);
        assert_eq!(c.value(EmbeddedAggregate::Minimum), 1.0);
        assert_eq!(c.value(EmbeddedAggregate::Mean), 2.0);
        assert_eq!(
            EmbeddedAggregate::parse("mean"),
            Some(EmbeddedAggregate::Mean)
        );
        assert_eq!(EmbeddedAggregate::parse("avg"), None);
    }
}
