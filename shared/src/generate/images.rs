//! The image generator: one claimed job → the model (or placeholders) →
//! `images/{job_id}/{n}.png` in the output bucket → job completed.

use super::outputs::{keep_outputs, write_held};
use super::settle::{answer_model_error, billed_for, moved_on_or_retry, settle_cost};
use super::{Generator, GeneratorCore};
use crate::ack::Handled;
use crate::domain::Lease;
use crate::domain::job::Job;
use crate::domain::values::{FILTERED, JobError, JobKind};
use crate::objects::OutputFile;
use crate::stage::with_store_retries;
use crate::store::Store;
use crate::store::budget::Billed;
use crate::vertex::{GeneratedImage, ImageModel, ImageOutcome, ImageRequest, ModelError};
use async_trait::async_trait;

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
            in_doubt: 0,
        })
    }
}

/// Generates the images of image jobs.
pub type ImageGenerator = GeneratorCore<dyn ImageModel>;

impl GeneratorCore<dyn ImageModel> {
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
        if !filtered.is_empty() {
            tracing::warn!(job_id = %job.id(), reasons = ?filtered, "some samples were filtered");
        }
        let outputs = images
            .into_iter()
            .enumerate()
            .map(|(n, image)| {
                let extension = Self::extension(&image.mime_type);
                OutputFile {
                    name: format!("{}{n}.{extension}", job.output_folder()),
                    data: image.data,
                    content_type: match extension {
                        "jpg" => "image/jpeg",
                        "webp" => "image/webp",
                        _ => "image/png",
                    }
                    .to_string(),
                }
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
    tracing::warn!(job_id = %job.id(), reason = %reasons, event = "job_failed", code = FILTERED, "output filtered");
    match with_store_retries(|| store.fail_job(job.id(), owner, error.clone())).await {
        Ok(_) => Handled::Done(format!("job {} filtered: {reasons}", job.id())),
        Err(e) => moved_on_or_retry(&e),
    }
}

#[async_trait]
impl Generator for ImageGenerator {
    const KIND: JobKind = JobKind::Image;

    async fn run(&self, job: Job, lease: &Lease) -> Handled {
        // Paid for by an earlier attempt whose bucket write failed.
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
        let request = ImageRequest {
            prompt: job.prompt().to_string(),
            params: job.params().clone(),
            model: crate::cost::model_of(&job),
            share: super::share_of(&self.store, &job).await,
        };
        let outcome = if self.settings.is_dry(&job) {
            DryRunImages.generate(&request).await
        } else {
            self.model.generate(&request).await
        };
        // The reservation is settled before the job moves on, while this
        // claim still holds it.
        let owner = Some(lease.owner.as_str());
        match outcome {
            Ok(ImageOutcome::Images {
                images,
                filtered,
                in_doubt,
            }) if !images.is_empty() => {
                // Samples whose request is in doubt may have been billed.
                let billed = Billed::Part {
                    delivered: u32::try_from(images.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(in_doubt),
                    requested: job.params().sample_count.unwrap_or(1).max(1),
                };
                settle_cost(&self.store, &job, owner, billed).await;
                self.keep(&job, lease, images, &filtered).await
            }
            Ok(
                ImageOutcome::Images {
                    filtered: reasons, ..
                }
                | ImageOutcome::Filtered { reasons },
            ) => {
                // Google does not bill outputs its filters withheld.
                settle_cost(&self.store, &job, owner, Billed::Nothing).await;
                fail_filtered(&self.store, &job, owner, &reasons).await
            }
            Err(e) => {
                settle_cost(&self.store, &job, owner, billed_for(&e)).await;
                answer_model_error(&self.store, &job, lease, &e).await
            }
        }
    }
}
