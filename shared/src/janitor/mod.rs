//! The janitor: the Cloud Run job (Cloud Scheduler, hourly) that keeps the
//! queue honest. One run does five sweeps, in this order, each on its own (a
//! failing sweep is reported and the others still run):
//!
//! 1. Leases: `processing` / `generating` jobs whose lease ran out go back to
//!    `pending` and are published again to their kind's job topic, or fail
//!    when no attempt is left ([`Store::expire_job_leases`]). A requeued
//!    video job keeps its `operation_name`, and the video generator resumes
//!    watching that operation instead of submitting (and paying for) a new
//!    one.
//! 2. Lost work: `pending` jobs untouched for longer than `LOST_AFTER` are
//!    published again. Each is first stamped (its `updated_at`, with a
//!    compare-and-set), so a job is re-published at most once per window
//!    however many janitors run; a run takes the 1000 longest idle at most.
//!    Jobs waiting for the daily budget are ordinary pending jobs here: this
//!    is how they are picked up again.
//! 3. Dead letters: messages on the dead-letter subscription are read (up to
//!    `DEAD_LETTER_MAX`); a job message fails its pending job with code
//!    `dead_lettered` and the job's last error, anything else is logged at
//!    ERROR; each is acknowledged once handled. A job that is waiting (on
//!    the model's quota, the budget, a fixed configuration or the output
//!    bucket) is not failed but published again: waiting is not failing,
//!    however many deliveries it takes. A `generating` job is left to the
//!    poller (its operation is paid for), a job a live worker holds to that
//!    worker.
//! 4. Job events: events a crash or a Pub/Sub outage left in the outbox are
//!    published (and removed from it).
//! 5. Retention: records past their `expire_at` are deleted (Firestore TTL
//!    does this in production too; the emulator and the embedded store have
//!    no TTL).
//!
//! The run ends with one summary ([`JanitorReport`]): a `tracing` line with
//! `event = "janitor.summary"`, and the same counts as one JSON line on
//! stdout. The exit status is non-zero when any sweep failed.

pub mod service;

#[cfg(doc)]
use crate::bus::dead_letters::NoDeadLetters;
use crate::bus::dead_letters::{DeadLetter, DeadLetters};
use crate::bus::{Announced, Bus, Topics};
use crate::domain::invalid::ValidationError;
use crate::domain::job::Job;
use crate::domain::values::{JobError, JobStatus};
use crate::error::{Error, Result};
use crate::push::{JobMessage, PushedMessage};
use crate::store::Store;
use crate::time::Timestamp;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Error code of a job whose message Pub/Sub gave up delivering.
pub const DEAD_LETTERED: &str = "dead_lettered";
/// The dead-letter subscription the janitor drains, after the topic prefix.
pub const DEAD_LETTER_SUBSCRIPTION: &str = "asmr-dead-letter-janitor";
/// Messages pulled (and acknowledged) at a time.
const DEAD_LETTER_BATCH: usize = 100;

/// What the janitor works on.
pub struct Janitor {
    /// The job store (with job events on, if they are published).
    pub store: Store,
    /// Where requeued and lost jobs are published again; on the embedded
    /// store one that reaches no worker, whose generators drain pending jobs
    /// without messages.
    pub bus: Arc<dyn Bus>,
    /// The topic names.
    pub topics: Topics,
    /// The dead-letter subscription; [`NoDeadLetters`] where there is no
    /// Pub/Sub.
    pub dead_letters: Arc<dyn DeadLetters>,
}

/// How the janitor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JanitorSettings {
    /// A pending job untouched for this long has lost its message.
    pub lost_after: Duration,
    /// The most dead letters handled in one run (0: none).
    pub dead_letter_max: usize,
}

impl Default for JanitorSettings {
    fn default() -> Self {
        Self {
            lost_after: Duration::from_secs(15 * 60),
            dead_letter_max: 1000,
        }
    }
}

impl JanitorSettings {
    fn validate(&self) -> Result<()> {
        if self.lost_after.is_zero() {
            return Err(ValidationError::new("LOST_AFTER", "must be more than zero").into());
        }
        Ok(())
    }
}

/// What one run did: the counts of the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JanitorReport {
    /// Jobs whose lease ran out, put back to pending and published again.
    pub requeued: u64,
    /// Jobs whose lease ran out with no attempt left, now failed.
    pub failed_leases: u64,
    /// Pending jobs idle past `LOST_AFTER`, published again.
    pub republished: u64,
    /// Jobs failed because their message was dead-lettered.
    pub dead_lettered: u64,
    /// Dead-lettered job messages of waiting jobs, published again.
    pub dead_letter_requeued: u64,
    /// Dead letters that were not job messages (logged at ERROR).
    pub dead_letter_other: u64,
    /// Dead-lettered job messages whose job needed nothing: finished, gone,
    /// generating (the poller's), or leased by a live worker.
    pub dead_letter_skipped: u64,
    /// Jobs deleted by retention.
    pub deleted_jobs: u64,
    /// Downloads deleted by retention.
    pub deleted_downloads: u64,
    /// Rejected requests deleted by retention.
    pub deleted_rejected: u64,
    /// Budget days deleted by retention.
    pub deleted_budgets: u64,
    /// Chunks of held outputs deleted by retention.
    pub deleted_held: u64,
    /// Charge records deleted by retention.
    pub deleted_charges: u64,
    /// Rate-limit windows deleted by retention.
    pub deleted_limits: u64,
    /// Finished webhook deliveries deleted by retention.
    pub deleted_webhooks: u64,
    /// Job events published from the outbox.
    pub events_published: u64,
    /// Failures: a sweep that failed as a whole, or one record it could not
    /// handle.
    pub errors: u64,
    /// The sweeps with a failure (`leases`, `lost_work`, `dead_letters`,
    /// `job_events`, `retention`).
    pub failed_sweeps: Vec<&'static str>,
}

impl JanitorReport {
    /// Whether every sweep succeeded.
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }

    /// The summary as one JSON object, with `event = "janitor.summary"`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("event".into(), "janitor.summary".into());
        }
        value
    }

    /// Logs the summary line.
    pub fn log(&self) {
        tracing::info!(
            event = "janitor.summary",
            requeued = self.requeued,
            failed_leases = self.failed_leases,
            republished = self.republished,
            dead_lettered = self.dead_lettered,
            dead_letter_requeued = self.dead_letter_requeued,
            dead_letter_other = self.dead_letter_other,
            dead_letter_skipped = self.dead_letter_skipped,
            deleted_jobs = self.deleted_jobs,
            deleted_downloads = self.deleted_downloads,
            deleted_rejected = self.deleted_rejected,
            deleted_budgets = self.deleted_budgets,
            deleted_held = self.deleted_held,
            deleted_charges = self.deleted_charges,
            deleted_limits = self.deleted_limits,
            deleted_webhooks = self.deleted_webhooks,
            events_published = self.events_published,
            errors = self.errors,
            failed_sweeps = %self.failed_sweeps.join(","),
            "janitor finished"
        );
    }

    /// Records how a sweep ended: `Ok(n)` with `n` records it could not
    /// handle, or a failure of the whole sweep.
    fn record(&mut self, sweep: &'static str, outcome: Result<u64>) {
        let failures = match outcome {
            Ok(failures) => failures,
            Err(e) => {
                tracing::error!(event = "janitor.sweep_failed", sweep, error = %e, "sweep failed");
                1
            }
        };
        if failures > 0 {
            self.errors += failures;
            self.failed_sweeps.push(sweep);
        }
    }
}

/// What became of one dead letter.
enum LetterOutcome {
    Failed,
    Requeued,
    Other,
    Skipped,
}

/// Outbox entries younger than this are left to the relay that wrote them.
const OUTBOX_GRACE: Duration = Duration::from_secs(10);

/// One run of the five sweeps. `Err` only for invalid settings: a sweep's
/// failure is in the report (`errors`, `failed_sweeps`).
pub async fn run_once(janitor: &Janitor, settings: &JanitorSettings) -> Result<JanitorReport> {
    settings.validate()?;
    let mut report = JanitorReport::default();
    let outcome = janitor.expire_leases(&mut report).await;
    report.record("leases", outcome);
    let outcome = janitor
        .republish_lost(settings.lost_after, &mut report)
        .await;
    report.record("lost_work", outcome);
    let outcome = janitor
        .drain_dead_letters(settings.dead_letter_max, &mut report)
        .await;
    report.record("dead_letters", outcome);
    let outcome = janitor.publish_events(&mut report).await;
    report.record("job_events", outcome);
    let outcome = janitor.delete_expired(&mut report).await;
    report.record("retention", outcome);
    janitor.store.flush_events().await;
    Ok(report)
}

impl Janitor {
    /// Announces the job to its generator again.
    async fn dispatch(&self, job: &Job) -> Result<()> {
        let announced =
            crate::bus::publish_job(self.bus.as_ref(), &self.topics, job, "janitor").await?;
        if let Announced::Published(message_id) = announced {
            let topic = self.topics.for_kind(job.kind());
            tracing::info!(job_id = %job.id(), topic, message_id, "job message published again");
        }
        Ok(())
    }

    async fn expire_leases(&self, report: &mut JanitorReport) -> Result<u64> {
        let reset = self.store.expire_job_leases().await?;
        report.failed_leases += reset.failed.len() as u64;
        for job in &reset.failed {
            let code = job
                .error()
                .as_ref()
                .map(|e| e.code.as_str())
                .unwrap_or_default();
            tracing::warn!(job_id = %job.id(), kind = %job.kind(), code, attempts = job.attempts(), event = "job_failed", "lease expired with no attempt left");
        }
        let mut failures = 0;
        for job in &reset.requeued {
            report.requeued += 1;
            // A video job keeps its operation: the generator that takes it
            // watches that operation again instead of paying for another.
            tracing::info!(job_id = %job.id(), kind = %job.kind(), attempts = job.attempts(), operation = job.operation_name().unwrap_or(""), "lease expired; job requeued");
            if let Err(e) = self.dispatch(job).await {
                // Still pending: the lost-work sweep of a later run sends it.
                tracing::error!(job_id = %job.id(), error = %e, "could not publish a requeued job");
                failures += 1;
            }
        }
        Ok(failures)
    }

    async fn republish_lost(
        &self,
        lost_after: Duration,
        report: &mut JanitorReport,
    ) -> Result<u64> {
        if !self.bus.reaches_workers() {
            return Ok(0);
        }
        let cutoff = Timestamp::now().minus(lost_after);
        let mut failures = 0;
        for idle in self.store.pending_jobs_idle_since(cutoff).await? {
            // Stamp first: of two janitors only one stamps, so only one
            // publishes. A publish that then fails waits for the next window.
            let job = match self.store.stamp_idle_pending_job(idle.id(), cutoff).await {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(job_id = %idle.id(), error = %e, "could not stamp a lost job");
                    failures += 1;
                    continue;
                }
            };
            match self.dispatch(&job).await {
                Ok(_) => report.republished += 1,
                Err(e) => {
                    tracing::error!(job_id = %job.id(), error = %e, "could not publish a lost job");
                    failures += 1;
                }
            }
        }
        Ok(failures)
    }

    async fn drain_dead_letters(&self, max: usize, report: &mut JanitorReport) -> Result<u64> {
        let letters = &self.dead_letters;
        let drained = self.drain(letters.as_ref(), max, report).await;
        let closed = letters.close().await;
        let failures = drained.map_err(|e| match e {
            Error::NotFound {
                kind: "subscription",
                id,
            } => Error::store(
                "draining dead letters",
                format!(
                    "the dead-letter subscription {id} does not exist (create it, or set DEAD_LETTER_SUBSCRIPTION)"
                ),
                false,
            ),
            e => e,
        })?;
        closed?;
        Ok(failures)
    }

    async fn drain(
        &self,
        letters: &dyn DeadLetters,
        max: usize,
        report: &mut JanitorReport,
    ) -> Result<u64> {
        let mut taken = 0;
        let mut failures = 0;
        while taken < max {
            let asked = DEAD_LETTER_BATCH.min(max - taken);
            let batch = letters.pull(asked).await?;
            taken += batch.len();
            let mut handled = Vec::new();
            for letter in &batch {
                match self.handle_dead_letter(letter).await {
                    Ok(settled) => {
                        match settled {
                            LetterOutcome::Failed => report.dead_lettered += 1,
                            LetterOutcome::Requeued => report.dead_letter_requeued += 1,
                            LetterOutcome::Other => report.dead_letter_other += 1,
                            LetterOutcome::Skipped => report.dead_letter_skipped += 1,
                        }
                        handled.push(letter.ack_id.clone());
                    }
                    Err(e) => {
                        // Not acknowledged: delivered again on a later run.
                        tracing::error!(message_id = letter.message_id, error = %e, "could not settle a dead letter");
                        failures += 1;
                    }
                }
            }
            if !handled.is_empty() {
                letters.ack(&handled).await?;
            }
            // A short batch is the end of the backlog; a batch of failures
            // means the store is in trouble, and the rest can wait.
            if batch.len() < asked || handled.is_empty() {
                break;
            }
        }
        Ok(failures)
    }

    async fn handle_dead_letter(&self, letter: &DeadLetter) -> Result<LetterOutcome> {
        let delivery = PushedMessage {
            message_id: letter.message_id.clone(),
            attributes: letter.attributes.clone(),
            data: letter.data.to_vec(),
            subscription: None,
            delivery_attempt: None,
            publish_time: None,
        };
        let Ok(message) = JobMessage::from_delivery(&delivery) else {
            let attributes = serde_json::to_string(&letter.attributes).unwrap_or_default();
            let data: String = String::from_utf8_lossy(&letter.data)
                .chars()
                .take(500)
                .collect();
            tracing::error!(
                event = "janitor.dead_letter",
                outcome = "not_a_job",
                message_id = letter.message_id,
                attributes,
                data,
                "a message that is not a job message was dead-lettered"
            );
            return Ok(LetterOutcome::Other);
        };
        let id = message.job_id;
        // One `janitor.dead_letter` line per message handled.
        let skipped = |reason: &str| {
            tracing::info!(event = "janitor.dead_letter", outcome = "skipped", job_id = %id, message_id = letter.message_id, reason, "dead letter of a job that needs nothing");
            Ok(LetterOutcome::Skipped)
        };
        let Some(job) = self.store.get_job(&id).await? else {
            return skipped("no such job");
        };
        match job.status() {
            // Waiting is not failing: the quota, the budget, the
            // configuration or the bucket holds it back, not the job. A
            // paid request in doubt is settled by the next claim. A job a
            // worker holds may be put back to wait by it: its message must
            // not be the one that is lost (a duplicate costs nothing).
            JobStatus::Pending if job.waiting().is_some() || job.calling().is_some() => {
                return self.requeue_dead_letter(&job, letter).await;
            }
            JobStatus::Processing => return self.requeue_dead_letter(&job, letter).await,
            JobStatus::Pending => {}
            // The operation is submitted and paid for; the poller ends it.
            JobStatus::Generating => return skipped("generating: left to the video poller"),
            JobStatus::Completed
            | JobStatus::Delivered
            | JobStatus::Failed
            | JobStatus::Cancelled => return skipped(job.status().as_str()),
        }
        let message = match &job.error() {
            Some(last) => last.to_string(),
            None => match letter
                .source_delivery_count()
                .or(letter.delivery_attempt.and_then(|n| u32::try_from(n).ok()))
            {
                Some(n) => format!("delivery failed {n} times"),
                None => "delivery failed repeatedly".to_string(),
            },
        };
        let error = JobError::new(DEAD_LETTERED, message, false);
        match self.store.fail_job(&id, None, error.clone()).await {
            Ok(_) => {
                tracing::warn!(job_id = %id, kind = %job.kind(), code = DEAD_LETTERED, message_id = letter.message_id, error = %error, event = "job_failed", "job failed: its message was dead-lettered");
                tracing::info!(event = "janitor.dead_letter", outcome = "job_failed", job_id = %id, message_id = letter.message_id, "dead letter handled");
                Ok(LetterOutcome::Failed)
            }
            // It moved on (claimed, finished, cancelled) since it was read.
            Err(Error::Transition { .. }) => skipped("changed while being failed"),
            Err(e) => Err(e),
        }
    }

    async fn publish_events(&self, report: &mut JanitorReport) -> Result<u64> {
        let outbox = self.store.publish_outbox(OUTBOX_GRACE).await?;
        report.events_published += outbox.published;
        Ok(outbox.failed)
    }

    /// Publishes the job message of a dead letter's job again.
    async fn requeue_dead_letter(&self, job: &Job, letter: &DeadLetter) -> Result<LetterOutcome> {
        self.dispatch(job).await?;
        let reason = match (job.status(), job.waiting()) {
            (JobStatus::Processing, _) => "a worker holds it",
            (_, Some(reason)) => reason,
            _ => "a paid request in doubt",
        };
        tracing::info!(event = "janitor.dead_letter", outcome = "requeued", job_id = %job.id(), message_id = letter.message_id, reason, "dead letter of a job that is not done: published again");
        Ok(LetterOutcome::Requeued)
    }

    async fn delete_expired(&self, report: &mut JanitorReport) -> Result<u64> {
        let deleted = self.store.delete_expired().await?;
        report.deleted_held += deleted.held;
        report.deleted_jobs += deleted.jobs;
        report.deleted_downloads += deleted.downloads;
        report.deleted_rejected += deleted.rejected;
        report.deleted_budgets += deleted.budgets;
        report.deleted_charges += deleted.charges;
        report.deleted_limits += deleted.limits;
        report.deleted_webhooks += deleted.webhooks;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::dead_letters::{MemoryDeadLetters, SOURCE_DELIVERY_COUNT};
    use crate::bus::memory::MemoryBus;
    use crate::domain::Lease;
    use crate::domain::job::NewJob;
    use crate::domain::values::{ATTEMPTS_EXHAUSTED, JobKind};
    use crate::store::embedded::EmbeddedBackend;

    struct Setup {
        janitor: Janitor,
        bus: Arc<MemoryBus>,
        letters: Arc<MemoryDeadLetters>,
        _dir: tempfile::TempDir,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Arc::new(EmbeddedBackend::open(dir.path()).unwrap()));
        let bus = Arc::new(MemoryBus::new());
        let topics = Topics::new("t-");
        for topic in topics.all() {
            bus.ensure_topic(&topic).await.unwrap();
        }
        let letters = Arc::new(MemoryDeadLetters::new());
        Setup {
            janitor: Janitor {
                store,
                bus: bus.clone(),
                topics,
                dead_letters: letters.clone(),
            },
            bus,
            letters,
            _dir: dir,
        }
    }

    async fn job(s: &Setup, kind: JobKind, max_attempts: u32) -> Job {
        let mut new = NewJob::new("rain on a window", kind);
        new.max_attempts = max_attempts;
        s.janitor.store.create_job(new).await.unwrap().record
    }

    fn published(s: &Setup, kind: JobKind) -> Vec<String> {
        s.bus.job_ids(&s.janitor.topics.for_kind(kind))
    }

    #[tokio::test]
    async fn expired_leases_are_requeued_and_published_or_failed_when_spent() {
        let s = setup().await;
        let store = &s.janitor.store;
        let expired = Lease::new("gone", Duration::ZERO);
        let live = Lease::new("busy", Duration::from_secs(600));
        let requeue = job(&s, JobKind::Image, 3).await;
        let spent = job(&s, JobKind::Image, 1).await;
        let held = job(&s, JobKind::Image, 3).await;
        store.claim_job(requeue.id(), &expired).await.unwrap();
        store.claim_job(spent.id(), &expired).await.unwrap();
        store.claim_job(held.id(), &live).await.unwrap();

        let report = run_once(&s.janitor, &JanitorSettings::default())
            .await
            .unwrap();
        assert_eq!(
            (report.requeued, report.failed_leases),
            (1, 1),
            "{report:?}"
        );
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            published(&s, JobKind::Image),
            std::slice::from_ref(&requeue.id())
        );
        assert_eq!(
            store.job(requeue.id()).await.unwrap().status(),
            JobStatus::Pending
        );
        let failed = store.job(spent.id()).await.unwrap();
        assert_eq!(failed.status(), JobStatus::Failed);
        assert_eq!(failed.error().unwrap().code, ATTEMPTS_EXHAUSTED);
        assert_eq!(
            store.job(held.id()).await.unwrap().status(),
            JobStatus::Processing
        );
    }

    #[tokio::test]
    async fn an_expired_generating_lease_is_requeued_with_its_operation_kept() {
        let s = setup().await;
        let store = &s.janitor.store;
        let video = job(&s, JobKind::Video, 3).await;
        let lease = Lease::new("video-generator-1", Duration::from_secs(60));
        store.claim_job(video.id(), &lease).await.unwrap();
        let expired = Lease::new("video-generator-1", Duration::ZERO);
        store
            .start_generating(video.id(), &expired, "projects/p/operations/op-1")
            .await
            .unwrap();

        let report = run_once(&s.janitor, &JanitorSettings::default())
            .await
            .unwrap();
        assert_eq!(report.requeued, 1, "{report:?}");
        let back = store.job(video.id()).await.unwrap();
        assert_eq!(back.status(), JobStatus::Pending);
        assert_eq!(back.operation_name(), Some("projects/p/operations/op-1"));
        assert!(back.submitted_at().is_some());
        assert_eq!(published(&s, JobKind::Video), [video.id()]);
    }

    #[tokio::test]
    async fn a_lost_pending_job_is_published_once_per_window() {
        let s = setup().await;
        let lost = job(&s, JobKind::Video, 3).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fresh = job(&s, JobKind::Video, 3).await;
        let settings = JanitorSettings {
            lost_after: Duration::from_millis(200),
            ..JanitorSettings::default()
        };
        let report = run_once(&s.janitor, &settings).await.unwrap();
        assert_eq!(report.republished, 1, "{report:?}");
        let again = run_once(&s.janitor, &settings).await.unwrap();
        assert_eq!(again.republished, 0, "{again:?}");
        assert_eq!(published(&s, JobKind::Video), [lost.id()]);
        assert_eq!(
            s.janitor.store.job(fresh.id()).await.unwrap().updated_at(),
            fresh.updated_at()
        );
    }

    #[tokio::test]
    async fn dead_letters_fail_idle_pending_jobs_requeue_waiting_and_held_ones_and_are_all_acknowledged()
     {
        let s = setup().await;
        let store = &s.janitor.store;
        let quota = job(&s, JobKind::Image, 3).await;
        let lease = Lease::new("w", Duration::from_secs(60));
        store.claim_job(quota.id(), &lease).await.unwrap();
        let last = JobError::new("rate_limited", "Quota exceeded for imagen", true);
        store
            .release_job(quota.id(), "w", Some(last.clone()))
            .await
            .unwrap();
        let silent = job(&s, JobKind::Image, 3).await;
        let done = job(&s, JobKind::Image, 3).await;
        store.cancel_job(done.id()).await.unwrap();
        // Paid for and watched by the poller; held by a live worker.
        let video = job(&s, JobKind::Video, 3).await;
        let watched = Lease::new("v", Duration::from_secs(600));
        store.claim_job(video.id(), &watched).await.unwrap();
        store
            .start_generating(video.id(), &watched, "operations/op-7")
            .await
            .unwrap();
        let busy = job(&s, JobKind::Image, 3).await;
        store.claim_job(busy.id(), &watched).await.unwrap();
        // Waiting on quota for longer than the subscription delivers.
        let waiting = job(&s, JobKind::Image, 3).await;
        store.claim_job(waiting.id(), &lease).await.unwrap();
        store
            .wait_job(
                waiting.id(),
                "w",
                crate::domain::values::QUOTA_EXHAUSTED,
                JobError::new("rate_limited", "429", true),
            )
            .await
            .unwrap();

        let message = |id: &str| format!(r#"{{"job_id":"{id}"}}"#);
        s.letters
            .push(message(quota.id()), &[(SOURCE_DELIVERY_COUNT, "5")]);
        s.letters
            .push(message(silent.id()), &[(SOURCE_DELIVERY_COUNT, "7")]);
        s.letters.push(message(done.id()), &[]);
        s.letters.push(message(video.id()), &[]);
        s.letters.push(message(busy.id()), &[]);
        s.letters
            .push(message(waiting.id()), &[(SOURCE_DELIVERY_COUNT, "10")]);
        s.letters
            .push(r#"{"prompt":"x","kind":"image"}"#, &[("kind", "image")]);

        let report = run_once(&s.janitor, &JanitorSettings::default())
            .await
            .unwrap();
        assert_eq!(
            (
                report.dead_lettered,
                report.dead_letter_requeued,
                report.dead_letter_other,
                report.dead_letter_skipped
            ),
            (2, 2, 1, 2),
            "{report:?}"
        );
        assert!(s.letters.remaining().is_empty());
        assert_eq!(s.letters.acked().len(), 7);
        // Neither the held job's message nor the waiting job's is lost.
        let mut requeued = published(&s, JobKind::Image);
        requeued.sort();
        let mut want = vec![busy.id().to_string(), waiting.id().to_string()];
        want.sort();
        assert_eq!(requeued, want);
        let still = store.job(waiting.id()).await.unwrap();
        assert_eq!((still.status(), still.attempts()), (JobStatus::Pending, 0));
        let error = store
            .job(quota.id())
            .await
            .unwrap()
            .error()
            .cloned()
            .unwrap();
        assert_eq!(error.code, DEAD_LETTERED);
        assert!(error.message.contains(&last.message), "{error:?}");
        assert!(!error.retryable);
        let error = store
            .job(silent.id())
            .await
            .unwrap()
            .error()
            .cloned()
            .unwrap();
        assert_eq!(error.message, "delivery failed 7 times");
        assert_eq!(
            store.job(done.id()).await.unwrap().status(),
            JobStatus::Cancelled
        );
        assert_eq!(
            store.job(video.id()).await.unwrap().status(),
            JobStatus::Generating
        );
        assert_eq!(
            store.job(busy.id()).await.unwrap().status(),
            JobStatus::Processing
        );
    }

    #[tokio::test]
    async fn a_missing_dead_letter_subscription_fails_that_sweep_only() {
        let mut s = setup().await;
        s.janitor.dead_letters = Arc::new(MemoryDeadLetters::missing());
        let requeue = job(&s, JobKind::Image, 3).await;
        s.janitor
            .store
            .claim_job(requeue.id(), &Lease::new("gone", Duration::ZERO))
            .await
            .unwrap();
        let report = run_once(&s.janitor, &JanitorSettings::default())
            .await
            .unwrap();
        assert_eq!(report.failed_sweeps, ["dead_letters"]);
        assert_eq!((report.errors, report.requeued), (1, 1));
        assert!(!report.is_clean());
    }

    #[tokio::test]
    async fn a_zero_lost_after_is_refused() {
        let s = setup().await;
        let settings = JanitorSettings {
            lost_after: Duration::ZERO,
            ..JanitorSettings::default()
        };
        let e = run_once(&s.janitor, &settings).await.unwrap_err();
        assert!(e.to_string().contains("LOST_AFTER"), "{e}");
    }

    #[test]
    fn the_summary_json_names_the_event_and_every_count() {
        let json = JanitorReport::default().to_json();
        assert_eq!(json["event"], "janitor.summary");
        for field in [
            "requeued",
            "failed_leases",
            "republished",
            "dead_lettered",
            "dead_letter_other",
            "deleted_jobs",
            "deleted_downloads",
            "deleted_rejected",
            "deleted_budgets",
            "errors",
        ] {
            assert_eq!(json[field], 0, "{field}");
        }
    }
}
