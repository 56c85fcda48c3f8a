//! The message bus port: publishing to the pipeline's Pub/Sub topics.
//!
//! Three adapters: [`pubsub`] (Cloud Pub/Sub, or its emulator when the
//! binary's config names one), [`memory`] (in-process, for the local run and
//! tests) and [`StoreQueue`] (the embedded store's: nobody subscribes). Only publishing is a port: the stages receive messages as Pub/Sub
//! push requests, which are plain HTTP (see `crate::push`).
//!
//! Topics are named by [`Topics`], so no stage spells a topic name itself.
//! Publishing to a topic that does not exist is [`Error::NotFound`] with kind
//! `topic` on every adapter: production topics come from terraform, tests and
//! the local run create theirs with [`Bus::ensure_topic`].

pub mod dead_letters;
pub mod memory;
pub mod pubsub;
pub mod store_queue;

use crate::domain::values::JobKind;
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;

/// The names of the pipeline's topics (README, "The stages").
///
/// Every name is `{prefix}asmr-...`; the default prefix is empty, so by
/// default the names are exactly those of the design and of terraform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topic names starting with `prefix` (`dev-` gives `dev-asmr-requests`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Job messages (`{"job_id"}`) for the image generator.
    pub fn image_jobs(&self) -> String {
        self.name("asmr-image-jobs")
    }

    /// Job messages (`{"job_id"}`) for the video generator.
    pub fn video_jobs(&self) -> String {
        self.name("asmr-video-jobs")
    }

    /// Job events, published on every terminal transition.
    pub fn job_events(&self) -> String {
        self.name("asmr-job-events")
    }

    /// Generation requests from outside the pipeline.
    pub fn requests(&self) -> String {
        self.name("asmr-requests")
    }

    /// The job topic of a kind of job.
    pub fn for_kind(&self, kind: JobKind) -> String {
        match kind {
            JobKind::Image => self.image_jobs(),
            JobKind::Video => self.video_jobs(),
        }
    }

    /// Every topic above, for creating them all in a local run.
    pub fn all(&self) -> [String; 4] {
        [
            self.requests(),
            self.image_jobs(),
            self.video_jobs(),
            self.job_events(),
        ]
    }

    fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }
}

/// Publishes messages to topics.
#[async_trait]
pub trait Bus: Send + Sync {
    /// One line naming the adapter and where its messages go.
    fn describe(&self) -> String;

    /// Whether a job message published here reaches a worker. Not on the
    /// embedded store ([`StoreQueue`]), whose workers take pending jobs from
    /// the store itself: there, announcing a job is skipped.
    fn reaches_workers(&self) -> bool {
        true
    }

    /// Creates a topic if it does not exist (tests, local run; production
    /// topics come from terraform). Creating an existing topic succeeds.
    async fn ensure_topic(&self, topic: &str) -> Result<()>;

    /// Publishes one message to `topic` (a short name such as
    /// `asmr-image-jobs`, not `projects/...`) and returns the id the bus gave
    /// it. Resolves once the bus has accepted the message. A missing topic is
    /// `Error::NotFound` with kind `topic`.
    async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String>;
}

/// Publishes `value` as JSON and returns the message id.
pub async fn publish_json<T: Serialize + ?Sized>(
    bus: &dyn Bus,
    topic: &str,
    value: &T,
    attributes: &BTreeMap<String, String>,
) -> Result<String> {
    let data = serde_json::to_vec(value).map_err(|e| {
        Error::store(
            format!("publishing to topic {topic}"),
            format!("the message does not serialise to JSON ({e})"),
            false,
        )
    })?;
    bus.publish(topic, Bytes::from(data), attributes).await
}

/// What announcing a job did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announced {
    /// Published; the bus's message id.
    Published(String),
    /// Nothing was sent: the workers of this bus take pending jobs from
    /// the store ([`Bus::reaches_workers`]).
    NoWorkers,
}

/// Announces `job` to its generator: publishes the job message
/// `{"job_id"}` to its kind's topic, with `origin` (who sent it: `intake`,
/// `janitor`, `cli`, `auto-promote`) and `kind` as attributes, where the
/// bus reaches workers; elsewhere sends nothing.
pub async fn publish_job(
    bus: &dyn Bus,
    topics: &Topics,
    job: &crate::domain::job::Job,
    origin: &str,
) -> Result<Announced> {
    if !bus.reaches_workers() {
        return Ok(Announced::NoWorkers);
    }
    let message = crate::push::JobMessage {
        job_id: job.id().to_string(),
    };
    let attributes = BTreeMap::from([
        ("origin".to_string(), origin.to_string()),
        ("kind".to_string(), job.kind().as_str().to_string()),
    ]);
    publish_json(bus, &topics.for_kind(job.kind()), &message, &attributes)
        .await
        .map(Announced::Published)
}

/// The error of a publish to a topic that does not exist.
fn topic_not_found(topic: &str) -> Error {
    Error::NotFound {
        kind: "topic",
        id: topic.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_the_designs_with_the_prefix_in_front() {
        let check = |topics: Topics, expected: [&str; 4]| {
            assert_eq!(topics.all(), expected.map(String::from), "{topics:?}");
            assert_eq!(topics.for_kind(JobKind::Image), topics.image_jobs());
            assert_eq!(topics.for_kind(JobKind::Video), topics.video_jobs());
        };
        check(
            Topics::default(),
            [
                "asmr-requests",
                "asmr-image-jobs",
                "asmr-video-jobs",
                "asmr-job-events",
            ],
        );
        check(
            Topics::new("dev-"),
            [
                "dev-asmr-requests",
                "dev-asmr-image-jobs",
                "dev-asmr-video-jobs",
                "dev-asmr-job-events",
            ],
        );
    }
}
