//! Job events: one message on `asmr-job-events` per terminal transition, and
//! one when an image is approved, so downstream systems (the intake's
//! auto-promotion among them) subscribe instead of polling. A job with a
//! webhook also raises one for each event its webhook asks for (its first
//! start, its first outputs); those carry the webhook call and a
//! `webhook_events` attribute, and their `status` says where the job is.
//!
//! The [`crate::store::Store`] raises them itself, whichever stage or command
//! ended the job, so no code path can forget one. A job is terminal when it
//! is `delivered`, `failed` or `cancelled`, or `completed` with no output to
//! deliver.
//!
//! No event is lost: the event is written to the `outbox` collection in the
//! same atomic commit as the transition that raised it, then published, then
//! deleted from the outbox. If the process dies in between, or Pub/Sub is
//! down, the event stays in the outbox and the janitor publishes it on its
//! next run. Each event carries a stable `event_id` (also an attribute), so
//! a consumer that sees one twice can tell.

use crate::bus::{Bus, publish_json};
use crate::domain::gs_uri::GsUri;
use crate::domain::job::Job;
use crate::domain::tenant::TenantName;
use crate::domain::values::{Chain, Verdict};
use crate::domain::values::{DeliveredOutput, JobError, JobKind, JobStatus};
use crate::domain::webhook::WebhookEvent;
use crate::error::Result;
use crate::time::Timestamp;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The public shape of a job event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Unique and stable: the same event published twice has the same id.
    pub event_id: String,
    /// The job.
    pub job_id: String,
    /// Its terminal status.
    pub status: JobStatus,
    /// Image or video.
    pub kind: JobKind,
    /// `gs://` URIs the model produced.
    pub outputs: Vec<GsUri>,
    /// Where each output was copied.
    pub deliveries: Vec<DeliveredOutput>,
    /// Why it failed, for a failed or cancelled job.
    pub error: Option<JobError>,
    /// A reviewer's verdict on the image, once there is one; an approval
    /// raises an event of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// What the image is to become once delivered (`"video"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
    /// Whose job it is (absent for `default` in events of before tenants).
    #[serde(default)]
    pub tenant: TenantName,
    /// The webhook delivery this event makes, when the job has a webhook
    /// that wants it. An event raised for a webhook alone (`start`, or
    /// `output` before delivery) is not terminal: its `status` says where
    /// the job is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookCall>,
}

/// What a job event asks the notifier to send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookCall {
    /// Where.
    pub url: String,
    /// Which of the webhook's events this is.
    pub events: Vec<WebhookEvent>,
    /// The job as the API returns it at the event, sent and signed as is.
    pub body: String,
}

impl JobEvent {
    /// A new event of `job`, with a fresh id.
    pub fn of(job: &Job) -> Self {
        Self {
            event_id: uuid::Uuid::new_v4().simple().to_string(),
            job_id: job.id().to_string(),
            status: job.status(),
            kind: job.kind(),
            outputs: job.outputs().to_vec(),
            deliveries: job.deliveries().to_vec(),
            error: job.error().cloned(),
            verdict: job.verdict(),
            chain: job.chain(),
            tenant: job.tenant().clone(),
            webhook: None,
        }
    }

    /// The event of the write from `before` to `after`, with the webhook
    /// call it makes, if any.
    pub fn of_write(before: &Job, after: &Job) -> Self {
        let events = webhook_events(before, after);
        let webhook = match (after.webhook(), events.is_empty()) {
            (Some(hook), false) => serde_json::to_string(after).ok().map(|body| WebhookCall {
                url: hook.url.clone(),
                events,
                body,
            }),
            _ => None,
        };
        Self {
            webhook,
            ..Self::of(after)
        }
    }

    /// The job event a Pub/Sub push carries; the error says why the push
    /// is poison. The one reading of a job-event push, for every consumer.
    pub fn from_push(body: &[u8]) -> std::result::Result<Self, String> {
        let delivery = crate::push::decode(body).map_err(|poison| poison.0)?;
        serde_json::from_slice(&delivery.data)
            .map_err(|e| format!("message {} is not a job event: {e}", delivery.message_id))
    }

    /// The span a consumer handles this event in.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!("job_event", event_id = %self.event_id, job_id = %self.job_id)
    }

    /// Message attributes, so that a subscription can filter on them
    /// (`attributes.status = "failed"`, `attributes.tenant = "acme"`) and a
    /// consumer can dedupe.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        let mut attributes = BTreeMap::from([
            ("event_id".to_string(), self.event_id.clone()),
            ("job_id".to_string(), self.job_id.clone()),
            ("status".to_string(), self.status.as_str().to_string()),
            ("kind".to_string(), self.kind.as_str().to_string()),
            ("tenant".to_string(), self.tenant.to_string()),
        ]);
        if let Some(verdict) = self.verdict {
            attributes.insert("verdict".to_string(), verdict.as_str().to_string());
        }
        if let Some(call) = &self.webhook {
            let names: Vec<&str> = call.events.iter().map(|e| e.as_str()).collect();
            attributes.insert("webhook_events".to_string(), names.join(","));
        }
        attributes
    }
}

/// An event waiting in the outbox (`outbox/{event_id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The event id.
    pub id: String,
    /// When the transition that raised it was written.
    pub created_at: Timestamp,
    /// The event to publish.
    pub event: JobEvent,
}

impl OutboxEntry {
    /// The outbox entry of `event`, written at `now`.
    pub fn new(event: JobEvent, now: Timestamp) -> Self {
        Self {
            id: event.event_id.clone(),
            created_at: now,
            event,
        }
    }
}

/// Whether the write from `before` to `after` is the one that ended the job
/// ([`Job::has_ended`]).
pub fn became_terminal(before: &Job, after: &Job) -> bool {
    after.has_ended() && (!before.has_ended() || before.status() != after.status())
}

/// Whether the write from `before` to `after` approved the job.
pub fn became_approved(before: &Job, after: &Job) -> bool {
    after.verdict() == Some(Verdict::Approved) && before.verdict() != Some(Verdict::Approved)
}

/// The events of the job's webhook that the write from `before` to `after`
/// makes, in order: its first start, its first outputs, its end; only
/// those the webhook asks for.
pub fn webhook_events(before: &Job, after: &Job) -> Vec<WebhookEvent> {
    let Some(hook) = after.webhook() else {
        return Vec::new();
    };
    [
        (
            WebhookEvent::Start,
            before.started_at().is_none() && after.started_at().is_some(),
        ),
        (
            WebhookEvent::Output,
            before.outputs().is_empty() && !after.outputs().is_empty(),
        ),
        (WebhookEvent::Completed, became_terminal(before, after)),
    ]
    .into_iter()
    .filter(|(event, happened)| *happened && hook.wants(*event))
    .map(|(event, _)| event)
    .collect()
}

/// Whether the write from `before` to `after` raises a job event: it ended
/// the job, approved it, or made an event its webhook asks for.
pub fn raises_event(before: &Job, after: &Job) -> bool {
    became_terminal(before, after)
        || became_approved(before, after)
        || !webhook_events(before, after).is_empty()
}

/// Where job events go.
#[async_trait]
pub trait JobEvents: Send + Sync {
    /// Publishes one event, with a few tries. An error leaves the event in
    /// the outbox for a later run.
    async fn publish(&self, event: &JobEvent) -> Result<()>;
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

/// Tries of one publish before the event is left to the outbox sweep.
const PUBLISH_TRIES: u32 = 3;

#[async_trait]
impl JobEvents for BusJobEvents {
    async fn publish(&self, event: &JobEvent) -> Result<()> {
        let attributes = event.attributes();
        let mut attempt = 0;
        loop {
            match publish_json(self.bus.as_ref(), &self.topic, event, &attributes).await {
                Ok(message_id) => {
                    tracing::debug!(
                        event = "job_event.published",
                        event_id = %event.event_id,
                        job_id = %event.job_id,
                        status = event.status.as_str(),
                        message_id,
                        "job event published"
                    );
                    return Ok(());
                }
                // A missing topic will not appear by trying again.
                Err(e @ crate::error::Error::NotFound { .. }) => return Err(e),
                Err(e) if attempt + 1 >= PUBLISH_TRIES => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
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
                crate::domain::values::JobKind::Image,
            ),
            Timestamp::now(),
        );
        job.force_state(status, outputs.iter().map(|s| s.parse().unwrap()).collect());
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
                job(status, outputs).has_ended(),
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
        failed.force_error(JobError::new(
            "filtered",
            "blocked by the safety filter",
            false,
        ));
        let event = JobEvent::of(&failed);
        events.publish(&event).await.unwrap();

        let published = bus.published("asmr-job-events");
        assert_eq!(published.len(), 1);
        let body: serde_json::Value = serde_json::from_slice(&published[0].data).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "event_id": event.event_id,
                "job_id": failed.id(),
                "status": "failed",
                "kind": "image",
                "outputs": [],
                "deliveries": [],
                "error": {"code": "filtered", "message": "blocked by the safety filter", "retryable": false},
                "tenant": "default",
            })
        );
        assert_eq!(published[0].attributes["status"], "failed");
        assert_eq!(published[0].attributes["event_id"], event.event_id);
        assert_eq!(published[0].attributes["kind"], "image");
    }
}
