//! What handling one push came to, and the HTTP status that tells Pub/Sub
//! (or Eventarc) what to do with the message. This is the one place where the
//! acknowledgement policy is written: done, duplicate, ignored and poison are
//! acknowledged (2xx); transient trouble is a 429 or 503 so the message is
//! redelivered with the subscription's back-off.

use crate::error::Error;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What handling one job message (or one drained job) came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The work was done (completed, submitted, or failed for good).
    Done(String),
    /// Nothing to do: already finished, or another worker holds it.
    Duplicate(String),
    /// Not for this stage (another bucket, another event type...).
    Ignored(String),
    /// The message can never be processed; acknowledged so it stops coming.
    Poison(String),
    /// Transient trouble; the job was given back and the message should be
    /// redelivered later.
    Retry {
        /// A model quota (429) rather than an outage (503).
        rate_limited: bool,
        /// What went wrong.
        reason: String,
    },
}

impl Handled {
    /// The HTTP status that tells Pub/Sub what to do.
    pub fn status(&self) -> StatusCode {
        match self {
            Handled::Done(_) | Handled::Duplicate(_) | Handled::Ignored(_) | Handled::Poison(_) => {
                StatusCode::OK
            }
            Handled::Retry {
                rate_limited: true, ..
            } => StatusCode::TOO_MANY_REQUESTS,
            Handled::Retry { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn parts(&self) -> (&'static str, &str) {
        match self {
            Handled::Done(detail) => ("done", detail),
            Handled::Duplicate(detail) => ("duplicate", detail),
            Handled::Ignored(detail) => ("ignored", detail),
            Handled::Poison(detail) => ("poison", detail),
            Handled::Retry { reason, .. } => ("retry", reason),
        }
    }

    /// Logs the outcome, the one line every push endpoint writes for each
    /// message, with a fixed `event` (`push_done`, `push_duplicate`,
    /// `push_ignored`, `push_poison`, `push_retry`) and `outcome`/`detail`
    /// as the answer's body has them; returns it for answering.
    pub fn logged(self) -> Self {
        let (outcome, detail) = self.parts();
        // What a stage says of a message may quote it: cut it short.
        let detail = crate::redact::truncated(detail, crate::redact::MAX_LOGGED_CHARS);
        let detail = detail.as_str();
        match &self {
            Handled::Poison(_) => tracing::error!(
                event = "push_poison",
                outcome,
                detail,
                "poison acknowledged: the message can never be processed"
            ),
            Handled::Retry { rate_limited, .. } => tracing::warn!(
                event = "push_retry",
                outcome,
                detail,
                rate_limited,
                "asking Pub/Sub to redeliver"
            ),
            Handled::Done(_) => tracing::info!(event = "push_done", outcome, detail, "handled"),
            Handled::Duplicate(_) => {
                tracing::info!(event = "push_duplicate", outcome, detail, "handled")
            }
            Handled::Ignored(_) => {
                tracing::info!(event = "push_ignored", outcome, detail, "handled")
            }
        }
        self
    }

    /// A transient store failure.
    pub(crate) fn store_trouble(e: &Error) -> Self {
        Handled::Retry {
            rate_limited: false,
            reason: e.to_string(),
        }
    }
}

impl IntoResponse for Handled {
    fn into_response(self) -> Response {
        let (outcome, detail) = self.parts();
        let body = serde_json::json!({ "outcome": outcome, "detail": detail });
        (self.status(), axum::Json(body)).into_response()
    }
}
