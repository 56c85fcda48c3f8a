//! Job events: one message on `asmr-job-events` per terminal transition, so
//! downstream systems subscribe instead of polling.
//!
//! The [`crate::store::Store`] raises them itself after the write that made a
//! job terminal, whichever stage or command made it, so no code path can
//! forget one. A job is terminal when it is `delivered`, `failed` or
//! `cancelled`, or `completed` with no output to deliver.
//!
//! The event goes out after the write is stored. If publishing fails after a
//! few tries the event is logged at ERROR (`event = "job_event.lost"`), with
//! the job unchanged: the store, not the event stream, is the truth.

use crate::bus::{Bus, publish_json};
use crate::domain::job::{Delivery, Job, JobError, JobKind, JobStatus};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The public shape of a job event (DESIGN.md, "Messages and events").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job_id: String,
    /// Its terminal status.
    pub status: JobStatus,
    /// Image or video.
    pub kind: JobKind,
    /// `gs://` URIs the model produced.
    pub outputs: Vec<String>,
    /// Where each output was copied.
    pub deliveries: Vec<Delivery>,
    /// Why it failed, for a failed or cancelled job.
    pub error: Option<JobError>,
}

impl JobEvent {
    /// The event of `job`.
    pub fn of(job: &Job) -> Self {
        Self {
            job_id: job.id.clone(),
            status: job.status,
            kind: job.kind,
            outputs: job.outputs.clone(),
            deliveries: job.deliveries.clone(),
            error: job.error.clone(),
        }
    }

    /// Message attributes, so that a subscription can filter on them
    /// (`attributes.status = "failed"`).
    pub fn attributes(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("job_id".to_string(), self.job_id.clone()),
            ("status".to_string(), self.status.as_str().to_string()),
            ("kind".to_string(), self.kind.as_str().to_string()),
        ])
    }
}

/// Whether a job has reached the end of the pipeline.
pub fn is_terminal(job: &Job) -> bool {
    match job.status {
        JobStatus::Delivered | JobStatus::Failed | JobStatus::Cancelled => true,
        JobStatus::Completed => job.outputs.is_empty(),
        JobStatus::Pending | JobStatus::Processing | JobStatus::Generating => false,
    }
}

/// Whether the write from `before` to `after` is the one that made the job
/// terminal.
pub fn became_terminal(before: &Job, after: &Job) -> bool {
    is_terminal(after) && (!is_terminal(before) || before.status != after.status)
}

/// Told of every job that just became terminal.
#[async_trait]
pub trait JobEvents: Send + Sync {
    /// Called once per terminal transition, after it was stored.
    async fn finished(&self, job: &Job);
}

/// Publishes job events to a topic.
pub struct BusJobEvents {
    bus: Arc<dyn Bus>,
    topic: String,
}

impl BusJobEvents {
    /// Events for `topic` (normally [`crate::bus::Topics::job_events`]).
    pub fn new(bus: Arc<dyn Bus>, topic: impl Into<String>) -> Self {
        Self {
            bus,
            topic: topic.into(),
        }
    }
}

/// Tries before an event is given up as lost.
const PUBLISH_TRIES: u32 = 3;

#[async_trait]
impl JobEvents for BusJobEvents {
    async fn finished(&self, job: &Job) {
        let event = JobEvent::of(job);
        let attributes = event.attributes();
        let mut last_error = None;
        for attempt in 0..PUBLISH_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            match publish_json(self.bus.as_ref(), &self.topic, &event, &attributes).await {
                Ok(message_id) => {
                    tracing::debug!(
                        event = "job_event.published",
                        job_id = %job.id,
                        status = job.status.as_str(),
                        message_id,
                        "job event published"
                    );
                    return;
                }
                // A missing topic will not appear by trying again.
                Err(e @ crate::error::Error::NotFound { .. }) => {
                    last_error = Some(e);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(error) = last_error {
            tracing::error!(
                event = "job_event.lost",
                job_id = %job.id,
                status = job.status.as_str(),
                topic = %self.topic,
                %error,
                "could not publish the job event"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::domain::job::NewJob;
    use crate::time::Timestamp;

    fn job(status: JobStatus, outputs: &[&str]) -> Job {
        let mut job = Job::new(
            NewJob::new(
                "a quiet rain on a window",
                crate::domain::job::JobKind::Image,
            ),
            Timestamp::now(),
        );
        job.status = status;
        job.outputs = outputs.iter().map(|s| s.to_string()).collect();
        job
    }

    #[test]
    fn terminal_statuses_are_the_ends_of_the_pipeline() {
        let out = ["gs://out/images/j/0.png"];
        for (status, outputs, terminal) in [
            (JobStatus::Pending, &out[..0], false),
            (JobStatus::Processing, &out[..0], false),
            (JobStatus::Generating, &out[..0], false),
            (JobStatus::Completed, &out[..], false),
            (JobStatus::Completed, &out[..0], true),
            (JobStatus::Delivered, &out[..], true),
            (JobStatus::Failed, &out[..0], true),
            (JobStatus::Cancelled, &out[..0], true),
        ] {
            assert_eq!(
                is_terminal(&job(status, outputs)),
                terminal,
                "{status:?} with {} outputs",
                outputs.len()
            );
        }
    }

    #[test]
    fn only_the_write_that_ends_a_job_raises_an_event() {
        let processing = job(JobStatus::Processing, &[]);
        let failed = job(JobStatus::Failed, &[]);
        let delivered = job(JobStatus::Delivered, &["gs://o/images/j/0.png"]);
        assert!(became_terminal(&processing, &failed));
        assert!(
            !became_terminal(&failed, &failed),
            "a rewrite of a failed job"
        );
        assert!(!became_terminal(&delivered, &delivered));
        assert!(!became_terminal(&processing, &processing));
    }

    #[tokio::test]
    async fn an_event_carries_the_documented_fields_and_filterable_attributes() {
        let bus = Arc::new(MemoryBus::new());
        bus.ensure_topic("asmr-job-events").await.unwrap();
        let events = BusJobEvents::new(bus.clone(), "asmr-job-events");
        let mut failed = job(JobStatus::Failed, &[]);
        failed.error = Some(JobError::new(
            "filtered",
            "blocked by the safety filter",
            false,
        ));
        events.finished(&failed).await;

        let published = bus.published("asmr-job-events");
        assert_eq!(published.len(), 1);
        let body: serde_json::Value = serde_json::from_slice(&published[0].data).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "job_id": failed.id,
                "status": "failed",
                "kind": "image",
                "outputs": [],
                "deliveries": [],
                "error": {"code": "filtered", "message": "blocked by the safety filter", "retryable": false},
            })
        );
        assert_eq!(published[0].attributes["status"], "failed");
        assert_eq!(published[0].attributes["kind"], "image");
    }
}
