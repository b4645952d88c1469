//! Full-text indexes: Atlas Search's `search` index type, served by
//! tantivy (an in-memory index, no I/O). This module holds what a
//! definition asks for ([`TextSpec`]), the built-in analyzers
//! ([`Analyzer`]), the query operators `$search` takes ([`Operator`]) and
//! the engine ([`TextIndex`]), keyed by document `_id` like the vector
//! catalog's layer.
//!
//! Scoring is Lucene's BM25 (k1 = 1.2, b = 0.75; Lucene's
//! `BM25Similarity`, which Atlas Search runs): each indexed path is a
//! field of its own, with its own lengths and statistics, as Atlas
//! indexes each path as a Lucene field. tantivy's BM25 carries an extra
//! constant factor `(k1 + 1)`, divided out here so scores are Lucene's.
//! Document counts (`N` of the idf) are of documents in the index, where
//! Lucene counts those holding the field; they agree when every document
//! has the path.

use crate::index::analysis::{CharFilter, CharFiltered, Pattern, RegexTokenizer, TokenRule};
use crate::index::embedded::{elements_at, ElementMatches, EmbeddedAggregate, ParentScores};
use crate::index::ids::canonical;
use crate::index::slices;
pub use crate::index::words::Grams;
use crate::index::words::{GramTokenizer, WordTokenizer};
use bson::{RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tantivy::collector::TopDocs;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, FuzzyTermQuery, Occur, PhraseQuery,
    Query, TermQuery,
};
use tantivy::schema::{
    BytesOptions, Field, IndexRecordOption, JsonObjectOptions, OwnedValue, Schema,
    TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RawTokenizer, RemoveLongFilter, Stemmer, StopWordFilter,
    TextAnalyzer, WhitespaceTokenizer,
};
use tantivy::{Directory, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// tantivy's BM25 multiplies Lucene's by `k1 + 1`.
const TANTIVY_BM25_FACTOR: f32 = 2.2;

/// A tantivy `Explanation` (as JSON: `{value, description, details?}`) as
/// Atlas's score details: `{value, description, details}` with `details`
/// always present. `scores` says the node is a score (or a sum, boost or
/// constant of scores), whose value carries tantivy's `(k1 + 1)` factor:
/// it is divided out, and dropped from a term's product; the factors
/// below a term (idf, tf and their inputs) are kept as they are.
fn lucene_explanation(tree: &serde_json::Value, scores: bool) -> RawDocumentBuf {
    let description = tree["description"].as_str().unwrap_or("");
    let value = tree["value"].as_f64().unwrap_or(0.0);
    let term = description.starts_with("TermQuery");
    let mut details = bson::RawArrayBuf::new();
    for child in tree["details"].as_array().into_iter().flatten() {
        if term && child["description"].as_str() == Some("(K1+1)") {
            continue;
        }
        details.push(lucene_explanation(child, scores && !term));
    }
    let value = if scores {
        value / f64::from(TANTIVY_BM25_FACTOR)
    } else {
        value
    };
    let mut out = RawDocumentBuf::new();
    out.append("value", value);
    out.append("description", description);
    out.append("details", details);
    out
}
/// Fields per analyzer for paths met while indexing (dynamic mappings);
/// paths past these share one overflow field (and its statistics).
const DYNAMIC_SLOTS: usize = 32;
/// Lucene's `StandardAnalyzer` default `maxTokenLength`.
const MAX_TOKEN_LENGTH: usize = 255;
/// Documents nested deeper than this are not walked further.
const MAX_DEPTH: usize = 100;
/// Memory the writer buffers before flushing a segment (tantivy's minimum
/// is 15 MB).
const WRITER_BUDGET: usize = 32_000_000;
/// Most term clauses one search builds (Lucene's `maxClauseCount`).
pub const MAX_TERMS: usize = 1024;
/// Longest term a fuzzy match is built for (its automaton grows with it).
pub const MAX_FUZZY_TERM: usize = 255;

/// Why a search could not run.
#[derive(Debug, Clone, PartialEq)]
pub enum TextError {
    /// The query asks for more than is served (too many terms, a fuzzy
    /// term too long): the client's to fix.
    Query(String),
    /// The engine failed.
    Engine(String),
}

/// A built-in Lucene analyzer, by Atlas's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Analyzer {
    /// `lucene.standard`: word boundaries (UAX #29 words, approximated as
    /// runs of word characters joined by `'`, `’` or `.`), lower-cased,
    /// tokens over 255 characters dropped.
    Standard,
    /// `lucene.simple`: runs of letters, lower-cased.
    Simple,
    /// `lucene.whitespace`: split on whitespace, case kept.
    Whitespace,
    /// `lucene.keyword`: the whole value as one token, case kept.
    Keyword,
    /// `lucene.english`: standard, lower-cased, Lucene's English stop
    /// words removed, stemmed (Snowball's English stemmer, which also
    /// drops the possessive `'s`; Lucene's `EnglishAnalyzer` uses Porter's
    /// original, so a few rare words stem differently).
    English,
    /// The definition's custom analyzer at this position of
    /// `TextSpec::analyzers` (registered by `TextIndex::new`).
    Custom(u8),
}

/// Most custom analyzers one definition holds.
pub const MAX_CUSTOM_ANALYZERS: usize = 64;

/// A custom analyzer (an entry of Atlas's `analyzers`): a tokenizer, then
/// token filters in order.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomAnalyzer {
    pub name: String,
    /// `charFilters`, in order, over the text before the tokenizer.
    pub char_filters: Vec<CharFilter>,
    pub tokenizer: CustomTokenizer,
    pub filters: Vec<CustomFilter>,
}

/// The tokenizers a custom analyzer may name (Atlas's `tokenizer.type`).
#[derive(Debug, Clone, PartialEq)]
pub enum CustomTokenizer {
    /// `standard`: words as `lucene.standard` cuts them, tokens longer
    /// than `maxTokenLength` (default 255) dropped.
    Standard { max_token_length: usize },
    /// `whitespace`, the same bound.
    Whitespace { max_token_length: usize },
    /// `keyword`: the whole value.
    Keyword,
    /// `edgeGram`: the value's prefixes of `min` to `max` characters.
    EdgeGram { min: usize, max: usize },
    /// `nGram`: every run of `min` to `max` characters of the value.
    NGram { min: usize, max: usize },
    /// `regexSplit` (`group` `None`: the text between matches) and
    /// `regexCaptureGroup` (`group` `Some(n)`: group `n` of each match).
    Regex {
        pattern: Pattern,
        group: Option<usize>,
    },
}

/// The token filters a custom analyzer may list (Atlas's `tokenFilters`).
#[derive(Debug, Clone, PartialEq)]
pub enum CustomFilter {
    /// `lowercase`.
    Lowercase,
    /// `asciiFolding`: letters with diacritics folded to ASCII.
    AsciiFolding,
    /// `stopword`: these tokens removed (compared as they reach the
    /// filter; `ignoreCase` lower-cases the list, so it applies to tokens
    /// lower-cased before it).
    Stopword(Vec<String>),
    /// `snowballStemming` with `stemmerName`.
    SnowballStemming(tantivy::tokenizer::Language),
    /// `length`, `reverse`, `trim`, `englishPossessive` and `regex`: a
    /// rewrite or a drop of each token on its own.
    Rule(TokenRule),
}

impl CustomAnalyzer {
    fn build(&self) -> TextAnalyzer {
        let limit = |n: usize| RemoveLongFilter::limit(n + 1);
        let mut builder = match &self.tokenizer {
            CustomTokenizer::Standard { max_token_length } => TextAnalyzer::builder(
                CharFiltered::new(self.char_filters.clone(), WordTokenizer::words()),
            )
            .filter(limit(*max_token_length))
            .dynamic(),
            CustomTokenizer::Whitespace { max_token_length } => TextAnalyzer::builder(
                CharFiltered::new(self.char_filters.clone(), WhitespaceTokenizer::default()),
            )
            .filter(limit(*max_token_length))
            .dynamic(),
            CustomTokenizer::Keyword => TextAnalyzer::builder(CharFiltered::new(
                self.char_filters.clone(),
                RawTokenizer::default(),
            ))
            .dynamic(),
            CustomTokenizer::EdgeGram { min, max } | CustomTokenizer::NGram { min, max } => {
                let prefix_only = matches!(self.tokenizer, CustomTokenizer::EdgeGram { .. });
                let grams = tantivy::tokenizer::NgramTokenizer::new(*min, *max, prefix_only)
                    .unwrap_or_else(|_| {
                        tantivy::tokenizer::NgramTokenizer::all_ngrams(1, 1).expect("1..1 grams")
                    });
                TextAnalyzer::builder(CharFiltered::new(self.char_filters.clone(), grams)).dynamic()
            }
            CustomTokenizer::Regex { pattern, group } => TextAnalyzer::builder(CharFiltered::new(
                self.char_filters.clone(),
                RegexTokenizer {
                    pattern: pattern.clone(),
                    group: *group,
                },
            ))
            .dynamic(),
        };
        for filter in &self.filters {
            builder = match filter {
                CustomFilter::Lowercase => builder.filter_dynamic(LowerCaser),
                CustomFilter::AsciiFolding => builder.filter_dynamic(AsciiFoldingFilter),
                CustomFilter::Stopword(words) => {
                    builder.filter_dynamic(StopWordFilter::remove(words.iter().cloned()))
                }
                CustomFilter::SnowballStemming(language) => {
                    builder.filter_dynamic(Stemmer::new(*language))
                }
                CustomFilter::Rule(rule) => builder.filter_dynamic(rule.clone()),
            };
        }
        builder.build()
    }
}

impl Analyzer {
    /// Every analyzer, in a fixed order.
    pub const ALL: [Analyzer; 5] = [
        Analyzer::Standard,
        Analyzer::Simple,
        Analyzer::Whitespace,
        Analyzer::Keyword,
        Analyzer::English,
    ];

    /// The analyzer Atlas calls `name`, if likewise has it.
    pub fn parse(name: &str) -> Option<Analyzer> {
        Analyzer::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Atlas's name (a custom analyzer's is its definition's).
    pub fn name(self) -> &'static str {
        match self {
            Analyzer::Standard => "lucene.standard",
            Analyzer::Simple => "lucene.simple",
            Analyzer::Whitespace => "lucene.whitespace",
            Analyzer::Keyword => "lucene.keyword",
            Analyzer::English => "lucene.english",
            Analyzer::Custom(_) => "a custom analyzer",
        }
    }

    fn build(self) -> TextAnalyzer {
        let words = WordTokenizer::words;
        match self {
            Analyzer::Standard => TextAnalyzer::builder(words())
                .filter(RemoveLongFilter::limit(MAX_TOKEN_LENGTH + 1))
                .filter(LowerCaser)
                .build(),
            Analyzer::Simple => TextAnalyzer::builder(WordTokenizer::letters())
                .filter(LowerCaser)
                .build(),
            Analyzer::Whitespace => TextAnalyzer::builder(WhitespaceTokenizer::default()).build(),
            Analyzer::Keyword => TextAnalyzer::builder(RawTokenizer::default()).build(),
            Analyzer::English => TextAnalyzer::builder(words())
                .filter(RemoveLongFilter::limit(MAX_TOKEN_LENGTH + 1))
                .filter(LowerCaser)
                .filter(
                    StopWordFilter::new(tantivy::tokenizer::Language::English)
                        .expect("English stop words"),
                )
                .filter(Stemmer::new(tantivy::tokenizer::Language::English))
                .build(),
            // Registered by `TextIndex::new` from the definition; never
            // built from here.
            Analyzer::Custom(_) => TextAnalyzer::builder(RawTokenizer::default()).build(),
        }
    }

    fn tokenizer_name(self) -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed(match self {
            Analyzer::Standard => "lw_standard",
            Analyzer::Simple => "lw_simple",
            Analyzer::Whitespace => "lw_whitespace",
            Analyzer::Keyword => "lw_keyword",
            Analyzer::English => "lw_english",
            Analyzer::Custom(i) => return std::borrow::Cow::Owned(format!("lw_custom_{i}")),
        })
    }
}

/// How a `string` path is analyzed at index and at query time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringField {
    pub analyzer: Analyzer,
    pub search_analyzer: Analyzer,
}

/// A document's mapping (`mappings`, or a `document` field's): whether
/// paths it does not name are indexed (`dynamic`, with the index's
/// analyzers), and the fields it names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DocumentMapping {
    pub dynamic: bool,
    pub fields: BTreeMap<String, FieldMapping>,
}

/// A `token` field's `normalizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalizer {
    /// `none`: the string as it is.
    None,
    /// `lowercase`.
    Lowercase,
}

/// The non-text types a path is indexed as, for `equals`, `range`, `in`
/// and `exists` (Atlas's `number`, `date`, `boolean`, `objectId` and
/// `token` field types; a dynamic mapping indexes the first four).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValueTypes {
    /// `int32`, `int64` and `double` values, compared as numbers.
    pub number: bool,
    pub date: bool,
    pub boolean: bool,
    pub object_id: bool,
    /// Strings kept whole (`token`), with their normalizer.
    pub token: Option<Normalizer>,
}

impl ValueTypes {
    /// What a dynamic mapping indexes besides strings.
    const DYNAMIC: ValueTypes = ValueTypes {
        number: true,
        date: true,
        boolean: true,
        object_id: true,
        token: None,
    };

    fn any(self) -> bool {
        self.number || self.date || self.boolean || self.object_id || self.token.is_some()
    }
}

/// An `autocomplete` field: its words cut into grams (Atlas's
/// `tokenization`, `minGrams`, `maxGrams`, `foldDiacritics`), lower-cased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AutocompleteField {
    pub grams: Grams,
    pub min_grams: usize,
    pub max_grams: usize,
    pub fold_diacritics: bool,
}

impl AutocompleteField {
    /// The tokenizer name its index analyzer is registered under.
    fn tokenizer_name(&self) -> String {
        format!(
            "lw_autocomplete_{:?}_{}_{}_{}",
            self.grams, self.min_grams, self.max_grams, self.fold_diacritics
        )
    }

    /// Grams, lower-cased, folded to ASCII when asked.
    fn index_analyzer(&self) -> TextAnalyzer {
        let grams = GramTokenizer::new(self.grams, self.min_grams, self.max_grams);
        match self.fold_diacritics {
            true => TextAnalyzer::builder(grams)
                .filter(LowerCaser)
                .filter(AsciiFoldingFilter)
                .build(),
            false => TextAnalyzer::builder(grams).filter(LowerCaser).build(),
        }
    }

    /// A query's words, treated as the index treats a gram.
    fn query_analyzer(&self) -> TextAnalyzer {
        let words = WordTokenizer::words();
        match self.fold_diacritics {
            true => TextAnalyzer::builder(words)
                .filter(LowerCaser)
                .filter(AsciiFoldingFilter)
                .build(),
            false => TextAnalyzer::builder(words).filter(LowerCaser).build(),
        }
    }
}

/// One named field: as a string, as a document, as values, as
/// autocomplete grams, or several (Atlas allows an array of types per
/// field).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldMapping {
    pub string: Option<StringField>,
    /// A string field's alternate analyzers (Atlas's `multi`), by name:
    /// searched with a path `{value, multi}`.
    pub multi: BTreeMap<String, StringField>,
    pub document: Option<DocumentMapping>,
    /// `embeddedDocuments`: each element of the array of documents here
    /// indexed on its own with this mapping, searched only by
    /// `embeddedDocument`.
    pub embedded: Option<DocumentMapping>,
    pub values: ValueTypes,
    pub autocomplete: Option<AutocompleteField>,
}

/// What a `search` index definition asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSpec {
    pub mappings: DocumentMapping,
    /// The index-level analyzers (`analyzer`, `searchAnalyzer`), used for
    /// dynamic paths and string fields that name none.
    pub analyzer: Analyzer,
    pub search_analyzer: Analyzer,
    /// `storedSource`: the fields `returnStoredSource` returns.
    pub stored_source: StoredSource,
    /// `analyzers`: the definition's custom analyzers, which
    /// `Analyzer::Custom` names by position.
    pub analyzers: Vec<CustomAnalyzer>,
    /// `synonyms`: named mappings read from a collection of the index's
    /// database.
    pub synonyms: Vec<SynonymMapping>,
}

/// An entry of Atlas's `synonyms`: `{name, analyzer, source:
/// {collection}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SynonymMapping {
    pub name: String,
    pub analyzer: Analyzer,
    pub collection: String,
}

/// Most phrases one `phrase` query string with synonyms expands to.
pub const MAX_SYNONYM_PHRASES: usize = 64;

/// Most synonym documents one mapping reads.
pub const MAX_SYNONYM_DOCUMENTS: usize = 10_000;
/// Most bytes of synonym documents one mapping reads.
pub const MAX_SYNONYM_BYTES: usize = 16 << 20;
/// Most words one synonym document lists.
const MAX_SYNONYM_WORDS: usize = 1_000;
/// Most words one mapping holds, all documents together.
const MAX_SYNONYM_WORDS_TOTAL: usize = 100_000;

/// A synonym mapping as read from its collection: groups of words (one
/// per document), and for each analyzed word the groups it matches.
#[derive(Debug, Default)]
pub struct SynonymTable {
    groups: Vec<Vec<String>>,
    by_token: HashMap<String, Vec<u32>>,
    /// When it was read (the proxy re-reads a table older than it likes).
    pub read_at: Option<std::time::Instant>,
}

impl SynonymTable {
    /// The words `token` matches (each once, in group order), or `None`
    /// when the mapping does not name it.
    fn alternatives(&self, token: &str) -> Option<Vec<&str>> {
        let groups = self.by_token.get(token)?;
        let mut seen = std::collections::HashSet::new();
        Some(
            groups
                .iter()
                .flat_map(|&g| self.groups[g as usize].iter())
                .map(String::as_str)
                .filter(|w| seen.insert(*w))
                .collect(),
        )
    }
}

/// Atlas's `storedSource`: which fields of each document the index keeps
/// for `$search` with `returnStoredSource: true` (`_id` always).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StoredSource {
    /// `false` (the default): `_id` only.
    #[default]
    None,
    /// `true`: every field.
    All,
    /// `{include: [paths]}`.
    Include(Vec<String>),
    /// `{exclude: [paths]}`.
    Exclude(Vec<String>),
}

impl StoredSource {
    /// The `$project` stage giving a fetched document's stored fields;
    /// `None` when every field is stored.
    pub fn projection(&self) -> Option<bson::RawDocumentBuf> {
        let mut out = bson::RawDocumentBuf::new();
        match self {
            StoredSource::All => return None,
            StoredSource::None => out.append("_id", 1),
            StoredSource::Include(paths) => {
                out.append("_id", 1);
                for path in paths.iter().filter(|p| *p != "_id") {
                    out.append(path.as_str(), 1);
                }
            }
            StoredSource::Exclude(paths) => {
                for path in paths.iter().filter(|p| *p != "_id") {
                    out.append(path.as_str(), 0);
                }
                if out.is_empty() {
                    return None;
                }
            }
        }
        Some(out)
    }
}

impl TextSpec {
    /// How the string at `path` is analyzed, or `None` if it is not
    /// indexed. `path` is dotted; array positions are not part of it.
    pub fn string_at(&self, path: &str) -> Option<StringField> {
        let dynamic = StringField {
            analyzer: self.analyzer,
            search_analyzer: self.search_analyzer,
        };
        self.lookup(path, |f| f.string, dynamic)
    }

    /// The non-text types the value at `path` is indexed as (`None`: none).
    pub fn values_at(&self, path: &str) -> Option<ValueTypes> {
        self.lookup(
            path,
            |f| f.values.any().then_some(f.values),
            ValueTypes::DYNAMIC,
        )
    }

    /// What the field mapping `path` (`named` of it), or the dynamic
    /// mapping covering it (`dynamic`), says.
    fn lookup<T>(
        &self,
        path: &str,
        of_field: impl Fn(&FieldMapping) -> Option<T>,
        dynamic: T,
    ) -> Option<T> {
        let mut mapping = &self.mappings;
        let mut rest = path;
        loop {
            // The longest named field that prefixes what is left (names
            // may hold dots).
            let named = mapping.fields.iter().rev().find(|(name, _)| {
                let name: &str = name;
                rest == name || rest.strip_prefix(name).is_some_and(|r| r.starts_with('.'))
            });
            match named {
                Some((name, field)) if rest == String::as_str(name) => {
                    return of_field(field);
                }
                Some((name, field)) => match &field.document {
                    Some(inner) => {
                        mapping = inner;
                        rest = &rest[name.len() + 1..];
                    }
                    None => return None,
                },
                None => return mapping.dynamic.then_some(dynamic),
            }
        }
    }

    /// The paths a scan must read, or `None` for whole documents (any
    /// dynamic mapping).
    pub fn projection(&self) -> Option<Vec<String>> {
        fn walk(m: &DocumentMapping, prefix: &str, out: &mut Vec<String>) -> bool {
            if m.dynamic {
                return false;
            }
            for (name, field) in &m.fields {
                let path = format!("{prefix}{name}");
                if field.string.is_some()
                    || field.values.any()
                    || field.autocomplete.is_some()
                    || field.embedded.is_some()
                {
                    // The whole value, so its document fields too (mongod
                    // refuses a projection naming a path and its child).
                    out.push(path);
                } else if let Some(inner) = &field.document {
                    if !walk(inner, &format!("{path}."), out) {
                        return false;
                    }
                }
            }
            true
        }
        let mut out = Vec::new();
        walk(&self.mappings, "", &mut out).then_some(out)
    }

    /// Every string path the mapping names, with its analyzers.
    fn named_strings(&self) -> Vec<(String, StringField)> {
        fn walk(m: &DocumentMapping, prefix: &str, out: &mut Vec<(String, StringField)>) {
            for (name, field) in &m.fields {
                let path = format!("{prefix}{name}");
                if let Some(string) = field.string {
                    out.push((path.clone(), string));
                }
                for (name, string) in &field.multi {
                    out.push((multi_key(&path, name), *string));
                }
                if let Some(inner) = &field.document {
                    walk(inner, &format!("{path}."), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.mappings, "", &mut out);
        out
    }

    /// Every `autocomplete` path the mapping names.
    fn named_autocomplete(&self) -> Vec<(String, AutocompleteField)> {
        fn walk(m: &DocumentMapping, prefix: &str, out: &mut Vec<(String, AutocompleteField)>) {
            for (name, field) in &m.fields {
                let path = format!("{prefix}{name}");
                if let Some(a) = field.autocomplete {
                    out.push((path.clone(), a));
                }
                if let Some(inner) = &field.document {
                    walk(inner, &format!("{path}."), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.mappings, "", &mut out);
        out
    }

    /// Every `embeddedDocuments` path the mapping names (through
    /// `document` fields), with the spec its child index is built from:
    /// the element mapping under the full path, the index's analyzers and
    /// synonyms, nothing stored.
    fn named_embedded(&self) -> Vec<(String, TextSpec)> {
        fn walk(m: &DocumentMapping, prefix: &str, out: &mut Vec<(String, DocumentMapping)>) {
            for (name, field) in &m.fields {
                let path = format!("{prefix}{name}");
                if let Some(e) = &field.embedded {
                    out.push((path.clone(), e.clone()));
                }
                if let Some(inner) = &field.document {
                    walk(inner, &format!("{path}."), out);
                }
            }
        }
        let mut found = Vec::new();
        walk(&self.mappings, "", &mut found);
        found
            .into_iter()
            .map(|(path, mapping)| {
                let field = FieldMapping {
                    document: Some(mapping),
                    ..FieldMapping::default()
                };
                let spec = TextSpec {
                    mappings: DocumentMapping {
                        dynamic: false,
                        fields: BTreeMap::from([(path.clone(), field)]),
                    },
                    stored_source: StoredSource::None,
                    ..self.clone()
                };
                (path, spec)
            })
            .collect()
    }

    /// The analyzer of paths met while indexing, when any mapping is
    /// dynamic.
    fn dynamic_analyzer(&self) -> Option<Analyzer> {
        fn any_dynamic(m: &DocumentMapping) -> bool {
            m.dynamic
                || m.fields
                    .values()
                    .any(|f| f.document.as_ref().is_some_and(any_dynamic))
        }
        any_dynamic(&self.mappings).then_some(self.analyzer)
    }
}

/// A `$search` path: a field, or a wildcard over indexed fields (`*`
/// matches any run of characters, dots included, as in Atlas).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchPath {
    Field(String),
    Wildcard(String),
    /// `{value: path, multi: name}`: the path as its alternate analyzer
    /// `name` indexed it.
    Multi {
        path: String,
        multi: String,
    },
}

/// The key a path's alternate analyzer (`multi`) is indexed under: no
/// document path holds a `\u{1}`.
fn multi_key(path: &str, name: &str) -> String {
    format!("{path}\u{1}{name}")
}

/// A clause's score modifier (Atlas's `score`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScoreModifier {
    /// Multiplies the clause's score.
    Boost(f32),
    /// Replaces it.
    Constant(f32),
}

/// Atlas's `fuzzy` option of `text`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fuzzy {
    /// 1 or 2 (Lucene's `FuzzyQuery` limit).
    pub max_edits: u8,
}

/// A value `equals`, `in` and `range` compare with (the BSON types Atlas
/// indexes for them).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `int32` or `int64`.
    Int(i64),
    Double(f64),
    /// Milliseconds since the Unix epoch.
    Date(i64),
    Boolean(bool),
    ObjectId([u8; 12]),
    /// Compared with `token` fields.
    String(String),
}

impl FieldValue {
    /// The key prefix of the values of this kind in the values field.
    fn kind(&self) -> char {
        match self {
            FieldValue::Int(_) | FieldValue::Double(_) => 'n',
            FieldValue::Date(_) => 'd',
            FieldValue::Boolean(_) => 'b',
            FieldValue::ObjectId(_) => 'o',
            FieldValue::String(_) => 't',
        }
    }

    /// The value of a BSON value, if it is of a kind Atlas compares.
    pub fn of(value: RawBsonRef<'_>) -> Option<FieldValue> {
        Some(match value {
            RawBsonRef::Int32(i) => FieldValue::Int(i64::from(i)),
            RawBsonRef::Int64(i) => FieldValue::Int(i),
            RawBsonRef::Double(d) if d.is_finite() => FieldValue::Double(d),
            RawBsonRef::DateTime(d) => FieldValue::Date(d.timestamp_millis()),
            RawBsonRef::Boolean(b) => FieldValue::Boolean(b),
            RawBsonRef::ObjectId(o) => FieldValue::ObjectId(o.bytes()),
            RawBsonRef::String(s) => FieldValue::String(s.to_string()),
            _ => return None,
        })
    }
}

/// One key of `$search`'s `sort` option.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    /// `{$meta: "searchScore"}`, highest first unless `order: 1`.
    Score { descending: bool },
    /// A `number`, `date`, `token`, `boolean` or `objectId` path; a
    /// document without a value there sorts lowest (Atlas's default
    /// `noData`), an array by its least value ascending and its greatest
    /// descending (Lucene's sorted-numeric selectors).
    Path { path: String, descending: bool },
}

/// A sort key's value in one document.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum SortValue {
    Missing,
    Number(f64),
    Text(String),
    Boolean(bool),
}

/// `$search`'s `highlight` option.
#[derive(Debug, Clone, PartialEq)]
pub struct Highlight {
    pub paths: Vec<SearchPath>,
    /// Most characters of one field read for passages (Atlas's
    /// `maxCharsToExamine`, default 500,000).
    pub max_chars: usize,
    /// Most passages returned per field (Atlas's `maxNumPassages`,
    /// default 5).
    pub max_passages: usize,
}

/// One `{$meta: "searchHighlights"}` entry: a passage of a field with
/// the query's terms marked.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub path: String,
    /// The alternate analyzer the path was searched with (`{value,
    /// multi}`), if any.
    pub multi: Option<String>,
    /// Segments in order: `(text, is_hit)`.
    pub texts: Vec<(String, bool)>,
    pub score: f64,
}

/// One `$searchMeta` facet (Atlas's `facet` collector).
#[derive(Debug, Clone, PartialEq)]
pub enum Facet {
    /// `type: "string"`: the `num_buckets` most frequent values of a
    /// `token` path, most frequent first (equal counts by value).
    String { path: String, num_buckets: usize },
    /// `type: "number"` or `"date"` (`date` set): documents counted in
    /// `[b_i, b_i+1)` for consecutive `boundaries` (ascending; numbers, or
    /// dates as milliseconds, with the BSON value each bucket is named
    /// by), and in the bucket named `default` when they fall outside.
    Bounded {
        path: String,
        date: bool,
        boundaries: Vec<(f64, RawBson)>,
        default: Option<String>,
    },
}

/// A facet's buckets: each bucket's `_id` and how many matching documents
/// fall in it.
pub type Buckets = Vec<(RawBson, u64)>;

/// Search hits: `_id` and Lucene score, best first.
pub type Hits = Vec<(RawBson, f64)>;

/// Most bytes of query strings a search [`TextIndex::prepare_top`]
/// prepares: analyzing them is most of compiling it.
pub const PREPARE_MAX_QUERY_BYTES: usize = 512;

/// Most term lookups (terms times segments) a search
/// [`TextIndex::prepare_top`] prepares: each reads a term dictionary.
pub const PREPARE_MAX_LOOKUPS: usize = 256;

/// A top-`k` search with its query compiled over one searcher (the index
/// as it was when prepared), from [`TextIndex::prepare_top`].
pub struct PreparedTop {
    searcher: tantivy::Searcher,
    walk: Walk,
    k: usize,
    id_field: Field,
}

/// What a prepared search walks.
enum Walk {
    /// A disjunction of terms, weighed, and the most postings it reads.
    Weighed(std::sync::Arc<dyn slices::RangedWeight>, u64),
    /// Any other query, weighed when walked.
    Compiled(Box<dyn Query>),
}

impl PreparedTop {
    /// The most postings the walk reads (every term's document frequency
    /// summed over the segments; MaxScore skips most of them), when the
    /// query is a disjunction of terms whose weight is made; `None` when
    /// that cost is not known before the walk.
    pub fn postings(&self) -> Option<u64> {
        match self.walk {
            Walk::Weighed(_, postings) => Some(postings),
            Walk::Compiled(_) => None,
        }
    }

    /// The walk: what [`TextIndex::top`] returns. Errors: the engine's
    /// ([`TextError::Engine`]).
    pub fn run(self) -> Result<Hits, TextError> {
        let failed = |e: tantivy::TantivyError| TextError::Engine(format!("search failed: {e}"));
        let searcher = self.searcher;
        let top = match self.walk {
            Walk::Weighed(weight, _) => slices::best_k_ranged(&searcher, weight, self.k),
            Walk::Compiled(query) => best_k(&searcher, query.as_ref(), self.k),
        }
        .map_err(failed)?;
        hits_in(self.id_field, &searcher, top.into_iter().take(self.k))
    }
}

/// [`slices::best_k`] of `query` over `searcher`; a disjunction of terms
/// is walked in ranges ([`slices::best_k_ranged`]), so threads share its
/// segments too.
fn best_k(
    searcher: &tantivy::Searcher,
    query: &dyn Query,
    k: usize,
) -> tantivy::Result<Vec<(f32, tantivy::DocAddress)>> {
    match query.downcast_ref::<super::max_score::TermDisjunction>() {
        Some(disjunction) => {
            let (weight, _) = disjunction.weight_and_postings(searcher)?;
            slices::best_k_ranged(searcher, std::sync::Arc::from(weight), k)
        }
        None => slices::best_k(searcher, query, k),
    }
}

/// The `_id`s (stored in `id_field`) and Lucene scores of `hits`, in
/// their order.
fn hits_in(
    id_field: Field,
    searcher: &tantivy::Searcher,
    hits: impl IntoIterator<Item = (f32, tantivy::DocAddress)>,
) -> Result<Hits, TextError> {
    let mut out = Vec::new();
    for (score, address) in hits {
        let doc: TantivyDocument = searcher
            .doc(address)
            .map_err(|e| TextError::Engine(format!("cannot read a hit: {e}")))?;
        let id = doc
            .get_first(id_field)
            .and_then(|v| v.as_bytes())
            .and_then(decode_id);
        if let Some(id) = id {
            out.push((id, f64::from(score / TANTIVY_BM25_FACTOR)));
        }
    }
    Ok(out)
}

/// Analyzed tokens, each with its position.
type Tokens = Vec<(usize, String)>;

/// A `$search` operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Operator {
    /// `text`: any (or, with `match_all`, every) analyzed term of any of
    /// `query`, in any of `paths`; BM25 summed over matching terms.
    Text {
        query: Vec<String>,
        paths: Vec<SearchPath>,
        fuzzy: Option<Fuzzy>,
        match_all: bool,
        score: Option<ScoreModifier>,
        /// The definition's synonym mapping to expand query words with.
        synonyms: Option<String>,
    },
    /// `phrase`: the analyzed terms in order, at most `slop` positions
    /// apart in all.
    Phrase {
        query: Vec<String>,
        paths: Vec<SearchPath>,
        slop: u32,
        score: Option<ScoreModifier>,
        /// The definition's synonym mapping: each word of the phrase may
        /// be any of its synonyms (the phrases they make, at most
        /// [`MAX_SYNONYM_PHRASES`] per query string).
        synonyms: Option<String>,
    },
    /// `equals`: documents whose value at `path` is `value` (a string
    /// value compares with a `token` field); score 1.
    Equals {
        path: String,
        value: FieldValue,
        score: Option<ScoreModifier>,
    },
    /// `in`: documents whose value at `path` is any of `values`; score 1.
    In {
        path: String,
        values: Vec<FieldValue>,
        score: Option<ScoreModifier>,
    },
    /// `range`: numbers or dates within the bounds (both of one kind);
    /// score 1.
    Range {
        path: String,
        lower: std::ops::Bound<FieldValue>,
        upper: std::ops::Bound<FieldValue>,
        score: Option<ScoreModifier>,
    },
    /// `regex` and `wildcard` (translated to a regular expression): terms
    /// of `paths` matching any of `patterns` whole; score 1. Unless
    /// `allow_analyzed`, every path must be analyzed by `lucene.keyword`
    /// (Atlas's `allowAnalyzedField`).
    Regex {
        operator: &'static str,
        patterns: Vec<String>,
        paths: Vec<SearchPath>,
        allow_analyzed: bool,
        score: Option<ScoreModifier>,
    },
    /// `autocomplete`: documents whose `autocomplete` field at `path` has
    /// grams equal to the words of any of `query` (all of them, in order,
    /// with `sequential`); BM25 over the grams.
    Autocomplete {
        query: Vec<String>,
        path: String,
        sequential: bool,
        fuzzy: Option<Fuzzy>,
        score: Option<ScoreModifier>,
    },
    /// `exists`: documents with an indexed value at `path` (or under it);
    /// score 1.
    Exists {
        path: String,
        score: Option<ScoreModifier>,
    },
    /// `compound`: Lucene's boolean query. `filter` clauses must match
    /// and add nothing to the score.
    Compound {
        must: Vec<Operator>,
        must_not: Vec<Operator>,
        should: Vec<Operator>,
        filter: Vec<Operator>,
        minimum_should_match: usize,
        score: Option<ScoreModifier>,
    },
    /// `embeddedDocument`: documents with an element of the
    /// `embeddedDocuments` field at `path` that matches `operator` on its
    /// own (its paths are the element's, under `path.`); scored by
    /// `aggregate` over the matching elements' scores, then `score`
    /// (Atlas's `outerScore`).
    Embedded {
        path: String,
        operator: Box<Operator>,
        aggregate: EmbeddedAggregate,
        score: Option<ScoreModifier>,
    },
}

impl Operator {
    /// This operator with `score` applied to it (a one-clause `compound`
    /// carrying the modifier, which scores as the clause does).
    pub fn with_score(self, score: ScoreModifier) -> Operator {
        Operator::Compound {
            must: vec![self],
            must_not: Vec::new(),
            should: Vec::new(),
            filter: Vec::new(),
            minimum_should_match: 0,
            score: Some(score),
        }
    }

    /// The synonym mappings this operator's `text` clauses name, each once.
    pub fn synonym_mappings(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut todo = vec![self];
        while let Some(op) = todo.pop() {
            match op {
                Operator::Text {
                    synonyms: Some(name),
                    ..
                }
                | Operator::Phrase {
                    synonyms: Some(name),
                    ..
                } if !out.contains(&name.as_str()) => out.push(name),
                Operator::Compound {
                    must,
                    must_not,
                    should,
                    filter,
                    ..
                } => todo.extend(must.iter().chain(must_not).chain(should).chain(filter)),
                Operator::Embedded { operator, .. } => todo.push(operator),
                _ => {}
            }
        }
        out
    }
}

/// Where one indexed path lives in the tantivy schema.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Field(Field),
    /// The analyzer's overflow JSON field, keyed by path.
    Overflow(Field),
}

/// Paths seen so far and their fields.
struct Slots {
    by_path: HashMap<String, (Slot, StringField)>,
    /// Fields not yet given to a dynamic path (popped from the end).
    free: Vec<Field>,
    /// The field dynamic paths share once `free` is empty (`None` without
    /// a dynamic mapping).
    overflow: Option<Field>,
}

/// A full-text index over one collection's documents, keyed by `_id`.
/// Writes are visible to the next search once `apply` returns.
pub struct TextIndex {
    spec: TextSpec,
    index: Index,
    id_field: Field,
    /// Non-text values by kind and path (`n:price`, `d:released`, ...):
    /// indexed whole, and fast for ranges.
    values_field: Field,
    /// Every indexed path of a document and the paths above it, whole
    /// (for `exists`).
    present_field: Field,
    /// `autocomplete` paths: their gram fields.
    autocomplete: HashMap<String, (Field, AutocompleteField)>,
    /// String paths with alternate analyzers: the keys those are indexed
    /// under (`multi_key`).
    multis: HashMap<String, Vec<String>>,
    /// `None` after a failed commit left the writer unusable, until `clear`.
    writer: Mutex<Option<IndexWriter>>,
    reader: IndexReader,
    slots: Mutex<Slots>,
    /// Synonym mappings by name, as last read from their collections
    /// (shared with the embedded indexes).
    synonym_tables: std::sync::Arc<Mutex<HashMap<String, std::sync::Arc<SynonymTable>>>>,
    /// In an embedded index: the `embeddedDocuments` path whose elements
    /// are its documents, each under its parent's `_id`.
    root: Option<String>,
    /// One embedded index per `embeddedDocuments` path, by path.
    embedded: Vec<(String, TextIndex)>,
    /// Mappings being read now (one read at a time per mapping).
    synonyms_reading: Mutex<std::collections::HashSet<String>>,
    /// Terms' places in the segments, as earlier queries found them.
    known_places: std::sync::Arc<super::max_score::KnownPlaces>,
}

/// A document's new state for [`TextIndex::apply`]: indexed anew, or
/// removed.
pub enum TextChange<'a> {
    Set(RawBsonRef<'a>, &'a RawDocument),
    Remove(RawBsonRef<'a>),
}

impl TextIndex {
    /// An empty index for `spec`.
    pub fn new(spec: TextSpec) -> Result<TextIndex, String> {
        TextIndex::open(spec, None, std::sync::Arc::default())
    }

    /// An empty index for `spec`: of whole documents (`root` `None`), or
    /// of the elements at `root`, an `embeddedDocuments` path (their
    /// parent's `_id` also a fast column, for [`ElementMatches`]).
    fn open(
        spec: TextSpec,
        root: Option<String>,
        synonym_tables: std::sync::Arc<Mutex<HashMap<String, std::sync::Arc<SynonymTable>>>>,
    ) -> Result<TextIndex, String> {
        let mut embedded = Vec::new();
        for (path, child) in spec.named_embedded() {
            let index = TextIndex::open(child, Some(path.clone()), synonym_tables.clone())?;
            embedded.push((path, index));
        }
        let mut schema = Schema::builder();
        let id_options = match root {
            None => BytesOptions::default().set_indexed().set_stored(),
            Some(_) => BytesOptions::default().set_indexed().set_fast(),
        };
        let id_field = schema.add_bytes_field("_id", id_options);
        let whole = TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::Basic);
        let values_field = schema.add_json_field(
            "values",
            JsonObjectOptions::default()
                .set_indexing_options(whole.clone())
                .set_fast("raw")
                .set_expand_dots_enabled(),
        );
        let present_field = schema.add_text_field(
            "present",
            TextOptions::default().set_indexing_options(whole),
        );
        // Paths met while indexing a dynamic mapping (all analyzed with the
        // index's analyzer) draw on a pool of fields, then share one.
        let (mut free, mut overflow) = (Vec::new(), None);
        if let Some(analyzer) = spec.dynamic_analyzer() {
            let name = analyzer.tokenizer_name();
            free = (0..DYNAMIC_SLOTS)
                .rev()
                .map(|i| schema.add_text_field(&format!("{name}_{i}"), text_options(analyzer)))
                .collect();
            let json = JsonObjectOptions::default()
                .set_indexing_options(indexing(analyzer))
                .set_expand_dots_enabled();
            overflow = Some(schema.add_json_field(&format!("{name}_more"), json));
        }
        // Paths the mapping names get fields of their own up front, so their
        // statistics never depend on which paths a scan met first.
        let mut by_path = HashMap::new();
        let mut multis: HashMap<String, Vec<String>> = HashMap::new();
        for (i, (path, string)) in spec.named_strings().into_iter().enumerate() {
            if let Some((base, _)) = path.split_once('\u{1}') {
                multis
                    .entry(base.to_string())
                    .or_default()
                    .push(path.clone());
            }
            let field = schema.add_text_field(&format!("named_{i}"), text_options(string.analyzer));
            by_path.insert(path, (Slot::Field(field), string));
        }
        let mut autocomplete = HashMap::new();
        for (i, (path, spec)) in spec.named_autocomplete().into_iter().enumerate() {
            let indexing = TextFieldIndexing::default()
                .set_tokenizer(&spec.tokenizer_name())
                .set_index_option(IndexRecordOption::WithFreqsAndPositions);
            let options = TextOptions::default().set_indexing_options(indexing);
            let field = schema.add_text_field(&format!("autocomplete_{i}"), options);
            autocomplete.insert(path, (field, spec));
        }
        let index = Index::create_in_ram(schema.build());
        for analyzer in Analyzer::ALL {
            index
                .tokenizers()
                .register(&analyzer.tokenizer_name(), analyzer.build());
        }
        for (i, custom) in spec.analyzers.iter().enumerate() {
            let name = Analyzer::Custom(u8::try_from(i).unwrap_or(u8::MAX)).tokenizer_name();
            index.tokenizers().register(&name, custom.build());
        }
        for (_, spec) in autocomplete.values() {
            index
                .tokenizers()
                .register(&spec.tokenizer_name(), spec.index_analyzer());
        }
        let writer = open_writer(&index, slices::PartMerges::BUILDING)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| format!("cannot read the text index: {e}"))?;
        Ok(TextIndex {
            spec,
            index,
            id_field,
            values_field,
            present_field,
            autocomplete,
            multis,
            writer: Mutex::new(Some(writer)),
            reader,
            slots: Mutex::new(Slots {
                by_path,
                free,
                overflow,
            }),
            synonym_tables,
            root,
            embedded,
            synonyms_reading: Mutex::new(std::collections::HashSet::new()),
            known_places: Default::default(),
        })
    }

    /// Documents indexed.
    pub fn len(&self) -> usize {
        usize::try_from(self.reader.searcher().num_docs()).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Segments the index searches now (each commit adds one; tantivy
    /// merges small ones in the background, [`slices::PartMerges`]).
    pub fn segments(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// Merges the searchable segments into as many parts of about equal
    /// size as [`crate::index::slices::parts_for`] gives (one per core,
    /// at most 7, each of at least [`crate::index::slices::MIN_SLICE_DOCS`]
    /// unless the index is smaller; a part that is already one segment
    /// stays as it is), as after a build: a query then walks one set of posting lists per
    /// part, not one per commit (measured on the 100k-document text
    /// bench: 1,634 queries/s on one segment against 1,273 on ten), and
    /// the parts are searched beside each other when cores are free.
    /// Background merges finish first, so the merges name only segments
    /// no other merge holds; writers wait for those, not for these
    /// merges, which run on the merge thread while commits go on (tantivy
    /// applies their deletes to the merged segments). The index is in
    /// memory: while a merge runs it holds the merged segment beside the
    /// old ones. CPU work: a blocking thread. Errors: tantivy's, as text;
    /// when no writer could be opened again, later writes fail as after a
    /// failed commit (a rebuild follows).
    pub fn merge_segments(&self) -> Result<(), String> {
        self.merge_into(&slices::parts_for)
    }

    /// [`TextIndex::merge_segments`] into `parts(documents)` parts. The
    /// embedded indexes merge too, and serve from then on, even when this
    /// one fails (the first error is returned).
    fn merge_into(&self, parts: &dyn Fn(u64) -> usize) -> Result<(), String> {
        let merged = self.merge_own(parts);
        let mut children = Ok(());
        for (_, child) in &self.embedded {
            let outcome = child.merge_into(parts);
            if children.is_ok() {
                children = outcome;
            }
        }
        merged.and(children)
    }

    /// This index's part of [`TextIndex::merge_into`]; its writer merges
    /// as [`slices::PartMerges::SERVING`] from then on.
    fn merge_own(&self, parts: &dyn Fn(u64) -> usize) -> Result<(), String> {
        let merging = {
            let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let writer = guard
                .take()
                .ok_or("the text index's writer failed earlier: it needs a rebuild")?;
            let waited = writer.wait_merging_threads();
            let mut writer = open_writer(&self.index, slices::PartMerges::SERVING)?;
            let metas = self.index.searchable_segment_metas();
            let merging: Vec<_> = match (&waited, &metas) {
                (Ok(()), Ok(metas)) => {
                    let sizes: Vec<u64> = metas.iter().map(|m| u64::from(m.max_doc())).collect();
                    slices::groups_of(&sizes, parts(sizes.iter().sum()))
                        .into_iter()
                        .filter(|group| group.len() > 1)
                        .map(|group| {
                            let ids: Vec<_> = group.iter().map(|&i| metas[i].id()).collect();
                            writer.merge(&ids)
                        })
                        .collect()
                }
                _ => Vec::new(),
            };
            *guard = Some(writer);
            waited.map_err(|e| format!("cannot finish the text index's merges: {e}"))?;
            metas.map_err(|e| format!("cannot list the text index's segments: {e}"))?;
            merging
        };
        for merging in merging {
            merging
                .wait()
                .map_err(|e| format!("cannot merge the text index's segments: {e}"))?;
        }
        self.reader
            .reload()
            .map_err(|e| format!("cannot reload the text index: {e}"))
    }

    /// Applies documents' new states in order and makes them searchable.
    /// CPU work: a blocking thread.
    pub fn apply(&self, changes: &[TextChange<'_>]) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let writer = guard
            .as_mut()
            .ok_or("the text index's writer failed earlier: it needs a rebuild")?;
        for change in changes {
            let id = match change {
                TextChange::Set(id, _) | TextChange::Remove(id) => *id,
            };
            writer.delete_term(Term::from_field_bytes(self.id_field, &canonical(id)));
            if let TextChange::Set(id, doc) = change {
                let mut elements = Vec::new();
                match &self.root {
                    None => elements.push(self.to_tantivy(*id, doc, "")),
                    Some(path) => {
                        let mut found = Vec::new();
                        elements_at(doc, path, &mut found);
                        let prefix = format!("{path}.");
                        for element in found {
                            elements.push(self.to_tantivy(*id, element, &prefix));
                        }
                    }
                }
                for doc in elements {
                    writer
                        .add_document(doc)
                        .map_err(|e| format!("cannot index a document: {e}"))?;
                }
            }
        }
        if let Err(e) = writer.commit() {
            // tantivy's writer is unusable after a failed commit.
            *guard = None;
            return Err(format!("cannot commit the text index: {e}"));
        }
        self.reader
            .reload()
            .map_err(|e| format!("cannot reload the text index: {e}"))?;
        // The elements under the parent's writer lock: writers of the
        // same documents (a build's scan, the change stream) leave parent
        // and elements at the same version.
        for (_, child) in &self.embedded {
            child.apply(changes)?;
        }
        drop(guard);
        Ok(())
    }

    /// Appends this index's snapshot section to `out`: its committed
    /// segment files and `meta.json` (copied under the writer's lock, so
    /// no commit changes them meanwhile), then the fields dynamic paths
    /// were given. Format: u32 file count, then per file u32 name length,
    /// name, u64 length, bytes; u32 path count, then per path u32 length,
    /// path, u32 field id (`u32::MAX`: the overflow field); all
    /// little-endian; then each embedded index's section, in the order
    /// of their paths (sorted), under this index's writer lock.
    pub fn save(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let io = |e: String| std::io::Error::other(e);
        let guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let metas = self
            .index
            .load_metas()
            .map_err(|e| io(format!("cannot read the text index's metadata: {e}")))?;
        let dir = self.index.directory();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        // Every component a segment may have (tantivy's `SegmentComponent`
        // file names), its deletes under the opstamp they were made at.
        let mut names: Vec<std::path::PathBuf> = Vec::new();
        for segment in &metas.segments {
            let id = segment.id().uuid_string();
            for ext in ["idx", "pos", "term", "store", "fast", "fieldnorm"] {
                names.push(format!("{id}.{ext}").into());
            }
            if let Some(opstamp) = segment.delete_opstamp() {
                names.push(format!("{id}.{opstamp}.del").into());
            }
        }
        for name in names {
            match dir.open_read(&name) {
                Ok(file) => {
                    let bytes = file.read_bytes()?;
                    files.push((
                        name.to_string_lossy().into_owned(),
                        bytes.as_slice().to_vec(),
                    ));
                }
                // A component the segment does not have (no deletes, say).
                Err(tantivy::directory::error::OpenReadError::FileDoesNotExist(_)) => {}
                Err(e) => return Err(io(format!("cannot read a text index file: {e}"))),
            }
        }
        let meta = dir
            .atomic_read(std::path::Path::new("meta.json"))
            .map_err(|e| io(format!("cannot read the text index's meta.json: {e}")))?;
        files.push(("meta.json".to_string(), meta));
        out.extend_from_slice(&(files.len() as u32).to_le_bytes());
        for (name, bytes) in &files {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let named: std::collections::HashSet<String> = self
            .spec
            .named_strings()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let dynamic: Vec<(&String, u32)> = slots
            .by_path
            .iter()
            .filter(|(path, _)| !named.contains(*path))
            .map(|(path, (slot, _))| match slot {
                Slot::Field(f) => (path, f.field_id()),
                Slot::Overflow(_) => (path, u32::MAX),
            })
            .collect();
        out.extend_from_slice(&(dynamic.len() as u32).to_le_bytes());
        for (path, id) in dynamic {
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        drop(slots);
        // Then each embedded index's section, still under the writer
        // lock, so they hold the same writes as the parent's.
        for (_, child) in &self.embedded {
            child.save(out)?;
        }
        drop(guard);
        Ok(())
    }

    /// Replaces this (fresh) index's contents with a snapshot section
    /// `save` wrote. On error the index is left unusable until
    /// [`TextIndex::clear`].
    pub fn restore(&self, r: &mut crate::index::bytes::Reader<'_>) -> std::io::Result<()> {
        use std::io::Write;
        use tantivy::directory::TerminatingWrite;
        let io = |e: String| std::io::Error::other(e);
        let corrupt =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Closing the writer releases the directory for the files below.
        *guard = None;
        let dir = self.index.directory();
        let count = r.u32()?;
        let mut meta = None;
        for _ in 0..count {
            let len = r.u32()? as usize;
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| corrupt("a text index file name is not UTF-8"))?
                .to_string();
            let size = r.size()?;
            let bytes = r.take(size)?;
            if name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(corrupt("a text index file name with a path"));
            }
            if name == "meta.json" {
                meta = Some(bytes);
                continue;
            }
            let mut file = dir
                .open_write(std::path::Path::new(&name))
                .map_err(|e| io(format!("cannot restore {name}: {e}")))?;
            file.write_all(bytes)?;
            file.terminate()?;
        }
        let meta = meta.ok_or_else(|| corrupt("no meta.json in the text index snapshot"))?;
        dir.atomic_write(std::path::Path::new("meta.json"), meta)?;
        *guard = Some(open_writer(&self.index, slices::PartMerges::SERVING).map_err(io)?);
        drop(guard);
        self.reader
            .reload()
            .map_err(|e| io(format!("cannot reload the text index: {e}")))?;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..r.u32()? {
            let len = r.u32()? as usize;
            let path = std::str::from_utf8(r.take(len)?)
                .map_err(|_| corrupt("a path is not UTF-8"))?
                .to_string();
            let id = r.u32()?;
            let string = self
                .spec
                .string_at(&path)
                .ok_or_else(|| corrupt("a dynamic path the mapping does not index"))?;
            let slot = if id == u32::MAX {
                Slot::Overflow(slots.overflow.ok_or_else(|| corrupt("no overflow field"))?)
            } else {
                let field = Field::from_field_id(id);
                let at = slots
                    .free
                    .iter()
                    .position(|f| *f == field)
                    .ok_or_else(|| corrupt("a dynamic path's field is not free"))?;
                slots.free.remove(at);
                Slot::Field(field)
            };
            slots.by_path.insert(path, (slot, string));
        }
        drop(slots);
        for (_, child) in &self.embedded {
            child.restore(r)?;
        }
        Ok(())
    }

    /// The `_id`s of every indexed document.
    pub fn ids(&self) -> crate::index::ids::IdSet {
        let searcher = self.reader.searcher();
        let mut out = crate::index::ids::IdSet::default();
        let Ok(all) = searcher.search(
            &tantivy::query::AllQuery,
            &tantivy::collector::DocSetCollector,
        ) else {
            return out;
        };
        for address in all {
            let id = searcher
                .doc::<TantivyDocument>(address)
                .ok()
                .and_then(|doc| {
                    doc.get_first(self.id_field)
                        .and_then(|v| v.as_bytes())
                        .and_then(decode_id)
                });
            if let Some(id) = id {
                out.add(id.as_raw_bson_ref());
            }
        }
        out
    }

    /// Removes every document, opening a new writer when the last one
    /// failed.
    pub fn clear(&self) -> Result<(), String> {
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let cleared = match guard.as_mut() {
            Some(writer) => writer
                .delete_all_documents()
                .and_then(|_| writer.commit())
                .map(|_| writer.set_merge_policy(Box::new(slices::PartMerges::BUILDING))),
            None => Err(tantivy::TantivyError::InternalError("no writer".into())),
        };
        if cleared.is_err() {
            // Drop the broken writer (it holds the index's writer lock),
            // then start over with a fresh one.
            *guard = None;
            let mut writer = open_writer(&self.index, slices::PartMerges::BUILDING)?;
            writer
                .delete_all_documents()
                .and_then(|_| writer.commit())
                .map_err(|e| format!("cannot clear the text index: {e}"))?;
            *guard = Some(writer);
        }
        drop(guard);
        self.reader
            .reload()
            .map_err(|e| format!("cannot reload the text index: {e}"))?;
        for (_, child) in &self.embedded {
            child.clear()?;
        }
        Ok(())
    }

    /// The `k` best-scoring documents for `operator`, best first, with
    /// Lucene's scores, and how many documents matched in all. Errors:
    /// [`TextError::Query`] past [`MAX_TERMS`] term clauses or for a fuzzy
    /// term longer than [`MAX_FUZZY_TERM`].
    pub fn search(&self, operator: &Operator, k: usize) -> Result<(Hits, usize), TextError> {
        let (hits, total) = self.run(operator, k, true)?;
        Ok((hits, total.unwrap_or(0)))
    }

    /// [`TextIndex::search`] without the count of all matches, which costs
    /// a visit of every match (the best `k` alone skip most, by block-max
    /// WAND).
    pub fn top(&self, operator: &Operator, k: usize) -> Result<Hits, TextError> {
        Ok(self.run(operator, k, false)?.0)
    }

    /// [`TextIndex::top`] made ready up to its walk, for a plain `text`
    /// operator (no `fuzzy`, `synonyms`, `matchCriteria: "all"` or
    /// `score`) over named paths (no wildcard) whose query strings hold
    /// at most [`PREPARE_MAX_QUERY_BYTES`] bytes and whose paths, times
    /// the segments, make at most [`PREPARE_MAX_LOOKUPS`]; `Ok(None)` for
    /// any other (a caller runs [`TextIndex::top`]). What it does is
    /// bounded so: the query strings analyzed once per path, and, when
    /// they make a disjunction of terms (`text` of three terms or more)
    /// of at most [`PREPARE_MAX_LOOKUPS`] lookups (terms times segments),
    /// each term looked up once per segment for its weight, which tells
    /// the walk's cost ([`PreparedTop::postings`]); any other query's
    /// weight is made by [`PreparedTop::run`]. Errors: as for
    /// [`TextIndex::top`].
    pub fn prepare_top(
        &self,
        operator: &Operator,
        k: usize,
    ) -> Result<Option<PreparedTop>, TextError> {
        let Operator::Text {
            query,
            paths,
            fuzzy: None,
            match_all: false,
            score: None,
            synonyms: None,
        } = operator
        else {
            return Ok(None);
        };
        let searcher = self.reader.searcher();
        let segments = searcher.segment_readers().len();
        if query.iter().map(String::len).sum::<usize>() > PREPARE_MAX_QUERY_BYTES
            || paths.iter().any(|p| matches!(p, SearchPath::Wildcard(_)))
            || paths.len().saturating_mul(segments) > PREPARE_MAX_LOOKUPS
        {
            return Ok(None);
        }
        let compiled = self.compile(operator)?;
        let walk = match compiled.downcast_ref::<super::max_score::TermDisjunction>() {
            Some(disjunction)
                if disjunction.len().saturating_mul(segments) <= PREPARE_MAX_LOOKUPS =>
            {
                let (weight, postings) = disjunction
                    .weight_and_postings(&searcher)
                    .map_err(|e| TextError::Engine(format!("search failed: {e}")))?;
                Walk::Weighed(std::sync::Arc::from(weight), postings)
            }
            _ => Walk::Compiled(compiled),
        };
        Ok(Some(PreparedTop {
            searcher,
            walk,
            k,
            id_field: self.id_field,
        }))
    }

    /// `operator` as a tantivy query, within [`MAX_TERMS`] term clauses.
    fn compile(&self, operator: &Operator) -> Result<Box<dyn Query>, TextError> {
        let mut budget = MAX_TERMS;
        self.query(operator, &mut budget)
    }

    /// The `_id`s and Lucene scores of `hits`, in their order.
    fn hits_of(
        &self,
        searcher: &tantivy::Searcher,
        hits: impl IntoIterator<Item = (f32, tantivy::DocAddress)>,
    ) -> Result<Hits, TextError> {
        hits_in(self.id_field, searcher, hits)
    }

    /// Atlas's `scoreDetails` (`{$meta: "searchScoreDetails"}`) of each
    /// document `ids` names for `operator`, in order: `{value,
    /// description, details: [...]}` trees as Lucene's `Explanation`
    /// gives them (tantivy's, with its `(k1 + 1)` factor divided out of
    /// every score node so each value is the one `searchScore` reports),
    /// or `None` for an id the index does not hold or that does not match.
    /// Each document is found by its `_id` term and explained on its own
    /// (tantivy's `Query::explain`).
    pub fn explain(
        &self,
        operator: &Operator,
        ids: &[RawBson],
    ) -> Result<Vec<Option<RawDocumentBuf>>, TextError> {
        let query = self.compile(operator)?;
        let searcher = self.reader.searcher();
        let failed = |e: tantivy::TantivyError| TextError::Engine(format!("explain failed: {e}"));
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let term = Term::from_field_bytes(self.id_field, &canonical(id.as_raw_bson_ref()));
            let by_id = tantivy::query::TermQuery::new(term, IndexRecordOption::Basic);
            let found = searcher
                .search(&by_id, &TopDocs::with_limit(1).order_by_score())
                .map_err(failed)?;
            let explained = match found.first() {
                Some((_, address)) => query.explain(&searcher, *address).ok().and_then(|e| {
                    serde_json::to_value(&e)
                        .ok()
                        .map(|tree| lucene_explanation(&tree, true))
                }),
                None => None,
            };
            out.push(explained);
        }
        Ok(out)
    }

    fn run(
        &self,
        operator: &Operator,
        k: usize,
        count: bool,
    ) -> Result<(Hits, Option<usize>), TextError> {
        let query = self.compile(operator)?;
        let searcher = self.reader.searcher();
        let failed = |e: tantivy::TantivyError| TextError::Engine(format!("search failed: {e}"));
        let (top, total) = if count {
            let best = TopDocs::with_limit(k.max(1)).order_by_score();
            let (top, total) = searcher
                .search(query.as_ref(), &(best, tantivy::collector::Count))
                .map_err(failed)?;
            (top, Some(total))
        } else {
            (best_k(&searcher, query.as_ref(), k).map_err(failed)?, None)
        };
        let out = self.hits_of(&searcher, top.into_iter().take(k))?;
        Ok((out, total))
    }

    /// The `k` first documents matching `operator` in `sort`'s order (then
    /// best score first), with their scores, and how many matched (it
    /// visits every match). Reads every match's keys from the fast columns
    /// of the typed values. Errors as for [`TextIndex::search`].
    pub fn sorted(
        &self,
        operator: &Operator,
        sort: &[SortKey],
        k: usize,
    ) -> Result<(Hits, usize), TextError> {
        let query = self.compile(operator)?;
        let searcher = self.reader.searcher();
        let engine =
            |e: tantivy::TantivyError| TextError::Engine(format!("sorted search failed: {e}"));
        let everything = usize::try_from(searcher.num_docs())
            .unwrap_or(usize::MAX)
            .max(1);
        let all = searcher
            .search(
                query.as_ref(),
                &TopDocs::with_limit(everything).order_by_score(),
            )
            .map_err(engine)?;
        let mut keyed = Vec::with_capacity(all.len());
        let mut by_segment: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, (_, address)) in all.iter().enumerate() {
            by_segment.entry(address.segment_ord).or_default().push(i);
        }
        let mut keys: Vec<Vec<SortValue>> = vec![Vec::new(); all.len()];
        for (segment, hits) in &by_segment {
            let fast = searcher.segment_reader(*segment).fast_fields();
            for key in sort {
                let SortKey::Path { path, descending } = key else {
                    for &i in hits {
                        keys[i].push(SortValue::Number(f64::from(all[i].0)));
                    }
                    continue;
                };
                let numbers: Vec<NumberColumn> = ['n', 'd']
                    .iter()
                    .flat_map(|kind| number_columns(fast, &format!("values.{kind}:{path}")))
                    .collect();
                let strings: Vec<tantivy::columnar::StrColumn> = ['t', 'o']
                    .iter()
                    .filter_map(|kind| fast.str(&format!("values.{kind}:{path}")).ok().flatten())
                    .collect();
                let booleans = fast
                    .column_opt::<bool>(&format!("values.b:{path}"))
                    .ok()
                    .flatten();
                for &i in hits {
                    let doc = all[i].1.doc_id;
                    let mut values: Vec<SortValue> = numbers_of(&numbers, doc)
                        .into_iter()
                        .map(SortValue::Number)
                        .collect();
                    for c in &strings {
                        let mut text = String::new();
                        for ord in c.term_ords(doc) {
                            text.clear();
                            if c.ord_to_str(ord, &mut text).unwrap_or(false) {
                                values.push(SortValue::Text(text.clone()));
                            }
                        }
                    }
                    if let Some(c) = &booleans {
                        values.extend(c.values_for_doc(doc).map(SortValue::Boolean));
                    }
                    let pick = values.into_iter().reduce(|a, b| {
                        let a_first = a.partial_cmp(&b) != Some(std::cmp::Ordering::Greater);
                        if a_first != *descending {
                            a
                        } else {
                            b
                        }
                    });
                    keys[i].push(pick.unwrap_or(SortValue::Missing));
                }
            }
        }
        for (i, hit) in all.into_iter().enumerate() {
            keyed.push((std::mem::take(&mut keys[i]), hit));
        }
        keyed.sort_by(|(a, x), (b, y)| {
            for (key, (va, vb)) in sort.iter().zip(a.iter().zip(b)) {
                let descending = match key {
                    SortKey::Score { descending } | SortKey::Path { descending, .. } => *descending,
                };
                let order = va.partial_cmp(vb).unwrap_or(std::cmp::Ordering::Equal);
                let order = if descending { order.reverse() } else { order };
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
            }
            y.0.partial_cmp(&x.0).unwrap_or(std::cmp::Ordering::Equal)
        });
        let matched = keyed.len();
        let hits = self.hits_of(&searcher, keyed.into_iter().take(k).map(|(_, hit)| hit))?;
        Ok((hits, matched))
    }

    /// The passages of `doc`'s highlighted paths holding terms `operator`
    /// searches for there, best first per path (at most
    /// `highlight.max_passages` each). A passage is a sentence (text up to
    /// `.`, `!` or `?` and a space); its score is its count of hits (where
    /// Lucene's unified highlighter scores passages by BM25).
    pub fn highlights(
        &self,
        operator: &Operator,
        highlight: &Highlight,
        doc: &RawDocument,
    ) -> Vec<Passage> {
        let mut terms: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        self.searched_terms(operator, &mut terms);
        let mut leaves = Vec::new();
        collect_leaves(doc, "", 0, &mut leaves);
        let mut out = Vec::new();
        for (path, _, string) in self.resolve(&highlight.paths) {
            let Some(wanted) = terms.get(&path) else {
                continue;
            };
            let mut passages = Vec::new();
            let mut budget = highlight.max_chars;
            // A `multi` key is its document path and the analyzer's name.
            let (field, multi) = match path.split_once('\u{1}') {
                Some((field, multi)) => (field, Some(multi)),
                None => (path.as_str(), None),
            };
            for (leaf, value) in &leaves {
                let (true, RawBsonRef::String(text)) = (leaf == field, value) else {
                    continue;
                };
                let mut end = text.len().min(budget);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                budget -= end;
                passages.extend(
                    self.passages(field, string.analyzer, &text[..end], wanted)
                        .into_iter()
                        .map(|p| Passage {
                            multi: multi.map(str::to_string),
                            ..p
                        }),
                );
            }
            passages.sort_by(|a, b| {
                b.score
                    .partial_cmp(&a.score)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            passages.truncate(highlight.max_passages);
            out.extend(passages);
        }
        out
    }

    /// The sentences of `text` that hold a token of `wanted`, as passages.
    fn passages(
        &self,
        path: &str,
        analyzer: Analyzer,
        text: &str,
        wanted: &std::collections::HashSet<String>,
    ) -> Vec<Passage> {
        let mut tokenizer = self.analyzer(analyzer);
        let mut stream = tokenizer.token_stream(text);
        let mut hits = Vec::new();
        while let Some(token) = stream.next() {
            if wanted.contains(&token.text) {
                hits.push((token.offset_from, token.offset_to));
            }
        }
        // Sentence bounds: after `.`, `!` or `?` followed by whitespace.
        let mut bounds = vec![0];
        let bytes = text.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if matches!(b, b'.' | b'!' | b'?')
                && bytes.get(i + 1).is_some_and(|n| n.is_ascii_whitespace())
            {
                bounds.push(i + 2);
            }
        }
        bounds.push(text.len());
        let mut out = Vec::new();
        // Hits and sentence bounds both ascend: one pass over each.
        let mut next_hit = 0;
        for w in bounds.windows(2) {
            let (from, to) = (w[0], w[1].max(w[0]));
            while next_hit < hits.len() && hits[next_hit].0 < from {
                next_hit += 1;
            }
            let first = next_hit;
            while next_hit < hits.len() && hits[next_hit].1 <= to {
                next_hit += 1;
            }
            let inside = &hits[first..next_hit];
            if inside.is_empty() {
                continue;
            }
            let mut texts = Vec::new();
            let mut at = from;
            for (a, b) in inside {
                if *a > at {
                    texts.push((text[at..*a].to_string(), false));
                }
                texts.push((text[*a..*b].to_string(), true));
                at = *b;
            }
            let tail = text[at..to].trim_end();
            if !tail.is_empty() {
                texts.push((tail.to_string(), false));
            }
            out.push(Passage {
                path: path.to_string(),
                multi: None,
                texts,
                score: inside.len() as f64,
            });
        }
        out
    }

    /// The analyzed terms `operator` searches for, by indexed path (what
    /// a hit looks like after the path's analyzer): `text` and `phrase`
    /// terms, through `compound`'s `must`, `should` and `filter`.
    fn searched_terms(
        &self,
        operator: &Operator,
        out: &mut HashMap<String, std::collections::HashSet<String>>,
    ) {
        match operator {
            Operator::Text { query, paths, .. } | Operator::Phrase { query, paths, .. } => {
                for (path, _, string) in self.resolve(paths) {
                    let mut tokenizer = self.analyzer(string.search_analyzer);
                    let set = out.entry(path.clone()).or_default();
                    for text in query {
                        let mut stream = tokenizer.token_stream(text);
                        while let Some(token) = stream.next() {
                            set.insert(token.text.clone());
                        }
                    }
                }
            }
            Operator::Compound {
                must,
                should,
                filter,
                ..
            } => {
                for op in must.iter().chain(should).chain(filter) {
                    self.searched_terms(op, out);
                }
            }
            _ => {}
        }
    }

    /// How many documents match `operator` (every document when `None`),
    /// and each of `facets`' buckets over them. Errors:
    /// [`TextError::Query`] as for [`TextIndex::search`].
    pub fn facets(
        &self,
        operator: Option<&Operator>,
        facets: &[Facet],
    ) -> Result<(usize, Vec<Buckets>), TextError> {
        let query: Box<dyn Query> = match operator {
            Some(op) => self.compile(op)?,
            None => Box::new(tantivy::query::AllQuery),
        };
        let searcher = self.reader.searcher();
        let engine = |e: tantivy::TantivyError| TextError::Engine(format!("facets failed: {e}"));
        let matched = searcher
            .search(query.as_ref(), &tantivy::collector::DocSetCollector)
            .map_err(engine)?;
        let mut by_segment: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for address in &matched {
            by_segment
                .entry(address.segment_ord)
                .or_default()
                .push(address.doc_id);
        }
        let mut out = Vec::with_capacity(facets.len());
        for facet in facets {
            out.push(match facet {
                Facet::String { path, num_buckets } => {
                    let mut counts: HashMap<String, u64> = HashMap::new();
                    for (segment, docs) in &by_segment {
                        let reader = searcher.segment_reader(*segment);
                        let column = reader
                            .fast_fields()
                            .str(&format!("values.t:{path}"))
                            .map_err(engine)?;
                        let Some(column) = column else { continue };
                        let mut value = String::new();
                        for doc in docs {
                            let mut ords: Vec<u64> = column.term_ords(*doc).collect();
                            ords.dedup();
                            for ord in ords {
                                value.clear();
                                if column.ord_to_str(ord, &mut value).unwrap_or(false) {
                                    *counts.entry(value.clone()).or_default() += 1;
                                }
                            }
                        }
                    }
                    let mut buckets: Vec<(String, u64)> = counts.into_iter().collect();
                    buckets.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    buckets.truncate(*num_buckets);
                    buckets
                        .into_iter()
                        .map(|(v, n)| (RawBson::String(v), n))
                        .collect()
                }
                Facet::Bounded {
                    path,
                    date,
                    boundaries,
                    default,
                } => {
                    let kind = if *date { 'd' } else { 'n' };
                    let name = format!("values.{kind}:{path}");
                    let mut counts = vec![0u64; boundaries.len().saturating_sub(1) + 1];
                    for (segment, docs) in &by_segment {
                        let fast = searcher.segment_reader(*segment).fast_fields();
                        let columns = number_columns(fast, &name);
                        for doc in docs {
                            let values = numbers_of(&columns, *doc);
                            let mut hit = vec![false; counts.len()];
                            for v in values {
                                // The last boundary at or below `v`; past
                                // either end, the default bucket.
                                let at = boundaries.partition_point(|b| b.0 <= v);
                                let bucket = if at == 0 || at == boundaries.len() {
                                    counts.len() - 1
                                } else {
                                    at - 1
                                };
                                hit[bucket] = true;
                            }
                            for (count, hit) in counts.iter_mut().zip(hit) {
                                *count += u64::from(hit);
                            }
                        }
                    }
                    let mut buckets: Buckets = boundaries
                        .iter()
                        .zip(&counts)
                        .take(boundaries.len().saturating_sub(1))
                        .map(|((_, id), n)| (id.clone(), *n))
                        .collect();
                    if let Some(name) = default {
                        buckets.push((RawBson::String(name.clone()), counts[counts.len() - 1]));
                    }
                    buckets
                }
            });
        }
        Ok((matched.len(), out))
    }

    /// `doc` as a tantivy document under `id`, its paths under `prefix`
    /// (an embedded element's `path.`, else empty).
    fn to_tantivy(&self, id: RawBsonRef<'_>, doc: &RawDocument, prefix: &str) -> TantivyDocument {
        let mut leaves = Vec::new();
        collect_leaves(doc, prefix, usize::from(!prefix.is_empty()), &mut leaves);
        let mut out = TantivyDocument::default();
        out.add_bytes(self.id_field, &canonical(id));
        let mut overflow: BTreeMap<String, Vec<OwnedValue>> = BTreeMap::new();
        let mut values: BTreeMap<String, Vec<OwnedValue>> = BTreeMap::new();
        let mut present = std::collections::BTreeSet::new();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for (path, value) in leaves {
            let mut indexed = false;
            if let RawBsonRef::String(text) = value {
                match self.slot_for(&mut slots, &path) {
                    Some(Slot::Field(field)) => out.add_text(field, text),
                    Some(Slot::Overflow(_)) => overflow
                        .entry(path.clone())
                        .or_default()
                        .push(OwnedValue::Str(text.to_string())),
                    None => {}
                }
                indexed = slots.by_path.contains_key(&path);
                for key in self.multis.get(&path).into_iter().flatten() {
                    if let Some((Slot::Field(field), _)) = slots.by_path.get(key) {
                        out.add_text(*field, text);
                    }
                }
                if let Some((field, _)) = self.autocomplete.get(&path) {
                    out.add_text(*field, text);
                    indexed = true;
                }
            }
            if let Some((key, v)) = self.value_entry(&path, value) {
                values.entry(key).or_default().push(v);
                indexed = true;
            }
            if indexed {
                let mut at = 0;
                while let Some(dot) = path[at..].find('.') {
                    present.insert(path[..at + dot].to_string());
                    at += dot + 1;
                }
                present.insert(path);
            }
        }
        if let (Some(field), false) = (slots.overflow, overflow.is_empty()) {
            let object = overflow
                .into_iter()
                .map(|(path, values)| (path, OwnedValue::Array(values)))
                .collect();
            out.add_object(field, object);
        }
        if !values.is_empty() {
            let object = values
                .into_iter()
                .map(|(key, values)| (key, OwnedValue::Array(values)))
                .collect();
            out.add_object(self.values_field, object);
        }
        for path in present {
            out.add_text(self.present_field, path);
        }
        out
    }

    /// Where a non-text value at `path` goes in the values field, if the
    /// mapping indexes it: its key (`kind:path`) and value.
    fn value_entry(&self, path: &str, value: RawBsonRef<'_>) -> Option<(String, OwnedValue)> {
        let types = self.spec.values_at(path)?;
        let value = FieldValue::of(value)?;
        let owned = match &value {
            FieldValue::Int(i) if types.number => OwnedValue::I64(*i),
            FieldValue::Double(d) if types.number => OwnedValue::F64(*d),
            FieldValue::Date(ms) if types.date => OwnedValue::I64(*ms),
            FieldValue::Boolean(b) if types.boolean => OwnedValue::Bool(*b),
            FieldValue::ObjectId(o) if types.object_id => OwnedValue::Str(hex(o)),
            FieldValue::String(s) => OwnedValue::Str(normalized(types.token?, s)),
            _ => return None,
        };
        Some((format!("{}:{path}", value.kind()), owned))
    }

    /// The term of `value` at `path` in the values field, as indexing
    /// wrote it (tantivy stores an integral double as an integer).
    fn value_term(&self, path: &str, value: &FieldValue) -> Term {
        let key = format!("{}:{path}", value.kind());
        let mut term = Term::from_field_json_path(self.values_field, &key, true);
        match value {
            FieldValue::Int(i) | FieldValue::Date(i) => term.append_type_and_fast_value(*i),
            FieldValue::Double(d) => {
                if d.fract() == 0.0 && *d >= -(2f64.powi(63)) && *d < 2f64.powi(63) {
                    term.append_type_and_fast_value(*d as i64)
                } else if d.fract() == 0.0 && *d >= 0.0 && *d < 2f64.powi(64) {
                    term.append_type_and_fast_value(*d as u64)
                } else {
                    term.append_type_and_fast_value(*d)
                }
            }
            FieldValue::Boolean(b) => term.append_type_and_fast_value(*b),
            FieldValue::ObjectId(o) => term.append_type_and_str(&hex(o)),
            FieldValue::String(s) => {
                let normalizer = self
                    .spec
                    .values_at(path)
                    .and_then(|t| t.token)
                    .unwrap_or(Normalizer::None);
                term.append_type_and_str(&normalized(normalizer, s))
            }
        }
        term
    }

    /// A range bound's term: numbers as doubles (the fast-field range
    /// compares them with a column of either kind), dates as milliseconds.
    fn bound_term(&self, path: &str, value: &FieldValue) -> Term {
        let key = format!("{}:{path}", value.kind());
        let mut term = Term::from_field_json_path(self.values_field, &key, true);
        match value {
            FieldValue::Int(i) => term.append_type_and_fast_value(*i as f64),
            FieldValue::Double(d) => term.append_type_and_fast_value(*d),
            _ => return self.value_term(path, value),
        }
        term
    }

    /// The slot of `path` when it is indexed, assigning a dynamic path one
    /// the first time it is met (named paths have theirs from the start).
    fn slot_for(&self, slots: &mut Slots, path: &str) -> Option<Slot> {
        if let Some((slot, _)) = slots.by_path.get(path) {
            return Some(*slot);
        }
        let string = self.spec.string_at(path)?;
        let slot = match slots.free.pop() {
            Some(field) => Slot::Field(field),
            None => Slot::Overflow(slots.overflow?),
        };
        slots.by_path.insert(path.to_string(), (slot, string));
        Some(slot)
    }

    /// Indexed paths matching `paths`, with their slots and analyzers.
    fn resolve(&self, paths: &[SearchPath]) -> Vec<(String, Slot, StringField)> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for path in paths {
            match path {
                SearchPath::Field(name) => {
                    if let Some((slot, string)) = slots.by_path.get(name) {
                        out.push((name.clone(), *slot, *string));
                    }
                }
                SearchPath::Multi { path, multi } => {
                    let key = multi_key(path, multi);
                    if let Some((slot, string)) = slots.by_path.get(&key) {
                        out.push((key, *slot, *string));
                    }
                }
                SearchPath::Wildcard(glob) => {
                    let mut matched: Vec<_> = slots
                        .by_path
                        .iter()
                        .filter(|(name, _)| !name.contains('\u{1}') && glob_matches(glob, name))
                        .map(|(name, (slot, string))| (name.clone(), *slot, *string))
                        .collect();
                    matched.sort_by(|a, b| a.0.cmp(&b.0));
                    out.extend(matched);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|(path, _, _)| seen.insert(path.clone()));
        out
    }

    /// The analyzer registered for `analyzer`.
    fn analyzer(&self, analyzer: Analyzer) -> TextAnalyzer {
        self.index
            .tokenizers()
            .get(&analyzer.tokenizer_name())
            .unwrap_or_else(|| analyzer.build())
    }

    /// The analyzed terms of `text` for `path`, with their positions; more
    /// than [`MAX_TERMS`] is a [`TextError::Query`].
    fn terms(
        &self,
        path: &str,
        slot: Slot,
        analyzer: Analyzer,
        text: &str,
    ) -> Result<Vec<(usize, Term)>, TextError> {
        Ok(self
            .tokens(analyzer, text)?
            .into_iter()
            .map(|(position, token)| (position, term_of(path, slot, &token)))
            .collect())
    }

    /// The analyzed tokens of `text` with their positions; more than
    /// [`MAX_TERMS`] is a [`TextError::Query`].
    fn tokens(&self, analyzer: Analyzer, text: &str) -> Result<Tokens, TextError> {
        let mut tokenizer = self.analyzer(analyzer);
        let mut stream = tokenizer.token_stream(text);
        let mut out = Vec::new();
        while let Some(token) = stream.next() {
            out.push((token.position, token.text.clone()));
            if out.len() > MAX_TERMS {
                return Err(TextError::Query(format!(
                    "the query has more than {MAX_TERMS} terms"
                )));
            }
        }
        Ok(out)
    }

    /// The phrases `text` stands for under a synonym table: each word
    /// replaced by each of its alternatives (a word the table does not
    /// name stands for itself; a multi-word synonym for its words in
    /// order), positions renumbered; at most [`MAX_SYNONYM_PHRASES`],
    /// more is a [`TextError::Query`].
    fn synonym_phrases(
        &self,
        table: &SynonymTable,
        path: &str,
        slot: Slot,
        analyzer: Analyzer,
        text: &str,
    ) -> Result<Vec<Vec<(usize, Term)>>, TextError> {
        let too_many = || {
            TextError::Query(format!(
                "the phrase with its synonyms makes more than {MAX_SYNONYM_PHRASES} phrases"
            ))
        };
        // Each phrase so far: its tokens in order.
        let mut phrases: Vec<Vec<String>> = vec![Vec::new()];
        for (_, token) in self.tokens(analyzer, text)? {
            let choices: Vec<Vec<String>> = match table.alternatives(&token) {
                None => vec![vec![token]],
                Some(words) => {
                    let mut out = Vec::new();
                    for word in words {
                        let tokens: Vec<String> = self
                            .tokens(analyzer, word)?
                            .into_iter()
                            .map(|(_, t)| t)
                            .collect();
                        if !tokens.is_empty() {
                            out.push(tokens);
                        }
                    }
                    out
                }
            };
            if choices.is_empty() {
                continue;
            }
            if phrases.len().saturating_mul(choices.len()) > MAX_SYNONYM_PHRASES {
                return Err(too_many());
            }
            phrases = phrases
                .iter()
                .flat_map(|p| {
                    choices.iter().map(move |c| {
                        let mut next = p.clone();
                        next.extend(c.iter().cloned());
                        next
                    })
                })
                .collect();
        }
        Ok(phrases
            .into_iter()
            .map(|tokens| {
                tokens
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (i, term_of(path, slot, t)))
                    .collect()
            })
            .collect())
    }

    /// The table a `text` or `phrase` naming mapping `name` uses (`None`
    /// when it names none, or the table was never read); naming a mapping
    /// the definition lacks is a [`TextError::Query`].
    fn synonyms_for(
        &self,
        name: Option<&str>,
    ) -> Result<Option<std::sync::Arc<SynonymTable>>, TextError> {
        let Some(name) = name else {
            return Ok(None);
        };
        if self.synonym_mapping(name).is_none() {
            return Err(TextError::Query(format!(
                "the index has no synonym mapping '{name}'"
            )));
        }
        Ok(self.synonym_table(name))
    }

    /// The synonym mapping `name` of the definition, if it has one.
    pub fn synonym_mapping(&self, name: &str) -> Option<&SynonymMapping> {
        self.spec.synonyms.iter().find(|m| m.name == name)
    }

    /// Claims the read of mapping `name`'s collection: `false` while
    /// another read of it runs (the caller uses the table it has). Every
    /// `true` must be followed by [`TextIndex::end_synonym_read`].
    pub fn begin_synonym_read(&self, name: &str) -> bool {
        self.synonyms_reading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string())
    }

    /// Ends a read [`TextIndex::begin_synonym_read`] claimed.
    pub fn end_synonym_read(&self, name: &str) {
        self.synonyms_reading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The table of mapping `name` as last read, if it was.
    pub fn synonym_table(&self, name: &str) -> Option<std::sync::Arc<SynonymTable>> {
        self.synonym_tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Builds mapping `name`'s table from its collection's documents
    /// (Atlas's shapes: `{mappingType: "equivalent", synonyms: [words]}`,
    /// each word matching every word of the list; `{mappingType:
    /// "explicit", input: [words], synonyms: [words]}`, each input word
    /// matching the synonyms instead) and keeps it. Words are keyed as the
    /// mapping's analyzer cuts them (a word of several tokens keys on
    /// nothing: multi-word inputs are not matched). A malformed document
    /// is skipped, as Atlas marks the mapping failed but keeps serving.
    /// Returns how many documents were used.
    pub fn set_synonyms(&self, name: &str, documents: &[RawDocumentBuf]) -> usize {
        let Some(mapping) = self.synonym_mapping(name) else {
            return 0;
        };
        let words = |doc: &RawDocument, key: &str| -> Option<Vec<String>> {
            let list = doc.get_array(key).ok()?;
            let mut out = Vec::new();
            for w in list.into_iter().flatten().take(MAX_SYNONYM_WORDS) {
                out.push(w.as_str()?.to_string());
            }
            Some(out)
        };
        let key = |word: &str| -> Option<String> {
            let tokens = self.tokens(mapping.analyzer, word).ok()?;
            match tokens.as_slice() {
                [(_, one)] => Some(one.clone()),
                _ => None,
            }
        };
        let mut table = SynonymTable::default();
        let (mut used, mut total) = (0, 0);
        for doc in documents.iter().take(MAX_SYNONYM_DOCUMENTS) {
            let (inputs, synonyms) = match doc.get_str("mappingType") {
                Ok("equivalent") => match words(doc, "synonyms") {
                    Some(s) => (s.clone(), s),
                    None => continue,
                },
                Ok("explicit") => match (words(doc, "input"), words(doc, "synonyms")) {
                    (Some(i), Some(s)) => (i, s),
                    _ => continue,
                },
                _ => continue,
            };
            total += inputs.len() + synonyms.len();
            if total > MAX_SYNONYM_WORDS_TOTAL {
                tracing::warn!(
                    mapping = name,
                    "synonym mapping past {MAX_SYNONYM_WORDS_TOTAL} words: the rest is not used"
                );
                break;
            }
            used += 1;
            let group = u32::try_from(table.groups.len()).unwrap_or(u32::MAX);
            table.groups.push(synonyms);
            for input in &inputs {
                if let Some(k) = key(input) {
                    let list = table.by_token.entry(k).or_default();
                    if list.last() != Some(&group) {
                        list.push(group);
                    }
                }
            }
        }
        table.read_at = Some(std::time::Instant::now());
        self.synonym_tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), std::sync::Arc::new(table));
        used
    }

    /// In an embedded index: the parents (by `_id`, in the parent index's
    /// `parent_id_field`) with an element matching `operator`, scored by
    /// `aggregate` over their matching elements.
    fn parents(
        &self,
        operator: &Operator,
        aggregate: EmbeddedAggregate,
        parent_id_field: Field,
        budget: &mut usize,
    ) -> Result<Box<dyn Query>, TextError> {
        let query = self.query(operator, budget)?;
        let searcher = self.reader.searcher();
        let matches = searcher
            .search(query.as_ref(), &ElementMatches)
            .map_err(|e| TextError::Engine(format!("embedded search failed: {e}")))?;
        let scores: HashMap<Vec<u8>, f32> = matches
            .into_iter()
            .map(|(id, combined)| (id, combined.value(aggregate)))
            .collect();
        Ok(Box::new(ParentScores {
            id_field: parent_id_field,
            scores: std::sync::Arc::new(scores),
            aggregate,
        }))
    }

    fn query(&self, operator: &Operator, budget: &mut usize) -> Result<Box<dyn Query>, TextError> {
        let spend = |budget: &mut usize, n: usize| -> Result<(), TextError> {
            *budget = budget.checked_sub(n).ok_or_else(|| {
                TextError::Query(format!(
                    "the search expands to more than {MAX_TERMS} term clauses: search fewer \
                     words, paths or clauses"
                ))
            })?;
            Ok(())
        };
        let (query, score): (Box<dyn Query>, _) = match operator {
            Operator::Text {
                query,
                paths,
                fuzzy,
                match_all,
                score,
                synonyms,
            } => {
                let table = self.synonyms_for(synonyms.as_deref())?;
                let mut per_path: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                // The same clauses as plain terms, when every clause is one.
                let mut plain: Vec<Term> = Vec::new();
                // Each query string's tokens under each search analyzer
                // (keyed by the string's place in `query`), analyzed when
                // a path first needs them and reused by every later path.
                let mut analyzed: Vec<((Analyzer, usize), Tokens)> = Vec::new();
                for (path, slot, string) in self.resolve(paths) {
                    let mut terms: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                    let occur = if *match_all {
                        Occur::Must
                    } else {
                        Occur::Should
                    };
                    if let Some(table) = &table {
                        // Each word: itself or its synonyms (the best of
                        // them scores, as if one term).
                        for text in query {
                            for (_, token) in self.tokens(string.search_analyzer, text)? {
                                let words = table.alternatives(&token);
                                let mut alternatives: Vec<Box<dyn Query>> = Vec::new();
                                if words.as_ref().is_none_or(|w| !w.is_empty()) {
                                    spend(budget, 1)?;
                                }
                                if words.is_none() {
                                    alternatives.push(Box::new(TermQuery::new(
                                        term_of(&path, slot, &token),
                                        IndexRecordOption::WithFreqs,
                                    )));
                                }
                                for word in words.into_iter().flatten() {
                                    let word_terms =
                                        self.terms(&path, slot, string.search_analyzer, word)?;
                                    spend(budget, word_terms.len())?;
                                    alternatives.extend(term_or_phrase(word_terms, 0));
                                }
                                if !alternatives.is_empty() {
                                    terms.push((
                                        occur,
                                        Box::new(tantivy::query::DisjunctionMaxQuery::new(
                                            alternatives,
                                        )),
                                    ));
                                }
                            }
                        }
                    }
                    let analyzer = string.search_analyzer;
                    for (at, text) in query.iter().enumerate().filter(|_| table.is_none()) {
                        let known = analyzed.iter().position(|(key, _)| *key == (analyzer, at));
                        let known = match known {
                            Some(known) => known,
                            None => {
                                analyzed.push(((analyzer, at), self.tokens(analyzer, text)?));
                                analyzed.len() - 1
                            }
                        };
                        let text_tokens = &analyzed[known].1;
                        for term in text_tokens.iter().map(|(_, t)| term_of(&path, slot, t)) {
                            spend(budget, 1)?;
                            let q: Box<dyn Query> = match fuzzy {
                                Some(f) => {
                                    if term.serialized_value_bytes().len() > 4 * MAX_FUZZY_TERM {
                                        return Err(TextError::Query(format!(
                                            "fuzzy terms are at most {MAX_FUZZY_TERM} characters"
                                        )));
                                    }
                                    Box::new(FuzzyTermQuery::new(term, f.max_edits, true))
                                }
                                None => {
                                    plain.push(term.clone());
                                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))
                                }
                            };
                            terms.push((occur, q));
                        }
                    }
                    if *match_all {
                        if !terms.is_empty() {
                            per_path.push((Occur::Should, Box::new(BooleanQuery::new(terms))));
                        }
                    } else {
                        // Any term on any path: one flat disjunction (the
                        // same sum of BM25 scores), which tantivy prunes by
                        // block-max WAND, or MaxScore when it is long.
                        per_path.extend(terms);
                    }
                }
                let many_plain_terms = !*match_all
                    && plain.len() == per_path.len()
                    && plain.len() >= super::max_score::MIN_TERMS;
                let query: Box<dyn Query> = if many_plain_terms {
                    Box::new(super::max_score::TermDisjunction::with_known_places(
                        plain,
                        self.known_places.clone(),
                    ))
                } else {
                    boolean_or_empty(per_path)
                };
                (query, score)
            }
            Operator::Phrase {
                query,
                paths,
                slop,
                score,
                synonyms,
            } => {
                let table = self.synonyms_for(synonyms.as_deref())?;
                let mut per_path: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                for (path, slot, string) in self.resolve(paths) {
                    for text in query {
                        let phrases = match &table {
                            None => vec![self.terms(&path, slot, string.search_analyzer, text)?],
                            Some(table) => self.synonym_phrases(
                                table,
                                &path,
                                slot,
                                string.search_analyzer,
                                text,
                            )?,
                        };
                        let mut alternatives: Vec<Box<dyn Query>> = Vec::new();
                        for terms in phrases {
                            spend(budget, terms.len())?;
                            alternatives.extend(term_or_phrase(terms, *slop));
                        }
                        match alternatives.len() {
                            0 => {}
                            1 => per_path.push((Occur::Should, alternatives.remove(0))),
                            _ => per_path.push((
                                Occur::Should,
                                Box::new(tantivy::query::DisjunctionMaxQuery::new(alternatives)),
                            )),
                        }
                    }
                }
                (boolean_or_empty(per_path), score)
            }
            Operator::Equals { path, value, score } => {
                spend(budget, 1)?;
                let term = self.value_term(path, value);
                (
                    constant_one(Box::new(TermQuery::new(term, IndexRecordOption::Basic))),
                    score,
                )
            }
            Operator::In {
                path,
                values,
                score,
            } => {
                spend(budget, values.len())?;
                let clauses = values
                    .iter()
                    .map(|v| {
                        let term = self.value_term(path, v);
                        let q: Box<dyn Query> =
                            Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                        (Occur::Should, q)
                    })
                    .collect();
                (constant_one(boolean_or_empty(clauses)), score)
            }
            Operator::Range {
                path,
                lower,
                upper,
                score,
            } => {
                spend(budget, 1)?;
                let term = |v: &FieldValue| self.bound_term(path, v);
                let query = tantivy::query::RangeQuery::new(
                    lower.as_ref().map(term),
                    upper.as_ref().map(term),
                );
                (constant_one(Box::new(query)), score)
            }
            Operator::Regex {
                operator,
                patterns,
                paths,
                allow_analyzed,
                score,
            } => {
                let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                for (path, slot, string) in self.resolve(paths) {
                    if !allow_analyzed && string.analyzer != Analyzer::Keyword {
                        return Err(TextError::Query(format!(
                            "{operator} on '{path}', which is analyzed by {}: set \
                             allowAnalyzedField: true to match its terms",
                            string.analyzer.name()
                        )));
                    }
                    let Slot::Field(field) = slot else {
                        return Err(TextError::Query(format!(
                            "{operator} is not served on '{path}', a dynamic path past the \
                             first {DYNAMIC_SLOTS}: map it as a string field"
                        )));
                    };
                    for pattern in patterns {
                        spend(budget, 1)?;
                        let q = tantivy::query::RegexQuery::from_pattern(pattern, field).map_err(
                            |e| TextError::Query(format!("{operator} '{pattern}': {e}")),
                        )?;
                        clauses.push((Occur::Should, Box::new(q)));
                    }
                }
                (constant_one(boolean_or_empty(clauses)), score)
            }
            Operator::Autocomplete {
                query,
                path,
                sequential,
                fuzzy,
                score,
            } => {
                let Some((field, spec)) = self.autocomplete.get(path) else {
                    return Err(TextError::Query(format!(
                        "autocomplete needs '{path}' indexed as an autocomplete field"
                    )));
                };
                let mut per_query: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                for text in query {
                    let mut analyzer = spec.query_analyzer();
                    let mut stream = analyzer.token_stream(text);
                    let mut terms = Vec::new();
                    while let Some(token) = stream.next() {
                        terms.push((token.position, Term::from_field_text(*field, &token.text)));
                    }
                    spend(budget, terms.len())?;
                    if terms.is_empty() {
                        continue;
                    }
                    let q: Box<dyn Query> = if *sequential && terms.len() > 1 && fuzzy.is_none() {
                        Box::new(PhraseQuery::new_with_offset(terms))
                    } else {
                        let occur = if *sequential {
                            Occur::Must
                        } else {
                            Occur::Should
                        };
                        let clauses = terms
                            .into_iter()
                            .map(|(_, term)| {
                                // A word past the fuzzy bound matches only
                                // itself (its automaton would be huge).
                                let bounded =
                                    term.serialized_value_bytes().len() <= 4 * MAX_FUZZY_TERM;
                                let q: Box<dyn Query> = match fuzzy {
                                    Some(f) if bounded => {
                                        Box::new(FuzzyTermQuery::new(term, f.max_edits, true))
                                    }
                                    _ => {
                                        Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))
                                    }
                                };
                                (occur, q)
                            })
                            .collect();
                        Box::new(BooleanQuery::new(clauses))
                    };
                    per_query.push((Occur::Should, q));
                }
                (boolean_or_empty(per_query), score)
            }
            Operator::Exists { path, score } => {
                spend(budget, 1)?;
                let term = Term::from_field_text(self.present_field, path);
                (
                    constant_one(Box::new(TermQuery::new(term, IndexRecordOption::Basic))),
                    score,
                )
            }
            Operator::Compound {
                must,
                must_not,
                should,
                filter,
                minimum_should_match,
                score,
            } => {
                let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                for op in must {
                    clauses.push((Occur::Must, self.query(op, budget)?));
                }
                for op in filter {
                    clauses.push((
                        Occur::Must,
                        Box::new(ConstScoreQuery::new(self.query(op, budget)?, 0.0)),
                    ));
                }
                for op in must_not {
                    clauses.push((Occur::MustNot, self.query(op, budget)?));
                }
                for op in should {
                    clauses.push((Occur::Should, self.query(op, budget)?));
                }
                let only_negative = must.is_empty() && filter.is_empty() && should.is_empty();
                let query: Box<dyn Query> = if only_negative {
                    // Lucene matches nothing with only prohibited clauses.
                    Box::new(EmptyQuery)
                } else {
                    Box::new(BooleanQuery::with_minimum_required_clauses(
                        clauses,
                        *minimum_should_match,
                    ))
                };
                (query, score)
            }
            Operator::Embedded {
                path,
                operator,
                aggregate,
                score,
            } => {
                let child = self
                    .embedded
                    .iter()
                    .find(|(p, _)| p == path)
                    .map(|(_, child)| child)
                    .ok_or_else(|| {
                        TextError::Query(format!(
                            "embeddedDocument: '{path}' is not indexed as embeddedDocuments"
                        ))
                    })?;
                (
                    child.parents(operator, *aggregate, self.id_field, budget)?,
                    score,
                )
            }
        };
        Ok(match score {
            None => query,
            Some(ScoreModifier::Boost(b)) => Box::new(BoostQuery::new(query, *b)),
            // Scores are divided by tantivy's factor at the end.
            Some(ScoreModifier::Constant(c)) => {
                Box::new(ConstScoreQuery::new(query, c * TANTIVY_BM25_FACTOR))
            }
        })
    }
}

/// Analyzed terms (with their positions) as one query: nothing for none,
/// a term query for one, else a phrase within `slop`.
fn term_or_phrase(terms: Vec<(usize, Term)>, slop: u32) -> Option<Box<dyn Query>> {
    match terms.len() {
        0 => None,
        1 => Some(Box::new(TermQuery::new(
            terms.into_iter().next().expect("one term").1,
            IndexRecordOption::WithFreqs,
        ))),
        _ => Some(Box::new(PhraseQuery::new_with_offset_and_slop(terms, slop))),
    }
}

/// The term of `token` at `path` (its own field, or the shared overflow
/// field's JSON path).
fn term_of(path: &str, slot: Slot, token: &str) -> Term {
    match slot {
        Slot::Field(field) => Term::from_field_text(field, token),
        Slot::Overflow(field) => {
            let mut term = Term::from_field_json_path(field, path, true);
            term.append_type_and_str(token);
            term
        }
    }
}

/// How a text field of `analyzer` is indexed: its tokenizer, with term
/// frequencies and positions (for BM25 and phrases).
fn indexing(analyzer: Analyzer) -> TextFieldIndexing {
    TextFieldIndexing::default()
        .set_tokenizer(&analyzer.tokenizer_name())
        .set_index_option(IndexRecordOption::WithFreqsAndPositions)
}

fn text_options(analyzer: Analyzer) -> TextOptions {
    TextOptions::default().set_indexing_options(indexing(analyzer))
}

/// A writer with one indexing thread and one merge thread (a proxy may
/// hold many indexes), merging in the background as `merges` says
/// (`slices::PartMerges::BUILDING` for an index a build fills: tantivy's
/// plain log merges fused 8 of a 100k-document build's 10 commits into
/// one segment, measured; `SERVING` once it serves).
fn open_writer(index: &Index, merges: slices::PartMerges) -> Result<IndexWriter, String> {
    let options = tantivy::indexer::IndexWriterOptions::builder()
        .num_worker_threads(1)
        .num_merge_threads(1)
        .memory_budget_per_thread(WRITER_BUDGET)
        .build();
    let writer = index
        .writer_with_options(options)
        .map_err(|e| format!("cannot open the text index's writer: {e}"))?;
    writer.set_merge_policy(Box::new(merges));
    Ok(writer)
}

/// A numeric fast column of the typed values (tantivy keeps one per path,
/// of whichever type holds all its values).
enum NumberColumn {
    I64(tantivy::columnar::Column<i64>),
    U64(tantivy::columnar::Column<u64>),
    F64(tantivy::columnar::Column<f64>),
}

fn number_columns(fast: &tantivy::fastfield::FastFieldReaders, name: &str) -> Vec<NumberColumn> {
    let mut out = Vec::new();
    if let Ok(Some(c)) = fast.column_opt::<i64>(name) {
        out.push(NumberColumn::I64(c));
    }
    if let Ok(Some(c)) = fast.column_opt::<u64>(name) {
        out.push(NumberColumn::U64(c));
    }
    if let Ok(Some(c)) = fast.column_opt::<f64>(name) {
        out.push(NumberColumn::F64(c));
    }
    out
}

/// A document's values in `columns`, as doubles.
fn numbers_of(columns: &[NumberColumn], doc: u32) -> Vec<f64> {
    let mut out = Vec::new();
    for c in columns {
        match c {
            NumberColumn::I64(c) => out.extend(c.values_for_doc(doc).map(|v| v as f64)),
            NumberColumn::U64(c) => out.extend(c.values_for_doc(doc).map(|v| v as f64)),
            NumberColumn::F64(c) => out.extend(c.values_for_doc(doc)),
        }
    }
    out
}

/// Atlas's score of a matching `equals`, `in`, `range` or `exists`: 1
/// (times tantivy's factor, divided out at the end).
fn constant_one(query: Box<dyn Query>) -> Box<dyn Query> {
    Box::new(ConstScoreQuery::new(query, TANTIVY_BM25_FACTOR))
}

/// Atlas's `wildcard` query as a regular expression matching whole
/// terms: `*` any run of characters, `?` any one, `\` escapes the next;
/// everything else literal.
pub fn wildcard_pattern(query: &str) -> String {
    let mut out = String::with_capacity(query.len() * 2);
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push_str(&regex_literal(next));
                }
            }
            other => out.push_str(&regex_literal(other)),
        }
    }
    out
}

fn regex_literal(c: char) -> String {
    if "\\.+*?()|[]{}^$#&-~".contains(c) {
        format!("\\{c}")
    } else {
        c.to_string()
    }
}

/// An ObjectId's lower-case hex.
fn hex(bytes: &[u8; 12]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn normalized(normalizer: Normalizer, s: &str) -> String {
    match normalizer {
        Normalizer::None => s.to_string(),
        Normalizer::Lowercase => s.to_lowercase(),
    }
}

fn boolean_or_empty(clauses: Vec<(Occur, Box<dyn Query>)>) -> Box<dyn Query> {
    if clauses.is_empty() {
        Box::new(EmptyQuery)
    } else {
        Box::new(BooleanQuery::new(clauses))
    }
}

/// Every scalar of `doc` with its dotted path (array items under their
/// array's path), `_id` excluded.
fn collect_leaves<'a>(
    doc: &'a RawDocument,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, RawBsonRef<'a>)>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    for (key, value) in doc.iter().flatten() {
        if depth == 0 && key == "_id" {
            continue;
        }
        let path = format!("{prefix}{key}");
        collect_value(value, &path, depth, out);
    }
}

fn collect_value<'a>(
    value: RawBsonRef<'a>,
    path: &str,
    depth: usize,
    out: &mut Vec<(String, RawBsonRef<'a>)>,
) {
    match value {
        RawBsonRef::Document(d) => collect_leaves(d, &format!("{path}."), depth + 1, out),
        RawBsonRef::Array(a) => {
            if depth < MAX_DEPTH {
                for item in a.into_iter().flatten() {
                    collect_value(item, path, depth + 1, out);
                }
            }
        }
        other => out.push((path.to_string(), other)),
    }
}

/// `canonical`'s inverse: the `_id` from its one-field document.
fn decode_id(bytes: &[u8]) -> Option<RawBson> {
    let doc = RawDocumentBuf::from_bytes(bytes.to_vec()).ok()?;
    let (_, value) = doc.iter().next()?.ok()?;
    Some(value.to_raw_bson())
}

/// Atlas's wildcard paths: `*` matches any run of characters.
fn glob_matches(glob: &str, path: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == path;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !path.starts_with(first) || path.len() < first.len() + last.len() || !path.ends_with(last) {
        return false;
    }
    let mut rest = &path[first.len()..path.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn dynamic(analyzer: Analyzer) -> TextSpec {
        TextSpec {
            mappings: DocumentMapping {
                dynamic: true,
                fields: BTreeMap::new(),
            },
            analyzer,
            search_analyzer: analyzer,
            stored_source: StoredSource::None,
            analyzers: Vec::new(),
            synonyms: Vec::new(),
        }
    }

    fn text(query: &str, path: &str) -> Operator {
        Operator::Text {
            query: vec![query.into()],
            paths: vec![SearchPath::Field(path.into())],
            fuzzy: None,
            match_all: false,
            score: None,
            synonyms: None,
        }
    }

    fn ids(hits: &[(RawBson, f64)]) -> Vec<i32> {
        hits.iter()
            .map(|(id, _)| match id {
                RawBson::Int32(i) => *i,
                other => panic!("unexpected id {other:?}"),
            })
            .collect()
    }

    fn index_of(spec: TextSpec, docs: &[RawDocumentBuf]) -> TextIndex {
        let index = TextIndex::new(spec).unwrap();
        let changes: Vec<TextChange<'_>> = docs
            .iter()
            .map(|d| TextChange::Set(d.get("_id").unwrap().unwrap(), d))
            .collect();
        index.apply(&changes).unwrap();
        index
    }

    /// Lucene's BM25 for one term: idf · tf / (tf + k1 · (1 − b + b · dl / avgdl)),
    /// idf = ln(1 + (N − n + 0.5) / (n + 0.5)).
    fn lucene_bm25(tf: f64, dl: f64, avgdl: f64, n_docs: f64, doc_freq: f64) -> f64 {
        let idf = (1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5)).ln();
        idf * tf / (tf + 1.2 * (1.0 - 0.75 + 0.75 * dl / avgdl))
    }

    #[test]
    fn scores_are_lucenes_bm25() {
        let docs = [
            rawdoc! { "_id": 1, "t": "the quick brown fox" },
            rawdoc! { "_id": 2, "t": "fox fox fox" },
            rawdoc! { "_id": 3, "t": "a lazy dog sleeps all day long" },
        ];
        let index = index_of(dynamic(Analyzer::Standard), &docs);
        let (hits, total) = index.search(&text("fox", "t"), 10).unwrap();
        assert_eq!(total, 2);
        assert_eq!(ids(&hits), vec![2, 1]);
        let avgdl = (4.0 + 3.0 + 7.0) / 3.0;
        let expected_2 = lucene_bm25(3.0, 3.0, avgdl, 3.0, 2.0);
        let expected_1 = lucene_bm25(1.0, 4.0, avgdl, 3.0, 2.0);
        assert!(
            (hits[0].1 - expected_2).abs() < 1e-5,
            "{} vs {expected_2}",
            hits[0].1
        );
        assert!(
            (hits[1].1 - expected_1).abs() < 1e-5,
            "{} vs {expected_1}",
            hits[1].1
        );
        // Two terms: the sum of each term's score.
        let (both, _) = index.search(&text("fox dog", "t"), 10).unwrap();
        let expected_3 = lucene_bm25(1.0, 7.0, avgdl, 3.0, 1.0);
        let three = both
            .iter()
            .find(|(id, _)| id == &RawBson::Int32(3))
            .unwrap();
        assert!((three.1 - expected_3).abs() < 1e-5);
    }

    #[test]
    fn equals_in_range_and_exists_compare_typed_values() {
        let oid = bson::oid::ObjectId::from_bytes([7; 12]);
        let day = |d: i64| bson::DateTime::from_millis(d * 86_400_000);
        let docs = [
            rawdoc! { "_id": 1, "n": 3, "on": true, "at": day(1), "o": oid, "t": "Red", "s": "x" },
            rawdoc! { "_id": 2, "n": 3.5, "on": false, "at": day(2), "t": "blue", "sub": { "k": 1 } },
            rawdoc! { "_id": 3, "n": 10_i64, "at": day(3), "t": "RED", "tags": [4, 5] },
        ];
        let mut spec = dynamic(Analyzer::Standard);
        spec.mappings.fields.insert(
            "t".into(),
            FieldMapping {
                values: ValueTypes {
                    token: Some(Normalizer::Lowercase),
                    ..ValueTypes::default()
                },
                ..FieldMapping::default()
            },
        );
        let index = index_of(spec, &docs);
        let run = |op: Operator| {
            let (hits, _) = index.search(&op, 10).unwrap();
            assert!(hits.iter().all(|(_, s)| (s - 1.0).abs() < 1e-6), "{hits:?}");
            let mut got = ids(&hits);
            got.sort();
            got
        };
        let equals = |path: &str, value| Operator::Equals {
            path: path.into(),
            value,
            score: None,
        };
        assert_eq!(run(equals("n", FieldValue::Int(3))), vec![1]);
        // An integral double equals the integer.
        assert_eq!(run(equals("n", FieldValue::Double(10.0))), vec![3]);
        assert_eq!(run(equals("n", FieldValue::Double(3.5))), vec![2]);
        assert_eq!(run(equals("on", FieldValue::Boolean(false))), vec![2]);
        assert_eq!(run(equals("o", FieldValue::ObjectId([7; 12]))), vec![1]);
        assert_eq!(run(equals("at", FieldValue::Date(2 * 86_400_000))), vec![2]);
        assert_eq!(
            run(equals("t", FieldValue::String("RED".into()))),
            vec![1, 3]
        );
        assert_eq!(run(equals("tags", FieldValue::Int(5))), vec![3]);
        // A string is not a token under a dynamic mapping.
        assert_eq!(
            run(equals("s", FieldValue::String("x".into()))),
            Vec::<i32>::new()
        );
        let values = vec![FieldValue::Int(10), FieldValue::Double(3.5)];
        assert_eq!(
            run(Operator::In {
                path: "n".into(),
                values,
                score: None
            }),
            vec![2, 3]
        );
        let range = |lower, upper| Operator::Range {
            path: "n".into(),
            lower,
            upper,
            score: None,
        };
        use std::ops::Bound::*;
        assert_eq!(
            run(range(Excluded(FieldValue::Int(3)), Unbounded)),
            vec![2, 3]
        );
        assert_eq!(
            run(range(
                Included(FieldValue::Int(3)),
                Excluded(FieldValue::Double(10.0))
            )),
            vec![1, 2]
        );
        assert_eq!(
            run(range(Unbounded, Included(FieldValue::Double(3.25)))),
            vec![1]
        );
        let dates = Operator::Range {
            path: "at".into(),
            lower: Included(FieldValue::Date(2 * 86_400_000)),
            upper: Unbounded,
            score: None,
        };
        assert_eq!(run(dates), vec![2, 3]);
        let exists = |path: &str| Operator::Exists {
            path: path.into(),
            score: None,
        };
        assert_eq!(run(exists("o")), vec![1]);
        assert_eq!(run(exists("sub")), vec![2]);
        assert_eq!(run(exists("sub.k")), vec![2]);
        assert_eq!(run(exists("s")), vec![1]);
        assert_eq!(run(exists("none")), Vec::<i32>::new());
    }

    /// A definition with `items` as embeddedDocuments (name: string,
    /// qty: number) and a top-level string `title`.
    fn embedded_spec() -> TextSpec {
        let element = DocumentMapping {
            dynamic: false,
            fields: BTreeMap::from([
                (
                    "name".to_string(),
                    FieldMapping {
                        string: Some(StringField {
                            analyzer: Analyzer::Standard,
                            search_analyzer: Analyzer::Standard,
                        }),
                        ..FieldMapping::default()
                    },
                ),
                (
                    "qty".to_string(),
                    FieldMapping {
                        values: ValueTypes {
                            number: true,
                            ..ValueTypes::default()
                        },
                        ..FieldMapping::default()
                    },
                ),
            ]),
        };
        let mut spec = dynamic(Analyzer::Standard);
        spec.mappings.dynamic = false;
        spec.mappings.fields.insert(
            "title".into(),
            FieldMapping {
                string: Some(StringField {
                    analyzer: Analyzer::Standard,
                    search_analyzer: Analyzer::Standard,
                }),
                ..FieldMapping::default()
            },
        );
        spec.mappings.fields.insert(
            "items".into(),
            FieldMapping {
                embedded: Some(element),
                ..FieldMapping::default()
            },
        );
        spec
    }

    fn apple_with_qty(at_least: i64, aggregate: EmbeddedAggregate) -> Operator {
        Operator::Embedded {
            path: "items".into(),
            operator: Box::new(Operator::Compound {
                must: vec![
                    text("apple", "items.name"),
                    Operator::Range {
                        path: "items.qty".into(),
                        lower: std::ops::Bound::Included(FieldValue::Int(at_least)),
                        upper: std::ops::Bound::Unbounded,
                        score: None,
                    },
                ],
                must_not: vec![],
                should: vec![],
                filter: vec![],
                minimum_should_match: 0,
                score: None,
            }),
            aggregate,
            score: None,
        }
    }

    #[test]
    fn embedded_documents_match_within_one_element() {
        let docs = [
            // An apple with 10: matches.
            rawdoc! { "_id": 1, "title": "fruit", "items": [
            { "name": "red apple", "qty": 10 }, { "name": "pear", "qty": 1 } ] },
            // An apple and a 10, in different elements: does not.
            rawdoc! { "_id": 2, "title": "fruit", "items": [
            { "name": "apple", "qty": 1 }, { "name": "pear", "qty": 10 } ] },
            // Two apples with enough: matches, scores summed.
            rawdoc! { "_id": 3, "title": "more fruit", "items": [
            { "name": "apple", "qty": 7 }, { "name": "green apple pie", "qty": 9 } ] },
            // A lone document is one element.
            rawdoc! { "_id": 4, "items": { "name": "apple", "qty": 20 } },
            rawdoc! { "_id": 5, "title": "apple", "items": [] },
        ];
        let index = index_of(embedded_spec(), &docs);
        assert_eq!(index.len(), 5);
        let op = apple_with_qty(5, EmbeddedAggregate::Sum);
        let (hits, total) = index.search(&op, 10).unwrap();
        let mut found = ids(&hits);
        found.sort();
        assert_eq!((found, total), (vec![1, 3, 4], 3));
        // The parent does not index the elements' paths itself.
        assert_eq!(index.search(&text("apple", "items.name"), 10).unwrap().1, 0);
        assert_eq!(index.search(&text("apple", "title"), 10).unwrap().1, 1);
        // Aggregates: 3's two elements against its best and worst one.
        let score_of = |aggregate, id: i32| -> f64 {
            let hits = index.top(&apple_with_qty(5, aggregate), 10).unwrap();
            hits.iter()
                .find(|(i, _)| *i == RawBson::Int32(id))
                .map(|(_, s)| *s)
                .unwrap()
        };
        let (sum, max, min, mean) = (
            score_of(EmbeddedAggregate::Sum, 3),
            score_of(EmbeddedAggregate::Maximum, 3),
            score_of(EmbeddedAggregate::Minimum, 3),
            score_of(EmbeddedAggregate::Mean, 3),
        );
        assert!(min < max, "{min} {max}");
        assert!((sum - (max + min)).abs() < 1e-4, "{sum} {max} {min}");
        assert!((mean - sum / 2.0).abs() < 1e-4, "{mean} {sum}");
        // Inside compound with a parent clause, and with an outer boost.
        let both = Operator::Compound {
            must: vec![
                apple_with_qty(5, EmbeddedAggregate::Sum),
                text("more", "title"),
            ],
            must_not: vec![],
            should: vec![],
            filter: vec![],
            minimum_should_match: 0,
            score: None,
        };
        assert_eq!(ids(&index.top(&both, 10).unwrap()), vec![3]);
        let boosted =
            apple_with_qty(5, EmbeddedAggregate::Sum).with_score(ScoreModifier::Boost(3.0));
        assert!(
            (score_of(EmbeddedAggregate::Sum, 1) * 3.0
                - index
                    .top(&boosted, 10)
                    .unwrap()
                    .iter()
                    .find(|(i, _)| *i == RawBson::Int32(1))
                    .unwrap()
                    .1)
                .abs()
                < 1e-4
        );
        // Writes replace a document's elements, and removes drop them.
        let changed =
            rawdoc! { "_id": 1, "title": "fruit", "items": [{ "name": "apple", "qty": 2 }] };
        index
            .apply(&[
                TextChange::Set(RawBsonRef::Int32(1), &changed),
                TextChange::Remove(RawBsonRef::Int32(4)),
            ])
            .unwrap();
        assert_eq!(ids(&index.top(&op, 10).unwrap()), vec![3]);
        assert_eq!(
            index
                .search(&apple_with_qty(1, EmbeddedAggregate::Sum), 10)
                .unwrap()
                .1,
            3
        );
        // A snapshot carries the embedded index.
        let mut section = Vec::new();
        index.save(&mut section).unwrap();
        let copy = TextIndex::new(embedded_spec()).unwrap();
        copy.restore(&mut crate::index::bytes::Reader::new(&section, 0))
            .unwrap();
        assert_eq!(ids(&copy.top(&op, 10).unwrap()), vec![3]);
        assert_eq!(
            copy.search(&apple_with_qty(1, EmbeddedAggregate::Sum), 10)
                .unwrap()
                .1,
            3
        );
        // A path not indexed as embeddedDocuments is an error.
        let wrong = Operator::Embedded {
            path: "title".into(),
            operator: Box::new(text("x", "title.x")),
            aggregate: EmbeddedAggregate::Sum,
            score: None,
        };
        assert!(matches!(index.search(&wrong, 10), Err(TextError::Query(_))));
        // Clearing clears the elements too.
        copy.clear().unwrap();
        copy.apply(&[TextChange::Set(RawBsonRef::Int32(9), &docs[4])])
            .unwrap();
        assert_eq!(
            copy.search(&apple_with_qty(1, EmbeddedAggregate::Sum), 10)
                .unwrap()
                .1,
            0
        );
    }

    const WORDS: [&str; 5] = ["alpha", "beta", "gamma", "delta", "omega"];

    /// An index of `batches` commits of `per_batch` documents `{_id: n,
    /// t: text(n)}`, each commit followed by the removal of its document
    /// `deleted` (if any): many segments, some deletes.
    fn in_commits(
        batches: i32,
        per_batch: i32,
        deleted: Option<i32>,
        text: impl Fn(i32) -> String,
    ) -> TextIndex {
        let index = TextIndex::new(dynamic(Analyzer::Standard)).unwrap();
        for batch in 0..batches {
            let docs: Vec<RawDocumentBuf> = (0..per_batch)
                .map(|i| {
                    let n = batch * per_batch + i;
                    rawdoc! { "_id": n, "t": text(n) }
                })
                .collect();
            let changes: Vec<TextChange<'_>> = docs
                .iter()
                .map(|d| TextChange::Set(d.get("_id").unwrap().unwrap(), d))
                .collect();
            index.apply(&changes).unwrap();
            if let Some(deleted) = deleted {
                let id = RawBsonRef::Int32(batch * per_batch + deleted);
                index.apply(&[TextChange::Remove(id)]).unwrap();
            }
        }
        index
    }

    #[test]
    fn the_best_k_across_segments_are_topdocs_best_k() {
        // Commits of a few documents each: many segments, some deletes.
        let index = in_commits(12, 25, Some(3), |n| {
            let words: Vec<&str> = (0..1 + n % 7)
                .map(|j| WORDS[((n * j + j) % 5) as usize])
                .collect();
            words.join(" ")
        });
        for query in ["alpha", "beta gamma", "omega delta alpha", "nothing"] {
            for k in [1, 5, 10, 400] {
                let op = text(query, "t");
                let pruned = index.top(&op, k).unwrap();
                let (counted, _) = index.search(&op, k).unwrap();
                assert_eq!(pruned.len(), counted.len(), "{query} {k}");
                for (a, b) in pruned.iter().zip(&counted) {
                    assert!((a.1 - b.1).abs() < 1e-6, "{query} {k}: {a:?} {b:?}");
                }
                // Same scores in order; equal scores may list other ids,
                // but never a deleted one.
                assert!(pruned
                    .iter()
                    .all(|(id, _)| !matches!(id, RawBson::Int32(n) if n % 25 == 3)));
            }
        }
        // Merged into one segment, as a build ends: the same matches,
        // deletes kept, and writes still land.
        let before: Vec<_> = ["alpha", "omega delta alpha"]
            .iter()
            .map(|q| index.top(&text(q, "t"), 400).unwrap())
            .collect();
        assert!(index.segments() > 1);
        index.merge_segments().unwrap();
        assert_eq!(index.segments(), 1);
        for (q, was) in ["alpha", "omega delta alpha"].iter().zip(&before) {
            let now = index.top(&text(q, "t"), 400).unwrap();
            let ids = |hits: &Hits| {
                let mut ids: Vec<String> = hits.iter().map(|(id, _)| format!("{id:?}")).collect();
                ids.sort();
                ids
            };
            assert_eq!(ids(&now), ids(was), "{q}");
        }
        let extra = rawdoc! { "_id": 10_000, "t": "alpha alpha alpha" };
        index
            .apply(&[TextChange::Set(extra.get("_id").unwrap().unwrap(), &extra)])
            .unwrap();
        assert_eq!(index.len(), 12 * 24 + 1);
    }

    #[test]
    fn a_prepared_top_finds_what_top_finds_and_knows_its_postings_or_is_declined() {
        let index = in_commits(12, 25, Some(3), |n| {
            let words: Vec<&str> = (0..1 + n % 7)
                .map(|j| WORDS[((n * j + j) % 5) as usize])
                .collect();
            words.join(" ")
        });
        let searcher = index.reader.searcher();
        for query in [
            "omega delta alpha",
            "beta gamma delta omega",
            "alpha beta nothing",
        ] {
            let op = text(query, "t");
            // Every term's document frequency in every segment, as tantivy
            // counts them (deleted documents too).
            let mut postings = 0;
            for (path, slot, string) in index.resolve(&[SearchPath::Field("t".into())]) {
                for (_, term) in index
                    .terms(&path, slot, string.search_analyzer, query)
                    .unwrap()
                {
                    postings += searcher.doc_freq(&term).unwrap();
                }
            }
            for k in [1, 5, 400] {
                let prepared = index.prepare_top(&op, k).unwrap().expect(query);
                assert_eq!(prepared.postings(), Some(postings), "{query}");
                assert!(postings > 0);
                assert_eq!(
                    prepared.run().unwrap(),
                    index.top(&op, k).unwrap(),
                    "{query} {k}"
                );
            }
        }
        // Declined: what is not a plain `text` over named paths, or would
        // read past the bounds to compile.
        let fuzzy = match text("omega delta alpha", "t") {
            Operator::Text {
                query,
                paths,
                match_all,
                score,
                synonyms,
                ..
            } => Operator::Text {
                query,
                paths,
                fuzzy: Some(Fuzzy { max_edits: 1 }),
                match_all,
                score,
                synonyms,
            },
            _ => unreachable!(),
        };
        let everywhere = Operator::Text {
            query: vec!["omega delta alpha".into()],
            paths: vec![SearchPath::Wildcard("*".into())],
            fuzzy: None,
            match_all: false,
            score: None,
            synonyms: None,
        };
        let long = vec!["alpha"; PREPARE_MAX_QUERY_BYTES / 6 + 1].join(" ");
        assert!(long.len() > PREPARE_MAX_QUERY_BYTES);
        let phrase = Operator::Phrase {
            query: vec!["omega delta alpha".into()],
            paths: vec![SearchPath::Field("t".into())],
            slop: 0,
            score: None,
            synonyms: None,
        };
        for op in [fuzzy, everywhere, text(&long, "t"), phrase] {
            assert!(index.prepare_top(&op, 5).unwrap().is_none(), "{op:?}");
        }
        // Compiled but not weighed (no cost known): one term, and more
        // term lookups than the bound; each still finds what `top` finds.
        let segments = index.segments();
        let many = (0..PREPARE_MAX_LOOKUPS / segments + 1)
            .map(|i| format!("w{i} alpha"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(many.len() <= PREPARE_MAX_QUERY_BYTES);
        for op in [text("alpha", "t"), text(&many, "t")] {
            let prepared = index.prepare_top(&op, 5).unwrap().expect("prepared");
            assert_eq!(prepared.postings(), None, "{op:?}");
            let hits = prepared.run().unwrap();
            assert!(!hits.is_empty());
            assert_eq!(hits, index.top(&op, 5).unwrap(), "{op:?}");
        }
    }

    #[test]
    fn slices_searched_beside_each_other_keep_the_best_k_and_ties_in_document_order() {
        // Many segments, deletes, and many equal scores (documents with
        // the same words).
        let index = in_commits(16, 30, Some(7), |n| {
            let words: Vec<&str> = (0..1 + n % 4)
                .map(|j| WORDS[((n + j) % 5) as usize])
                .collect();
            words.join(" ")
        });
        let searcher = index.reader.searcher();
        assert!(searcher.segment_readers().len() >= 4);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let _inside = runtime.enter();
        let mut ranged = 0;
        for query in [
            "alpha",
            "beta gamma",
            "omega delta alpha",
            "alpha beta gamma delta",
            "nothing",
        ] {
            let compiled = index.compile(&text(query, "t")).unwrap();
            // The oracle: every live match, best score first, then the
            // earlier document.
            let mut all = searcher
                .search(
                    compiled.as_ref(),
                    &TopDocs::with_limit(10_000).order_by_score(),
                )
                .unwrap();
            all.retain(|(_, a)| {
                let reader = searcher.segment_reader(a.segment_ord);
                !reader
                    .alive_bitset()
                    .is_some_and(|b| b.is_deleted(a.doc_id))
            });
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            for k in [1, 3, 10, 50, 1000] {
                let want: Vec<_> = all.iter().take(k).cloned().collect();
                for threads in [1, 2, 3, 8] {
                    let got =
                        slices::best_k_in(&searcher, compiled.as_ref(), k, threads, 1).unwrap();
                    assert_eq!(got, want, "{query} k={k} threads={threads}");
                }
                // Whole segments claimed in a fixed order.
                let weight = compiled
                    .weight(tantivy::query::EnableScoring::enabled_from_searcher(
                        &searcher,
                    ))
                    .unwrap();
                let segments = slices::Walker::Segments(std::sync::Arc::from(weight));
                for order in [(0, 1), (2, 2), (1, 9)] {
                    let got =
                        slices::best_k_in_order(&searcher, &segments, k, 3, 0, order).unwrap();
                    assert_eq!(got, want, "{query} k={k} whole segments {order:?}");
                }
                // Pieces of segments, where the query walks ranges.
                let Some(disjunction) =
                    compiled.downcast_ref::<crate::index::max_score::TermDisjunction>()
                else {
                    continue;
                };
                ranged += 1;
                let (weight, _) = disjunction.weight_and_postings(&searcher).unwrap();
                let walker = slices::Walker::Ranges(std::sync::Arc::from(weight));
                for piece in [1, 4, 16] {
                    for threads in [2, 3, 8] {
                        let got =
                            slices::best_k_of(&searcher, walker.clone(), k, threads, 1, piece)
                                .unwrap();
                        assert_eq!(got, want, "{query} k={k} threads={threads} piece={piece}");
                    }
                    // The front first, a helper first, each in turn.
                    for order in [(0, 1), (0, 3), (2, 1), (1, 9)] {
                        let got = slices::best_k_in_order(&searcher, &walker, k, 3, piece, order)
                            .unwrap();
                        assert_eq!(got, want, "{query} k={k} {order:?} piece={piece}");
                    }
                }
            }
        }
        assert!(ranged > 0, "no query walked ranges");
    }

    #[test]
    fn long_disjunctions_walked_by_max_score_find_what_scoring_every_match_finds() {
        use tantivy::query::EnableScoring;
        use tantivy::{DocAddress, Score};
        // Documents of 1 to 12 words from 9, repeated unevenly (term
        // frequencies and lengths vary), over commits with deletes.
        const VOCABULARY: [&str; 9] = [
            "alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "tau", "rho",
        ];
        let index = in_commits(10, 40, Some(11), |n| {
            let mut state = (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let length = 1 + (state >> 60) as usize % 12;
            (0..length)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Skewed: early words are common, later ones rare.
                    let pick = (state % 81) as usize;
                    VOCABULARY[(pick as f64).sqrt() as usize]
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        let searcher = index.reader.searcher();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let _inside = runtime.enter();
        for query in [
            "alpha beta gamma",
            "rho tau sigma kappa omega delta gamma",
            "alpha alpha rho missing",
            "sigma alpha tau beta",
        ] {
            let compiled = index.compile(&text(query, "t")).unwrap();
            assert!(
                format!("{compiled:?}").contains("TermDisjunction"),
                "{compiled:?}"
            );
            // The oracle: tantivy scores every match (no pruning).
            let weight = compiled
                .weight(EnableScoring::enabled_from_searcher(&searcher))
                .unwrap();
            let mut all: Vec<(Score, DocAddress)> = Vec::new();
            for (ord, reader) in searcher.segment_readers().iter().enumerate() {
                let alive = reader.alive_bitset();
                weight
                    .for_each(reader, &mut |doc, score| {
                        if !alive.is_some_and(|a| a.is_deleted(doc)) {
                            all.push((score, DocAddress::new(ord as u32, doc)));
                        }
                    })
                    .unwrap();
            }
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            assert!(all.len() > 50, "{query}: {} matches", all.len());
            let check = |got: Vec<(Score, DocAddress)>, k: usize, what: &str| {
                let want = &all[..k];
                assert_eq!(
                    got.iter().map(|h| h.1).collect::<Vec<_>>(),
                    want.iter().map(|h| h.1).collect::<Vec<_>>(),
                    "{query} k={k} {what}: {got:?} against {want:?}"
                );
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g.0 - w.0).abs() <= 1e-6 * w.0.abs(),
                        "{query}: {g:?} {w:?}"
                    );
                }
            };
            // Whole segments: one thread, and three sharing their bounds.
            for (k, threads) in [1, 3, 10, 40].into_iter().flat_map(|k| [(k, 1), (k, 3)]) {
                let got = slices::best_k_in(&searcher, compiled.as_ref(), k, threads, 1).unwrap();
                check(got, k, &format!("threads={threads}"));
            }
            // Pieces of segments, helpers beside this thread when the
            // runtime's thread is free, and a helper walking first.
            let disjunction = compiled
                .downcast_ref::<crate::index::max_score::TermDisjunction>()
                .unwrap();
            let (weight, _) = disjunction.weight_and_postings(&searcher).unwrap();
            let walker = slices::Walker::Ranges(std::sync::Arc::from(weight));
            for k in [1, 3, 10, 40] {
                for piece in [1, 7, 64] {
                    for threads in [1, 2, 3] {
                        let got =
                            slices::best_k_of(&searcher, walker.clone(), k, threads, 1, piece)
                                .unwrap();
                        check(got, k, &format!("threads={threads} piece={piece}"));
                    }
                    for order in [(0, 1), (0, 2), (1, 1), (3, 5)] {
                        let got = slices::best_k_in_order(&searcher, &walker, k, 2, piece, order)
                            .unwrap();
                        check(got, k, &format!("{order:?} piece={piece}"));
                    }
                }
            }
        }
    }

    #[test]
    fn a_build_keeps_its_commits_apart_then_merges_them_into_equal_parts() {
        let index = in_commits(12, 25, None, |n| format!("common word{}", n % 5));
        // tantivy's log merge policy would fuse 8 of these small commits.
        assert_eq!(index.segments(), 12);
        let before = index.top(&text("common word3", "t"), 1000).unwrap();
        index
            .merge_into(&|documents| {
                assert_eq!(documents, 300);
                3
            })
            .unwrap();
        let sizes: Vec<u32> = index
            .reader
            .searcher()
            .segment_readers()
            .iter()
            .map(|r| r.num_docs())
            .collect();
        assert_eq!(sizes, vec![100, 100, 100]);
        // The same matches and scores; equal scores in the merged order.
        let sorted = |mut hits: Hits| {
            hits.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
            hits
        };
        let after = index.top(&text("common word3", "t"), 1000).unwrap();
        assert_eq!(after.len(), 300);
        assert_eq!(sorted(after), sorted(before));
    }

    #[test]
    fn a_snapshot_restores_segments_deletes_and_dynamic_paths() {
        let docs: Vec<RawDocumentBuf> = (0..40)
            .map(|i| {
                let mut d = rawdoc! { "_id": i, "t": format!("word{i} shared"), "n": i };
                // More dynamic paths than the pool holds: some overflow.
                d.append(format!("p{i}"), "rare");
                d
            })
            .collect();
        let index = index_of(dynamic(Analyzer::Standard), &docs);
        index
            .apply(&[TextChange::Remove(RawBsonRef::Int32(3))])
            .unwrap();
        let mut section = Vec::new();
        index.save(&mut section).unwrap();
        let copy = TextIndex::new(dynamic(Analyzer::Standard)).unwrap();
        copy.restore(&mut crate::index::bytes::Reader::new(&section, 0))
            .unwrap();
        assert_eq!(copy.len(), 39);
        for (op, want) in [
            (text("shared", "t"), 39),
            (text("word3", "t"), 0),
            (text("rare", "p35"), 1),
            (text("rare", "p2"), 1),
        ] {
            assert_eq!(copy.search(&op, 100).unwrap().1, want, "{op:?}");
        }
        let range = Operator::Range {
            path: "n".into(),
            lower: std::ops::Bound::Included(FieldValue::Int(30)),
            upper: std::ops::Bound::Unbounded,
            score: None,
        };
        assert_eq!(copy.search(&range, 100).unwrap().1, 10);
        // The restored index takes writes, and a new path a free field.
        let more = rawdoc! { "_id": 100, "t": "later shared", "q": "fresh" };
        copy.apply(&[TextChange::Set(RawBsonRef::Int32(100), &more)])
            .unwrap();
        assert_eq!(copy.search(&text("shared", "t"), 100).unwrap().1, 40);
        assert_eq!(copy.search(&text("fresh", "q"), 100).unwrap().1, 1);
        // A damaged section is refused, not a panic.
        let cut = &section[..section.len() / 2];
        let other = TextIndex::new(dynamic(Analyzer::Standard)).unwrap();
        assert!(other
            .restore(&mut crate::index::bytes::Reader::new(cut, 0))
            .is_err());
        other.clear().unwrap();
        assert_eq!(other.len(), 0);
    }

    #[test]
    fn writes_replace_and_remove_by_id() {
        let docs = [
            rawdoc! { "_id": 1, "t": "red apple" },
            rawdoc! { "_id": 2, "t": "green apple" },
        ];
        let index = index_of(dynamic(Analyzer::Standard), &docs);
        let changed = rawdoc! { "_id": 1, "t": "red cherry" };
        index
            .apply(&[
                TextChange::Set(RawBsonRef::Int32(1), &changed),
                TextChange::Remove(RawBsonRef::Int32(2)),
            ])
            .unwrap();
        assert_eq!(index.len(), 1);
        assert!(index.search(&text("apple", "t"), 10).unwrap().0.is_empty());
        assert_eq!(
            ids(&index.search(&text("cherry", "t"), 10).unwrap().0),
            vec![1]
        );
    }

    #[test]
    fn analyzers_split_and_fold_as_lucenes_do() {
        let doc = [rawdoc! { "_id": 1, "t": "The Runners' RUNNING shoes, don't U.S.A." }];
        let english = index_of(dynamic(Analyzer::English), &doc);
        // Stop words are gone, stems meet.
        assert!(english.search(&text("the", "t"), 10).unwrap().0.is_empty());
        assert_eq!(english.search(&text("runs", "t"), 10).unwrap().1, 1);
        let standard = index_of(dynamic(Analyzer::Standard), &doc);
        assert_eq!(standard.search(&text("running", "t"), 10).unwrap().1, 1);
        assert_eq!(standard.search(&text("don't", "t"), 10).unwrap().1, 1);
        assert_eq!(standard.search(&text("u.s.a", "t"), 10).unwrap().1, 1);
        assert!(standard.search(&text("run", "t"), 10).unwrap().0.is_empty());
        let keyword = index_of(dynamic(Analyzer::Keyword), &doc);
        assert!(keyword
            .search(&text("running", "t"), 10)
            .unwrap()
            .0
            .is_empty());
        let whole = "The Runners' RUNNING shoes, don't U.S.A.";
        assert_eq!(keyword.search(&text(whole, "t"), 10).unwrap().1, 1);
        let whitespace = index_of(dynamic(Analyzer::Whitespace), &doc);
        assert_eq!(whitespace.search(&text("RUNNING", "t"), 10).unwrap().1, 1);
        assert!(whitespace
            .search(&text("running", "t"), 10)
            .unwrap()
            .0
            .is_empty());
    }

    #[test]
    fn phrases_compounds_paths_and_scores() {
        let docs = [
            rawdoc! { "_id": 1, "title": "new york city", "body": { "text": "a city guide" } },
            rawdoc! { "_id": 2, "title": "york new city", "tags": ["guide", "travel"] },
            rawdoc! { "_id": 3, "title": "old town", "body": { "text": "new york" } },
        ];
        let index = index_of(dynamic(Analyzer::Standard), &docs);
        let phrase = |q: &str, slop| Operator::Phrase {
            query: vec![q.into()],
            paths: vec![SearchPath::Field("title".into())],
            slop,
            score: None,
            synonyms: None,
        };
        assert_eq!(
            ids(&index.search(&phrase("new york", 0), 10).unwrap().0),
            vec![1]
        );
        assert_eq!(index.search(&phrase("new york", 2), 10).unwrap().1, 2);
        // Nested paths and arrays.
        assert_eq!(
            ids(&index.search(&text("guide", "body.text"), 10).unwrap().0),
            vec![1]
        );
        assert_eq!(
            ids(&index.search(&text("travel", "tags"), 10).unwrap().0),
            vec![2]
        );
        let everywhere = Operator::Text {
            query: vec!["guide".into()],
            paths: vec![SearchPath::Wildcard("*".into())],
            fuzzy: None,
            match_all: false,
            score: None,
            synonyms: None,
        };
        assert_eq!(index.search(&everywhere, 10).unwrap().1, 2);
        let compound = Operator::Compound {
            must: vec![text("city", "title")],
            must_not: vec![text("guide", "tags")],
            should: vec![],
            filter: vec![],
            minimum_should_match: 0,
            score: Some(ScoreModifier::Constant(3.0)),
        };
        let (hits, _) = index.search(&compound, 10).unwrap();
        assert_eq!(ids(&hits), vec![1]);
        assert!((hits[0].1 - 3.0).abs() < 1e-6);
        let all = Operator::Text {
            query: vec!["new town".into()],
            paths: vec![SearchPath::Field("title".into())],
            fuzzy: None,
            match_all: true,
            score: None,
            synonyms: None,
        };
        assert!(index.search(&all, 10).unwrap().0.is_empty());
        let fuzzy = Operator::Text {
            query: vec!["yrok".into()],
            paths: vec![SearchPath::Field("title".into())],
            fuzzy: Some(Fuzzy { max_edits: 2 }),
            match_all: false,
            score: None,
            synonyms: None,
        };
        assert_eq!(index.search(&fuzzy, 10).unwrap().1, 2);
        let (plain, _) = index.search(&text("old", "title"), 10).unwrap();
        let boosted = Operator::Text {
            query: vec!["old".into()],
            paths: vec![SearchPath::Field("title".into())],
            fuzzy: None,
            match_all: false,
            score: Some(ScoreModifier::Boost(2.0)),
            synonyms: None,
        };
        let (twice, _) = index.search(&boosted, 10).unwrap();
        assert!((twice[0].1 - 2.0 * plain[0].1).abs() < 1e-5);
    }

    #[test]
    fn static_mappings_index_only_what_they_name() {
        let mut fields = BTreeMap::new();
        fields.insert(
            "title".to_string(),
            FieldMapping {
                string: Some(StringField {
                    analyzer: Analyzer::Keyword,
                    search_analyzer: Analyzer::Keyword,
                }),
                ..FieldMapping::default()
            },
        );
        let spec = TextSpec {
            mappings: DocumentMapping {
                dynamic: false,
                fields,
            },
            analyzer: Analyzer::Standard,
            search_analyzer: Analyzer::Standard,
            stored_source: StoredSource::None,
            analyzers: Vec::new(),
            synonyms: Vec::new(),
        };
        assert_eq!(spec.projection(), Some(vec!["title".to_string()]));
        let docs = [rawdoc! { "_id": 1, "title": "Big Fish", "other": "fish" }];
        let index = index_of(spec, &docs);
        assert!(index
            .search(&text("fish", "other"), 10)
            .unwrap()
            .0
            .is_empty());
        assert!(index
            .search(&text("fish", "title"), 10)
            .unwrap()
            .0
            .is_empty());
        assert_eq!(index.search(&text("Big Fish", "title"), 10).unwrap().1, 1);
    }

    #[test]
    fn paths_past_the_slots_share_an_overflow_field() {
        let mut doc = rawdoc! { "_id": 1 };
        for i in 0..(DYNAMIC_SLOTS + 5) {
            doc.append(format!("f{i}"), format!("word{i} common"));
        }
        let index = index_of(dynamic(Analyzer::Standard), &[doc]);
        let last = format!("f{}", DYNAMIC_SLOTS + 4);
        let word = format!("word{}", DYNAMIC_SLOTS + 4);
        assert_eq!(index.search(&text(&word, &last), 10).unwrap().1, 1);
        assert!(index
            .search(&text("word0", &last), 10)
            .unwrap()
            .0
            .is_empty());
    }

    #[test]
    fn what_a_query_may_cost_is_bounded() {
        let docs = [rawdoc! { "_id": 1, "t": "alpha beta", "u": "alpha" }];
        let index = index_of(dynamic(Analyzer::Whitespace), &docs);
        let many = vec!["w"; MAX_TERMS + 1].join(" ");
        assert!(matches!(
            index.search(&text(&many, "t"), 10),
            Err(TextError::Query(_))
        ));
        // Within one query string, and across clauses.
        let half = vec!["w"; MAX_TERMS / 2 + 1].join(" ");
        let both = Operator::Compound {
            must: vec![],
            must_not: vec![],
            should: vec![text(&half, "t"), text(&half, "u")],
            filter: vec![],
            minimum_should_match: 0,
            score: None,
        };
        assert!(matches!(index.search(&both, 10), Err(TextError::Query(_))));
        let long = Operator::Text {
            query: vec!["x".repeat(4 * MAX_FUZZY_TERM + 1)],
            paths: vec![SearchPath::Field("t".into())],
            fuzzy: Some(Fuzzy { max_edits: 2 }),
            match_all: false,
            score: None,
            synonyms: None,
        };
        assert!(matches!(index.search(&long, 10), Err(TextError::Query(_))));
        // A path named twice (directly and by a wildcard) counts once.
        let once = index.search(&text("alpha", "t"), 10).unwrap().0;
        let twice = Operator::Text {
            query: vec!["alpha".into()],
            paths: vec![
                SearchPath::Field("t".into()),
                SearchPath::Wildcard("t*".into()),
                SearchPath::Field("t".into()),
            ],
            fuzzy: None,
            match_all: false,
            score: None,
            synonyms: None,
        };
        let (hits, _) = index.search(&twice, 10).unwrap();
        assert!((hits[0].1 - once[0].1).abs() < 1e-9);
    }

    #[test]
    fn globs_match_like_atlas_wildcards() {
        assert!(glob_matches("*", "a.b"));
        assert!(glob_matches("title*", "title.en"));
        assert!(glob_matches("*.en", "title.en"));
        assert!(glob_matches("a*c*e", "abcde"));
        assert!(!glob_matches("a*c*e", "abde"));
        assert!(!glob_matches("title", "title.en"));
    }
}
