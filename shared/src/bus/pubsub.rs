//! The Cloud Pub/Sub adapter, for production and for the Pub/Sub emulator.
//!
//! Publishing goes through the official `google-cloud-pubsub` client: one
//! gRPC connection ([`BasePublisher`]) and, on it, one batching
//! [`Publisher`] per topic, made on first use and kept, so concurrent
//! publishes to a topic share batches. Topic creation goes through
//! [`TopicAdmin`].
//!
//! With an emulator endpoint both clients send no credentials; otherwise
//! both use Application Default Credentials. The endpoint comes from the
//! binary's config (`PUBSUB_EMULATOR_HOST`); this module reads no
//! environment variables.
//!
//! Each publisher runs a background task on the Tokio runtime where it was
//! first used, so a [`PubSubBus`] belongs to one runtime.

use super::{Bus, topic_not_found};
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_auth::credentials::anonymous;
use google_cloud_pubsub::client::{BasePublisher, Publisher, TopicAdmin};
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

/// How long a publish may wait for Pub/Sub's acknowledgement. A stopped or
/// frozen Pub/Sub makes the caller fail fast (intake answers with the jobs it
/// created; the janitor queues them later) instead of holding a request
/// until its deadline.
pub const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where Pub/Sub is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PubSubConfig {
    /// The project the topics belong to.
    pub project: String,
    /// An emulator as `PUBSUB_EMULATOR_HOST` gives it (`127.0.0.1:8085`; an
    /// `http://` URL is accepted too); `None` for production with
    /// Application Default Credentials.
    pub emulator_endpoint: Option<String>,
}

/// Topics in Cloud Pub/Sub (or its emulator).
pub struct PubSubBus {
    project: String,
    /// The emulator's URL, `None` in production.
    emulator: Option<String>,
    base: BasePublisher,
    admin: TopicAdmin,
    /// One batching publisher per topic, by short topic name.
    publishers: Mutex<HashMap<String, Publisher>>,
}

impl PubSubBus {
    /// Builds both clients. Without an emulator endpoint this looks up
    /// Application Default Credentials and fails if there are none.
    pub async fn new(config: PubSubConfig) -> Result<Self> {
        const CONTEXT: &str = "connecting to Pub/Sub";
        let emulator = config
            .emulator_endpoint
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e
                } else {
                    format!("http://{e}")
                }
            });
        // Building a client fails only on configuration (no credentials).
        fn connect(e: impl std::fmt::Display) -> Error {
            Error::store(CONTEXT, e, false)
        }
        let (base, admin) = match &emulator {
            Some(endpoint) => (
                BasePublisher::builder()
                    .with_endpoint(endpoint.clone())
                    .with_credentials(anonymous::Builder::new().build())
                    .build()
                    .await
                    .map_err(connect)?,
                TopicAdmin::builder()
                    .with_endpoint(endpoint.clone())
                    .with_credentials(anonymous::Builder::new().build())
                    .build()
                    .await
                    .map_err(connect)?,
            ),
            None => (
                BasePublisher::builder().build().await.map_err(connect)?,
                TopicAdmin::builder().build().await.map_err(connect)?,
            ),
        };
        Ok(Self {
            project: config.project,
            emulator,
            base,
            admin,
            publishers: Mutex::new(HashMap::new()),
        })
    }

    fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    /// The topic's publisher, made on first use.
    fn publisher(&self, topic: &str) -> Publisher {
        // Only map operations happen under the lock; a poisoned map is intact.
        let mut publishers = self
            .publishers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        publishers
            .entry(topic.to_string())
            .or_insert_with(|| self.base.publisher(self.topic_path(topic)).build())
            .clone()
    }
}

#[async_trait]
impl Bus for PubSubBus {
    fn describe(&self) -> String {
        match &self.emulator {
            Some(endpoint) => format!("Pub/Sub emulator at {endpoint}, project {}", self.project),
            None => format!("Cloud Pub/Sub, project {}", self.project),
        }
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        let result = self
            .admin
            .create_topic()
            .set_name(self.topic_path(topic))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("ALREADY_EXISTS") => Ok(()),
            Err(e) => Err(rpc_error(&format!("creating topic {topic}"), &e)),
        }
    }

    async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String> {
        let message = Message::new()
            .set_data(data)
            .set_attributes(attributes.clone());
        let context = format!("publishing to topic {topic}");
        let published =
            tokio::time::timeout(PUBLISH_TIMEOUT, self.publisher(topic).publish(message)).await;
        let Ok(published) = published else {
            return Err(Error::store(
                context,
                format!(
                    "Pub/Sub did not acknowledge the message within {PUBLISH_TIMEOUT:?} (it may still be delivered later)"
                ),
                true,
            ));
        };
        match published {
            Ok(id) => Ok(id),
            Err(PublishError::Rpc(e)) if code(&e) == Some("NOT_FOUND") => {
                Err(topic_not_found(topic))
            }
            Err(PublishError::Rpc(e)) => Err(rpc_error(&context, &e)),
            // The publisher's task is gone (runtime shutting down): another
            // attempt, in a live process, can succeed.
            Err(e @ PublishError::Shutdown) => Err(Error::store(context, e, true)),
            Err(e) => Err(Error::store(context, e, false)),
        }
    }
}

/// The gRPC status code name of a service error (`NOT_FOUND`).
fn code(e: &google_cloud_pubsub::Error) -> Option<&'static str> {
    e.status().map(|s| s.code.name())
}

/// A failed RPC, classified.
fn rpc_error(context: &str, e: &google_cloud_pubsub::Error) -> Error {
    Error::store(context, e, crate::gax::transient(e))
}
