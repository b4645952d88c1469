//! Atlas Search's `queryString` operator: Lucene's classic query syntax
//! read into the same [`Operator`] tree the other operators build.
//!
//! Served: terms and `"phrases"` (with `~slop`), `path:term` and
//! `path:(group)`, `AND` / `&&`, `OR` / `||`, `NOT` / `!`, `+` (must) and
//! `-` (must not), parentheses, `*` and `?` wildcards in a term, `term~N`
//! fuzzy (N = 1 or 2) and `^boost`. Clauses side by side are OR-ed (Lucene's
//! default operator); `AND` binds tighter than `OR`. Ranges (`[a TO b]`)
//! and regular expressions (`/re/`) are refused by name.

use crate::error::{Code, Error};
use crate::index::text::{wildcard_pattern, Fuzzy, Operator, ScoreModifier, SearchPath};

/// Most clauses one query string builds (as `compound` is bounded).
const MAX_CLAUSES: usize = 1024;
/// Deepest nesting of parentheses.
const MAX_DEPTH: usize = 64;

fn bad(message: impl Into<String>) -> Error {
    Error::client(Code::BAD_VALUE, message)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Phrase(String),
    Field(String),
    Open,
    Close,
    And,
    Or,
    Not,
    Must,
    MustNot,
    /// `~N` after a term or phrase.
    Tilde(u32),
    /// `^N`.
    Boost(f32),
}

fn tokenize(query: &str) -> Result<Vec<Token>, Error> {
    let mut out = Vec::new();
    let mut chars = query.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '+' | '-' | '!' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    '+' => Token::Must,
                    '-' => Token::MustNot,
                    _ => Token::Not,
                });
            }
            '&' | '|' => {
                chars.next();
                if chars.next() != Some(c) {
                    return Err(bad(format!("queryString: a lone '{c}'")));
                }
                out.push(if c == '&' { Token::And } else { Token::Or });
            }
            '"' => {
                chars.next();
                let mut phrase = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => phrase.extend(chars.next()),
                        Some(c) => phrase.push(c),
                        None => return Err(bad("queryString: an unclosed '\"'")),
                    }
                }
                out.push(Token::Phrase(phrase));
            }
            '~' | '^' => {
                chars.next();
                let mut number = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_digit() || d == '.' {
                        number.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(if c == '~' {
                    Token::Tilde(number.parse().unwrap_or(2))
                } else {
                    Token::Boost(
                        number
                            .parse()
                            .map_err(|_| bad("queryString: '^' needs a number"))?,
                    )
                });
            }
            '[' | '{' | '/' => {
                return Err(bad(format!(
                    "queryString: ranges and regular expressions ('{c}') are not served by \
                     likewise yet"
                )))
            }
            _ => {
                let mut word = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_whitespace() || "()\"~^".contains(d) {
                        break;
                    }
                    if d == '\\' {
                        chars.next();
                        word.extend(chars.next());
                        continue;
                    }
                    if d == ':' {
                        break;
                    }
                    word.push(d);
                    chars.next();
                }
                if chars.peek() == Some(&':') {
                    chars.next();
                    out.push(Token::Field(word));
                    continue;
                }
                out.push(match word.as_str() {
                    "AND" => Token::And,
                    "OR" => Token::Or,
                    "NOT" => Token::Not,
                    _ => Token::Word(word),
                });
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    clauses: usize,
}

/// Whether a clause must, may or must not match, within its group.
#[derive(Clone, Copy, PartialEq)]
enum Occur {
    Must,
    Should,
    MustNot,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    /// A group up to `)` or the end: OR-ed runs of AND-ed clauses.
    fn group(&mut self, field: &str, depth: usize) -> Result<Operator, Error> {
        if depth > MAX_DEPTH {
            return Err(bad(format!(
                "queryString nests parentheses deeper than {MAX_DEPTH}"
            )));
        }
        let mut alternatives: Vec<Vec<(Occur, Operator)>> = vec![Vec::new()];
        let mut joined_by_and = false;
        loop {
            match self.peek() {
                None | Some(Token::Close) => break,
                Some(Token::Or) => {
                    self.next();
                    alternatives.push(Vec::new());
                    joined_by_and = false;
                    continue;
                }
                Some(Token::And) => {
                    self.next();
                    joined_by_and = true;
                    continue;
                }
                _ => {}
            }
            let mut occur = Occur::Should;
            match self.peek() {
                Some(Token::Must) => {
                    self.next();
                    occur = Occur::Must;
                }
                Some(Token::MustNot | Token::Not) => {
                    self.next();
                    occur = Occur::MustNot;
                }
                _ => {}
            }
            let clause = self.clause(field, depth)?;
            let current = alternatives.last_mut().expect("one alternative");
            if joined_by_and {
                // `a AND b`: both required (and the one before it).
                if let Some(last) = current.last_mut() {
                    if last.0 == Occur::Should {
                        last.0 = Occur::Must;
                    }
                }
                if occur == Occur::Should {
                    occur = Occur::Must;
                }
            }
            // Side by side, clauses join one group: its should clauses
            // are OR-ed (Lucene's default operator), its `+` and `-` ones
            // required and excluded.
            current.push((occur, clause));
            joined_by_and = false;
        }
        let mut ors: Vec<Operator> = alternatives
            .into_iter()
            .filter(|a| !a.is_empty())
            .map(|clauses| self.compound(clauses))
            .collect::<Result<_, _>>()?;
        match ors.len() {
            0 => Err(bad("queryString: an empty query or group")),
            1 => Ok(ors.pop().expect("one")),
            _ => self.compound(ors.into_iter().map(|o| (Occur::Should, o)).collect()),
        }
    }

    fn compound(&mut self, clauses: Vec<(Occur, Operator)>) -> Result<Operator, Error> {
        if clauses.len() == 1 && clauses[0].0 != Occur::MustNot {
            return Ok(clauses.into_iter().next().expect("one").1);
        }
        self.clauses += 1;
        if self.clauses > MAX_CLAUSES {
            return Err(bad(format!(
                "queryString builds more than {MAX_CLAUSES} clauses"
            )));
        }
        let (mut must, mut should, mut must_not) = (Vec::new(), Vec::new(), Vec::new());
        for (occur, op) in clauses {
            match occur {
                Occur::Must => must.push(op),
                Occur::Should => should.push(op),
                Occur::MustNot => must_not.push(op),
            }
        }
        Ok(boolean(must, should, must_not))
    }

    /// One term, phrase or parenthesised group, with its field, `~` and
    /// `^`.
    fn clause(&mut self, field: &str, depth: usize) -> Result<Operator, Error> {
        self.clauses += 1;
        if self.clauses > MAX_CLAUSES {
            return Err(bad(format!(
                "queryString builds more than {MAX_CLAUSES} clauses"
            )));
        }
        let mut field = field.to_string();
        if let Some(Token::Field(f)) = self.peek() {
            field = f.clone();
            self.next();
        }
        let paths = vec![SearchPath::Field(field.clone())];
        let mut op = match self.next() {
            Some(Token::Open) => {
                let inner = self.group(&field, depth + 1)?;
                if self.next() != Some(Token::Close) {
                    return Err(bad("queryString: an unclosed '('"));
                }
                inner
            }
            Some(Token::Phrase(text)) => {
                let slop = match self.peek() {
                    Some(Token::Tilde(n)) => {
                        let n = *n;
                        self.next();
                        n
                    }
                    _ => 0,
                };
                Operator::Phrase {
                    query: vec![text],
                    paths,
                    slop,
                    score: None,
                    synonyms: None,
                }
            }
            Some(Token::Word(word)) if word.contains(['*', '?']) => Operator::Regex {
                operator: "queryString",
                patterns: vec![wildcard_pattern(&word.to_lowercase())],
                paths,
                allow_analyzed: true,
                score: None,
            },
            Some(Token::Word(word)) => {
                let fuzzy = match self.peek() {
                    Some(Token::Tilde(n)) => {
                        let max_edits = u8::try_from(*n).ok().filter(|n| (1..=2).contains(n));
                        self.next();
                        Some(Fuzzy {
                            max_edits: max_edits.unwrap_or(2),
                        })
                    }
                    _ => None,
                };
                Operator::Text {
                    query: vec![word],
                    paths,
                    fuzzy,
                    match_all: false,
                    score: None,
                    synonyms: None,
                }
            }
            other => {
                return Err(bad(format!(
                    "queryString: expected a term, a phrase or '(' but found {other:?}"
                )))
            }
        };
        if let Some(Token::Boost(b)) = self.peek() {
            let b = *b;
            self.next();
            if !(b.is_finite() && b > 0.0) {
                return Err(bad("queryString: a boost must be a positive number"));
            }
            op = op.with_score(ScoreModifier::Boost(b));
        }
        Ok(op)
    }
}

/// A `compound` of the clauses; with no required clause, at least one
/// `should` must match (Lucene's boolean query).
fn boolean(must: Vec<Operator>, should: Vec<Operator>, must_not: Vec<Operator>) -> Operator {
    let minimum_should_match = usize::from(must.is_empty() && !should.is_empty());
    Operator::Compound {
        must,
        must_not,
        should,
        filter: Vec::new(),
        minimum_should_match,
        score: None,
    }
}

/// Reads `queryString: {defaultPath, query}` into an operator tree.
pub fn parse(default_path: &str, query: &str) -> Result<Operator, Error> {
    if query.len() > 64 * 1024 {
        return Err(bad("queryString.query is longer than 64 KiB"));
    }
    let mut parser = Parser {
        tokens: tokenize(query)?,
        at: 0,
        clauses: 0,
    };
    let op = parser.group(default_path, 0)?;
    if parser.at < parser.tokens.len() {
        return Err(bad("queryString: an unmatched ')'"));
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(word: &str, path: &str) -> Operator {
        Operator::Text {
            query: vec![word.into()],
            paths: vec![SearchPath::Field(path.into())],
            fuzzy: None,
            match_all: false,
            score: None,
            synonyms: None,
        }
    }

    fn compound(must: Vec<Operator>, should: Vec<Operator>, must_not: Vec<Operator>) -> Operator {
        boolean(must, should, must_not)
    }

    #[test]
    fn lucene_syntax_becomes_compound_clauses() {
        assert_eq!(parse("d", "fox").unwrap(), text("fox", "d"));
        assert_eq!(
            parse("d", "fox dog").unwrap(),
            compound(vec![], vec![text("fox", "d"), text("dog", "d")], vec![])
        );
        assert_eq!(
            parse("d", "title:fox AND dog").unwrap(),
            compound(vec![text("fox", "title"), text("dog", "d")], vec![], vec![])
        );
        assert_eq!(
            parse("d", "fox AND NOT lazy").unwrap(),
            compound(vec![text("fox", "d")], vec![], vec![text("lazy", "d")])
        );
        assert_eq!(
            parse("d", "+fox -lazy dog").unwrap(),
            compound(
                vec![text("fox", "d")],
                vec![text("dog", "d")],
                vec![text("lazy", "d")]
            )
        );
        // AND binds tighter than OR.
        assert_eq!(
            parse("d", "a OR b AND c").unwrap(),
            compound(
                vec![],
                vec![
                    text("a", "d"),
                    compound(vec![text("b", "d"), text("c", "d")], vec![], vec![])
                ],
                vec![]
            )
        );
        assert_eq!(
            parse("d", "body:(fox OR dog)").unwrap(),
            compound(
                vec![],
                vec![text("fox", "body"), text("dog", "body")],
                vec![]
            )
        );
        assert!(matches!(
            parse("d", "\"new york\"~2").unwrap(),
            Operator::Phrase { slop: 2, .. }
        ));
        assert!(matches!(
            parse("d", "yo*k").unwrap(),
            Operator::Regex { .. }
        ));
        assert!(matches!(
            parse("d", "fxo~1").unwrap(),
            Operator::Text {
                fuzzy: Some(Fuzzy { max_edits: 1 }),
                ..
            }
        ));
        assert!(matches!(
            parse("d", "fox^3").unwrap(),
            Operator::Compound {
                score: Some(ScoreModifier::Boost(_)),
                ..
            }
        ));
        for bad_query in ["(fox", "fox)", "\"fox", "a:[1 TO 2]", "", "fox ^x", "a & b"] {
            assert!(parse("d", bad_query).is_err(), "{bad_query}");
        }
        let deep = "(".repeat(100) + "a" + &")".repeat(100);
        assert!(parse("d", &deep).is_err());
    }
}
