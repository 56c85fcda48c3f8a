//! The dead-letter subscription: messages Pub/Sub gave up delivering, taken
//! a batch at a time by the janitor and acknowledged once handled.
//!
//! [`DeadLetters`] is the port: [`DeadLetters::pull`] takes up to N
//! messages, [`DeadLetters::ack`] acknowledges the handled ones, and
//! [`DeadLetters::close`] gives back every message not acknowledged (it is
//! delivered again on a later run). Two adapters: [`PubSubDeadLetters`] and
//! [`MemoryDeadLetters`] (unit tests).
//!
//! `google-cloud-pubsub` offers only streaming pull, so the Pub/Sub adapter
//! keeps one stream open from the first pull to [`DeadLetters::close`]: a
//! pull waits up to its `wait` for a first message and then takes what
//! arrives without a pause, up to the count asked for. Acknowledgements are
//! sent by the client in the background; `close` waits until they are.
//! Messages pulled but not acknowledged stay leased by the open stream, so a
//! later pull of the same run does not see them again.

use super::pubsub::PubSubConfig;
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_auth::credentials::anonymous;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Attribute Pub/Sub sets on a dead-lettered message: how many times the
/// source subscription tried to deliver it.
pub const SOURCE_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
/// Attribute Pub/Sub sets on a dead-lettered message: the source
/// subscription.
pub const SOURCE_SUBSCRIPTION: &str = "CloudPubSubDeadLetterSourceSubscription";

/// Quiet time after which a pull that already has messages stops waiting for
/// more.
const BATCH_GAP: Duration = Duration::from_millis(500);

/// One dead-lettered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Handle for [`DeadLetters::ack`]; meaningful only to the adapter that
    /// returned it.
    pub ack_id: String,
    /// Pub/Sub's id of the message.
    pub message_id: String,
    /// The payload, as it was published to the source topic.
    pub data: Bytes,
    /// The attributes, including Pub/Sub's `CloudPubSubDeadLetter*` ones.
    pub attributes: BTreeMap<String, String>,
    /// Delivery attempt on the dead-letter subscription itself, when that
    /// subscription has a dead-letter policy of its own.
    pub delivery_attempt: Option<i32>,
}

impl DeadLetter {
    /// How many times the source subscription tried to deliver it, when
    /// Pub/Sub said so.
    pub fn source_delivery_count(&self) -> Option<u32> {
        self.attributes
            .get(SOURCE_DELIVERY_COUNT)
            .and_then(|n| n.trim().parse().ok())
    }
}

/// A subscription of dead-lettered messages.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// One line naming the adapter and the subscription.
    fn describe(&self) -> String;

    /// Takes up to `max` messages; an empty list when none came in time. A
    /// missing subscription is `Error::NotFound` with kind `subscription`.
    async fn pull(&self, max: usize) -> Result<Vec<DeadLetter>>;

    /// Acknowledges handled messages: they are not delivered again.
    async fn ack(&self, ack_ids: &[String]) -> Result<()>;

    /// Ends the session: acknowledgements are flushed, and every message
    /// pulled but not acknowledged is given back for a later delivery.
    async fn close(&self) -> Result<()>;
}

/// No dead letters: where there is no Pub/Sub (the embedded store), the
/// janitor's dead-letter sweep finds nothing.
pub struct NoDeadLetters;

#[async_trait]
impl DeadLetters for NoDeadLetters {
    fn describe(&self) -> String {
        "no dead-letter subscription (no Pub/Sub)".into()
    }

    async fn pull(&self, _max: usize) -> Result<Vec<DeadLetter>> {
        Ok(Vec::new())
    }

    async fn ack(&self, _ack_ids: &[String]) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// The Pub/Sub name of `subscription`: kept when it is already
/// `projects/...`, else in `project`.
pub fn subscription_path(project: &str, subscription: &str) -> String {
    if subscription.starts_with("projects/") {
        subscription.to_string()
    } else {
        format!("projects/{project}/subscriptions/{subscription}")
    }
}

struct Session {
    stream: MessageStream,
    handlers: HashMap<String, Handler>,
}

#[derive(Default)]
struct PullState {
    session: Option<Session>,
    next_id: u64,
}

/// A dead-letter subscription in Cloud Pub/Sub (or its emulator).
pub struct PubSubDeadLetters {
    subscriber: Subscriber,
    subscription: String,
    wait: Duration,
    emulator: Option<String>,
    // Held across awaits by design: one pull or close at a time.
    state: tokio::sync::Mutex<PullState>,
}

impl PubSubDeadLetters {
    /// A client of `subscription` (a short name, or `projects/P/subscriptions/S`).
    /// Each pull waits up to `wait` for a first message. Without an emulator
    /// endpoint this looks up Application Default Credentials.
    pub async fn new(config: PubSubConfig, subscription: &str, wait: Duration) -> Result<Self> {
        let emulator = emulator_url(config.emulator_endpoint.as_deref());
        let builder = Subscriber::builder();
        let builder = match &emulator {
            Some(endpoint) => builder
                .with_endpoint(endpoint.clone())
                .with_credentials(anonymous::Builder::new().build()),
            None => builder,
        };
        let subscriber = builder
            .build()
            .await
            .map_err(|e| Error::store("connecting to Pub/Sub", e, false))?;
        Ok(Self {
            subscriber,
            subscription: subscription_path(&config.project, subscription),
            wait,
            emulator,
            state: tokio::sync::Mutex::new(PullState::default()),
        })
    }

    fn open(&self, max: usize) -> Session {
        let stream = self
            .subscriber
            .subscribe(self.subscription.clone())
            .set_max_outstanding_messages(i64::try_from(max.max(1)).unwrap_or(i64::MAX))
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build();
        Session {
            stream,
            handlers: HashMap::new(),
        }
    }

    fn stream_error(&self, e: &google_cloud_pubsub::Error) -> Error {
        match e.status().map(|s| s.code.name()) {
            Some("NOT_FOUND") => Error::NotFound {
                kind: "subscription",
                id: self.subscription.clone(),
            },
            _ => Error::store(format!("pulling from {}", self.subscription), e, false),
        }
    }
}

#[async_trait]
impl DeadLetters for PubSubDeadLetters {
    fn describe(&self) -> String {
        match &self.emulator {
            Some(endpoint) => format!(
                "{} on the Pub/Sub emulator at {endpoint}",
                self.subscription
            ),
            None => format!("{} on Cloud Pub/Sub", self.subscription),
        }
    }

    async fn pull(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        let session = match &mut state.session {
            Some(session) => session,
            none => none.insert(self.open(max)),
        };
        let mut letters = Vec::new();
        while letters.len() < max {
            let wait = if letters.is_empty() {
                self.wait
            } else {
                BATCH_GAP.min(self.wait)
            };
            let (message, handler) = match tokio::time::timeout(wait, session.stream.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(Err(e))) => {
                    // The stream is closed for good; what was pulled stays
                    // leased until `close` gives it back.
                    let error = self.stream_error(&e);
                    if letters.is_empty() {
                        return Err(error);
                    }
                    tracing::warn!(error = %error, "the dead-letter stream ended early");
                    break;
                }
                Ok(Some(Ok(pair))) => pair,
            };
            state.next_id += 1;
            let ack_id = state.next_id.to_string();
            letters.push(DeadLetter {
                ack_id: ack_id.clone(),
                message_id: message.message_id,
                data: message.data,
                attributes: message.attributes.into_iter().collect(),
                delivery_attempt: handler.delivery_attempt(),
            });
            session.handlers.insert(ack_id, handler);
        }
        Ok(letters)
    }

    async fn ack(&self, ack_ids: &[String]) -> Result<()> {
        let mut state = self.state.lock().await;
        let Some(session) = &mut state.session else {
            return Err(Error::store(
                format!("acknowledging on {}", self.subscription),
                "nothing was pulled",
                false,
            ));
        };
        for id in ack_ids {
            match session.handlers.remove(id) {
                Some(handler) => handler.ack(),
                None => {
                    return Err(Error::store(
                        format!("acknowledging on {}", self.subscription),
                        format!(
                            "{id} is not the handle of a message pulled and not yet acknowledged"
                        ),
                        false,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let session = self.state.lock().await.session.take();
        if let Some(Session { stream, handlers }) = session {
            for handler in handlers.into_values() {
                handler.nack();
            }
            stream.shutdown_token().shutdown().await;
        }
        Ok(())
    }
}

fn emulator_url(endpoint: Option<&str>) -> Option<String> {
    let endpoint = endpoint?.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        None
    } else if endpoint.contains("://") {
        Some(endpoint.to_string())
    } else {
        Some(format!("http://{endpoint}"))
    }
}

#[derive(Default)]
struct Memory {
    queue: VecDeque<DeadLetter>,
    outstanding: BTreeMap<String, DeadLetter>,
    acked: Vec<DeadLetter>,
    next_id: u64,
}

/// Dead letters in memory, for tests: [`MemoryDeadLetters::push`] adds one,
/// [`MemoryDeadLetters::remaining`] and [`MemoryDeadLetters::acked`] show
/// what a run left and took.
#[derive(Default)]
pub struct MemoryDeadLetters {
    state: Mutex<Memory>,
    missing: bool,
}

impl MemoryDeadLetters {
    /// An empty subscription.
    pub fn new() -> Self {
        Self::default()
    }

    /// A subscription that does not exist: every pull fails as Pub/Sub's would.
    pub fn missing() -> Self {
        Self {
            missing: true,
            ..Self::default()
        }
    }

    /// Adds one message; returns its message id.
    pub fn push(&self, data: impl Into<Bytes>, attributes: &[(&str, &str)]) -> String {
        let mut state = self.lock();
        state.next_id += 1;
        let message_id = format!("dl-{}", state.next_id);
        state.queue.push_back(DeadLetter {
            ack_id: String::new(),
            message_id: message_id.clone(),
            data: data.into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            delivery_attempt: None,
        });
        message_id
    }

    /// Messages neither acknowledged nor pulled and held, in order.
    pub fn remaining(&self) -> Vec<DeadLetter> {
        let state = self.lock();
        state
            .outstanding
            .values()
            .chain(state.queue.iter())
            .cloned()
            .collect()
    }

    /// Messages acknowledged so far, in order.
    pub fn acked(&self) -> Vec<DeadLetter> {
        self.lock().acked.clone()
    }

    // Every change under the lock is a single move between collections, so
    // a poisoned lock still holds a consistent state.
    fn lock(&self) -> MutexGuard<'_, Memory> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl DeadLetters for MemoryDeadLetters {
    fn describe(&self) -> String {
        "in-memory dead letters".to_string()
    }

    async fn pull(&self, max: usize) -> Result<Vec<DeadLetter>> {
        if self.missing {
            return Err(Error::NotFound {
                kind: "subscription",
                id: "in-memory dead letters".to_string(),
            });
        }
        let mut state = self.lock();
        let mut letters = Vec::new();
        while letters.len() < max {
            let Some(mut letter) = state.queue.pop_front() else {
                break;
            };
            state.next_id += 1;
            letter.ack_id = format!("ack-{}", state.next_id);
            state
                .outstanding
                .insert(letter.ack_id.clone(), letter.clone());
            letters.push(letter);
        }
        Ok(letters)
    }

    async fn ack(&self, ack_ids: &[String]) -> Result<()> {
        let mut state = self.lock();
        for id in ack_ids {
            let letter = state.outstanding.remove(id).ok_or_else(|| {
                Error::store(
                    "acknowledging a dead letter",
                    format!("{id} is not the handle of a message pulled and not yet acknowledged"),
                    false,
                )
            })?;
            state.acked.push(letter);
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let mut state = self.lock();
        let held = std::mem::take(&mut state.outstanding);
        for letter in held.into_values().rev() {
            state.queue.push_front(DeadLetter {
                ack_id: String::new(),
                ..letter
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_dead_letters_hand_out_acknowledge_and_give_back() {
        let letters = MemoryDeadLetters::new();
        for n in 0..3 {
            letters.push(format!("m{n}"), &[(SOURCE_DELIVERY_COUNT, "5")]);
        }
        let first = letters.pull(2).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].source_delivery_count(), Some(5));
        letters.ack(&[first[1].ack_id.clone()]).await.unwrap();
        assert!(letters.ack(&[first[1].ack_id.clone()]).await.is_err());
        // The held one is not handed out again within the session.
        let second = letters.pull(5).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].data, Bytes::from("m2"));
        letters.close().await.unwrap();
        let left: Vec<Bytes> = letters.remaining().into_iter().map(|l| l.data).collect();
        assert_eq!(left, [Bytes::from("m0"), Bytes::from("m2")]);
        assert_eq!(letters.acked()[0].data, Bytes::from("m1"));
    }

    #[test]
    fn subscription_paths_are_completed_unless_full() {
        assert_eq!(subscription_path("p", "dl"), "projects/p/subscriptions/dl");
        assert_eq!(
            subscription_path("p", "projects/q/subscriptions/dl"),
            "projects/q/subscriptions/dl"
        );
    }
}
