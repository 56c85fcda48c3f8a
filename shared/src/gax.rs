//! The errors of Google's Rust clients (`google_cloud_gax::error::Error`,
//! which the Pub/Sub and Cloud Storage crates both return), classified once
//! for both adapters.

use google_cloud_gax::error::Error;

/// Whether an HTTP status is worth trying again: a timeout, a rate limit,
/// or a server error.
pub(crate) fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// Whether a failed call is worth trying again. By the HTTP status when the
/// service answered over HTTP; by the gRPC code when over gRPC (the codes
/// Google's client libraries retry for idempotent calls: `UNAVAILABLE`,
/// `RESOURCE_EXHAUSTED`, `INTERNAL`, `DEADLINE_EXCEEDED`, `ABORTED`); a
/// credentials error when its source says it is transient (a metadata
/// server that did not answer, not a refused key); and any timeout, I/O,
/// connection or transport failure, or a retry policy that gave up on one.
pub(crate) fn transient(e: &Error) -> bool {
    if let Some(status) = e.http_status_code() {
        return retryable_status(status);
    }
    if let Some(status) = e.status() {
        return matches!(
            status.code.name(),
            "UNAVAILABLE" | "RESOURCE_EXHAUSTED" | "INTERNAL" | "DEADLINE_EXCEEDED" | "ABORTED"
        );
    }
    if e.is_authentication() {
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            if let Some(c) = cause.downcast_ref::<google_cloud_auth::errors::CredentialsError>() {
                return c.is_transient();
            }
            source = cause.source();
        }
        return false;
    }
    e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() || e.is_exhausted()
}
