//! Pub/Sub push deliveries, decoded once at the edge.
//!
//! A push subscription POSTs `{"message": {"data": base64, "attributes",
//! "messageId", "publishTime"}, "subscription", "deliveryAttempt"}`. Domain
//! code never sees base64 or the envelope: it gets a [`PushedMessage`].

use crate::redact::json_error;
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Envelope {
    message: Message,
    #[serde(default)]
    subscription: Option<String>,
    #[serde(default, rename = "deliveryAttempt")]
    delivery_attempt: Option<u32>,
}

// Pub/Sub sends both spellings of the id and the time (`messageId` and
// `message_id`), so they are separate fields, not serde aliases.
#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
    #[serde(default, rename = "message_id")]
    message_id_snake: Option<String>,
    #[serde(default, rename = "publishTime")]
    publish_time: Option<String>,
    #[serde(default, rename = "publish_time")]
    publish_time_snake: Option<String>,
}

/// One decoded push delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedMessage {
    /// Pub/Sub's id of the message (the same on every redelivery).
    pub message_id: String,
    /// Message attributes.
    pub attributes: BTreeMap<String, String>,
    /// The decoded payload.
    pub data: Vec<u8>,
    /// The subscription that pushed it.
    pub subscription: Option<String>,
    /// 1 on the first delivery, when the subscription has a dead-letter policy.
    pub delivery_attempt: Option<u32>,
    /// When it was published (RFC 3339).
    pub publish_time: Option<String>,
}

/// Why a push body is not a delivery. It is poison: acknowledging it is
/// the only way to stop Pub/Sub from sending it again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Poison(pub String);

/// Decodes a push request body.
pub fn decode(body: &[u8]) -> Result<PushedMessage, Poison> {
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| Poison(format!("not a Pub/Sub push envelope: {}", json_error(&e))))?;
    let message = envelope.message;
    let message_id = message
        .message_id
        .or(message.message_id_snake)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Poison("the envelope has no message.messageId".into()))?;
    let data = match message.data.as_deref() {
        None | Some("") => Vec::new(),
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| Poison(format!("message.data is not base64: {e}")))?,
    };
    Ok(PushedMessage {
        message_id,
        attributes: message.attributes,
        data,
        subscription: envelope.subscription,
        delivery_attempt: envelope.delivery_attempt,
        publish_time: message.publish_time.or(message.publish_time_snake),
    })
}

/// A job message on `asmr-image-jobs` / `asmr-video-jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct JobMessage {
    /// The job to work on.
    pub job_id: String,
}

impl JobMessage {
    /// Reads the job message carried by a delivery.
    pub fn from_delivery(delivery: &PushedMessage) -> Result<Self, Poison> {
        let message: JobMessage = serde_json::from_slice(&delivery.data).map_err(|e| {
            Poison(format!(
                "not a job message {{\"job_id\": \"...\"}}: {}",
                json_error(&e)
            ))
        })?;
        if !crate::domain::job::Job::is_plausible_id(&message.job_id) {
            return Err(Poison(format!(
                "{:?} is not a job id",
                crate::redact::clipped(&message.job_id)
            )));
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/pubsub/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_real_push_envelope_decodes() {
        let delivery = decode(&fixture("push-job-message.json")).unwrap();
        assert_eq!(delivery.message_id, "2070443601311540");
        assert_eq!(
            delivery.subscription.as_deref(),
            Some("projects/asmr-prod/subscriptions/asmr-image-jobs-push")
        );
        assert_eq!(delivery.delivery_attempt, Some(1));
        assert_eq!(
            delivery.attributes.get("origin").map(String::as_str),
            Some("intake")
        );
        let message = JobMessage::from_delivery(&delivery).unwrap();
        assert_eq!(message.job_id, "5f0c2b7e9d1a4c3e8b6f0a1d2c3e4f50");
    }

    #[test]
    fn the_emulator_envelope_without_delivery_attempt_decodes() {
        let delivery = decode(&fixture("push-emulator.json")).unwrap();
        assert_eq!(delivery.delivery_attempt, None);
        assert_eq!(
            JobMessage::from_delivery(&delivery).unwrap().job_id,
            "abc123"
        );
    }

    fn check(body: &str, expected: &str) {
        let got = decode(body.as_bytes()).and_then(|d| JobMessage::from_delivery(&d).map(|_| ()));
        match got {
            Err(Poison(message)) => assert!(message.contains(expected), "{body}: {message}"),
            Ok(()) => panic!("{body} should be poison"),
        }
    }

    #[test]
    fn poison_bodies_say_what_is_wrong() {
        check("", "not a Pub/Sub push envelope");
        check("[]", "not a Pub/Sub push envelope");
        check(r#"{"message": {}}"#, "no message.messageId");
        check(
            r#"{"message": {"messageId": "1", "data": "%%%"}}"#,
            "message.data is not base64",
        );
        check(r#"{"message": {"messageId": "1"}}"#, "not a job message");
        check(
            r#"{"message": {"messageId": "1", "data": "bm90IGpzb24="}}"#,
            "not a job message",
        );
        // {"job_id": ""} and {"job_id": "a/b"}
        check(
            r#"{"message": {"messageId": "1", "data": "eyJqb2JfaWQiOiAiIn0="}}"#,
            "is not a job id",
        );
        check(
            r#"{"message": {"messageId": "1", "data": "eyJqb2JfaWQiOiAiYS9iIn0="}}"#,
            "is not a job id",
        );
    }
}
