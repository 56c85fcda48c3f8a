//! What may reach the logs. Prompts and request bodies are the callers'
//! own, and the logs are read by everyone who operates the deployment and
//! kept for weeks: a decoding error is logged by its class and position,
//! and anything else quoted from a request is cut short. A credential
//! never prints at all ([`Secret`]).

use std::fmt;

/// The longest piece of a caller's text a log line quotes, in characters.
pub const MAX_QUOTED_CHARS: usize = 80;
/// The longest outcome text a log line carries, in characters.
pub const MAX_LOGGED_CHARS: usize = 500;

/// What a JSON decoding error says without the text it quotes: its class
/// and position (`syntax error at line 1 column 12`). serde's own message
/// names the offending value, which may be a prompt.
pub fn json_error(e: &serde_json::Error) -> String {
    let class = match e.classify() {
        serde_json::error::Category::Io => "read",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Eof => "end-of-input",
    };
    format!("{class} error at line {} column {}", e.line(), e.column())
}

/// `text` cut to `max` characters, with `…` where it was cut.
pub fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// A caller's value as a log line may quote it: [`MAX_QUOTED_CHARS`] at
/// most.
pub fn clipped(text: &str) -> String {
    truncated(text, MAX_QUOTED_CHARS)
}

/// A credential (a bearer token): its `Debug` says only that it is there,
/// and it has no `Display`, so no log line, `--help` or error can print it;
/// [`Secret::expose`] is the one way to its text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The credential's text, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.to_string())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_error_names_its_class_and_place_but_not_the_text() {
        let secret = "a prompt nobody else should read";
        let e = serde_json::from_str::<u32>(&format!("\"{secret}\"")).unwrap_err();
        assert!(e.to_string().contains(secret), "serde quotes it: {e}");
        let said = json_error(&e);
        assert_eq!(said, "data error at line 1 column 34");
        let e = serde_json::from_str::<serde_json::Value>("{\"prompt\": ").unwrap_err();
        assert_eq!(json_error(&e), "end-of-input error at line 1 column 11");
    }

    #[test]
    fn a_secret_never_prints() {
        let token = Secret::from("ya29.a-real-looking-token");
        let wrapped = Some(token.clone());
        assert_eq!(format!("{token:?}"), "Secret(<redacted>)");
        assert!(!format!("{wrapped:#?}").contains("ya29"));
        assert_eq!(token.expose(), "ya29.a-real-looking-token");
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        assert_eq!(truncated("short", 10), "short");
        assert_eq!(truncated("ééééé", 3), "ééé…");
        assert_eq!(
            clipped(&"x".repeat(200)).chars().count(),
            MAX_QUOTED_CHARS + 1
        );
    }
}
