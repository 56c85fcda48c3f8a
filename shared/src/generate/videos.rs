//! The video generator: one claimed job → a Veo long-running operation whose
//! name is stored (status `generating`; the poller finishes it), or, in dry
//! run, placeholder MP4s written where Veo would write them.

use super::images::fail_filtered;
use super::outputs::{keep_outputs, write_held};
use super::settle::{answer_model_error, billed_for, moved_on_or_retry, settle_cost};
use super::{Generator, GeneratorCore};
use crate::ack::Handled;
use crate::domain::Lease;
use crate::domain::job::Job;
use crate::domain::values::{FIRST_FRAME_MISSING, FirstFrame};
use crate::domain::values::{JobError, JobKind, MISCONFIGURED};
use crate::objects::OutputFile;
use crate::stage::{report_misconfiguration, with_store_retries};
use crate::store::Store;
use crate::store::budget::Billed;
use crate::time::Timestamp;
use crate::vertex::{VideoModel, VideoRequest};
use async_trait::async_trait;
use std::time::Duration;

/// Extra lease time on top of OPERATION_TIMEOUT, so the poller, not a lease
/// expiry, is what times an operation out.
const LEASE_MARGIN: Duration = Duration::from_secs(600);

/// Generates the videos of video jobs.
pub type VideoGenerator = GeneratorCore<dyn VideoModel>;

impl GeneratorCore<dyn VideoModel> {
    /// `gs://OUT/videos/{job_id}/` (below the tenant's prefix): where Veo
    /// writes the job's files.
    pub fn storage_uri(&self, job: &Job) -> String {
        format!(
            "gs://{}/{}",
            self.settings.output_bucket,
            job.output_folder()
        )
    }

    /// The lease of a generating job: as long as the operation may take.
    fn operation_lease(&self, lease: &Lease) -> Lease {
        Lease::new(
            lease.owner.clone(),
            self.settings.operation_timeout + LEASE_MARGIN,
        )
    }

    /// Records the operation; on failure says loudly which operation was
    /// lost, since the next attempt will submit (and pay) again.
    async fn watch(&self, job: &Job, lease: &Lease, operation: &str, resumed: bool) -> Handled {
        let lease = self.operation_lease(lease);
        match with_store_retries(|| self.store.start_generating(job.id(), &lease, operation)).await
        {
            Ok(_) => {
                tracing::info!(job_id = %job.id(), operation, resumed, event = "job_generating", "operation submitted");
                Handled::Done(format!("job {} is generating ({operation})", job.id()))
            }
            Err(e) => {
                tracing::error!(job_id = %job.id(), operation, error = %e, "could not record the submitted operation");
                moved_on_or_retry(&e)
            }
        }
    }

    /// Writes placeholder clips as Veo lays them out
    /// (`videos/{job}/{timestamp}/sample_{n}.mp4`) and completes the job.
    async fn dry_run(&self, job: &Job, lease: &Lease) -> Handled {
        let folder = Timestamp::now().as_datetime().format("%Y%m%d%H%M%S%6f");
        let samples = job.params().sample_count.unwrap_or(1).max(1);
        let outputs = (0..samples)
            .map(|n| OutputFile {
                name: format!("{}{folder}/sample_{n}.mp4", job.output_folder()),
                data: crate::placeholder::mp4(
                    &placeholder_label(job, n),
                    job.params().aspect_ratio.as_deref(),
                ),
                content_type: "video/mp4".to_string(),
            })
            .collect();
        keep_outputs(
            &self.store,
            self.objects.as_ref(),
            &self.settings.output_bucket,
            job,
            lease,
            outputs,
        )
        .await
    }
}

impl GeneratorCore<dyn VideoModel> {
    /// Makes sure the image a video opens on is in its bucket before
    /// anything is sent or paid for. A missing one fails the job
    /// ([`FIRST_FRAME_MISSING`]); a bucket that cannot say gives the job
    /// back. Either way the claim's reservation is released. `None`: go on.
    async fn check_first_frame(&self, job: &Job, lease: &Lease) -> Option<Handled> {
        let frame = job.first_frame()?;
        let found = match frame.location() {
            Some((bucket, name)) => self.objects.metadata(bucket, name).await,
            None => Ok(None),
        };
        let owner = lease.owner.as_str();
        if matches!(found, Ok(Some(_))) {
            return None;
        }
        settle_cost(&self.store, job, Some(owner), Billed::Nothing).await;
        Some(match found {
            Ok(_) => self.fail_first_frame_missing(job, owner, frame).await,
            Err(e) => self.give_back(job, owner, frame, &e).await,
        })
    }

    async fn fail_first_frame_missing(
        &self,
        job: &Job,
        owner: &str,
        frame: &FirstFrame,
    ) -> Handled {
        let message = format!(
            "its first frame {} is not in Cloud Storage; nothing was sent to Veo",
            frame.gcs_uri
        );
        tracing::warn!(job_id = %job.id(), first_frame = %frame.gcs_uri, event = "job_failed", code = FIRST_FRAME_MISSING, "the first frame is missing");
        let error = JobError::new(FIRST_FRAME_MISSING, message.clone(), false);
        match with_store_retries(|| self.store.fail_job(job.id(), Some(owner), error.clone())).await
        {
            Ok(_) => Handled::Done(format!("job {} failed: {message}", job.id())),
            Err(e) => moved_on_or_retry(&e),
        }
    }

    /// The bucket could not say whether the first frame is there: the job
    /// goes back to the queue (to wait, without an attempt, when the stage
    /// may not read the bucket).
    async fn give_back(
        &self,
        job: &Job,
        owner: &str,
        frame: &FirstFrame,
        e: &crate::error::Error,
    ) -> Handled {
        let error = JobError::new(
            "storage",
            format!("could not look up the first frame {}: {e}", frame.gcs_uri),
            true,
        );
        let written = if e.is_permission_denied() {
            report_misconfiguration("the bucket of a first frame refuses this stage", e);
            self.store
                .wait_job(job.id(), owner, MISCONFIGURED, error)
                .await
        } else {
            tracing::warn!(job_id = %job.id(), error = %e, "could not look up the first frame; the job goes back to the queue");
            self.store.release_job(job.id(), owner, Some(error)).await
        };
        match written {
            Ok(_) => Handled::Retry {
                rate_limited: false,
                reason: e.to_string(),
            },
            Err(e) => moved_on_or_retry(&e),
        }
    }
}

/// What tells a dry-run clip apart: its job, its first frame if it has one,
/// and its sample number.
fn placeholder_label(job: &Job, sample: u32) -> String {
    match job.first_frame() {
        Some(frame) => format!("{} from {} sample {sample}", job.id(), frame.gcs_uri),
        None => format!("{} sample {sample}", job.id()),
    }
}

#[async_trait]
impl Generator for VideoGenerator {
    const KIND: JobKind = JobKind::Video;

    async fn run(&self, job: Job, lease: &Lease) -> Handled {
        // A job reset while its operation ran: watch that operation again
        // instead of paying for a second one.
        if let Some(operation) = job.operation_name().map(str::to_string) {
            return self.watch(&job, lease, &operation, true).await;
        }
        if !job.held().is_empty() {
            return write_held(
                &self.store,
                self.objects.as_ref(),
                &self.settings.output_bucket,
                &job,
                lease,
            )
            .await;
        }
        if let Some(handled) = self.check_first_frame(&job, lease).await {
            return handled;
        }
        if self.settings.is_dry(&job) {
            return self.dry_run(&job, lease).await;
        }
        let request = VideoRequest {
            prompt: job.prompt().to_string(),
            params: job.params().clone(),
            model: crate::cost::model_of(&job),
            storage_uri: self.storage_uri(&job),
            first_frame: job.first_frame().cloned(),
            share: super::share_of(&self.store, &job).await,
        };
        match self.model.submit(&request).await {
            // The reservation stays until the poller sees the operation end.
            Ok(operation) => self.watch(&job, lease, &operation, false).await,
            Err(e) => {
                settle_cost(&self.store, &job, Some(&lease.owner), billed_for(&e)).await;
                answer_model_error(&self.store, &job, lease, &e).await
            }
        }
    }
}

/// Fails a generating job whose every video was filtered (used by the poller).
pub(super) async fn fail_filtered_video(store: &Store, job: &Job, reasons: &[String]) -> Handled {
    fail_filtered(store, job, None, reasons).await
}
