//! What a read command reads, for the rights a `mongos`-style router
//! checks before reading for a client as itself
//! ([`crate::upstream::delegate`]).
//!
//! mongod authorises `find`, `count` and `distinct` by the `find` action on
//! their collection, and `aggregate` by `find` on every collection its
//! pipeline reads documents of: its own, and each `$lookup` / `$graphLookup`
//! `from` and `$unionWith` `coll`, sub-pipelines (`$lookup`, `$unionWith`,
//! `$facet`) included (the server's `AggregationRequest` privilege rules;
//! a view needs the right on the view only, as here). Stages that need any
//! other right (`$collStats`, `$indexStats`, `$currentOp`, `$changeStream`,
//! `$listSessions`, `$planCacheStats`, `$out`, `$merge`, …), the proxy's own
//! admin stages, anything unknown, and internal options (`$_…` fields) are
//! not listed: such a command is not read for the client as the proxy at
//! all, it stays on the client's own connection.

use crate::wire::msg;
use bson::{RawArray, RawBsonRef, RawDocument};

/// Most distinct collections one command may name to be read as the
/// proxy (more stays on the client's connection).
const MAX_COLLECTIONS: usize = 64;

/// Stages that read nothing beyond their input documents.
const PLAIN_STAGES: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$group",
    "$sort",
    "$limit",
    "$skip",
    "$count",
    "$unwind",
    "$bucket",
    "$bucketAuto",
    "$sortByCount",
    "$replaceRoot",
    "$replaceWith",
    "$sample",
    "$redact",
    "$densify",
    "$fill",
    "$setWindowFields",
    "$geoNear",
    "$documents",
    // Answered by the proxy from its index, then a fetch of the same
    // collection (`find` on it, as for any read of it).
    "$vectorSearch",
    "$search",
];

/// Fields any of the four commands may carry: the generic arguments a
/// driver sends (MongoDB's "generic command arguments").
const GENERIC_FIELDS: &[&str] = &[
    "$db",
    "lsid",
    "$clusterTime",
    "$readPreference",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "maxTimeMS",
    "readConcern",
    "comment",
];

/// Each command's own public fields (mongod's `find`, `count`, `distinct`
/// and `aggregate` command specifications).
fn command_fields(name: &str) -> &'static [&'static str] {
    match name {
        "find" => &[
            "find",
            "filter",
            "sort",
            "projection",
            "hint",
            "skip",
            "limit",
            "batchSize",
            "singleBatch",
            "max",
            "min",
            "returnKey",
            "showRecordId",
            "tailable",
            "oplogReplay",
            "noCursorTimeout",
            "awaitData",
            "allowPartialResults",
            "collation",
            "allowDiskUse",
            "let",
        ],
        "count" => &["count", "query", "limit", "skip", "hint", "collation"],
        "distinct" => &["distinct", "key", "query", "collation", "hint"],
        "aggregate" => &[
            "aggregate",
            "pipeline",
            "cursor",
            "explain",
            "allowDiskUse",
            "hint",
            "collation",
            "let",
        ],
        _ => &[],
    }
}

/// The collections (of the command's database) a `find`, `count`,
/// `distinct` or `aggregate` reads documents of, each once, in order of
/// appearance; `None` when the command needs any right other than `find`
/// on them, is not one of those four, carries a field outside their
/// public ones (internal options included), or names a field twice
/// anywhere this reads (servers differ on which of two they take).
pub fn collections_read(body: &RawDocument) -> Option<Vec<String>> {
    let name = msg::first_key(body)?;
    let own = command_fields(name);
    if own.is_empty() || !unique_keys(body)? {
        return None;
    }
    let known = |key: &str| own.contains(&key) || GENERIC_FIELDS.contains(&key);
    if !body.iter().flatten().all(|(key, _)| known(key)) {
        return None;
    }
    let mut out = Vec::new();
    add(&mut out, body.get_str(name).ok()?)?;
    if name == "aggregate" {
        pipeline(&mut out, body.get_array("pipeline").ok()?)?;
    }
    Some(out)
}

/// Whether no key of `doc` appears twice (`None` if it is malformed). At
/// most 64 keys are compared pairwise; a longer document counts as
/// repeating (no spec read here has that many).
fn unique_keys(doc: &RawDocument) -> Option<bool> {
    let mut keys = Vec::new();
    for entry in doc {
        let (key, _) = entry.ok()?;
        if keys.len() == 64 || keys.contains(&key) {
            return Some(false);
        }
        keys.push(key);
    }
    Some(true)
}

/// A stage's spec as a document whose keys are all distinct.
fn spec_document<'a>(spec: RawBsonRef<'a>) -> Option<&'a RawDocument> {
    let spec = spec.as_document()?;
    unique_keys(spec)?.then_some(spec)
}

fn add(out: &mut Vec<String>, collection: &str) -> Option<()> {
    if collection.is_empty() {
        return None;
    }
    if !out.iter().any(|c| c == collection) {
        if out.len() == MAX_COLLECTIONS {
            return None;
        }
        out.push(collection.to_string());
    }
    Some(())
}

/// Adds what each stage of `stages` reads; `None` at a stage outside the
/// rules above. Nesting is bounded by the request's depth check.
fn pipeline(out: &mut Vec<String>, stages: &RawArray) -> Option<()> {
    for stage in stages {
        let stage = stage.ok()?.as_document()?;
        let mut entries = stage.iter();
        let (name, spec) = entries.next()?.ok()?;
        if entries.next().is_some() {
            return None;
        }
        match name {
            "$lookup" => {
                let spec = spec_document(spec)?;
                match spec.get("from").ok()? {
                    Some(RawBsonRef::String(from)) => add(out, from)?,
                    None => {}
                    Some(_) => return None,
                }
                if let Some(sub) = spec.get("pipeline").ok()? {
                    pipeline(out, sub.as_array()?)?;
                }
            }
            "$graphLookup" => add(out, spec_document(spec)?.get_str("from").ok()?)?,
            "$unionWith" => match spec {
                RawBsonRef::String(coll) => add(out, coll)?,
                RawBsonRef::Document(_) => {
                    let spec = spec_document(spec)?;
                    match spec.get("coll").ok()? {
                        Some(RawBsonRef::String(coll)) => add(out, coll)?,
                        None => {}
                        Some(_) => return None,
                    }
                    if let Some(sub) = spec.get("pipeline").ok()? {
                        pipeline(out, sub.as_array()?)?;
                    }
                }
                _ => return None,
            },
            "$facet" => {
                for facet in spec_document(spec)? {
                    pipeline(out, facet.ok()?.1.as_array()?)?;
                }
            }
            plain if PLAIN_STAGES.contains(&plain) => {}
            _ => return None,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn lists_every_collection_a_pipeline_reads() {
        let body = rawdoc! {
            "aggregate": "a",
            "pipeline": [
                { "$match": { "x": 1 } },
                { "$lookup": { "from": "b", "localField": "x", "foreignField": "y", "as": "j",
                    "pipeline": [{ "$unionWith": { "coll": "c", "pipeline": [
                        { "$graphLookup": { "from": "d", "startWith": "$x", "connectFromField": "x",
                            "connectToField": "y", "as": "g" } }] } }] } },
                { "$facet": { "f": [{ "$unionWith": "e" }, { "$unionWith": "a" }] } },
            ],
            "cursor": {},
            "$db": "db",
        };
        assert_eq!(collections_read(&body).unwrap(), ["a", "b", "c", "d", "e"]);
        let find = rawdoc! { "find": "a", "filter": {}, "$db": "db" };
        assert_eq!(collections_read(&find).unwrap(), ["a"]);
    }

    #[test]
    fn anything_needing_another_right_is_not_listed() {
        let stage = |stage: bson::RawDocumentBuf| {
            collections_read(&rawdoc! { "aggregate": "a", "pipeline": [stage], "cursor": {} })
        };
        assert!(stage(rawdoc! { "$collStats": {} }).is_none());
        assert!(stage(rawdoc! { "$indexStats": {} }).is_none());
        assert!(stage(rawdoc! { "$changeStream": {} }).is_none());
        assert!(stage(rawdoc! { "$out": "b" }).is_none());
        assert!(stage(rawdoc! { "$listSearchIndexes": {} }).is_none());
        assert!(stage(rawdoc! { "$searchMeta": {} }).is_none());
        assert!(
            stage(rawdoc! { "$lookup": { "from": { "db": "config", "coll": "x" } } }).is_none()
        );
        assert!(stage(rawdoc! { "$facet": { "f": [{ "$currentOp": {} }] } }).is_none());
        assert!(stage(rawdoc! { "$match": {}, "$limit": 1 }).is_none());
        // Database-level aggregation, internal options, other commands.
        assert!(collections_read(&rawdoc! { "aggregate": 1, "pipeline": [] }).is_none());
        assert!(collections_read(&rawdoc! { "find": "a", "$_requestResumeToken": true }).is_none());
        assert!(collections_read(&rawdoc! { "listIndexes": "a" }).is_none());
        assert!(collections_read(&rawdoc! { "find": "a", "$audit": {} }).is_none());
        assert!(
            collections_read(&rawdoc! { "aggregate": "a", "pipeline": [], "exchange": {} })
                .is_none()
        );
        // A field named twice: servers differ on which one they take.
        let mut twice = rawdoc! { "find": "a", "filter": {} };
        twice.append("find", "b");
        assert!(collections_read(&twice).is_none());
        let mut lookup =
            rawdoc! { "from": "open", "localField": "x", "foreignField": "y", "as": "j" };
        lookup.append("from", "secret");
        assert!(stage(rawdoc! { "$lookup": lookup }).is_none());
        let mut union = rawdoc! { "coll": "open" };
        union.append("coll", "secret");
        assert!(stage(rawdoc! { "$unionWith": union }).is_none());
        let many: Vec<_> = (0..=MAX_COLLECTIONS)
            .map(|i| rawdoc! { "$unionWith": format!("c{i}") })
            .collect();
        let mut stages = bson::RawArrayBuf::new();
        for s in many {
            stages.push(s);
        }
        assert!(
            collections_read(&rawdoc! { "aggregate": "a", "pipeline": stages, "cursor": {} })
                .is_none()
        );
    }
}
