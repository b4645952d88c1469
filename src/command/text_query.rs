//! The `$search` stage, read with Atlas Search's rules into an
//! [`Operator`] tree: `text`, `phrase` and `compound` (with per-clause
//! `score`), paths as a string, `{value}`, `{wildcard}` or a list of
//! those. Options likewise does not serve yet are refused by name.

use crate::error::{Code, Error};
use crate::index::embedded::EmbeddedAggregate;
use crate::index::text::{
    Facet, FieldValue, Fuzzy, Highlight, Operator, ScoreModifier, SearchPath, SortKey,
};
use bson::RawBson;
use bson::{RawBsonRef, RawDocument};
use std::ops::Bound;

/// The operators served.
const SERVED: &[&str] = &[
    "text",
    "phrase",
    "compound",
    "equals",
    "in",
    "range",
    "exists",
    "wildcard",
    "regex",
    "autocomplete",
    "queryString",
    "embeddedDocument",
];

fn not_served(op: &str) -> Error {
    bad(format!(
        "the $search operator '{op}' is not served by likewise yet (text, phrase, compound, \
         equals, in, range, exists, wildcard, regex, autocomplete, queryString and \
         embeddedDocument are)"
    ))
}

/// Deepest `compound` nesting served.
const MAX_OPERATOR_DEPTH: usize = 64;
/// Most clauses in one `$search`, all levels together.
const MAX_CLAUSES: usize = 1024;
/// Most query strings one `text` or `phrase` takes.
const MAX_QUERIES: usize = 256;

fn bad(message: impl Into<String>) -> Error {
    Error::client(Code::BAD_VALUE, message)
}

/// A parsed `$search`.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchStage {
    /// The index searched (Atlas's default: `"default"`).
    pub index: String,
    pub operator: Operator,
    /// `count.type`: what `$$SEARCH_META` gives.
    pub count: Count,
    /// `highlight`: passages for `{$meta: "searchHighlights"}`.
    pub highlight: Option<Highlight>,
    /// `sort`: the order of the results, when not by score alone.
    pub sort: Option<Vec<SortKey>>,
    /// `returnStoredSource`: only the index's stored fields come back.
    pub return_stored_source: bool,
    /// `scoreDetails`: `{$meta: "searchScoreDetails"}` explains each score.
    pub score_details: bool,
}

/// `count.type` of `$search` and `$searchMeta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Atlas's default.
    LowerBound,
    Total,
}

/// Reads a `$search` stage's document.
pub fn parse_search(stage: &RawDocument) -> Result<SearchStage, Error> {
    let mut index = "default".to_string();
    let mut operator = None;
    let mut total = false;
    let mut highlight = None;
    let mut sort = None;
    let mut return_stored_source = false;
    let mut score_details = false;
    let mut clauses = 0;
    for (key, value) in stage.iter().flatten() {
        match (key, value) {
            ("index", RawBsonRef::String(name)) => index = name.to_string(),
            ("index", _) => return Err(bad("\"$search.index\" must be a string")),
            ("returnStoredSource", RawBsonRef::Boolean(stored)) => return_stored_source = stored,
            ("scoreDetails", RawBsonRef::Boolean(explain)) => score_details = explain,
            // A hint to run segments in parallel; results are the same.
            ("concurrent", RawBsonRef::Boolean(_)) => {}
            ("count", RawBsonRef::Document(count)) => total = parse_count(count)?,
            ("highlight", RawBsonRef::Document(spec)) => highlight = Some(parse_highlight(spec)?),
            ("sort", RawBsonRef::Document(spec)) => sort = Some(parse_sort(spec)?),
            (op, RawBsonRef::Document(spec)) if SERVED.contains(&op) => {
                if operator.is_some() {
                    return Err(bad("$search takes exactly one operator"));
                }
                operator = Some(parse_operator(key, spec, 0, &mut clauses)?);
            }
            (
                "returnStoredSource" | "scoreDetails" | "searchAfter" | "searchBefore" | "tracking",
                _,
            ) => {
                return Err(bad(format!(
                    "\"$search.{key}\" is not served by likewise yet"
                )))
            }
            (op, _) if SERVED.contains(&op) => {
                return Err(bad(format!("\"$search.{op}\" must be a document")))
            }
            (
                "geoShape" | "geoWithin" | "knnBeta" | "moreLikeThis" | "near" | "span"
                | "hasAncestor" | "hasRoot",
                _,
            ) => return Err(not_served(key)),
            _ => return Err(bad(format!("\"$search.{key}\" is not a $search option"))),
        }
    }
    let operator = operator.ok_or_else(|| bad("$search needs an operator"))?;
    Ok(SearchStage {
        index,
        operator,
        count: if total {
            Count::Total
        } else {
            Count::LowerBound
        },
        highlight,
        sort,
        return_stored_source,
        score_details,
    })
}

/// Most facets one `$searchMeta` computes.
const MAX_FACETS: usize = 100;
/// Most buckets a facet has (Atlas's limit for string facets and
/// boundaries).
const MAX_BUCKETS: usize = 1000;

/// A parsed `$searchMeta`: counts and facets of an operator's matches.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchMetaStage {
    pub index: String,
    /// `None`: every document (a `facet` without an `operator`).
    pub operator: Option<Operator>,
    /// `count.type: "total"` (else `lowerBound`, Atlas's default).
    pub total: bool,
    /// Named facets, in the order given.
    pub facets: Vec<(String, Facet)>,
}

/// Reads a `$searchMeta` stage's document: `{index?, <operator>, count?}`
/// or `{index?, facet: {operator?, facets: {name: {type: "string" |
/// "number" | "date", path, numBuckets? | boundaries + default?}}},
/// count?}`.
pub fn parse_search_meta(stage: &RawDocument) -> Result<SearchMetaStage, Error> {
    let mut index = "default".to_string();
    let mut operator = None;
    let mut total = false;
    let mut facets = None;
    let mut clauses = 0;
    for (key, value) in stage.iter().flatten() {
        match (key, value) {
            ("index", RawBsonRef::String(name)) => index = name.to_string(),
            ("index", _) => return Err(bad("\"$searchMeta.index\" must be a string")),
            ("returnStoredSource" | "scoreDetails", RawBsonRef::Boolean(false)) => {}
            ("concurrent", RawBsonRef::Boolean(_)) => {}
            ("count", RawBsonRef::Document(count)) => total = parse_count(count)?,
            ("facet", RawBsonRef::Document(facet)) => {
                let (op, named) = parse_facet(facet, &mut clauses)?;
                operator = op.or(operator);
                facets = Some(named);
            }
            (op, RawBsonRef::Document(spec)) if SERVED.contains(&op) => {
                if operator.is_some() {
                    return Err(bad("$searchMeta takes exactly one operator"));
                }
                operator = Some(parse_operator(op, spec, 0, &mut clauses)?);
            }
            (op, _) if SERVED.contains(&op) || op == "count" || op == "facet" => {
                return Err(bad(format!("\"$searchMeta.{op}\" must be a document")))
            }
            _ => {
                return Err(bad(format!(
                    "\"$searchMeta.{key}\" is not a $searchMeta option"
                )))
            }
        }
    }
    if facets.is_some() && stage.iter().flatten().any(|(k, _)| SERVED.contains(&k)) {
        return Err(bad(
            "with \"facet\", $searchMeta takes its operator inside the facet \
             (facet.operator)",
        ));
    }
    if operator.is_none() && facets.is_none() {
        return Err(bad("$searchMeta needs an operator or a facet"));
    }
    Ok(SearchMetaStage {
        index,
        operator,
        total,
        facets: facets.unwrap_or_default(),
    })
}

/// `sort: {<path>: 1 | -1 | {order: 1 | -1, noData: "lowest"}, <any>:
/// {$meta: "searchScore", order?}}`, in the order given.
fn parse_sort(spec: &RawDocument) -> Result<Vec<SortKey>, Error> {
    let direction = |v: RawBsonRef<'_>, key: &str| match crate::wire::integer(Some(v)) {
        Some(1) => Ok(false),
        Some(-1) => Ok(true),
        _ => Err(bad(format!("\"sort.{key}\" must be 1 or -1"))),
    };
    let mut out = Vec::new();
    for (key, value) in spec.iter().flatten() {
        if out.len() == 32 {
            return Err(bad("\"sort\" takes at most 32 keys"));
        }
        out.push(match value {
            RawBsonRef::Document(d) if d.get_str("$meta").is_ok() => {
                if d.get_str("$meta") != Ok("searchScore") {
                    return Err(bad(format!("\"sort.{key}\" may only sort by searchScore")));
                }
                let descending = match d.get("order").ok().flatten() {
                    None => true,
                    Some(v) => direction(v, key)?,
                };
                SortKey::Score { descending }
            }
            RawBsonRef::Document(d) => {
                let mut descending = false;
                for (k, v) in d.iter().flatten() {
                    match (k, v) {
                        ("order", v) => descending = direction(v, key)?,
                        ("noData", RawBsonRef::String("lowest")) => {}
                        _ => {
                            return Err(bad(format!(
                                "\"sort.{key}.{k}\" is not served by likewise yet (order, \
                                 noData: \"lowest\")"
                            )))
                        }
                    }
                }
                SortKey::Path {
                    path: key.to_string(),
                    descending,
                }
            }
            v => SortKey::Path {
                path: key.to_string(),
                descending: direction(v, key)?,
            },
        });
    }
    if out.is_empty() {
        return Err(bad("\"sort\" needs at least one key"));
    }
    Ok(out)
}

/// `highlight: {path, maxCharsToExamine?, maxNumPassages?}`.
fn parse_highlight(spec: &RawDocument) -> Result<Highlight, Error> {
    let mut highlight = Highlight {
        paths: Vec::new(),
        max_chars: 500_000,
        max_passages: 5,
    };
    for (key, value) in spec.iter().flatten() {
        let n = crate::wire::integer(Some(value))
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0);
        match (key, n) {
            ("path", _) => highlight.paths = parse_paths(value, "highlight.path")?,
            ("maxCharsToExamine", Some(n)) => highlight.max_chars = n,
            ("maxNumPassages", Some(n)) => highlight.max_passages = n.min(MAX_BUCKETS),
            ("maxCharsToExamine" | "maxNumPassages", None) => {
                return Err(bad(format!(
                    "\"highlight.{key}\" must be a positive integer"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "\"highlight.{key}\" is not a highlight option"
                )))
            }
        }
    }
    if highlight.paths.is_empty() {
        return Err(bad("\"highlight.path\" is required"));
    }
    Ok(highlight)
}

/// `count: {type: "lowerBound" | "total", threshold?}`: whether the total.
fn parse_count(count: &RawDocument) -> Result<bool, Error> {
    let mut total = false;
    for (key, value) in count.iter().flatten() {
        match (key, value) {
            ("type", RawBsonRef::String("total")) => total = true,
            ("type", RawBsonRef::String("lowerBound")) => total = false,
            ("threshold", v) if crate::wire::integer(Some(v)).is_some_and(|n| n > 0) => {}
            _ => {
                return Err(bad(format!(
                    "\"count.{key}\" is not a count option (type: \"lowerBound\" or \"total\", \
                     threshold)"
                )))
            }
        }
    }
    Ok(total)
}

type Facets = Vec<(String, Facet)>;

fn parse_facet(
    facet: &RawDocument,
    clauses: &mut usize,
) -> Result<(Option<Operator>, Facets), Error> {
    let mut operator = None;
    let mut out = Vec::new();
    for (key, value) in facet.iter().flatten() {
        match (key, value) {
            ("operator", RawBsonRef::Document(op)) => {
                let mut fields = op.iter();
                let (Some(Ok((name, RawBsonRef::Document(spec)))), None) =
                    (fields.next(), fields.next())
                else {
                    return Err(bad("\"facet.operator\" must be one operator"));
                };
                if !SERVED.contains(&name) {
                    return Err(not_served(name));
                }
                operator = Some(parse_operator(name, spec, 0, clauses)?);
            }
            ("facets", RawBsonRef::Document(facets)) => {
                for (name, spec) in facets.iter().flatten() {
                    if out.len() == MAX_FACETS {
                        return Err(bad(format!("at most {MAX_FACETS} facets")));
                    }
                    let RawBsonRef::Document(spec) = spec else {
                        return Err(bad(format!("facet '{name}' must be a document")));
                    };
                    out.push((name.to_string(), parse_one_facet(name, spec)?));
                }
            }
            _ => return Err(bad(format!("\"facet.{key}\" is not a facet option"))),
        }
    }
    if out.is_empty() {
        return Err(bad("\"facet.facets\" must name at least one facet"));
    }
    Ok((operator, out))
}

fn parse_one_facet(name: &str, spec: &RawDocument) -> Result<Facet, Error> {
    let kind = spec.get_str("type").map_err(|_| {
        bad(format!(
            "facet '{name}' needs a type: string, number or date"
        ))
    })?;
    let path = spec
        .get_str("path")
        .map_err(|_| bad(format!("facet '{name}' needs a string 'path'")))?
        .to_string();
    let mut num_buckets = 10;
    let mut boundaries = None;
    let mut default = None;
    for (key, value) in spec.iter().flatten() {
        match (kind, key) {
            (_, "type" | "path") => {}
            ("string", "numBuckets") => {
                num_buckets = crate::wire::integer(Some(value))
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| (1..=MAX_BUCKETS).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "facet '{name}': numBuckets must be 1 to {MAX_BUCKETS}"
                        ))
                    })?
            }
            ("number" | "date", "boundaries") => boundaries = Some(value),
            ("number" | "date", "default") => match value {
                RawBsonRef::String(d) => default = Some(d.to_string()),
                _ => return Err(bad(format!("facet '{name}': default must be a string"))),
            },
            ("string" | "number" | "date", _) => {
                return Err(bad(format!(
                    "\"{key}\" is not an option of {kind} facet '{name}'"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "facet '{name}' has type '{kind}': facets are string, number or date"
                )))
            }
        }
    }
    if kind == "string" {
        return Ok(Facet::String { path, num_buckets });
    }
    let Some(RawBsonRef::Array(given)) = boundaries else {
        return Err(bad(format!(
            "{kind} facet '{name}' needs a 'boundaries' array"
        )));
    };
    let mut bounds: Vec<(f64, RawBson)> = Vec::new();
    for b in given.into_iter().flatten() {
        let at = match (kind, FieldValue::of(b)) {
            ("number", Some(FieldValue::Int(i))) => i as f64,
            ("number", Some(FieldValue::Double(d))) => d,
            ("date", Some(FieldValue::Date(ms))) => ms as f64,
            _ => {
                return Err(bad(format!(
                    "{kind} facet '{name}': boundaries must all be {kind}s"
                )))
            }
        };
        if bounds.last().is_some_and(|(last, _)| *last >= at) {
            return Err(bad(format!(
                "{kind} facet '{name}': boundaries must be in ascending order"
            )));
        }
        bounds.push((at, b.to_raw_bson()));
    }
    if bounds.len() < 2 || bounds.len() > MAX_BUCKETS + 1 {
        return Err(bad(format!(
            "{kind} facet '{name}' takes 2 to {} boundaries",
            MAX_BUCKETS + 1
        )));
    }
    Ok(Facet::Bounded {
        path,
        date: kind == "date",
        boundaries: bounds,
        default,
    })
}

fn parse_operator(
    name: &str,
    spec: &RawDocument,
    depth: usize,
    clauses: &mut usize,
) -> Result<Operator, Error> {
    *clauses += 1;
    if depth > MAX_OPERATOR_DEPTH || *clauses > MAX_CLAUSES {
        return Err(bad(format!(
            "$search holds more than {MAX_CLAUSES} clauses or nests compound deeper than \
             {MAX_OPERATOR_DEPTH}"
        )));
    }
    match name {
        "text" => {
            let mut query = None;
            let mut paths = None;
            let mut fuzzy = None;
            let mut match_all = false;
            let mut score = None;
            let mut synonyms = None;
            for (key, value) in spec.iter().flatten() {
                match key {
                    "query" => query = Some(strings(value, "text.query")?),
                    "path" => paths = Some(parse_paths(value, "text.path")?),
                    "fuzzy" => fuzzy = Some(parse_fuzzy(value)?),
                    "matchCriteria" => {
                        match_all = match value {
                            RawBsonRef::String("all") => true,
                            RawBsonRef::String("any") => false,
                            _ => {
                                return Err(bad(
                                    "\"text.matchCriteria\" must be \"any\" or \"all\"",
                                ))
                            }
                        }
                    }
                    "score" => score = Some(parse_score(value, "text.score")?),
                    "synonyms" => match value {
                        RawBsonRef::String(name) => synonyms = Some(name.to_string()),
                        _ => {
                            return Err(bad(
                                "\"text.synonyms\" must name a synonym mapping of the index",
                            ))
                        }
                    },
                    _ => return Err(bad(format!("\"text.{key}\" is not a text option"))),
                }
            }
            if fuzzy.is_some() && match_all {
                return Err(bad(
                    "\"text.matchCriteria\" cannot be combined with \"text.fuzzy\"",
                ));
            }
            if fuzzy.is_some() && synonyms.is_some() {
                return Err(bad(
                    "\"text.synonyms\" cannot be combined with \"text.fuzzy\"",
                ));
            }
            Ok(Operator::Text {
                query: query.ok_or_else(|| bad("\"text.query\" is required"))?,
                paths: paths.ok_or_else(|| bad("\"text.path\" is required"))?,
                fuzzy,
                match_all,
                score,
                synonyms,
            })
        }
        "phrase" => {
            let mut query = None;
            let mut paths = None;
            let mut slop = 0;
            let mut score = None;
            let mut synonyms = None;
            for (key, value) in spec.iter().flatten() {
                match key {
                    "query" => query = Some(strings(value, "phrase.query")?),
                    "path" => paths = Some(parse_paths(value, "phrase.path")?),
                    "slop" => {
                        slop = crate::wire::integer(Some(value))
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| bad("\"phrase.slop\" must be a non-negative integer"))?
                    }
                    "score" => score = Some(parse_score(value, "phrase.score")?),
                    "synonyms" => match value {
                        RawBsonRef::String(name) => synonyms = Some(name.to_string()),
                        _ => {
                            return Err(bad(
                                "\"phrase.synonyms\" must name a synonym mapping of the index",
                            ))
                        }
                    },
                    _ => return Err(bad(format!("\"phrase.{key}\" is not a phrase option"))),
                }
            }
            Ok(Operator::Phrase {
                query: query.ok_or_else(|| bad("\"phrase.query\" is required"))?,
                paths: paths.ok_or_else(|| bad("\"phrase.path\" is required"))?,
                slop,
                score,
                synonyms,
            })
        }
        "compound" => {
            let (mut must, mut must_not, mut should, mut filter) = (vec![], vec![], vec![], vec![]);
            let mut minimum_should_match = 0;
            let mut score = None;
            for (key, value) in spec.iter().flatten() {
                let list = match key {
                    "must" => &mut must,
                    "mustNot" => &mut must_not,
                    "should" => &mut should,
                    "filter" => &mut filter,
                    "minimumShouldMatch" => {
                        minimum_should_match = crate::wire::integer(Some(value))
                            .and_then(|n| usize::try_from(n).ok())
                            .ok_or_else(|| {
                                bad("\"compound.minimumShouldMatch\" must be a non-negative integer")
                            })?;
                        continue;
                    }
                    "score" => {
                        score = Some(parse_score(value, "compound.score")?);
                        continue;
                    }
                    _ => return Err(bad(format!("\"compound.{key}\" is not a compound option"))),
                };
                let docs: Vec<&RawDocument> = match value {
                    RawBsonRef::Document(d) => vec![d],
                    RawBsonRef::Array(a) => a
                        .into_iter()
                        .map(|v| match v {
                            Ok(RawBsonRef::Document(d)) => Ok(d),
                            _ => Err(bad(format!("\"compound.{key}\" entries must be operators"))),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(bad(format!(
                            "\"compound.{key}\" must be an operator or a list"
                        )))
                    }
                };
                for doc in docs {
                    let mut fields = doc.iter();
                    let (Some(Ok((op, RawBsonRef::Document(inner)))), None) =
                        (fields.next(), fields.next())
                    else {
                        return Err(bad(format!(
                            "each \"compound.{key}\" clause must be one operator"
                        )));
                    };
                    if !SERVED.contains(&op) {
                        return Err(not_served(op));
                    }
                    list.push(parse_operator(op, inner, depth + 1, clauses)?);
                }
            }
            if must.is_empty() && must_not.is_empty() && should.is_empty() && filter.is_empty() {
                return Err(bad("compound needs at least one clause"));
            }
            if minimum_should_match > should.len() {
                return Err(bad(format!(
                    "\"compound.minimumShouldMatch\" ({minimum_should_match}) is more than the \
                     {} should clauses",
                    should.len()
                )));
            }
            Ok(Operator::Compound {
                must,
                must_not,
                should,
                filter,
                minimum_should_match,
                score,
            })
        }
        "equals" | "in" | "range" | "exists" => parse_value_operator(name, spec),
        "embeddedDocument" => {
            let (mut path, mut operator) = (None, None);
            let (mut aggregate, mut score) = (EmbeddedAggregate::default(), None);
            for (key, value) in spec.iter().flatten() {
                match (key, value) {
                    ("path", RawBsonRef::String(p)) if !p.is_empty() => path = Some(p),
                    ("operator", RawBsonRef::Document(d)) => {
                        let mut fields = d.iter();
                        let (Some(Ok((op, RawBsonRef::Document(inner)))), None) =
                            (fields.next(), fields.next())
                        else {
                            return Err(bad("\"embeddedDocument.operator\" must be one operator"));
                        };
                        if !SERVED.contains(&op) {
                            return Err(not_served(op));
                        }
                        operator = Some(parse_operator(op, inner, depth + 1, clauses)?);
                    }
                    ("score", RawBsonRef::Document(d)) => match d.get_document("embedded") {
                        Ok(embedded) => {
                            (aggregate, score) = parse_embedded_score(embedded)?;
                            if d.iter().count() != 1 {
                                return Err(bad(
                                    "\"embeddedDocument.score\" takes only 'embedded'",
                                ));
                            }
                        }
                        Err(_) => score = Some(parse_score(value, "embeddedDocument.score")?),
                    },
                    _ => {
                        return Err(bad(format!(
                            "\"embeddedDocument.{key}\" is not an embeddedDocument option, or \
                             has the wrong type (path: a string, operator, score)"
                        )))
                    }
                }
            }
            let path = path.ok_or_else(|| bad("\"embeddedDocument.path\" is required"))?;
            let operator =
                operator.ok_or_else(|| bad("\"embeddedDocument.operator\" is required"))?;
            if let Some(outside) = foreign_path(&operator, path) {
                return Err(bad(format!(
                    "embeddedDocument: the path '{outside}' is not under '{path}' (every path \
                     of its operator must be)"
                )));
            }
            Ok(Operator::Embedded {
                path: path.to_string(),
                operator: Box::new(operator),
                aggregate,
                score,
            })
        }
        "queryString" => {
            let (mut default_path, mut query) = (None, None);
            let mut score = None;
            for (key, value) in spec.iter().flatten() {
                match (key, value) {
                    ("defaultPath", RawBsonRef::String(p)) if !p.is_empty() => {
                        default_path = Some(p)
                    }
                    ("query", RawBsonRef::String(q)) => query = Some(q),
                    ("score", v) => score = Some(parse_score(v, "queryString.score")?),
                    _ => {
                        return Err(bad(format!(
                            "\"queryString.{key}\" is not a queryString option, or has the wrong \
                             type (defaultPath and query are strings)"
                        )))
                    }
                }
            }
            let default_path =
                default_path.ok_or_else(|| bad("\"queryString.defaultPath\" is required"))?;
            let query = query.ok_or_else(|| bad("\"queryString.query\" is required"))?;
            let parsed = super::query_string::parse(default_path, query)?;
            *clauses += count_clauses(&parsed);
            if *clauses > MAX_CLAUSES {
                return Err(bad(format!(
                    "$search holds more than {MAX_CLAUSES} clauses"
                )));
            }
            Ok(match score {
                None => parsed,
                Some(score) => parsed.with_score(score),
            })
        }
        "autocomplete" => {
            let mut query = None;
            let mut path = None;
            let mut sequential = false;
            let mut fuzzy = None;
            let mut score = None;
            for (key, value) in spec.iter().flatten() {
                match (key, value) {
                    ("query", v) => query = Some(strings(v, "autocomplete.query")?),
                    ("path", RawBsonRef::String(p)) if !p.is_empty() => path = Some(p.to_string()),
                    ("path", _) => return Err(bad("\"autocomplete.path\" must be a field name")),
                    ("tokenOrder", RawBsonRef::String("any")) => sequential = false,
                    ("tokenOrder", RawBsonRef::String("sequential")) => sequential = true,
                    ("tokenOrder", _) => {
                        return Err(bad(
                            "\"autocomplete.tokenOrder\" must be \"any\" or \"sequential\"",
                        ))
                    }
                    ("fuzzy", v) => fuzzy = Some(parse_fuzzy(v)?),
                    ("score", v) => score = Some(parse_score(v, "autocomplete.score")?),
                    _ => {
                        return Err(bad(format!(
                            "\"autocomplete.{key}\" is not an autocomplete option"
                        )))
                    }
                }
            }
            Ok(Operator::Autocomplete {
                query: query.ok_or_else(|| bad("\"autocomplete.query\" is required"))?,
                path: path.ok_or_else(|| bad("\"autocomplete.path\" is required"))?,
                sequential,
                fuzzy,
                score,
            })
        }
        "wildcard" | "regex" => {
            let mut patterns = None;
            let mut paths = None;
            let mut allow_analyzed = false;
            let mut score = None;
            for (key, value) in spec.iter().flatten() {
                match key {
                    "query" => patterns = Some(strings(value, &format!("{name}.query"))?),
                    "path" => paths = Some(parse_paths(value, &format!("{name}.path"))?),
                    "allowAnalyzedField" => match value {
                        RawBsonRef::Boolean(b) => allow_analyzed = b,
                        _ => {
                            return Err(bad(format!(
                                "\"{name}.allowAnalyzedField\" must be a boolean"
                            )))
                        }
                    },
                    "score" => score = Some(parse_score(value, &format!("{name}.score"))?),
                    _ => return Err(bad(format!("\"{name}.{key}\" is not a {name} option"))),
                }
            }
            let patterns: Vec<String> = patterns
                .ok_or_else(|| bad(format!("\"{name}.query\" is required")))?
                .into_iter()
                .map(|q| {
                    if name == "wildcard" {
                        crate::index::text::wildcard_pattern(&q)
                    } else {
                        q
                    }
                })
                .collect();
            Ok(Operator::Regex {
                operator: if name == "wildcard" {
                    "wildcard"
                } else {
                    "regex"
                },
                patterns,
                paths: paths.ok_or_else(|| bad(format!("\"{name}.path\" is required")))?,
                allow_analyzed,
                score,
            })
        }
        other => Err(bad(format!("'{other}' is not a served $search operator"))),
    }
}

/// `equals: {path, value}`, `in: {path, value: [..]}`, `range: {path,
/// gt|gte, lt|lte}` and `exists: {path}`, each with an optional `score`
/// (Atlas's shapes; `path` is one field name).
fn parse_value_operator(name: &str, spec: &RawDocument) -> Result<Operator, Error> {
    let mut path = None;
    let mut value = None;
    let mut score = None;
    let (mut lower, mut upper) = (Bound::Unbounded, Bound::Unbounded);
    for (key, v) in spec.iter().flatten() {
        match (name, key) {
            (_, "path") => match v {
                RawBsonRef::String(p) if !p.is_empty() => path = Some(p.to_string()),
                _ => return Err(bad(format!("\"{name}.path\" must be a field name"))),
            },
            (_, "score") => score = Some(parse_score(v, &format!("{name}.score"))?),
            ("equals" | "in", "value") => value = Some(v),
            ("range", "gt" | "gte" | "lt" | "lte") => {
                let bound = match FieldValue::of(v) {
                    Some(
                        x @ (FieldValue::Int(_) | FieldValue::Double(_) | FieldValue::Date(_)),
                    ) => x,
                    _ => {
                        return Err(bad(format!(
                            "\"range.{key}\" must be a number or a date (ranges over strings and \
                             objectIds are not served by likewise yet)"
                        )))
                    }
                };
                let (slot, b) = match key {
                    "gt" => (&mut lower, Bound::Excluded(bound)),
                    "gte" => (&mut lower, Bound::Included(bound)),
                    "lt" => (&mut upper, Bound::Excluded(bound)),
                    _ => (&mut upper, Bound::Included(bound)),
                };
                if !matches!(slot, Bound::Unbounded) {
                    return Err(bad("\"range\" takes one lower and one upper bound"));
                }
                *slot = b;
            }
            _ => return Err(bad(format!("\"{name}.{key}\" is not a {name} option"))),
        }
    }
    let path = path.ok_or_else(|| bad(format!("\"{name}.path\" is required")))?;
    let scalar = |v: RawBsonRef<'_>| {
        FieldValue::of(v).ok_or_else(|| {
            bad(format!(
                "\"{name}.value\" must be a boolean, objectId, number, date or string"
            ))
        })
    };
    match name {
        "equals" => Ok(Operator::Equals {
            value: scalar(value.ok_or_else(|| bad("\"equals.value\" is required"))?)?,
            path,
            score,
        }),
        "in" => {
            let values = match value.ok_or_else(|| bad("\"in.value\" is required"))? {
                RawBsonRef::Array(a) => a
                    .into_iter()
                    .map(|v| {
                        v.map_err(|_| bad("\"in.value\" is malformed"))
                            .and_then(scalar)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                one => vec![scalar(one)?],
            };
            if values.is_empty() || values.len() > MAX_QUERIES {
                return Err(bad(format!(
                    "\"in.value\" must hold 1 to {MAX_QUERIES} values"
                )));
            }
            let kind = |v: &FieldValue| std::mem::discriminant(&normal_kind(v));
            if values.iter().any(|v| kind(v) != kind(&values[0])) {
                return Err(bad("\"in.value\" must hold values of one type"));
            }
            Ok(Operator::In {
                path,
                values,
                score,
            })
        }
        "range" => {
            let kind_of = |b: &Bound<FieldValue>| match b {
                Bound::Included(v) | Bound::Excluded(v) => Some(matches!(v, FieldValue::Date(_))),
                Bound::Unbounded => None,
            };
            match (kind_of(&lower), kind_of(&upper)) {
                (None, None) => {
                    return Err(bad("\"range\" needs at least one of gt, gte, lt and lte"))
                }
                (Some(a), Some(b)) if a != b => {
                    return Err(bad("\"range\" bounds must both be numbers or both dates"))
                }
                _ => {}
            }
            Ok(Operator::Range {
                path,
                lower,
                upper,
                score,
            })
        }
        _ => Ok(Operator::Exists { path, score }),
    }
}

/// `score.embedded`: `{aggregate?: "sum" | "maximum" | "minimum" |
/// "mean", outerScore?: <score>}`.
fn parse_embedded_score(
    spec: &RawDocument,
) -> Result<(EmbeddedAggregate, Option<ScoreModifier>), Error> {
    let mut aggregate = EmbeddedAggregate::default();
    let mut outer = None;
    for (key, value) in spec.iter().flatten() {
        match (key, value) {
            ("aggregate", RawBsonRef::String(name)) => {
                aggregate = EmbeddedAggregate::parse(name).ok_or_else(|| {
                    bad(format!(
                        "\"score.embedded.aggregate\" must be sum, maximum, minimum or mean, \
                         not '{name}'"
                    ))
                })?
            }
            ("outerScore", v) => outer = Some(parse_score(v, "score.embedded.outerScore")?),
            _ => {
                return Err(bad(format!(
                    "\"score.embedded.{key}\" is not an embedded score option (aggregate, \
                     outerScore)"
                )))
            }
        }
    }
    Ok((aggregate, outer))
}

/// The first path `operator` names that is not `root` or under it, if any
/// (a wildcard path by its literal start, which may stop short of
/// `root.`).
fn foreign_path(operator: &Operator, root: &str) -> Option<String> {
    let under = |p: &str| p == root || p.strip_prefix(root).is_some_and(|r| r.starts_with('.'));
    let search_path = |p: &SearchPath| match p {
        SearchPath::Field(f) => (f.clone(), false),
        SearchPath::Multi { path, .. } => (path.clone(), false),
        SearchPath::Wildcard(g) => (g.split('*').next().unwrap_or("").to_string(), true),
    };
    let check = |paths: Vec<(String, bool)>| {
        paths
            .into_iter()
            .find(|(p, glob)| !(under(p) || *glob && format!("{root}.").starts_with(p.as_str())))
            .map(|(p, _)| p)
    };
    match operator {
        Operator::Text { paths, .. }
        | Operator::Phrase { paths, .. }
        | Operator::Regex { paths, .. } => check(paths.iter().map(search_path).collect()),
        Operator::Equals { path, .. }
        | Operator::In { path, .. }
        | Operator::Range { path, .. }
        | Operator::Autocomplete { path, .. }
        | Operator::Exists { path, .. }
        | Operator::Embedded { path, .. } => check(vec![(path.clone(), false)]),
        Operator::Compound {
            must,
            must_not,
            should,
            filter,
            ..
        } => must
            .iter()
            .chain(must_not)
            .chain(should)
            .chain(filter)
            .find_map(|op| foreign_path(op, root)),
    }
}

/// How many clauses an operator tree holds.
fn count_clauses(op: &Operator) -> usize {
    match op {
        Operator::Compound {
            must,
            must_not,
            should,
            filter,
            ..
        } => {
            1 + must
                .iter()
                .chain(must_not)
                .chain(should)
                .chain(filter)
                .map(count_clauses)
                .sum::<usize>()
        }
        Operator::Embedded { operator, .. } => 1 + count_clauses(operator),
        _ => 1,
    }
}

/// Numbers of either width are one kind for `in`.
fn normal_kind(v: &FieldValue) -> FieldValue {
    match v {
        FieldValue::Int(_) | FieldValue::Double(_) => FieldValue::Double(0.0),
        other => other.clone(),
    }
}

fn strings(value: RawBsonRef<'_>, at: &str) -> Result<Vec<String>, Error> {
    let out: Vec<String> = match value {
        RawBsonRef::String(s) => vec![s.to_string()],
        RawBsonRef::Array(a) => a
            .into_iter()
            .map(|v| match v {
                Ok(RawBsonRef::String(s)) => Ok(s.to_string()),
                _ => Err(bad(format!(
                    "\"{at}\" must be a string or a list of strings"
                ))),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad(format!(
                "\"{at}\" must be a string or a list of strings"
            )))
        }
    };
    if out.is_empty() || out.len() > MAX_QUERIES {
        return Err(bad(format!(
            "\"{at}\" must hold 1 to {MAX_QUERIES} strings"
        )));
    }
    Ok(out)
}

fn parse_paths(value: RawBsonRef<'_>, at: &str) -> Result<Vec<SearchPath>, Error> {
    let one = |value: RawBsonRef<'_>| -> Result<SearchPath, Error> {
        match value {
            RawBsonRef::String(s) if !s.is_empty() => Ok(SearchPath::Field(s.to_string())),
            RawBsonRef::Document(d) => {
                let mut fields = d.iter();
                match (fields.next(), fields.next()) {
                    (Some(Ok(("value", RawBsonRef::String(s)))), None) => {
                        Ok(SearchPath::Field(s.to_string()))
                    }
                    (Some(Ok(("wildcard", RawBsonRef::String(s)))), None) => {
                        Ok(SearchPath::Wildcard(s.to_string()))
                    }
                    _ if d.get("multi").ok().flatten().is_some() => {
                        match (d.get_str("value"), d.get_str("multi"), d.iter().count()) {
                            (Ok(path), Ok(multi), 2) => Ok(SearchPath::Multi {
                                path: path.to_string(),
                                multi: multi.to_string(),
                            }),
                            _ => Err(bad(format!(
                                "\"{at}\" with multi is {{value: <path>, multi: <name>}}"
                            ))),
                        }
                    }
                    _ => Err(bad(format!(
                        "\"{at}\" entries are a field name, {{value}} or {{wildcard}}"
                    ))),
                }
            }
            _ => Err(bad(format!(
                "\"{at}\" must be a field name, {{value}}, {{wildcard}} or a list of them"
            ))),
        }
    };
    let out: Vec<SearchPath> = match value {
        RawBsonRef::Array(a) => a
            .into_iter()
            .map(|v| {
                v.map_err(|_| bad(format!("\"{at}\" is malformed")))
                    .and_then(one)
            })
            .collect::<Result<_, _>>()?,
        other => vec![one(other)?],
    };
    if out.is_empty() || out.len() > MAX_QUERIES {
        return Err(bad(format!("\"{at}\" must name 1 to {MAX_QUERIES} paths")));
    }
    Ok(out)
}

fn parse_fuzzy(value: RawBsonRef<'_>) -> Result<Fuzzy, Error> {
    let RawBsonRef::Document(d) = value else {
        return Err(bad("\"text.fuzzy\" must be a document"));
    };
    let mut max_edits = 2;
    for (key, value) in d.iter().flatten() {
        let n = crate::wire::integer(Some(value));
        match (key, n) {
            ("maxEdits", Some(n @ 1..=2)) => max_edits = n as u8,
            ("maxEdits", _) => return Err(bad("\"text.fuzzy.maxEdits\" must be 1 or 2")),
            ("prefixLength", Some(0)) => {}
            ("prefixLength", _) => {
                return Err(bad(
                    "\"text.fuzzy.prefixLength\" other than 0 is not served by likewise yet",
                ))
            }
            // Lucene's cap on the terms one fuzzy term expands to: every
            // expansion is searched here, so results are a superset.
            ("maxExpansions", Some(n)) if n > 0 => {}
            ("maxExpansions", _) => {
                return Err(bad(
                    "\"text.fuzzy.maxExpansions\" must be a positive integer",
                ))
            }
            _ => return Err(bad(format!("\"text.fuzzy.{key}\" is not a fuzzy option"))),
        }
    }
    Ok(Fuzzy { max_edits })
}

fn parse_score(value: RawBsonRef<'_>, at: &str) -> Result<ScoreModifier, Error> {
    let RawBsonRef::Document(d) = value else {
        return Err(bad(format!("\"{at}\" must be a document")));
    };
    let mut fields = d.iter();
    let (Some(Ok((kind, RawBsonRef::Document(spec)))), None) = (fields.next(), fields.next())
    else {
        return Err(bad(format!("\"{at}\" takes one of boost or constant")));
    };
    let value = || -> Result<f32, Error> {
        let mut fields = spec.iter();
        match (fields.next(), fields.next()) {
            (Some(Ok(("value", v))), None) => match v {
                RawBsonRef::Double(x) => Ok(x as f32),
                RawBsonRef::Int32(x) => Ok(x as f32),
                RawBsonRef::Int64(x) => Ok(x as f32),
                _ => Err(bad(format!("\"{at}.{kind}.value\" must be a positive number"))),
            }
            .and_then(|x| {
                // Checked as the engine holds it (a float32).
                if x.is_finite() && x > 0.0 {
                    Ok(x)
                } else {
                    Err(bad(format!(
                        "\"{at}.{kind}.value\" must be a positive number a float32 holds"
                    )))
                }
            }),
            _ => Err(bad(format!(
                "\"{at}.{kind}\" takes only 'value' here (path boosts are not served by likewise yet)"
            ))),
        }
    };
    match kind {
        "boost" => Ok(ScoreModifier::Boost(value()?)),
        "constant" => Ok(ScoreModifier::Constant(value()?)),
        "function" | "embedded" => Err(bad(format!(
            "\"{at}.{kind}\" is not served by likewise yet"
        ))),
        _ => Err(bad(format!("\"{at}.{kind}\" is not a score option"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn reads_what_frameworks_send() {
        // LangChain's full-text retriever.
        let stage = parse_search(&rawdoc! {
            "index": "text_index",
            "text": { "query": "brown fox", "path": "text" },
        })
        .unwrap();
        assert_eq!(stage.index, "text_index");
        assert_eq!(
            stage.operator,
            Operator::Text {
                query: vec!["brown fox".into()],
                paths: vec![SearchPath::Field("text".into())],
                fuzzy: None,
                match_all: false,
                score: None,
                synonyms: None,
            }
        );
        let compound = parse_search(&rawdoc! {
            "compound": {
                "must": [{ "text": { "query": "a", "path": ["x", { "wildcard": "y.*" }] } }],
                "should": { "phrase": { "query": "b c", "path": "x", "slop": 2,
                                        "score": { "boost": { "value": 3 } } } },
                "minimumShouldMatch": 1,
            },
        })
        .unwrap();
        assert_eq!(compound.index, "default");
        let Operator::Compound {
            must,
            should,
            minimum_should_match,
            ..
        } = compound.operator
        else {
            panic!("not a compound");
        };
        assert_eq!((must.len(), should.len(), minimum_should_match), (1, 1, 1));
    }

    #[test]
    fn unserved_and_malformed_options_are_refused_by_name() {
        for (stage, says) in [
            (
                rawdoc! { "text": { "query": "a" } },
                "\"text.path\" is required",
            ),
            (
                rawdoc! { "text": { "path": "a" } },
                "\"text.query\" is required",
            ),
            (
                rawdoc! { "text": { "query": "a", "path": "p", "bogus": 1 } },
                "text.bogus",
            ),
            (
                rawdoc! { "near": { "path": "a", "origin": 1, "pivot": 2 } },
                "'near'",
            ),
            (
                rawdoc! { "queryString": { "defaultPath": "a", "query": "a:[1 TO 2]" } },
                "ranges",
            ),
            (
                rawdoc! { "wildcard": { "path": "a", "query": "x*", "bogus": 1 } },
                "wildcard.bogus",
            ),
            (
                rawdoc! { "equals": { "path": "a", "value": [1] } },
                "equals.value",
            ),
            (
                rawdoc! { "range": { "path": "a", "gt": "b" } },
                "number or a date",
            ),
            (
                rawdoc! { "range": { "path": "a", "gt": 1, "lt": bson::DateTime::from_millis(5) } },
                "both be numbers",
            ),
            (rawdoc! { "range": { "path": "a" } }, "at least one"),
            (
                rawdoc! { "in": { "path": "a", "value": [1, "x"] } },
                "one type",
            ),
            (rawdoc! { "exists": { "path": ["a"] } }, "field name"),
            (
                rawdoc! { "text": { "query": "a", "path": "p" }, "highlight": { "path": "p", "maxNumPassages": 0 } },
                "maxNumPassages",
            ),
            (
                rawdoc! { "text": { "query": "a", "path": "p" }, "sort": { "x": 2 } },
                "1 or -1",
            ),
            (
                rawdoc! { "text": { "query": "a", "path": "p" }, "returnStoredSource": 1 },
                "returnStoredSource",
            ),
            (rawdoc! { "index": "x" }, "needs an operator"),
            (
                rawdoc! { "text": { "query": "a", "path": "p" }, "phrase": { "query": "a", "path": "p" } },
                "exactly one",
            ),
            (rawdoc! { "compound": {} }, "at least one clause"),
            (
                rawdoc! { "compound": { "should": [], "minimumShouldMatch": 1, "must": { "text": { "query": "a", "path": "p" } } } },
                "minimumShouldMatch",
            ),
            (
                rawdoc! { "text": { "query": "a", "path": "p", "fuzzy": { "maxEdits": 3 } } },
                "maxEdits",
            ),
            (
                rawdoc! { "text": { "query": "a", "path": "p", "score": { "boost": { "path": "n" } } } },
                "path boosts",
            ),
            (rawdoc! { "text": { "query": [], "path": "p" } }, "1 to"),
        ] {
            let e = parse_search(&stage).unwrap_err();
            assert_eq!(e.code.code, Code::BAD_VALUE.code);
            assert!(e.message.contains(says), "{} lacks {says}", e.message);
        }
        // Deep nesting is bounded.
        let mut deep = rawdoc! { "text": { "query": "a", "path": "p" } };
        for _ in 0..(MAX_OPERATOR_DEPTH + 2) {
            deep = rawdoc! { "compound": { "must": deep } };
        }
        assert!(parse_search(&deep).is_err());
    }
}
