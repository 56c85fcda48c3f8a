//! Settling a model call: its cost (spent, or released when Google
//! provably did not generate) and what its error does to the job.

use crate::ack::Handled;
use crate::cost::format_usd;
use crate::domain::Lease;
use crate::domain::job::Job;
use crate::domain::values::JobError;
use crate::error::Error;
use crate::stage::{report_misconfiguration, with_store_retries};
use crate::store::Store;
use crate::store::budget::{Billed, OverBudget};
use crate::vertex::{ErrorClass, ModelError};

/// What Google bills for a call that failed with `e`: nothing when it
/// provably did not generate (it answered with a refusal, 429 or 5xx, or the
/// request never left), all of it otherwise (an answer that came back
/// unreadable, a time-out or a broken connection after sending, a 504 from a
/// gateway that may have let the request through).
pub fn billed_for(e: &ModelError) -> Billed {
    match (e.class, e.http_status) {
        (ErrorClass::Unknown, _) => Billed::All,
        (_, Some(504)) => Billed::All,
        (_, Some(status)) if (200..300).contains(&status) => Billed::All,
        (_, Some(_)) => Billed::Nothing,
        (_, None) => match e.code.as_str() {
            // Connection refused, no credentials, a request that could not
            // be built: nothing reached Vertex.
            "unavailable" | "unauthenticated" | "auth_unavailable" | "invalid_argument" => {
                Billed::Nothing
            }
            _ => Billed::All,
        },
    }
}

/// Settles the reservation of `job` (if it holds one) after its paid call.
/// A settlement that cannot be written leaves the reservation in place,
/// which keeps counting against the budget: too careful, never too lax.
pub(crate) async fn settle_cost(store: &Store, job: &Job, owner: Option<&str>, billed: Billed) {
    if job.reservation().is_none() {
        return;
    }
    match with_store_retries(|| store.settle_reservation(job.id(), owner, billed)).await {
        Ok(Some(settled)) => tracing::info!(
            job_id = %job.id(),
            day = %settled.reservation.day,
            reserved = %format_usd(settled.reservation.micros),
            spent = %format_usd(settled.spent_micros),
            event = "cost_settled",
            "reservation settled"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(
            job_id = %job.id(),
            error = %e,
            "could not settle the reservation; it stays counted against the budget"
        ),
    }
}

pub(crate) fn describe_over_budget(over: &OverBudget) -> String {
    let whose = match &over.tenant {
        Some(tenant) => format!("tenant {tenant}'s own budget of "),
        None => String::new(),
    };
    format!(
        "job {} waits for budget: it needs {}, and {} of {whose}today's {} ({} UTC) is committed",
        over.job.id(),
        format_usd(over.needed_micros),
        format_usd(over.committed_micros),
        format_usd(over.limit_micros),
        over.day
    )
}

/// A model error as the job's error record: the code once, then what
/// happened.
fn job_error(e: &ModelError) -> JobError {
    let message = match e.http_status {
        Some(status) => format!("HTTP {status}: {}", e.message),
        None => e.message.clone(),
    };
    JobError::new(
        e.code.clone(),
        message,
        e.class != ErrorClass::Permanent && e.class != ErrorClass::Unknown,
    )
}

/// Settles a job after a model error, by whose fault it is: a refusal fails
/// it; an unknown outcome is never sent again (a video waits for its
/// output, an image fails with the cost booked); a spent quota or a
/// misconfiguration puts it back to wait without using up an attempt; other
/// transient trouble gives it back with the attempt counted.
pub(crate) async fn answer_model_error(
    store: &Store,
    job: &Job,
    lease: &Lease,
    e: &ModelError,
) -> Handled {
    use crate::domain::values::{MISCONFIGURED, QUOTA_EXHAUSTED};
    let error = job_error(e);
    let owner = lease.owner.as_str();
    let (written, handled) = match e.class {
        ErrorClass::Permanent => {
            tracing::warn!(job_id = %job.id(), error = %e, event = "job_failed", "the model refused the job");
            let written =
                with_store_retries(|| store.fail_job(job.id(), Some(owner), error.clone())).await;
            (written, Handled::Done(format!("failed: {e}")))
        }
        ErrorClass::Unknown => {
            tracing::warn!(job_id = %job.id(), kind = %job.kind(), error = %e, "a paid request's outcome is unknown; it is not sent again");
            let written =
                with_store_retries(|| store.outcome_unknown(job.id(), owner, &e.message)).await;
            let detail = match &written {
                Ok(after) => after
                    .error()
                    .as_ref()
                    .map_or_else(|| e.to_string(), |error| error.message.clone()),
                Err(_) => e.to_string(),
            };
            (written, Handled::Done(detail))
        }
        ErrorClass::Misconfigured => {
            report_misconfiguration("Vertex AI refuses this stage's requests", e);
            let written = with_store_retries(|| {
                store.wait_job(job.id(), owner, MISCONFIGURED, error.clone())
            })
            .await;
            (
                written,
                Handled::Retry {
                    rate_limited: false,
                    reason: e.to_string(),
                },
            )
        }
        ErrorClass::Transient if e.code == "rate_limited" => {
            tracing::info!(job_id = %job.id(), error = %e, "the model's quota is spent; the job waits without using an attempt");
            let written = with_store_retries(|| {
                store.wait_job(job.id(), owner, QUOTA_EXHAUSTED, error.clone())
            })
            .await;
            (
                written,
                Handled::Retry {
                    rate_limited: true,
                    reason: e.to_string(),
                },
            )
        }
        ErrorClass::Transient => {
            tracing::warn!(job_id = %job.id(), error = %e, "model trouble; the job goes back to the queue");
            let written =
                with_store_retries(|| store.release_job(job.id(), owner, Some(error.clone())))
                    .await;
            (
                written,
                Handled::Retry {
                    rate_limited: false,
                    reason: e.to_string(),
                },
            )
        }
    };
    match written {
        Ok(_) => handled,
        Err(e) => moved_on_or_retry(&e),
    }
}

/// A write after the work failed: either someone else settled the job (a
/// refused transition: acknowledge) or the store is in trouble (retry).
pub(crate) fn moved_on_or_retry(e: &Error) -> Handled {
    match e {
        Error::Transition { .. } | Error::NotFound { .. } => Handled::Duplicate(e.to_string()),
        _ => Handled::store_trouble(e),
    }
}
