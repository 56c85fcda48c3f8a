//! The one error type of `shared`.

use crate::domain::TransitionError;
use crate::domain::invalid::ValidationError;

/// Anything that can go wrong below a stage. Each variant names what failed;
/// [`Error::is_retryable`] says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that can never be accepted (bad prompt, bad parameter).
    #[error("invalid input: {0}")]
    Invalid(ValidationError),
    /// No record with that id.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `job`, `download`, `object` or `bucket`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The state machine refused the change.
    #[error("{}", transition_text(kind, id, reason))]
    Transition {
        /// `job` or `download`.
        kind: &'static str,
        /// The record.
        id: String,
        /// What the state machine said.
        reason: TransitionError,
    },
    /// Other writers kept changing the record; give up for now and retry later.
    #[error("{kind} {id} kept changing under us; try again")]
    Contention {
        /// `job` or `download`.
        kind: &'static str,
        /// The record.
        id: String,
    },
    /// An idempotency key (a request id) came back with another request
    /// than the one it was first used for: a retry sends the same one, so
    /// this is a mistake, and answering with the first request's jobs
    /// would hide it.
    #[error(
        "request id {request_id:?} was used before for a different request; a retry must send the same request, and new work needs a new key"
    )]
    KeyReused {
        /// The key, as far as a message quotes it.
        request_id: String,
    },
    /// A write refused because it would have gone through a link (or into
    /// something that is not a plain file) beneath its root: see
    /// [`crate::beneath`]. Not transient: someone planted it.
    #[error("{0}")]
    UnsafePath(String),
    /// A stored document could not be read back.
    #[error("stored {collection} document {id} is unreadable: {cause}")]
    Corrupt {
        /// Collection name.
        collection: &'static str,
        /// Document id.
        id: String,
        /// The decoding error.
        cause: serde_json::Error,
    },
    /// The object store failed (GCS, fake-gcs-server, the local directory).
    #[error("{context}: {message}")]
    Objects {
        /// What was being done (`writing gs://out/images/j/0.png`).
        context: String,
        /// What the object store said.
        message: String,
        /// Whether trying again can help (5xx, 429, connection trouble).
        retryable: bool,
        /// Refused for want of credentials or a role (401, 403): the
        /// deployment's fault, not the object's.
        denied: bool,
    },
    /// A model call failed (after its in-call retries).
    #[error("model call failed: {0}")]
    Model(crate::vertex::ModelError),
    /// The store itself failed (network, database file, emulator down...).
    #[error("{context}: {message}")]
    Store {
        /// What was being done.
        context: String,
        /// What the store said.
        message: String,
        /// Whether the store marked it as transient.
        retryable: bool,
    },
}

/// `{kind} {id}: {reason}`, or the reason alone when it names the record
/// already (`job 1f2e is a video; ...`).
fn transition_text(kind: &str, id: &str, reason: &TransitionError) -> String {
    let reason = reason.to_string();
    if reason.starts_with(&format!("{kind} {id} ")) {
        reason
    } else {
        format!("{kind} {id}: {reason}")
    }
}

// Every message above already says what its cause said, so no variant
// reports a `source()`: a `{:#}` chain would print each cause twice.
impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Error::Invalid(e)
    }
}

impl From<crate::vertex::ModelError> for Error {
    fn from(e: crate::vertex::ModelError) -> Self {
        Error::Model(e)
    }
}

impl Error {
    /// Whether a later attempt of the same operation can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Contention { .. } => true,
            Error::Store { retryable, .. } | Error::Objects { retryable, .. } => *retryable,
            Error::Model(e) => e.class == crate::vertex::ErrorClass::Transient,
            Error::Invalid(_)
            | Error::KeyReused { .. }
            | Error::UnsafePath(_)
            | Error::NotFound { .. }
            | Error::Transition { .. }
            | Error::Corrupt { .. } => false,
        }
    }

    /// An object store failure while doing `context`.
    pub fn objects(context: impl Into<String>, message: impl ToString, retryable: bool) -> Self {
        Error::Objects {
            context: context.into(),
            message: message.to_string(),
            retryable,
            denied: false,
        }
    }

    /// The object store refused the credentials or the role of this stage.
    pub fn objects_denied(context: impl Into<String>, message: impl ToString) -> Self {
        Error::Objects {
            context: context.into(),
            message: message.to_string(),
            retryable: false,
            denied: true,
        }
    }

    /// Whether the deployment, not the work, is at fault: a missing
    /// credential or role (401, 403) from the object store or the model.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Error::Objects { denied, .. } => *denied,
            Error::Model(e) => e.class == crate::vertex::ErrorClass::Misconfigured,
            _ => false,
        }
    }

    /// A store failure while doing `context`.
    pub fn store(context: impl Into<String>, message: impl ToString, retryable: bool) -> Self {
        Error::Store {
            context: context.into(),
            message: message.to_string(),
            retryable,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
