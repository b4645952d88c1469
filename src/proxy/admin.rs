//! Search-index administration (`createSearchIndexes`, `updateSearchIndex`,
//! `dropSearchIndex`, `$listSearchIndexes` and likewise's own admin
//! commands), answered by the proxy after the client's rights are checked
//! on its own connection.

use super::for_client::*;
use crate::command::search_index::{
    self, describe, parse_create, parse_definition, parse_list_filter, parse_target,
};
use crate::command::Admin;
use crate::error::{Code, Error};
use crate::maintain::{build, catalog};
use crate::registry::{Refused, SearchIndex};
use crate::upstream::pinned::Cursor;
use bson::{rawdoc, RawArrayBuf, RawDocument, RawDocumentBuf};
use std::sync::Arc;

/// Most search indexes one collection may have (mongod's bound on a
/// collection's indexes): each keeps a change stream and an index in
/// memory.
pub const MAX_SEARCH_INDEXES_PER_COLLECTION: usize = 64;

impl ForClient<'_> {
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
                let limit = crate::wire::integer(body.get("limit").ok().flatten())
                    .filter(|n| *n > 0)
                    .map_or(20_000, |n| n.min(200_000) as usize);
                // A fine-tuned version is compared with the model it was
                // made from.
                let parent = index
                    .encoders
                    .first()
                    .and_then(|m| m.def.lineage.as_ref())
                    .and_then(|l| self.shared.models.get(&l.parent));
                crate::maintain::train::evaluate(
                    crate::upstream::Reader::Pinned(self.upstream),
                    &index,
                    &splitter,
                    &metrics,
                    &filter,
                    limit,
                    parent,
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
                        tokio::spawn(build::build(
                            config.clone(),
                            registry.clone(),
                            self.shared.models.clone(),
                            part,
                        ));
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
                if definition.get("models").ok().flatten().is_some() {
                    search_index::check_semantic_keys(definition, false)?;
                }
                let specs = parse_definition(definition)?;
                if specs.iter().any(|s| s.text.is_some()) != old.spec.text.is_some() {
                    // Atlas keeps an index's type for its life.
                    return Err(Error::client(
                        Code::INVALID_OPTIONS,
                        format!(
                            "search index '{}' is a {} index: an update cannot change its type",
                            old.name,
                            if old.spec.text.is_some() {
                                "search"
                            } else {
                                "vectorSearch"
                            }
                        ),
                    ));
                }
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
                if !crate::maintain::stage_update(
                    &config,
                    &registry,
                    &self.shared.models,
                    parts,
                    None,
                ) {
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
                crate::maintain::delete(&config, &registry, &index).await?;
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
        let mut cursor = Cursor::open(self.upstream, db, &command).await?;
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
        let mut cursor = match Cursor::open(self.upstream, db, &list).await {
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
        specs: Vec<crate::registry::IndexSpec>,
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
        spec: &mut crate::registry::IndexSpec,
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
        spec.resolve_models(&self.shared.models)
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
