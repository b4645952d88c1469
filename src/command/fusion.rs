//! Hybrid search stages: `$rankFusion` (MongoDB 8.0+) and `$scoreFusion`
//! (8.2+), read with mongod's rules, and the arithmetic that fuses their
//! input pipelines' results.
//!
//! Each stage names input pipelines; each input is a *selection* pipeline
//! (it retrieves, limits or orders documents, never changes them). The
//! proxy runs every input, then fuses their `_id`s into one ranked list:
//!
//! - `$rankFusion`: reciprocal rank fusion (Cormack, Clarke and Büttcher,
//!   "Reciprocal Rank Fusion outperforms Condorcet and individual rank
//!   learning methods", SIGIR 2009) with mongod's constant 60:
//!   `score(d) = Σ_p w_p / (60 + rank_p(d))`, ranks from 1, over the inputs
//!   `d` is in;
//! - `$scoreFusion`: each input's scores normalised (`none`, `sigmoid`
//!   `1 / (1 + e^-x)`, or `minMaxScaler` `(x - min) / (max - min)` over the
//!   input's results, 0 where all are equal), weighted, then combined by
//!   `avg` (the mean over *every* input, 0 where `d` is absent, as mongod's
//!   `$avg` of its grouped scores) or by a client `expression` over
//!   `$$<input name>` (which the upstream evaluates).
//!
//! Codes and messages are mongod 8.2's (`document_source_rank_fusion.cpp`,
//! `document_source_score_fusion.cpp`, `document_source_hybrid_scoring_*`);
//! where 8.2 silently ignores an option (an `expression` without
//! `method: "expression"`), the stage is refused as later servers do.

use crate::error::{Code, Error};
use bson::{RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use std::cmp::Ordering;
use std::collections::HashMap;

/// mongod's reciprocal-rank-fusion constant (`k` in the formula above).
pub const RANK_CONSTANT: f64 = 60.0;

/// Most input pipelines one stage takes (each is a search or an upstream
/// read).
pub const MAX_INPUTS: usize = 16;

fn located(code: i32, message: impl Into<String>) -> Error {
    Error::client(Code::relayed(code, &format!("Location{code}")), message)
}

fn type_mismatch(message: impl Into<String>) -> Error {
    Error::client(Code::relayed(14, "TypeMismatch"), message)
}

/// Which fusion a stage performs.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// `$rankFusion`.
    Rank,
    /// `$scoreFusion`.
    Score {
        normalization: Normalization,
        combination: Combination,
    },
}

/// `$scoreFusion`'s `input.normalization`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalization {
    None,
    Sigmoid,
    MinMaxScaler,
}

impl Normalization {
    pub fn name(self) -> &'static str {
        match self {
            Normalization::None => "none",
            Normalization::Sigmoid => "sigmoid",
            Normalization::MinMaxScaler => "minMaxScaler",
        }
    }
}

/// `$scoreFusion`'s `combination.method`.
#[derive(Debug, Clone, PartialEq)]
pub enum Combination {
    /// The mean of the inputs' weighted, normalised scores.
    Avg,
    /// An aggregation expression over `$$<input name>` (and the document's
    /// fields), evaluated by the upstream.
    Expression(RawBson),
}

/// One named input pipeline; `Q` is the query its owned first stage
/// asks (`vector_query::VectorQuery`).
#[derive(Debug, Clone, PartialEq)]
pub struct FusionInput<Q> {
    pub name: String,
    /// `combination.weights`' entry, 1 when not given.
    pub weight: f64,
    /// The pipeline as the client gave it.
    pub stages: Vec<RawDocumentBuf>,
    /// Its first stage when the proxy answers it (`$vectorSearch`,
    /// `$search`, a `$match` with `$like`).
    pub owned: Option<Q>,
    /// The score an input without an owned stage gives its documents, as an
    /// aggregation expression: `$score`'s `score`, or `{$meta: "textScore"}`
    /// after a `$text` match.
    pub score: Option<RawBson>,
    /// The keys of its last `$sort`: documents equal on them share a rank
    /// (mongod ranks with `$rank`).
    pub sort: Option<RawDocumentBuf>,
}

/// A parsed `$rankFusion` or `$scoreFusion`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fusion<Q> {
    pub method: Method,
    /// In byte-wise name order (mongod's: its `std::map` of pipelines),
    /// which orders `scoreDetails` too.
    pub inputs: Vec<FusionInput<Q>>,
    pub score_details: bool,
    /// How many fused results the stages after it can use
    /// (`vector_query::search_limit`).
    pub limit: usize,
}

impl<Q> Fusion<Q> {
    /// The stage's name, as errors and `explain` give it.
    pub fn stage(&self) -> &'static str {
        match self.method {
            Method::Rank => "$rankFusion",
            Method::Score { .. } => "$scoreFusion",
        }
    }
}

/// Whether `name` is one of the two hybrid stages.
pub fn is_fusion_stage(name: &str) -> bool {
    matches!(name, "$rankFusion" | "$scoreFusion")
}

/// Stages that only retrieve, limit or order documents: the only ones an
/// input pipeline may hold (mongod's `isSelectionStage`).
fn is_selection_stage(name: &str, spec: RawBsonRef<'_>) -> bool {
    let flag = |key: &str| {
        spec.as_document()
            .and_then(|d| d.get(key).ok().flatten())
            .is_some()
    };
    match name {
        "$match"
        | "$limit"
        | "$skip"
        | "$sample"
        | "$sort"
        | "$vectorSearch"
        | "$score"
        | "$_internalInhibitOptimization" => true,
        "$search" => !matches!(
            spec.as_document()
                .and_then(|d| d.get("returnStoredSource").ok().flatten()),
            Some(RawBsonRef::Boolean(true))
        ),
        "$geoNear" => !flag("distanceField") && !flag("includeLocs"),
        _ => false,
    }
}

/// Reads a `$rankFusion` or `$scoreFusion` stage that opens a pipeline
/// whose later stages use `limit` results; `owned` reads an input
/// pipeline's owned first stage (`vector_query::owned_first_stage`).
pub fn parse_fusion<Q>(
    stage: &str,
    spec: RawBsonRef<'_>,
    limit: usize,
    owned: &impl Fn(&bson::RawArray) -> Result<Option<Q>, Error>,
) -> Result<Fusion<Q>, Error> {
    let rank = stage == "$rankFusion";
    let RawBsonRef::Document(spec) = spec else {
        return Err(Error::client(
            Code::relayed(9, "FailedToParse"),
            format!("{stage} must take a nested object but found: {spec:?}"),
        ));
    };
    let mut input = None;
    let mut combination = None;
    let mut score_details = false;
    for (key, value) in spec.iter().flatten() {
        match key {
            "input" => input = Some(document(value, &format!("{stage}.input"))?),
            "combination" => combination = Some(document(value, &format!("{stage}.combination"))?),
            "scoreDetails" => match value {
                RawBsonRef::Boolean(b) => score_details = b,
                other => return Err(wrong_type(&format!("{stage}.scoreDetails"), other, "bool")),
            },
            _ => return Err(unknown_field(&format!("{stage}.{key}"))),
        }
    }
    let input = input.ok_or_else(|| missing(&format!("{stage}.input")))?;
    let mut pipelines = None;
    let mut normalization = None;
    for (key, value) in input.iter().flatten() {
        match key {
            "pipelines" => pipelines = Some(document(value, &format!("{stage}.input.pipelines"))?),
            "normalization" if !rank => {
                let RawBsonRef::String(n) = value else {
                    return Err(wrong_type(
                        &format!("{stage}.input.normalization"),
                        value,
                        "string",
                    ));
                };
                normalization = Some(match n {
                    "none" => Normalization::None,
                    "sigmoid" => Normalization::Sigmoid,
                    "minMaxScaler" => Normalization::MinMaxScaler,
                    other => {
                        return Err(Error::client(
                            Code::BAD_VALUE,
                            format!(
                            "Enumeration value '{other}' for field '{stage}.input.normalization' \
                                 is not a valid value."
                        ),
                        ))
                    }
                });
            }
            _ => return Err(unknown_field(&format!("{stage}.input.{key}"))),
        }
    }
    let pipelines = pipelines.ok_or_else(|| missing(&format!("{stage}.input.pipelines")))?;
    if pipelines.is_empty() {
        return Err(Error::client(
            Code::BAD_VALUE,
            "A hybrid scoring stage should be run with at least one pipeline.",
        ));
    }
    let mut inputs = Vec::new();
    for (name, value) in pipelines.iter().flatten() {
        if inputs.len() == MAX_INPUTS {
            return Err(Error::client(
                Code::BAD_VALUE,
                format!("{stage} takes at most {MAX_INPUTS} input pipelines here"),
            ));
        }
        let stages = match value {
            RawBsonRef::Array(a) => a,
            _ => {
                return Err(type_mismatch(format!(
                    "Error parsing {stage}.input.pipelines :: caused by :: A pipeline must be an \
                     array of objects"
                )))
            }
        };
        inputs.push(parse_input(stage, rank, name, stages, owned)?);
    }
    inputs.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    if let Some(w) = inputs.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(located(
            if rank { 9921000 } else { 9402203 },
            format!(
                "{stage} pipeline names must be unique, but '{}' is given twice",
                w[0].name
            ),
        ));
    }
    let mut expression = None;
    let mut method = None;
    let mut weights = None;
    if let Some(combination) = combination {
        for (key, value) in combination.iter().flatten() {
            match key {
                "weights" => {
                    weights = Some(document(value, &format!("{stage}.combination.weights"))?)
                }
                "method" if !rank => match value {
                    RawBsonRef::String(m @ ("avg" | "expression")) => method = Some(m),
                    RawBsonRef::String(other) => {
                        return Err(Error::client(
                            Code::BAD_VALUE,
                            format!(
                                "Enumeration value '{other}' for field \
                                 '{stage}.combination.method' is not a valid value."
                            ),
                        ))
                    }
                    other => {
                        return Err(wrong_type(
                            &format!("{stage}.combination.method"),
                            other,
                            "string",
                        ))
                    }
                },
                "expression" if !rank => expression = Some(value.to_raw_bson()),
                _ => return Err(unknown_field(&format!("{stage}.combination.{key}"))),
            }
        }
        if rank && weights.is_none() {
            return Err(missing(&format!("{stage}.combination.weights")));
        }
    }
    if let Some(weights) = weights {
        apply_weights(stage, &mut inputs, weights)?;
    }
    let method = if rank {
        Method::Rank
    } else {
        let normalization =
            normalization.ok_or_else(|| missing(&format!("{stage}.input.normalization")))?;
        let combination = match (method, expression) {
            (Some("expression"), Some(e)) => {
                if weights.is_some() {
                    return Err(located(
                        10017301,
                        "both combination.expression and combination.weights cannot be specified",
                    ));
                }
                Combination::Expression(e)
            }
            (None | Some("avg"), None) => Combination::Avg,
            _ => {
                return Err(located(
                    10017300,
                    "combination.expression must be specified if and only if \
                     combination.method is \"expression\"",
                ))
            }
        };
        Method::Score {
            normalization,
            combination,
        }
    };
    Ok(Fusion {
        method,
        inputs,
        score_details,
        limit,
    })
}

fn parse_input<Q>(
    stage: &str,
    rank: bool,
    name: &str,
    stages: &bson::RawArray,
    owned: &impl Fn(&bson::RawArray) -> Result<Option<Q>, Error>,
) -> Result<FusionInput<Q>, Error> {
    let mut parsed = Vec::new();
    for s in stages {
        match s {
            Ok(RawBsonRef::Document(d)) => parsed.push(d.to_owned()),
            _ => {
                return Err(type_mismatch(format!(
                    "Error parsing {stage}.input.pipelines :: caused by :: Each element of the \
                     'pipeline' array must be an object"
                )))
            }
        }
    }
    let requirement = if rank {
        "All subpipelines to the $rankFusion stage must begin with one of $search, \
         $vectorSearch, $geoNear, or have a custom $sort in the pipeline."
    } else {
        "All subpipelines to the $scoreFusion stage must begin with one of $search, \
         $vectorSearch, or have a custom $score in the pipeline."
    };
    if parsed.is_empty() {
        return Err(located(
            if rank { 9834300 } else { 9402503 },
            format!("{stage} input pipeline cannot be empty. {requirement}"),
        ));
    }
    let mut names = Vec::with_capacity(parsed.len());
    for s in &parsed {
        let mut fields = s.iter();
        let (Some(Ok((n, spec))), None) = (fields.next(), fields.next()) else {
            return Err(located(
                40323,
                "A pipeline stage specification object must contain exactly one field.",
            ));
        };
        names.push((n.to_string(), spec.to_raw_bson()));
    }
    if names.iter().any(|(n, _)| is_fusion_stage(n)) {
        return Err(located(
            if rank { 10473002 } else { 10473003 },
            format!(
                "{stage} input pipeline has a nested hybrid search stage ($rankFusion/$scoreFusion). \
                 {requirement}"
            ),
        ));
    }
    let has = |stage: &str| names.iter().any(|(n, _)| n == stage);
    if rank && has("$score") {
        return Err(located(
            10614800,
            "$rankFusion input pipelines must not contain a $score stage.",
        ));
    }
    let first = names[0].0.as_str();
    let first_spec = parsed[0].iter().next().and_then(|f| f.ok()).map(|(_, v)| v);
    let like_first = first == "$match"
        && matches!(first_spec, Some(RawBsonRef::Document(m)) if m.get("$like").ok().flatten().is_some());
    let text_first = first == "$match"
        && matches!(first_spec, Some(RawBsonRef::Document(m)) if m.get("$text").ok().flatten().is_some());
    let searched = matches!(first, "$search" | "$vectorSearch") || like_first;
    if rank && !(searched || first == "$geoNear" || has("$sort")) {
        return Err(located(
            9191100,
            format!(
                "Pipeline did not begin with a ranked stage and did not contain an explicit \
                 $sort stage. {requirement}"
            ),
        ));
    }
    if !(rank || searched || text_first || has("$score")) {
        return Err(located(
            9402500,
            format!(
                "{requirement} Pipeline did not begin with a scored stage and did not contain an \
                 explicit $score stage."
            ),
        ));
    }
    for (n, spec) in &names {
        if !is_selection_stage(n, spec.as_raw_bson_ref()) {
            return Err(located(
                if rank { 9191103 } else { 9402502 },
                format!(
                    "{n} is not a selection stage because it modifies or transforms the input \
                     documents. Only stages that retrieve, limit, or order documents are allowed."
                ),
            ));
        }
    }
    validate_name(stage, name)?;
    let array = {
        let mut a = bson::RawArrayBuf::new();
        for s in &parsed {
            a.push(s.clone());
        }
        a
    };
    let owned = owned(&array)?;
    for (i, (n, _)) in names.iter().enumerate() {
        if i > 0 && matches!(n.as_str(), "$search" | "$vectorSearch" | "$geoNear") {
            return Err(Error::client(
                Code::STAGE_NOT_FIRST,
                format!("{n} is only valid as the first stage in a pipeline."),
            ));
        }
    }
    let mut score = None;
    for (n, spec) in &names {
        if n == "$score" {
            if score.is_some() {
                return Err(Error::client(
                    Code::BAD_VALUE,
                    "an input pipeline takes one $score stage",
                ));
            }
            score = Some(parse_score_stage(spec.as_raw_bson_ref())?);
        }
    }
    if owned.is_some() && score.is_some() {
        return Err(Error::client(
            Code::BAD_VALUE,
            "likewise does not serve a $score stage after $search or $vectorSearch yet: the \
             input's own score is used",
        ));
    }
    if score.is_none() && text_first {
        score = Some(RawBson::Document(bson::rawdoc! { "$meta": "textScore" }));
    }
    let sort = names
        .iter()
        .rev()
        .find(|(n, _)| n == "$sort")
        .and_then(|(_, spec)| spec.as_document().map(|d| d.to_owned()));
    Ok(FusionInput {
        name: name.to_string(),
        weight: 1.0,
        stages: parsed,
        owned,
        score,
        sort,
    })
}

/// `$score: {score: <expression>, normalization?: "none", weight?: 1}`:
/// the expression, evaluated upstream per document.
fn parse_score_stage(spec: RawBsonRef<'_>) -> Result<RawBson, Error> {
    let RawBsonRef::Document(spec) = spec else {
        return Err(wrong_type("$score", spec, "object"));
    };
    let mut score = None;
    for (key, value) in spec.iter().flatten() {
        match (key, value) {
            ("score", v) => score = Some(v.to_raw_bson()),
            ("normalization", RawBsonRef::String("none")) => {}
            ("weight", v) if crate::wire::integer(Some(v)) == Some(1) => {}
            ("weight", RawBsonRef::Double(1.0)) => {}
            ("normalization" | "weight" | "scoreDetails", _) => {
                return Err(Error::client(
                    Code::BAD_VALUE,
                    format!("$score.{key} is not served by likewise yet: give only 'score'"),
                ))
            }
            _ => return Err(unknown_field(&format!("$score.{key}"))),
        }
    }
    score.ok_or_else(|| missing("$score.score"))
}

/// mongod's field-name rules for a pipeline name (`FieldPath::validateFieldName`).
fn validate_name(stage: &str, name: &str) -> Result<(), Error> {
    let (code, why) = if name.is_empty() {
        (
            15998,
            "FieldPath field names may not be empty strings.".to_string(),
        )
    } else if name.starts_with('$') {
        (
            16410,
            format!("FieldPath field names may not start with '$', given '{name}'."),
        )
    } else if name.contains('\0') {
        (
            16411,
            format!("FieldPath field names may not contain '\\0', given '{name}'."),
        )
    } else if name.contains('.') {
        (
            16412,
            format!("FieldPath field names may not contain '.', given '{name}'."),
        )
    } else {
        return Ok(());
    };
    Err(located(
        code,
        format!(
            "{stage} pipeline names must follow the naming rules of field path expressions. :: \
             caused by :: {why}"
        ),
    ))
}

fn apply_weights<Q>(
    stage: &str,
    inputs: &mut [FusionInput<Q>],
    weights: &RawDocument,
) -> Result<(), Error> {
    let bare = stage.trim_start_matches('$');
    let mut unknown = Vec::new();
    let mut count = 0;
    for (name, value) in weights.iter().flatten() {
        count += 1;
        let weight = match (crate::wire::number(Some(value)), value) {
            (Some(w), _) => w,
            (None, RawBsonRef::Decimal128(_)) => f64::NAN,
            (None, other) => {
                return Err(located(
                    13118,
                    format!(
                        "expected {name} to have a numeric type, but it is a {}",
                        type_label(other)
                    ),
                ))
            }
        };
        if weight.is_nan() || weight < 0.0 {
            return Err(located(
                9460300,
                format!(
                    "{bare}'s pipeline weight must be non-negative, but given {weight} for \
                     pipeline '{name}'."
                ),
            ));
        }
        match inputs.iter_mut().find(|i| i.name == name) {
            Some(input) => input.weight = weight,
            None => unknown.push(name.to_string()),
        }
    }
    if count > inputs.len() {
        return Err(located(
            9460301,
            format!(
                "{stage} input has more weights ({count}) than pipelines ({}). If \
                 'combination.weights' is specified, there must be a less than or equal number \
                 of weights as pipelines, each of which is unique and existing. Possible \
                 extraneous specified weights = [{}]",
                inputs.len(),
                unknown.join(", ")
            ),
        ));
    }
    if !unknown.is_empty() {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(located(
            9967500,
            format!(
                "{stage} stage contained ({}) weight(s) in 'combination.weights' that did not \
                 reference valid pipeline names. Invalid: [{}]; valid pipeline names: [{}]",
                unknown.len(),
                unknown.join(", "),
                names.join(", ")
            ),
        ));
    }
    Ok(())
}

fn document<'a>(value: RawBsonRef<'a>, path: &str) -> Result<&'a RawDocument, Error> {
    match value {
        RawBsonRef::Document(d) => Ok(d),
        other => Err(wrong_type(path, other, "object")),
    }
}

fn unknown_field(path: &str) -> Error {
    Error::client(
        Code::relayed(40415, "IDLUnknownField"),
        format!("BSON field '{path}' is an unknown field."),
    )
}

fn missing(path: &str) -> Error {
    Error::client(
        Code::relayed(40414, "IDLFailedToParse"),
        format!("BSON field '{path}' is missing but a required field"),
    )
}

fn wrong_type(path: &str, value: RawBsonRef<'_>, expected: &str) -> Error {
    type_mismatch(format!(
        "BSON field '{path}' is the wrong type '{}', expected type '{expected}'",
        type_label(value)
    ))
}

/// mongod's name for a BSON type (`typeName`).
fn type_label(value: RawBsonRef<'_>) -> &'static str {
    match value {
        RawBsonRef::Double(_) => "double",
        RawBsonRef::String(_) => "string",
        RawBsonRef::Document(_) => "object",
        RawBsonRef::Array(_) => "array",
        RawBsonRef::Binary(_) => "binData",
        RawBsonRef::ObjectId(_) => "objectId",
        RawBsonRef::Boolean(_) => "bool",
        RawBsonRef::DateTime(_) => "date",
        RawBsonRef::Null => "null",
        RawBsonRef::RegularExpression(_) => "regex",
        RawBsonRef::Int32(_) => "int",
        RawBsonRef::Timestamp(_) => "timestamp",
        RawBsonRef::Int64(_) => "long",
        RawBsonRef::Decimal128(_) => "decimal",
        RawBsonRef::MinKey => "minKey",
        RawBsonRef::MaxKey => "maxKey",
        RawBsonRef::Undefined => "undefined",
        _ => "javascript",
    }
}

/// What one input pipeline returned: `_id`s in its order, each one's rank
/// (from 1; equal where its `$sort` keys tie) and, when it gives one, its
/// score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputResult {
    pub ids: Vec<RawBson>,
    pub ranks: Vec<u64>,
    pub scores: Option<Vec<f64>>,
}

/// A fused result: `_id`, fused score, and per input (in `Fusion::inputs`
/// order) its rank and its normalised, weighted score (`None` where the
/// document is not among that input's results).
#[derive(Debug, Clone, PartialEq)]
pub struct FusedHit {
    pub id: RawBson,
    pub score: f64,
    pub per_input: Vec<Option<(u64, f64)>>,
}

/// Every document of the inputs, deduplicated by `_id` (its best rank in
/// each input), with its per-input contributions: for `$rankFusion`
/// `w / (60 + rank)`, for `$scoreFusion` the weighted, normalised score
/// (negative scores count as 0, as mongod's grouping does). The fused score
/// is their sum (`$rankFusion`), their mean over all inputs (`avg`), or 0
/// for an `expression` that the upstream computes.
pub fn fuse<Q>(fusion: &Fusion<Q>, results: &[InputResult]) -> Vec<FusedHit> {
    let n = fusion.inputs.len();
    let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut hits: Vec<FusedHit> = Vec::new();
    for (p, (input, result)) in fusion.inputs.iter().zip(results).enumerate() {
        let normalised = match &fusion.method {
            Method::Rank => None,
            Method::Score { normalization, .. } => {
                let raw = result.scores.clone().unwrap_or_default();
                Some(normalise(*normalization, input.weight, &raw))
            }
        };
        for (i, id) in result.ids.iter().enumerate() {
            let rank = result.ranks.get(i).copied().unwrap_or(i as u64 + 1);
            let value = match &normalised {
                None => input.weight / (RANK_CONSTANT + rank as f64),
                Some(s) => s.get(i).copied().unwrap_or(0.0).max(0.0),
            };
            let slot = *at
                .entry(crate::index::ids::canonical(id.as_raw_bson_ref()))
                .or_insert_with(|| {
                    hits.push(FusedHit {
                        id: id.clone(),
                        score: 0.0,
                        per_input: vec![None; n],
                    });
                    hits.len() - 1
                });
            let entry = &mut hits[slot].per_input[p];
            // A document twice in one input keeps its best.
            match entry {
                Some((r, v)) if *r <= rank && *v >= value => {}
                _ => *entry = Some((rank, value)),
            }
        }
    }
    for hit in &mut hits {
        let sum: f64 = hit.per_input.iter().flatten().map(|(_, v)| v).sum();
        hit.score = match &fusion.method {
            Method::Rank => sum,
            Method::Score {
                combination: Combination::Avg,
                ..
            } => sum / n as f64,
            Method::Score { .. } => 0.0,
        };
    }
    sort_hits(&mut hits);
    hits
}

/// Best first; equal scores by `_id` ascending (mongod's final
/// `{$sort: {score: {$meta: "score"}, _id: 1}}`).
pub fn sort_hits(hits: &mut [FusedHit]) {
    hits.sort_by(|a, b| {
        // `total_cmp`: an expression may give NaN, which must still sort
        // somewhere consistent (lowest here).
        let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
        key(b.score)
            .total_cmp(&key(a.score))
            .then_with(|| compare_values(a.id.as_raw_bson_ref(), b.id.as_raw_bson_ref()))
    });
}

/// One input's scores normalised, then weighted. `minMaxScaler` scales the
/// weighted scores (mongod applies the weight first, so it cancels there).
fn normalise(normalization: Normalization, weight: f64, raw: &[f64]) -> Vec<f64> {
    match normalization {
        Normalization::None => raw.iter().map(|s| weight * s).collect(),
        Normalization::Sigmoid => raw
            .iter()
            .map(|s| weight * (1.0 / (1.0 + (-s).exp())))
            .collect(),
        Normalization::MinMaxScaler => {
            let weighted: Vec<f64> = raw.iter().map(|s| weight * s).collect();
            let min = weighted.iter().copied().fold(f64::INFINITY, f64::min);
            let max = weighted.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            weighted
                .iter()
                .map(|s| {
                    if max > min {
                        (s - min) / (max - min)
                    } else {
                        0.0
                    }
                })
                .collect()
        }
    }
}

/// Ranks from 1 in result order, equal where consecutive sort keys are
/// equal (mongod's `$rank`: 1, 1, 3).
pub fn ranks_with_ties(keys: &[Option<RawBson>]) -> Vec<u64> {
    let mut out = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let rank = match (i, key) {
            (0, _) | (_, None) => i as u64 + 1,
            (_, Some(k)) if keys[i - 1].as_ref() == Some(k) => out[i - 1],
            _ => i as u64 + 1,
        };
        out.push(rank);
    }
    out
}

/// The `scoreDetails` of one fused hit, in mongod's shape: for
/// `$rankFusion`, per input `{inputPipelineName, rank, weight, value,
/// details: []}` (`rank: "NA"` where absent); for `$scoreFusion`, per input
/// `{inputPipelineName, inputPipelineRawScore, weight, value, details: []}`.
pub fn score_details<Q>(fusion: &Fusion<Q>, hit: &FusedHit, raw: &[Option<f64>]) -> RawDocumentBuf {
    let mut details = bson::RawArrayBuf::new();
    for (p, input) in fusion.inputs.iter().enumerate() {
        let mut d = bson::rawdoc! { "inputPipelineName": input.name.as_str() };
        match (&fusion.method, hit.per_input[p]) {
            (Method::Rank, Some((rank, _))) => {
                d.append("rank", i64::try_from(rank).unwrap_or(i64::MAX));
                d.append("weight", input.weight);
                if let Some(score) = raw.get(p).copied().flatten() {
                    d.append("value", score);
                }
                d.append("details", bson::RawArrayBuf::new());
            }
            (Method::Rank, None) => d.append("rank", "NA"),
            (Method::Score { .. }, entry) => {
                d.append(
                    "inputPipelineRawScore",
                    raw.get(p).copied().flatten().unwrap_or(0.0),
                );
                d.append("weight", input.weight);
                d.append("value", entry.map_or(0.0, |(_, v)| v));
                if entry.is_some() {
                    d.append("details", bson::RawArrayBuf::new());
                }
            }
        }
        details.push(d);
    }
    match &fusion.method {
        Method::Rank => bson::rawdoc! {
            "value": hit.score,
            "description": "value output by reciprocal rank fusion algorithm, computed as sum of \
                            (weight * (1 / (60 + rank))) across input pipelines from which this \
                            document is output, from:",
            "details": details,
        },
        Method::Score {
            normalization,
            combination,
        } => {
            let combination = match combination {
                Combination::Avg => bson::rawdoc! { "method": "average" },
                Combination::Expression(e) => bson::rawdoc! {
                    "method": "custom expression",
                    "expression": expression_text(e),
                },
            };
            bson::rawdoc! {
                "value": hit.score,
                "description": "the value calculated by combining the scores (either normalized \
                                or raw) across input pipelines from which this document is \
                                output from:",
                "normalization": normalization.name(),
                "combination": combination,
                "details": details,
            }
        }
    }
}

/// A custom expression as `scoreDetails` shows it: its extended JSON with
/// `"` made `'`, as mongod prints it.
fn expression_text(e: &RawBson) -> String {
    let value = bson::Bson::try_from(e.clone()).unwrap_or(bson::Bson::Null);
    format!("{{ string: {} }}", value.into_relaxed_extjson()).replace('"', "'")
}

/// BSON's comparison order (MongoDB's "Comparison/Sort Order": MinKey,
/// null, numbers, strings, objects, arrays, binary data, ObjectId,
/// booleans, dates, timestamps, regular expressions, MaxKey), values of one
/// kind compared by value (numbers as doubles, strings byte-wise, as with
/// the simple collation), anything else by its bytes.
pub fn compare_values(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> Ordering {
    fn class(v: RawBsonRef<'_>) -> u8 {
        match v {
            RawBsonRef::MinKey => 0,
            RawBsonRef::Null | RawBsonRef::Undefined => 1,
            RawBsonRef::Double(_)
            | RawBsonRef::Int32(_)
            | RawBsonRef::Int64(_)
            | RawBsonRef::Decimal128(_) => 2,
            RawBsonRef::String(_) | RawBsonRef::Symbol(_) => 3,
            RawBsonRef::Document(_) => 4,
            RawBsonRef::Array(_) => 5,
            RawBsonRef::Binary(_) => 6,
            RawBsonRef::ObjectId(_) => 7,
            RawBsonRef::Boolean(_) => 8,
            RawBsonRef::DateTime(_) => 9,
            RawBsonRef::Timestamp(_) => 10,
            RawBsonRef::RegularExpression(_) => 11,
            RawBsonRef::MaxKey => 13,
            _ => 12,
        }
    }
    let number = |v| crate::wire::number(Some(v)).unwrap_or(f64::NAN);
    class(a).cmp(&class(b)).then_with(|| match (a, b) {
        (RawBsonRef::String(x), RawBsonRef::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (RawBsonRef::ObjectId(x), RawBsonRef::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (RawBsonRef::Boolean(x), RawBsonRef::Boolean(y)) => x.cmp(&y),
        (RawBsonRef::DateTime(x), RawBsonRef::DateTime(y)) => x.cmp(&y),
        _ if class(a) == 2 => number(a).total_cmp(&number(b)),
        _ => crate::index::ids::canonical(a).cmp(&crate::index::ids::canonical(b)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::vector_query::VectorQuery;
    use bson::rawdoc;

    fn vs() -> RawDocumentBuf {
        rawdoc! { "$vectorSearch": { "index": "v", "path": "e", "queryVector": [1.0, 0.0], "numCandidates": 10, "limit": 5 } }
    }

    fn search() -> RawDocumentBuf {
        rawdoc! { "$search": { "index": "t", "text": { "query": "fox", "path": "title" } } }
    }

    fn parse(stage: &str, spec: RawDocumentBuf) -> Result<Fusion<VectorQuery>, Error> {
        let owned =
            |stages: &bson::RawArray| crate::command::vector_query::owned_first_stage(stages);
        parse_fusion(stage, RawBsonRef::Document(&spec), 100, &owned)
    }

    fn code(r: Result<Fusion<VectorQuery>, Error>) -> i32 {
        r.map(|_| 0).unwrap_or_else(|e| e.code.code)
    }

    fn ids(xs: &[i32]) -> Vec<RawBson> {
        xs.iter().map(|&x| RawBson::Int32(x)).collect()
    }

    #[test]
    fn rank_fusion_reads_and_refuses_as_mongod_does() {
        let ok = parse(
            "$rankFusion",
            rawdoc! { "input": { "pipelines": { "vec": [vs()], "kw": [search(), { "$limit": 3 }] } },
                      "combination": { "weights": { "vec": 2 } }, "scoreDetails": true },
        )
        .unwrap();
        // Name order, weights defaulting to 1.
        let names: Vec<_> = ok
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.weight))
            .collect();
        assert_eq!(names, vec![("kw", 1.0), ("vec", 2.0)]);
        assert!(ok.inputs.iter().all(|i| i.owned.is_some()));
        assert!(ok.score_details);
        let sorted = rawdoc! { "$match": { "a": 1 } };
        let cases = [
            (rawdoc! { "input": { "pipelines": {} } }, 2),
            (rawdoc! { "input": { "pipelines": { "a": [] } } }, 9834300),
            (
                rawdoc! { "input": { "pipelines": { "a": [sorted.clone()] } } },
                9191100,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [vs(), { "$project": { "x": 1 } }] } } },
                9191103,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [{ "$rankFusion": {} }] } } },
                10473002,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [vs(), { "$score": { "score": 1 } }] } } },
                10614800,
            ),
            (
                rawdoc! { "input": { "pipelines": { "$a": [vs()] } } },
                16410,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a.b": [vs()] } } },
                16412,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [vs()] } }, "combination": { "weights": { "a": -1 } } },
                9460300,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [vs()] } }, "combination": { "weights": { "a": "x" } } },
                13118,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [vs()] } }, "combination": { "weights": { "b": 1 } } },
                9967500,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [vs()] } }, "combination": { "weights": { "a": 1, "b": 1 } } },
                9460301,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [vs()] } }, "extra": 1 },
                40415,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [vs()] } }, "combination": {} },
                40414,
            ),
            (rawdoc! { "input": { "pipelines": { "a": 1 } } }, 14),
            (
                rawdoc! { "input": { "pipelines": { "a": [{ "$match": {} }, vs()] } } },
                9191100,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [{ "$sort": { "x": 1 } }, vs()] } } },
                40602,
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(
                code(parse("$rankFusion", spec.clone())),
                expected,
                "{spec:?}"
            );
        }
        // A `$sort` anywhere ranks a pipeline; its keys are kept for ties.
        let sorted = parse(
            "$rankFusion",
            rawdoc! { "input": { "pipelines": { "a": [{ "$match": { "x": 1 } }, { "$sort": { "y": -1 } }] } } },
        )
        .unwrap();
        assert_eq!(sorted.inputs[0].sort, Some(rawdoc! { "y": -1 }));
        assert!(sorted.inputs[0].owned.is_none());
    }

    #[test]
    fn score_fusion_reads_and_refuses_as_mongod_does() {
        let ok = parse(
            "$scoreFusion",
            rawdoc! { "input": { "pipelines": { "v": [vs()], "s": [{ "$match": { "a": 1 } }, { "$score": { "score": "$n" } }] },
                                 "normalization": "sigmoid" },
                      "combination": { "method": "expression", "expression": { "$add": ["$$v", "$$s"] } } },
        )
        .unwrap();
        assert!(matches!(
            ok.method,
            Method::Score {
                normalization: Normalization::Sigmoid,
                combination: Combination::Expression(_)
            }
        ));
        assert_eq!(ok.inputs[0].score, Some(RawBson::String("$n".into())));
        let p = rawdoc! { "v": [vs()] };
        let cases = [
            (rawdoc! { "input": { "pipelines": p.clone() } }, 40414),
            (
                rawdoc! { "input": { "pipelines": p.clone(), "normalization": "minMaxScalar" } },
                2,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [{ "$sort": { "x": 1 } }] }, "normalization": "none" } },
                9402500,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [] }, "normalization": "none" } },
                9402503,
            ),
            (
                rawdoc! { "input": { "pipelines": p.clone(), "normalization": "none" }, "combination": { "method": "expression" } },
                10017300,
            ),
            (
                rawdoc! { "input": { "pipelines": p.clone(), "normalization": "none" }, "combination": { "expression": 1 } },
                10017300,
            ),
            (
                rawdoc! { "input": { "pipelines": p.clone(), "normalization": "none" }, "combination": { "method": "expression", "expression": 1, "weights": { "v": 1 } } },
                10017301,
            ),
            (
                rawdoc! { "input": { "pipelines": p.clone(), "normalization": "none" }, "combination": { "method": "sum" } },
                2,
            ),
            (
                rawdoc! { "input": { "pipelines": { "a": [vs(), { "$set": { "x": 1 } }] }, "normalization": "none" } },
                9402502,
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(
                code(parse("$scoreFusion", spec.clone())),
                expected,
                "{spec:?}"
            );
        }
    }

    fn fusion(method: Method, weights: &[f64]) -> Fusion<VectorQuery> {
        Fusion {
            method,
            inputs: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| FusionInput {
                    name: format!("p{i}"),
                    weight: w,
                    stages: Vec::new(),
                    owned: None,
                    score: None,
                    sort: None,
                })
                .collect(),
            score_details: false,
            limit: 100,
        }
    }

    #[test]
    fn reciprocal_rank_fusion_is_the_weighted_sum_of_reciprocal_ranks() {
        let f = fusion(Method::Rank, &[1.0, 2.0]);
        let a = InputResult {
            ids: ids(&[1, 2, 3]),
            ranks: vec![1, 2, 3],
            scores: None,
        };
        let b = InputResult {
            ids: ids(&[3, 4]),
            ranks: vec![1, 2],
            scores: None,
        };
        let hits = fuse(&f, &[a, b]);
        let got: Vec<(RawBson, f64)> = hits.iter().map(|h| (h.id.clone(), h.score)).collect();
        let rrf = |r: f64| 1.0 / (60.0 + r);
        // 3: 1/63 + 2/61; 4: 2/62; 1: 1/61; 2: 1/62.
        assert_eq!(got[0], (RawBson::Int32(3), rrf(3.0) + 2.0 * rrf(1.0)));
        assert_eq!(got[1], (RawBson::Int32(4), 2.0 * rrf(2.0)));
        assert_eq!(got[2], (RawBson::Int32(1), rrf(1.0)));
        assert_eq!(got[3], (RawBson::Int32(2), rrf(2.0)));
        // Equal scores: `_id` ascending.
        let f1 = fusion(Method::Rank, &[1.0, 1.0]);
        let x = InputResult {
            ids: ids(&[9]),
            ranks: vec![1],
            scores: None,
        };
        let y = InputResult {
            ids: ids(&[5]),
            ranks: vec![1],
            scores: None,
        };
        let tied: Vec<RawBson> = fuse(&f1, &[x, y]).into_iter().map(|h| h.id).collect();
        assert_eq!(tied, ids(&[5, 9]));
        assert_eq!(
            ranks_with_ties(&[
                Some(RawBson::Int32(1)),
                Some(RawBson::Int32(1)),
                Some(RawBson::Int32(2))
            ]),
            vec![1, 1, 3]
        );
    }

    #[test]
    fn score_fusion_normalises_weights_and_averages_over_every_input() {
        let method = |normalization| Method::Score {
            normalization,
            combination: Combination::Avg,
        };
        let a = InputResult {
            ids: ids(&[1, 2]),
            ranks: vec![1, 2],
            scores: Some(vec![0.9, 0.5]),
        };
        let b = InputResult {
            ids: ids(&[2, 3]),
            ranks: vec![1, 2],
            scores: Some(vec![4.0, 2.0]),
        };
        let none = fuse(
            &fusion(method(Normalization::None), &[1.0, 0.5]),
            &[a.clone(), b.clone()],
        );
        let by_id = |hits: &[FusedHit], id: i32| {
            hits.iter()
                .find(|h| h.id == RawBson::Int32(id))
                .unwrap()
                .score
        };
        assert!((by_id(&none, 2) - (0.5 + 2.0) / 2.0).abs() < 1e-12);
        assert!((by_id(&none, 1) - 0.9 / 2.0).abs() < 1e-12);
        let sig = fuse(
            &fusion(method(Normalization::Sigmoid), &[1.0, 1.0]),
            &[a.clone(), b.clone()],
        );
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        assert!((by_id(&sig, 3) - s(2.0) / 2.0).abs() < 1e-12);
        let mm = fuse(
            &fusion(method(Normalization::MinMaxScaler), &[1.0, 1.0]),
            &[a, b],
        );
        // Input a: 1 -> 1, 2 -> 0; input b: 2 -> 1, 3 -> 0.
        assert!((by_id(&mm, 1) - 0.5).abs() < 1e-12);
        assert!((by_id(&mm, 2) - 0.5).abs() < 1e-12);
        assert!(by_id(&mm, 3).abs() < 1e-12);
        let details = score_details(
            &fusion(method(Normalization::MinMaxScaler), &[1.0, 1.0]),
            &mm[0],
            &[Some(0.9), None],
        );
        assert_eq!(details.get_str("normalization").unwrap(), "minMaxScaler");
        assert_eq!(details.get_array("details").unwrap().into_iter().count(), 2);
    }

    #[test]
    fn bson_order_puts_numbers_before_strings_and_compares_by_value() {
        use bson::RawBson as B;
        let mut v = [
            B::String("b".into()),
            B::Int64(3),
            B::Double(2.5),
            B::String("a".into()),
            B::Null,
        ];
        v.sort_by(|a, b| compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref()));
        assert_eq!(
            v,
            [
                B::Null,
                B::Double(2.5),
                B::Int64(3),
                B::String("a".into()),
                B::String("b".into())
            ]
        );
    }
}
