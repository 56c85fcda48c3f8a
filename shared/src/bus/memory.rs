//! The in-process bus, for the local run and tests.
//!
//! Topics live in memory. Every published message is kept for
//! [`MemoryBus::published`] and handed to each subscriber attached at the
//! time, as a Pub/Sub subscription created before the publish would get it.
//! Nothing is persisted and nothing is redelivered.

use super::{Bus, topic_not_found};
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

/// A message as it was published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The id [`Bus::publish`] returned; unique within one bus.
    pub id: String,
    /// The topic it was published to.
    pub topic: String,
    /// The payload.
    pub data: Bytes,
    /// The attributes.
    pub attributes: BTreeMap<String, String>,
}

#[derive(Default)]
struct Topic {
    published: Vec<Message>,
    subscribers: Vec<UnboundedSender<Message>>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    next_id: u64,
}

/// Topics in this process's memory.
#[derive(Default)]
pub struct MemoryBus {
    state: Mutex<State>,
}

impl MemoryBus {
    /// A bus with no topics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message published to `topic` from now on, in publish order. The
    /// topic is created if it does not exist. Dropping the receiver detaches
    /// the subscriber.
    pub fn subscribe(&self, topic: &str) -> UnboundedReceiver<Message> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock()
            .topics
            .entry(topic.to_string())
            .or_default()
            .subscribers
            .push(sender);
        receiver
    }

    /// Every message published to `topic` so far, in publish order; empty
    /// for an unknown topic.
    pub fn published(&self, topic: &str) -> Vec<Message> {
        self.lock()
            .topics
            .get(topic)
            .map(|t| t.published.clone())
            .unwrap_or_default()
    }

    /// How many messages were published to `topic` so far (0 for an
    /// unknown topic), without copying them.
    pub fn published_count(&self, topic: &str) -> usize {
        self.lock()
            .topics
            .get(topic)
            .map_or(0, |t| t.published.len())
    }

    /// The job ids of the job messages (`{"job_id"}`) published to `topic`,
    /// in publish order; other payloads are left out.
    pub fn job_ids(&self, topic: &str) -> Vec<String> {
        self.published(topic)
            .iter()
            .filter_map(|m| serde_json::from_slice::<crate::push::JobMessage>(&m.data).ok())
            .map(|m| m.job_id)
            .collect()
    }

    // A panic while the lock was held cannot leave the state half-changed
    // (every change is one push), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn describe(&self) -> String {
        "in-memory bus".to_string()
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        self.lock().topics.entry(topic.to_string()).or_default();
        Ok(())
    }

    async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String> {
        // Pub/Sub refuses these too (INVALID_ARGUMENT).
        if data.is_empty() && attributes.is_empty() {
            return Err(Error::store(
                format!("publishing to topic {topic}"),
                "a message needs data or at least one attribute",
                false,
            ));
        }
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id.to_string();
        let entry = state
            .topics
            .get_mut(topic)
            .ok_or_else(|| topic_not_found(topic))?;
        let message = Message {
            id: id.clone(),
            topic: topic.to_string(),
            data,
            attributes: attributes.clone(),
        };
        entry
            .subscribers
            .retain(|s| s.send(message.clone()).is_ok());
        entry.published.push(message);
        Ok(id)
    }
}
