//! The domain: jobs, downloads, their state machines and input validation.
//! Nothing here knows about a database, HTTP or Google.

pub mod destination;
pub mod download;
pub mod gs_uri;
pub mod invalid;
pub mod job;
pub mod paths;
pub mod review;
pub mod tenant;
pub mod validate;
pub mod values;
pub mod webhook;
pub mod webhook_delivery;

#[cfg(test)]
mod review_tests;
#[cfg(test)]
mod tests;

use std::time::Duration;

/// A worker's hold on a job or download: who, and for how long from now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// A name unique to the worker (instance id, task index, process id...).
    pub owner: String,
    /// How long the hold lasts unless extended.
    pub ttl: Duration,
}

impl Lease {
    /// A lease for `owner` lasting `ttl`.
    pub fn new(owner: impl Into<String>, ttl: Duration) -> Self {
        Self {
            owner: owner.into(),
            ttl,
        }
    }
}

/// A transition that the state machine refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The current status does not allow the action.
    #[error("cannot {action} a {status} {kind}")]
    NotAllowed {
        /// What was attempted ("cancel", "complete"...).
        action: &'static str,
        /// The status it is in.
        status: &'static str,
        /// `job` or `download`.
        kind: &'static str,
    },
    /// Someone else holds the lease (or none does).
    #[error("the lease is held by {}, not {owner}", holder.as_deref().unwrap_or("nobody"))]
    NotLeaseOwner {
        /// Who asked.
        owner: String,
        /// Who holds it.
        holder: Option<String>,
    },
    /// The lease has not run out yet.
    #[error("the lease held by {} has not expired", holder.as_deref().unwrap_or("nobody"))]
    LeaseActive {
        /// Who holds it.
        holder: Option<String>,
    },
    /// The safety filters stopped this job; sending it again would be refused
    /// the same way and may be billed.
    #[error("the model's safety filters stopped this job; retrying it needs --include-filtered")]
    Filtered,
    /// The job's last paid request went out and its outcome is unknown: it
    /// may have been billed, so sending it again needs the operator's word.
    #[error(
        "this job's last paid request may have been billed (its outcome is unknown); retrying it pays again and needs --resubmit"
    )]
    OutcomeUnknown,
    /// The review loop refused: only a completed or delivered image is
    /// reviewed or has videos made from it. The text names the job.
    #[error("{0}")]
    ReviewLoop(String),
    /// The stored image does not give the grounds a promotion needs (not
    /// approved, say). The text names the job.
    #[error("{0}")]
    NoGrounds(String),
}

/// The result of a state-machine method.
pub type Transition = Result<(), TransitionError>;
