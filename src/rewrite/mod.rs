//! Pure rewrites: (client command, ranked neighbour ids) -> upstream command.
//!
//! The upstream fetches exactly the ranked documents, `_id: {$in: ids}`
//! combined with the client's exact filter, and returns them in similarity
//! order: a rank computed from the id list sorts them, across every batch
//! and `getMore`. `{$meta: "vectorSearchScore"}` anywhere in later stages
//! (or a find projection) becomes the score looked up by `_id`. A `find`
//! becomes an `aggregate`, whose cursor replies have the same shape.
//!
//! When nothing after the ranking depends on order or scores and every
//! result fits one batch, the upstream only fetches (`fetch_only`: a plain
//! `find` of `_id: {$in: ids}`, whatever the client sent) and the proxy
//! puts the batch in order itself (`put_in_order`): the upstream then does
//! exactly the work of that find, without an aggregation pipeline to parse
//! and plan (measured on SecantusDB: 0.91 against 0.97 ms for the same
//! ten documents).

use bson::{rawdoc, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};

/// Internal field holding a document's rank; removed before the client sees it.
const RANK: &str = "__likewise_rank";

/// An empty BSON array's (or document's) bytes: its length and its end.
const EMPTY_ARRAY: usize = 5;

/// The bytes of a score lookup of no documents (see [`Ranked::score_bytes`]).
fn empty_lookup_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| Ranked::default().score_expression().as_bytes().len())
}

/// Neighbours in similarity order, with their Atlas-normalised scores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranked {
    pub ids: Vec<RawBson>,
    pub scores: Vec<f64>,
    /// One `{$meta: "scoreDetails"}` document per id, or empty when the
    /// stage was not asked for them.
    pub details: Vec<RawDocumentBuf>,
    /// What `$$SEARCH_META` holds after a `$search` (`{count: {...}}`).
    pub search_meta: Option<RawDocumentBuf>,
    /// One `{$meta: "searchHighlights"}` array per id, or empty when the
    /// `$search` asked for none.
    pub highlights: Vec<RawArrayBuf>,
    /// `$search` with `returnStoredSource`: the `$project` keeping only the
    /// index's stored fields, applied right after the fetch.
    pub stored_source: Option<RawDocumentBuf>,
}

/// Ranked `(_id, score)` pairs, best first.
impl FromIterator<(RawBson, f64)> for Ranked {
    fn from_iter<I: IntoIterator<Item = (RawBson, f64)>>(hits: I) -> Ranked {
        let (ids, scores) = hits.into_iter().unzip();
        Ranked {
            ids,
            scores,
            details: Vec::new(),
            search_meta: None,
            highlights: Vec::new(),
            stored_source: None,
        }
    }
}

impl Ranked {
    fn id_array(&self) -> RawArrayBuf {
        let mut out = RawArrayBuf::new();
        for id in &self.ids {
            out.push(id.clone());
        }
        out
    }

    fn score_array(&self) -> RawArrayBuf {
        let mut out = RawArrayBuf::new();
        for s in &self.scores {
            out.push(*s);
        }
        out
    }

    /// `{$indexOfArray: [{$literal: ids}, "$_id"]}`
    fn rank_expression(&self) -> RawDocumentBuf {
        rawdoc! { "$indexOfArray": [{ "$literal": self.id_array() }, "$_id"] }
    }

    /// The document's score, looked up by its `_id`; missing (`$$REMOVE`)
    /// where the document no longer has the `_id` of a ranked one (after a
    /// projection dropped it, say), never another document's score.
    fn score_expression(&self) -> RawDocumentBuf {
        self.lookup(self.score_array())
    }

    /// The entry of `values` (one per ranked id) for the document's `_id`.
    fn lookup(&self, values: RawArrayBuf) -> RawDocumentBuf {
        rawdoc! { "$let": {
            "vars": { "likewise_rank": self.rank_expression() },
            "in": { "$cond": [
                { "$lt": ["$$likewise_rank", 0] },
                "$$REMOVE",
                { "$arrayElemAt": [{ "$literal": values }, "$$likewise_rank"] },
            ] },
        } }
    }

    /// The value `$$SEARCH_META` or `$$SEARCH_META.a.b` names, when this
    /// ranking has search metadata (`$$REMOVE`'s missing where the path
    /// leads nowhere: `None` keeps the reference, as given).
    fn search_meta_at(&self, reference: &str) -> Option<RawBson> {
        let meta = self.search_meta.as_ref()?;
        let rest = reference.strip_prefix("$$SEARCH_META")?;
        if rest.is_empty() {
            return Some(RawBson::Document(meta.clone()));
        }
        let mut value = RawBsonRef::Document(meta);
        for key in rest.strip_prefix('.')?.split('.') {
            value = value.as_document()?.get(key).ok()??;
        }
        Some(value.to_raw_bson())
    }

    /// The document's `scoreDetails`, looked up like its score.
    fn details_expression(&self) -> RawDocumentBuf {
        let mut details = RawArrayBuf::new();
        for d in &self.details {
            details.push(d.clone());
        }
        self.lookup(details)
    }

    /// The expression a `$meta` reference becomes.
    fn meta_expression(&self, meta: Meta) -> RawDocumentBuf {
        match meta {
            Meta::Score => self.score_expression(),
            Meta::Details => self.details_expression(),
            Meta::Highlights => {
                let mut all = RawArrayBuf::new();
                for h in &self.highlights {
                    all.push(h.clone());
                }
                self.lookup(all)
            }
        }
    }

    /// How many bytes one score lookup adds to a command: its expression,
    /// which carries the id and score arrays (and a details lookup, the
    /// details). Exact, without building the expression: a lookup's size
    /// is an empty one's plus what its two arrays add.
    pub fn score_bytes(&self) -> usize {
        let details = if self.details.is_empty() {
            0
        } else {
            self.details_expression().as_bytes().len()
        };
        let highlights = if self.highlights.is_empty() {
            0
        } else {
            self.meta_expression(Meta::Highlights).as_bytes().len()
        };
        // An element: its type byte, its index as a C string, its value.
        let key = |i: usize| 1 + i.checked_ilog10().unwrap_or(0) as usize + 1 + 1;
        let scores: usize = (0..self.scores.len()).map(|i| key(i) + 8).sum();
        let ids = self.id_array().as_bytes().len() - EMPTY_ARRAY;
        empty_lookup_bytes()
            .saturating_add(ids + scores)
            .max(details)
            .max(highlights)
    }

    /// The filter selecting exactly the ranked documents that also match:
    /// `{_id: {$in: ids}, ...exact}`, the flat form every planner serves
    /// from the `_id` index (top-level fields are ANDed). Only when `exact`
    /// names `_id` itself is it `{$and: [{_id: {$in: ids}}, exact]}`.
    pub fn filter(&self, exact: Option<&RawDocument>) -> RawDocumentBuf {
        let mut out = rawdoc! { "_id": { "$in": self.id_array() } };
        let Some(f) = exact.filter(|f| !f.is_empty()) else {
            return out;
        };
        if f.get("_id").ok().flatten().is_some() {
            return rawdoc! { "$and": [out, f.to_owned()] };
        }
        for (key, value) in f.into_iter().flatten() {
            out.append(key, value.to_raw_bson());
        }
        out
    }

    /// Stages that fetch the ranked documents in rank order.
    pub fn stages(&self, exact: Option<&RawDocument>) -> Vec<RawDocumentBuf> {
        let mut add_rank = RawDocumentBuf::new();
        add_rank.append(RANK, self.rank_expression());
        let mut sort = RawDocumentBuf::new();
        sort.append(RANK, 1);
        let mut unset = RawDocumentBuf::new();
        unset.append(RANK, 0);
        let mut stages = vec![
            rawdoc! { "$match": self.filter(exact) },
            rawdoc! { "$addFields": add_rank },
            rawdoc! { "$sort": sort },
            rawdoc! { "$project": unset },
        ];
        stages.extend(
            self.stored_source
                .iter()
                .map(|p| rawdoc! { "$project": p.clone() }),
        );
        stages
    }

    /// Replaces every `{$meta: "vectorSearchScore"}` inside `doc`.
    pub fn substitute_score(&self, doc: &RawDocument) -> RawDocumentBuf {
        let mut out = RawDocumentBuf::new();
        for (key, value) in doc.iter().flatten() {
            out.append(key, self.substitute_value(value));
        }
        out
    }

    fn substitute_value(&self, value: RawBsonRef<'_>) -> RawBson {
        match value {
            RawBsonRef::Document(d) => match self.meta_of(d) {
                Some(meta) => RawBson::Document(self.meta_expression(meta)),
                None => RawBson::Document(self.substitute_score(d)),
            },
            RawBsonRef::String(path) if path.starts_with("$$SEARCH_META") => {
                match self.search_meta_at(path) {
                    Some(value) => RawBson::Document(rawdoc! { "$literal": value }),
                    None => RawBson::String(path.to_string()),
                }
            }
            RawBsonRef::Array(a) => {
                let mut out = RawArrayBuf::new();
                for item in a.into_iter().flatten() {
                    out.push(self.substitute_value(item));
                }
                RawBson::Array(out)
            }
            other => other.to_raw_bson(),
        }
    }
}

/// How many score references (`{$meta: "vectorSearchScore"}` or
/// `"searchScore"`) a command holds (each becomes a
/// score lookup carrying the ranked ids and scores), counted to `depth`.
pub fn score_references(doc: &RawDocument, depth: usize) -> usize {
    fn count(value: RawBsonRef<'_>, depth: usize) -> usize {
        match value {
            _ if depth == 0 => 0,
            RawBsonRef::Document(d) if meta_reference(d).is_some() => 1,
            RawBsonRef::Document(d) => d.iter().flatten().map(|(_, v)| count(v, depth - 1)).sum(),
            RawBsonRef::Array(a) => a.into_iter().flatten().map(|v| count(v, depth - 1)).sum(),
            _ => 0,
        }
    }
    count(RawBsonRef::Document(doc), depth)
}

/// Which ranked metadata a `{$meta}` reference reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Meta {
    /// `vectorSearchScore`, `searchScore` or `score`: the ranked score of
    /// the stage that opened the pipeline.
    Score,
    /// `scoreDetails` (`$rankFusion` / `$scoreFusion` with
    /// `scoreDetails: true`).
    Details,
    /// `searchHighlights` (`$search` with `highlight`).
    Highlights,
}

/// The metadata `doc` reads when it is a `{$meta: ...}` the proxy answers.
fn meta_reference(doc: &RawDocument) -> Option<Meta> {
    let mut it = doc.iter();
    match (it.next(), it.next()) {
        (Some(Ok(("$meta", RawBsonRef::String(name)))), None) => match name {
            "vectorSearchScore" | "searchScore" | "score" => Some(Meta::Score),
            "scoreDetails" | "searchScoreDetails" => Some(Meta::Details),
            "searchHighlights" => Some(Meta::Highlights),
            _ => None,
        },
        _ => None,
    }
}

/// The metadata a command reads (to `depth`) that only a stage asked for
/// it gives: `"scoreDetails"`, `"searchScoreDetails"` or
/// `"searchHighlights"`, the first met.
pub fn reads_asked_metadata(doc: &RawDocument, depth: usize) -> Option<&'static str> {
    fn walk(value: RawBsonRef<'_>, depth: usize) -> Option<&'static str> {
        match value {
            _ if depth == 0 => None,
            RawBsonRef::Document(d) => match meta_reference(d) {
                Some(Meta::Details) if d.get_str("$meta") == Ok("searchScoreDetails") => {
                    Some("searchScoreDetails")
                }
                Some(Meta::Details) => Some("scoreDetails"),
                Some(Meta::Highlights) => Some("searchHighlights"),
                _ => d.iter().flatten().find_map(|(_, v)| walk(v, depth - 1)),
            },
            RawBsonRef::Array(a) => a.into_iter().flatten().find_map(|v| walk(v, depth - 1)),
            _ => None,
        }
    }
    walk(RawBsonRef::Document(doc), depth)
}

impl Ranked {
    /// The metadata a `{$meta}` reference reads from these results: its
    /// score, or its details where there are any.
    fn meta_of(&self, doc: &RawDocument) -> Option<Meta> {
        meta_reference(doc).filter(|m| match m {
            Meta::Score => true,
            Meta::Details => !self.details.is_empty(),
            Meta::Highlights => !self.highlights.is_empty(),
        })
    }
}

/// Copies `body` with `key` set to `value` (replacing it in place, or
/// appended before `$db` if absent), leaving every other field as it was.
fn with_field(body: &RawDocument, key: &str, value: RawBson) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    let mut value = Some(value);
    for (k, v) in body.iter().flatten() {
        if k == key {
            if let Some(v) = value.take() {
                out.append(k, v);
            }
        } else {
            out.append(k, v.to_raw_bson());
        }
    }
    if let Some(v) = value {
        out.append(key, v);
    }
    out
}

fn pipeline(stages: impl IntoIterator<Item = RawDocumentBuf>) -> RawBson {
    let mut out = RawArrayBuf::new();
    for s in stages {
        out.push(s);
    }
    RawBson::Array(out)
}

/// One planned vector stage: its neighbours and the exact filter that
/// came with it.
pub type Planned<'a> = (&'a Ranked, Option<&'a RawDocument>);

/// An `aggregate` with its vector stages answered: `plans` holds one entry
/// per owned stage, in the order `command::vector_query::vector_stages`
/// found them. Each vector stage that opens a pipeline (the command's, or
/// a `$unionWith` sub-pipeline at any depth) is replaced by the ranked
/// stages; the later stages of that pipeline keep running upstream, with
/// its scores substituted (`Ranked::later_stage`).
pub fn aggregate(body: &RawDocument, plans: &[Planned<'_>]) -> RawDocumentBuf {
    let mut plans = plans.iter().copied();
    let stages = pipeline_with(body.get_array("pipeline").ok(), &mut plans);
    with_field(body, "pipeline", pipeline(stages))
}

fn pipeline_with<'a>(
    stages: Option<&bson::RawArray>,
    plans: &mut impl Iterator<Item = Planned<'a>>,
) -> Vec<RawDocumentBuf> {
    let stages: Vec<&RawDocument> = stages
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|s| s.as_document())
        .collect();
    let mut out = Vec::new();
    let mut ranked = None;
    let mut later = &stages[..];
    if let Some(first) = stages.first() {
        if crate::command::vector_query::is_vector_stage(first) {
            if let Some((r, exact)) = plans.next() {
                out = r.stages(exact);
                ranked = Some(r);
                later = &stages[1..];
            }
        }
    }
    for stage in later {
        match stage.get_document("$unionWith") {
            Ok(union) if union.get_array("pipeline").is_ok() => {
                // The first `pipeline` field, as `vector_stages` reads it.
                let mut spec = RawDocumentBuf::new();
                let mut done = false;
                for (k, v) in union.iter().flatten() {
                    if k == "pipeline" && !done {
                        done = true;
                        let inner = pipeline_with(v.as_array(), plans);
                        spec.append(k, pipeline(inner));
                    } else {
                        spec.append(k, v.to_raw_bson());
                    }
                }
                out.push(rawdoc! { "$unionWith": spec });
            }
            _ => match ranked {
                Some(r) => out.extend(r.later_stage(stage)),
                None => out.push((*stage).to_owned()),
            },
        }
    }
    out
}

/// Fields of `find` that have an `aggregate` equivalent written into the
/// pipeline or cursor instead of copied.
const FIND_ONLY: &[&str] = &[
    "find",
    "filter",
    "projection",
    "sort",
    "skip",
    "limit",
    "batchSize",
    "singleBatch",
    "noCursorTimeout",
    "allowPartialResults",
    "returnKey",
    "showRecordId",
    "tailable",
    "awaitData",
    "oplogReplay",
    "min",
    "max",
    "readOnce",
];

/// A `find` with `$like` as the equivalent `aggregate`: ranked stages, then
/// the client's sort, skip, limit and projection (scores substituted).
pub fn find_as_aggregate(
    body: &RawDocument,
    ranked: &Ranked,
    exact: Option<&RawDocument>,
) -> RawDocumentBuf {
    let collection = body.get_str("find").unwrap_or_default();
    let mut stages = ranked.stages(exact);
    if let Ok(sort) = body.get_document("sort") {
        if !sort.is_empty() {
            stages.extend(ranked.later_stage(&rawdoc! { "$sort": sort.to_owned() }));
        }
    }
    if let Some(skip) = crate::wire::integer(body.get("skip").ok().flatten()).filter(|n| *n > 0) {
        stages.push(rawdoc! { "$skip": skip });
    }
    let single_batch = matches!(body.get("singleBatch"), Ok(Some(RawBsonRef::Boolean(true))));
    let limit = crate::wire::integer(body.get("limit").ok().flatten()).map(i64::abs);
    if let Some(limit) = limit.filter(|n| *n > 0) {
        stages.push(rawdoc! { "$limit": limit });
    }
    if let Ok(projection) = body.get_document("projection") {
        stages.extend(ranked.projection_stages(projection, true));
    }
    let mut cursor = RawDocumentBuf::new();
    if single_batch {
        // All results in the first batch: the client will not ask for more.
        let all = limit.filter(|n| *n > 0).unwrap_or(i64::from(i32::MAX));
        cursor.append("batchSize", i32::try_from(all).unwrap_or(i32::MAX));
    } else if let Ok(Some(batch)) = body.get("batchSize") {
        cursor.append("batchSize", batch.to_raw_bson());
    }
    let mut out = RawDocumentBuf::new();
    out.append("aggregate", collection);
    out.append("pipeline", pipeline(stages));
    out.append("cursor", cursor);
    for (k, v) in body.iter().flatten() {
        if !FIND_ONLY.contains(&k) {
            out.append(k, v.to_raw_bson());
        }
    }
    out
}

/// Internal field a `$sort` on the score sorts by; removed right after.
const SORT_SCORE: &str = "__likewise_score";

impl Ranked {
    /// A stage after the vector stage as the upstream can run it, with
    /// `{$meta: "vectorSearchScore"}` made the document's score:
    /// - `$project`: see `projection_stages` (mongod allows `$meta` in an
    ///   exclusion projection; a computed score would make it inclusion);
    /// - `$sort` by the score (`{f: {$meta: "vectorSearchScore"}}`, highest
    ///   first as mongod sorts metadata): the score is put in a field,
    ///   sorted on, and removed;
    /// - `$facet`: each sub-pipeline's stages, the same way;
    /// - `$lookup` and `$unionWith`: their sub-pipelines run over other
    ///   documents and are left as they are here (a `$lookup`'s `let` may
    ///   pass the score in; `aggregate` answers a `$unionWith`'s own
    ///   vector stage);
    /// - anything else: the score substituted wherever it appears.
    pub fn later_stage(&self, stage: &RawDocument) -> Vec<RawDocumentBuf> {
        let Some(Ok((name, RawBsonRef::Document(spec)))) = stage.iter().next() else {
            return vec![self.substitute_score(stage)];
        };
        match name {
            "$project" => self.projection_stages(spec, false),
            "$sort" if spec.iter().flatten().any(|(_, v)| is_score_value(v)) => {
                let mut sort = RawDocumentBuf::new();
                for (k, v) in spec.iter().flatten() {
                    if is_score_value(v) {
                        sort.append(SORT_SCORE, -1);
                    } else {
                        sort.append(k, v.to_raw_bson());
                    }
                }
                let mut add = RawDocumentBuf::new();
                add.append(SORT_SCORE, self.score_expression());
                let mut unset = RawDocumentBuf::new();
                unset.append(SORT_SCORE, 0);
                vec![
                    rawdoc! { "$addFields": add },
                    rawdoc! { "$sort": sort },
                    rawdoc! { "$project": unset },
                ]
            }
            "$facet" => {
                let mut facets = RawDocumentBuf::new();
                for (k, v) in spec.iter().flatten() {
                    match v {
                        RawBsonRef::Array(sub) => {
                            let stages = sub
                                .into_iter()
                                .flatten()
                                .filter_map(|s| s.as_document())
                                .flat_map(|d| self.later_stage(d));
                            facets.append(k, pipeline(stages));
                        }
                        other => facets.append(k, other.to_raw_bson()),
                    }
                }
                vec![rawdoc! { "$facet": facets }]
            }
            "$lookup" | "$unionWith" => {
                let mut out = RawDocumentBuf::new();
                for (k, v) in spec.iter().flatten() {
                    if k == "pipeline" {
                        out.append(k, v.to_raw_bson());
                    } else {
                        out.append(k, self.substitute_value(v));
                    }
                }
                let mut stage = RawDocumentBuf::new();
                stage.append(name, out);
                vec![stage]
            }
            _ => vec![self.substitute_score(stage)],
        }
    }

    /// A projection (`$project`'s, or a `find`'s when `find`) as stages
    /// mongod accepts. Its top-level `{$meta: "vectorSearchScore"}` fields
    /// do not decide whether it includes or excludes; the other fields do
    /// (`is_exclusion`, after mongod's `computeProjectionType` in
    /// `src/mongo/db/query/projection_parser.cpp`). An exclusion projection
    /// becomes `$addFields` of the scores (computed first, while `_id` is
    /// there to look them up by) then `$project` of the exclusions; an
    /// inclusion projection stays one `$project`, the scores computed
    /// fields in it.
    pub fn projection_stages(&self, projection: &RawDocument, find: bool) -> Vec<RawDocumentBuf> {
        let mut rest = RawDocumentBuf::new();
        let mut scores = RawDocumentBuf::new();
        for (k, v) in projection.iter().flatten() {
            if let Some(meta) = v.as_document().and_then(|d| self.meta_of(d)) {
                scores.append(k, self.meta_expression(meta));
            } else {
                rest.append(k, v.to_raw_bson());
            }
        }
        if scores.is_empty() || !is_exclusion(&rest, find) {
            return vec![rawdoc! { "$project": self.substitute_score(projection) }];
        }
        let mut out = vec![rawdoc! { "$addFields": scores }];
        if !rest.is_empty() {
            out.push(rawdoc! { "$project": self.substitute_score(&rest) });
        }
        out
    }
}

fn is_score_value(value: RawBsonRef<'_>) -> bool {
    matches!(value, RawBsonRef::Document(d) if meta_reference(d) == Some(Meta::Score))
}

/// Whether a projection that had `$meta` fields, given without them,
/// excludes (mongod's rule): a field other than `_id` included or computed
/// makes it an inclusion, one excluded an exclusion. Otherwise, in
/// `aggregate` it is an inclusion; in `find`, `_id: 1` makes it an
/// inclusion, and `_id: 0` or nothing an exclusion (all fields, plus the
/// metadata).
fn is_exclusion(projection: &RawDocument, find: bool) -> bool {
    /// `Some(true)` exclusion, `Some(false)` inclusion, `None` undecided.
    fn kind(value: RawBsonRef<'_>) -> Option<bool> {
        match value {
            RawBsonRef::Boolean(b) => Some(!b),
            RawBsonRef::Int32(n) => Some(n == 0),
            RawBsonRef::Int64(n) => Some(n == 0),
            RawBsonRef::Double(x) => Some(x == 0.0),
            RawBsonRef::Decimal128(d) => Some(d.to_string().parse::<f64>().is_ok_and(|x| x == 0.0)),
            RawBsonRef::Document(d) => match d.iter().next() {
                Some(Ok((k, _))) if k.starts_with('$') => Some(false),
                _ => d.iter().flatten().find_map(|(_, v)| kind(v)),
            },
            _ => Some(false),
        }
    }
    let mut id = None;
    for (k, v) in projection.iter().flatten() {
        if k == "_id" {
            id = kind(v);
        } else if let Some(decided) = kind(v) {
            return decided;
        }
    }
    find && id.unwrap_or(true)
}

/// Fields of an `aggregate` that a `find` takes with the same meaning,
/// copied into the fetch-only `find`; any other field (`writeConcern`,
/// `bypassDocumentValidation`, ...) keeps the ranked `aggregate` form.
const AGGREGATE_AS_FIND: &[&str] = &[
    "$db",
    "lsid",
    "$clusterTime",
    "$readPreference",
    "readConcern",
    "maxTimeMS",
    "comment",
    "let",
    "collation",
    "hint",
    "allowDiskUse",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
];

/// The fetch-only form of a vector `aggregate` or `find` (see the module
/// doc): `{find: <collection>, filter: {_id: {$in: ids}, ...exact},
/// projection?, batchSize: ids + 1}`, whose one batch holds every match
/// and closes the cursor (a `find` reply's cursor has an `aggregate`
/// reply's shape, `{firstBatch, id, ns}`). `None` when later stages, a
/// sort, skip, limit, a projection touching `_id` or scores, a small batch
/// size, a transaction or an `aggregate` field a `find` does not take need
/// the ranked form.
pub fn fetch_only(
    body: &RawDocument,
    ranked: &Ranked,
    exact: Option<&RawDocument>,
) -> Option<RawDocumentBuf> {
    let fits = |batch: Option<RawBsonRef<'_>>| {
        batch.is_none()
            || crate::wire::integer(batch).is_some_and(|n| n <= 0 || n as usize >= ranked.ids.len())
    };
    if body.get("txnNumber").ok().flatten().is_some() {
        // In a transaction a cursor left open could not simply be killed.
        return None;
    }
    let mut projection = ranked.stored_source.clone();
    let (collection, copied): (&str, &dyn Fn(&str) -> bool) =
        if let Ok(pipeline) = body.get_array("pipeline") {
            let cursor_batch = body.get_document("cursor").ok()?.get("batchSize").ok()?;
            let mut given = pipeline.into_iter();
            let first = given.next()?.ok()?.as_document()?;
            // Only the vector stage itself, alone (not a `$unionWith` holding
            // one), or followed by `$limit`s that keep every ranked document.
            let keeps_all = |stage: Result<RawBsonRef<'_>, _>| {
                let limit = stage
                    .ok()
                    .and_then(|s| s.as_document()?.get("$limit").ok()?);
                crate::wire::integer(limit).is_some_and(|n| n > 0 && n as usize >= ranked.ids.len())
            };
            let find_takes_all = body.iter().flatten().all(|(k, _)| {
                matches!(k, "aggregate" | "pipeline" | "cursor") || AGGREGATE_AS_FIND.contains(&k)
            });
            if !given.all(keeps_all)
                || !crate::command::vector_query::is_vector_stage(first)
                || !fits(cursor_batch)
                || !find_takes_all
            {
                return None;
            }
            (body.get_str("aggregate").ok()?, &|k| {
                AGGREGATE_AS_FIND.contains(&k)
            })
        } else {
            let present = |key| body.get(key).ok().flatten();
            let empty_sort = body.get_document("sort").map_or(true, |s| s.is_empty());
            let no_skip = crate::wire::integer(present("skip")).unwrap_or(0) <= 0;
            let all_wanted = crate::wire::integer(present("limit"))
                .is_none_or(|n| n == 0 || n.unsigned_abs() as usize >= ranked.ids.len());
            if present("sort").is_some() && !empty_sort
                || !no_skip
                || !all_wanted
                || !fits(present("batchSize"))
            {
                return None;
            }
            if let Some(given) = present("projection") {
                let given = given.as_document()?;
                let plain = given.get("_id").ok().flatten().is_none()
                    && ranked.substitute_score(given).as_bytes() == given.as_bytes();
                if !plain || projection.is_some() {
                    return None;
                }
                projection = Some(given.to_owned());
            }
            (body.get_str("find").ok()?, &|k| !FIND_ONLY.contains(&k))
        };
    let mut out = rawdoc! { "find": collection, "filter": ranked.filter(exact) };
    if let Some(projection) = projection {
        out.append("projection", projection);
    }
    // One more than can match, so the upstream reaches the end of the
    // results within the batch and closes the cursor.
    out.append(
        "batchSize",
        i32::try_from(ranked.ids.len() + 1).unwrap_or(i32::MAX),
    );
    for (k, v) in body.iter().flatten() {
        if copied(k) {
            out.append(k, v.to_raw_bson());
        }
    }
    Some(out)
}

/// Puts the first batch of a fetch-only reply in rank order, keeping every
/// other field in its place; `None` when the reply is not a complete,
/// successful cursor (an error is passed on as it is; a cursor left open
/// needs the ranked form). Each document is copied once, straight into
/// the new reply.
pub fn put_in_order(reply: &RawDocument, ranked: &Ranked) -> Option<RawDocumentBuf> {
    let cursor = reply.get_document("cursor").ok()?;
    let open = match cursor.get("id").ok()?? {
        RawBsonRef::Int64(id) => id != 0,
        RawBsonRef::Int32(id) => id != 0,
        _ => true,
    };
    if open {
        return None;
    }
    let key = |id: RawBsonRef<'_>| {
        let mut one = RawDocumentBuf::new();
        one.append_ref("", id);
        one.into_bytes()
    };
    let rank: std::collections::HashMap<Vec<u8>, usize> = ranked
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (key(id.as_raw_bson_ref()), i))
        .collect();
    let mut docs: Vec<(usize, &RawDocument)> = Vec::new();
    for doc in cursor.get_array("firstBatch").ok()? {
        let doc = doc.ok()?.as_document()?;
        let at = doc
            .get("_id")
            .ok()
            .flatten()
            .and_then(|id| rank.get(&key(id)).copied())
            .unwrap_or(usize::MAX);
        docs.push((at, doc));
    }
    docs.sort_by_key(|(at, _)| *at);
    let mut out = Document::with_capacity(reply.as_bytes().len());
    let mut cursor_written = false;
    for (k, v) in reply.iter().flatten() {
        if k != "cursor" {
            out.element(k, v);
            continue;
        }
        if std::mem::replace(&mut cursor_written, true) {
            // A repeated key (as `with_field` writes one).
            continue;
        }
        let at = out.open(0x03, k);
        for (k, v) in cursor.iter().flatten() {
            if k != "firstBatch" {
                out.element(k, v);
                continue;
            }
            let batch = out.open(0x04, k);
            for (i, (_, doc)) in docs.iter().enumerate() {
                use std::io::Write;
                out.bytes.push(0x03);
                // An array's keys are its indexes in decimal.
                let _ = write!(out.bytes, "{i}");
                out.bytes.push(0);
                out.bytes.extend_from_slice(doc.as_bytes());
            }
            out.close(batch);
        }
        out.close(at);
    }
    out.finish()
}

/// A BSON document written by hand, for replies whose large parts are
/// copied whole (`put_in_order`): a length, elements, a 0 byte (the BSON
/// specification, bsonspec.org).
struct Document {
    bytes: Vec<u8>,
}

impl Document {
    fn with_capacity(capacity: usize) -> Document {
        let mut bytes = Vec::with_capacity(capacity + 16);
        bytes.extend_from_slice(&[0; 4]);
        Document { bytes }
    }

    /// Appends the element `key: value` (re-encoded by the bson crate).
    fn element(&mut self, key: &str, value: RawBsonRef<'_>) {
        let mut one = RawDocumentBuf::new();
        one.append_ref(key, value);
        let one = one.as_bytes();
        self.bytes.extend_from_slice(&one[4..one.len() - 1]);
    }

    /// Starts an embedded document (`kind` 0x03) or array (0x04) at
    /// `key`; returns where its length goes, for [`Document::close`].
    fn open(&mut self, kind: u8, key: &str) -> usize {
        self.bytes.push(kind);
        self.bytes.extend_from_slice(key.as_bytes());
        self.bytes.push(0);
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        at
    }

    /// Ends the embedded document opened at `at`.
    fn close(&mut self, at: usize) {
        self.bytes.push(0);
        let length = i32::try_from(self.bytes.len() - at).unwrap_or(i32::MAX);
        self.bytes[at..at + 4].copy_from_slice(&length.to_le_bytes());
    }

    /// The whole document; `None` past BSON's largest length.
    fn finish(mut self) -> Option<RawDocumentBuf> {
        self.bytes.push(0);
        let length = i32::try_from(self.bytes.len()).ok()?;
        self.bytes[0..4].copy_from_slice(&length.to_le_bytes());
        RawDocumentBuf::from_bytes(self.bytes).ok()
    }
}

/// A `count` with `$like`: counts the ranked documents that match.
pub fn count(body: &RawDocument, ranked: &Ranked, exact: Option<&RawDocument>) -> RawDocumentBuf {
    with_field(body, "query", RawBson::Document(ranked.filter(exact)))
}

/// Internal field holding a fusion input's `$score`; removed by the
/// projection that ends the input's pipeline.
const INPUT_SCORE: &str = "__likewise_input_score";

/// One input pipeline of `$rankFusion` / `$scoreFusion` as an `aggregate`
/// for the upstream: `opening` (the ranked stages of the input's owned
/// first stage, when it has one) then the input's other stages (scores
/// substituted when `opening` answered the first; a `$score` stage becomes
/// its score in an internal field), at most `cap` documents, each
/// projected to `{_id, s?, k?}`: `s` the input's own score where
/// `input.score` gives its expression, `k` the values of the keys of its
/// last `$sort` (documents equal on them share a rank).
pub fn fusion_input<Q>(
    collection: &str,
    db: &str,
    input: &crate::command::fusion::FusionInput<Q>,
    opening: Option<(&Ranked, Vec<RawDocumentBuf>)>,
    cap: usize,
    session: &mut InSession,
) -> RawDocumentBuf {
    let later = if opening.is_some() {
        &input.stages[1..]
    } else {
        &input.stages[..]
    };
    let (score, sort) = (input.score.as_ref(), input.sort.as_deref());
    let (ranked, mut stages) = match opening {
        Some((ranked, stages)) => (Some(ranked), stages),
        None => (None, Vec::new()),
    };
    for stage in later {
        match (ranked, stage.get("$score")) {
            (_, Ok(Some(_))) => {
                if let Some(expression) = score {
                    let mut add = RawDocumentBuf::new();
                    add.append(INPUT_SCORE, expression.clone());
                    stages.push(rawdoc! { "$addFields": add });
                }
            }
            (Some(r), _) => stages.extend(r.later_stage(stage)),
            (None, _) => stages.push(stage.clone()),
        }
    }
    stages.push(rawdoc! { "$limit": i64::try_from(cap).unwrap_or(i64::MAX) });
    let mut project = rawdoc! { "_id": 1 };
    let has_score_stage = later
        .iter()
        .any(|s| s.get("$score").ok().flatten().is_some());
    match (score, has_score_stage) {
        (Some(_), true) => project.append("s", format!("${INPUT_SCORE}")),
        (Some(expression), false) => project.append("s", expression.clone()),
        (None, _) => {}
    }
    if let Some(sort) = sort {
        let mut keys = RawArrayBuf::new();
        for (field, direction) in sort.iter().flatten() {
            match direction {
                RawBsonRef::Document(meta) => keys.push(match ranked {
                    Some(r) => r.substitute_value(direction),
                    None => RawBson::Document(meta.to_owned()),
                }),
                _ => keys.push(format!("${field}")),
            }
        }
        project.append("k", keys);
    }
    stages.push(rawdoc! { "$project": project });
    let mut command = rawdoc! {
        "aggregate": collection,
        "pipeline": pipeline(stages),
        "cursor": { "batchSize": i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX) },
        "$db": db,
    };
    session.apply(&mut command);
    command
}

/// `$scoreFusion`'s custom `expression` evaluated by the upstream for the
/// fused documents `ids`: `{_id, s}` per document, `s` the expression with
/// `$$<input name>` bound to that input's weighted, normalised score
/// (`per_input`, one value per id, 0 where absent).
pub fn fusion_expression(
    collection: &str,
    db: &str,
    ids: &[RawBson],
    per_input: &[(&str, Vec<f64>)],
    expression: &RawBson,
    session: &mut InSession,
) -> RawDocumentBuf {
    let ranked = Ranked {
        ids: ids.to_vec(),
        ..Ranked::default()
    };
    let mut vars = RawDocumentBuf::new();
    for (name, values) in per_input {
        let mut array = RawArrayBuf::new();
        for v in values {
            array.push(*v);
        }
        vars.append(*name, ranked.lookup(array));
    }
    let mut command = rawdoc! {
        "aggregate": collection,
        "pipeline": [
            { "$match": { "_id": { "$in": ranked.id_array() } } },
            { "$project": { "_id": 1, "s": { "$let": { "vars": vars, "in": expression.clone() } } } },
        ],
        "cursor": { "batchSize": i64::try_from(ids.len().saturating_add(1)).unwrap_or(i64::MAX) },
        "$db": db,
    };
    session.apply(&mut command);
    command
}

/// An `aggregate` whose first stage the proxy answered with `documents`
/// (`$searchMeta`'s one document): the same command run database-wide
/// over `{$documents: documents}` (MongoDB 5.1+), then the pipeline's later
/// stages; every other field (cursor, session, `let`, ...) as it was.
pub fn over_documents(body: &RawDocument, documents: Vec<RawDocumentBuf>) -> RawDocumentBuf {
    let mut given = RawArrayBuf::new();
    for d in documents {
        given.push(d);
    }
    let mut stages = vec![rawdoc! { "$documents": given }];
    if let Ok(pipeline) = body.get_array("pipeline") {
        stages.extend(
            pipeline
                .into_iter()
                .skip(1)
                .flatten()
                .filter_map(|s| s.as_document().map(|d| d.to_owned())),
        );
    }
    let with_pipeline = with_field(body, "pipeline", pipeline(stages));
    with_field(&with_pipeline, "aggregate", RawBson::Int32(1))
}

/// The documents with these `_id`s (only `paths` of them, when given), as
/// a `find` to run upstream in the client's session.
pub fn documents_by_id(
    collection: &str,
    db: &str,
    ids: &[RawBson],
    paths: Option<&[String]>,
    session: &mut InSession,
) -> RawDocumentBuf {
    let ranked = Ranked {
        ids: ids.to_vec(),
        ..Ranked::default()
    };
    let mut find = rawdoc! {
        "find": collection,
        "filter": ranked.filter(None),
        "batchSize": i64::try_from(ids.len().saturating_add(1)).unwrap_or(i64::MAX),
        "$db": db,
    };
    if let Some(paths) = paths {
        // Only these paths; one under another would collide in mongod's
        // projection, so the outer one stands for both.
        let mut sorted: Vec<&String> = paths.iter().collect();
        sorted.sort();
        let mut projection = RawDocumentBuf::new();
        let mut kept: Vec<&String> = Vec::new();
        for path in sorted {
            let covered = kept
                .iter()
                .any(|k| path == *k || path.starts_with(&format!("{k}.")));
            if !covered {
                projection.append(path.as_str(), 1);
                kept.push(path);
            }
        }
        find.append("projection", projection);
    }
    session.apply(&mut find);
    find
}

/// The `_id`s of documents matching `filter`, as a `find` to run upstream.
pub fn matching_ids(
    collection: &str,
    db: &str,
    filter: &RawDocument,
    session: &mut InSession,
) -> RawDocumentBuf {
    let mut find = rawdoc! {
        "find": collection,
        "filter": filter.to_owned(),
        "projection": { "_id": 1 },
        "batchSize": 100_000,
        "$db": db,
    };
    session.apply(&mut find);
    find
}

/// What puts a read the proxy makes for a client inside the client's own
/// logical session, transaction and causal order, as the drivers'
/// sessions and transactions specifications place a client's own
/// statements: every statement carries `lsid` (and the client's
/// `$clusterTime`); in a transaction (`autocommit: false`) also
/// `txnNumber` and `autocommit`, and the transaction's first statement
/// `startTransaction` with the transaction's `readConcern`; outside one, a
/// causally consistent read's `readConcern` (`afterClusterTime`).
pub struct InSession {
    every: RawDocumentBuf,
    /// `startTransaction` and `readConcern`, for the first read only.
    first: Option<RawDocumentBuf>,
    started: bool,
}

impl InSession {
    /// No session: a read of the proxy's own.
    pub fn none() -> InSession {
        InSession {
            every: RawDocumentBuf::new(),
            first: None,
            started: false,
        }
    }

    /// The session of the client's command `body`.
    pub fn of(body: &RawDocument) -> InSession {
        let field = |key: &str| body.get(key).ok().flatten().map(|v| v.to_raw_bson());
        let in_transaction = matches!(body.get("autocommit"), Ok(Some(RawBsonRef::Boolean(false))));
        let mut every = RawDocumentBuf::new();
        for key in ["lsid", "$clusterTime"] {
            if let Some(value) = field(key) {
                every.append(key, value);
            }
        }
        let mut first = None;
        if in_transaction {
            for key in ["txnNumber", "autocommit"] {
                if let Some(value) = field(key) {
                    every.append(key, value);
                }
            }
            if let Some(start) = field("startTransaction") {
                let mut fields = rawdoc! {};
                fields.append("startTransaction", start);
                if let Some(concern) = field("readConcern") {
                    fields.append("readConcern", concern);
                }
                first = Some(fields);
            }
        } else if let Some(concern) = field("readConcern") {
            every.append("readConcern", concern);
        }
        InSession {
            every,
            first,
            started: false,
        }
    }

    /// Adds the session's fields to one read.
    pub fn apply(&mut self, command: &mut RawDocumentBuf) {
        for (key, value) in self.every.iter().flatten() {
            command.append(key, value.to_raw_bson());
        }
        if let Some(first) = self.first.take() {
            for (key, value) in first.iter().flatten() {
                command.append(key, value.to_raw_bson());
            }
            self.started = true;
        }
    }

    /// Whether a read began the client's transaction: the client's own
    /// command then goes without `startTransaction` and `readConcern`
    /// ([`InSession::continuing`]).
    pub fn started_transaction(&self) -> bool {
        self.started
    }

    /// The client's command as a later statement of the transaction a
    /// read of the proxy's began.
    pub fn continuing(&self, command: &RawDocument) -> RawDocumentBuf {
        let mut out = RawDocumentBuf::new();
        for (key, value) in command.iter().flatten() {
            if !(self.started && matches!(key, "startTransaction" | "readConcern")) {
                out.append(key, value.to_raw_bson());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_bytes_is_the_built_lookups_size() {
        for n in [0usize, 1, 9, 10, 11, 99, 100, 101, 1_000, 10_001] {
            let ranked: Ranked = (0..n)
                .map(|i| {
                    let id = match i % 3 {
                        0 => RawBson::Int32(i as i32),
                        1 => RawBson::String("x".repeat(i % 17)),
                        _ => RawBson::Document(rawdoc! { "a": i as i64, "b": [1, "two"] }),
                    };
                    (id, i as f64 / 3.0)
                })
                .collect();
            assert_eq!(
                ranked.score_bytes(),
                ranked.score_expression().as_bytes().len(),
                "{n} ids"
            );
        }
    }

    #[test]
    fn reads_for_a_client_join_its_session_and_transaction() {
        let keys = |doc: &RawDocument| -> Vec<String> {
            doc.iter().flatten().map(|(k, _)| k.to_string()).collect()
        };
        let first = rawdoc! {
            "find": "c", "lsid": { "id": 1 }, "txnNumber": 4_i64, "autocommit": false,
            "startTransaction": true, "readConcern": { "level": "snapshot" }, "$db": "d",
        };
        let mut session = InSession::of(&first);
        let one = matching_ids("c", "d", &rawdoc! {}, &mut session);
        assert_eq!(
            keys(&one)[5..],
            [
                "lsid",
                "txnNumber",
                "autocommit",
                "startTransaction",
                "readConcern"
            ]
        );
        let two = matching_ids("c", "d", &rawdoc! {}, &mut session);
        assert_eq!(keys(&two)[5..], ["lsid", "txnNumber", "autocommit"]);
        assert!(session.started_transaction());
        assert_eq!(
            keys(&session.continuing(&first)),
            ["find", "lsid", "txnNumber", "autocommit", "$db"]
        );

        let causal = rawdoc! {
            "find": "c", "lsid": { "id": 1 }, "readConcern": { "afterClusterTime": bson::Timestamp { time: 1, increment: 1 } },
        };
        let mut session = InSession::of(&causal);
        for _ in 0..2 {
            let read = matching_ids("c", "d", &rawdoc! {}, &mut session);
            assert_eq!(keys(&read)[5..], ["lsid", "readConcern"]);
        }
        assert!(!session.started_transaction());
        assert_eq!(session.continuing(&causal), causal);
    }

    fn ranked() -> Ranked {
        Ranked {
            ids: vec![RawBson::Int32(3), RawBson::String("x".into())],
            scores: vec![0.9, 0.8],
            ..Ranked::default()
        }
    }

    #[test]
    fn vector_search_stage_is_replaced_and_scores_substituted() {
        let body = rawdoc! {
            "aggregate": "c",
            "pipeline": [
                { "$vectorSearch": { "index": "i" } },
                { "$project": { "title": 1, "score": { "$meta": "vectorSearchScore" } } },
            ],
            "cursor": {},
            "$db": "d",
        };
        let exact = rawdoc! { "year": 1 };
        let out = aggregate(&body, &[(&ranked(), Some(&exact))]);
        let stages = stages_of(&out);
        assert_eq!(stages.len(), 5);
        assert_eq!(
            stages[0],
            rawdoc! { "$match": { "_id": { "$in": [3, "x"] }, "year": 1 } }
        );
        let project = stages[4].get_document("$project").unwrap();
        assert!(project
            .get_document("score")
            .unwrap()
            .get_document("$let")
            .is_ok());
        assert_eq!(out.get_str("$db").unwrap(), "d");
        assert!(out.get_document("cursor").is_ok());
    }

    #[test]
    fn vector_stages_in_union_sub_pipelines_are_replaced_with_their_own_ranking() {
        let outer = ranked();
        let inner = Ranked {
            ids: vec![RawBson::Int32(9)],
            scores: vec![0.5],
            ..Ranked::default()
        };
        let meta = rawdoc! { "$meta": "vectorSearchScore" };
        let body = rawdoc! {
            "aggregate": "c",
            "pipeline": [
                { "$match": { "kind": "pinned" } },
                { "$unionWith": { "coll": "items", "pipeline": [
                    { "$vectorSearch": { "index": "i" } },
                    { "$set": { "s": meta.clone() } },
                ] } },
                { "$unionWith": { "coll": "other", "pipeline": [{ "$match": { "a": 1 } }] } },
            ],
            "cursor": {},
            "$db": "d",
        };
        // The top level has no vector stage: only the union's ranking is used.
        let out = aggregate(&body, &[(&inner, None)]);
        let stages = stages_of(&out);
        assert_eq!(names(&stages), ["$match", "$unionWith", "$unionWith"]);
        assert_eq!(stages[0], rawdoc! { "$match": { "kind": "pinned" } });
        let union = stages[1].get_document("$unionWith").unwrap();
        assert_eq!(union.get_str("coll"), Ok("items"));
        let sub = stages_of(union);
        assert_eq!(
            names(&sub),
            ["$match", "$addFields", "$sort", "$project", "$set"]
        );
        assert_eq!(sub[0], rawdoc! { "$match": { "_id": { "$in": [9] } } });
        assert!(sub[4]
            .get_document("$set")
            .unwrap()
            .get_document("s")
            .unwrap()
            .get_document("$let")
            .is_ok());
        assert_eq!(
            stages[2],
            body.get_array("pipeline")
                .unwrap()
                .into_iter()
                .nth(2)
                .unwrap()
                .unwrap()
                .as_document()
                .unwrap()
                .to_owned()
        );
        // A top-level vector stage and a union's: each gets its own ranking.
        let body = rawdoc! {
            "aggregate": "c",
            "pipeline": [
                { "$vectorSearch": { "index": "i" } },
                { "$unionWith": { "coll": "c", "pipeline": [{ "$vectorSearch": { "index": "j" } }] } },
            ],
            "$db": "d",
        };
        let out = aggregate(&body, &[(&outer, None), (&inner, None)]);
        let stages = stages_of(&out);
        assert_eq!(
            stages[0],
            rawdoc! { "$match": { "_id": { "$in": [3, "x"] } } }
        );
        let sub = stages_of(stages[4].get_document("$unionWith").unwrap());
        assert_eq!(sub[0], rawdoc! { "$match": { "_id": { "$in": [9] } } });
    }

    #[test]
    fn find_becomes_an_equivalent_aggregate() {
        let body = rawdoc! {
            "find": "c",
            "filter": { "$like": {} },
            "projection": { "title": 1, "score": { "$meta": "vectorSearchScore" } },
            "skip": 1,
            "limit": 5,
            "batchSize": 2,
            "lsid": { "id": 1 },
            "$db": "d",
        };
        let out = find_as_aggregate(&body, &ranked(), None);
        assert_eq!(out.get_str("aggregate").unwrap(), "c");
        assert_eq!(
            out.get_document("cursor")
                .unwrap()
                .get_i32("batchSize")
                .unwrap(),
            2
        );
        assert!(out.get_document("lsid").is_ok());
        assert!(out.get("filter").unwrap().is_none());
        let stages = stages_of(&out);
        assert_eq!(
            names(&stages),
            [
                "$match",
                "$addFields",
                "$sort",
                "$project",
                "$skip",
                "$limit",
                "$project"
            ]
        );
    }

    /// The `pipeline` of a command (or a `$unionWith` spec), stage by stage.
    fn stages_of(doc: &RawDocument) -> Vec<RawDocumentBuf> {
        doc.get_array("pipeline")
            .unwrap()
            .into_iter()
            .map(|s| s.unwrap().as_document().unwrap().to_owned())
            .collect()
    }

    fn names(stages: &[RawDocumentBuf]) -> Vec<String> {
        stages
            .iter()
            .map(|s| s.iter().next().unwrap().unwrap().0.to_string())
            .collect()
    }

    #[test]
    fn a_score_in_an_exclusion_projection_is_computed_before_the_exclusion() {
        let meta = rawdoc! { "$meta": "vectorSearchScore" };
        let r = ranked();
        let exclusion = |p: &RawDocumentBuf, find: bool| {
            let stages = r.projection_stages(p, find);
            if names(&stages)[0] != "$addFields" {
                return false;
            }
            assert!(stages[0]
                .get_document("$addFields")
                .unwrap()
                .get_document("score")
                .is_ok());
            if stages.len() == 2 {
                let project = stages[1].get_document("$project").unwrap();
                assert!(project.get("score").unwrap().is_none());
            }
            true
        };
        // Decided by another field, in find and aggregate alike.
        for find in [false, true] {
            for p in [
                rawdoc! { "embedding": 0, "score": meta.clone() },
                rawdoc! { "score": meta.clone(), "a": { "b": false } },
                rawdoc! { "_id": 1, "score": meta.clone(), "v": 0 },
            ] {
                assert!(exclusion(&p, find), "{p:?}");
            }
            for p in [
                rawdoc! { "_id": 0, "title": 1, "score": meta.clone() },
                rawdoc! { "t": "$title", "score": meta.clone() },
            ] {
                assert!(!exclusion(&p, find), "{p:?}");
                let stages = r.projection_stages(&p, find);
                assert_eq!(names(&stages), ["$project"]);
                assert!(stages[0]
                    .get_document("$project")
                    .unwrap()
                    .get_document("score")
                    .unwrap()
                    .get_document("$let")
                    .is_ok());
            }
        }
        // Decided by `_id` or nothing: find and aggregate differ.
        let only = rawdoc! { "score": meta.clone() };
        let no_id = rawdoc! { "_id": 0, "score": meta.clone() };
        let id = rawdoc! { "_id": 1, "score": meta.clone() };
        assert!(exclusion(&only, true) && exclusion(&no_id, true) && !exclusion(&id, true));
        assert!(!exclusion(&only, false) && !exclusion(&no_id, false) && !exclusion(&id, false));
        assert_eq!(names(&r.projection_stages(&only, true)), ["$addFields"]);
    }

    #[test]
    fn later_stages_sort_by_the_score_and_reach_into_facets_but_not_lookups() {
        let meta = rawdoc! { "$meta": "vectorSearchScore" };
        let r = ranked();
        let sort = r.later_stage(&rawdoc! { "$sort": { "s": meta.clone(), "a": 1 } });
        assert_eq!(names(&sort), ["$addFields", "$sort", "$project"]);
        assert_eq!(
            sort[1].get_document("$sort").unwrap().to_owned(),
            rawdoc! { "__likewise_score": -1, "a": 1 }
        );
        let facet = r.later_stage(&rawdoc! {
            "$facet": { "top": [{ "$project": { "v": 0, "s": meta.clone() } }] }
        });
        let top = facet[0]
            .get_document("$facet")
            .unwrap()
            .get_array("top")
            .unwrap();
        assert_eq!(top.into_iter().count(), 2);
        let lookup = rawdoc! { "$lookup": {
            "from": "o", "let": { "s": meta.clone() },
            "pipeline": [{ "$project": { "s": meta.clone() } }], "as": "x",
        } };
        let out = r.later_stage(&lookup).remove(0);
        let spec = out.get_document("$lookup").unwrap();
        assert!(spec
            .get_document("let")
            .unwrap()
            .get_document("s")
            .unwrap()
            .get_document("$let")
            .is_ok());
        assert_eq!(
            spec.get_array("pipeline").unwrap().to_raw_array_buf(),
            lookup
                .get_document("$lookup")
                .unwrap()
                .get_array("pipeline")
                .unwrap()
                .to_raw_array_buf()
        );
    }

    #[test]
    fn fetch_only_when_nothing_later_needs_order_or_scores() {
        let agg = |later: Option<RawDocumentBuf>, cursor: RawDocumentBuf| {
            let mut pipeline = RawArrayBuf::new();
            pipeline.push(rawdoc! { "$vectorSearch": { "index": "i" } });
            if let Some(stage) = later {
                pipeline.push(stage);
            }
            rawdoc! { "aggregate": "c", "pipeline": pipeline, "cursor": cursor, "$db": "d" }
        };
        let plain =
            fetch_only(&agg(None, rawdoc! {}), &ranked(), Some(&rawdoc! { "y": 1 })).unwrap();
        assert_eq!(plain.get_str("find"), Ok("c"));
        assert_eq!(
            plain.get_document("filter").unwrap().to_owned(),
            ranked().filter(Some(&rawdoc! { "y": 1 }))
        );
        assert_eq!(plain.get_i32("batchSize"), Ok(3));
        assert_eq!(plain.get_str("$db"), Ok("d"));
        assert!(
            plain.get("projection").unwrap().is_none() && plain.get("cursor").unwrap().is_none()
        );
        // `returnStoredSource`'s projection becomes the find's.
        let stored = Ranked {
            stored_source: Some(rawdoc! { "_id": 1, "t": 1 }),
            ..ranked()
        };
        let f = fetch_only(&agg(None, rawdoc! {}), &stored, None).unwrap();
        assert_eq!(
            f.get_document("projection").unwrap().to_owned(),
            rawdoc! { "_id": 1, "t": 1 }
        );
        // The aggregate's options a find takes are kept; one it refuses
        // keeps the ranked aggregate.
        let mut with_options = agg(None, rawdoc! {});
        with_options.append("maxTimeMS", 5);
        with_options.append("collation", rawdoc! { "locale": "fr" });
        let f = fetch_only(&with_options, &ranked(), None).unwrap();
        assert_eq!(f.get_i32("maxTimeMS"), Ok(5));
        assert!(f.get_document("collation").is_ok());
        let mut refused = agg(None, rawdoc! {});
        refused.append("bypassDocumentValidation", true);
        assert!(fetch_only(&refused, &ranked(), None).is_none());
        let later = Some(rawdoc! { "$project": { "s": { "$meta": "vectorSearchScore" } } });
        assert!(fetch_only(&agg(later, rawdoc! {}), &ranked(), None).is_none());
        assert!(fetch_only(&agg(None, rawdoc! { "batchSize": 1 }), &ranked(), None).is_none());
        assert!(fetch_only(&agg(None, rawdoc! { "batchSize": 5 }), &ranked(), None).is_some());
        let union = rawdoc! {
            "aggregate": "c",
            "pipeline": [{ "$unionWith": { "coll": "b", "pipeline": [{ "$vectorSearch": {} }] } }],
            "cursor": {},
            "$db": "d",
        };
        assert!(fetch_only(&union, &ranked(), None).is_none());

        let find = |extra: RawDocumentBuf| {
            let mut body = rawdoc! { "find": "c", "filter": { "$like": {} } };
            for (k, v) in extra.iter().flatten() {
                body.append(k, v.to_raw_bson());
            }
            body.append("$db", "d");
            body
        };
        let f = fetch_only(
            &find(rawdoc! { "projection": { "t": 1 }, "hint": { "_id": 1 }, "showRecordId": true }),
            &ranked(),
            None,
        )
        .unwrap();
        assert_eq!(f.get_str("find"), Ok("c"));
        assert_eq!(
            f.get_document("filter").unwrap().to_owned(),
            ranked().filter(None)
        );
        assert_eq!(
            f.get_document("projection").unwrap().to_owned(),
            rawdoc! { "t": 1 }
        );
        assert!(f.get_document("hint").is_ok() && f.get("showRecordId").unwrap().is_none());
        for refused in [
            rawdoc! { "sort": { "t": 1 } },
            rawdoc! { "skip": 1 },
            rawdoc! { "limit": 1 },
            rawdoc! { "limit": -1 },
            rawdoc! { "batchSize": 1 },
            rawdoc! { "projection": { "_id": 0 } },
            rawdoc! { "projection": { "s": { "$meta": "vectorSearchScore" } } },
            rawdoc! { "txnNumber": 1_i64 },
        ] {
            assert!(
                fetch_only(&find(refused.clone()), &ranked(), None).is_none(),
                "{refused:?}"
            );
        }
        assert!(fetch_only(&find(rawdoc! { "limit": 2, "sort": {} }), &ranked(), None).is_some());
    }

    #[test]
    fn a_fetched_batch_is_put_in_rank_order_and_open_cursors_are_refused() {
        let reply = rawdoc! {
            "cursor": {
                "firstBatch": [{ "_id": "x", "a": 1 }, { "_id": 3, "a": 2 }],
                "id": 0_i64,
                "ns": "d.c",
            },
            "ok": 1.0,
            "$clusterTime": { "t": 1 },
        };
        let ordered = put_in_order(&reply, &ranked()).unwrap();
        let batch: Vec<_> = ordered
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .into_iter()
            .map(|d| {
                d.unwrap()
                    .as_document()
                    .unwrap()
                    .get("_id")
                    .unwrap()
                    .unwrap()
                    .to_raw_bson()
            })
            .collect();
        assert_eq!(batch, ranked().ids);
        assert_eq!(
            ordered.get_document("cursor").unwrap().get_str("ns"),
            Ok("d.c")
        );
        assert!(ordered.get_document("$clusterTime").is_ok());
        // Every other field kept in its place, and the whole reply valid
        // BSON to the last byte.
        let expected = rawdoc! {
            "cursor": {
                "firstBatch": [{ "_id": 3, "a": 2 }, { "_id": "x", "a": 1 }],
                "id": 0_i64,
                "ns": "d.c",
            },
            "ok": 1.0,
            "$clusterTime": { "t": 1 },
        };
        assert_eq!(ordered.as_bytes(), expected.as_bytes());
        // The cursor after other fields, an empty batch, and a batch of
        // more than ten (two-digit array keys), byte for byte.
        let empty = rawdoc! { "ok": 1.0, "cursor": { "firstBatch": [], "id": 0_i64, "ns": "d.c" } };
        assert_eq!(
            put_in_order(&empty, &ranked()).unwrap().as_bytes(),
            empty.as_bytes()
        );
        let many = Ranked {
            ids: (0..12).rev().map(RawBson::Int32).collect(),
            scores: vec![0.5; 12],
            ..Ranked::default()
        };
        let batch = |order: &mut dyn Iterator<Item = i32>| {
            let mut batch = RawArrayBuf::new();
            for id in order {
                batch.push(rawdoc! { "_id": id, "a": id * 2 });
            }
            batch
        };
        let reply = rawdoc! {
            "ok": 1.0,
            "cursor": { "id": 0_i64, "firstBatch": batch(&mut (0..12)), "ns": "d.c" },
            "operationTime": 7_i64,
        };
        let expected = rawdoc! {
            "ok": 1.0,
            "cursor": { "id": 0_i64, "firstBatch": batch(&mut (0..12).rev()), "ns": "d.c" },
            "operationTime": 7_i64,
        };
        assert_eq!(
            put_in_order(&reply, &many).unwrap().as_bytes(),
            expected.as_bytes()
        );
        let open = rawdoc! { "cursor": { "firstBatch": [], "id": 7_i64, "ns": "d.c" }, "ok": 1.0 };
        assert!(put_in_order(&open, &ranked()).is_none());
    }

    #[test]
    fn count_counts_the_ranked_matches() {
        let body = rawdoc! { "count": "c", "query": { "$like": {}, "a": 1 }, "$db": "d" };
        let out = count(&body, &ranked(), Some(&rawdoc! { "a": 1 }));
        assert_eq!(
            out.get_document("query").unwrap().to_owned(),
            ranked().filter(Some(&rawdoc! { "a": 1 }))
        );
        assert_eq!(out.get_str("count").unwrap(), "c");
    }

    #[test]
    fn the_fetch_filter_is_flat_unless_the_exact_filter_names_the_id() {
        assert_eq!(
            ranked().filter(Some(&rawdoc! { "a": 1, "$or": [{ "b": 2 }, { "c": 3 }] })),
            rawdoc! { "_id": { "$in": [3, "x"] }, "a": 1, "$or": [{ "b": 2 }, { "c": 3 }] }
        );
        assert_eq!(
            ranked().filter(Some(&rawdoc! { "_id": { "$gt": 1 }, "a": 1 })),
            rawdoc! { "$and": [{ "_id": { "$in": [3, "x"] } }, { "_id": { "$gt": 1 }, "a": 1 }] }
        );
        assert_eq!(
            ranked().filter(Some(&rawdoc! {})),
            rawdoc! { "_id": { "$in": [3, "x"] } }
        );
    }
}
