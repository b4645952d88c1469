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
    fn letters_split_on_everything_else() {
        let got = split(WordTokenizer::letters(), "Don't stop v1.2 naïve");
        let words: Vec<&str> = got.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(words, ["Don", "t", "stop", "v", "naïve"]);
    }
}
