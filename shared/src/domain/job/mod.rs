//! Jobs: what was asked for, where it stands, and the only ways it may move.
//!
//! Every change of status goes through a method here. The store adapters read a
//! document, call one of these methods, and write the result back with a
//! compare-and-set; they never set a status themselves.

mod new;
mod read;

use super::gs_uri::GsUri;
use super::tenant::TenantName;
use super::values::{
    ATTEMPTS_EXHAUSTED, Chain, DeliveredOutput, FILTERED, FirstFrame, HeldOutput, JobError,
    JobKind, JobParams, JobStatus, OPERATION_FAILED, Reservation, RetryOptions, Review,
    STORAGE_UNAVAILABLE, SUBMIT_UNKNOWN, TIMED_OUT, Verdict,
};
use super::webhook::Webhook;
use super::{Lease, Transition, TransitionError};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A job document (`jobs/{id}`). Each field is described once, on its
/// accessor (`read.rs`); fields without one say here what they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub(in crate::domain) id: String,
    pub(in crate::domain) prompt: String,
    pub(in crate::domain) kind: JobKind,
    #[serde(default)]
    pub(in crate::domain) params: JobParams,
    #[serde(default)]
    pub(in crate::domain) priority: i64,
    pub(in crate::domain) status: JobStatus,
    #[serde(default)]
    pub(in crate::domain) attempts: u32,
    pub(in crate::domain) max_attempts: u32,
    #[serde(default)]
    pub(in crate::domain) lease_owner: Option<String>,
    #[serde(default)]
    pub(in crate::domain) lease_expires_at: Option<Timestamp>,
    #[serde(default)]
    pub(in crate::domain) operation_name: Option<String>,
    #[serde(default)]
    pub(in crate::domain) submitted_at: Option<Timestamp>,
    #[serde(default)]
    pub(in crate::domain) outputs: Vec<GsUri>,
    #[serde(default)]
    pub(in crate::domain) deliveries: Vec<DeliveredOutput>,
    #[serde(default)]
    pub(in crate::domain) error: Option<JobError>,
    #[serde(default)]
    pub(in crate::domain) request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) request_digest: Option<String>,
    #[serde(default)]
    pub(in crate::domain) dry_run: bool,
    pub(in crate::domain) created_at: Timestamp,
    pub(in crate::domain) updated_at: Timestamp,
    #[serde(default)]
    pub(in crate::domain) completed_at: Option<Timestamp>,
    #[serde(default)]
    pub(in crate::domain) expire_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) waiting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) reservation: Option<Reservation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) calling: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::domain) held: Vec<HeldOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) parent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(in crate::domain) children: Vec<String>,
    /// The reviewer's mark on this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) review: Option<Review>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) chain: Option<Chain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) first_frame: Option<FirstFrame>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) model: Option<String>,
    #[serde(default, skip_serializing_if = "TenantName::is_default")]
    pub(in crate::domain) tenant: TenantName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) webhook: Option<Webhook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(in crate::domain) started_at: Option<Timestamp>,
}

#[cfg(test)]
impl Job {
    /// Puts a job in any state, bypassing the transitions: only for unit
    /// tests of code that reads jobs.
    pub(crate) fn force_state(&mut self, status: JobStatus, outputs: Vec<GsUri>) {
        self.status = status;
        self.outputs = outputs;
    }

    /// Sets the error like [`Job::force_state`] sets the status.
    pub(crate) fn force_error(&mut self, error: JobError) {
        self.error = Some(error);
    }
}

/// What it takes to create a job.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// The text sent to the model.
    pub prompt: String,
    /// Image or video.
    pub kind: JobKind,
    /// Model parameters.
    pub params: JobParams,
    /// Higher runs first.
    pub priority: i64,
    /// Idempotency key: the same key twice yields one job.
    pub request_id: Option<String>,
    /// Whose idempotency key `request_id` is: the account that called the
    /// API, so that two callers who pick the same key never share a job.
    /// `None` is the one namespace of every other way in (Pub/Sub, the
    /// CLI, callers a deployment does not identify).
    pub key_scope: Option<String>,
    /// A digest of the whole request this job came from, so that a request
    /// id that comes back with another request is told from a retry.
    pub request_digest: Option<String>,
    /// Whether the generators write placeholders instead of calling the model.
    pub dry_run: bool,
    /// Claims allowed before the job fails.
    pub max_attempts: u32,
    /// The image a video is made from.
    pub parent: Option<String>,
    /// What to make of the job once it is delivered (images only).
    pub chain: Option<Chain>,
    /// The image a video starts from (videos only).
    pub first_frame: Option<FirstFrame>,
    /// Whose job it is.
    pub tenant: TenantName,
    /// Where its events are sent (the request's, else its tenant's
    /// default).
    pub webhook: Option<Webhook>,
}

/// How long finished records are kept before the store may delete them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Failed and cancelled jobs (30 days by default).
    pub failed_jobs: Duration,
    /// Completed downloads (7 days by default).
    pub completed_downloads: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            failed_jobs: Duration::from_secs(30 * 24 * 3600),
            completed_downloads: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why a claim did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// The status does not allow it (already done, cancelled, generating...).
    NotClaimable(&'static str),
    /// Another worker holds a lease that has not run out.
    Leased {
        /// The holder.
        owner: String,
        /// When its lease runs out.
        until: Timestamp,
    },
    /// Every attempt was used; the caller should record the failure.
    Exhausted,
    /// An earlier claim sent a paid request and vanished before recording
    /// its outcome; the caller records that with [`Job::lose_call`]
    /// instead of sending another.
    CallLost {
        /// The claim that made the call.
        owner: String,
    },
}

impl Job {
    /// Whether the job has reached the end of the pipeline: a terminal
    /// status, or completed with nothing to deliver (every output withheld).
    pub fn has_ended(&self) -> bool {
        self.status.is_terminal()
            || (self.status == JobStatus::Completed && self.outputs.is_empty())
    }

    fn lease_expired(&self, now: Timestamp) -> bool {
        self.lease_expires_at.is_none_or(|until| until <= now)
    }

    fn check_owner(&self, owner: &str) -> Result<(), TransitionError> {
        if self.lease_owner.as_deref() == Some(owner) {
            Ok(())
        } else {
            Err(TransitionError::NotLeaseOwner {
                owner: owner.to_string(),
                holder: self.lease_owner.clone(),
            })
        }
    }

    fn refuse(&self, action: &'static str) -> TransitionError {
        TransitionError::NotAllowed {
            action,
            status: self.status.as_str(),
            kind: "job",
        }
    }

    fn touch(&mut self, now: Timestamp) {
        self.updated_at = now;
        // A wait reason describes a pending job as it sits; any transition
        // moves on from it.
        self.waiting = None;
    }

    fn clear_lease(&mut self) {
        self.lease_owner = None;
        self.lease_expires_at = None;
    }

    fn finish_failed(&mut self, error: JobError, now: Timestamp, retention: &Retention) {
        self.status = JobStatus::Failed;
        self.error = Some(error);
        self.calling = None;
        self.clear_lease();
        self.expire_at = Some(now.plus(retention.failed_jobs));
        self.touch(now);
    }

    /// Whether this is a video job waiting for proof of a paid request whose
    /// outcome is unknown: generating, with no operation to watch. The poller
    /// looks for its output under its prefix until OPERATION_TIMEOUT.
    pub fn awaits_output(&self) -> bool {
        self.kind == JobKind::Video
            && self.status == JobStatus::Generating
            && self.operation_name.is_none()
    }

    /// Whether this job failed in a way that a late output settles: a paid
    /// video that timed out or whose submit's outcome was unknown. Google
    /// may still write it, and it was paid for.
    fn may_still_deliver(&self) -> bool {
        self.kind == JobKind::Video
            && self.status == JobStatus::Failed
            && self
                .error
                .as_ref()
                .is_some_and(|e| e.code == TIMED_OUT || e.code == SUBMIT_UNKNOWN)
    }

    /// Whether working on this job sends a new paid request, rather than
    /// writing placeholders, watching a submitted operation or writing the
    /// outputs it holds.
    pub fn will_pay(&self) -> bool {
        !self.dry_run && self.operation_name.is_none() && self.held.is_empty()
    }

    /// Records the model a claim runs the job on: its own `model`
    /// parameter, else `default` (the generator's).
    pub fn run_on(&mut self, default: &str) {
        let model = self.params.model.as_deref().unwrap_or(default);
        self.model = Some(model.to_string());
    }

    /// Takes the job for `lease`: pending, or processing with a lease that ran
    /// out. Counts an attempt. A job with no attempt left is refused with
    /// [`ClaimRefusal::Exhausted`]; the caller then calls [`Job::exhaust`]. A
    /// job whose last claim's paid request is in doubt is refused with
    /// [`ClaimRefusal::CallLost`]; the caller then calls [`Job::lose_call`].
    pub fn claim(&mut self, lease: &Lease, now: Timestamp) -> Result<(), ClaimRefusal> {
        match self.status {
            JobStatus::Pending => {}
            JobStatus::Processing if self.lease_expired(now) => {}
            JobStatus::Processing => {
                return Err(ClaimRefusal::Leased {
                    owner: self.lease_owner.clone().unwrap_or_default(),
                    until: self.lease_expires_at.unwrap_or(now),
                });
            }
            other => return Err(ClaimRefusal::NotClaimable(other.as_str())),
        }
        if let Some(owner) = &self.calling {
            return Err(ClaimRefusal::CallLost {
                owner: owner.clone(),
            });
        }
        if self.attempts >= self.max_attempts {
            return Err(ClaimRefusal::Exhausted);
        }
        self.status = JobStatus::Processing;
        self.attempts += 1;
        self.started_at.get_or_insert(now);
        self.lease_owner = Some(lease.owner.clone());
        self.lease_expires_at = Some(now.plus(lease.ttl));
        self.touch(now);
        Ok(())
    }

    /// Records the reservation of the paid request the lease holder is about
    /// to send, and that from now on the request may be in flight
    /// (`calling`), in the write that claims the job.
    /// Takes the reservation an earlier claim left behind, to be counted as
    /// spent (its call may have been paid). A claim that resumes the job's
    /// submitted operation (`resumed_by`, its owner) keeps it under its own
    /// name instead: the poller settles it.
    pub fn take_leftover_reservation(&mut self, resumed_by: Option<&str>) -> Option<Reservation> {
        let held = self.reservation.take()?;
        match resumed_by {
            Some(owner) if self.operation_name.is_some() => {
                self.reservation = Some(Reservation {
                    owner: owner.to_string(),
                    ..held
                });
                None
            }
            _ => Some(held),
        }
    }

    /// Takes the reservation for settling: `owner`'s only, or any with
    /// `None`. A later claim's reservation stays where it is.
    pub fn release_reservation(&mut self, owner: Option<&str>) -> Option<Reservation> {
        let theirs = self
            .reservation
            .as_ref()
            .is_some_and(|held| owner.is_some_and(|owner| owner != held.owner));
        if theirs {
            None
        } else {
            self.reservation.take()
        }
    }

    /// Marks a pending job as waiting for `reason`. Not a transition:
    /// `updated_at` stays, so the janitor still sees how long the job has
    /// been idle and dispatches it again. Whether anything changed.
    pub fn mark_waiting(&mut self, reason: &str) -> bool {
        if self.status != JobStatus::Pending || self.waiting.as_deref() == Some(reason) {
            return false;
        }
        self.waiting = Some(reason.to_string());
        true
    }

    /// Stamps a pending job as dispatched again at `now`, so that whoever
    /// stamps it is the only one to dispatch it in this window.
    pub fn stamp_dispatched(&mut self, now: Timestamp) -> Transition {
        if self.status != JobStatus::Pending {
            return Err(self.refuse("dispatch again"));
        }
        self.updated_at = now;
        Ok(())
    }

    pub fn reserve(&mut self, reservation: Reservation) -> Transition {
        if self.status != JobStatus::Processing {
            return Err(self.refuse("reserve a paid call for"));
        }
        self.check_owner(&reservation.owner)?;
        self.calling = Some(reservation.owner.clone());
        self.reservation = Some(reservation);
        Ok(())
    }

    /// Gives up on a paid request that went out and whose outcome will
    /// never be known: nothing is sent again. A video waits, generating without an
    /// operation, for its output to appear under its prefix; an image, whose
    /// bytes came back only in the lost answer, fails as [`SUBMIT_UNKNOWN`].
    fn give_up_unknown(&mut self, what: &str, now: Timestamp, retention: &Retention) {
        self.calling = None;
        match self.kind {
            JobKind::Video => {
                self.status = JobStatus::Generating;
                self.operation_name = None;
                self.submitted_at = Some(now);
                self.error = Some(JobError::new(
                    SUBMIT_UNKNOWN,
                    format!(
                        "{what}; it is not sent again: the job waits for its video to appear under its output prefix"
                    ),
                    false,
                ));
                self.clear_lease();
                self.touch(now);
            }
            JobKind::Image => {
                let message = format!(
                    "{what}; an image made by it came back only in that answer, so the cost is booked and nothing is sent again: `asmr retry --resubmit {}` pays for a new one",
                    self.id
                );
                self.finish_failed(
                    JobError::new(SUBMIT_UNKNOWN, message, false),
                    now,
                    retention,
                );
            }
        }
    }

    /// Settles the paid request an earlier claim (`calling`) sent before it
    /// vanished: it may have reached the model, so it is not sent again (see
    /// [`Job::claim`]).
    pub fn lose_call(&mut self, now: Timestamp, retention: &Retention) -> Transition {
        let Some(owner) = self.calling.clone() else {
            return Err(self.refuse("settle a lost call of"));
        };
        if !matches!(self.status, JobStatus::Pending | JobStatus::Processing) {
            return Err(self.refuse("settle a lost call of"));
        }
        let what = format!(
            "the paid request sent by {owner} may have reached the model, but that worker stopped before recording its outcome"
        );
        self.give_up_unknown(&what, now, retention);
        Ok(())
    }

    /// The lease holder's paid request went out and its outcome is unknown
    /// (`what`: no answer within the time-out, a broken connection): it is
    /// not sent again, as for [`Job::lose_call`].
    pub fn outcome_unknown(
        &mut self,
        owner: &str,
        what: &str,
        now: Timestamp,
        retention: &Retention,
    ) -> Transition {
        if self.status != JobStatus::Processing {
            return Err(self.refuse("record an unknown outcome for"));
        }
        self.check_owner(owner)?;
        self.give_up_unknown(what, now, retention);
        Ok(())
    }

    /// The lease holder gives the job back for a reason that is not the
    /// job's fault (one of [`WAIT_REASONS`]: a spent quota, a missing
    /// credential or role, an output bucket that would not take the outputs):
    /// processing → pending, with the attempt this claim counted given back,
    /// so waiting never uses attempts up, however long it lasts.
    pub fn wait(
        &mut self,
        owner: &str,
        reason: &str,
        error: JobError,
        now: Timestamp,
    ) -> Transition {
        if self.status != JobStatus::Processing {
            return Err(self.refuse("put back to wait"));
        }
        self.check_owner(owner)?;
        self.status = JobStatus::Pending;
        self.attempts = self.attempts.saturating_sub(1);
        self.calling = None;
        self.error = Some(error);
        self.clear_lease();
        self.touch(now);
        self.waiting = Some(reason.to_string());
        Ok(())
    }

    /// The lease holder generated (and paid for) outputs that the output
    /// bucket would not take: they are `held` (their bytes are in the store)
    /// and the job waits as [`STORAGE_UNAVAILABLE`]. The next claim writes
    /// them instead of calling the model again.
    pub fn hold(
        &mut self,
        owner: &str,
        held: Vec<HeldOutput>,
        error: JobError,
        now: Timestamp,
    ) -> Transition {
        self.wait(owner, STORAGE_UNAVAILABLE, error, now)?;
        self.held = held;
        Ok(())
    }

    /// Fails a job that has no attempt left.
    pub fn exhaust(&mut self, now: Timestamp, retention: &Retention) -> Transition {
        if self.status.is_terminal() || self.status == JobStatus::Completed {
            return Err(self.refuse("fail"));
        }
        let last = self
            .error
            .as_ref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        let message = format!("gave up after {} attempts{last}", self.attempts);
        self.finish_failed(
            JobError::new(ATTEMPTS_EXHAUSTED, message, false),
            now,
            retention,
        );
        Ok(())
    }

    /// Pushes the lease of `owner` forward.
    pub fn extend_lease(&mut self, lease: &Lease, now: Timestamp) -> Transition {
        if !self.status.is_leased() {
            return Err(self.refuse("extend the lease of"));
        }
        self.check_owner(&lease.owner)?;
        self.lease_expires_at = Some(now.plus(lease.ttl));
        self.touch(now);
        Ok(())
    }

    /// Records the submitted long-running operation: processing → generating.
    /// The lease is renewed for `lease.ttl`, the time the operation may take;
    /// if it runs out nobody watched the operation, and the job is reset with
    /// its operation kept. Re-recording the same operation (a resumed job)
    /// keeps its submission time, so OPERATION_TIMEOUT counts from the submit.
    pub fn start_generating(
        &mut self,
        lease: &Lease,
        operation_name: &str,
        now: Timestamp,
    ) -> Transition {
        if self.status != JobStatus::Processing {
            return Err(self.refuse("start generating"));
        }
        self.check_owner(&lease.owner)?;
        if self.operation_name.as_deref() != Some(operation_name) || self.submitted_at.is_none() {
            self.submitted_at = Some(now);
        }
        self.status = JobStatus::Generating;
        self.operation_name = Some(operation_name.to_string());
        self.calling = None;
        self.lease_expires_at = Some(now.plus(lease.ttl));
        self.touch(now);
        Ok(())
    }

    /// The poller saw the operation finish, or found the output of a job that
    /// awaited it: generating → completed. No lease check: the operation,
    /// not a worker, did the work, and the write is a compare-and-set like
    /// every other.
    pub fn finish_operation(&mut self, outputs: Vec<GsUri>, now: Timestamp) -> Transition {
        if self.status != JobStatus::Generating {
            return Err(self.refuse("finish the operation of"));
        }
        self.status = JobStatus::Completed;
        self.outputs = outputs;
        self.error = None;
        self.clear_lease();
        self.completed_at = Some(now);
        self.touch(now);
        self.deliver_if_complete();
        Ok(())
    }

    /// processing | generating → completed, with the produced outputs. If every
    /// output was already delivered (a video can land before its operation is
    /// seen done) the job goes straight on to delivered.
    pub fn complete(&mut self, owner: &str, outputs: Vec<GsUri>, now: Timestamp) -> Transition {
        if !self.status.is_leased() {
            return Err(self.refuse("complete"));
        }
        self.check_owner(owner)?;
        self.status = JobStatus::Completed;
        self.outputs = outputs;
        self.error = None;
        self.calling = None;
        self.held.clear();
        self.clear_lease();
        self.completed_at = Some(now);
        self.touch(now);
        self.deliver_if_complete();
        Ok(())
    }

    fn deliver_if_complete(&mut self) {
        let all_delivered = !self.outputs.is_empty()
            && self
                .outputs
                .iter()
                .all(|out| self.deliveries.iter().any(|d| &d.source == out));
        if self.status == JobStatus::Completed && all_delivered {
            self.status = JobStatus::Delivered;
        }
    }

    /// Records that one output was copied. Allowed in any status but
    /// cancelled; the job becomes delivered once it is completed and every
    /// output has a delivery. Recording the same source twice keeps the newer
    /// destination. A video that awaited proof of an unknown submit, or
    /// failed as timed out or unknown, takes the copied file as its output
    /// and is delivered: it was paid for.
    pub fn record_delivery(&mut self, delivery: DeliveredOutput, now: Timestamp) -> Transition {
        if self.status == JobStatus::Cancelled {
            return Err(self.refuse("record a delivery for"));
        }
        let adopt = (self.awaits_output() || self.may_still_deliver())
            && !self.outputs.contains(&delivery.source);
        if adopt {
            self.outputs.push(delivery.source.clone());
            self.status = JobStatus::Completed;
            self.error = None;
            self.clear_lease();
            self.completed_at = Some(now);
            self.expire_at = None;
        }
        match self
            .deliveries
            .iter_mut()
            .find(|d| d.source == delivery.source)
        {
            Some(existing) => *existing = delivery,
            None => self.deliveries.push(delivery),
        }
        self.touch(now);
        self.deliver_if_complete();
        Ok(())
    }

    /// Any unfinished job → failed. When `owner` is given and the job is
    /// leased, only the lease holder may fail it.
    pub fn fail(
        &mut self,
        owner: Option<&str>,
        error: JobError,
        now: Timestamp,
        retention: &Retention,
    ) -> Transition {
        if self.status.is_terminal() || self.status == JobStatus::Completed {
            return Err(self.refuse("fail"));
        }
        if let Some(owner) = owner
            && self.status.is_leased()
        {
            self.check_owner(owner)?;
        }
        self.finish_failed(error, now, retention);
        Ok(())
    }

    /// pending | processing | generating → cancelled.
    pub fn cancel(&mut self, now: Timestamp, retention: &Retention) -> Transition {
        if self.status.is_terminal() || self.status == JobStatus::Completed {
            return Err(self.refuse("cancel"));
        }
        self.status = JobStatus::Cancelled;
        self.clear_lease();
        self.expire_at = Some(now.plus(retention.failed_jobs));
        self.touch(now);
        Ok(())
    }

    /// The lease holder gives the job back after transient trouble (a model
    /// or store outage): processing → pending, keeping the attempt count and
    /// the error for the record.
    pub fn release(&mut self, owner: &str, error: Option<JobError>, now: Timestamp) -> Transition {
        if self.status != JobStatus::Processing {
            return Err(self.refuse("release"));
        }
        self.check_owner(owner)?;
        self.status = JobStatus::Pending;
        self.calling = None;
        self.clear_lease();
        if error.is_some() {
            self.error = error;
        }
        self.touch(now);
        Ok(())
    }

    /// Takes back a job whose worker vanished: processing | generating →
    /// pending, or failed when no attempt is left. `operation_name` is kept,
    /// and so is `calling`: the next claim settles a paid request the worker
    /// may have sent instead of sending another (so such a job is never
    /// failed here for want of attempts). Unless `force`, the lease must
    /// have run out. A video awaiting its output has no worker to take it
    /// back from: the poller ends that wait.
    pub fn reset(&mut self, force: bool, now: Timestamp, retention: &Retention) -> Transition {
        if !self.status.is_leased() || self.awaits_output() {
            return Err(self.refuse("reset"));
        }
        if !force && !self.lease_expired(now) {
            return Err(TransitionError::LeaseActive {
                holder: self.lease_owner.clone(),
            });
        }
        if self.calling.is_none() && self.attempts >= self.max_attempts {
            return self.exhaust(now, retention);
        }
        self.status = JobStatus::Pending;
        self.clear_lease();
        self.touch(now);
        Ok(())
    }

    /// An operator's retry: failed | cancelled → pending with fresh attempts.
    /// A job the safety filters stopped is refused unless `include_filtered`;
    /// one whose last paid request has an unknown outcome unless `resubmit`
    /// (which forgets the operation, so the job pays again). A failed Veo
    /// operation is forgotten (a new one is submitted, and paid for); a
    /// timed-out one is watched again, with a fresh OPERATION_TIMEOUT.
    pub fn retry(&mut self, options: &RetryOptions, now: Timestamp) -> Transition {
        if !matches!(self.status, JobStatus::Failed | JobStatus::Cancelled) {
            return Err(self.refuse("retry"));
        }
        let code = self.error.as_ref().map(|e| e.code.as_str());
        if !options.include_filtered && code == Some(FILTERED) {
            return Err(TransitionError::Filtered);
        }
        if !options.resubmit && code == Some(SUBMIT_UNKNOWN) {
            return Err(TransitionError::OutcomeUnknown);
        }
        if options.resubmit || code == Some(OPERATION_FAILED) {
            self.operation_name = None;
        }
        if options.resubmit || matches!(code, Some(OPERATION_FAILED | TIMED_OUT)) {
            self.submitted_at = None;
        }
        self.status = JobStatus::Pending;
        self.attempts = 0;
        self.error = None;
        self.calling = None;
        self.clear_lease();
        self.expire_at = None;
        self.touch(now);
        Ok(())
    }
}
