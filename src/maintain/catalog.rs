//! Index definitions persisted in the upstream, in
//! `<metadata db>.search_indexes` (`likewise.search_indexes` by default):
//! one document per index, `{_id: <index id>, db, collection, name, type,
//! definition, _sig}`. The upstream is the source of truth: a restarted
//! proxy, or a second proxy on the same upstream, loads them and rebuilds.
//!
//! Stored definitions make the proxy act with its own rights (read a
//! collection, call a model, write `_like` lists), so only those the proxy
//! wrote are trusted: every document written here carries `_sig`, an
//! HMAC-SHA-256 (RFC 2104) under [`Config::metadata_key`] of the metadata
//! database's and the collection's names and the document's BSON bytes
//! without `_sig`; reads skip, with a warning, any document whose `_sig` is
//! missing or wrong (one planted by a client that can write the metadata
//! database). A document the proxy once wrote and later replaced or
//! deleted still verifies if someone puts it back: replay is not detected.

use crate::command::search_index::parse_definition;
use crate::config::Config;
use crate::error::{Code, Error};
use crate::maintain::neighbourhood::Neighbourhood;
use crate::models::{ModelDef, Models};
use crate::registry::SearchIndex;
use crate::upstream;
use bson::{rawdoc, RawDocument, RawDocumentBuf};

/// The metadata collection of search index definitions.
pub const INDEXES: &str = "search_indexes";
const COLLECTION: &str = INDEXES;

/// The field holding a stored document's signature.
const SIGNATURE: &str = "_sig";

/// HMAC-SHA-256 under the metadata key of the metadata database's name,
/// `collection`, each followed by a zero byte, and `doc`'s bytes without
/// its `_sig` field, ready to finalise or verify.
fn mac(config: &Config, collection: &str, doc: &RawDocument) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut unsigned = RawDocumentBuf::new();
    for (k, v) in doc.iter().flatten() {
        if k != SIGNATURE {
            unsigned.append(k, v.to_raw_bson());
        }
    }
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&config.metadata_key)
        .expect("HMAC takes keys of any length");
    mac.update(config.metadata_db.as_bytes());
    mac.update(&[0]);
    mac.update(collection.as_bytes());
    mac.update(&[0]);
    mac.update(unsigned.as_bytes());
    mac
}

/// `doc` with its `_sig` appended.
fn signed(config: &Config, collection: &str, mut doc: RawDocumentBuf) -> RawDocumentBuf {
    use hmac::Mac;
    let sig = mac(config, collection, &doc).finalize();
    doc.append(
        SIGNATURE,
        bson::RawBson::Binary(bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: sig.into_bytes().to_vec(),
        }),
    );
    doc
}

/// Whether `doc` carries the signature this proxy's key gives it
/// (compared in constant time).
fn authentic(config: &Config, collection: &str, doc: &RawDocument) -> bool {
    use hmac::Mac;
    doc.get_binary(SIGNATURE).is_ok_and(|given| {
        mac(config, collection, doc)
            .verify_slice(given.bytes)
            .is_ok()
    })
}

/// Inserts or replaces the document `_id: id` of a metadata collection,
/// signed.
pub async fn upsert(
    config: &Config,
    collection: &str,
    id: &str,
    doc: RawDocumentBuf,
) -> Result<(), Error> {
    let doc = signed(config, collection, doc);
    let conn = upstream::connect(config).await?;
    let body = rawdoc! {
        "update": collection,
        "updates": [{ "q": { "_id": id }, "u": doc, "upsert": true }],
        "$db": config.metadata_db.as_str(),
    };
    let reply = conn.command(&body).await?;
    write_errors(&reply)
}

/// Inserts `doc`, signed, into a metadata collection: `false` when a
/// document with its `_id` exists (the upstream's duplicate key error,
/// 11000), so two proxies cannot both claim one `_id`.
pub async fn insert(config: &Config, collection: &str, doc: RawDocumentBuf) -> Result<bool, Error> {
    let doc = signed(config, collection, doc);
    let conn = upstream::connect(config).await?;
    let body = rawdoc! {
        "insert": collection,
        "documents": [doc],
        "$db": config.metadata_db.as_str(),
    };
    let reply = conn.command(&body).await?;
    if duplicate(&reply) {
        return Ok(false);
    }
    write_errors(&reply).map(|()| true)
}

/// Whether a write's reply reports a duplicate key (11000) among its
/// `writeErrors`.
pub(crate) fn duplicate(reply: &RawDocument) -> bool {
    reply.get_array("writeErrors").is_ok_and(|errors| {
        errors
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_document())
            .any(|e| crate::wire::integer(e.get("code").ok().flatten()) == Some(11000))
    })
}

/// Deletes the document `_id: id` of a metadata collection (if any).
pub async fn remove(config: &Config, collection: &str, id: &str) -> Result<(), Error> {
    let conn = upstream::connect(config).await?;
    let body = rawdoc! {
        "delete": collection,
        "deletes": [{ "q": { "_id": id }, "limit": 1 }],
        "$db": config.metadata_db.as_str(),
    };
    let reply = conn.command(&body).await?;
    write_errors(&reply)
}

/// Every document of a metadata collection matching `filter` that this
/// proxy's key signed; others are logged and skipped.
pub async fn find(
    config: &Config,
    collection: &str,
    filter: RawDocumentBuf,
) -> Result<Vec<RawDocumentBuf>, Error> {
    let conn = upstream::connect(config).await?;
    let db = config.metadata_db.as_str();
    let body = rawdoc! { "find": collection, "filter": filter, "$db": db };
    let mut cursor = conn.cursor(&body).await?;
    let mut out = Vec::new();
    while let Some(batch) = cursor.next_batch().await? {
        for doc in batch {
            if authentic(config, collection, &doc) {
                out.push(doc);
            } else {
                let id = doc
                    .get("_id")
                    .ok()
                    .flatten()
                    .map(|id| format!("{:?}", id.to_raw_bson()))
                    .unwrap_or_default();
                tracing::warn!(
                    collection = %format!("{db}.{collection}"),
                    id = %id,
                    "ignoring a stored definition this proxy did not write (its _sig is missing \
                     or wrong: written by someone else, or under another metadata key)"
                );
            }
        }
    }
    Ok(out)
}

/// Inserts or replaces the stored definition of `index` (any staged one
/// is forgotten).
pub async fn save(config: &Config, index: &SearchIndex) -> Result<(), Error> {
    save_with_staged(config, index, None).await
}

/// Inserts or replaces the stored definition of `serving`, with the
/// definition `updateSearchIndex` staged to replace it (`staged:
/// {definition, definitionVersion}`), so that a restart builds both again
/// and the serving one keeps answering until the staged one is ready.
pub async fn save_with_staged(
    config: &Config,
    serving: &SearchIndex,
    staged: Option<&SearchIndex>,
) -> Result<(), Error> {
    let version = |index: &SearchIndex| {
        rawdoc! {
            "version": index.definition_version.0,
            "createdAt": index.definition_version.1,
        }
    };
    let mut doc = rawdoc! {
        "_id": serving.id.as_str(),
        "db": serving.db.as_str(),
        "collection": serving.collection.as_str(),
        "name": serving.name.as_str(),
        "type": "vectorSearch",
        "definition": serving.definition.clone(),
        "definitionVersion": version(serving),
    };
    if let Some(staged) = staged {
        doc.append(
            "staged",
            rawdoc! { "definition": staged.definition.clone(), "definitionVersion": version(staged) },
        );
    }
    upsert(config, COLLECTION, &serving.id, doc).await
}

pub async fn delete(config: &Config, id: &str) -> Result<(), Error> {
    remove(config, COLLECTION, id).await
}

/// The first of a write's `writeErrors`, as an error (`Ok` without any).
pub(crate) fn write_errors(reply: &RawDocument) -> Result<(), Error> {
    match reply.get_array("writeErrors") {
        Ok(errors) => {
            let first = errors
                .into_iter()
                .next()
                .and_then(|e| e.ok())
                .and_then(|e| e.as_document())
                .and_then(|e| e.get_str("errmsg").ok())
                .unwrap_or("write error");
            Err(Error::upstream(
                Code::OPERATION_FAILED,
                format!("likewise: storing index metadata failed: {first}"),
            ))
        }
        Err(_) => Ok(()),
    }
}

/// One stored index: the parts of its serving definition (one per vector
/// field: see `search_index::parse_definition`), and those of a
/// definition staged to replace it (empty when none is).
pub struct Stored {
    pub serving: Vec<SearchIndex>,
    pub staged: Vec<SearchIndex>,
}

/// Every stored definition, as indexes ready to build, with their models
/// from `models`. Entries that no longer parse, or name a model that is
/// gone, are logged and skipped (a staged definition that no longer
/// parses is dropped, the serving one kept).
pub async fn load(config: &Config, models: &Models) -> Result<Vec<Stored>, Error> {
    let mut out = Vec::new();
    for doc in find(config, COLLECTION, RawDocumentBuf::new()).await? {
        let serving = match parts(&doc, &doc, models) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(error = %e, "skipping a stored index definition");
                continue;
            }
        };
        let staged = match doc.get_document("staged") {
            Ok(staged) => parts(&doc, staged, models).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "dropping a stored staged index definition");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        out.push(Stored { serving, staged });
    }
    Ok(out)
}

/// The parts of the definition in `holder` (the entry itself, or its
/// `staged` document), named by the entry.
pub(crate) fn parts(
    doc: &RawDocument,
    holder: &RawDocument,
    models: &Models,
) -> Result<Vec<SearchIndex>, Error> {
    let field = |name: &str| {
        doc.get_str(name)
            .map_err(|_| Error::internal(format!("stored index definition lacks '{name}'")))
    };
    let definition = holder
        .get_document("definition")
        .map_err(|_| Error::internal("stored index definition lacks 'definition'"))?;
    // Written by every version that stores `definitionVersion`; older
    // entries start again at 0.
    let version = holder.get_document("definitionVersion").ok().and_then(|v| {
        Some((
            v.get_i64("version").ok()?,
            v.get_datetime("createdAt").ok()?,
        ))
    });
    let mut specs = Vec::new();
    for mut spec in parse_definition(definition)? {
        let encoders = spec.resolve_models(models)?;
        specs.push((spec, encoders));
    }
    Ok(SearchIndex::parts(
        field("_id")?,
        field("db")?,
        field("collection")?,
        field("name")?,
        &definition.to_owned(),
        specs,
        version.unwrap_or((0, bson::DateTime::now())),
    ))
}

const MODELS: &str = "models";

/// Stores a model definition (replacing one of the same name).
pub async fn save_model(config: &Config, def: &ModelDef) -> Result<(), Error> {
    upsert(config, MODELS, &def.name, def.to_doc()).await
}

/// Stores a new model definition under a name no stored model has:
/// `false` when one has it (another proxy claimed it first).
pub async fn insert_model(config: &Config, def: &ModelDef) -> Result<bool, Error> {
    insert(config, MODELS, def.to_doc()).await
}

pub async fn delete_model(config: &Config, name: &str) -> Result<(), Error> {
    remove(config, MODELS, name).await
}

/// Every stored model definition. Entries that no longer parse are logged
/// and skipped.
pub async fn load_models(config: &Config) -> Result<Vec<ModelDef>, Error> {
    let mut out = Vec::new();
    for doc in find(config, MODELS, RawDocumentBuf::new()).await? {
        match ModelDef::parse(&doc, "_id") {
            Ok(def) => out.push(def),
            Err(e) => tracing::warn!(error = %e, "skipping a stored model definition"),
        }
    }
    Ok(out)
}

const NEIGHBOURHOODS: &str = "neighbourhoods";

/// Stores a neighbourhood definition.
pub async fn save_neighbourhood(config: &Config, nb: &Neighbourhood) -> Result<(), Error> {
    let id = format!("{}.{}.{}", nb.db, nb.collection, nb.name);
    let doc = rawdoc! {
        "_id": id.as_str(),
        "db": nb.db.as_str(),
        "collection": nb.collection.as_str(),
        "name": nb.name.as_str(),
        "semantic_index": nb.index_name.as_str(),
        "n": i64::try_from(nb.n).unwrap_or(i64::MAX),
    };
    upsert(config, NEIGHBOURHOODS, &id, doc).await
}

pub async fn delete_neighbourhood(config: &Config, nb: &Neighbourhood) -> Result<(), Error> {
    let id = format!("{}.{}.{}", nb.db, nb.collection, nb.name);
    remove(config, NEIGHBOURHOODS, &id).await
}

/// Every stored neighbourhood definition.
pub async fn load_neighbourhoods(config: &Config) -> Result<Vec<Neighbourhood>, Error> {
    let mut out = Vec::new();
    for doc in find(config, NEIGHBOURHOODS, RawDocumentBuf::new()).await? {
        let text = |k: &str| doc.get_str(k).ok();
        let n = crate::wire::integer(doc.get("n").ok().flatten());
        match (
            text("db"),
            text("collection"),
            text("name"),
            text("semantic_index"),
            n,
        ) {
            (Some(d), Some(c), Some(name), Some(index), Some(n)) if n > 0 => {
                out.push(Neighbourhood::new(
                    d,
                    c,
                    name,
                    index,
                    usize::try_from(n).unwrap_or(10),
                ));
            }
            _ => tracing::warn!("skipping a stored neighbourhood definition"),
        }
    }
    Ok(out)
}
