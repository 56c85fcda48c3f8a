//! Posting to a service as its clients do, and reading what it answered.

use axum::http::{HeaderName, HeaderValue};
use serde_json::Value;

/// What a service answered: its status, and its JSON body (or the body's
/// text as a JSON string when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// `outcome` of a push answer (`done`, `duplicate`, `ignored`, `poison`).
    pub fn outcome(&self) -> &str {
        self.body["outcome"].as_str().unwrap_or("-")
    }
}

/// A client that sends `key` as its tenant's `x-api-key` on every call.
pub fn keyed_client(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", key.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// POSTs `body` to `url` with `headers`, whose values may be any bytes (a
/// hostile client's are).
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(String, Vec<u8>)],
) -> Answer {
    let mut request = http.post(url).body(body);
    for (name, value) in headers {
        request = request.header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    Answer {
        status,
        body: serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
    }
}

/// A Pub/Sub push envelope around `data`, as a push subscription sends it.
pub fn push_envelope(
    message_id: &str,
    data: &[u8],
    attributes: &std::collections::BTreeMap<String, String>,
) -> Vec<u8> {
    use base64::Engine;
    serde_json::json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "attributes": attributes,
            "messageId": message_id,
            "publishTime": "2026-11-28T10:00:00.000Z",
        },
        "subscription": "projects/asmr-test/subscriptions/asmr-requests-intake",
    })
    .to_string()
    .into_bytes()
}
