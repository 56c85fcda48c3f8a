//! The one place that decides what a failed Vertex AI call means.
//!
//! Every way an HTTP attempt can fail is first described as a [`Failure`]
//! (no decisions there), then [`classify`] turns it into a [`ModelError`]
//! whose class the caller acts on: retry a transient error, give up on a
//! permanent one, and never repeat a paid submit whose outcome is unknown.
//! Keeping the decision in one function keeps the money rule (never pay twice) in
//! one place: only a request that provably never reached Vertex, or one that
//! Vertex refused with a retryable status, may be sent again.

use super::retry::{parse_proto_duration, parse_retry_after};
use super::wire::ErrorEnvelope;
use super::{ErrorClass, ModelError};
use bytes::Bytes;
use std::time::{Duration, SystemTime};

/// How to fix missing or rejected credentials, said with the error.
pub(crate) const FIX_CREDENTIALS: &str = "on a workstation run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS, or VERTEX_ACCESS_TOKEN); on Cloud Run check the stage's service account";
/// How to fix a refused permission, said with the error.
pub(crate) const FIX_PERMISSION: &str = "grant the stage's service account (or your account) roles/aiplatform.user on the project, and check that the Vertex AI API (aiplatform.googleapis.com) is enabled";

/// How much of a non-Google error body an error message keeps.
pub(crate) const MAX_ERROR_BODY_CHARS: usize = 2048;

/// What a lost or late answer means for this call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// Polls: repeating one costs nothing, so a lost answer is retried.
    Free,
    /// A billed request (an image, a Veo submit): a lost answer may hide a
    /// generated (and billed) result, so it is never repeated.
    Paid,
}

/// How one HTTP attempt failed, as observed, before any decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No access token: `missing` when no credentials exist at all.
    Credentials {
        /// Whether Application Default Credentials are absent (not a hiccup).
        missing: bool,
        /// What the token source said.
        detail: String,
    },
    /// The connection could not be opened, so the request never left.
    Connect(String),
    /// No complete answer within the request timeout; the request may have
    /// been sent.
    Timeout(String),
    /// The connection broke after the request may have been sent.
    Lost(String),
    /// Vertex answered with a non-success status.
    Status {
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` header, raw.
        retry_after: Option<String>,
        /// The start of the body.
        body: Bytes,
    },
    /// A success status whose body is not what the call expects (or too big).
    BadBody {
        /// The HTTP status.
        status: u16,
        /// What is wrong with it.
        detail: String,
    },
}

/// A classified failure and how long the server asked us to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Classified {
    /// The error, ready for the job record.
    pub error: ModelError,
    /// From `Retry-After` or `google.rpc.RetryInfo`, uncapped.
    pub retry_after: Option<Duration>,
}

fn error(class: ErrorClass, code: &str, message: String, http_status: Option<u16>) -> ModelError {
    ModelError {
        class,
        code: code.to_string(),
        message,
        http_status,
    }
}

/// Decides what a failure means. `now` dates an HTTP-date `Retry-After`.
pub(crate) fn classify(failure: Failure, kind: CallKind, now: SystemTime) -> Classified {
    use ErrorClass::{Misconfigured, Transient, Unknown};
    let plain = |error| Classified {
        error,
        retry_after: None,
    };
    let paid = kind == CallKind::Paid;
    match failure {
        Failure::Credentials {
            missing: true,
            detail,
        } => plain(error(
            Misconfigured,
            "unauthenticated",
            format!("no Google credentials were found for Vertex AI ({detail}); {FIX_CREDENTIALS}"),
            None,
        )),
        Failure::Credentials {
            missing: false,
            detail,
        } => plain(error(
            Transient,
            "auth_unavailable",
            format!("could not get an access token for Vertex AI: {detail}"),
            None,
        )),
        Failure::Connect(detail) => plain(error(
            Transient,
            "unavailable",
            format!("could not connect to Vertex AI: {detail}"),
            None,
        )),
        Failure::Timeout(detail) if paid => plain(error(
            Unknown,
            "submit_unknown",
            format!(
                "the paid request got no answer within the request timeout, so the model may have generated (and billed) it: {detail}"
            ),
            None,
        )),
        Failure::Lost(detail) if paid => plain(error(
            Unknown,
            "submit_unknown",
            format!(
                "the connection broke after the paid request was sent, so the model may have generated (and billed) it: {detail}"
            ),
            None,
        )),
        Failure::Timeout(detail) => plain(error(
            Transient,
            "timeout",
            format!("Vertex AI did not answer within the request timeout: {detail}"),
            None,
        )),
        Failure::Lost(detail) => plain(error(
            Transient,
            "connection_lost",
            format!("the connection to Vertex AI broke before the answer arrived: {detail}"),
            None,
        )),
        Failure::BadBody { status, detail } if paid => plain(error(
            Unknown,
            "submit_unknown",
            format!(
                "Vertex AI accepted the paid request but its answer is unreadable, so it may have been generated (and billed): {detail}"
            ),
            Some(status),
        )),
        Failure::BadBody { status, detail } => plain(error(
            ErrorClass::Permanent,
            "bad_response",
            format!("Vertex AI answered with an unexpected body: {detail}"),
            Some(status),
        )),
        Failure::Status {
            status,
            retry_after,
            body,
        } => classify_status(status, retry_after.as_deref(), &body, kind, now),
    }
}

fn classify_status(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    kind: CallKind,
    now: SystemTime,
) -> Classified {
    use ErrorClass::{Misconfigured, Permanent, Transient, Unknown};
    let envelope = serde_json::from_slice::<ErrorEnvelope>(body).ok();
    let google_status = envelope
        .as_ref()
        .and_then(|e| e.error.status.clone())
        .unwrap_or_default();
    let message = match &envelope {
        Some(e) if !e.error.message.is_empty() => e.error.message.clone(),
        _ => raw_body_message(body),
    };
    let (class, code) = match (status, google_status.as_str()) {
        (429, _) | (_, "RESOURCE_EXHAUSTED") => (Transient, "rate_limited"),
        // A gateway that gave up waiting may have let a paid request through.
        (504, _) | (_, "DEADLINE_EXCEEDED") if kind == CallKind::Paid => {
            (Unknown, "submit_unknown")
        }
        (500..=599, _) => (Transient, "unavailable"),
        (408, _) => (Transient, "timeout"),
        (409, "ABORTED") => (Transient, "aborted"),
        (401, _) => (Misconfigured, "unauthenticated"),
        (403, _) => (Misconfigured, "permission_denied"),
        (404, _) => (Permanent, "not_found"),
        (400, "FAILED_PRECONDITION") => (Permanent, "failed_precondition"),
        (400, _) => (Permanent, "invalid_argument"),
        (409, _) => (Permanent, "conflict"),
        _ => (Permanent, "unexpected_status"),
    };
    let retry_after = retry_after
        .and_then(|value| parse_retry_after(value, now))
        .or_else(|| envelope.as_ref().and_then(retry_info));
    let message = match (class, code) {
        (Unknown, _) => format!("the paid request may have been generated (and billed): {message}"),
        (Misconfigured, "unauthenticated") => format!("{message}; {FIX_CREDENTIALS}"),
        (Misconfigured, _) => format!("{message}; {FIX_PERMISSION}"),
        _ => message,
    };
    Classified {
        error: error(class, code, message, Some(status)),
        retry_after,
    }
}

/// `retryDelay` of a `google.rpc.RetryInfo` detail, when Google sent one.
fn retry_info(envelope: &ErrorEnvelope) -> Option<Duration> {
    envelope.error.details.iter().find_map(|detail| {
        let kind = detail.get("@type")?.as_str()?;
        if !kind.ends_with("google.rpc.RetryInfo") {
            return None;
        }
        parse_proto_duration(detail.get("retryDelay")?.as_str()?)
    })
}

/// The body as text, cut to [`MAX_ERROR_BODY_CHARS`] on a character boundary.
fn raw_body_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty error body".to_string();
    }
    match text.char_indices().nth(MAX_ERROR_BODY_CHARS) {
        Some((cut, _)) => format!("{}… (truncated)", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::{Misconfigured, Permanent, Transient, Unknown};

    fn envelope(code: u16, status: &str, message: &str) -> Bytes {
        Bytes::from(
            serde_json::json!({"error": {"code": code, "message": message, "status": status}})
                .to_string(),
        )
    }

    fn status(status: u16, body: Bytes) -> Failure {
        Failure::Status {
            status,
            retry_after: None,
            body,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480)
    }

    /// The class and code a failure should get.
    type Expected = (ErrorClass, &'static str);

    /// Classifies `failure` as both a free call and a paid one and checks
    /// the class and code of each.
    fn check(failure: Failure, free: Expected, paid: Expected) {
        for (kind, (class, code)) in [(CallKind::Free, free), (CallKind::Paid, paid)] {
            let got = classify(failure.clone(), kind, now()).error;
            assert_eq!(
                (got.class, got.code.as_str()),
                (class, code),
                "{failure:?} as {kind:?}: {got}"
            );
        }
    }

    #[test]
    fn every_failure_is_classified_as_documented() {
        let both = |c, code: &'static str| ((c, code), (c, code));
        let cases: Vec<(Failure, (Expected, Expected))> = vec![
            (
                status(429, envelope(429, "RESOURCE_EXHAUSTED", "Quota exceeded")),
                both(Transient, "rate_limited"),
            ),
            (status(429, Bytes::new()), both(Transient, "rate_limited")),
            (
                status(400, envelope(400, "RESOURCE_EXHAUSTED", "odd but seen")),
                both(Transient, "rate_limited"),
            ),
            (
                status(500, envelope(500, "INTERNAL", "Internal error")),
                both(Transient, "unavailable"),
            ),
            (
                status(503, Bytes::from_static(b"<html>Service Unavailable</html>")),
                both(Transient, "unavailable"),
            ),
            (
                status(504, envelope(504, "DEADLINE_EXCEEDED", "Deadline exceeded")),
                ((Transient, "unavailable"), (Unknown, "submit_unknown")),
            ),
            (
                status(400, envelope(400, "INVALID_ARGUMENT", "prompt blocked")),
                both(Permanent, "invalid_argument"),
            ),
            (
                status(
                    400,
                    envelope(400, "FAILED_PRECONDITION", "not allow-listed"),
                ),
                both(Permanent, "failed_precondition"),
            ),
            (
                status(401, envelope(401, "UNAUTHENTICATED", "bad token")),
                both(Misconfigured, "unauthenticated"),
            ),
            (
                status(403, envelope(403, "PERMISSION_DENIED", "no role")),
                both(Misconfigured, "permission_denied"),
            ),
            (
                status(404, envelope(404, "NOT_FOUND", "no such model")),
                both(Permanent, "not_found"),
            ),
            (status(408, Bytes::new()), both(Transient, "timeout")),
            (
                status(409, envelope(409, "ABORTED", "try again")),
                both(Transient, "aborted"),
            ),
            (
                status(409, envelope(409, "ALREADY_EXISTS", "exists")),
                both(Permanent, "conflict"),
            ),
            (
                status(418, Bytes::new()),
                both(Permanent, "unexpected_status"),
            ),
            (
                Failure::Connect("connection refused".into()),
                both(Transient, "unavailable"),
            ),
            (
                Failure::Timeout("timed out".into()),
                ((Transient, "timeout"), (Unknown, "submit_unknown")),
            ),
            (
                Failure::Lost("connection reset".into()),
                ((Transient, "connection_lost"), (Unknown, "submit_unknown")),
            ),
            (
                Failure::BadBody {
                    status: 200,
                    detail: "not JSON".into(),
                },
                ((Permanent, "bad_response"), (Unknown, "submit_unknown")),
            ),
            (
                Failure::Credentials {
                    missing: true,
                    detail: "none".into(),
                },
                both(Misconfigured, "unauthenticated"),
            ),
            (
                Failure::Credentials {
                    missing: false,
                    detail: "metadata server hiccup".into(),
                },
                both(Transient, "auth_unavailable"),
            ),
        ];
        for (failure, (free, paid)) in cases {
            check(failure, free, paid);
        }
    }

    #[test]
    fn invalid_argument_keeps_googles_whole_message() {
        let message = "Image generation failed with the following error: The prompt could not be submitted. This prompt contains sensitive words that violate Google's Responsible AI practices. Try rephrasing the prompt. If you think this was an error, send feedback. Support codes: 61493863";
        let got = classify(
            status(400, envelope(400, "INVALID_ARGUMENT", message)),
            CallKind::Free,
            now(),
        )
        .error;
        assert_eq!(got.message, message);
        assert_eq!(got.http_status, Some(400));
    }

    #[test]
    fn a_body_that_is_not_googles_envelope_is_kept_truncated() {
        let long = "x".repeat(10_000);
        let got = classify(status(502, Bytes::from(long)), CallKind::Free, now()).error;
        assert!(got.message.starts_with("xxx"));
        assert!(got.message.ends_with("… (truncated)"));
        assert!(got.message.chars().count() < MAX_ERROR_BODY_CHARS + 20);
        let got = classify(status(502, Bytes::new()), CallKind::Free, now()).error;
        assert_eq!(got.message, "empty error body");
        // Multi-byte text is cut between characters, not inside one.
        let got = classify(
            status(502, Bytes::from("é".repeat(5000))),
            CallKind::Free,
            now(),
        )
        .error;
        assert!(got.message.starts_with("éé"));
    }

    #[test]
    fn retry_after_comes_from_the_header_or_from_retry_info() {
        let header = Failure::Status {
            status: 429,
            retry_after: Some("7".into()),
            body: Bytes::new(),
        };
        assert_eq!(
            classify(header, CallKind::Free, now()).retry_after,
            Some(Duration::from_secs(7))
        );
        let dated = Failure::Status {
            status: 503,
            retry_after: Some("Wed, 21 Oct 2015 07:28:02 GMT".into()),
            body: Bytes::new(),
        };
        assert_eq!(
            classify(dated, CallKind::Free, now()).retry_after,
            Some(Duration::from_secs(2))
        );
        let body = serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
            "message": "slow down", "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED"},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]}});
        let info = status(429, Bytes::from(body.to_string()));
        assert_eq!(
            classify(info, CallKind::Free, now()).retry_after,
            Some(Duration::from_secs(3))
        );
        let none = status(429, envelope(429, "RESOURCE_EXHAUSTED", "no hint"));
        assert_eq!(classify(none, CallKind::Free, now()).retry_after, None);
    }

    #[test]
    fn an_unknown_paid_outcome_says_it_may_have_been_billed() {
        let got = classify(
            Failure::Timeout("operation timed out".into()),
            CallKind::Paid,
            now(),
        )
        .error;
        assert!(
            got.message.contains("may have generated (and billed)"),
            "{got}"
        );
        let got = classify(
            status(504, envelope(504, "DEADLINE_EXCEEDED", "Deadline")),
            CallKind::Paid,
            now(),
        )
        .error;
        assert!(
            got.message.contains("may have been generated (and billed)"),
            "{got}"
        );
        assert_eq!(got.http_status, Some(504));
    }

    #[test]
    fn a_refused_credential_or_role_says_how_to_fix_it() {
        let check = |failure: Failure, fix: &str| {
            let got = classify(failure, CallKind::Paid, now()).error;
            assert_eq!(got.class, ErrorClass::Misconfigured, "{got}");
            assert!(got.message.contains(fix), "{got}");
        };
        check(
            Failure::Credentials {
                missing: true,
                detail: "none".into(),
            },
            "gcloud auth application-default login",
        );
        check(
            status(401, envelope(401, "UNAUTHENTICATED", "bad token")),
            "gcloud auth application-default login",
        );
        check(
            status(403, envelope(403, "PERMISSION_DENIED", "no role")),
            "roles/aiplatform.user",
        );
    }
}
