//! Vector commands on a client's connection: search-index administration
//! (answered by the proxy) and vector queries (answered from an index, then
//! rewritten and sent upstream on the client's own connection, so results
//! are only documents the client could read directly).

use super::session::Session;
use crate::command::search_index::{
    self, describe, parse_create, parse_definition, parse_list_filter, parse_target,
};
use crate::command::vector_query::{parse_like_filter, vector_stages, QueryVector, VectorQuery};
use crate::command::{Admin, VectorKind};
use crate::error::{Code, Error};
use crate::index::ids::IdMap;
use crate::index::registry::{Refused, SearchIndex, Status};
use crate::index::{exact_among, search_allowed, Hit, KeySet, Similarity};
use crate::maintain::fresh::IdSet;
use crate::maintain::{build, catalog};
use crate::rewrite::InSession;
use crate::rewrite::{self, Ranked};
use crate::upstream::pinned::{self as upstream, Cursor};
use bson::{rawdoc, RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf};
use std::sync::Arc;

/// Most search indexes one collection may have (mongod's bound on a
/// collection's indexes): each keeps a change stream and an index in
/// memory.
pub const MAX_SEARCH_INDEXES_PER_COLLECTION: usize = 64;

fn bad(message: impl Into<String>) -> Error {
    Error::client(Code::BAD_VALUE, message)
}

fn db_of(body: &RawDocument) -> Result<&str, Error> {
    let db = body.get_str("$db").map_err(|_| bad("command has no $db"))?;
    check_db_name(db)?;
    Ok(db)
}

fn collection_of<'a>(body: &'a RawDocument, command: &str) -> Result<&'a str, Error> {
    body.get_str(command)
        .map_err(|_| bad(format!("'{command}' must name a collection")))
}

/// How a vector query was answered, for `explain`.
/// A vector command rewritten for the upstream: the ranked form, which
/// the upstream orders itself, and where possible a fetch-only form whose
/// single batch the proxy orders (`rewrite::put_in_order`).
pub(super) struct Rewritten {
    pub ranked: RawDocumentBuf,
    pub fetch_only: Option<(RawDocumentBuf, Ranked)>,
}

struct Plan {
    /// `None` when a `$vectorSearch` named an index that does not exist:
    /// Atlas finds nothing then.
    index: Option<Arc<SearchIndex>>,
    /// The collection searched.
    collection: String,
    strategy: &'static str,
    /// Vectors the query was compared with.
    examined: usize,
    allowed: Option<usize>,
    ranked: Ranked,
    exact_filter: Option<RawDocumentBuf>,
    encoding: Option<Encoding>,
}

impl Session {
    pub(super) async fn search_index_admin(
        &mut self,
        admin: Admin,
        body: &RawDocument,
    ) -> Result<RawDocumentBuf, Error> {
        let db = db_of(body)?;
        self.check_namespace(admin, db, body).await?;
        self.check_privilege(admin, db, body).await?;
        let registry = self.shared.registry.clone();
        let config = self.shared.config.clone();
        match admin {
            Admin::CreateNeighbourhood | Admin::DropNeighbourhood | Admin::ListNeighbourhoods => {
                self.neighbourhood_admin(admin, body).await
            }
            Admin::CreateModel | Admin::ListModels | Admin::DropModel => {
                self.model_admin(admin, body).await
            }
            Admin::Evaluate => {
                let collection = collection_of(body, "evaluateSemanticIndex")?;
                let name = body.get_str("name").ok().map(str::to_string);
                let index = self.named_index(db, collection, &name, &None)?;
                if index.encoders.is_empty() {
                    return Err(bad(format!(
                        "search index '{}' has no models: evaluation encodes (query, item) pairs",
                        index.name
                    )));
                }
                let keys: Vec<String> = index.spec.models.iter().map(|m| m.key.clone()).collect();
                let mut request = RawDocumentBuf::new();
                request.append("loss", "ranking");
                for key in ["splitter", "metrics"] {
                    if let Some(v) = body.get(key).ok().flatten() {
                        request.append(key, v.to_raw_bson());
                    }
                }
                if body.get("splitter").ok().flatten().is_none() && keys.len() < 2 {
                    // Only parsed to fill the rest; the index's own splitter wins below.
                    request.append("splitter", rawdoc! { "kind": "arrayElement" });
                }
                let trained = index.spec.train.clone();
                let parsed = crate::train::TrainSpec::parse(&request, &keys)
                    .map_err(bad)?
                    .unwrap_or_default();
                let splitter = if body.get("splitter").ok().flatten().is_some() {
                    parsed.splitter
                } else {
                    trained
                        .as_ref()
                        .map_or(parsed.splitter, |t| t.splitter.clone())
                };
                let metrics = if body.get("metrics").ok().flatten().is_some() {
                    parsed.metrics
                } else {
                    trained
                        .as_ref()
                        .map_or(parsed.metrics, |t| t.metrics.clone())
                };
                let filter = body
                    .get_document("filter")
                    .map(ToOwned::to_owned)
                    .unwrap_or_default();
                let limit = search_index::integer(body.get("limit").ok().flatten())
                    .filter(|n| *n > 0)
                    .map_or(20_000, |n| n.min(200_000) as usize);
                crate::maintain::train::evaluate(
                    crate::upstream::Reader::Pinned(&mut self.upstream),
                    &index,
                    &splitter,
                    &metrics,
                    &filter,
                    limit,
                )
                .await
            }
            Admin::Create | Admin::CreateSemantic => {
                let (collection, news) = if admin == Admin::Create {
                    (
                        collection_of(body, "createSearchIndexes")?,
                        parse_create(body)?,
                    )
                } else {
                    (
                        collection_of(body, "createSemanticIndex")?,
                        vec![search_index::parse_create_semantic(body)?],
                    )
                };
                let command = if admin == Admin::Create {
                    "createSearchIndexes"
                } else {
                    "createSemanticIndex"
                };
                // The whole command is refused up front when it cannot fit
                // (`add_bounded` below holds the bounds under concurrency).
                let parts: usize = news.iter().map(|n| n.specs.len()).sum();
                let on_collection = registry.list(db, collection).len() + parts;
                if on_collection > MAX_SEARCH_INDEXES_PER_COLLECTION {
                    return Err(refusal(
                        Refused::PerCollection(MAX_SEARCH_INDEXES_PER_COLLECTION),
                        db,
                        collection,
                    ));
                }
                if registry.all_maintained().len() + parts > config.max_search_indexes {
                    return Err(refusal(
                        Refused::Total(config.max_search_indexes),
                        db,
                        collection,
                    ));
                }
                if news.iter().flat_map(|n| &n.specs).any(|s| s.write_outputs) {
                    self.authorize(Action::Update, db, collection, command)
                        .await?;
                }
                let mut created = RawArrayBuf::new();
                for new in news {
                    if registry
                        .find(db, collection, Some(&new.name), None)
                        .is_some()
                    {
                        return Err(Error::client(
                            Code::INDEX_ALREADY_EXISTS,
                            format!(
                                "search index '{}' already exists on {db}.{collection}",
                                new.name
                            ),
                        ));
                    }
                    let id = bson::oid::ObjectId::new().to_hex();
                    let parts = self
                        .parts(
                            &id,
                            db,
                            collection,
                            &new.name,
                            &new.definition,
                            new.specs,
                            0,
                        )
                        .await?;
                    let index = parts[0].clone();
                    // Reserved in the registry (name and bounds checked
                    // under one lock) before it is stored, so concurrent
                    // creations can neither pass the bounds nor store a
                    // second definition under one name.
                    registry
                        .add_bounded(
                            parts.clone(),
                            MAX_SEARCH_INDEXES_PER_COLLECTION,
                            config.max_search_indexes,
                        )
                        .map_err(|refused| refusal(refused, db, collection))?;
                    if let Err(e) = catalog::save(&config, &index).await {
                        registry.remove(&index);
                        return Err(e);
                    }
                    tracing::info!(index = %index.name, namespace = %index.namespace(), "search index created");
                    created.push(rawdoc! { "id": index.id.as_str(), "name": index.name.as_str() });
                    for part in parts {
                        tokio::spawn(build::build(config.clone(), part));
                    }
                }
                Ok(rawdoc! { "ok": 1.0, "indexesCreated": created })
            }
            Admin::Update => {
                let collection = collection_of(body, "updateSearchIndex")?;
                let target = parse_target(body)?;
                let old = self.named_index(db, collection, &target.name, &target.id)?;
                let definition = body
                    .get_document("definition")
                    .map_err(|_| bad("updateSearchIndex needs a 'definition' document"))?;
                let specs = parse_definition(definition)?;
                if specs.iter().any(|s| s.write_outputs) {
                    self.authorize(Action::Update, db, collection, "updateSearchIndex")
                        .await?;
                }
                let earlier = registry.staged(db, collection, &old.name);
                let latest = earlier
                    .first()
                    .map_or(old.definition_version.0, |s| s.definition_version.0);
                // The staged parts hold change streams too: they count
                // towards the bounds while both definitions are kept.
                let listed = registry.list(db, collection);
                let serving = listed.iter().filter(|i| i.id == old.id).count();
                let on_collection = listed.len() - serving + serving.max(specs.len());
                if on_collection > MAX_SEARCH_INDEXES_PER_COLLECTION {
                    return Err(refusal(
                        Refused::PerCollection(MAX_SEARCH_INDEXES_PER_COLLECTION),
                        db,
                        collection,
                    ));
                }
                if (registry.all_maintained().len() + specs.len()).saturating_sub(earlier.len())
                    > config.max_search_indexes
                {
                    return Err(refusal(
                        Refused::Total(config.max_search_indexes),
                        db,
                        collection,
                    ));
                }
                let parts = self
                    .parts(
                        &old.id,
                        db,
                        collection,
                        &old.name,
                        definition,
                        specs,
                        latest + 1,
                    )
                    .await?;
                // Stored beside the serving definition first, so a restart
                // builds both; the promotion stores it alone.
                catalog::save_with_staged(&config, &old, Some(&parts[0])).await?;
                // A new definition means a new model of the data: any adapter
                // trained for the old one goes.
                crate::maintain::train::delete_stored(&config, &old.id).await?;
                // The old definition serves queries until the new one is
                // built (Atlas's staged index), then the new one takes its
                // place.
                if !crate::maintain::stage_update(&config, &registry, parts) {
                    // Dropped meanwhile: the entry just stored goes too.
                    catalog::delete(&config, &old.id).await?;
                    return Err(Error::client(
                        Code::INDEX_NOT_FOUND,
                        format!(
                            "search index '{}' was dropped from {db}.{collection}",
                            old.name
                        ),
                    ));
                }
                Ok(rawdoc! { "ok": 1.0 })
            }
            Admin::Drop => {
                let collection = collection_of(body, "dropSearchIndex")?;
                let target = parse_target(body)?;
                let index = self.named_index(db, collection, &target.name, &target.id)?;
                catalog::delete(&config, &index.id).await?;
                crate::maintain::train::delete_stored(&config, &index.id).await?;
                registry.remove(&index);
                if let Some(dir) = &config.data_dir {
                    crate::maintain::snapshot::remove_all(dir, &index.id);
                }
                tracing::info!(index = %index.name, namespace = %index.namespace(), "search index dropped");
                Ok(rawdoc! { "ok": 1.0 })
            }
            Admin::List => {
                let (collection, filter) = match body.get_str("listSearchIndexes") {
                    Ok(collection) => (collection, parse_list_filter(body)),
                    Err(_) => {
                        let collection = collection_of(body, "aggregate")?;
                        let stage = body
                            .get_array("pipeline")
                            .ok()
                            .and_then(|p| p.into_iter().flatten().next())
                            .and_then(|s| s.as_document())
                            .and_then(|s| s.get_document("$listSearchIndexes").ok());
                        let filter = stage
                            .map(parse_list_filter)
                            .unwrap_or(search_index::Target {
                                name: None,
                                id: None,
                            });
                        (collection, filter)
                    }
                };
                let all = registry.list(db, collection);
                let docs: Vec<RawDocumentBuf> = all
                    .iter()
                    .filter(|i| i.part == 0)
                    .filter(|i| filter.name.as_ref().is_none_or(|n| &i.name == n))
                    .filter(|i| filter.id.as_ref().is_none_or(|x| &i.id == x))
                    .map(|i| {
                        let parts: Vec<_> = all.iter().filter(|p| p.id == i.id).cloned().collect();
                        describe(&parts, &registry.staged(db, collection, &i.name))
                    })
                    .collect();
                let docs = match body.get_array("pipeline") {
                    Ok(stages) if stages.into_iter().nth(1).is_some() => {
                        self.run_later_stages(db, body, stages, docs).await?
                    }
                    _ => docs,
                };
                Ok(search_index::cursor_reply(
                    &format!("{db}.{collection}"),
                    docs,
                ))
            }
        }
    }

    /// The stages after `$listSearchIndexes`, run by the upstream over the
    /// listed documents (`{aggregate: 1, pipeline: [{$documents: docs},
    /// ...later]}`, MongoDB 5.1+) on the client's connection, with the
    /// command's `let`, `collation` and `comment`: whatever mongod accepts
    /// after a stage works, with mongod's answers and errors. The results
    /// come back in one batch; more than 16 MiB of them is refused
    /// (`BSONObjectTooLarge`, 10334).
    async fn run_later_stages(
        &mut self,
        db: &str,
        body: &RawDocument,
        stages: &bson::RawArray,
        docs: Vec<RawDocumentBuf>,
    ) -> Result<Vec<RawDocumentBuf>, Error> {
        let mut listed = RawArrayBuf::new();
        for d in docs {
            listed.push(d);
        }
        let mut pipeline = RawArrayBuf::new();
        pipeline.push(rawdoc! { "$documents": listed });
        for stage in stages.into_iter().skip(1) {
            let stage = stage.map_err(|e| bad(format!("malformed pipeline: {e}")))?;
            pipeline.push(stage.to_raw_bson());
        }
        let mut command = rawdoc! { "aggregate": 1, "pipeline": pipeline, "cursor": {} };
        for key in ["let", "collation", "comment"] {
            if let Some(v) = body.get(key).ok().flatten() {
                command.append(key, v.to_raw_bson());
            }
        }
        command.append("$db", db);
        let mut cursor = Cursor::open(&mut self.upstream, db, &command).await?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(batch) = cursor.next_batch().await? {
            for doc in batch {
                bytes += doc.as_bytes().len();
                if bytes > MAX_DOCUMENT_BYTES {
                    cursor.kill().await;
                    return Err(Error::client(
                        Code::relayed(10334, "BSONObjectTooLarge"),
                        "the results of $listSearchIndexes and its later stages exceed 16 MiB",
                    ));
                }
                out.push(doc);
            }
        }
        Ok(out)
    }

    /// Atlas's answer for an index command on a collection that does not
    /// exist: `createSearchIndexes`, and `updateSearchIndex` or
    /// `dropSearchIndex` of an index the proxy does not have, get
    /// `NamespaceNotFound` (26, mongod 7.0's wording) and create nothing
    /// (drivers suppress it for `dropSearchIndex`, by the index-management
    /// specification); `$listSearchIndexes` lists nothing, as it would
    /// anyway. Asked before the rights probes, which may create the
    /// collection on some servers, with `listCollections` restricted to
    /// collections the client has rights on (`authorizedCollections`), so
    /// the answer says nothing about collections it could not see (a
    /// collection it cannot see answers `Unauthorized`, never whether an
    /// index exists). Errors: `NamespaceNotFound` (26), `Unauthorized`
    /// (13), or what `listCollections` gave.
    async fn check_namespace(
        &mut self,
        admin: Admin,
        db: &str,
        body: &RawDocument,
    ) -> Result<(), Error> {
        let command = match admin {
            Admin::Create => "createSearchIndexes",
            Admin::Update => "updateSearchIndex",
            Admin::Drop => "dropSearchIndex",
            _ => return Ok(()),
        };
        let collection = collection_of(body, command)?;
        if admin != Admin::Create {
            let target = parse_target(body)?;
            let known = self
                .shared
                .registry
                .find(db, collection, target.name.as_deref(), target.id.as_deref())
                .is_some();
            if known {
                return Ok(());
            }
        }
        let list = rawdoc! {
            "listCollections": 1,
            "filter": { "name": collection },
            "nameOnly": true,
            "authorizedCollections": true,
            "$db": db,
        };
        let mut cursor = match Cursor::open(&mut self.upstream, db, &list).await {
            Ok(cursor) => cursor,
            // mongod lets anyone list the collections they have rights on;
            // a server that asks for `listCollections` too leaves the
            // answer to the rights probes that follow.
            Err(e) if e.code.code == 13 => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut exists = false;
        while let Some(batch) = cursor.next_batch().await? {
            exists |= !batch.is_empty();
        }
        if exists {
            return Ok(());
        }
        // Not listed: missing, or the client has no rights on it. Only a
        // client that may read the collection learns that it is missing
        // (a `find` probe creates nothing); any other gets `Unauthorized`,
        // whatever the index name, so names never leak.
        self.authorize(Action::Find, db, collection, command)
            .await?;
        Err(Error::client(
            Code::NAMESPACE_NOT_FOUND,
            format!("Collection '{db}.{collection}' does not exist."),
        ))
    }

    /// The parts of one index (one per vector field of its definition),
    /// with their models loaded, at definition version `version`.
    #[allow(clippy::too_many_arguments)]
    async fn parts(
        &self,
        id: &str,
        db: &str,
        collection: &str,
        name: &str,
        definition: &RawDocument,
        specs: Vec<crate::index::registry::IndexSpec>,
        version: i64,
    ) -> Result<Vec<Arc<SearchIndex>>, Error> {
        let mut loaded = Vec::with_capacity(specs.len());
        for mut spec in specs {
            let encoders = self.resolve_models(&mut spec).await?;
            loaded.push((spec, encoders));
        }
        Ok(SearchIndex::parts(
            id,
            db,
            collection,
            name,
            &definition.to_owned(),
            loaded,
            (version, bson::DateTime::now()),
        )
        .into_iter()
        .map(Arc::new)
        .collect())
    }

    /// Loads the models a semantic spec names and fixes its dimensions.
    async fn resolve_models(
        &self,
        spec: &mut crate::index::registry::IndexSpec,
    ) -> Result<Vec<Arc<crate::models::Model>>, Error> {
        let names: Vec<String> = spec.models.iter().map(|m| m.model.clone()).collect();
        self.ensure_models(&names).await?;
        let default = crate::models::DEFAULT_MODEL;
        if names.iter().any(|n| n == default) && self.shared.models.get(default).is_none() {
            // The default text model, registered under its name on first use.
            let def = crate::models::ModelDef::parse(
                &rawdoc! { "createModel": default, "kind": "text" },
                "createModel",
            )?;
            let model = self.load_model(def).await?;
            catalog::save_model(&self.shared.config, &model.def).await?;
            self.shared.models.insert(model);
        }
        crate::models::resolve(spec, &self.shared.models)
    }

    /// Asks the upstream, on the client's own connection, whether the client
    /// may have the proxy do this command for it. The rule: a client gets
    /// from the proxy only what it could do directly, so each command needs
    /// every right its later work uses on the collection it names:
    ///
    /// | command | rights on the collection |
    /// |---|---|
    /// | `createSearchIndexes`, `createSemanticIndex`, `updateSearchIndex` | `createIndex` and `find` (the build reads every document; models encode them); `update` too for `writeOutputs` (checked once parsed) |
    /// | `dropSearchIndex` | `createIndex` |
    /// | `createNeighbourhood` | `createIndex`, `find` and `update` (it writes `_like.<name>` into every document) |
    /// | `dropNeighbourhood` | `createIndex` and `update` (it unsets the field in every document) |
    /// | `listSearchIndexes`, `$listSearchIndexes` | `listIndexes` |
    /// | `listNeighbourhoods` | `listIndexes` and `find` (its `stale` count reads the documents) |
    /// | `evaluateSemanticIndex` | `listIndexes` and `find` (it reads documents) |
    ///
    /// Models belong to the deployment: `createModel`/`dropModel` need
    /// `createIndex`, `listModels` `listIndexes`, on the metadata
    /// database's `models` collection. Errors: `Unauthorized` (13) only.
    async fn check_privilege(
        &mut self,
        admin: Admin,
        db: &str,
        body: &RawDocument,
    ) -> Result<(), Error> {
        use Action::*;
        let (command, actions): (&str, &[Action]) = match admin {
            Admin::Create => ("createSearchIndexes", &[CreateIndex, Find]),
            Admin::CreateSemantic => ("createSemanticIndex", &[CreateIndex, Find]),
            Admin::Update => ("updateSearchIndex", &[CreateIndex, Find]),
            Admin::Drop => ("dropSearchIndex", &[CreateIndex]),
            Admin::CreateNeighbourhood => ("createNeighbourhood", &[CreateIndex, Find, Update]),
            Admin::DropNeighbourhood => ("dropNeighbourhood", &[CreateIndex, Update]),
            // Staleness is computed from the documents.
            Admin::ListNeighbourhoods => ("listNeighbourhoods", &[ListIndexes, Find]),
            Admin::Evaluate => ("evaluateSemanticIndex", &[ListIndexes, Find]),
            Admin::CreateModel | Admin::DropModel | Admin::ListModels => {
                let metadata = self.shared.config.metadata_db.clone();
                let action = if admin == Admin::ListModels {
                    ListIndexes
                } else {
                    CreateIndex
                };
                return self
                    .authorize(action, &metadata, "models", "model administration")
                    .await;
            }
            Admin::List => {
                if body.get_str("listSearchIndexes").is_ok() {
                    ("listSearchIndexes", &[ListIndexes])
                } else {
                    ("aggregate", &[ListIndexes])
                }
            }
        };
        let collection = collection_of(body, command)?;
        for action in actions {
            self.authorize(*action, db, collection, command).await?;
        }
        Ok(())
    }

    /// Whether the client's own connection may do `action` on
    /// `db.collection`, asked of the upstream with a command that needs
    /// exactly that right and touches no document (servers authorise a
    /// command before running it): `find` with `_id: {$in: []}`, an update
    /// matching `_id: {$in: []}`, an empty `createIndexes`, `listIndexes`.
    /// Only `Unauthorized` (13) refuses, with mongod's wording; any other
    /// answer (the collection does not exist yet, say) means the right is
    /// there. `command` names what the client asked for, in the message.
    pub(super) async fn authorize(
        &mut self,
        action: Action,
        db: &str,
        collection: &str,
        command: &str,
    ) -> Result<(), Error> {
        let probe = match action {
            Action::Find => rawdoc! {
                "find": collection, "filter": { "_id": { "$in": [] } },
                "limit": 1_i32, "singleBatch": true, "$db": db,
            },
            Action::Update => rawdoc! {
                "update": collection,
                "updates": [{ "q": { "_id": { "$in": [] } }, "u": { "$set": { "_likewise": true } } }],
                "$db": db,
            },
            Action::CreateIndex => {
                rawdoc! { "createIndexes": collection, "indexes": [], "$db": db }
            }
            Action::ListIndexes => rawdoc! { "listIndexes": collection, "$db": db },
        };
        // Fails closed: only a success, or an answer given after the
        // server authorised the probe, counts as the right. Anything else
        // (an invalid namespace, a dead connection) is the client's error.
        match upstream::command(&mut self.upstream, &probe).await {
            Ok(reply) => match write_error_code(&reply) {
                // An update refused inside its reply (`writeErrors`).
                Some(13) => Err(unauthorized(db, collection, command, action)),
                Some(_) => Err(Error::upstream(
                    Code::OPERATION_FAILED,
                    format!(
                        "likewise: cannot confirm the right to {} on {db}.{collection}",
                        action.name()
                    ),
                )),
                None => Ok(()),
            },
            Err(e) if e.code.code == 13 => Err(unauthorized(db, collection, command, action)),
            Err(e) if AUTHORISED_REFUSALS.contains(&e.code.code) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn named_index(
        &self,
        db: &str,
        collection: &str,
        name: &Option<String>,
        id: &Option<String>,
    ) -> Result<Arc<SearchIndex>, Error> {
        self.shared
            .registry
            .find(db, collection, name.as_deref(), id.as_deref())
            .ok_or_else(|| {
                Error::client(
                    Code::INDEX_NOT_FOUND,
                    format!(
                        "search index '{}' not found on {db}.{collection}",
                        name.as_deref().or(id.as_deref()).unwrap_or("")
                    ),
                )
            })
    }

    /// Answers the vector part and returns the commands to send upstream.
    pub(super) async fn vector_command(
        &mut self,
        kind: VectorKind,
        body: &RawDocument,
    ) -> Result<Rewritten, Error> {
        let mut session = InSession::of(body);
        let mut plans = self.plans(kind, body, &mut session).await?;
        // A filter read that began the client's transaction: the command
        // itself continues it.
        let continued;
        let body = if session.started_transaction() {
            continued = session.continuing(body);
            &continued
        } else {
            body
        };
        let fetch_only = match (kind, &plans[..]) {
            (VectorKind::Aggregate | VectorKind::Find, [plan]) => {
                rewrite::fetch_only(body, &plan.ranked, plan.exact_filter.as_deref())
            }
            _ => None,
        };
        let ranked = rewrite_for(kind, body, &plans);
        Ok(Rewritten {
            ranked,
            fetch_only: fetch_only.map(|command| (command, plans.swap_remove(0).ranked)),
        })
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
        if let Err(e) = upstream::command(&mut self.upstream, &kill).await {
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
        let plans = self
            .plans(kind, &inner_with_db, &mut InSession::of(&inner_with_db))
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
        let reply = upstream::command(&mut self.upstream, &upstream_explain).await?;
        let mut out = RawDocumentBuf::new();
        for (k, v) in reply.iter().flatten() {
            out.append(k, v.to_raw_bson());
        }
        let mut likewise = rawdoc! {
            "index": plan.index.as_ref().map_or("", |i| i.name.as_str()),
            "strategy": plan.strategy,
            "candidatesExamined": i64::try_from(plan.examined).unwrap_or(i64::MAX),
            "vectorsInIndex": i64::try_from(plan.index.as_ref().and_then(|i| i.data.read().ok().map(|d| d.index.len())).unwrap_or(0)).unwrap_or(i64::MAX),
            "results": i64::try_from(plan.ranked.ids.len()).unwrap_or(i64::MAX),
            "rewrittenCommand": rewritten,
        };
        if let Some(allowed) = plan.allowed {
            likewise.append("filterMatches", i64::try_from(allowed).unwrap_or(i64::MAX));
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
            && queries.iter().any(|(_, query)| query.atlas)
        {
            // Atlas refuses `$vectorSearch` in a transaction. The seed's
            // `$like` is served there: its filter is read in the
            // transaction (the ranking is of the committed vectors).
            return Err(Error::client(
                Code::relayed(263, "OperationNotSupportedInTransaction"),
                "$vectorSearch cannot be used in a multi-document transaction",
            ));
        }
        if queries.len() > MAX_VECTOR_STAGES {
            return Err(bad(format!(
                "a command may hold at most {MAX_VECTOR_STAGES} vector stages"
            )));
        }
        let mut plans = Vec::with_capacity(queries.len());
        for (collection, query) in queries {
            plans.push(self.plan(kind, &db, &collection, query, session).await?);
        }
        // Each score reference becomes a lookup carrying the ranked ids and
        // scores: a command that would grow past what a server takes is
        // refused before it is built.
        let per_reference = plans
            .iter()
            .map(|p| p.ranked.score_bytes())
            .max()
            .unwrap_or(0);
        let references = rewrite::score_references(body, crate::wire::MAX_BSON_DEPTH);
        let rewritten = body.as_bytes().len()
            + plans
                .iter()
                .map(|p| 3 * p.ranked.score_bytes())
                .sum::<usize>()
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

    async fn plan(
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
        if query.limit > max {
            return Err(bad(format!(
                "this query asks for {} results; this proxy returns at most {max} per vector \
                 query (--max-vector-results)",
                query.limit
            )));
        }
        // The client's right to read the collection comes first, before any
        // index is consulted: answers, errors and explain output all say
        // something about the documents. A filter is read on the client's
        // connection anyway; without one, a probe asks.
        let allowed = match &query.filter {
            Some(filter) => Some(self.matching_ids(&db, &collection, filter, session).await?),
            None => {
                self.authorize(Action::Find, &db, &collection, kind.command())
                    .await?;
                None
            }
        };
        let index = match self.resolve(&db, &collection, &query) {
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
                });
            }
            Err(e) => return Err(e),
        };
        let (vector, encoding) = query_vector(&index, &query).await?;
        let allowed_count = allowed.as_ref().map(|ids| ids.ids.len());
        let searcher = index.clone();
        let (ranked, strategy, examined, query) = tokio::task::spawn_blocking(move || {
            let (ranked, strategy, examined) = search(&searcher, &vector, &query, allowed.as_ref());
            (ranked, strategy, examined, query)
        })
        .await
        .map_err(|e| Error::internal(format!("vector search failed: {e}")))?;
        self.shared
            .metrics
            .vector_latency
            .observe(started.elapsed());
        self.shared.metrics.strategy(strategy);
        Ok(Plan {
            index: Some(index),
            collection,
            strategy,
            examined,
            allowed: allowed_count,
            ranked,
            exact_filter: query.filter,
            encoding,
        })
    }

    fn resolve(
        &self,
        db: &str,
        collection: &str,
        query: &VectorQuery,
    ) -> Result<Arc<SearchIndex>, Error> {
        let registry = &self.shared.registry;
        let index = match &query.index {
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
                match &query.path {
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
        if let Some(path) = &query.path {
            if path != &index.spec.path {
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
        let mut cursor = Cursor::open(&mut self.upstream, db, &find).await?;
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

/// Most owned vector stages one command may hold (each is a search).
const MAX_VECTOR_STAGES: usize = 64;

/// A server's document limit (16 MiB): the largest command the proxy
/// builds for the upstream, and the most listing results it gathers.
const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

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
struct Encoding {
    model: String,
    key: String,
    truncated: bool,
}

/// The prepared query vector, encoding content with the index's models
/// on a blocking thread when the query gives content rather than numbers.
async fn query_vector(
    index: &Arc<SearchIndex>,
    query: &VectorQuery,
) -> Result<(Vec<f32>, Option<Encoding>), Error> {
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
            let vector = spec
                .similarity
                .prepare(values.clone())
                .ok_or_else(|| bad("query vector cannot be compared (all zeros, or not finite)"))?;
            return Ok((vector, None));
        }
        QueryVector::OfDocument(id) => return Ok((stored_vector(index, id)?, None)),
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
                        return Ok((stored_vector(index, &id.to_raw_bson())?, None));
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
        vector,
        Some(Encoding {
            model: model_name,
            key,
            truncated,
        }),
    ))
}

/// The vector stored for the document with this `_id`.
fn stored_vector(index: &SearchIndex, id: &bson::RawBson) -> Result<Vec<f32>, Error> {
    let data = index.data.read().unwrap_or_else(|e| e.into_inner());
    data.ids
        .key_of(id.as_raw_bson_ref())
        .and_then(|key| data.index.vector(key))
        .map(<[f32]>::to_vec)
        .ok_or_else(|| {
            Error::client(
                Code::BAD_VALUE,
                format!("no indexed vector for the document with _id {id:?}"),
            )
        })
}

/// Runs the search on a blocking thread's behalf: exact over the allowed
/// documents when the filter is selective, filtered graph search when it is
/// broad (falling back to exact if that returns fewer than it could). The
/// hits become `_id`s under the same lock: a concurrent update re-keys a
/// document, and its old key must not be looked up after.
fn search(
    index: &SearchIndex,
    vector: &[f32],
    query: &VectorQuery,
    allowed_ids: Option<&IdSet>,
) -> (Ranked, &'static str, usize) {
    let data = index.data.read().unwrap_or_else(|e| e.into_inner());
    // Ids become keys under the same lock as the search: a concurrent
    // update may re-key a document, never between these two steps.
    let allowed = allowed_ids.map(|ids| {
        KeySet::from_keys(
            ids.ids
                .iter()
                .filter_map(|id| data.ids.key_of(id.as_raw_bson_ref())),
        )
    });
    let allowed = allowed.as_ref();
    let similarity = index.spec.similarity;
    let index = data.index.as_ref();
    let k = query.limit;
    let exact = |keys: &[u32]| (exact_among(index, vector, k, keys), keys.len());
    let ((hits, examined), strategy) = match (allowed, query.exact) {
        (Some(a), true) => (exact(a.keys()), "exact scan of filter matches"),
        (None, true) => (
            exact(&data.ids.live_keys().collect::<Vec<_>>()),
            "exact scan",
        ),
        (Some(a), false) => {
            let (hits, strategy, examined) =
                search_allowed(index, vector, k, query.num_candidates, a);
            ((hits, examined), strategy)
        }
        (None, false) => (
            index.search_counted(vector, k, query.num_candidates, None),
            "graph search",
        ),
    };
    let dims = index.dims();
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
    (to_ranked(&data.ids, score, &hits), strategy, examined)
}

fn to_ranked(ids: &IdMap, score: impl Fn(f32) -> f64, hits: &[Hit]) -> Ranked {
    let mut ranked = Ranked::default();
    for hit in hits {
        if let Some(id) = ids.id_of(hit.key) {
            ranked.ids.push(id.clone());
            ranked.scores.push(score(hit.distance));
        }
    }
    ranked
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

fn without(doc: &RawDocument, key: &str) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for (k, v) in doc.iter().flatten() {
        if k != key {
            out.append(k, v.to_raw_bson());
        }
    }
    out
}

/// Errors a server gives only after authorising a probe, which therefore
/// confirm the right: `NamespaceNotFound` (26: `listIndexes` of a
/// collection not created yet) and `BadValue` (2: mongod refuses an empty
/// `createIndexes` once authorised).
const AUTHORISED_REFUSALS: &[i32] = &[26, 2];

/// mongod's rule for database names: non-empty, shorter than 64 bytes,
/// none of `/\. "$*<>:|?` or NUL. (Also what keeps `a.b`+`c` and `a`+`b.c`
/// apart.)
fn check_db_name(db: &str) -> Result<(), Error> {
    let bad_char = |c: char| "/\\. \"$*<>:|?\0".contains(c);
    if db.is_empty() || db.len() >= 64 || db.chars().any(bad_char) {
        return Err(Error::client(
            Code::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

/// The error for an index the registry refused.
fn refusal(refused: Refused, db: &str, collection: &str) -> Error {
    match refused {
        Refused::Exists(existing) => Error::client(
            Code::INDEX_ALREADY_EXISTS,
            format!(
                "search index '{}' already exists on {db}.{collection}",
                existing.name
            ),
        ),
        Refused::PerCollection(most) => Error::client(
            Code::CANNOT_CREATE_INDEX,
            format!(
                "add search index fails, too many search indexes for {db}.{collection}: \
                 at most {most}"
            ),
        ),
        Refused::Total(most) => Error::client(
            Code::CANNOT_CREATE_INDEX,
            format!(
                "add search index fails: this proxy serves at most {most} search indexes \
                 (--max-search-indexes), each holding an upstream connection"
            ),
        ),
    }
}

/// A right the proxy checks on the client's connection before acting for it
/// (MongoDB's privilege actions of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Find,
    Update,
    CreateIndex,
    ListIndexes,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Find => "find",
            Action::Update => "update",
            Action::CreateIndex => "createIndex",
            Action::ListIndexes => "listIndexes",
        }
    }
}

/// mongod's refusal, naming nothing the client could not already name.
fn unauthorized(db: &str, collection: &str, command: &str, action: Action) -> Error {
    Error::client(
        Code::relayed(13, "Unauthorized"),
        format!(
            "not authorized on {db} to execute command {command} on {collection}: \
             it needs the {} action",
            action.name()
        ),
    )
}

/// The code of the first `writeErrors` entry of a write's reply.
fn write_error_code(reply: &RawDocument) -> Option<i32> {
    reply
        .get_array("writeErrors")
        .ok()?
        .into_iter()
        .flatten()
        .next()?
        .as_document()?
        .get_i32("code")
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_follow_mongods_rule() {
        for good in ["app", "B", "likewise", "a-b_c1"] {
            assert!(check_db_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a.b",
            "a b",
            "a/b",
            "a\\b",
            "a$b",
            "a\"b",
            "a\0b",
            &"x".repeat(64),
        ] {
            let err = check_db_name(bad).unwrap_err();
            assert_eq!(err.code.code, 73, "{bad:?}");
        }
    }
}
