//! The image generator: one claimed job → the model (or placeholders) →
//! `images/{job_id}/{n}.png` in the output bucket → job completed.

use super::{
    Generator, GeneratorSettings, Handled, Workers, settle_model_error, settled_elsewhere_or_retry,
    with_store_retries,
};
use crate::domain::Lease;
use crate::domain::job::{FILTERED, Job, JobError, JobKind};
use crate::objects::{JOB_ID_METADATA, ObjectStore};
use crate::store::Store;
use crate::vertex::{GeneratedImage, ImageModel, ImageOutcome, ImageRequest, ModelError};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Placeholder images instead of a model: the dry run.
#[derive(Clone, Copy, Debug, Default)]
pub struct DryRunImages;

#[async_trait]
impl ImageModel for DryRunImages {
    async fn generate(&self, request: &ImageRequest) -> Result<ImageOutcome, ModelError> {
        let samples = request.params.sample_count.unwrap_or(1).max(1);
        let images = (0..samples)
            .map(|n| GeneratedImage {
                mime_type: "image/png".into(),
                data: crate::placeholder::png(
                    &request.prompt,
                    request.params.aspect_ratio.as_deref(),
                    n,
                ),
            })
            .collect();
        Ok(ImageOutcome::Images {
            images,
            filtered: Vec::new(),
        })
    }
}

/// Generates the images of image jobs.
pub struct ImageGenerator {
    store: Store,
    objects: Arc<dyn ObjectStore>,
    model: Arc<dyn ImageModel>,
    settings: GeneratorSettings,
    workers: Workers,
}

impl ImageGenerator {
    /// A generator writing to `objects` and calling `model` for live jobs.
    pub fn new(
        store: Store,
        objects: Arc<dyn ObjectStore>,
        model: Arc<dyn ImageModel>,
        settings: GeneratorSettings,
    ) -> Self {
        Self {
            store,
            objects,
            model,
            settings,
            workers: Workers::new("image-generator"),
        }
    }

    fn extension(mime_type: &str) -> &'static str {
        match mime_type {
            "image/jpeg" | "image/jpg" => "jpg",
            "image/webp" => "webp",
            _ => "png",
        }
    }

    /// Writes the images and completes the job.
    async fn keep(
        &self,
        job: &Job,
        lease: &Lease,
        images: Vec<GeneratedImage>,
        filtered: &[String],
    ) -> Handled {
        let bucket = &self.settings.output_bucket;
        let metadata = BTreeMap::from([(JOB_ID_METADATA.to_string(), job.id.clone())]);
        let mut outputs = Vec::with_capacity(images.len());
        for (n, image) in images.into_iter().enumerate() {
            let name = format!(
                "images/{}/{n}.{}",
                job.id,
                Self::extension(&image.mime_type)
            );
            let written = with_store_retries(|| {
                self.objects.write(
                    bucket,
                    &name,
                    image.data.clone(),
                    &image.mime_type,
                    &metadata,
                )
            })
            .await;
            match written {
                Ok(meta) => outputs.push(meta.uri().to_string()),
                Err(e) => {
                    // The images are lost with this attempt; the next one
                    // generates them again.
                    tracing::error!(job_id = %job.id, error = %e, "could not write an output");
                    let error = JobError::new("storage", e.to_string(), true);
                    return match self
                        .store
                        .release_job(&job.id, &lease.owner, Some(error))
                        .await
                    {
                        Ok(_) => Handled::Retry {
                            rate_limited: false,
                            reason: e.to_string(),
                        },
                        Err(e) => settled_elsewhere_or_retry(&e),
                    };
                }
            }
        }
        if !filtered.is_empty() {
            tracing::warn!(job_id = %job.id, reasons = ?filtered, "some samples were filtered");
        }
        let count = outputs.len();
        match with_store_retries(|| {
            self.store
                .complete_job(&job.id, &lease.owner, outputs.clone())
        })
        .await
        {
            Ok(_) => {
                tracing::info!(job_id = %job.id, kind = "image", outputs = count, event = "job_completed", "job completed");
                Handled::Done(format!("job {} completed with {count} images", job.id))
            }
            Err(e) => settled_elsewhere_or_retry(&e),
        }
    }
}

/// Fails a job whose every output the safety filters withheld. Final: it is
/// never sent to the model again (Google does not bill filtered outputs).
pub(super) async fn fail_filtered(
    store: &Store,
    job: &Job,
    owner: Option<&str>,
    reasons: &[String],
) -> Handled {
    let reasons = if reasons.is_empty() {
        "no reason given".to_string()
    } else {
        reasons.join("; ")
    };
    let error = JobError::new(
        FILTERED,
        format!("the safety filters withheld every output: {reasons}"),
        false,
    );
    tracing::warn!(job_id = %job.id, reason = %reasons, event = "job_failed", code = FILTERED, "output filtered");
    match with_store_retries(|| store.fail_job(&job.id, owner, error.clone())).await {
        Ok(_) => Handled::Done(format!("job {} filtered: {reasons}", job.id)),
        Err(e) => settled_elsewhere_or_retry(&e),
    }
}

#[async_trait]
impl Generator for ImageGenerator {
    const KIND: JobKind = JobKind::Image;

    fn store(&self) -> &Store {
        &self.store
    }
    fn workers(&self) -> &Workers {
        &self.workers
    }
    fn settings(&self) -> &GeneratorSettings {
        &self.settings
    }

    async fn run(&self, job: Job, lease: &Lease) -> Handled {
        let request = ImageRequest {
            prompt: job.prompt.clone(),
            params: job.params.clone(),
            model: self.settings.model_for(&job),
        };
        let outcome = if self.settings.is_dry(&job) {
            DryRunImages.generate(&request).await
        } else {
            self.model.generate(&request).await
        };
        match outcome {
            Ok(ImageOutcome::Images { images, filtered }) if !images.is_empty() => {
                self.keep(&job, lease, images, &filtered).await
            }
            Ok(
                ImageOutcome::Images {
                    filtered: reasons, ..
                }
                | ImageOutcome::Filtered { reasons },
            ) => fail_filtered(&self.store, &job, Some(&lease.owner), &reasons).await,
            Err(e) => settle_model_error(&self.store, &job, lease, &e).await,
        }
    }
}
