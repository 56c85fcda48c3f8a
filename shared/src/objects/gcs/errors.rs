//! Errors of the Cloud Storage adapter as the port's: answers of the JSON
//! API, failures of the `google-cloud-storage` client and of the transport,
//! refused credentials (with how to fix them), and bad ranges.

use crate::error::Error;
use crate::objects::ReadRange;
use reqwest::StatusCode;
use serde_json::Value;

pub(super) fn not_found(uri: &str) -> Error {
    Error::NotFound {
        kind: "object",
        id: uri.to_string(),
    }
}

pub(super) fn past_the_end(uri: &str, start: u64, size: u64) -> Error {
    Error::objects(
        format!("reading {uri}"),
        format!("the range starts at byte {start}, past the end of the {size}-byte object"),
        false,
    )
}

pub(super) fn backwards(uri: &str, range: ReadRange) -> Error {
    Error::objects(
        format!("reading {uri}"),
        format!(
            "the range ends (byte {}) before it starts (byte {})",
            range.end.unwrap_or_default(),
            range.start
        ),
        false,
    )
}

/// An error answer of the JSON API, with the service's own message.
pub(super) fn status_error(context: &str, status: StatusCode, body: &[u8]) -> Error {
    let said = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(200)
                .collect()
        });
    let message = if said.is_empty() {
        format!("Cloud Storage answered {status}")
    } else {
        format!("Cloud Storage answered {status}: {said}")
    };
    if denied_status(status.as_u16()) {
        return Error::objects_denied(context, format!("{message}; {FIX_STORAGE_ACCESS}"));
    }
    Error::objects(
        context,
        message,
        crate::gax::retryable_status(status.as_u16()),
    )
}

/// How to fix a refused bucket, said with the error.
pub(super) const FIX_STORAGE_ACCESS: &str = "check the credentials of this stage (`gcloud auth application-default login` on a workstation, the service account on Cloud Run) and its role on the bucket (roles/storage.objectUser)";

/// Whether an HTTP status means the credentials or the role are wrong.
pub(super) fn denied_status(status: u16) -> bool {
    status == 401 || status == 403
}

/// A JSON API request that got no (complete) answer: retryable.
pub(super) fn transport_error(context: &str, e: &reqwest::Error) -> Error {
    let mut message = format!("no answer from Cloud Storage ({e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message.push(')');
    Error::objects(context, message, !e.is_builder())
}

/// An error of the `google-cloud-storage` client.
pub(super) fn storage_error(context: &str, e: &google_cloud_storage::Error) -> Error {
    let denied = e.http_status_code().is_some_and(denied_status)
        || e.status().is_some_and(|status| {
            matches!(status.code.name(), "PERMISSION_DENIED" | "UNAUTHENTICATED")
        })
        || (e.is_authentication() && !crate::gax::transient(e));
    if denied {
        return Error::objects_denied(context, format!("{e}; {FIX_STORAGE_ACCESS}"));
    }
    Error::objects(context, e, crate::gax::transient(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_one_sentence_and_classified() {
        let body = br#"{"error":{"code":503,"message":"backend error"}}"#;
        let e = status_error("listing gs://b/x*", StatusCode::SERVICE_UNAVAILABLE, body);
        assert!(e.is_retryable());
        assert_eq!(
            e.to_string(),
            "listing gs://b/x*: Cloud Storage answered 503 Service Unavailable: backend error"
        );
        let e = status_error("deleting gs://b/x", StatusCode::FORBIDDEN, b"");
        assert!(!e.is_retryable());
        assert!(status_error("c", StatusCode::TOO_MANY_REQUESTS, b"").is_retryable());
    }
}
