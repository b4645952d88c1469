//! The parts of Atlas's custom analyzers tantivy has no counterpart for:
//! character filters (run over the text before the tokenizer, offsets
//! mapped back to the original text as Lucene's `CharFilter.correctOffset`
//! does), the regular-expression tokenizers, and token filters that
//! rewrite or drop one token at a time ([`TokenRule`]).
//!
//! Names and behaviour follow Atlas's analyzer reference (itself Lucene's
//! `HTMLStripCharFilter`, `ICUNormalizer2CharFilter`,
//! `MappingCharFilter`, `PersianCharFilter`, `PatternTokenizer`,
//! `LengthFilter`, `ReverseStringFilter`, `TrimFilter`,
//! `EnglishPossessiveFilter` and `PatternReplaceFilter`).

use tantivy::tokenizer::{Token, TokenFilter, TokenStream, Tokenizer};
use unicode_normalization::UnicodeNormalization;

/// Most bytes of a compiled pattern (the `regex` crate's size limit):
/// patterns come from clients' definitions.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A definition's regular expression (equal when its source is).
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// Compiles a definition's pattern, bounded in size. Errors: the
/// `regex` crate's message.
pub fn compile_pattern(pattern: &str) -> Result<Pattern, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(Pattern)
        .map_err(|e| e.to_string())
}

/// One of Atlas's `charFilters`.
#[derive(Debug, Clone, PartialEq)]
pub enum CharFilter {
    /// `htmlStrip`: tags and comments removed (block-level tags leave a
    /// line break, `script` and `style` their content too), character
    /// entities decoded; tags named in `ignoredTags` kept.
    HtmlStrip { ignored_tags: Vec<String> },
    /// `icuNormalize`: Unicode NFKC with case folding (Lucene's default
    /// `nfkc_cf`; folding approximated by lower-casing).
    IcuNormalize,
    /// `mapping`: each occurrence of a key replaced by its value, the
    /// longest key first at each position.
    Mapping(Vec<(String, String)>),
    /// `persian`: the zero-width non-joiner replaced by a space.
    Persian,
}

/// Text being filtered, with, for each of its bytes, where the original
/// text it came from starts and ends (byte offsets; `origin` has one more
/// entry, the original's end).
struct Mapped {
    text: String,
    origin: Vec<usize>,
    ends: Vec<usize>,
}

impl Mapped {
    fn new() -> Mapped {
        Mapped {
            text: String::new(),
            origin: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// `text` unfiltered.
    fn of(text: &str) -> Mapped {
        Mapped {
            text: text.to_string(),
            origin: (0..=text.len()).collect(),
            ends: (1..=text.len()).collect(),
        }
    }

    /// Appends `s`, standing for `prev`'s bytes `from..to`.
    fn push(&mut self, s: &str, prev: &Mapped, from: usize, to: usize) {
        let start = prev.origin[from];
        let end = if to > from { prev.ends[to - 1] } else { start };
        self.text.push_str(s);
        self.origin.extend(std::iter::repeat_n(start, s.len()));
        self.ends.extend(std::iter::repeat_n(end, s.len()));
    }

    /// Appends `prev`'s bytes `from..to` as they are.
    fn copy(&mut self, prev: &Mapped, from: usize, to: usize) {
        self.text.push_str(&prev.text[from..to]);
        self.origin.extend_from_slice(&prev.origin[from..to]);
        self.ends.extend_from_slice(&prev.ends[from..to]);
    }

    fn finish(mut self, end: usize) -> Mapped {
        self.origin.push(end);
        self
    }
}

/// Block-level HTML elements: their tags separate words.
const BLOCK_TAGS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "td",
    "th",
    "tr",
    "ul",
];

/// The character an HTML entity (`name` without `&` and `;`) stands for.
fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code);
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "copy" => '©',
        "reg" => '®',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        _ => return None,
    })
}

impl CharFilter {
    fn apply(&self, prev: &Mapped) -> Mapped {
        let text = prev.text.as_str();
        let end = *prev.origin.last().unwrap_or(&0);
        let mut out = Mapped::new();
        match self {
            CharFilter::Persian => {
                for (i, c) in text.char_indices() {
                    match c {
                        '\u{200c}' => out.push(" ", prev, i, i + c.len_utf8()),
                        _ => out.copy(prev, i, i + c.len_utf8()),
                    }
                }
            }
            CharFilter::Mapping(pairs) => {
                let mut i = 0;
                while i < text.len() {
                    let rest = &text[i..];
                    let best = pairs
                        .iter()
                        .filter(|(from, _)| rest.starts_with(from.as_str()))
                        .max_by_key(|(from, _)| from.len());
                    match best {
                        Some((from, to)) => {
                            out.push(to, prev, i, i + from.len());
                            i += from.len();
                        }
                        None => {
                            let n = rest.chars().next().map_or(1, char::len_utf8);
                            out.copy(prev, i, i + n);
                            i += n;
                        }
                    }
                }
            }
            CharFilter::IcuNormalize => {
                // A starter and the combining marks after it normalize
                // together; each such run maps to its first byte.
                let mut start = 0;
                let flush = |out: &mut Mapped, from: usize, to: usize| {
                    if from < to {
                        let s: String = text[from..to].nfkc().collect::<String>().to_lowercase();
                        out.push(&s, prev, from, to);
                    }
                };
                for (i, c) in text.char_indices() {
                    if i > start && !unicode_normalization::char::is_combining_mark(c) {
                        flush(&mut out, start, i);
                        start = i;
                    }
                }
                flush(&mut out, start, text.len());
            }
            CharFilter::HtmlStrip { ignored_tags } => {
                let mut i = 0;
                let mut skip_until: Option<String> = None;
                while i < text.len() {
                    let rest = &text[i..];
                    if let Some(closing) = &skip_until {
                        // Inside script or style: up to its closing tag.
                        match rest.to_ascii_lowercase().find(closing.as_str()) {
                            Some(at) => {
                                i += at;
                                skip_until = None;
                            }
                            None => break,
                        }
                        continue;
                    }
                    if rest.starts_with("<!--") {
                        i += rest.find("-->").map_or(rest.len(), |e| e + 3);
                        continue;
                    }
                    if rest.starts_with('<') {
                        if let Some(close) = rest.find('>') {
                            let inner = &rest[1..close];
                            let name: String = inner
                                .trim_start_matches('/')
                                .chars()
                                .take_while(|c| c.is_ascii_alphanumeric())
                                .collect::<String>()
                                .to_ascii_lowercase();
                            let tag_like = !name.is_empty() || inner.starts_with('!');
                            if tag_like {
                                if ignored_tags.iter().any(|t| t.eq_ignore_ascii_case(&name)) {
                                    out.copy(prev, i, i + close + 1);
                                } else if BLOCK_TAGS.contains(&name.as_str()) {
                                    out.push("\n", prev, i, i + close + 1);
                                }
                                if !inner.starts_with('/') && (name == "script" || name == "style")
                                {
                                    skip_until = Some(format!("</{name}"));
                                }
                                i += close + 1;
                                continue;
                            }
                        }
                    }
                    if let Some(after) = rest.strip_prefix('&') {
                        let name_end = after
                            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
                            .map(|e| e + 1);
                        if let Some(e) = name_end.filter(|&e| rest[e..].starts_with(';')) {
                            if let Some(c) = entity(&after[..e - 1]) {
                                out.push(c.encode_utf8(&mut [0; 4]), prev, i, i + e + 1);
                                i += e + 1;
                                continue;
                            }
                        }
                    }
                    let n = rest.chars().next().map_or(1, char::len_utf8);
                    out.copy(prev, i, i + n);
                    i += n;
                }
            }
        }
        out.finish(end)
    }
}

/// A tokenizer over text that `filters` rewrote first; tokens' offsets
/// are the original text's.
#[derive(Clone)]
pub struct CharFiltered<T> {
    pub filters: Vec<CharFilter>,
    pub inner: T,
    text: String,
    origin: Vec<usize>,
    ends: Vec<usize>,
}

impl<T> CharFiltered<T> {
    pub fn new(filters: Vec<CharFilter>, inner: T) -> CharFiltered<T> {
        CharFiltered {
            filters,
            inner,
            text: String::new(),
            origin: Vec::new(),
            ends: Vec::new(),
        }
    }
}

impl<T: Tokenizer> Tokenizer for CharFiltered<T> {
    type TokenStream<'a> = CharFilteredStream<'a, T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        let mut mapped = Mapped::of(text);
        for filter in &self.filters {
            mapped = filter.apply(&mapped);
        }
        self.text = mapped.text;
        self.origin = mapped.origin;
        self.ends = mapped.ends;
        CharFilteredStream {
            inner: self.inner.token_stream(&self.text),
            origin: &self.origin,
            ends: &self.ends,
        }
    }
}

/// [`CharFiltered`]'s stream: the inner tokenizer's, offsets corrected
/// (a token starts where its first byte's source starts and ends where
/// its last byte's source ends).
pub struct CharFilteredStream<'a, S> {
    inner: S,
    origin: &'a [usize],
    ends: &'a [usize],
}

impl<S: TokenStream> TokenStream for CharFilteredStream<'_, S> {
    fn advance(&mut self) -> bool {
        if !self.inner.advance() {
            return false;
        }
        let last = self.origin.len().saturating_sub(1);
        let token = self.inner.token_mut();
        let (from, to) = (token.offset_from.min(last), token.offset_to.min(last));
        token.offset_from = self.origin[from];
        token.offset_to = match to > from {
            true => self.ends[to - 1].max(token.offset_from),
            false => token.offset_from,
        };
        true
    }

    fn token(&self) -> &Token {
        self.inner.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.inner.token_mut()
    }
}

/// Atlas's `regexSplit` (`group` `None`: the text between matches) and
/// `regexCaptureGroup` (`group` `Some(n)`: capture group `n` of each
/// match, `0` the whole match) tokenizers; empty tokens are skipped.
#[derive(Clone)]
pub struct RegexTokenizer {
    pub pattern: Pattern,
    pub group: Option<usize>,
}

impl Tokenizer for RegexTokenizer {
    type TokenStream<'a> = ListStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> ListStream {
        let mut spans = Vec::new();
        match self.group {
            None => {
                let mut at = 0;
                for m in self.pattern.0.find_iter(text) {
                    spans.push((at, m.start()));
                    at = m.end();
                }
                spans.push((at, text.len()));
            }
            Some(group) => {
                for caps in self.pattern.0.captures_iter(text) {
                    if let Some(m) = caps.get(group) {
                        spans.push((m.start(), m.end()));
                    }
                }
            }
        }
        let tokens = spans
            .into_iter()
            .filter(|(from, to)| from < to)
            .enumerate()
            .map(|(position, (from, to))| Token {
                offset_from: from,
                offset_to: to,
                position,
                text: text[from..to].to_string(),
                position_length: 1,
            })
            .collect();
        ListStream {
            tokens,
            at: None,
            empty: Token::default(),
        }
    }
}

/// Tokens from a list.
pub struct ListStream {
    tokens: Vec<Token>,
    at: Option<usize>,
    empty: Token,
}

impl TokenStream for ListStream {
    fn advance(&mut self) -> bool {
        let next = self.at.map_or(0, |i| i + 1);
        self.at = Some(next);
        next < self.tokens.len()
    }

    fn token(&self) -> &Token {
        self.at
            .and_then(|i| self.tokens.get(i))
            .unwrap_or(&self.empty)
    }

    fn token_mut(&mut self) -> &mut Token {
        match self.at.and_then(|i| self.tokens.get_mut(i)) {
            Some(token) => token,
            None => &mut self.empty,
        }
    }
}

/// A token filter that rewrites or drops one token at a time.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenRule {
    /// `length`: tokens of fewer than `min` or more than `max` characters
    /// dropped.
    Length { min: usize, max: usize },
    /// `reverse`: each token's characters reversed.
    Reverse,
    /// `trim`: leading and trailing whitespace removed.
    Trim,
    /// `englishPossessive`: a trailing `'s` (or `’s`) removed.
    EnglishPossessive,
    /// `regex`: matches of `pattern` replaced by `replacement` (`$1`
    /// names a group), every match or only the first.
    Regex {
        pattern: Pattern,
        replacement: String,
        all: bool,
    },
}

impl TokenRule {
    /// Rewrites `token`; `false` drops it.
    fn apply(&self, token: &mut Token) -> bool {
        match self {
            TokenRule::Length { min, max } => {
                let n = token.text.chars().count();
                *min <= n && n <= *max
            }
            TokenRule::Reverse => {
                token.text = token.text.chars().rev().collect();
                true
            }
            TokenRule::Trim => {
                let trimmed = token.text.trim();
                if trimmed.len() != token.text.len() {
                    token.text = trimmed.to_string();
                }
                true
            }
            TokenRule::EnglishPossessive => {
                for suffix in ["'s", "’s", "'S", "’S"] {
                    if let Some(stem) = token.text.strip_suffix(suffix) {
                        token.text.truncate(stem.len());
                        break;
                    }
                }
                true
            }
            TokenRule::Regex {
                pattern,
                replacement,
                all,
            } => {
                let replaced = match all {
                    true => pattern.0.replace_all(&token.text, replacement.as_str()),
                    false => pattern.0.replace(&token.text, replacement.as_str()),
                };
                if let std::borrow::Cow::Owned(s) = replaced {
                    token.text = s;
                }
                true
            }
        }
    }
}

impl TokenFilter for TokenRule {
    type Tokenizer<T: Tokenizer> = RuleTokenizer<T>;

    fn transform<T: Tokenizer>(self, inner: T) -> RuleTokenizer<T> {
        RuleTokenizer { rule: self, inner }
    }
}

/// A tokenizer with a [`TokenRule`] after it.
#[derive(Clone)]
pub struct RuleTokenizer<T> {
    rule: TokenRule,
    inner: T,
}

impl<T: Tokenizer> Tokenizer for RuleTokenizer<T> {
    type TokenStream<'a> = RuleStream<'a, T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        RuleStream {
            rule: &self.rule,
            inner: self.inner.token_stream(text),
        }
    }
}

/// [`RuleTokenizer`]'s stream.
pub struct RuleStream<'a, S> {
    rule: &'a TokenRule,
    inner: S,
}

impl<S: TokenStream> TokenStream for RuleStream<'_, S> {
    fn advance(&mut self) -> bool {
        while self.inner.advance() {
            if self.rule.apply(self.inner.token_mut()) {
                return true;
            }
        }
        false
    }

    fn token(&self) -> &Token {
        self.inner.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.inner.token_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::tokenizer::{TextAnalyzer, WhitespaceTokenizer};

    fn tokens(mut analyzer: TextAnalyzer, text: &str) -> Vec<(String, usize, usize)> {
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while let Some(t) = stream.next() {
            out.push((t.text.clone(), t.offset_from, t.offset_to));
        }
        out
    }

    fn words(filters: Vec<CharFilter>, text: &str) -> Vec<(String, usize, usize)> {
        let tokenizer = CharFiltered::new(filters, WhitespaceTokenizer::default());
        tokens(TextAnalyzer::builder(tokenizer).build(), text)
    }

    #[test]
    fn html_is_stripped_and_offsets_point_into_the_original() {
        let text = "<p>Fish&amp;chips</p><script>var x;</script><div>caf&#233; <b>now</b></div>";
        let got = words(
            vec![CharFilter::HtmlStrip {
                ignored_tags: vec![],
            }],
            text,
        );
        let texts: Vec<&str> = got.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(texts, ["Fish&chips", "café", "now"]);
        // Each token's offsets cover its source in the original.
        assert_eq!(&text[got[0].1..got[0].2], "Fish&amp;chips");
        assert_eq!(&text[got[2].1..got[2].2], "now");
        let kept = words(
            vec![CharFilter::HtmlStrip {
                ignored_tags: vec!["b".into()],
            }],
            "a <b>c</b>",
        );
        assert_eq!(kept[1].0, "<b>c</b>");
    }

    #[test]
    fn mapping_persian_and_icu_rewrite_before_the_tokenizer() {
        let mapping = CharFilter::Mapping(vec![("-".into(), " ".into()), ("--".into(), "".into())]);
        let got = words(vec![mapping], "a-b c--d");
        let texts: Vec<&str> = got.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(texts, ["a", "b", "cd"]);
        let got = words(vec![CharFilter::Persian], "a\u{200c}b");
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].1, got[1].2), (4, 5));
        // NFKC folds the ligature and the decomposed é, then lower-cases.
        let got = words(vec![CharFilter::IcuNormalize], "ﬁne Cafe\u{301}");
        let texts: Vec<&str> = got.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(texts, ["fine", "café"]);
        assert_eq!((got[1].1, got[1].2), (6, 12));
    }

    #[test]
    fn regex_tokenizers_split_and_capture() {
        let split = RegexTokenizer {
            pattern: compile_pattern("[,;]\\s*").unwrap(),
            group: None,
        };
        let got = tokens(TextAnalyzer::builder(split).build(), "a, b;c,");
        let texts: Vec<&str> = got.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        let capture = RegexTokenizer {
            pattern: compile_pattern("(\\d{3})-(\\d{4})").unwrap(),
            group: Some(2),
        };
        let got = tokens(
            TextAnalyzer::builder(capture).build(),
            "555-1234 x 555-9876",
        );
        assert_eq!(got[0], ("1234".to_string(), 4, 8));
        assert_eq!(got[1].0, "9876");
        assert!(compile_pattern("(").is_err());
    }

    #[test]
    fn token_rules_rewrite_or_drop() {
        let analyzer = |rule: TokenRule| {
            TextAnalyzer::builder(WhitespaceTokenizer::default())
                .filter(rule)
                .build()
        };
        let texts = |rule, text| -> Vec<String> {
            tokens(analyzer(rule), text)
                .into_iter()
                .map(|t| t.0)
                .collect()
        };
        assert_eq!(
            texts(TokenRule::Length { min: 2, max: 3 }, "a bb ccc dddd éé"),
            ["bb", "ccc", "éé"]
        );
        assert_eq!(texts(TokenRule::Reverse, "abc"), ["cba"]);
        assert_eq!(
            texts(TokenRule::EnglishPossessive, "Bob's cats’s"),
            ["Bob", "cats"]
        );
        let regex = |all| TokenRule::Regex {
            pattern: compile_pattern("a").unwrap(),
            replacement: "o".into(),
            all,
        };
        assert_eq!(texts(regex(true), "banana"), ["bonono"]);
        assert_eq!(texts(regex(false), "banana"), ["bonana"]);
    }
}
