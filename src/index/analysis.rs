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
    Mapping(Mappings),
    /// `persian`: the zero-width non-joiner replaced by a space.
    Persian,
}

/// A `mapping` char filter's pairs, with an Aho-Corasick automaton over
/// their keys (leftmost-longest, as Lucene's `MappingCharFilter` picks).
#[derive(Debug, Clone)]
pub struct Mappings {
    pairs: Vec<(String, String)>,
    keys: aho_corasick::AhoCorasick,
}

impl Mappings {
    /// The automaton for `pairs` (non-empty keys). Errors: the
    /// automaton's, past its size limits.
    pub fn new(pairs: Vec<(String, String)>) -> Result<Mappings, String> {
        let keys = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(pairs.iter().map(|(from, _)| from))
            .map_err(|e| e.to_string())?;
        Ok(Mappings { pairs, keys })
    }
}

impl PartialEq for Mappings {
    fn eq(&self, other: &Mappings) -> bool {
        // The automaton is a function of the pairs.
        self.pairs == other.pairs
    }
}

/// Text being filtered, with, for each of its bytes, where the original
/// text it came from starts and ends (byte offsets; `origin` has one more
/// entry, the original's end).
struct Mapped {
    text: String,
    origin: Vec<u32>,
    ends: Vec<u32>,
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
            // Offsets as u32 (half the memory; BSON strings are < 16 MiB).
            origin: (0..=text.len()).map(offset).collect(),
            ends: (1..=text.len()).map(offset).collect(),
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

    fn finish(mut self, end: u32) -> Mapped {
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
            CharFilter::Mapping(mappings) => {
                let mut at = 0;
                for m in mappings.keys.find_iter(text) {
                    out.copy(prev, at, m.start());
                    let to = &mappings.pairs[m.pattern().as_usize()].1;
                    out.push(to, prev, m.start(), m.end());
                    at = m.end();
                }
                out.copy(prev, at, text.len());
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
                // Hangul vowel and trailing jamo compose with what is
                // before them too, though they are letters, not marks.
                let continues = |c: char| {
                    unicode_normalization::char::is_combining_mark(c)
                        || ('\u{1160}'..='\u{11ff}').contains(&c)
                        || ('\u{d7b0}'..='\u{d7ff}').contains(&c)
                };
                for (i, c) in text.char_indices() {
                    if i > start && !continues(c) {
                        flush(&mut out, start, i);
                        start = i;
                    }
                }
                flush(&mut out, start, text.len());
            }
            CharFilter::HtmlStrip { ignored_tags } => {
                let mut i = 0;
                let mut skip_until: Option<String> = None;
                // Where the next `>` is, and from where there is none,
                // so that no `<` scans the rest of the text again.
                let (mut next_gt, mut no_gt_from) = (None::<usize>, usize::MAX);
                while i < text.len() {
                    let rest = &text[i..];
                    if let Some(closing) = &skip_until {
                        // Inside script or style: up to its closing tag.
                        match find_ascii_ignoring_case(rest, closing) {
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
                        if i < no_gt_from && next_gt.is_none_or(|g| g < i) {
                            next_gt = rest.find('>').map(|e| i + e);
                            if next_gt.is_none() {
                                no_gt_from = i;
                            }
                        }
                        let close = next_gt.filter(|&g| g > i).map(|g| g - i);
                        if let Some(close) = close {
                            let inner = &rest[1..close];
                            let name: String = inner
                                .trim_start_matches('/')
                                .chars()
                                .take_while(|c| c.is_ascii_alphanumeric())
                                .collect::<String>()
                                .to_ascii_lowercase();
                            let tag_like = !name.is_empty() || inner.starts_with('!');
                            if tag_like {
                                let ignored =
                                    ignored_tags.iter().any(|t| t.eq_ignore_ascii_case(&name));
                                if ignored {
                                    out.copy(prev, i, i + close + 1);
                                } else if BLOCK_TAGS.contains(&name.as_str()) {
                                    out.push("\n", prev, i, i + close + 1);
                                }
                                let opens = !inner.starts_with('/') && !inner.ends_with('/');
                                if opens && !ignored && (name == "script" || name == "style") {
                                    skip_until = Some(format!("</{name}"));
                                }
                                i += close + 1;
                                continue;
                            }
                        }
                    }
                    if let Some(after) = rest.strip_prefix('&') {
                        // Entity names are short: look at 32 bytes at most.
                        let name_end = after
                            .bytes()
                            .take(32)
                            .position(|b| !(b.is_ascii_alphanumeric() || b == b'#'))
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

/// A byte offset as stored in [`Mapped`].
fn offset(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
}

/// Where `needle` (ASCII, lower-case) first occurs in `haystack`, ASCII
/// letters compared ignoring case; linear in `haystack` for a short
/// needle.
fn find_ascii_ignoring_case(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// A tokenizer over text that `filters` rewrote first; tokens' offsets
/// are the original text's.
#[derive(Clone)]
pub struct CharFiltered<T> {
    pub filters: Vec<CharFilter>,
    pub inner: T,
    text: String,
    origin: Vec<u32>,
    ends: Vec<u32>,
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
        if self.filters.is_empty() {
            // Nothing rewrites the text: offsets stand as they are.
            return CharFilteredStream {
                inner: self.inner.token_stream(text),
                origin: &[],
                ends: &[],
            };
        }
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
    origin: &'a [u32],
    ends: &'a [u32],
}

impl<S: TokenStream> TokenStream for CharFilteredStream<'_, S> {
    fn advance(&mut self) -> bool {
        if !self.inner.advance() {
            return false;
        }
        if self.origin.is_empty() {
            return true;
        }
        let last = self.origin.len() - 1;
        let token = self.inner.token_mut();
        let (from, to) = (token.offset_from.min(last), token.offset_to.min(last));
        token.offset_from = self.origin[from] as usize;
        token.offset_to = match to > from {
            true => (self.ends[to - 1] as usize).max(token.offset_from),
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
        // A kept script keeps its content; a self-closing one hides
        // nothing; a `<` that no `>` closes is text.
        let strip = |ignored: Vec<String>, text: &str| -> Vec<String> {
            words(
                vec![CharFilter::HtmlStrip {
                    ignored_tags: ignored,
                }],
                text,
            )
            .into_iter()
            .map(|t| t.0)
            .collect()
        };
        assert_eq!(
            strip(vec!["script".into()], "<script> x </script>"),
            ["<script>", "x", "</script>"]
        );
        assert_eq!(strip(vec![], "<script/> y"), ["y"]);
        assert_eq!(strip(vec![], "a <b c"), ["a", "<b", "c"]);
        let many = "x<".repeat(50_000);
        assert_eq!(strip(vec![], &many).len(), 1);
    }

    #[test]
    fn mapping_persian_and_icu_rewrite_before_the_tokenizer() {
        let mapping = CharFilter::Mapping(
            Mappings::new(vec![("-".into(), " ".into()), ("--".into(), "".into())]).unwrap(),
        );
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
        // Conjoining jamo compose into a syllable.
        let got = words(vec![CharFilter::IcuNormalize], "\u{1100}\u{1161}\u{11a8} x");
        assert_eq!(got[0].0, "\u{ac01}");
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
