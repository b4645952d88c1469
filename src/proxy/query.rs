//! A vector query's plan: resolve the index, encode the query, read the
//! filter's ids on the client's connection (in its session), search, and
//! rewrite the command for the upstream (`rewrite`), so results are only
//! documents the client could read directly. The session sends what this
//! returns.

use super::for_client::*;
use crate::command::text_query::{parse_search_meta, Count, SearchMetaStage};
use crate::command::vector_query::{parse_like_filter, vector_stages, QueryVector, VectorQuery};
use crate::command::VectorKind;
use crate::cpu;
use crate::error::{Code, Error};
use crate::index::text::{Facet, TextError};
use crate::index::vector::OwnedVector;
use crate::index::{Dtype, Similarity};
use crate::maintain::fresh::IdSet;
use crate::registry::{SearchIndex, Status};
use crate::rewrite::InSession;
use crate::rewrite::{self, Ranked};
use crate::upstream::pinned::{self as upstream, Cursor};
use bson::{rawdoc, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use std::sync::Arc;

/// A vector command answered, to be rewritten for the upstream: where
/// possible a fetch-only form whose single batch the proxy orders
/// (`rewrite::put_in_order`), else (or should that batch not be the only
/// one) the ranked form, which the upstream orders itself, built only
/// then ([`Rewritten::ranked`]).
pub(super) struct Rewritten {
    kind: VectorKind,
    plans: Vec<Plan>,
    /// The command as the ranked form starts from: the client's, or the
    /// one continuing the transaction a filter read began.
    continued: Option<RawDocumentBuf>,
    /// The ranked form made already (`$searchMeta`'s).
    made: Option<RawDocumentBuf>,
    /// The plain `find` of the one plan's documents, with their ranking.
    pub fetch_only: Option<RawDocumentBuf>,
}

impl Rewritten {
    /// The ranking the fetch-only form's batch is put in.
    pub fn fetched(&self) -> &Ranked {
        &self.plans[0].ranked
    }

    /// The ranked form of `body` (the client's command).
    pub fn ranked(&self, body: &RawDocument) -> RawDocumentBuf {
        match &self.made {
            Some(made) => made.clone(),
            None => rewrite_for(
                self.kind,
                self.continued.as_deref().unwrap_or(body),
                &self.plans,
            ),
        }
    }
}

/// How one vector stage of a command is answered: the index searched (if
/// any), the strategy and its counts for `explain`, and the ranked ids the
/// rewrite fetches.
pub(super) struct Plan {
    /// `None` when a `$vectorSearch` named an index that does not exist
    /// (Atlas finds nothing then), and for a fusion stage.
    pub(super) index: Option<Arc<SearchIndex>>,
    /// The collection searched.
    pub(super) collection: String,
    pub(super) strategy: &'static str,
    /// Vectors (or matching documents, or input documents) the query
    /// examined.
    pub(super) examined: usize,
    pub(super) allowed: Option<usize>,
    pub(super) ranked: Ranked,
    pub(super) exact_filter: Option<RawDocumentBuf>,
    pub(super) encoding: Option<Encoding>,
    /// The stage was asked for `scoreDetails` (`ranked.details` holds
    /// them).
    pub(super) score_details: bool,
    /// The `$search` was asked for `highlight` (`ranked.highlights`).
    pub(super) highlighted: bool,
}

/// Most documents of one `$search` that get highlights (each is read
/// whole from the upstream).
const MAX_HIGHLIGHTED: usize = 1000;

/// Most owned vector stages one command may hold (each is a search).
const MAX_VECTOR_STAGES: usize = 64;

impl ForClient<'_> {
    /// Answers the vector part and returns the commands to send upstream.
    pub(super) async fn vector_command(
        &mut self,
        kind: VectorKind,
        body: &RawDocument,
    ) -> Result<Rewritten, Error> {
        if let Some(meta) = search_meta_stage(kind, body) {
            return Ok(Rewritten {
                kind,
                plans: Vec::new(),
                continued: None,
                made: Some(self.search_meta(body, meta?).await?),
                fetch_only: None,
            });
        }
        let mut session = InSession::of(body);
        let plans = self.plans(kind, body, &mut session).await?;
        // A filter read that began the client's transaction: the command
        // itself continues it.
        let continued = session
            .started_transaction()
            .then(|| session.continuing(body));
        let fetch_only = match (kind, &plans[..]) {
            (VectorKind::Aggregate | VectorKind::Find, [plan]) => rewrite::fetch_only(
                continued.as_deref().unwrap_or(body),
                &plan.ranked,
                plan.exact_filter.as_deref(),
            ),
            _ => None,
        };
        Ok(Rewritten {
            kind,
            plans,
            continued,
            made: None,
            fetch_only,
        })
    }

    /// An `aggregate` opening with `$searchMeta`: the counts and facets
    /// computed from the index, as the one document the rest of the
    /// pipeline runs over, upstream and on the client's connection
    /// (`{aggregate: 1, pipeline: [{$documents: [meta]}, ...later]}`).
    async fn search_meta(
        &mut self,
        body: &RawDocument,
        stage: SearchMetaStage,
    ) -> Result<RawDocumentBuf, Error> {
        let db = db_of(body)?.to_string();
        let collection = collection_of(body, "aggregate")?.to_string();
        if matches!(body.get("autocommit"), Ok(Some(RawBsonRef::Boolean(false)))) {
            return Err(Error::client(
                Code::relayed(263, "OperationNotSupportedInTransaction"),
                "$searchMeta cannot be used in a multi-document transaction",
            ));
        }
        self.authorize(Action::Find, &db, &collection, "aggregate")
            .await?;
        let (total, buckets) = match self.resolve(&db, &collection, Some(&stage.index), None, true)
        {
            Ok(index) => {
                if let Some(operator) = &stage.operator {
                    self.authorize_synonyms(&db, &index, operator, "aggregate")
                        .await?;
                    refresh_synonyms(self.shared, &index, operator).await?;
                }
                let (operator, facets) = (stage.operator.clone(), stage.facets.clone());
                let facets: Vec<Facet> = facets.into_iter().map(|(_, f)| f).collect();
                cpu::run(move || {
                    index
                        .text()
                        .map(|text| text.facets(operator.as_ref(), &facets))
                        .unwrap_or_else(|| Ok((0, vec![Vec::new(); facets.len()])))
                })
                .await
                .map_err(|e| Error::internal(format!("$searchMeta failed: {e}")))?
                .map_err(text_error)?
            }
            // Atlas counts nothing in an index that does not exist.
            Err(e) if e.code.code == Code::INDEX_NOT_FOUND.code => {
                (0, vec![Vec::new(); stage.facets.len()])
            }
            Err(e) => return Err(e),
        };
        let total = i64::try_from(total).unwrap_or(i64::MAX);
        let mut meta = rawdoc! {
            "count": if stage.total { rawdoc! { "total": total } } else { rawdoc! { "lowerBound": total } },
        };
        if !stage.facets.is_empty() {
            let mut facet = RawDocumentBuf::new();
            for ((name, _), buckets) in stage.facets.iter().zip(buckets) {
                let mut list = RawArrayBuf::new();
                for (id, count) in buckets {
                    let mut bucket = RawDocumentBuf::new();
                    bucket.append("_id", id);
                    bucket.append("count", i64::try_from(count).unwrap_or(i64::MAX));
                    list.push(bucket);
                }
                facet.append(name.as_str(), rawdoc! { "buckets": list });
            }
            meta.append("facet", facet);
        }
        Ok(rewrite::over_documents(body, vec![meta]))
    }

    /// Kills the cursor a fetch-only reply left open (under the same
    /// session); a failure only leaves it to time out.
    pub(super) async fn kill_cursor_of(&mut self, reply: &RawDocument, fetch: &RawDocument) {
        let Ok(cursor) = reply.get_document("cursor") else {
            return;
        };
        let (Ok(id), Ok(ns)) = (cursor.get_i64("id"), cursor.get_str("ns")) else {
            return;
        };
        let Some((db, collection)) = ns.split_once('.') else {
            return;
        };
        let mut kill = rawdoc! { "killCursors": collection, "cursors": [id], "$db": db };
        if let Ok(lsid) = fetch.get_document("lsid") {
            kill.append("lsid", lsid.to_owned());
        }
        if let Err(e) = upstream::command(self.upstream, &kill).await {
            tracing::debug!(error = %e, "killCursors of a fetch-only cursor failed");
        }
    }

    /// `explain` of a vector query: the upstream's explain of the rewritten
    /// command, plus how the vector part was answered.
    pub(super) async fn explain_vector(
        &mut self,
        kind: VectorKind,
        body: &RawDocument,
    ) -> Result<RawDocumentBuf, Error> {
        let inner = body
            .get_document("explain")
            .map_err(|_| bad("explain needs a command document"))?;
        let outer = db_of(body)?;
        let mut inner_with_db = inner.to_owned();
        match inner.get("$db").ok().flatten() {
            None => inner_with_db.append("$db", outer),
            // mongod explains only in the database the command was sent to.
            Some(RawBsonRef::String(db)) if db == outer => {}
            Some(other) => {
                return Err(Error::client(
                    Code::INVALID_NAMESPACE,
                    format!(
                        "Mismatched $db in explain command. Expected {outer} but got {}",
                        match other {
                            RawBsonRef::String(s) => s.to_string(),
                            other => format!("{other:?}"),
                        }
                    ),
                ))
            }
        }
        if search_meta_stage(kind, &inner_with_db).is_some() {
            return Err(bad("explain of $searchMeta is not served by likewise yet"));
        }
        let plans = self
            // An explain runs in no transaction; its session fields are
            // the outer command's.
            .plans(kind, &inner_with_db, &mut InSession::of(body))
            .await?;
        let mut rewritten = rewrite_for(kind, &inner_with_db, &plans);
        let plan = &plans[0];
        rewritten = without(&rewritten, "$db");
        let mut upstream_explain = RawDocumentBuf::new();
        for (k, v) in body.iter().flatten() {
            if k == "explain" {
                upstream_explain.append(k, rewritten.clone());
            } else {
                upstream_explain.append(k, v.to_raw_bson());
            }
        }
        let reply = upstream::command(self.upstream, &upstream_explain).await?;
        let mut out = RawDocumentBuf::new();
        for (k, v) in reply.iter().flatten() {
            out.append(k, v.to_raw_bson());
        }
        let mut likewise = rawdoc! {
            "index": plan.index.as_ref().map_or("", |i| i.name.as_str()),
            "strategy": plan.strategy,
            "candidatesExamined": i64::try_from(plan.examined).unwrap_or(i64::MAX),
            "vectorsInIndex": i64::try_from(plan.index.as_ref().map_or(0, |i| i.vector_count())).unwrap_or(i64::MAX),
            "results": i64::try_from(plan.ranked.ids.len()).unwrap_or(i64::MAX),
            "rewrittenCommand": rewritten,
        };
        if let Some(allowed) = plan.allowed {
            likewise.append("filterMatches", i64::try_from(allowed).unwrap_or(i64::MAX));
        }
        if let Some(index) = &plan.index {
            if let Some(target) = index.spec.target_recall {
                let mut recall = rawdoc! { "target": target };
                if let Some((breadth, measured)) = index.tuned_recall() {
                    recall.append("measured", measured);
                    recall.append("numCandidates", i64::try_from(breadth).unwrap_or(i64::MAX));
                }
                likewise.append("recall", recall);
            }
        }
        if plans.len() > 1 {
            // Every vector stage, in pipeline order (the fields above are
            // the first's).
            let mut stages = RawArrayBuf::new();
            for p in &plans {
                stages.push(rawdoc! {
                    "index": p.index.as_ref().map_or("", |i| i.name.as_str()),
                    "collection": p.collection.as_str(),
                    "strategy": p.strategy,
                    "candidatesExamined": i64::try_from(p.examined).unwrap_or(i64::MAX),
                    "results": i64::try_from(p.ranked.ids.len()).unwrap_or(i64::MAX),
                });
            }
            likewise.append("vectorStages", stages);
        }
        if let Some(e) = &plan.encoding {
            let mut encoded = rawdoc! { "model": e.model.as_str(), "key": e.key.as_str(), "truncated": e.truncated };
            if e.truncated {
                encoded.append(
                    "note",
                    format!(
                        "the query text was longer than the model reads ({} tokens) and was truncated",
                        crate::models::bert::MAX_TOKENS
                    ),
                );
            }
            likewise.append("queryEncoding", encoded);
        }
        out.append("likewise", likewise);
        Ok(out)
    }

    /// One plan per owned vector stage of the command (at least one), in
    /// the order `rewrite::aggregate` takes them.
    /// The filter reads run in the client's session (`session`).
    async fn plans(
        &mut self,
        kind: VectorKind,
        body: &RawDocument,
        session: &mut InSession,
    ) -> Result<Vec<Plan>, Error> {
        let db = db_of(body)?.to_string();
        let queries = parse_queries(kind, body)?;
        if matches!(body.get("autocommit"), Ok(Some(RawBsonRef::Boolean(false))))
            && (kind == VectorKind::Count || queries.iter().any(|(_, query)| query.atlas))
        {
            // Atlas refuses `$vectorSearch` in a transaction, and mongod
            // `count`. The seed's `$like` is served there otherwise: its
            // filter is read in the transaction (the ranking is of the
            // committed vectors).
            return Err(Error::client(
                Code::relayed(263, "OperationNotSupportedInTransaction"),
                format!(
                    "{} cannot be used in a multi-document transaction",
                    if kind == VectorKind::Count {
                        "count"
                    } else if queries
                        .iter()
                        .any(|(_, q)| matches!(q.vector, QueryVector::FullText(_)))
                    {
                        "$search"
                    } else {
                        "$vectorSearch"
                    }
                ),
            ));
        }
        if queries.len() > MAX_VECTOR_STAGES {
            return Err(bad(format!(
                "a command may hold at most {MAX_VECTOR_STAGES} vector stages"
            )));
        }
        let mut plans = Vec::with_capacity(queries.len());
        for (collection, query) in queries {
            plans.push(match query.vector {
                QueryVector::Fusion(fusion) => {
                    self.fuse(kind, &db, &collection, *fusion, session).await?
                }
                _ => self.plan(kind, &db, &collection, query, session).await?,
            });
        }
        let missing = match rewrite::reads_asked_metadata(body, crate::wire::MAX_BSON_DEPTH) {
            Some(meta @ ("scoreDetails" | "searchScoreDetails")) => {
                (!plans.iter().any(|p| p.score_details)).then_some(meta)
            }
            Some(meta @ "searchHighlights") => {
                (!plans.iter().any(|p| p.highlighted)).then_some(meta)
            }
            _ => None,
        };
        if let Some(meta) = missing {
            // mongod's answer when no stage produced the metadata.
            return Err(Error::client(
                Code::relayed(40218, "Location40218"),
                format!("query requires {meta} metadata, but it is not available"),
            ));
        }
        // Each score reference becomes a lookup carrying the ranked ids and
        // scores: a command that would grow past what a server takes is
        // refused before it is built.
        let sizes: Vec<usize> = plans.iter().map(|p| p.ranked.score_bytes()).collect();
        let per_reference = sizes.iter().copied().max().unwrap_or(0);
        let references = rewrite::score_references(body, crate::wire::MAX_BSON_DEPTH);
        let rewritten = body.as_bytes().len()
            + sizes.iter().map(|s| 3 * s).sum::<usize>()
            + references.saturating_mul(per_reference);
        if rewritten > MAX_DOCUMENT_BYTES {
            return Err(Error::client(
                Code::relayed(10334, "BSONObjectTooLarge"),
                format!(
                    "the rewritten command would exceed 16 MiB ({references} score references \
                     over up to {} results each): reference the score fewer times, or ask \
                     for fewer results",
                    plans.iter().map(|p| p.ranked.ids.len()).max().unwrap_or(0)
                ),
            ));
        }
        Ok(plans)
    }

    pub(super) async fn plan(
        &mut self,
        kind: VectorKind,
        db: &str,
        collection: &str,
        query: VectorQuery,
        session: &mut InSession,
    ) -> Result<Plan, Error> {
        let started = std::time::Instant::now();
        let (db, collection) = (db.to_string(), collection.to_string());
        let max = self.shared.config.max_vector_results;
        let full_text = matches!(query.vector, QueryVector::FullText(_));
        let mut query = query;
        if full_text {
            // `$search` has no limit of its own: the most this proxy returns.
            query.limit = query.limit.min(max);
        }
        if query.limit > max {
            return Err(bad(format!(
                "this query asks for {} results; this proxy returns at most {max} per vector \
                 query (--max-vector-results)",
                query.limit
            )));
        }
        // The client's right to read the collection comes first, before any
        // index is consulted (or a model encodes its text): answers, errors
        // and explain output all say something about the documents. A filter
        // is read on the client's connection anyway; without one, a probe
        // asks (or a right found on this connection in the last 30 s
        // answers, `ForClient::authorize`).
        let allowed = match &query.filter {
            Some(filter) => Some(self.matching_ids(&db, &collection, filter, session).await?),
            None => None,
        };
        let resolved = self.resolve(
            &db,
            &collection,
            query.index.as_deref(),
            query.path.as_deref(),
            full_text,
        );
        let highlight = match (&query.vector, &query.highlight) {
            (QueryVector::FullText(operator), Some(h)) => Some(((**operator).clone(), h.clone())),
            _ => None,
        };
        if allowed.is_none() {
            self.authorize(Action::Find, &db, &collection, kind.command())
                .await?;
        }
        if let (Ok(index), QueryVector::FullText(operator)) = (&resolved, &query.vector) {
            self.authorize_synonyms(&db, index, operator, kind.command())
                .await?;
        }
        let mut plan = answer(
            self.shared,
            collection.clone(),
            query,
            resolved,
            allowed,
            started,
        )
        .await?;
        if let (Some((operator, highlight)), Some(index)) = (highlight, plan.index.clone()) {
            plan.ranked.highlights = self
                .highlights(
                    &db,
                    &collection,
                    index,
                    operator,
                    highlight,
                    &plan.ranked.ids,
                    session,
                )
                .await?;
            plan.highlighted = true;
        }
        Ok(plan)
    }

    /// The client's `find` right on each synonym collection `operator`
    /// uses: the proxy reads them as itself, and which words they pair
    /// shows in what a search matches.
    async fn authorize_synonyms(
        &mut self,
        db: &str,
        index: &Arc<SearchIndex>,
        operator: &crate::index::text::Operator,
        command: &str,
    ) -> Result<(), Error> {
        let sources: Vec<String> = match index.text() {
            Some(text) => operator
                .synonym_mappings()
                .into_iter()
                .filter_map(|name| text.synonym_mapping(name))
                .map(|m| m.collection.clone())
                .collect(),
            None => Vec::new(),
        };
        for source in sources {
            self.authorize(Action::Find, db, &source, command).await?;
        }
        Ok(())
    }

    /// `{$meta: "searchHighlights"}` of each ranked document (the first
    /// [`MAX_HIGHLIGHTED`]; the rest get none): the documents are read on
    /// the client's connection, in its session, and their passages found
    /// on a blocking thread.
    #[allow(clippy::too_many_arguments)]
    async fn highlights(
        &mut self,
        db: &str,
        collection: &str,
        index: Arc<SearchIndex>,
        operator: crate::index::text::Operator,
        highlight: crate::index::text::Highlight,
        ids: &[bson::RawBson],
        session: &mut InSession,
    ) -> Result<Vec<RawArrayBuf>, Error> {
        let read = &ids[..ids.len().min(MAX_HIGHLIGHTED)];
        let mut docs = std::collections::HashMap::new();
        if !read.is_empty() {
            use crate::index::text::SearchPath;
            // The highlighted paths alone, unless a wildcard names them.
            let paths: Option<Vec<String>> = highlight
                .paths
                .iter()
                .map(|p| match p {
                    SearchPath::Field(path) | SearchPath::Multi { path, .. } => Some(path.clone()),
                    SearchPath::Wildcard(_) => None,
                })
                .collect();
            let find = rewrite::documents_by_id(collection, db, read, paths.as_deref(), session);
            let mut cursor = Cursor::open(self.upstream, db, &find).await?;
            while let Some(batch) = cursor.next_batch().await? {
                for doc in batch {
                    if let Some(id) = doc.get("_id").ok().flatten() {
                        docs.insert(crate::index::ids::canonical(id), doc);
                    }
                }
            }
        }
        let ids = ids.to_vec();
        cpu::run(move || {
            let text = index.text();
            ids.iter()
                .map(|id| {
                    let mut out = RawArrayBuf::new();
                    let doc = docs.get(&crate::index::ids::canonical(id.as_raw_bson_ref()));
                    if let (Some(text), Some(doc)) = (text, doc) {
                        for passage in text.highlights(&operator, &highlight, doc) {
                            let mut texts = RawArrayBuf::new();
                            for (value, hit) in passage.texts {
                                texts.push(rawdoc! {
                                    "value": value,
                                    "type": if hit { "hit" } else { "text" },
                                });
                            }
                            // Atlas names a `multi` path as it was asked.
                            let path = match passage.multi {
                                Some(multi) => RawBson::Document(
                                    rawdoc! { "value": passage.path, "multi": multi },
                                ),
                                None => RawBson::String(passage.path),
                            };
                            out.push(rawdoc! {
                                "path": path,
                                "texts": texts,
                                "score": passage.score,
                            });
                        }
                    }
                    out
                })
                .collect()
        })
        .await
        .map_err(|e| Error::internal(format!("highlighting failed: {e}")))
    }

    /// The index a query names (`index`; the collection's only one when
    /// `None`), the part indexing `path` when given, checked queryable and
    /// of the kind asked for (`full_text`: a `search` index).
    fn resolve(
        &self,
        db: &str,
        collection: &str,
        index: Option<&str>,
        path: Option<&str>,
        full_text: bool,
    ) -> Result<Arc<SearchIndex>, Error> {
        let registry = &self.shared.registry;
        let index = match index {
            Some(name) => {
                let first = registry
                    .find(db, collection, Some(name), None)
                    .ok_or_else(|| {
                        Error::client(
                            Code::INDEX_NOT_FOUND,
                            format!("search index '{name}' not found on {db}.{collection}"),
                        )
                    })?;
                // The part indexing the path asked for (several vector
                // fields make several parts).
                match path {
                    Some(path) => registry
                        .find_path(db, collection, name, path)
                        .unwrap_or(first),
                    None => first,
                }
            }
            None => {
                let all: Vec<_> = registry
                    .list(db, collection)
                    .into_iter()
                    .filter(|i| i.part == 0)
                    .collect();
                match all.len() {
                    1 => all[0].clone(),
                    0 => {
                        return Err(Error::client(
                            Code::INDEX_NOT_FOUND,
                            format!("{db}.{collection} has no search index"),
                        ))
                    }
                    _ => return Err(bad(format!(
                        "{db}.{collection} has several search indexes: name one with 'semantic_index'"
                    ))),
                }
            }
        };
        let (status, detail) = index.status();
        if !matches!(status, Status::Ready | Status::Training | Status::Stale) {
            return Err(Error::client(
                Code::OBJECT_IS_BUSY,
                format!(
                    "search index '{}' is not queryable yet (status {}{})",
                    index.name,
                    status.name(),
                    detail.map(|d| format!(": {d}")).unwrap_or_default()
                ),
            ));
        }
        if full_text != index.spec.text.is_some() {
            return Err(bad(format!(
                "search index '{}' is a {} index: {} needs a {} index",
                index.name,
                if full_text { "vectorSearch" } else { "search" },
                if full_text {
                    "$search"
                } else {
                    "a vector query"
                },
                if full_text { "search" } else { "vectorSearch" },
            )));
        }
        if let Some(path) = path {
            if path != index.spec.path {
                return Err(bad(format!(
                    "search index '{}' indexes path '{}', not '{path}'",
                    index.name, index.spec.path
                )));
            }
        }
        Ok(index)
    }

    /// `_id`s of the documents matching `filter`, read on the client's
    /// connection so its own permissions apply, in its session (and
    /// transaction) so it sees what the client's own reads would.
    async fn matching_ids(
        &mut self,
        db: &str,
        collection: &str,
        filter: &RawDocument,
        session: &mut InSession,
    ) -> Result<IdSet, Error> {
        let find = rewrite::matching_ids(collection, db, filter, session);
        let mut cursor = Cursor::open(self.upstream, db, &find).await?;
        let mut ids = IdSet::default();
        while let Some(batch) = cursor.next_batch().await? {
            for doc in &batch {
                if let Some(id) = doc.get("_id").ok().flatten() {
                    ids.add(id);
                }
            }
        }
        Ok(ids)
    }
}

/// The `$searchMeta` an `aggregate` opens with, read (`None` when it
/// opens with anything else).
fn search_meta_stage(
    kind: VectorKind,
    body: &RawDocument,
) -> Option<Result<SearchMetaStage, Error>> {
    if kind != VectorKind::Aggregate {
        return None;
    }
    let first = body.get_array("pipeline").ok()?.into_iter().next()?.ok()?;
    match first.as_document()?.iter().next()?.ok()? {
        ("$searchMeta", RawBsonRef::Document(spec)) => Some(parse_search_meta(spec)),
        ("$searchMeta", _) => Some(Err(bad("$searchMeta must be a document"))),
        _ => None,
    }
}

/// A vector or `$search` query answered from its index (`resolved`),
/// over `allowed` ids when it had a filter; a blocking thread searches.
async fn answer(
    shared: &super::Shared,
    collection: String,
    query: VectorQuery,
    resolved: Result<Arc<SearchIndex>, Error>,
    allowed: Option<IdSet>,
    started: std::time::Instant,
) -> Result<Plan, Error> {
    let index = match resolved {
        Ok(index) => index,
        // Atlas answers a `$vectorSearch` of an index (or a collection)
        // that does not exist with no documents, not an error.
        Err(e) if query.atlas && e.code.code == Code::INDEX_NOT_FOUND.code => {
            return Ok(Plan {
                index: None,
                collection,
                strategy: "no such index",
                examined: 0,
                allowed: allowed.map(|ids| ids.ids.len()),
                ranked: Ranked::default(),
                exact_filter: query.filter,
                encoding: None,
                score_details: false,
                highlighted: false,
            });
        }
        Err(e) => return Err(e),
    };
    if let QueryVector::FullText(operator) = &query.vector {
        refresh_synonyms(shared, &index, operator).await?;
        let (searcher, operator, limit) = (index.clone(), operator.clone(), query.limit);
        let (counted, sort) = (query.count.is_some(), query.sort.clone());
        let found = match sort {
            None if !counted => top(searcher, operator, limit, &shared.metrics).await?,
            sort => cpu::run(move || {
                searcher
                    .text()
                    .map(|text| match &sort {
                        // Sorting visits every match, so counts them too.
                        Some(sort) => text.sorted(&operator, sort, limit),
                        None => text.search(&operator, limit),
                    })
                    // The engine failed to start: the index is FAILED and
                    // `resolve` refused it already.
                    .unwrap_or_else(|| Ok((Vec::new(), 0)))
            })
            .await
            .map_err(|e| Error::internal(format!("full-text search failed: {e}")))?
            .map_err(text_error)?,
        };
        let (hits, matched) = found;
        let mut ranked: Ranked = hits.into_iter().collect();
        if query.return_stored_source {
            ranked.stored_source = index
                .spec
                .text
                .as_ref()
                .and_then(|t| t.stored_source.projection());
        }
        let count = i64::try_from(matched).unwrap_or(i64::MAX);
        ranked.search_meta = query.count.map(|kind| match kind {
            Count::Total => rawdoc! { "count": { "total": count } },
            Count::LowerBound => rawdoc! { "count": { "lowerBound": count } },
        });
        if let (true, QueryVector::FullText(operator)) = (query.score_details, &query.vector) {
            ranked.details = explain(&index, operator, &ranked).await?;
        }
        shared.metrics.vector_latency.observe(started.elapsed());
        shared.metrics.strategy("full-text search");
        return Ok(Plan {
            index: Some(index),
            collection,
            strategy: "full-text search",
            examined: matched,
            allowed: None,
            ranked,
            exact_filter: None,
            encoding: None,
            score_details: query.score_details,
            highlighted: false,
        });
    }
    if query.auto_breadth && query.atlas && index.spec.target_recall.is_none() {
        return Err(bad(
            "$vectorSearch needs 'numCandidates' unless 'exact' is true (or the index sets \
             'targetRecall')",
        ));
    }
    let (vector, encoding) = query_vector(&index, &query).await?;
    let mut query = query;
    if query.auto_breadth && index.spec.target_recall.is_some() {
        let (breadth, due) = index.auto_breadth(&vector, query.limit, query.num_candidates);
        query.num_candidates = breadth;
        if due {
            let measuring = index.clone();
            tokio::task::spawn_blocking(move || measuring.measure_recall());
        }
    }
    let allowed_count = allowed.as_ref().map(|ids| ids.ids.len());
    let searcher = index.clone();
    let (ranked, strategy, examined, query) = cpu::run(move || {
        let (ranked, strategy, examined) = search(&searcher, &vector, &query, allowed.as_ref());
        (ranked, strategy, examined, query)
    })
    .await
    .map_err(|e| Error::internal(format!("vector search failed: {e}")))?;
    shared.metrics.vector_latency.observe(started.elapsed());
    shared.metrics.strategy(strategy);
    Ok(Plan {
        index: Some(index),
        collection,
        strategy,
        examined,
        allowed: allowed_count,
        ranked,
        exact_filter: query.filter,
        encoding,
        score_details: false,
        highlighted: false,
    })
}

/// The best `limit` matches of `operator` in `index`'s full-text index,
/// and how many that is. When a core is free, at most
/// [`cpu::HERE_MAX_HITS`] are asked for, and the search prepares within
/// its bounds (`TextIndex::prepare_top`) with a walk of at most
/// [`cpu::HERE_MAX_POSTINGS`] postings, it runs on this thread (what
/// helpers claim of it runs beside it on the pool), sparing two thread
/// wake-ups; otherwise on the pool, as every other search does.
async fn top(
    index: Arc<SearchIndex>,
    operator: Box<crate::index::text::Operator>,
    limit: usize,
    metrics: &crate::metrics::Metrics,
) -> Result<(crate::index::text::Hits, usize), Error> {
    let failed =
        |e: tokio::task::JoinError| Error::internal(format!("full-text search failed: {e}"));
    let Some(text) = index.text() else {
        // The engine failed to start: the index is FAILED and `resolve`
        // refused it already.
        return Ok((Vec::new(), 0));
    };
    // A panic on this thread is this request's error, as on the pool.
    let panicked = |_| Error::internal("full-text search failed: the search panicked");
    let prepared = match cpu::turn_now() {
        Some(turn) if limit <= cpu::HERE_MAX_HITS => {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                text.prepare_top(&operator, limit)
            }))
            .map_err(panicked)?
            .map_err(text_error)?
            .map(|prepared| (turn, prepared))
        }
        _ => None,
    };
    let hits = match prepared {
        Some((_turn, prepared))
            if prepared
                .postings()
                .is_some_and(|p| p <= cpu::HERE_MAX_POSTINGS) =>
        {
            metrics.full_text_walked(true);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prepared.run()))
                .map_err(panicked)?
        }
        Some((turn, prepared)) => {
            metrics.full_text_walked(false);
            cpu::run_in(turn, move || prepared.run())
                .await
                .map_err(failed)?
        }
        None => {
            metrics.full_text_walked(false);
            cpu::run(move || match index.text() {
                Some(text) => text.top(&operator, limit),
                None => Ok(Vec::new()),
            })
            .await
            .map_err(failed)?
        }
    };
    let hits = hits.map_err(text_error)?;
    let n = hits.len();
    Ok((hits, n))
}

/// How old a synonym table may be before a query using it reads its
/// collection again (Atlas, too, applies synonym changes asynchronously).
const SYNONYMS_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads again, as the proxy, each synonym collection `operator` uses whose
/// table is missing or older than [`SYNONYMS_FRESH`] (at most
/// `MAX_SYNONYM_DOCUMENTS` documents). A mapping the index does not define
/// is left for the search to refuse.
async fn refresh_synonyms(
    shared: &crate::proxy::Shared,
    index: &Arc<SearchIndex>,
    operator: &crate::index::text::Operator,
) -> Result<(), Error> {
    let Some(text) = index.text() else {
        return Ok(());
    };
    for name in operator.synonym_mappings() {
        let Some(mapping) = text.synonym_mapping(name) else {
            continue;
        };
        let table = text.synonym_table(name);
        let fresh = table
            .as_ref()
            .and_then(|t| t.read_at)
            .is_some_and(|at| at.elapsed() < SYNONYMS_FRESH);
        if fresh {
            continue;
        }
        // One read per mapping at a time; the others use the table there
        // is (a first read is never skipped).
        let claimed = text.begin_synonym_read(name);
        if !claimed && table.is_some() {
            continue;
        }
        let read = read_synonyms(shared, &index.db, &mapping.collection).await;
        if claimed {
            text.end_synonym_read(name);
        }
        let documents = read?;
        let (target, name) = (index.clone(), name.to_string());
        tokio::task::spawn_blocking(move || {
            if let Some(text) = target.text() {
                text.set_synonyms(&name, &documents);
            }
        })
        .await
        .map_err(|e| Error::internal(format!("reading synonyms failed: {e}")))?;
    }
    Ok(())
}

/// The documents of a synonym collection, as the proxy reads them (at
/// most `MAX_SYNONYM_DOCUMENTS` and `MAX_SYNONYM_BYTES`).
async fn read_synonyms(
    shared: &crate::proxy::Shared,
    db: &str,
    collection: &str,
) -> Result<Vec<RawDocumentBuf>, Error> {
    use crate::index::text::{MAX_SYNONYM_BYTES, MAX_SYNONYM_DOCUMENTS};
    let conn = crate::upstream::connect(&shared.config).await?;
    let limit = MAX_SYNONYM_DOCUMENTS as i64;
    let find = rawdoc! { "find": collection, "limit": limit, "batchSize": limit, "$db": db };
    let mut cursor = conn.cursor(&find).await?;
    let (mut documents, mut bytes) = (Vec::new(), 0);
    while let Some(batch) = cursor.next_batch().await? {
        for doc in batch {
            bytes += doc.as_bytes().len();
            if bytes > MAX_SYNONYM_BYTES || documents.len() >= MAX_SYNONYM_DOCUMENTS {
                return Ok(documents);
            }
            documents.push(doc);
        }
    }
    Ok(documents)
}

/// The client's error for a full-text engine failure: a query it cannot
/// run is the client's (`BadValue`), an engine fault is internal.
fn text_error(e: TextError) -> Error {
    match e {
        TextError::Query(why) => bad(why),
        TextError::Engine(why) => Error::internal(why),
    }
}

/// Most documents of one `$search` whose scores are explained (each
/// explanation runs the query's scorer for that document again).
const MAX_EXPLAINED: usize = 100;

/// `$search`'s `scoreDetails` for each ranked document (the first
/// [`MAX_EXPLAINED`] explained by the engine, the rest with their value
/// only), each tree's top value exactly the document's `searchScore`.
async fn explain(
    index: &Arc<SearchIndex>,
    operator: &crate::index::text::Operator,
    ranked: &Ranked,
) -> Result<Vec<RawDocumentBuf>, Error> {
    let ids: Vec<RawBson> = ranked.ids.iter().take(MAX_EXPLAINED).cloned().collect();
    let (searcher, operator) = (index.clone(), operator.clone());
    let trees = cpu::run(move || {
        searcher
            .text()
            .map(|text| text.explain(&operator, &ids))
            .unwrap_or_else(|| Ok(Vec::new()))
    })
    .await
    .map_err(|e| Error::internal(format!("explaining scores failed: {e}")))?
    .map_err(text_error)?;
    Ok(ranked
        .scores
        .iter()
        .enumerate()
        .map(|(i, &score)| {
            let tree = trees.get(i).cloned().flatten();
            let mut out = rawdoc! { "value": score };
            match tree {
                Some(tree) => {
                    out.append("description", tree.get_str("description").unwrap_or(""));
                    let details = tree.get_array("details").map(|d| d.to_owned());
                    out.append("details", details.unwrap_or_default());
                }
                None => {
                    out.append(
                        "description",
                        "score (details are given for the first 1000 results)",
                    );
                    out.append("details", RawArrayBuf::new());
                }
            }
            out
        })
        .collect())
}

/// The vector queries of a command, each with the collection it searches:
/// an `aggregate`'s owned stages (`vector_stages`, with Atlas's errors for
/// misplaced ones), or a `find`'s or `count`'s `$like`.
fn parse_queries(
    kind: VectorKind,
    body: &RawDocument,
) -> Result<Vec<(String, VectorQuery)>, Error> {
    match kind {
        VectorKind::Aggregate => {
            let collection = collection_of(body, "aggregate")?;
            let stages = body
                .get_array("pipeline")
                .map_err(|_| bad("aggregate needs a pipeline"))?;
            let found = vector_stages(collection, stages)?;
            if found.is_empty() {
                // Classified for a `$like` nested inside the first `$match`.
                return Err(bad("$like must be at the top level of $match"));
            }
            Ok(found)
        }
        VectorKind::Find => {
            let collection = collection_of(body, "find")?.to_string();
            let filter = body
                .get_document("filter")
                .map_err(|_| bad("find needs a filter"))?;
            let query = parse_like_filter(filter)?
                .ok_or_else(|| bad("$like must be at the top level of the filter"))?;
            Ok(vec![(collection, query)])
        }
        VectorKind::Count => {
            let collection = collection_of(body, "count")?.to_string();
            let filter = body
                .get_document("query")
                .map_err(|_| bad("count needs a query"))?;
            let query = parse_like_filter(filter)?
                .ok_or_else(|| bad("$like must be at the top level of the query"))?;
            Ok(vec![(collection, query)])
        }
    }
}

/// Which model encoded a query's content, for `explain`.
pub(super) struct Encoding {
    model: String,
    key: String,
    truncated: bool,
}

/// The prepared query vector, encoding content with the index's models
/// on a blocking thread when the query gives content rather than numbers.
async fn query_vector(
    index: &Arc<SearchIndex>,
    query: &VectorQuery,
) -> Result<(OwnedVector, Option<Encoding>), Error> {
    let spec = &index.spec;
    let (model, key, value) = match &query.vector {
        QueryVector::Values(values) => {
            if query.packed_bits && spec.similarity != Similarity::Euclidean {
                return Err(bad(format!(
                    "a packed-bit (int1) query vector is compared with euclidean similarity \
                     only; index '{}' uses {}",
                    index.name,
                    spec.similarity.name()
                )));
            }
            if values.len() != spec.dims {
                return Err(bad(format!(
                    "query vector has {} dimensions, index '{}' has {}",
                    values.len(),
                    index.name,
                    spec.dims
                )));
            }
            // Int8 and packed-bit query vectors keep their dtype: against
            // rows of it they are compared with its kernel.
            let dtype = if query.int8 {
                Dtype::I8
            } else if query.packed_bits {
                Dtype::Bits
            } else {
                Dtype::F32
            };
            let vector = OwnedVector::prepared(values.clone(), dtype, spec.similarity)
                .ok_or_else(|| bad("query vector cannot be compared (all zeros, or not finite)"))?;
            return Ok((vector, None));
        }
        QueryVector::OfDocument(id) => {
            return Ok((OwnedVector::F32(stored_vector(index, id)?), None))
        }
        QueryVector::FullText(_) => {
            return Err(bad(
                "a $search query has no vector: it needs a search index",
            ))
        }
        QueryVector::Fusion(_) => return Err(bad("a fusion stage has no vector of its own")),
        QueryVector::Text(text) => {
            // The model that produces the vectors at the searched path.
            let Some(i) = spec.models.iter().position(|m| m.key == spec.path) else {
                return Err(bad(format!(
                    "search index '{}' has no model to encode 'query' text: pass 'queryVector', \
                     or index the path as an 'autoEmbed' field (or with createSemanticIndex)",
                    index.name
                )));
            };
            if let Some(asked) = query.model.as_deref() {
                if asked != spec.models[i].model {
                    return Err(bad(format!(
                        "search index '{}' encodes '{}' with model '{}', not '{asked}': \
                         query with the index's model (or leave out 'model')",
                        index.name, spec.path, spec.models[i].model
                    )));
                }
            }
            (
                index.encoders[i].clone(),
                spec.models[i].key.clone(),
                bson::RawBson::String(text.clone()),
            )
        }
        QueryVector::Content(document) => {
            let present = spec.models.iter().enumerate().find_map(|(i, m)| {
                crate::index::vector::lookup(document, &m.key).map(|v| (i, v.to_raw_bson()))
            });
            match present {
                Some((i, value)) => (index.encoders[i].clone(), spec.models[i].key.clone(), value),
                None => {
                    if let Some(id) = document.get("_id").ok().flatten() {
                        let stored = stored_vector(index, &id.to_raw_bson())?;
                        return Ok((OwnedVector::F32(stored), None));
                    }
                    let keys: Vec<&str> = spec.models.iter().map(|m| m.key.as_str()).collect();
                    return Err(bad(if keys.is_empty() {
                        format!(
                            "search index '{}' has no model to encode '$like.document': pass 'vector' or the '_id' \
                             of an indexed document, or use an index made with createSemanticIndex",
                            index.name
                        )
                    } else {
                        format!(
                            "'$like.document' has none of the keys search index '{}' encodes ({})",
                            index.name,
                            keys.join(", ")
                        )
                    }));
                }
            }
        }
    };
    let similarity = spec.similarity;
    let model_name = model.name().to_string();
    let encoded = tokio::task::spawn_blocking(move || model.encode(&[value.as_raw_bson_ref()]))
        .await
        .map_err(|e| Error::internal(format!("encoding failed: {e}")))?
        .map_err(|failure| {
            Error::client(
                Code::OPERATION_FAILED,
                format!("model '{model_name}' could not encode the query: {failure}"),
            )
        })?
        .pop()
        .unwrap_or_else(|| Err("no output".into()))
        .map_err(|why| bad(format!("'{key}' of the query: {why}")))?;
    let truncated = encoded.truncated;
    // A trained adapter maps queries: content under the splitter's query key,
    // and `$vectorSearch` query text.
    let is_query = matches!(query.vector, QueryVector::Text(_))
        || crate::maintain::train::query_key(index) == Some(key.as_str());
    let raw = match index.adapter() {
        Some(adapter) if is_query => adapter.apply(&encoded.vector),
        _ => encoded.vector,
    };
    let vector = similarity
        .prepare(raw)
        .ok_or_else(|| bad("the query's encoding cannot be compared (all zeros)"))?;
    Ok((
        OwnedVector::F32(vector),
        Some(Encoding {
            model: model_name,
            key,
            truncated,
        }),
    ))
}

/// The vector stored for the document with this `_id`.
fn stored_vector(index: &SearchIndex, id: &bson::RawBson) -> Result<Vec<f32>, Error> {
    index.stored_vector(id.as_raw_bson_ref()).ok_or_else(|| {
        Error::client(
            Code::BAD_VALUE,
            format!("no indexed vector for the document with _id {id:?}"),
        )
    })
}

/// Runs the search on a blocking thread's behalf (see
/// `registry::Vectors::search` for the strategies) and scores its hits.
fn search(
    index: &SearchIndex,
    vector: &OwnedVector,
    query: &VectorQuery,
    allowed_ids: Option<&IdSet>,
) -> (Ranked, &'static str, usize) {
    let found = index.search(
        vector.as_ref(),
        query.limit,
        query.num_candidates,
        allowed_ids,
        query.exact,
    );
    let similarity = index.spec.similarity;
    let dims = index.spec.dims;
    let score = |distance: f32| match similarity {
        // Lucene's (so Atlas's) score for int8 vectors under dotProduct:
        // 0.5 + a·b / (dims · 2^15), in [0, 1] for any int8 vectors
        // (`VectorSimilarityFunction.DOT_PRODUCT` on bytes).
        // Kept in [0, 1] when the stored vectors are not int8 too.
        Similarity::DotProduct if query.int8 => {
            (0.5 + f64::from(-distance) / (dims as f64 * 32768.0)).clamp(0.0, 1.0)
        }
        _ => similarity.score(distance),
    };
    let ranked = found
        .hits
        .into_iter()
        .map(|(id, distance)| (id, score(distance)))
        .collect();
    (ranked, found.strategy, found.examined)
}

fn rewrite_for(kind: VectorKind, body: &RawDocument, plans: &[Plan]) -> RawDocumentBuf {
    let plan = &plans[0];
    let exact = plan.exact_filter.as_deref();
    match kind {
        VectorKind::Aggregate => {
            let planned: Vec<rewrite::Planned<'_>> = plans
                .iter()
                .map(|p| (&p.ranked, p.exact_filter.as_deref()))
                .collect();
            rewrite::aggregate(body, &planned)
        }
        VectorKind::Find => rewrite::find_as_aggregate(body, &plan.ranked, exact),
        VectorKind::Count => rewrite::count(body, &plan.ranked, exact),
    }
}
