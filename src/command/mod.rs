//! Typed views over raw commands. Each command the proxy owns has a file
//! here with a "read the request" half and a "handle the reply" half; every
//! other command is `Passthrough` and its bytes are forwarded untouched.

pub mod fusion;
pub mod hello;
pub mod query_string;
pub mod reads;
pub mod search_definition;
pub mod search_index;
pub mod text_query;
pub mod vector_query;

pub use hello::Hello;

use crate::wire::msg::first_key;
use bson::RawDocument;

/// What the proxy does with a command, decided from its body alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `hello` / `isMaster`: the reply is rewritten so drivers see a router.
    Hello(Hello),
    /// Search-index administration, answered by the proxy.
    SearchIndexAdmin(Admin),
    /// A query with a vector part, answered from an index and rewritten.
    Vector(VectorKind),
    /// `explain` of a vector query.
    ExplainVector(VectorKind),
    /// Not ours: forward the original bytes, relay the replies.
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Create,
    Update,
    Drop,
    /// `listSearchIndexes` or an `aggregate` starting with `$listSearchIndexes`.
    List,
    CreateNeighbourhood,
    DropNeighbourhood,
    ListNeighbourhoods,
    /// `createSemanticIndex`: an index over models × keys.
    CreateSemantic,
    CreateModel,
    ListModels,
    DropModel,
    /// `evaluateSemanticIndex`: retrieval metrics of an index.
    Evaluate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorKind {
    /// `aggregate` starting with `$vectorSearch` or a `$match` holding `$like`
    /// (or with `$vectorSearch` misplaced, which is an error).
    Aggregate,
    /// `find` whose filter holds `$like`.
    Find,
    /// `count` whose query holds `$like`.
    Count,
}

impl VectorKind {
    /// The command's name, as the client sent it.
    pub fn command(self) -> &'static str {
        match self {
            VectorKind::Aggregate => "aggregate",
            VectorKind::Find => "find",
            VectorKind::Count => "count",
        }
    }
}

impl Command {
    pub fn classify(body: &RawDocument) -> Command {
        let Some(name) = first_key(body) else {
            return Command::Passthrough;
        };
        match name {
            n if Hello::is_hello(n) => Command::Hello(Hello::parse(body)),
            "createSearchIndexes" => Command::SearchIndexAdmin(Admin::Create),
            "updateSearchIndex" => Command::SearchIndexAdmin(Admin::Update),
            "dropSearchIndex" => Command::SearchIndexAdmin(Admin::Drop),
            "listSearchIndexes" => Command::SearchIndexAdmin(Admin::List),
            "createNeighbourhood" => Command::SearchIndexAdmin(Admin::CreateNeighbourhood),
            "dropNeighbourhood" => Command::SearchIndexAdmin(Admin::DropNeighbourhood),
            "listNeighbourhoods" => Command::SearchIndexAdmin(Admin::ListNeighbourhoods),
            "createSemanticIndex" => Command::SearchIndexAdmin(Admin::CreateSemantic),
            "createModel" => Command::SearchIndexAdmin(Admin::CreateModel),
            "listModels" => Command::SearchIndexAdmin(Admin::ListModels),
            "dropModel" => Command::SearchIndexAdmin(Admin::DropModel),
            "evaluateSemanticIndex" => Command::SearchIndexAdmin(Admin::Evaluate),
            "explain" => match body.get_document("explain").map(Command::classify) {
                Ok(Command::Vector(kind)) => Command::ExplainVector(kind),
                _ => Command::Passthrough,
            },
            _ => match vector_kind(name, body) {
                Some(VectorKind::Aggregate) if lists_search_indexes(body) => {
                    Command::SearchIndexAdmin(Admin::List)
                }
                Some(kind) => Command::Vector(kind),
                None => Command::Passthrough,
            },
        }
    }
}

fn vector_kind(name: &str, body: &RawDocument) -> Option<VectorKind> {
    let has_like = |key| {
        body.get_document(key)
            .is_ok_and(|d| contains_key(d, "$like", 0))
    };
    match name {
        "find" if has_like("filter") => Some(VectorKind::Find),
        "count" if has_like("query") => Some(VectorKind::Count),
        "aggregate" => {
            let stages = body.get_array("pipeline").ok()?;
            let first = stages.into_iter().flatten().next()?.as_document()?;
            let first_name = first_key(first)?;
            let owned = first_name == "$listSearchIndexes"
                || (first_name == "$match"
                    && first
                        .get_document("$match")
                        .is_ok_and(|m| contains_key(m, "$like", 0)))
                || vector_query::pipeline_has_vector_stage(stages, 100);
            owned.then_some(VectorKind::Aggregate)
        }
        _ => None,
    }
}

fn lists_search_indexes(body: &RawDocument) -> bool {
    body.get_array("pipeline")
        .ok()
        .and_then(|p| p.into_iter().flatten().next())
        .and_then(|s| s.as_document().and_then(first_key))
        == Some("$listSearchIndexes")
}

/// Whether `key` appears anywhere in `doc`, at any depth.
pub(crate) fn contains_key(doc: &RawDocument, key: &str, depth: usize) -> bool {
    depth < 100
        && doc.iter().flatten().any(|(k, v)| {
            k == key
                || match v {
                    bson::RawBsonRef::Document(d) => contains_key(d, key, depth + 1),
                    bson::RawBsonRef::Array(a) => a.into_iter().flatten().any(|item| {
                        item.as_document()
                            .is_some_and(|d| contains_key(d, key, depth + 1))
                    }),
                    _ => false,
                }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn only_vector_commands_leave_the_passthrough_path() {
        let cases = [
            (
                rawdoc! { "find": "c", "filter": { "a": 1 } },
                Command::Passthrough,
            ),
            (
                rawdoc! { "find": "c", "filter": { "$like": { "vector": [1] } } },
                Command::Vector(VectorKind::Find),
            ),
            (
                rawdoc! { "find": "c", "filter": { "$or": [{ "$like": {} }] } },
                Command::Vector(VectorKind::Find),
            ),
            (
                rawdoc! { "count": "c", "query": { "$like": {} } },
                Command::Vector(VectorKind::Count),
            ),
            (
                rawdoc! { "aggregate": "c", "pipeline": [{ "$match": { "a": 1 } }] },
                Command::Passthrough,
            ),
            (
                rawdoc! { "aggregate": "c", "pipeline": [{ "$vectorSearch": {} }] },
                Command::Vector(VectorKind::Aggregate),
            ),
            (
                rawdoc! { "aggregate": "c", "pipeline": [{ "$match": {} }, { "$vectorSearch": {} }] },
                Command::Vector(VectorKind::Aggregate),
            ),
            (
                rawdoc! { "aggregate": "c", "pipeline": [
                    { "$match": {} },
                    { "$unionWith": { "coll": "d", "pipeline": [{ "$vectorSearch": {} }] } },
                ] },
                Command::Vector(VectorKind::Aggregate),
            ),
            (
                rawdoc! { "aggregate": "c", "pipeline": [
                    { "$facet": { "a": [{ "$match": {} }], "b": [{ "$vectorSearch": {} }] } },
                ] },
                Command::Vector(VectorKind::Aggregate),
            ),
            (
                rawdoc! { "aggregate": "c", "pipeline": [
                    { "$lookup": { "from": "d", "pipeline": [{ "$match": { "$like": {} } }], "as": "x" } },
                ] },
                Command::Vector(VectorKind::Aggregate),
            ),
            (
                rawdoc! { "aggregate": "c", "pipeline": [
                    { "$unionWith": { "coll": "d", "pipeline": [{ "$match": { "a": 1 } }] } },
                ] },
                Command::Passthrough,
            ),
            (
                rawdoc! { "aggregate": "c", "pipeline": [{ "$listSearchIndexes": {} }] },
                Command::SearchIndexAdmin(Admin::List),
            ),
            (
                rawdoc! { "createSearchIndexes": "c", "indexes": [] },
                Command::SearchIndexAdmin(Admin::Create),
            ),
            (
                rawdoc! { "explain": { "find": "c", "filter": { "$like": {} } } },
                Command::ExplainVector(VectorKind::Find),
            ),
            (rawdoc! { "explain": { "find": "c" } }, Command::Passthrough),
            (
                rawdoc! { "createModel": "m", "kind": "text" },
                Command::SearchIndexAdmin(Admin::CreateModel),
            ),
            (
                rawdoc! { "createSemanticIndex": "c", "name": "s" },
                Command::SearchIndexAdmin(Admin::CreateSemantic),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(Command::classify(&body), want, "{body:?}");
        }
    }
}
