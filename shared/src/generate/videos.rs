//! The video generator: one claimed job → a Veo long-running operation whose
//! name is stored (status `generating`; the poller finishes it), or, in dry
//! run, placeholder MP4s written where Veo would write them.

use super::images::fail_filtered;
use super::{
    Generator, GeneratorCore, GeneratorSettings, Handled, settle_model_error,
    settled_elsewhere_or_retry, with_store_retries,
};
use super::{billed_for, keep_outputs, settle_cost, write_held};
use crate::domain::Lease;
use crate::domain::job::{Job, JobKind};
use crate::objects::{ObjectStore, OutputFile};
use crate::store::Store;
use crate::time::Timestamp;
use crate::vertex::{VideoModel, VideoRequest};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Extra lease time on top of OPERATION_TIMEOUT, so the poller, not a lease
/// expiry, is what times an operation out.
const LEASE_MARGIN: Duration = Duration::from_secs(600);

/// Generates the videos of video jobs.
pub type VideoGenerator = GeneratorCore<dyn VideoModel>;

impl GeneratorCore<dyn VideoModel> {
    /// A generator submitting live jobs to `model` and writing dry-run
    /// placeholders to `objects`.
    pub fn new(
        store: Store,
        objects: Arc<dyn ObjectStore>,
        model: Arc<dyn VideoModel>,
        settings: GeneratorSettings,
    ) -> Self {
        Self::build("video-generator", store, objects, model, settings)
    }

    /// `gs://OUT/videos/{job_id}/`: where Veo writes the job's files.
    pub fn storage_uri(&self, job: &Job) -> String {
        format!("gs://{}/videos/{}/", self.settings.output_bucket, job.id())
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
                settled_elsewhere_or_retry(&e)
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
                name: format!("videos/{}/{folder}/sample_{n}.mp4", job.id()),
                data: crate::placeholder::mp4(
                    &format!("{} sample {n}", job.id()),
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
        if self.settings.is_dry(&job) {
            return self.dry_run(&job, lease).await;
        }
        let request = VideoRequest {
            prompt: job.prompt().to_string(),
            params: job.params().clone(),
            model: self.settings.model_for(&job),
            storage_uri: self.storage_uri(&job),
        };
        match self.model.submit(&request).await {
            // The reservation stays until the poller sees the operation end.
            Ok(operation) => self.watch(&job, lease, &operation, false).await,
            Err(e) => {
                settle_cost(&self.store, &job, Some(&lease.owner), billed_for(&e)).await;
                settle_model_error(&self.store, &job, lease, &e).await
            }
        }
    }
}

/// Fails a generating job whose every video was filtered (used by the poller).
pub(super) async fn fail_filtered_video(store: &Store, job: &Job, reasons: &[String]) -> Handled {
    fail_filtered(store, job, None, reasons).await
}
