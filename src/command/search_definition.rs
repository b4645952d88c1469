//! Atlas Search's `search` index definition, read into a
//! [`TextSpec`]: `{analyzer?, searchAnalyzer?, mappings: {dynamic?,
//! fields?}, storedSource?, numPartitions?}`, with `string` and
//! `document` fields. Everything else Atlas accepts is refused by name
//! (never ignored), with what likewise serves instead.

use crate::error::{Code, Error};
use crate::index::analysis::{compile_pattern, CharFilter, Mappings, Pattern, TokenRule};
use crate::index::text::{
    Analyzer, AutocompleteField, CustomAnalyzer, CustomFilter, CustomTokenizer, DocumentMapping,
    FieldMapping, Grams, Normalizer, StoredSource, StringField, SynonymMapping, TextSpec,
    MAX_CUSTOM_ANALYZERS,
};

/// Longest gram an `autocomplete` field indexes (Atlas's bound on
/// `maxGrams`).
const MAX_GRAMS: usize = 15;
use bson::{RawBsonRef, RawDocument};

/// Most named fields one definition may hold, at every level together.
pub const MAX_MAPPED_FIELDS: usize = 1000;
/// Deepest `document` nesting a mapping may have.
const MAX_MAPPING_DEPTH: usize = 32;

fn invalid(message: impl Into<String>) -> Error {
    Error::client(Code::INVALID_OPTIONS, message)
}

/// Whether `definition` is a `search` definition (it has `mappings`).
pub fn is_search_definition(definition: &RawDocument) -> bool {
    definition.get("mappings").ok().flatten().is_some()
}

/// Reads a `search` definition. Errors (72 `InvalidOptions`) name the
/// offending option.
pub fn parse(definition: &RawDocument) -> Result<TextSpec, Error> {
    let analyzers = match definition.get("analyzers") {
        Ok(None) => Vec::new(),
        Ok(Some(RawBsonRef::Array(list))) => parse_analyzers(list)?,
        _ => return Err(invalid("'analyzers' must be a list of custom analyzers")),
    };
    let named = |key: &str| match definition.get(key) {
        Ok(None) => Ok(None),
        Ok(Some(RawBsonRef::String(name))) => analyzer_named(name, key, &analyzers).map(Some),
        _ => Err(invalid(format!("'{key}' must be an analyzer's name"))),
    };
    let analyzer = named("analyzer")?.unwrap_or(Analyzer::Standard);
    let defaults = Defaults {
        analyzer,
        search_analyzer: named("searchAnalyzer")?.unwrap_or(analyzer),
        custom: &analyzers,
    };
    let mut mappings = None;
    let mut stored_source = StoredSource::None;
    let mut synonyms = Vec::new();
    for (key, value) in definition.iter().flatten() {
        match (key, value) {
            ("analyzer" | "searchAnalyzer", _) => {}
            ("mappings", RawBsonRef::Document(m)) => {
                let mut count = 0;
                let mapping = parse_mapping(m, "mappings", defaults, 0, &mut count)?;
                if embedded_paths(&mapping) > MAX_EMBEDDED_PATHS {
                    return Err(invalid(format!(
                        "a definition may have at most {MAX_EMBEDDED_PATHS} embeddedDocuments \
                         fields (each is an index of its own in likewise)"
                    )));
                }
                mappings = Some(mapping)
            }
            ("storedSource", RawBsonRef::Boolean(all)) => {
                stored_source = if all {
                    StoredSource::All
                } else {
                    StoredSource::None
                }
            }
            ("storedSource", RawBsonRef::Document(spec)) => {
                stored_source = parse_stored_source(spec)?
            }
            ("numPartitions", v) if crate::wire::integer(Some(v)) == Some(1) => {}
            ("analyzers", _) => {}
            ("synonyms", RawBsonRef::Array(list)) => synonyms = parse_synonyms(list, &analyzers)?,
            ("typeSets", RawBsonRef::Array(a)) if a.is_empty() => {}
            ("storedSource", _) => {
                return Err(invalid(
                    "'storedSource' must be a boolean or {include: [paths]} or {exclude: [paths]}",
                ))
            }
            ("synonyms", _) => {
                return Err(invalid("'synonyms' must be a list of synonym mappings"))
            }
            ("typeSets" | "numPartitions", _) => {
                return Err(invalid(format!(
                    "'{key}' is not served by likewise yet (accepted: numPartitions: 1)"
                )))
            }
            _ => {
                return Err(invalid(format!(
                    "\"{key}\" is not a valid search index definition field, or has the wrong type"
                )))
            }
        }
    }
    let mappings = mappings.ok_or_else(|| invalid("a search index definition needs 'mappings'"))?;
    Ok(TextSpec {
        mappings,
        analyzer: defaults.analyzer,
        search_analyzer: defaults.search_analyzer,
        stored_source,
        analyzers,
        synonyms,
    })
}

/// Atlas's `synonyms`: `[{name, analyzer, source: {collection}}]`, unique
/// names, the source a collection of the index's database.
fn parse_synonyms(
    list: &bson::RawArray,
    custom: &[CustomAnalyzer],
) -> Result<Vec<SynonymMapping>, Error> {
    let mut out: Vec<SynonymMapping> = Vec::new();
    for entry in list.into_iter().flatten() {
        let RawBsonRef::Document(def) = entry else {
            return Err(invalid("each of 'synonyms' must be a document"));
        };
        only(def, "a synonym mapping", &["name", "analyzer", "source"])?;
        let name = def
            .get_str("name")
            .map_err(|_| invalid("a synonym mapping needs a 'name'"))?;
        if out.iter().any(|m| m.name == name) || out.len() >= 64 {
            return Err(invalid(format!(
                "synonym mapping '{name}' is defined twice (or there are more than 64)"
            )));
        }
        let analyzer = def
            .get_str("analyzer")
            .map_err(|_| invalid(format!("synonym mapping '{name}' needs an 'analyzer'")))?;
        let analyzer = analyzer_named(analyzer, "synonyms.analyzer", custom)?;
        let collection = def
            .get_document("source")
            .ok()
            .and_then(|s| s.get_str("collection").ok())
            .filter(|c| !c.is_empty() && !c.contains('$') && !c.contains('\0'))
            .ok_or_else(|| {
                invalid(format!(
                    "synonym mapping '{name}' needs 'source': {{collection: <name>}}"
                ))
            })?;
        out.push(SynonymMapping {
            name: name.to_string(),
            analyzer,
            collection: collection.to_string(),
        });
    }
    Ok(out)
}

/// `storedSource: {include: [paths]}` or `{exclude: [paths]}` (exactly
/// one, a non-empty list of dotted paths).
fn parse_stored_source(spec: &RawDocument) -> Result<StoredSource, Error> {
    let mut fields = spec.iter().flatten();
    let (Some((kind, RawBsonRef::Array(list))), None) = (fields.next(), fields.next()) else {
        return Err(invalid(
            "'storedSource' takes exactly one of 'include' and 'exclude', a list of paths",
        ));
    };
    let mut paths = Vec::new();
    for path in list.into_iter().flatten() {
        match path {
            RawBsonRef::String(p) if !p.is_empty() && !p.starts_with('$') => {
                paths.push(p.to_string())
            }
            _ => {
                return Err(invalid(format!(
                    "'storedSource.{kind}' must list field paths"
                )))
            }
        }
        if paths.len() > MAX_MAPPED_FIELDS {
            return Err(invalid(format!(
                "'storedSource.{kind}' lists too many paths"
            )));
        }
    }
    if paths.is_empty() {
        return Err(invalid(format!(
            "'storedSource.{kind}' must list at least one path"
        )));
    }
    match kind {
        "include" => Ok(StoredSource::Include(paths)),
        "exclude" => Ok(StoredSource::Exclude(paths)),
        _ => Err(invalid(format!(
            "\"storedSource.{kind}\" is not a storedSource option"
        ))),
    }
}

fn analyzer_named(name: &str, key: &str, custom: &[CustomAnalyzer]) -> Result<Analyzer, Error> {
    if let Some(builtin) = Analyzer::parse(name) {
        return Ok(builtin);
    }
    custom
        .iter()
        .position(|c| c.name == name)
        .and_then(|i| u8::try_from(i).ok())
        .map(Analyzer::Custom)
        .ok_or_else(|| {
            invalid(format!(
                "'{key}' names '{name}', which is neither a built-in analyzer likewise serves \
                 (lucene.standard, lucene.simple, lucene.whitespace, lucene.keyword, \
                 lucene.english) nor one of the definition's 'analyzers'"
            ))
        })
}

/// Atlas's custom `analyzers`: `[{name, charFilters?, tokenizer: {type,
/// ...}, tokenFilters?: [{type, ...}]}]`, unique names outside the
/// built-in prefixes. What likewise does not serve is refused by name.
fn parse_analyzers(list: &bson::RawArray) -> Result<Vec<CustomAnalyzer>, Error> {
    let mut out: Vec<CustomAnalyzer> = Vec::new();
    for entry in list.into_iter().flatten() {
        let RawBsonRef::Document(def) = entry else {
            return Err(invalid("each of 'analyzers' must be a document"));
        };
        if out.len() >= MAX_CUSTOM_ANALYZERS {
            return Err(invalid(format!(
                "a definition may hold at most {MAX_CUSTOM_ANALYZERS} custom analyzers"
            )));
        }
        let name = def
            .get_str("name")
            .map_err(|_| invalid("a custom analyzer needs a 'name'"))?;
        if ["lucene.", "builtin.", "mongodb."]
            .iter()
            .any(|p| name.starts_with(p))
            || out.iter().any(|c| c.name == name)
        {
            return Err(invalid(format!(
                "custom analyzer name '{name}' is taken (or starts with lucene., builtin. or \
                 mongodb.)"
            )));
        }
        let mut tokenizer = None;
        let mut filters = Vec::new();
        let mut char_filters = Vec::new();
        for (key, value) in def.iter().flatten() {
            match (key, value) {
                ("name", _) => {}
                ("charFilters", RawBsonRef::Array(list)) => {
                    for f in list.into_iter().flatten() {
                        let RawBsonRef::Document(f) = f else {
                            return Err(invalid(format!(
                                "analyzer '{name}': each char filter must be a document"
                            )));
                        };
                        char_filters.push(parse_char_filter(name, f)?);
                        if char_filters.len() > 32 {
                            return Err(invalid(format!(
                                "analyzer '{name}': too many char filters"
                            )));
                        }
                    }
                }
                ("tokenizer", RawBsonRef::Document(t)) => {
                    tokenizer = Some(parse_tokenizer(name, t)?)
                }
                ("tokenFilters", RawBsonRef::Array(list)) => {
                    for f in list.into_iter().flatten() {
                        let RawBsonRef::Document(f) = f else {
                            return Err(invalid(format!(
                                "analyzer '{name}': each token filter must be a document"
                            )));
                        };
                        filters.push(parse_token_filter(name, f)?);
                        if filters.len() > 32 {
                            return Err(invalid(format!(
                                "analyzer '{name}': too many token filters"
                            )));
                        }
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "\"{key}\" is not a custom analyzer field, or has the wrong type"
                    )))
                }
            }
        }
        out.push(CustomAnalyzer {
            name: name.to_string(),
            char_filters,
            tokenizer: tokenizer
                .ok_or_else(|| invalid(format!("analyzer '{name}' needs a 'tokenizer'")))?,
            filters,
        });
    }
    Ok(out)
}

/// A whole number field of a tokenizer or filter within `range`.
fn bounded(
    spec: &RawDocument,
    key: &str,
    default: Option<usize>,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, Error> {
    match spec.get(key) {
        Ok(None) => default.ok_or_else(|| invalid(format!("'{key}' is required"))),
        Ok(Some(v)) => crate::wire::integer(Some(v))
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                invalid(format!(
                    "'{key}' must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ))
            }),
        Err(_) => Err(invalid(format!("'{key}' is malformed"))),
    }
}

/// Refuses fields of `spec` outside `known`.
fn only(spec: &RawDocument, what: &str, known: &[&str]) -> Result<(), Error> {
    match spec.iter().flatten().find(|(k, _)| !known.contains(k)) {
        Some((k, _)) => Err(invalid(format!("\"{k}\" is not an option of {what}"))),
        None => Ok(()),
    }
}

fn parse_tokenizer(analyzer: &str, spec: &RawDocument) -> Result<CustomTokenizer, Error> {
    let kind = spec.get_str("type").map_err(|_| {
        invalid(format!(
            "analyzer '{analyzer}': the tokenizer needs a 'type'"
        ))
    })?;
    let what = format!("the {kind} tokenizer");
    Ok(match kind {
        "standard" | "whitespace" => {
            only(spec, &what, &["type", "maxTokenLength"])?;
            let max_token_length = bounded(spec, "maxTokenLength", Some(255), 1..=255)?;
            if kind == "standard" {
                CustomTokenizer::Standard { max_token_length }
            } else {
                CustomTokenizer::Whitespace { max_token_length }
            }
        }
        "keyword" => {
            only(spec, &what, &["type"])?;
            CustomTokenizer::Keyword
        }
        "edgeGram" | "nGram" => {
            only(spec, &what, &["type", "minGram", "maxGram"])?;
            let min = bounded(spec, "minGram", None, 1..=MAX_GRAMS)?;
            let max = bounded(spec, "maxGram", None, 1..=MAX_GRAMS)?;
            if min > max {
                return Err(invalid(format!(
                    "{what}: 'minGram' is larger than 'maxGram'"
                )));
            }
            if kind == "edgeGram" {
                CustomTokenizer::EdgeGram { min, max }
            } else {
                CustomTokenizer::NGram { min, max }
            }
        }
        "regexSplit" => {
            only(spec, &what, &["type", "pattern"])?;
            CustomTokenizer::Regex {
                pattern: pattern_of(spec, &what)?,
                group: None,
            }
        }
        "regexCaptureGroup" => {
            only(spec, &what, &["type", "pattern", "group"])?;
            let pattern = pattern_of(spec, &what)?;
            let group = bounded(spec, "group", None, 0..=pattern.0.captures_len() - 1)?;
            CustomTokenizer::Regex {
                pattern,
                group: Some(group),
            }
        }
        "uaxUrlEmail" => {
            return Err(invalid(format!(
                "analyzer '{analyzer}': the {kind} tokenizer is not served by likewise yet \
                 (standard, whitespace, keyword, edgeGram, nGram, regexSplit and \
                 regexCaptureGroup are)"
            )))
        }
        _ => {
            return Err(invalid(format!(
                "analyzer '{analyzer}': '{kind}' is not a tokenizer type"
            )))
        }
    })
}

fn parse_token_filter(analyzer: &str, spec: &RawDocument) -> Result<CustomFilter, Error> {
    let kind = spec.get_str("type").map_err(|_| {
        invalid(format!(
            "analyzer '{analyzer}': a token filter needs a 'type'"
        ))
    })?;
    let what = format!("the {kind} token filter");
    Ok(match kind {
        "lowercase" => {
            only(spec, &what, &["type"])?;
            CustomFilter::Lowercase
        }
        "asciiFolding" => {
            only(spec, &what, &["type", "originalTokens"])?;
            match spec.get_str("originalTokens") {
                Err(_) | Ok("omit") => {}
                Ok(_) => {
                    return Err(invalid(format!(
                        "{what}: only originalTokens: \"omit\" is served by likewise yet"
                    )))
                }
            }
            CustomFilter::AsciiFolding
        }
        "stopword" => {
            only(spec, &what, &["type", "tokens", "ignoreCase"])?;
            let ignore_case =
                !matches!(spec.get("ignoreCase"), Ok(Some(RawBsonRef::Boolean(false))));
            let tokens = spec
                .get_array("tokens")
                .map_err(|_| invalid(format!("{what} needs 'tokens', a list of strings")))?;
            let mut words = Vec::new();
            for t in tokens.into_iter().flatten() {
                let RawBsonRef::String(t) = t else {
                    return Err(invalid(format!("{what}: 'tokens' must be strings")));
                };
                words.push(if ignore_case {
                    t.to_lowercase()
                } else {
                    t.to_string()
                });
                if words.len() > 10_000 {
                    return Err(invalid(format!("{what}: too many tokens")));
                }
            }
            CustomFilter::Stopword(words)
        }
        "snowballStemming" => {
            only(spec, &what, &["type", "stemmerName"])?;
            let name = spec
                .get_str("stemmerName")
                .map_err(|_| invalid(format!("{what} needs 'stemmerName'")))?;
            CustomFilter::SnowballStemming(stemmer(name).ok_or_else(|| {
                invalid(format!(
                    "{what}: the stemmer '{name}' is not served by likewise"
                ))
            })?)
        }
        "length" => {
            only(spec, &what, &["type", "min", "max"])?;
            let min = bounded(spec, "min", Some(0), 0..=255)?;
            let max = bounded(spec, "max", Some(255), 1..=255)?;
            if min > max {
                return Err(invalid(format!("{what}: 'min' is larger than 'max'")));
            }
            CustomFilter::Rule(TokenRule::Length { min, max })
        }
        "reverse" | "trim" | "englishPossessive" => {
            only(spec, &what, &["type"])?;
            CustomFilter::Rule(match kind {
                "reverse" => TokenRule::Reverse,
                "trim" => TokenRule::Trim,
                _ => TokenRule::EnglishPossessive,
            })
        }
        "regex" => {
            only(spec, &what, &["type", "pattern", "replacement", "matches"])?;
            let replacement = spec
                .get_str("replacement")
                .map_err(|_| invalid(format!("{what} needs 'replacement', a string")))?;
            let all = match spec.get_str("matches") {
                Ok("all") => true,
                Ok("first") => false,
                _ => {
                    return Err(invalid(format!(
                        "{what} needs 'matches': \"all\" or \"first\""
                    )))
                }
            };
            CustomFilter::Rule(TokenRule::Regex {
                pattern: pattern_of(spec, &what)?,
                replacement: replacement.to_string(),
                all,
            })
        }
        _ => {
            return Err(invalid(format!(
                "analyzer '{analyzer}': the {kind} token filter is not served by likewise yet \
                 (lowercase, asciiFolding, stopword, snowballStemming, length, reverse, trim, \
                 englishPossessive and regex are)"
            )))
        }
    })
}

/// A tokenizer's or filter's `pattern`, compiled (bounded in size).
fn pattern_of(spec: &RawDocument, what: &str) -> Result<Pattern, Error> {
    let source = spec
        .get_str("pattern")
        .map_err(|_| invalid(format!("{what} needs 'pattern', a string")))?;
    compile_pattern(source).map_err(|e| invalid(format!("{what}: bad 'pattern': {e}")))
}

/// Most `mappings` one `mapping` char filter holds.
const MAX_CHAR_MAPPINGS: usize = 10_000;

/// An entry of a custom analyzer's `charFilters`.
fn parse_char_filter(analyzer: &str, spec: &RawDocument) -> Result<CharFilter, Error> {
    let kind = spec.get_str("type").map_err(|_| {
        invalid(format!(
            "analyzer '{analyzer}': a char filter needs a 'type'"
        ))
    })?;
    let what = format!("the {kind} char filter");
    Ok(match kind {
        "htmlStrip" => {
            only(spec, &what, &["type", "ignoredTags"])?;
            let mut ignored_tags = Vec::new();
            if let Ok(Some(value)) = spec.get("ignoredTags") {
                let RawBsonRef::Array(tags) = value else {
                    return Err(invalid(format!("{what}: 'ignoredTags' must be strings")));
                };
                for tag in tags.into_iter().flatten().take(1000) {
                    let RawBsonRef::String(tag) = tag else {
                        return Err(invalid(format!("{what}: 'ignoredTags' must be strings")));
                    };
                    ignored_tags.push(tag.to_ascii_lowercase());
                }
            }
            CharFilter::HtmlStrip { ignored_tags }
        }
        "icuNormalize" => {
            only(spec, &what, &["type"])?;
            CharFilter::IcuNormalize
        }
        "persian" => {
            only(spec, &what, &["type"])?;
            CharFilter::Persian
        }
        "mapping" => {
            only(spec, &what, &["type", "mappings"])?;
            let mappings = spec
                .get_document("mappings")
                .map_err(|_| invalid(format!("{what} needs 'mappings', a document")))?;
            let mut pairs = Vec::new();
            for (from, to) in mappings.iter().flatten() {
                let RawBsonRef::String(to) = to else {
                    return Err(invalid(format!("{what}: each mapping must be a string")));
                };
                if from.is_empty() || pairs.len() == MAX_CHAR_MAPPINGS {
                    return Err(invalid(format!(
                        "{what}: mappings need non-empty keys, at most {MAX_CHAR_MAPPINGS}"
                    )));
                }
                pairs.push((from.to_string(), to.to_string()));
            }
            CharFilter::Mapping(Mappings::new(pairs).map_err(|e| invalid(format!("{what}: {e}")))?)
        }
        _ => {
            return Err(invalid(format!(
                "analyzer '{analyzer}': '{kind}' is not a char filter type (htmlStrip, \
                 icuNormalize, mapping and persian are)"
            )))
        }
    })
}

/// The Snowball stemmer Atlas's `stemmerName` names.
fn stemmer(name: &str) -> Option<tantivy::tokenizer::Language> {
    use tantivy::tokenizer::Language::*;
    Some(match name {
        "arabic" => Arabic,
        "danish" => Danish,
        "dutch" => Dutch,
        "english" => English,
        "finnish" => Finnish,
        "french" => French,
        "german" => German,
        "greek" => Greek,
        "hungarian" => Hungarian,
        "italian" => Italian,
        "norwegian" => Norwegian,
        "portuguese" => Portuguese,
        "romanian" => Romanian,
        "russian" => Russian,
        "spanish" => Spanish,
        "swedish" => Swedish,
        "tamil" => Tamil,
        "turkish" => Turkish,
        _ => return None,
    })
}

/// The index-level analyzers, which fields that name none take, and the
/// definition's custom analyzers, which fields may name.
#[derive(Clone, Copy)]
struct Defaults<'a> {
    analyzer: Analyzer,
    search_analyzer: Analyzer,
    custom: &'a [CustomAnalyzer],
}

fn parse_mapping(
    mapping: &RawDocument,
    at: &str,
    defaults: Defaults<'_>,
    depth: usize,
    count: &mut usize,
) -> Result<DocumentMapping, Error> {
    if depth > MAX_MAPPING_DEPTH {
        return Err(invalid(format!("'{at}' nests documents too deeply")));
    }
    let mut out = DocumentMapping::default();
    for (key, value) in mapping.iter().flatten() {
        match (key, value) {
            // A `document` field's own definition is its mapping.
            ("type", RawBsonRef::String("document" | "embeddedDocuments")) if depth > 0 => {}
            ("dynamic", RawBsonRef::Boolean(b)) => out.dynamic = b,
            ("dynamic", RawBsonRef::Document(_)) => {
                return Err(invalid(format!(
                    "'{at}.dynamic' with a typeSet is not served by likewise yet: use true or false"
                )))
            }
            ("fields", RawBsonRef::Document(fields)) => {
                for (name, def) in fields.iter().flatten() {
                    *count += 1;
                    if *count > MAX_MAPPED_FIELDS {
                        return Err(invalid(format!(
                            "a definition may map at most {MAX_MAPPED_FIELDS} fields"
                        )));
                    }
                    if name.is_empty() || name.starts_with('$') {
                        return Err(invalid(format!(
                            "'{at}.fields' has an invalid name '{name}'"
                        )));
                    }
                    let here = format!("{at}.fields.{name}");
                    let field = match def {
                        RawBsonRef::Document(d) => {
                            parse_field(d, &here, defaults, depth, count, FieldMapping::default())?
                        }
                        RawBsonRef::Array(defs) => {
                            let mut field = FieldMapping::default();
                            for def in defs {
                                let Ok(RawBsonRef::Document(d)) = def else {
                                    return Err(invalid(format!(
                                        "'{here}' entries must be documents"
                                    )));
                                };
                                field = parse_field(d, &here, defaults, depth, count, field)?;
                            }
                            field
                        }
                        _ => {
                            return Err(invalid(format!("'{here}' must be a document or an array")))
                        }
                    };
                    out.fields.insert(name.to_string(), field);
                }
            }
            _ => {
                return Err(invalid(format!(
                    "\"{at}.{key}\" is not a valid mapping field, or has the wrong type"
                )))
            }
        }
    }
    Ok(out)
}

/// Field types Atlas has that likewise does not serve yet.
const NOT_YET: &[&str] = &[
    "uuid",
    "geo",
    "knnVector",
    "numberFacet",
    "dateFacet",
    "stringFacet",
];

/// Most `embeddedDocuments` fields one definition holds: each is a
/// tantivy index with a writer of its own.
const MAX_EMBEDDED_PATHS: usize = 16;

/// How many `embeddedDocuments` fields `mapping` names, at any depth.
fn embedded_paths(mapping: &DocumentMapping) -> usize {
    mapping
        .fields
        .values()
        .map(|f| usize::from(f.embedded.is_some()) + f.document.as_ref().map_or(0, embedded_paths))
        .sum()
}

fn parse_field(
    def: &RawDocument,
    at: &str,
    defaults: Defaults<'_>,
    depth: usize,
    count: &mut usize,
    mut field: FieldMapping,
) -> Result<FieldMapping, Error> {
    match def.get_str("type") {
        Ok("string") => {
            let mut analyzer = None;
            let mut search_analyzer = None;
            let mut multi = None;
            for (key, value) in def.iter().flatten() {
                match (key, value) {
                    ("type", _) => {}
                    ("multi", RawBsonRef::Document(m)) if depth < MAX_MAPPING_DEPTH => {
                        multi = Some(m)
                    }
                    ("analyzer", RawBsonRef::String(n)) => {
                        analyzer = Some(analyzer_named(n, key, defaults.custom)?)
                    }
                    ("searchAnalyzer", RawBsonRef::String(n)) => {
                        search_analyzer = Some(analyzer_named(n, key, defaults.custom)?)
                    }
                    ("indexOptions", RawBsonRef::String("offsets" | "positions")) => {}
                    ("store", RawBsonRef::Boolean(_)) => {}
                    ("norms", RawBsonRef::String("include")) => {}
                    _ => {
                        return Err(invalid(format!(
                            "'{at}.{key}' is not served by likewise yet, or has the wrong type \
                             (string fields take analyzer, searchAnalyzer, indexOptions: \
                             offsets|positions, store, norms: include)"
                        )))
                    }
                }
            }
            if field.string.is_some() {
                return Err(invalid(format!("'{at}' declares type string twice")));
            }
            // Atlas's defaults: the field's search analyzer is its
            // analyzer when it names one, else the index's.
            field.string = Some(StringField {
                analyzer: analyzer.unwrap_or(defaults.analyzer),
                search_analyzer: search_analyzer
                    .or(analyzer)
                    .unwrap_or(defaults.search_analyzer),
            });
            for (name, def) in multi.into_iter().flatten().flatten() {
                *count += 1;
                if *count > MAX_MAPPED_FIELDS {
                    return Err(invalid(format!(
                        "a definition may map at most {MAX_MAPPED_FIELDS} fields"
                    )));
                }
                let here = format!("{at}.multi.{name}");
                let RawBsonRef::Document(def) = def else {
                    return Err(invalid(format!(
                        "'{here}' must be a string field definition"
                    )));
                };
                if def.get("multi").ok().flatten().is_some() {
                    return Err(invalid(format!("'{here}' cannot have a multi of its own")));
                }
                let alternate = parse_field(
                    def,
                    &here,
                    defaults,
                    depth + 1,
                    count,
                    FieldMapping::default(),
                )?;
                match alternate.string {
                    Some(string) => {
                        field.multi.insert(name.to_string(), string);
                    }
                    None => return Err(invalid(format!("'{here}' must have type string"))),
                }
            }
            Ok(field)
        }
        Ok("document") => {
            if field.document.is_some() {
                return Err(invalid(format!("'{at}' declares type document twice")));
            }
            field.document = Some(parse_mapping(def, at, defaults, depth + 1, count)?);
            Ok(field)
        }
        Ok("embeddedDocuments") => {
            if field.embedded.is_some() {
                return Err(invalid(format!(
                    "'{at}' declares type embeddedDocuments twice"
                )));
            }
            let mapping = parse_mapping(def, at, defaults, depth + 1, count)?;
            if embedded_paths(&mapping) > 0 {
                return Err(invalid(format!(
                    "'{at}': embeddedDocuments inside embeddedDocuments is not served by \
                     likewise yet"
                )));
            }
            field.embedded = Some(mapping);
            Ok(field)
        }
        Ok(t @ ("number" | "date" | "boolean" | "objectId" | "token")) => {
            let mut normalizer = Normalizer::None;
            for (key, value) in def.iter().flatten() {
                match (t, key, value) {
                    (_, "type", _) => {}
                    ("number", "representation", RawBsonRef::String("int64" | "double")) => {}
                    ("number", "indexIntegers" | "indexDoubles", RawBsonRef::Boolean(true)) => {}
                    ("token", "normalizer", RawBsonRef::String("lowercase")) => {
                        normalizer = Normalizer::Lowercase
                    }
                    ("token", "normalizer", RawBsonRef::String("none")) => {}
                    _ => {
                        return Err(invalid(format!(
                            "'{at}.{key}' is not served by likewise yet, or has the wrong type \
                             for a {t} field"
                        )))
                    }
                }
            }
            let types = &mut field.values;
            let already = match t {
                "number" => std::mem::replace(&mut types.number, true),
                "date" => std::mem::replace(&mut types.date, true),
                "boolean" => std::mem::replace(&mut types.boolean, true),
                "objectId" => std::mem::replace(&mut types.object_id, true),
                _ => types.token.replace(normalizer).is_some(),
            };
            if already {
                return Err(invalid(format!("'{at}' declares type {t} twice")));
            }
            Ok(field)
        }
        Ok("autocomplete") => {
            let mut spec = AutocompleteField {
                grams: Grams::Edge,
                min_grams: 2,
                max_grams: 15,
                fold_diacritics: true,
            };
            for (key, value) in def.iter().flatten() {
                let n = crate::wire::integer(Some(value)).and_then(|n| usize::try_from(n).ok());
                match (key, value) {
                    ("type", _) => {}
                    ("analyzer", RawBsonRef::String("lucene.standard")) => {}
                    ("tokenization", RawBsonRef::String("edgeGram")) => spec.grams = Grams::Edge,
                    ("tokenization", RawBsonRef::String("rightEdgeGram")) => {
                        spec.grams = Grams::RightEdge
                    }
                    ("tokenization", RawBsonRef::String("nGram")) => spec.grams = Grams::N,
                    ("minGrams", _) if n.is_some_and(|n| n >= 1) => spec.min_grams = n.unwrap_or(2),
                    ("maxGrams", _) if n.is_some_and(|n| n >= 1) => {
                        spec.max_grams = n.unwrap_or(15)
                    }
                    ("foldDiacritics", RawBsonRef::Boolean(b)) => spec.fold_diacritics = b,
                    _ => {
                        return Err(invalid(format!(
                            "'{at}.{key}' is not served by likewise yet, or has the wrong type \
                             for an autocomplete field (analyzer: lucene.standard, \
                             tokenization: edgeGram|rightEdgeGram|nGram, minGrams, maxGrams, \
                             foldDiacritics)"
                        )))
                    }
                }
            }
            if spec.min_grams > spec.max_grams || spec.max_grams > MAX_GRAMS {
                return Err(invalid(format!(
                    "'{at}': minGrams must be at most maxGrams, and maxGrams at most {MAX_GRAMS}"
                )));
            }
            if field.autocomplete.replace(spec).is_some() {
                return Err(invalid(format!("'{at}' declares type autocomplete twice")));
            }
            Ok(field)
        }
        Ok(t) if NOT_YET.contains(&t) => Err(invalid(format!(
            "'{at}' has type '{t}', which likewise does not serve yet (string, token, number, \
             date, boolean, objectId, autocomplete, document and embeddedDocuments are served)"
        ))),
        Ok(t) => Err(invalid(format!(
            "'{at}.type' '{t}' is not an Atlas Search field type"
        ))),
        Err(_) => Err(invalid(format!("'{at}' needs a string 'type'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn atlas_definitions_are_read_with_atlas_defaults() {
        let spec = parse(&rawdoc! {
            "analyzer": "lucene.english",
            "mappings": { "dynamic": false, "fields": {
                "title": [{ "type": "string" }, { "type": "document", "fields": {
                    "en": { "type": "string", "analyzer": "lucene.keyword" },
                } }],
                "body": { "type": "string", "searchAnalyzer": "lucene.simple" },
            } },
        })
        .unwrap();
        assert_eq!(spec.search_analyzer, Analyzer::English);
        let title = spec.string_at("title").unwrap();
        assert_eq!(
            (title.analyzer, title.search_analyzer),
            (Analyzer::English, Analyzer::English)
        );
        let en = spec.string_at("title.en").unwrap();
        assert_eq!(
            (en.analyzer, en.search_analyzer),
            (Analyzer::Keyword, Analyzer::Keyword)
        );
        let body = spec.string_at("body").unwrap();
        assert_eq!(
            (body.analyzer, body.search_analyzer),
            (Analyzer::English, Analyzer::Simple)
        );
        assert!(spec.string_at("other").is_none());
        assert!(spec.string_at("title.fr").is_none());
        let dynamic = parse(&rawdoc! { "mappings": { "dynamic": true } }).unwrap();
        assert_eq!(
            dynamic.string_at("any.path").unwrap().analyzer,
            Analyzer::Standard
        );
        assert_eq!(dynamic.projection(), None);
    }

    #[test]
    fn what_is_not_served_is_refused_by_name() {
        for (definition, says) in [
            (
                rawdoc! { "mappings": { "dynamic": true }, "analyzer": "lucene.cjk" },
                "lucene.cjk",
            ),
            (
                rawdoc! { "mappings": { "fields": { "n": { "type": "uuid" } } } },
                "'uuid'",
            ),
            (
                rawdoc! { "mappings": { "fields": { "n": { "type": "number", "indexDoubles": false } } } },
                "indexDoubles",
            ),
            (
                rawdoc! { "mappings": { "fields": { "n": { "type": "nonsense" } } } },
                "nonsense",
            ),
            (
                rawdoc! { "mappings": { "dynamic": true }, "synonyms": [{ "name": "s" }] },
                "synonym mapping 's' needs an 'analyzer'",
            ),
            (
                rawdoc! { "mappings": { "dynamic": true }, "surprise": 1 },
                "surprise",
            ),
            (
                rawdoc! { "mappings": { "dynamic": { "typeSet": "t" } } },
                "typeSet",
            ),
            (
                rawdoc! { "mappings": { "fields": { "s": { "type": "string", "multi": { "m": { "type": "token" } } } } } },
                "must have type string",
            ),
            (rawdoc! { "analyzer": "lucene.standard" }, "mappings"),
        ] {
            let e = parse(&definition).unwrap_err();
            assert_eq!(e.code.code, Code::INVALID_OPTIONS.code);
            assert!(e.message.contains(says), "{} lacks {says}", e.message);
        }
    }
}
