//! The word tokenizer behind the `lucene.standard`, `lucene.english` and
//! `lucene.simple` analyzers: one pass over the characters, no regular
//! expression (tantivy's `RegexTokenizer` spent 80% of indexing time
//! rebuilding its lazy DFA over Unicode word classes; measured with
//! `scripts/bench text`).
//!
//! Words (`WordTokenizer::words`) are runs of word characters (alphabetic,
//! numeric or `_`, Unicode's, as the regular expression `\w` has them)
//! joined by `'`, `’` or `.` between two word characters, so `don't`,
//! `U.S.A` and `v1.2` stay whole: an approximation of Unicode's word
//! breaks (UAX #29), which Lucene's `StandardTokenizer` follows. Letters
//! (`WordTokenizer::letters`) are runs of alphabetic characters, as
//! Lucene's `LetterTokenizer` (`lucene.simple`) splits.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// See the module documentation.
#[derive(Clone, Default)]
pub struct WordTokenizer {
    token: Token,
    letters_only: bool,
}

impl WordTokenizer {
    /// Word runs joined by apostrophes and dots (`lucene.standard`).
    pub fn words() -> WordTokenizer {
        WordTokenizer::default()
    }

    /// Letter runs (`lucene.simple`).
    pub fn letters() -> WordTokenizer {
        WordTokenizer {
            letters_only: true,
            ..WordTokenizer::default()
        }
    }
}

/// The tokens of one text.
pub struct WordStream<'a> {
    text: &'a str,
    /// Byte offset where the next token is looked for.
    at: usize,
    letters_only: bool,
    token: &'a mut Token,
}

impl Tokenizer for WordTokenizer {
    type TokenStream<'a> = WordStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> WordStream<'a> {
        self.token.reset();
        WordStream {
            text,
            at: 0,
            letters_only: self.letters_only,
            token: &mut self.token,
        }
    }
}

impl WordStream<'_> {
    fn is_word(&self, c: char) -> bool {
        if self.letters_only {
            c.is_alphabetic()
        } else {
            c.is_alphanumeric() || c == '_'
        }
    }
}

impl TokenStream for WordStream<'_> {
    fn advance(&mut self) -> bool {
        let rest = &self.text[self.at..];
        let Some((start, _)) = rest.char_indices().find(|(_, c)| self.is_word(*c)) else {
            self.at = self.text.len();
            return false;
        };
        let start = self.at + start;
        let mut end = start;
        let mut chars = self.text[start..].chars().peekable();
        while let Some(c) = chars.next() {
            if self.is_word(c) {
                end += c.len_utf8();
                continue;
            }
            let joins = !self.letters_only && matches!(c, '\'' | '’' | '.');
            match chars.peek() {
                Some(&next) if joins && self.is_word(next) => end += c.len_utf8(),
                _ => break,
            }
        }
        self.at = end;
        self.token.position = self.token.position.wrapping_add(1);
        self.token.offset_from = start;
        self.token.offset_to = end;
        self.token.text.clear();
        self.token.text.push_str(&self.text[start..end]);
        true
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

/// Longest word cut into grams, in bytes (255 characters of up to 4
/// bytes).
const MAX_WORD_BYTES: usize = 4 * 255;

/// How an `autocomplete` field cuts each word into grams (Atlas's
/// `tokenization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grams {
    /// `edgeGram`: prefixes.
    Edge,
    /// `rightEdgeGram`: suffixes.
    RightEdge,
    /// `nGram`: every run.
    N,
}

/// Words (as [`WordTokenizer::words`] cuts them), each cut into grams of
/// `min` to `max` characters; every gram of a word keeps the word's
/// position, so a phrase of prefixes matches a phrase of words. Words
/// shorter than `min` give no gram (Lucene's `EdgeNGramTokenFilter`).
#[derive(Clone)]
pub struct GramTokenizer {
    words: WordTokenizer,
    grams: Grams,
    min: usize,
    max: usize,
    buffer: Vec<Token>,
    token: Token,
}

impl GramTokenizer {
    pub fn new(grams: Grams, min: usize, max: usize) -> GramTokenizer {
        GramTokenizer {
            words: WordTokenizer::words(),
            grams,
            min: min.max(1),
            max: max.max(min.max(1)),
            buffer: Vec::new(),
            token: Token::default(),
        }
    }
}

/// The grams of one text, in order.
pub struct GramStream<'a> {
    grams: std::vec::IntoIter<Token>,
    token: &'a mut Token,
}

impl Tokenizer for GramTokenizer {
    type TokenStream<'a> = GramStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> GramStream<'a> {
        self.buffer.clear();
        let (grams, min, max) = (self.grams, self.min, self.max);
        let mut words = self.words.token_stream(text);
        while words.advance() {
            let word = words.token();
            // Lucene's analyzers drop words past 255 characters; grams of
            // longer ones would be the text's size squared.
            if word.text.len() > MAX_WORD_BYTES {
                continue;
            }
            let starts: Vec<usize> = word.text.char_indices().map(|(i, _)| i).collect();
            let chars = starts.len();
            let at = |i: usize| starts.get(i).copied().unwrap_or(word.text.len());
            let mut push = |from: usize, to: usize| {
                self.buffer.push(Token {
                    offset_from: word.offset_from + at(from),
                    offset_to: word.offset_from + at(to),
                    position: word.position,
                    text: word.text[at(from)..at(to)].to_string(),
                    position_length: 1,
                });
            };
            for len in min..=max.min(chars) {
                match grams {
                    Grams::Edge => push(0, len),
                    Grams::RightEdge => push(chars - len, chars),
                    Grams::N => {
                        for from in 0..=chars - len {
                            push(from, from + len);
                        }
                    }
                }
            }
        }
        GramStream {
            grams: std::mem::take(&mut self.buffer).into_iter(),
            token: &mut self.token,
        }
    }
}

impl TokenStream for GramStream<'_> {
    fn advance(&mut self) -> bool {
        match self.grams.next() {
            Some(gram) => {
                *self.token = gram;
                true
            }
            None => false,
        }
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(mut tokenizer: WordTokenizer, text: &str) -> Vec<(String, usize)> {
        let mut stream = tokenizer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push((stream.token().text.clone(), stream.token().position));
        }
        out
    }

    #[test]
    fn words_keep_apostrophes_and_dots_inside_and_split_on_the_rest() {
        let got = split(
            WordTokenizer::words(),
            "Don't stop: U.S.A. v1.2, rock'n'roll — l’été _x_ end. 'quoted'",
        );
        let words: Vec<&str> = got.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(
            words,
            [
                "Don't",
                "stop",
                "U.S.A",
                "v1.2",
                "rock'n'roll",
                "l’été",
                "_x_",
                "end",
                "quoted"
            ]
        );
        let positions: Vec<usize> = got.iter().map(|(_, p)| *p).collect();
        assert_eq!(positions, (0..9).collect::<Vec<_>>());
        assert!(split(WordTokenizer::words(), " ,.; ").is_empty());
    }

    #[test]
    fn grams_cut_each_word_and_keep_its_position() {
        let mut edge = GramTokenizer::new(Grams::Edge, 2, 4);
        let mut stream = edge.token_stream("Mongo db x");
        let mut got = Vec::new();
        while stream.advance() {
            got.push((stream.token().text.clone(), stream.token().position));
        }
        let want = [("Mo", 0), ("Mon", 0), ("Mong", 0), ("db", 1)];
        assert_eq!(got, want.map(|(t, p)| (t.to_string(), p)));
        let mut right = GramTokenizer::new(Grams::RightEdge, 2, 3);
        let mut stream = right.token_stream("été");
        let mut got = Vec::new();
        while stream.advance() {
            got.push(stream.token().text.clone());
        }
        assert_eq!(got, ["té", "été"]);
        let mut n = GramTokenizer::new(Grams::N, 2, 2);
        let mut stream = n.token_stream("abcd");
        let mut got = Vec::new();
        while stream.advance() {
            got.push(stream.token().text.clone());
        }
        assert_eq!(got, ["ab", "bc", "cd"]);
    }

    #[test]
    fn letters_split_on_everything_else() {
        let got = split(WordTokenizer::letters(), "Don't stop v1.2 naïve");
        let words: Vec<&str> = got.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(words, ["Don", "t", "stop", "v", "naïve"]);
    }
}
