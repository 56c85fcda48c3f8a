//! Read access to a job: its fields change only through its transitions.

use super::Job;
use crate::domain::gs_uri::GsUri;
use crate::domain::tenant::TenantName;
use crate::domain::values::{
    Chain, DeliveredOutput, FirstFrame, HeldOutput, JobError, JobKind, JobParams, JobStatus,
    Reservation, Review, Verdict,
};
use crate::domain::webhook::Webhook;
use crate::time::Timestamp;

/// Read access: a job's fields change only through its transitions.
impl Job {
    /// Document id; derived from `request_id` when there is one.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The text sent to the model.
    pub fn prompt(&self) -> &str {
        &self.prompt
    }

    /// Image or video.
    pub fn kind(&self) -> JobKind {
        self.kind
    }

    /// Model parameters.
    pub fn params(&self) -> &JobParams {
        &self.params
    }

    /// Higher runs first.
    pub fn priority(&self) -> i64 {
        self.priority
    }

    /// Where the job stands.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// Claims so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Claims allowed.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Who holds the lease (processing, generating).
    pub fn lease_owner(&self) -> Option<&str> {
        self.lease_owner.as_deref()
    }

    /// When the lease runs out; after that another worker may take the job.
    pub fn lease_expires_at(&self) -> Option<Timestamp> {
        self.lease_expires_at
    }

    /// The Veo long-running operation, once submitted. Kept across requeues so
    /// a generator can resume polling instead of paying for a second video.
    pub fn operation_name(&self) -> Option<&str> {
        self.operation_name.as_deref()
    }

    /// When that operation was submitted (its age decides the time-out).
    pub fn submitted_at(&self) -> Option<Timestamp> {
        self.submitted_at
    }

    /// `gs://` URIs of what the model produced.
    pub fn outputs(&self) -> &[GsUri] {
        &self.outputs
    }

    /// Where each output was copied.
    pub fn deliveries(&self) -> &[DeliveredOutput] {
        &self.deliveries
    }

    /// Why it failed, or why the last attempt failed.
    pub fn error(&self) -> Option<&JobError> {
        self.error.as_ref()
    }

    /// Idempotency key of the request that created it.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The digest of the request that created this job, if it was recorded.
    pub fn request_digest(&self) -> Option<&str> {
        self.request_digest.as_deref()
    }

    /// Placeholders instead of model calls.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Creation time.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// Last change.
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }

    /// When it reached `completed`.
    pub fn completed_at(&self) -> Option<Timestamp> {
        self.completed_at
    }

    /// When the retention rules allow deleting it.
    pub fn expire_at(&self) -> Option<Timestamp> {
        self.expire_at
    }

    /// Why a pending job is not being worked on ([`BUDGET_EXHAUSTED`]);
    /// cleared by the next transition.
    pub fn waiting(&self) -> Option<&str> {
        self.waiting.as_deref()
    }

    /// The cost reserved for this job's paid call, until it is settled.
    pub fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    /// The claim whose paid request may be in flight: set by a claim that is
    /// about to pay, cleared by whatever that claim records next. A later
    /// claim that finds it set knows a paid request went out with an
    /// unknown outcome, and does not send another.
    pub fn calling(&self) -> Option<&str> {
        self.calling.as_deref()
    }

    /// Outputs generated and paid for, waiting to be written to the output
    /// bucket (see [`HeldOutput`]).
    pub fn held(&self) -> &[HeldOutput] {
        &self.held
    }

    /// The image this video was made from.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    /// The videos made from this image, in the order they were made.
    pub fn children(&self) -> &[String] {
        &self.children
    }

    /// The reviewer's mark on this image, if any (named apart from
    /// [`Job::review`], the transition that gives it).
    pub fn reviewed(&self) -> Option<&Review> {
        self.review.as_ref()
    }

    /// The reviewer's verdict on this image, if any.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// What to make of this job once it is delivered.
    pub fn chain(&self) -> Option<Chain> {
        self.chain
    }

    /// The model a generator recorded when it claimed the job; `None`
    /// until one did.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Whose job it is; `default` for a job written before tenants.
    pub fn tenant(&self) -> &TenantName {
        &self.tenant
    }

    /// Where its events are sent, and which of them.
    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    /// When a generator first took it; retries and waits keep it.
    pub fn started_at(&self) -> Option<Timestamp> {
        self.started_at
    }

    /// Where its outputs go in the output bucket: `images/{id}/` or
    /// `videos/{id}/` below its tenant's prefix (none for the default
    /// tenant, `tenants/{name}/` for the others).
    pub fn output_folder(&self) -> String {
        let folder = match self.kind {
            JobKind::Image => "images",
            JobKind::Video => "videos",
        };
        format!(
            "{}{folder}/{}/",
            crate::domain::tenant::Tenant::output_prefix(&self.tenant),
            self.id
        )
    }

    /// The image this video starts from.
    pub fn first_frame(&self) -> Option<&FirstFrame> {
        self.first_frame.as_ref()
    }
}
