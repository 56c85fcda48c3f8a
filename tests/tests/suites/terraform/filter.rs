//! The subset of the Cloud Logging query language that terraform's
//! log-based metrics use, evaluated against log entries: `AND`, `OR`,
//! `NOT`, parentheses, `=`, `!=`, `:`, `>=`/`<=`/`>`/`<` (on `severity`
//! by level), quoted strings, and fields such as `resource.type`,
//! `resource.labels.service_name`, `jsonPayload.event` and `severity`.
//! Anything else panics with what is not understood: a filter this cannot
//! read must not pass for one that matches.

use serde_json::Value;

/// A parsed filter.
#[derive(Debug)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Compare {
        field: String,
        op: Op,
        value: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Has,
    Ge,
    Le,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Not,
    Op(Op),
    Word(String),
    Quoted(String),
}

fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            _ if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    s.push(chars[i]);
                    i += 1;
                }
                assert!(i < chars.len(), "unterminated string in {text}");
                i += 1;
                out.push(Token::Quoted(s));
            }
            '=' | '!' | ':' | '<' | '>' => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let (op, len) = match (c, two.as_str()) {
                    (_, "!=") => (Op::Ne, 2),
                    (_, ">=") => (Op::Ge, 2),
                    (_, "<=") => (Op::Le, 2),
                    (_, "=~") | (_, "!~") => {
                        panic!("regular expressions ({two}) are not supported: {text}")
                    }
                    ('=', _) => (Op::Eq, 1),
                    (':', _) => (Op::Has, 1),
                    ('>', _) => (Op::Gt, 1),
                    ('<', _) => (Op::Lt, 1),
                    _ => panic!("cannot read {two:?} in {text}"),
                };
                out.push(Token::Op(op));
                i += len;
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | '"' | '=' | '!' | ':' | '<' | '>')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push(match word.as_str() {
                    "AND" => Token::And,
                    "OR" => Token::Or,
                    "NOT" => Token::Not,
                    _ => Token::Word(word),
                });
            }
        }
    }
    out
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    text: String,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Token {
        let token = self
            .tokens
            .get(self.at)
            .cloned()
            .unwrap_or_else(|| panic!("the filter ends too early: {}", self.text));
        self.at += 1;
        token
    }

    fn or(&mut self) -> Filter {
        let mut terms = vec![self.and()];
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            terms.push(self.and());
        }
        if terms.len() == 1 {
            terms.remove(0)
        } else {
            Filter::Or(terms)
        }
    }

    /// Terms side by side are ANDed, as in Logging.
    fn and(&mut self) -> Filter {
        let mut terms = vec![self.unary()];
        loop {
            match self.peek() {
                Some(Token::And) => {
                    self.at += 1;
                    terms.push(self.unary());
                }
                Some(Token::Open | Token::Not | Token::Word(_)) => terms.push(self.unary()),
                _ => break,
            }
        }
        if terms.len() == 1 {
            terms.remove(0)
        } else {
            Filter::And(terms)
        }
    }

    fn unary(&mut self) -> Filter {
        match self.next() {
            Token::Not => Filter::Not(Box::new(self.unary())),
            Token::Open => {
                let inner = self.or();
                assert_eq!(
                    self.next(),
                    Token::Close,
                    "unbalanced parentheses in {}",
                    self.text
                );
                inner
            }
            Token::Word(field) => {
                let Token::Op(op) = self.next() else {
                    panic!("{field} is not followed by an operator in {}", self.text)
                };
                let value = match self.next() {
                    Token::Quoted(v) | Token::Word(v) => v,
                    other => panic!(
                        "{field}: expected a value, found {other:?} in {}",
                        self.text
                    ),
                };
                Filter::Compare { field, op, value }
            }
            other => panic!("unexpected {other:?} in {}", self.text),
        }
    }
}

/// Parses `text`; panics on anything outside the subset.
pub fn parse(text: &str) -> Filter {
    let mut parser = Parser {
        tokens: tokens(text),
        at: 0,
        text: text.to_string(),
    };
    let filter = parser.or();
    assert!(parser.peek().is_none(), "trailing text in {text}");
    filter
}

const SEVERITIES: [&str; 9] = [
    "DEFAULT",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "ALERT",
    "EMERGENCY",
];

fn field<'a>(entry: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(entry, |value, key| value.get(key))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Filter {
    /// Whether the log entry (`resource`, `severity`, `jsonPayload`...)
    /// matches.
    pub fn matches(&self, entry: &Value) -> bool {
        match self {
            Filter::And(terms) => terms.iter().all(|t| t.matches(entry)),
            Filter::Or(terms) => terms.iter().any(|t| t.matches(entry)),
            Filter::Not(inner) => !inner.matches(entry),
            Filter::Compare {
                field: name,
                op,
                value,
            } => {
                let Some(found) = field(entry, name).filter(|v| !v.is_null()) else {
                    return *op == Op::Ne;
                };
                let found = text(found);
                match op {
                    Op::Eq => found == *value,
                    Op::Ne => found != *value,
                    Op::Has => found.to_lowercase().contains(&value.to_lowercase()),
                    Op::Ge | Op::Le | Op::Gt | Op::Lt => {
                        assert_eq!(name, "severity", "ordering is only supported on severity");
                        let rank = |s: &str| {
                            SEVERITIES
                                .iter()
                                .position(|l| l.eq_ignore_ascii_case(s))
                                .unwrap_or_else(|| panic!("unknown severity {s}"))
                        };
                        let (a, b) = (rank(&found), rank(value));
                        match op {
                            Op::Ge => a >= b,
                            Op::Le => a <= b,
                            Op::Gt => a > b,
                            _ => a < b,
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_filter_subset_reads_as_logging_does() {
    let entry = serde_json::json!({
        "resource": {"type": "cloud_run_job", "labels": {"job_name": "dev-janitor"}},
        "severity": "WARNING",
        "jsonPayload": {"event": "job_transition", "to": "failed", "code": "rate_limited"},
    });
    let check = |filter: &str, expected: bool| {
        assert_eq!(parse(filter).matches(&entry), expected, "{filter}");
    };
    check(r#"resource.type="cloud_run_job""#, true);
    check(
        r#"resource.type="cloud_run_revision" OR jsonPayload.to="failed""#,
        true,
    );
    check(
        r#"(resource.type="cloud_run_revision") AND jsonPayload.to="failed""#,
        false,
    );
    check(
        r#"jsonPayload.event="job_transition" jsonPayload.to="failed""#,
        true,
    );
    check(r#"NOT jsonPayload.to="failed""#, false);
    check(r#"jsonPayload.to!="failed""#, false);
    check(r#"jsonPayload.missing!="x""#, true);
    check(r#"jsonPayload.missing="x""#, false);
    check(r#"jsonPayload.code:"LIMIT""#, true);
    check("severity>=WARNING", true);
    check("severity>ERROR", false);
    check(r#"resource.labels.job_name="janitor""#, false);
}
