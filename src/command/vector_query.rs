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

use super::search_index::integer;
use crate::error::{Code, Error};
use bson::{RawBson, RawBsonRef, RawDocument, RawDocumentBuf};

/// Atlas's ceiling on `numCandidates` (and so on `limit`).
pub const MAX_CANDIDATES: usize = 10_000;
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
}

/// Reads a `$vectorSearch` stage with Atlas's rules.
pub fn parse_vector_search(stage: &RawDocument) -> Result<VectorQuery, Error> {
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
        None => {
            return Err(bad(
                "$vectorSearch needs 'numCandidates' unless 'exact' is true",
            ))
        }
    };
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
    Ok(VectorQuery {
        index: Some(index.to_string()),
        path: Some(path.to_string()),
        vector,
        limit,
        num_candidates,
        filter,
        exact,
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
    Ok(Some(VectorQuery {
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
    let len = match value {
        RawBsonRef::Array(a) => a.into_iter().count(),
        RawBsonRef::Binary(b) => b.bytes.len().saturating_sub(2) / 4,
        _ => return Err(bad(format!("'{what}' must be an array of numbers"))),
    };
    crate::index::vector::read_vector(Some(value), len).map_err(|e| bad(format!("'{what}': {e}")))
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
                rawdoc! { "index": "i", "path": "v", "queryVector": [1.0], "limit": 1 },
                "numCandidates",
            ),
            (
                rawdoc! { "index": "i", "path": "v", "queryVector": [1.0], "limit": 1, "exact": true, "numCandidates": 5 },
                "not allowed",
            ),
        ] {
            let err = parse_vector_search(&stage).unwrap_err();
            assert!(err.message.contains(needle), "{}", err.message);
        }
        let exact =
            rawdoc! { "index": "i", "path": "v", "queryVector": [1.0], "limit": 3, "exact": true };
        assert!(parse_vector_search(&exact).unwrap().exact);
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
