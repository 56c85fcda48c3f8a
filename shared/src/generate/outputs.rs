//! Writing a job's outputs to the output bucket, and holding them in the
//! store when the bucket will not take them: they are paid for.

use super::settle::moved_on_or_retry;
use crate::ack::Handled;
use crate::domain::Lease;
use crate::domain::gs_uri::GsUri;
use crate::domain::job::Job;
use crate::domain::values::JobError;
use crate::error::{Error, Result};
use crate::objects::OutputFile;
use crate::stage::{report_misconfiguration, with_store_retries};
use crate::store::Store;
use std::time::Duration;

/// Tries of one output write before the outputs are held in the store.
const OUTPUT_WRITE_TRIES: u32 = 3;
/// The longest one output write may take. With the tries and their pauses
/// (about a minute in all), a generator gives up on the bucket well inside
/// the push deadline (540 s), so it is still there to hold the outputs.
const OUTPUT_WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes one output, a few times over a bounded time.
async fn write_output(
    objects: &dyn crate::objects::ObjectStore,
    bucket: &str,
    output: &OutputFile,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<GsUri> {
    let mut pause = Duration::from_secs(1);
    let mut tries = 0;
    loop {
        let write = objects.write(
            bucket,
            &output.name,
            output.data.clone(),
            &output.content_type,
            metadata,
        );
        let outcome = match tokio::time::timeout(OUTPUT_WRITE_TIMEOUT, write).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::objects(
                format!("writing gs://{bucket}/{}", output.name),
                format!("no answer within {OUTPUT_WRITE_TIMEOUT:?}"),
                true,
            )),
        };
        tries += 1;
        match outcome {
            Ok(meta) => return Ok(meta.uri()),
            Err(e) if e.is_retryable() && tries < OUTPUT_WRITE_TRIES => {
                tracing::warn!(error = %e, tries, "an output write failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 3;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes a claimed job's outputs to the output bucket (tagged with the job
/// id) and completes the job. Outputs are paid for, so if the bucket will not
/// take them (after a few tries, well inside the push deadline) they are
/// held in the store and the job waits as `storage_unavailable`, without
/// using up an attempt: the next claim writes them from there instead of
/// calling the model again. Outputs a job held before are dropped from the
/// store once written.
pub(crate) async fn keep_outputs(
    store: &Store,
    objects: &dyn crate::objects::ObjectStore,
    bucket: &str,
    job: &Job,
    lease: &Lease,
    outputs: Vec<OutputFile>,
) -> Handled {
    let metadata = std::collections::BTreeMap::from([(
        crate::objects::JOB_ID_METADATA.to_string(),
        job.id().to_string(),
    )]);
    let mut uris = Vec::with_capacity(outputs.len());
    for output in &outputs {
        match write_output(objects, bucket, output, &metadata).await {
            Ok(uri) => uris.push(uri),
            Err(e) => return hold(store, job, lease, &outputs, &e).await,
        }
    }
    let count = uris.len();
    match with_store_retries(|| store.complete_job(job.id(), &lease.owner, uris.clone())).await {
        Ok(_) => {
            if !job.held().is_empty()
                && let Err(e) = store.drop_held(job.held()).await
            {
                // Retention removes them in a few days.
                tracing::warn!(job_id = %job.id(), error = %e, "could not delete the held copies of written outputs");
            }
            tracing::info!(job_id = %job.id(), kind = %job.kind(), outputs = count, event = "job_completed", "job completed");
            Handled::Done(format!("job {} completed with {count} outputs", job.id()))
        }
        Err(e) => moved_on_or_retry(&e),
    }
}

/// Keeps paid outputs the bucket would not take: in the store, with the
/// job waiting for storage. Only if the store fails too is the attempt
/// given back the old way (and the outputs lost: said at ERROR).
async fn hold(
    store: &Store,
    job: &Job,
    lease: &Lease,
    outputs: &[OutputFile],
    e: &Error,
) -> Handled {
    use crate::domain::values::STORAGE_UNAVAILABLE;
    let denied = e.is_permission_denied();
    let error = JobError::new(STORAGE_UNAVAILABLE, e.to_string(), true);
    if denied {
        report_misconfiguration("the output bucket refuses this stage's writes", e);
    }
    let held =
        with_store_retries(|| store.hold_outputs(job, &lease.owner, outputs, error.clone())).await;
    match held {
        Ok(_) => {
            tracing::warn!(job_id = %job.id(), outputs = outputs.len(), error = %e, event = "outputs_held", "the output bucket would not take the outputs; they are held in the store for the next attempt");
            Handled::Retry {
                rate_limited: false,
                reason: format!("outputs held until the bucket takes them: {e}"),
            }
        }
        Err(Error::Transition { .. } | Error::NotFound { .. }) => Handled::Duplicate(format!(
            "job {} moved on while its outputs were held",
            job.id()
        )),
        Err(hold_error) => {
            tracing::error!(job_id = %job.id(), error = %e, %hold_error, "could not write the outputs nor hold them in the store; they are lost");
            let error = JobError::new("storage", e.to_string(), true);
            match store.release_job(job.id(), &lease.owner, Some(error)).await {
                Ok(_) => Handled::Retry {
                    rate_limited: false,
                    reason: e.to_string(),
                },
                Err(e) => moved_on_or_retry(&e),
            }
        }
    }
}

/// Writes the outputs a job holds (generated and paid for by an earlier
/// attempt) and completes it: no model is called.
pub(crate) async fn write_held(
    store: &Store,
    objects: &dyn crate::objects::ObjectStore,
    bucket: &str,
    job: &Job,
    lease: &Lease,
) -> Handled {
    let mut outputs = Vec::with_capacity(job.held().len());
    for held in job.held() {
        match with_store_retries(|| store.held_bytes(held)).await {
            Ok(data) => outputs.push(OutputFile {
                name: held.name.clone(),
                content_type: held.content_type.clone(),
                data,
            }),
            Err(e) if e.is_retryable() => {
                let error = JobError::new(
                    crate::domain::values::STORAGE_UNAVAILABLE,
                    e.to_string(),
                    true,
                );
                return match store
                    .wait_job(
                        job.id(),
                        &lease.owner,
                        crate::domain::values::STORAGE_UNAVAILABLE,
                        error,
                    )
                    .await
                {
                    Ok(_) => Handled::store_trouble(&e),
                    Err(e) => moved_on_or_retry(&e),
                };
            }
            Err(e) => {
                let error = JobError::new(
                    "held_output_lost",
                    format!("a paid output held in the store cannot be read back: {e}"),
                    false,
                );
                tracing::error!(job_id = %job.id(), error = %e, event = "job_failed", "a held output is lost");
                return match store.fail_job(job.id(), Some(&lease.owner), error).await {
                    Ok(_) => {
                        Handled::Done(format!("job {} failed: a held output is lost", job.id()))
                    }
                    Err(e) => moved_on_or_retry(&e),
                };
            }
        }
    }
    tracing::info!(job_id = %job.id(), outputs = outputs.len(), "writing outputs held from an earlier attempt");
    keep_outputs(store, objects, bucket, job, lease, outputs).await
}
