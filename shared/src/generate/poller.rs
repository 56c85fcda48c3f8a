//! The video poller: asks Vertex about every `generating` job's operation,
//! completes the finished ones, fails the failed, filtered and timed-out
//! ones, and repeats every POLLING_INTERVAL until nothing is generating or
//! its time budget is spent. It keeps no state of its own: a fresh instance
//! resumes from the operation names in the store.
//!
//! A job whose paid submit has an unknown outcome has no operation to ask
//! about: the poller looks for its video under its output prefix
//! (`videos/{job}/`), where Veo writes, and completes the job with what it
//! finds. OPERATION_TIMEOUT counts from the submit whatever the polls
//! answer: an operation that cannot be polled still times out.

use super::settle::{moved_on_or_retry, settle_cost};
use super::videos::fail_filtered_video;
use crate::ack::Handled;
use crate::domain::gs_uri::GsUri;
use crate::domain::job::Job;
use crate::domain::values::{JobError, JobStatus, OPERATION_FAILED, SUBMIT_UNKNOWN};
use crate::error::Result;
use crate::objects::ObjectStore;
use crate::stage::{report_misconfiguration, with_store_retries};
use crate::store::budget::Billed;
use crate::store::{JobFilter, Store};
use crate::time::Timestamp;
use crate::vertex::{ErrorClass, OperationState, VideoModel};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::values::TIMED_OUT;
/// Operations polled at once.
const CONCURRENT_POLLS: usize = 8;

/// Poller settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollerSettings {
    /// OPERATION_TIMEOUT: an operation older than this fails as timed out.
    pub operation_timeout: Duration,
    /// POLLING_INTERVAL: the pause between rounds.
    pub polling_interval: Duration,
    /// Stop after this long (the Cloud Run job's task budget).
    pub max_runtime: Duration,
    /// GCS_OUTPUT_BUCKET: where videos of unknown submits are looked for.
    pub output_bucket: String,
}

/// What the poller saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PollReport {
    /// Rounds run.
    pub rounds: u64,
    /// Operations asked about.
    pub polled: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Jobs failed by the operation's error.
    pub failed: u64,
    /// Jobs whose videos were all filtered.
    pub filtered: u64,
    /// Jobs whose operation ran too long.
    pub timed_out: u64,
    /// Operations still running after the last round.
    pub running: u64,
    /// Polls that failed transiently (tried again next round).
    pub errors: u64,
}

impl PollReport {
    fn add(&mut self, other: &PollReport) {
        self.polled += other.polled;
        self.completed += other.completed;
        self.failed += other.failed;
        self.filtered += other.filtered;
        self.timed_out += other.timed_out;
        self.errors += other.errors;
        self.running = other.running;
    }
}

/// Watches the operations of generating video jobs.
pub struct VideoPoller {
    store: Store,
    model: Arc<dyn VideoModel>,
    objects: Arc<dyn ObjectStore>,
    settings: PollerSettings,
}

enum Seen {
    Completed,
    Failed,
    Filtered,
    TimedOut,
    Running,
    Error,
    Skipped,
}

impl VideoPoller {
    /// A poller over `store`, asking `model`, and looking in `objects` for
    /// the videos of submits whose outcome is unknown.
    pub fn new(
        store: Store,
        model: Arc<dyn VideoModel>,
        objects: Arc<dyn ObjectStore>,
        settings: PollerSettings,
    ) -> Self {
        Self {
            store,
            model,
            objects,
            settings,
        }
    }

    async fn generating_jobs(&self) -> Result<Vec<Job>> {
        self.store
            .all_jobs(&JobFilter::status(JobStatus::Generating))
            .await
    }

    fn timed_out(&self, job: &Job, now: Timestamp) -> bool {
        let since = job.submitted_at().unwrap_or(job.updated_at());
        since.plus(self.settings.operation_timeout) <= now
    }

    async fn fail(&self, job: &Job, error: JobError) -> Handled {
        match with_store_retries(|| self.store.fail_job(job.id(), None, error.clone())).await {
            Ok(_) => Handled::Done(String::new()),
            Err(e) => moved_on_or_retry(&e),
        }
    }

    async fn finish(&self, job: &Job, videos: Vec<GsUri>) -> Seen {
        match with_store_retries(|| self.store.finish_operation(job.id(), videos.clone())).await {
            Ok(_) => {
                tracing::info!(job_id = %job.id(), kind = "video", outputs = videos.len(), event = "job_completed", "job completed");
                Seen::Completed
            }
            Err(e) => match moved_on_or_retry(&e) {
                Handled::Duplicate(_) => Seen::Skipped,
                _ => Seen::Error,
            },
        }
    }

    async fn fail_as(&self, job: &Job, error: JobError, seen: Seen) -> Seen {
        match self.fail(job, error).await {
            Handled::Done(_) => seen,
            Handled::Duplicate(_) => Seen::Skipped,
            _ => Seen::Error,
        }
    }

    /// A job whose submit's outcome is unknown: its video, if Veo made one,
    /// is under `videos/{job}/`. The cost was booked when the outcome became
    /// unknown.
    async fn look_for_output(&self, job: &Job, now: Timestamp) -> Seen {
        let prefix = job.output_folder();
        let found = match self
            .objects
            .list(&self.settings.output_bucket, &prefix)
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(job_id = %job.id(), error = %e, "could not look for the output of an unknown submit; trying again next round");
                return Seen::Error;
            }
        };
        let videos: Vec<GsUri> = found
            .iter()
            .filter(|meta| meta.name.ends_with(".mp4"))
            .map(|meta| meta.uri())
            .collect();
        let wanted = usize::try_from(job.params().sample_count.unwrap_or(1).max(1)).unwrap_or(1);
        // Veo writes every sample before its operation ends; fewer than asked
        // is complete only once no more can be expected.
        if videos.len() >= wanted || (!videos.is_empty() && self.timed_out(job, now)) {
            tracing::info!(job_id = %job.id(), outputs = videos.len(), "the video of an unknown submit appeared under its prefix");
            return self.finish(job, videos).await;
        }
        if !self.timed_out(job, now) {
            return Seen::Running;
        }
        let error = JobError::new(
            SUBMIT_UNKNOWN,
            format!(
                "its paid submit got no answer, and no video appeared under gs://{}/{prefix} within {}; the cost is booked as spent. A video that still arrives completes the job; `asmr retry --resubmit {}` pays for a new one",
                self.settings.output_bucket,
                humantime_like(self.settings.operation_timeout),
                job.id()
            ),
            false,
        );
        tracing::warn!(job_id = %job.id(), event = "job_failed", code = SUBMIT_UNKNOWN, "no output appeared for an unknown submit");
        self.fail_as(job, error, Seen::TimedOut).await
    }

    async fn check(&self, job: &Job) -> Seen {
        let now = Timestamp::now();
        if job.awaits_output() {
            return self.look_for_output(job, now).await;
        }
        let Some(operation) = job.operation_name() else {
            return Seen::Skipped;
        };
        let state = self.model.poll(operation).await;
        let timed_out = self.timed_out(job, now);
        // The submit's reservation is settled before the job moves on: spent
        // for the videos made, released for those the filters withheld;
        // spent in full when the operation failed or ran out of time, since
        // whether Google billed it is not known.
        let billed = match &state {
            Ok(OperationState::Done { videos }) => Some(Billed::Part {
                delivered: u32::try_from(videos.len()).unwrap_or(u32::MAX),
                requested: job.params().sample_count.unwrap_or(1).max(1),
            }),
            Ok(OperationState::Filtered { .. }) => Some(Billed::Nothing),
            Ok(OperationState::Failed { .. }) => Some(Billed::All),
            Err(e) if e.class == ErrorClass::Permanent => Some(Billed::All),
            Ok(OperationState::Running) | Err(_) if timed_out => Some(Billed::All),
            Ok(OperationState::Running) | Err(_) => None,
        };
        if let Some(billed) = billed {
            settle_cost(&self.store, job, None, billed).await;
        }
        match state {
            Ok(OperationState::Done { videos }) => self.finish(job, videos).await,
            Ok(OperationState::Filtered { reasons }) => {
                match fail_filtered_video(&self.store, job, &reasons).await {
                    Handled::Done(_) => Seen::Filtered,
                    Handled::Duplicate(_) => Seen::Skipped,
                    _ => Seen::Error,
                }
            }
            Ok(OperationState::Failed { code, message }) => {
                tracing::warn!(job_id = %job.id(), code, message, event = "job_failed", "the operation failed");
                let error =
                    JobError::new(OPERATION_FAILED, format!("code {code}: {message}"), false);
                self.fail_as(job, error, Seen::Failed).await
            }
            Err(e) if e.class == ErrorClass::Permanent => {
                tracing::warn!(job_id = %job.id(), operation, error = %e, event = "job_failed", "the operation cannot be polled");
                let error = JobError::new(e.code.clone(), e.message.clone(), false);
                self.fail_as(job, error, Seen::Failed).await
            }
            // OPERATION_TIMEOUT counts from the submit, whatever the polls
            // answer: an operation that cannot be polled times out too.
            Ok(OperationState::Running) | Err(_) if timed_out => {
                let how = match &state {
                    Err(e) => format!(" (its last poll failed: {e})"),
                    _ => String::new(),
                };
                let error = JobError::new(
                    TIMED_OUT,
                    format!(
                        "operation {operation} did not finish within {}{how}; if its video still arrives, the job completes",
                        humantime_like(self.settings.operation_timeout)
                    ),
                    false,
                );
                tracing::warn!(job_id = %job.id(), operation, event = "job_failed", code = TIMED_OUT, "operation timed out");
                self.fail_as(job, error, Seen::TimedOut).await
            }
            Ok(OperationState::Running) => Seen::Running,
            Err(e) => {
                if e.class == ErrorClass::Misconfigured {
                    report_misconfiguration("Vertex AI refuses this poller's requests", &e);
                } else {
                    tracing::warn!(job_id = %job.id(), operation, error = %e, "polling failed; trying again next round");
                }
                Seen::Error
            }
        }
    }

    /// One pass over every generating job.
    pub async fn round(&self) -> Result<PollReport> {
        let jobs = self.generating_jobs().await?;
        let seen: Vec<Seen> = futures::stream::iter(&jobs)
            .map(|job| self.check(job))
            .buffer_unordered(CONCURRENT_POLLS)
            .collect()
            .await;
        let mut report = PollReport {
            rounds: 1,
            ..PollReport::default()
        };
        for outcome in seen {
            report.polled += 1;
            match outcome {
                Seen::Completed => report.completed += 1,
                Seen::Failed => report.failed += 1,
                Seen::Filtered => report.filtered += 1,
                Seen::TimedOut => report.timed_out += 1,
                Seen::Running => report.running += 1,
                Seen::Error => {
                    report.errors += 1;
                    report.running += 1;
                }
                Seen::Skipped => report.polled -= 1,
            }
        }
        Ok(report)
    }

    /// Rounds every POLLING_INTERVAL until nothing is generating or the time
    /// budget would be exceeded.
    pub async fn run(&self) -> Result<PollReport> {
        let started = Instant::now();
        let mut total = PollReport::default();
        loop {
            let report = self.round().await?;
            total.rounds += 1;
            total.add(&report);
            tracing::info!(round = total.rounds, report = ?report, "poll round");
            if report.running == 0
                || started.elapsed() + self.settings.polling_interval >= self.settings.max_runtime
            {
                return Ok(total);
            }
            tokio::time::sleep(self.settings.polling_interval).await;
        }
    }
}

fn humantime_like(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs.is_multiple_of(60) && secs >= 60 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}
