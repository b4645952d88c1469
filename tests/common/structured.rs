//! Structure-aware inputs for the decoder: a recipe of bytes becomes a
//! well-formed OP_MSG frame holding one command the proxy owns, with a
//! nested value of a chosen depth and width put where that command's
//! parsers and rewriters walk (a filter, a later pipeline stage, a
//! projection, an index or model definition). Random bytes rarely make
//! valid BSON two hundred levels deep; these always do, so the fuzz target
//! (`fuzz/fuzz_targets/structured.rs`) and the test suite
//! (`tests/codec_fixtures.rs`) reach every recursive walk at and past
//! mongod's depth bound.

#![allow(dead_code)]

use bson::{rawdoc, RawArrayBuf, RawBson, RawDocumentBuf};

/// How many command forms [`frame`] builds.
pub const FORMS: usize = 16;

/// Reads a recipe: form, depth, width and the bytes that fill leaves.
struct Recipe<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Recipe<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
}

/// A value `depth` levels deep (documents and arrays alternating as the
/// recipe says) with `width` siblings at its widest level; leaves and
/// keys come from the recipe.
pub fn nested(depth: usize, width: usize, recipe: &[u8]) -> RawBson {
    let mut r = Recipe {
        bytes: recipe,
        at: 0,
    };
    let leaf = |r: &mut Recipe| -> RawBson {
        match r.byte() % 6 {
            0 => RawBson::Int32(i32::from(r.byte())),
            1 => RawBson::Double(f64::from(r.byte()) / 7.0),
            2 => RawBson::String("x".repeat(usize::from(r.byte() % 4))),
            3 => RawBson::Boolean(r.byte().is_multiple_of(2)),
            4 => RawBson::Null,
            _ => RawBson::Array(RawArrayBuf::new()),
        }
    };
    // Keys a walk may treat specially.
    const KEYS: [&str; 10] = [
        "a",
        "$like",
        "$meta",
        "$vectorSearch",
        "$and",
        "$or",
        "vectorSearchScore",
        "$project",
        "_id",
        "$expr",
    ];
    let mut value = leaf(&mut r);
    for level in 0..depth {
        let siblings = if level == depth / 2 { width } else { 1 };
        let as_array = r.byte().is_multiple_of(3);
        if as_array {
            let mut array = RawArrayBuf::new();
            array.push(value);
            for _ in 1..siblings {
                array.push(leaf(&mut r));
            }
            value = RawBson::Array(array);
        } else {
            let mut doc = RawDocumentBuf::new();
            doc.append(KEYS[usize::from(r.byte()) % KEYS.len()], value);
            for i in 1..siblings {
                doc.append(format!("k{i}"), leaf(&mut r));
            }
            value = RawBson::Document(doc);
        }
    }
    value
}

/// The command of form `form % FORMS` on collection `c` of database `t`,
/// with `value` where that form's walks go.
pub fn command(form: usize, value: RawBson) -> RawDocumentBuf {
    let vector = RawBson::Array({
        let mut a = RawArrayBuf::new();
        a.push(0.5);
        a.push(1.0);
        a
    });
    let like = rawdoc! { "vector": vector.clone(), "n": 3 };
    let mut filter = rawdoc! { "$like": like.clone() };
    filter.append("a", value.clone());
    match form % FORMS {
        0 => rawdoc! { "find": "c", "filter": filter, "$db": "t" },
        1 => rawdoc! { "count": "c", "query": filter, "$db": "t" },
        2 => rawdoc! { "aggregate": "c", "pipeline": [
            { "$vectorSearch": { "index": "i", "path": "p", "queryVector": vector.clone(),
                                 "numCandidates": 10, "limit": 3, "filter": { "a": value } } },
        ], "cursor": {}, "$db": "t" },
        3 => rawdoc! { "aggregate": "c", "pipeline": [
            { "$vectorSearch": { "index": "i", "path": "p", "queryVector": vector,
                                 "numCandidates": 10, "limit": 3 } },
            { "$project": { "s": { "$meta": "vectorSearchScore" }, "deep": value.clone() } },
            { "$addFields": { "again": value } },
        ], "cursor": {}, "$db": "t" },
        4 => rawdoc! { "find": "c", "filter": { "$like": like },
        "projection": { "s": { "$meta": "vectorSearchScore" }, "deep": value }, "$db": "t" },
        5 => {
            rawdoc! { "aggregate": "c", "pipeline": [{ "$match": filter }], "cursor": {}, "$db": "t" }
        }
        6 => {
            rawdoc! { "explain": { "aggregate": "c", "pipeline": [{ "$match": filter }], "cursor": {} },
            "$db": "t" }
        }
        7 => rawdoc! { "createSearchIndexes": "c", "indexes": [
            { "name": "i", "type": "vectorSearch", "definition": { "fields": [value] } },
        ], "$db": "t" },
        8 => rawdoc! { "createSemanticIndex": "c", "name": "i", "models": ["m"], "keys": ["p"],
        "train": value, "$db": "t" },
        9 => {
            rawdoc! { "createModel": "m", "kind": "http", "url": "http://h/", "model": value, "$db": "t" }
        }
        10 => rawdoc! { "updateSearchIndex": "c", "name": "i", "definition": { "mappings": value },
        "$db": "t" },
        11 => rawdoc! { "aggregate": "c", "pipeline": [
            { "$search": { "compound": { "must": [{ "text": { "query": "a", "path": value.clone() } }],
                                          "should": value.clone() } } },
            { "$project": { "s": { "$meta": "searchScore" }, "deep": value } },
        ], "cursor": {}, "$db": "t" },
        12 => rawdoc! { "createSearchIndexes": "c", "indexes": [
            { "name": "i", "type": "search", "definition": { "mappings": { "fields": { "f": value } } } },
        ], "$db": "t" },
        13 => rawdoc! { "aggregate": "c", "pipeline": [
            { "$rankFusion": { "input": { "pipelines": {
                "v": [{ "$vectorSearch": { "index": "i", "path": "p", "queryVector": vector,
                                            "numCandidates": 10, "limit": 3 } },
                      { "$match": { "a": value.clone() } }],
                "s": [{ "$match": { "a": value.clone() } }, { "$sort": { "a": 1 } }],
            } }, "scoreDetails": true } },
            { "$project": { "s": { "$meta": "score" }, "d": { "$meta": "scoreDetails" }, "deep": value } },
        ], "cursor": {}, "$db": "t" },
        14 => rawdoc! { "aggregate": "c", "pipeline": [
            { "$searchMeta": { "facet": {
                "operator": { "compound": { "filter": [{ "equals": { "path": "a", "value": value.clone() } }],
                                            "should": value.clone() } },
                "facets": { "f": { "type": "number", "path": "n", "boundaries": value.clone() } } } } },
            { "$project": { "m": "$$SEARCH_META", "deep": value } },
        ], "cursor": {}, "$db": "t" },
        _ => rawdoc! { "insert": "c", "documents": [{ "_id": 1, "deep": value }], "$db": "t" },
    }
}

/// The OP_MSG frame a recipe describes: `data[0]` picks the form,
/// `data[1..3]` the depth (0 to 259, so both sides of the bound), `data[3]`
/// the width (0 to 255), the rest fills the value.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let at = |i: usize| usize::from(data.get(i).copied().unwrap_or(0));
    let form = at(0);
    let depth = (at(1) << 8 | at(2)) % 260;
    let width = at(3);
    let value = nested(depth, width, data.get(4..).unwrap_or_default());
    likewise::wire::msg::encode_body(1, 0, &command(form, value))
}
