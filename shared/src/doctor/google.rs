//! The REST calls of `asmr doctor`: JSON over HTTPS with a token of the
//! caller, every listing followed through its `nextPageToken`.
//!
//! A token goes with every call when one was given (VERTEX_ACCESS_TOKEN);
//! otherwise Application Default Credentials supply one for `https://`
//! endpoints only: an `http://` endpoint is an emulator or a test's fake,
//! which asks for none, so a machine without credentials can check them.

use crate::redact::Secret;
use crate::vertex::client::CLOUD_PLATFORM_SCOPE;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Why a call gave no JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// Google answered with an error status.
    Status {
        /// The HTTP status.
        status: u16,
        /// `error.message` of Google's envelope, or the start of the body.
        message: String,
    },
    /// No credentials, or no token from them.
    Credentials(String),
    /// The request did not get an answer (connection, time-out).
    Transport(String),
    /// The answer is not the JSON expected.
    Body(String),
}

impl CallError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Status { status, message } => write!(f, "HTTP {status}: {message}"),
            CallError::Credentials(e) => write!(f, "no credentials: {e}"),
            CallError::Transport(e) => write!(f, "no answer: {e}"),
            CallError::Body(e) => write!(f, "an answer that is not the expected JSON: {e}"),
        }
    }
}

/// The fix of a call that failed for want of credentials or an answer,
/// whatever it asked.
pub fn generic_fix(error: &CallError) -> String {
    match error {
        CallError::Credentials(_) => {
            "gcloud auth application-default login (or set VERTEX_ACCESS_TOKEN to a token, e.g. $(gcloud auth print-access-token))".into()
        }
        CallError::Status { status: 401, .. } => {
            "gcloud auth application-default login: the token was refused".into()
        }
        CallError::Status { status: 403, .. } => {
            "see the `caller` line: you need roles/viewer on the project (and the API enabled)".into()
        }
        _ => "check the network and the endpoint, then run asmr doctor again (--timeout waits longer)".into(),
    }
}

enum Auth {
    Static(String),
    Adc(OnceCell<Result<Arc<dyn gcp_auth::TokenProvider>, String>>),
}

/// An HTTP client for Google's REST APIs.
pub struct Google {
    http: reqwest::Client,
    auth: Auth,
}

impl Google {
    /// A client whose every request gives up after `timeout`.
    pub fn new(token: Option<&Secret>, timeout: Duration) -> Result<Self, CallError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("asmr-doctor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let auth = match token.map(|t| t.expose().trim()) {
            Some(token) if !token.is_empty() => Auth::Static(token.to_string()),
            _ => Auth::Adc(OnceCell::new()),
        };
        Ok(Self { http, auth })
    }

    /// The token for `url`: the static one, Application Default
    /// Credentials' for an `https://` URL, none for another.
    pub async fn token_for(&self, url: &str) -> Result<Option<String>, CallError> {
        let cell = match &self.auth {
            Auth::Static(token) => return Ok(Some(token.clone())),
            Auth::Adc(_) if !url.starts_with("https://") => return Ok(None),
            Auth::Adc(cell) => cell,
        };
        // Looked for once, found or not: the checks run at once, and each
        // looking again would take the time of the search again.
        let provider = cell
            .get_or_init(|| async { gcp_auth::provider().await.map_err(|e| e.to_string()) })
            .await
            .as_ref()
            .map_err(|e| CallError::Credentials(e.clone()))?;
        let token = provider
            .token(&[CLOUD_PLATFORM_SCOPE])
            .await
            .map_err(|e| CallError::Credentials(e.to_string()))?;
        Ok(Some(token.as_str().to_string()))
    }

    /// `GET url`, as JSON.
    pub async fn get(&self, url: &str) -> Result<Value, CallError> {
        self.send(self.http.get(url), url).await
    }

    /// `POST url` with a JSON body, as JSON.
    pub async fn post(&self, url: &str, body: &Value) -> Result<Value, CallError> {
        self.send(self.http.post(url).json(body), url).await
    }

    /// Every item of a listing: `GET url` (which may carry a query
    /// already), then again with each `nextPageToken`, the items of each
    /// page under `field`.
    pub async fn list(&self, url: &str, field: &str) -> Result<Vec<Value>, CallError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        // A server that hands out tokens for ever is cut off.
        for _ in 0..100 {
            let page_url = match &token {
                None => url.to_string(),
                Some(token) => {
                    let join = if url.contains('?') { '&' } else { '?' };
                    format!("{url}{join}pageToken={}", encode(token))
                }
            };
            let page = self.get(&page_url).await?;
            if let Some(found) = page[field].as_array() {
                items.extend(found.iter().cloned());
            }
            match page["nextPageToken"].as_str() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => return Ok(items),
            }
        }
        Err(CallError::Body(format!(
            "{url} still had pages after 100 of them"
        )))
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: &str) -> Result<Value, CallError> {
        let request = match self.token_for(url).await? {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
        if !(200..300).contains(&status) {
            return Err(CallError::Status {
                status,
                message: google_message(&bytes),
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(serde_json::Map::new()));
        }
        serde_json::from_slice(&bytes).map_err(|e| CallError::Body(format!("{url}: {e}")))
    }
}

/// `error.message` of Google's error envelope, or the start of the body.
fn google_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v["error"]["message"].as_str()) {
        Some(message) => message.to_string(),
        None => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

/// A page token as a query value.
fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// An error and its causes on one line (reqwest keeps "connection
/// refused" in a cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(e.source(), |cause| cause.source())
        .map(ToString::to_string)
        .fold(e.to_string(), |text, cause| match text.contains(&cause) {
            true => text,
            false => format!("{text}: {cause}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn googles_error_message_is_read_from_its_envelope() {
        let body = br#"{"error": {"code": 403, "message": "Permission denied on resource project p.", "status": "PERMISSION_DENIED"}}"#;
        assert_eq!(
            google_message(body),
            "Permission denied on resource project p."
        );
        assert_eq!(google_message(b"Not Found"), "Not Found");
    }

    #[tokio::test]
    async fn only_https_endpoints_get_credentials_of_their_own() {
        let google = Google::new(None, Duration::from_secs(1)).unwrap();
        assert_eq!(google.token_for("http://127.0.0.1:1/v1").await, Ok(None));
        let token = Secret::from("t".to_string());
        let google = Google::new(Some(&token), Duration::from_secs(1)).unwrap();
        assert_eq!(
            google.token_for("http://127.0.0.1:1/v1").await,
            Ok(Some("t".into()))
        );
    }
}
