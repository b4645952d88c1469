//! The vector part of a query, from either dialect:
//!
//! - Atlas: `aggregate` whose first stage is `{$vectorSearch: {index, path,
//!   queryVector, numCandidates, limit, filter?, exact?}}`;
//! - the seed's `like`: a top-level `$like` key in a `find`/`count` filter
//!   or a first `$match` stage: `{$like: {vector | _id | document, n,
//!   semantic_index?}, ...exact filter}`.
//!
//! Both become a `VectorQuery`; the rest of the filter stays an ordinary
//! MQL filter that the upstream evaluates.

use crate::error::{Code, Error};
use crate::wire::integer;
use bson::{RawBson, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::index::MAX_CANDIDATES;
/// The seed's default `n`.
pub const DEFAULT_N: usize = 10;

fn bad(message: impl Into<String>) -> Error {
    Error::client(Code::BAD_VALUE, message)
}

/// Where the query vector comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryVector {
    /// Given as numbers.
    Values(Vec<f32>),
    /// The stored vector of the document with this `_id`.
    OfDocument(RawBson),
    /// A document whose keys the index's models encode (the first model,
    /// in order, whose key is present); its `_id`'s stored vector when no
    /// key is present.
    Content(RawDocumentBuf),
    /// Text for the model that produces the index's vectors
    /// (`$vectorSearch` with `query: {text}`, Atlas's auto-embedding shape).
    Text(String),
    /// No vector: `$search`'s full-text operator, answered by a `search`
    /// index (`limit` is how many of its best matches are fetched).
    FullText(Box<crate::index::text::Operator>),
    /// No vector: `$rankFusion` / `$scoreFusion`, which fuse the results of
    /// their input pipelines.
    Fusion(Box<super::fusion::Fusion<VectorQuery>>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuery {
    /// Index name; `None` means the collection's only index.
    pub index: Option<String>,
    /// The vector path the client named (`$vectorSearch` only).
    pub path: Option<String>,
    pub vector: QueryVector,
    /// How many results.
    pub limit: usize,
    /// Search breadth for the approximate index.
    pub num_candidates: usize,
    /// The exact (MQL) part of the query.
    pub filter: Option<RawDocumentBuf>,
    pub exact: bool,
    /// The model named for `query` text (Atlas's automated embedding):
    /// must be the model that encodes the searched path.
    pub model: Option<String>,
    /// The query vector was given as packed bits (Atlas's `int1`), which
    /// only `euclidean` indexes compare.
    pub packed_bits: bool,
    /// The query vector was given as int8 BinData (scored as Atlas scores
    /// int8 vectors).
    pub int8: bool,
    /// Asked as `$vectorSearch` (Atlas's answers apply: an index that does
    /// not exist finds nothing), not as the seed's `$like`.
    pub atlas: bool,
    /// `$search` whose later stages read `$$SEARCH_META`: its count is
    /// computed, as a `total` (`count: {type: "total"}`) or a lower bound.
    /// `None`: not read, not counted.
    pub count: Option<super::text_query::Count>,
    /// `$search`'s `highlight` option.
    pub highlight: Option<crate::index::text::Highlight>,
    /// `$search`'s `sort` option.
    pub sort: Option<Vec<crate::index::text::SortKey>>,
    /// `$search`'s `returnStoredSource: true`: documents come back with
    /// only the fields the index's `storedSource` keeps.
    pub return_stored_source: bool,
    /// `$search`'s `scoreDetails: true`.
    pub score_details: bool,
    /// No `numCandidates` was given (and not `exact`): an index with
    /// `targetRecall` chooses the breadth; `$vectorSearch` on any other
    /// index is refused, as Atlas refuses it.
    pub auto_breadth: bool,
}

impl VectorQuery {
    /// An Atlas stage answered without a query vector or an exact filter
    /// (`$search`, a fusion stage): its best `limit` results.
    pub fn atlas_stage(index: Option<String>, limit: usize, vector: QueryVector) -> VectorQuery {
        VectorQuery {
            index,
            path: None,
            vector,
            limit,
            num_candidates: limit,
            filter: None,
            exact: false,
            model: None,
            packed_bits: false,
            int8: false,
            atlas: true,
            count: None,
            highlight: None,
            sort: None,
            return_stored_source: false,
            score_details: false,
            auto_breadth: false,
        }
    }
}

/// The fields a `$vectorSearch` stage may hold (Atlas's, `explainOptions`
/// accepted and unused); any other is refused rather than ignored, so a
/// misspelt `filter` cannot silently widen a search.
const VECTOR_SEARCH_FIELDS: &[&str] = &[
    "index",
    "path",
    "queryVector",
    "query",
    "model",
    "numCandidates",
    "limit",
    "filter",
    "exact",
    "explainOptions",
];

/// Reads a `$vectorSearch` stage with Atlas's rules.
pub fn parse_vector_search(stage: &RawDocument) -> Result<VectorQuery, Error> {
    for (key, _) in stage.iter().flatten() {
        if !VECTOR_SEARCH_FIELDS.contains(&key) {
            // mongod's own refusal of an unknown field in a parsed stage.
            return Err(Error::client(
                Code::relayed(40415, "Location40415"),
                format!("BSON field '$vectorSearch.{key}' is an unknown field."),
            ));
        }
    }
    let index = stage
        .get_str("index")
        .map_err(|_| bad("$vectorSearch needs a string 'index'"))?;
    let path = stage
        .get_str("path")
        .map_err(|_| bad("$vectorSearch needs a string 'path'"))?;
    let vector = match (
        stage.get("queryVector").ok().flatten(),
        stage.get("query").ok().flatten(),
    ) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "$vectorSearch takes 'queryVector' or 'query', not both",
            ))
        }
        (None, Some(RawBsonRef::String(text))) => QueryVector::Text(text.to_string()),
        (None, Some(RawBsonRef::Document(q))) => match q.get("text") {
            Ok(Some(RawBsonRef::String(text))) => QueryVector::Text(text.to_string()),
            _ => {
                return Err(bad(
                    "$vectorSearch 'query' must be {text: \"...\"} or a string",
                ))
            }
        },
        (None, Some(_)) => {
            return Err(bad(
                "$vectorSearch 'query' must be {text: \"...\"} or a string",
            ))
        }
        (vector, None) => QueryVector::Values(numbers(vector, "queryVector")?),
    };
    let given = stage.get("queryVector").ok().flatten();
    let packed_bits = crate::index::vector::is_packed_bits(given);
    let int8 = crate::index::vector::is_int8(given);
    let exact = match stage.get("exact") {
        Ok(Some(RawBsonRef::Boolean(b))) => b,
        Ok(None) => false,
        _ => return Err(bad("$vectorSearch 'exact' must be a boolean")),
    };
    let limit = positive(stage.get("limit").ok().flatten(), "limit")?
        .ok_or_else(|| bad("$vectorSearch needs 'limit'"))?;
    let num_candidates = match positive(stage.get("numCandidates").ok().flatten(), "numCandidates")?
    {
        Some(n) => {
            if exact {
                return Err(bad("'numCandidates' is not allowed when 'exact' is true"));
            }
            if n > MAX_CANDIDATES {
                return Err(bad(format!(
                    "'numCandidates' must be at most {MAX_CANDIDATES}"
                )));
            }
            if n < limit {
                return Err(bad(
                    "'numCandidates' must be greater than or equal to 'limit'",
                ));
            }
            n
        }
        None if exact => limit,
        // Refused later unless the index has `targetRecall`.
        None => (limit * 10).clamp(100, MAX_CANDIDATES).max(limit),
    };
    let auto_breadth = !exact && stage.get("numCandidates").ok().flatten().is_none();
    if limit > MAX_CANDIDATES {
        return Err(bad(format!("'limit' must be at most {MAX_CANDIDATES}")));
    }
    let filter = match stage.get("filter") {
        Ok(Some(RawBsonRef::Document(d))) => Some(d.to_owned()),
        Ok(None) => None,
        _ => return Err(bad("$vectorSearch 'filter' must be a document")),
    };
    if let Some(f) = &filter {
        reject_nested_like(f, 0)?;
    }
    let model = match stage.get("model") {
        Ok(Some(RawBsonRef::String(m))) if matches!(vector, QueryVector::Text(_)) => {
            Some(m.to_string())
        }
        Ok(Some(RawBsonRef::String(_))) => {
            return Err(bad(
                "$vectorSearch 'model' goes with 'query' text, not with 'queryVector'",
            ))
        }
        Ok(None) => None,
        _ => return Err(bad("$vectorSearch 'model' must be a string")),
    };
    Ok(VectorQuery {
        index: Some(index.to_string()),
        path: Some(path.to_string()),
        vector,
        limit,
        num_candidates,
        filter,
        exact,
        model,
        packed_bits,
        int8,
        atlas: true,
        count: None,
        highlight: None,
        sort: None,
        return_stored_source: false,
        score_details: false,
        auto_breadth,
    })
}

/// Splits a filter into its `$like` part and the exact rest. `Ok(None)`
/// when the filter has no top-level `$like`.
pub fn parse_like_filter(filter: &RawDocument) -> Result<Option<VectorQuery>, Error> {
    let mut like = None;
    let mut rest = RawDocumentBuf::new();
    for entry in filter {
        let (key, value) = entry.map_err(|e| Error::client(Code::INVALID_BSON, e.to_string()))?;
        if key == "$like" {
            let RawBsonRef::Document(spec) = value else {
                return Err(bad("$like must be a document"));
            };
            like = Some(spec);
        } else {
            rest.append(key, value.to_raw_bson());
        }
    }
    let Some(spec) = like else {
        reject_nested_like(filter, 0)?;
        return Ok(None);
    };
    reject_nested_like(&rest, 0)?;
    let vector = if let Some(values) = spec.get("vector").ok().flatten() {
        QueryVector::Values(numbers(Some(values), "$like.vector")?)
    } else if let Some(id) = spec.get("_id").ok().flatten() {
        QueryVector::OfDocument(id.to_raw_bson())
    } else if let Ok(document) = spec.get_document("document") {
        let only_id = document.iter().flatten().all(|(k, _)| k == "_id");
        match document.get("_id").ok().flatten() {
            Some(id) if only_id => QueryVector::OfDocument(id.to_raw_bson()),
            _ if document.is_empty() => return Err(bad("'$like.document' is empty")),
            _ => QueryVector::Content(document.to_owned()),
        }
    } else {
        return Err(bad("$like needs 'vector', '_id' or 'document'"));
    };
    let n = positive(spec.get("n").ok().flatten(), "$like.n")?.unwrap_or(DEFAULT_N);
    if n > MAX_CANDIDATES {
        return Err(bad(format!("'$like.n' must be at most {MAX_CANDIDATES}")));
    }
    let index = match spec.get("semantic_index") {
        Ok(Some(RawBsonRef::String(name))) => Some(name.to_string()),
        Ok(None) => None,
        _ => return Err(bad("'$like.semantic_index' must be a string")),
    };
    let num_candidates = positive(
        spec.get("numCandidates").ok().flatten(),
        "$like.numCandidates",
    )?
    .unwrap_or((n * 10).max(100))
    .clamp(n, MAX_CANDIDATES);
    let exact = matches!(spec.get("exact"), Ok(Some(RawBsonRef::Boolean(true))));
    let auto_breadth = !exact && spec.get("numCandidates").ok().flatten().is_none();
    Ok(Some(VectorQuery {
        model: None,
        packed_bits: false,
        int8: false,
        atlas: false,
        count: None,
        highlight: None,
        sort: None,
        return_stored_source: false,
        score_details: false,
        auto_breadth,
        index,
        path: None,
        vector,
        limit: n,
        num_candidates,
        filter: (!rest.is_empty()).then_some(rest),
        exact,
    }))
}

/// `$like` is only meaningful at the top level of a filter.
fn reject_nested_like(doc: &RawDocument, depth: usize) -> Result<(), Error> {
    if depth > 100 {
        return Err(bad("filter nested too deeply"));
    }
    for entry in doc {
        let Ok((key, value)) = entry else { continue };
        if key == "$like" && depth > 0 {
            return Err(bad(
                "$like must be at the top level of the filter, not inside an operator such as $or",
            ));
        }
        match value {
            RawBsonRef::Document(d) => reject_nested_like(d, depth + 1)?,
            RawBsonRef::Array(a) => {
                for item in a.into_iter().flatten() {
                    if let RawBsonRef::Document(d) = item {
                        reject_nested_like(d, depth + 1)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn positive(value: Option<RawBsonRef<'_>>, what: &str) -> Result<Option<usize>, Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    integer(Some(value))
        .filter(|n| *n > 0)
        .and_then(|n| usize::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| bad(format!("'{what}' must be a positive integer")))
}

/// A query vector given as an array of numbers (or a BinData vector).
fn numbers(value: Option<RawBsonRef<'_>>, what: &str) -> Result<Vec<f32>, Error> {
    let value = value.ok_or_else(|| bad(format!("'{what}' is required")))?;
    if !matches!(value, RawBsonRef::Array(_) | RawBsonRef::Binary(_)) {
        return Err(bad(format!("'{what}' must be an array of numbers")));
    }
    crate::index::vector::read_any_vector(Some(value)).map_err(|e| bad(format!("'{what}': {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn atlas_rules_are_enforced() {
        let ok = rawdoc! { "index": "i", "path": "v", "queryVector": [1.0, 2.0], "numCandidates": 50, "limit": 5, "filter": { "year": { "$gt": 2000 } } };
        let q = parse_vector_search(&ok).unwrap();
        assert_eq!((q.limit, q.num_candidates), (5, 50));
        assert_eq!(q.vector, QueryVector::Values(vec![1.0, 2.0]));
        assert!(q.filter.is_some());
        for (stage, needle) in [
            (
                rawdoc! { "index": "i", "path": "v", "queryVector": [1.0], "numCandidates": 5, "limit": 10 },
                "greater than or equal",
            ),
            (
                rawdoc! { "index": "i", "path": "v", "queryVector": [1.0], "numCandidates": 10001, "limit": 10 },
                "at most",
            ),
            (
                rawdoc! { "index": "i", "path": "v", "queryVector": [1.0], "numCandidates": 10, "limit": 0 },
                "positive",
            ),
            (
                rawdoc! { "index": "i", "path": "v", "queryVector": [1.0, "x"], "numCandidates": 10, "limit": 1 },
                "queryVector",
            ),
            (
                rawdoc! { "index": "i", "path": "v", "queryVector": [1.0], "limit": 1, "exact": true, "numCandidates": 5 },
                "not allowed",
            ),
        ] {
            let err = parse_vector_search(&stage).unwrap_err();
            assert!(err.message.contains(needle), "{}", err.message);
        }
        // No numCandidates: the index decides (`targetRecall`), or the
        // planner refuses it as Atlas does.
        let auto = rawdoc! { "index": "i", "path": "v", "queryVector": [1.0], "limit": 1 };
        assert!(parse_vector_search(&auto).unwrap().auto_breadth);
        let exact =
            rawdoc! { "index": "i", "path": "v", "queryVector": [1.0], "limit": 3, "exact": true };
        assert!(parse_vector_search(&exact).unwrap().exact);
        assert!(!parse_vector_search(&exact).unwrap().auto_breadth);
    }

    #[test]
    fn like_splits_from_the_exact_filter() {
        let filter = rawdoc! { "$like": { "vector": [0.5, 1], "n": 3, "semantic_index": "s" }, "year": 1999 };
        let q = parse_like_filter(&filter).unwrap().unwrap();
        assert_eq!(q.limit, 3);
        assert_eq!(q.index.as_deref(), Some("s"));
        assert_eq!(q.filter.unwrap(), rawdoc! { "year": 1999 });
        let by_id = rawdoc! { "$like": { "document": { "_id": 7 }, "n": 2 } };
        assert_eq!(
            parse_like_filter(&by_id).unwrap().unwrap().vector,
            QueryVector::OfDocument(RawBson::Int32(7))
        );
        assert!(parse_like_filter(&rawdoc! { "a": 1 }).unwrap().is_none());
        let nested = rawdoc! { "$or": [{ "$like": { "vector": [1.0] } }, { "a": 1 }] };
        assert!(parse_like_filter(&nested)
            .unwrap_err()
            .message
            .contains("top level"));
        for bad_n in [
            rawdoc! { "$like": { "vector": [1.0], "n": 0 } },
            rawdoc! { "$like": { "vector": [1.0], "n": 20000 } },
        ] {
            assert!(parse_like_filter(&bad_n).is_err());
        }
    }
}

/// Whether `stage` is an owned vector stage when it opens a pipeline:
/// `$vectorSearch`, or `$match` with a top-level `$like`.
pub fn is_vector_stage(stage: &RawDocument) -> bool {
    match stage.iter().next() {
        Some(Ok((
            "$vectorSearch" | "$search" | "$searchMeta" | "$rankFusion" | "$scoreFusion",
            _,
        ))) => true,
        Some(Ok(("$match", RawBsonRef::Document(m)))) => m.get("$like").ok().flatten().is_some(),
        _ => false,
    }
}

/// The sub-pipelines a stage runs: `$unionWith`'s and `$lookup`'s
/// `pipeline`, each of `$facet`'s.
fn sub_pipelines<'a>(name: &str, spec: RawBsonRef<'a>) -> Vec<&'a bson::RawArray> {
    let RawBsonRef::Document(spec) = spec else {
        return Vec::new();
    };
    match name {
        "$unionWith" | "$lookup" => spec.get_array("pipeline").ok().into_iter().collect(),
        "$facet" => spec
            .iter()
            .flatten()
            .filter_map(|(_, v)| v.as_array())
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a pipeline holds `$vectorSearch` (anywhere, misplaced
/// included) or opens, or opens a sub-pipeline, with a `$like` match: the
/// `aggregate`s the proxy must answer or refuse. Sub-pipelines deeper than
/// `depth` are not looked into (messages are depth-checked before this).
pub fn pipeline_has_vector_stage(stages: &bson::RawArray, depth: usize) -> bool {
    depth > 0
        && stages
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_document())
            .enumerate()
            .any(|(i, stage)| {
                (i == 0 && is_vector_stage(stage))
                    || match stage.iter().next() {
                        Some(Ok((
                            "$vectorSearch" | "$search" | "$searchMeta" | "$rankFusion"
                            | "$scoreFusion",
                            _,
                        ))) => true,
                        Some(Ok((name, spec))) => sub_pipelines(name, spec)
                            .into_iter()
                            .any(|p| pipeline_has_vector_stage(p, depth - 1)),
                        _ => false,
                    }
            })
}

/// The owned vector stages of a pipeline run on `collection`, each with
/// the collection it searches, in the order the rewrite meets them (a
/// stage, then the later stages in order, `$unionWith` sub-pipelines where
/// they stand). Where Atlas refuses a placement, its error (codes and
/// messages from mongod's `document_source_vector_search.h` constraints):
/// not first, `Location40602`; in `$facet`, 40600; in a `$lookup`
/// sub-pipeline, 51047. `$unionWith` sub-pipelines are served (MongoDB
/// 8.0+), at any depth.
pub fn vector_stages(
    collection: &str,
    stages: &bson::RawArray,
) -> Result<Vec<(String, VectorQuery)>, Error> {
    let mut out = Vec::new();
    collect_vector_stages(collection, stages, &mut out, 0)?;
    Ok(out)
}

fn collect_vector_stages(
    collection: &str,
    stages: &bson::RawArray,
    out: &mut Vec<(String, VectorQuery)>,
    depth: usize,
) -> Result<(), Error> {
    if depth > 100 {
        return Err(Error::client(Code::OVERFLOW, "pipeline nested too deeply"));
    }
    for (i, stage) in stages.into_iter().enumerate() {
        // mongod's shape rules, checked here so that the rewrite, which
        // walks the same stages, meets exactly these.
        let Ok(RawBsonRef::Document(stage)) = stage else {
            return Err(Error::client(
                Code::relayed(14, "TypeMismatch"),
                "Each element of the 'pipeline' array must be an object",
            ));
        };
        let mut fields = stage.iter();
        let (Some(Ok((name, spec))), None) = (fields.next(), fields.next()) else {
            return Err(Error::client(
                Code::relayed(40323, "Location40323"),
                "A pipeline stage specification object must contain exactly one field.",
            ));
        };
        match (i, name, spec) {
            (0, "$rankFusion" | "$scoreFusion", spec) => {
                let fusion = super::fusion::parse_fusion(
                    name,
                    spec,
                    search_limit(stages),
                    &owned_first_stage,
                )?;
                out.push((
                    collection.to_string(),
                    VectorQuery::atlas_stage(
                        None,
                        fusion.limit,
                        QueryVector::Fusion(Box::new(fusion)),
                    ),
                ));
            }
            (_, "$rankFusion" | "$scoreFusion", _) => {
                return Err(Error::client(
                    Code::relayed(10170100, "Location10170100"),
                    "$rankFusion/$scoreFusion can only be the first stage of an aggregation \
                     pipeline.",
                ))
            }
            (0, "$vectorSearch" | "$search", _) => {
                if let Some(query) = owned_first_stage(stages)? {
                    out.push((collection.to_string(), query));
                }
            }
            // Served where it opens the command's pipeline (`ForClient::
            // search_meta`), before any stage is planned.
            (0, "$searchMeta", _) => {
                return Err(bad(
                    "$searchMeta is served as the first stage of the pipeline, not inside \
                     $unionWith",
                ))
            }
            (_, "$vectorSearch" | "$search" | "$searchMeta", _) if i > 0 => {
                return Err(Error::client(
                    Code::STAGE_NOT_FIRST,
                    format!("{name} is only valid as the first stage in a pipeline."),
                ))
            }
            (0, "$match", _) if is_vector_stage(stage) => {
                if let Some(query) = owned_first_stage(stages)? {
                    out.push((collection.to_string(), query));
                }
            }
            (_, "$facet" | "$lookup", spec)
                if sub_pipelines(name, spec)
                    .into_iter()
                    .any(|p| pipeline_has_vector_stage(p, 100)) =>
            {
                return Err(if name == "$facet" {
                    Error::client(
                        Code::relayed(40600, "Location40600"),
                        "$vectorSearch is not allowed to be used within a $facet stage",
                    )
                } else {
                    Error::client(
                        Code::relayed(51047, "Location51047"),
                        "$vectorSearch is not allowed within a $lookup's sub-pipeline",
                    )
                });
            }
            (_, "$unionWith", RawBsonRef::Document(spec)) => {
                if let Ok(pipeline) = spec.get_array("pipeline") {
                    let coll = spec.get_str("coll").unwrap_or(collection);
                    collect_vector_stages(coll, pipeline, out, depth + 1)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether stages after the first mention `$$SEARCH_META` (to `depth`
/// 100).
fn reads_search_meta(stages: &bson::RawArray, depth: usize) -> bool {
    fn walk(value: RawBsonRef<'_>, depth: usize) -> bool {
        match value {
            _ if depth > 100 => false,
            RawBsonRef::String(s) => s.starts_with("$$SEARCH_META"),
            RawBsonRef::Document(d) => d.iter().flatten().any(|(_, v)| walk(v, depth + 1)),
            RawBsonRef::Array(a) => a.into_iter().flatten().any(|v| walk(v, depth + 1)),
            _ => false,
        }
    }
    stages
        .into_iter()
        .skip(1)
        .flatten()
        .any(|stage| walk(stage, depth))
}

/// The query a pipeline's first stage asks the proxy to answer:
/// `$vectorSearch`, `$search`, or a `$match` with a top-level `$like`;
/// `None` when the pipeline opens with anything else.
pub fn owned_first_stage(stages: &bson::RawArray) -> Result<Option<VectorQuery>, Error> {
    let Some(Ok(RawBsonRef::Document(stage))) = stages.into_iter().next() else {
        return Ok(None);
    };
    let Some(Ok((name, spec))) = stage.iter().next() else {
        return Ok(None);
    };
    let query = match (name, spec) {
        ("$vectorSearch", RawBsonRef::Document(spec)) => {
            if super::contains_key(spec, "$like", 0) {
                return Err(bad("$like cannot be combined with $vectorSearch"));
            }
            parse_vector_search(spec)?
        }
        ("$vectorSearch", _) => return Err(bad("$vectorSearch must be a document")),
        ("$search", RawBsonRef::Document(spec)) => {
            let stage = super::text_query::parse_search(spec)?;
            let limit = search_limit(stages);
            VectorQuery {
                count: reads_search_meta(stages, 0).then_some(stage.count),
                highlight: stage.highlight,
                sort: stage.sort,
                return_stored_source: stage.return_stored_source,
                score_details: stage.score_details,
                ..VectorQuery::atlas_stage(
                    Some(stage.index),
                    limit,
                    QueryVector::FullText(Box::new(stage.operator)),
                )
            }
        }
        ("$search", _) => return Err(bad("$search must be a document")),
        ("$match", RawBsonRef::Document(filter)) if is_vector_stage(stage) => {
            parse_like_filter(filter)?
                .ok_or_else(|| bad("$like must be at the top level of $match"))?
        }
        _ => return Ok(None),
    };
    Ok(Some(query))
}

/// How many of a `$search`'s best matches its pipeline (`stages`, the
/// `$search` first) can use: `$skip` + `$limit` when they come before any
/// stage that drops or multiplies documents, else
/// [`crate::index::MAX_CANDIDATES`] (the most one search returns; Atlas
/// returns every match).
pub fn search_limit(stages: &bson::RawArray) -> usize {
    let cap = crate::index::MAX_CANDIDATES;
    let mut skip = 0usize;
    for stage in stages.into_iter().skip(1).flatten() {
        let Some(Ok((name, value))) = stage.as_document().and_then(|d| d.iter().next()) else {
            return cap;
        };
        let n = crate::wire::integer(Some(value)).and_then(|n| usize::try_from(n).ok());
        match (name, n) {
            ("$skip", Some(n)) => skip = skip.saturating_add(n),
            ("$limit", Some(n)) => return skip.saturating_add(n).min(cap),
            // One document out for each in.
            (
                "$project" | "$set" | "$addFields" | "$unset" | "$replaceRoot" | "$replaceWith"
                | "$lookup",
                _,
            ) => {}
            _ => return cap,
        }
    }
    cap
}

#[cfg(test)]
mod placement_tests {
    use super::*;
    use bson::rawdoc;

    fn stage() -> RawDocumentBuf {
        rawdoc! { "$vectorSearch": { "index": "i", "path": "v", "queryVector": [1.0, 2.0], "numCandidates": 10, "limit": 2 } }
    }

    fn codes(pipeline: bson::RawArrayBuf) -> Result<Vec<String>, i32> {
        vector_stages("c", &pipeline)
            .map(|found| found.into_iter().map(|(c, _)| c).collect())
            .map_err(|e| e.code.code)
    }

    #[test]
    fn vector_stages_are_found_where_atlas_serves_them_and_refused_elsewhere() {
        let union = |coll: &str, inner: bson::RawArrayBuf| {
            rawdoc! { "$unionWith": { "coll": coll, "pipeline": inner } }
        };
        let arr = |stages: Vec<RawDocumentBuf>| {
            let mut a = bson::RawArrayBuf::new();
            for s in stages {
                a.push(s);
            }
            a
        };
        // First, and in `$unionWith` at any depth, in walk order.
        let nested = arr(vec![
            stage(),
            union("d", arr(vec![stage(), union("e", arr(vec![stage()]))])),
            rawdoc! { "$limit": 3 },
            union(
                "f",
                arr(vec![
                    rawdoc! { "$match": { "$like": { "vector": [1.0], "n": 2 }, "x": 1 } },
                ]),
            ),
        ]);
        assert_eq!(
            codes(nested),
            Ok(vec!["c".into(), "d".into(), "e".into(), "f".into()])
        );
        // Refused: not first (also inside a union), in `$facet`, in `$lookup`.
        assert_eq!(
            codes(arr(vec![rawdoc! { "$match": {} }, stage()])),
            Err(40602)
        );
        assert_eq!(
            codes(arr(vec![union(
                "d",
                arr(vec![rawdoc! { "$match": {} }, stage()])
            )])),
            Err(40602)
        );
        assert_eq!(
            codes(arr(vec![stage(), rawdoc! { "$facet": { "a": [stage()] } }])),
            Err(40600)
        );
        assert_eq!(
            codes(arr(vec![
                rawdoc! { "$lookup": { "from": "d", "as": "x", "pipeline": [
                    { "$unionWith": { "coll": "e", "pipeline": [stage()] } }
                ] } }
            ])),
            Err(51047)
        );
        // Nothing owned.
        assert_eq!(
            codes(arr(vec![union("d", arr(vec![rawdoc! { "$match": {} }]))])),
            Ok(vec![])
        );
    }
}
