//! The dead-letter subscription: messages Pub/Sub gave up delivering, taken
//! a batch at a time by the janitor and acknowledged once handled.
//!
//! [`DeadLetters`] is the port: [`DeadLetters::pull`] takes up to N
//! messages, [`DeadLetters::ack`] acknowledges the handled ones, and
//! [`DeadLetters::close`] gives back every message not acknowledged (it is
//! delivered again on a later run). Two adapters: [`PubSubDeadLetters`] and
//! [`MemoryDeadLetters`] (unit tests).
//!
//! The Pub/Sub adapter speaks Pub/Sub's REST API with unary pulls that
//! answer at once, polling while it waits for a first message: nothing it
//! leaves behind on the server can take messages after it is done (see
//! [`PubSubDeadLetters`]). What a run pulls and does not acknowledge is
//! held until [`DeadLetters::close`] gives it back with a zero ack deadline.

use super::pubsub::PubSubConfig;
use crate::error::{Error, Result};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

/// Scope of the Pub/Sub calls.
const PUBSUB_SCOPE: &str = "https://www.googleapis.com/auth/pubsub";
/// The service's REST endpoint, when there is no emulator.
const PRODUCTION_ENDPOINT: &str = "https://pubsub.googleapis.com";
/// Time limit of one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two empty pulls while waiting for a first message.
const POLL: Duration = Duration::from_millis(200);
/// How long one call keeps retrying transient failures.
const RETRY_TIME: Duration = Duration::from_secs(20);

/// How the calls authenticate.
enum Auth {
    /// No credentials: the emulator.
    Anonymous,
    /// Application Default Credentials; the provider caches tokens.
    Adc(Arc<dyn gcp_auth::TokenProvider>),
}

/// A call that failed: the HTTP status when there was an answer.
struct Failed {
    status: Option<u16>,
    message: String,
    retryable: bool,
}

/// A dead-letter subscription in Cloud Pub/Sub (or its emulator), read with
/// unary pulls.
///
/// A unary pull that answers at once (`returnImmediately`) leaves nothing
/// behind: when it returns, every message it leased is in our hands. A
/// streaming pull, or a unary pull abandoned while it waits, can be left
/// open on the server's side (the emulator keeps such streams for minutes)
/// and lease it messages nobody reads. So a pull polls: it asks, and when
/// the answer is empty, asks again a moment later, up to its `wait`.
pub struct PubSubDeadLetters {
    http: reqwest::Client,
    /// `https://pubsub.googleapis.com/v1/projects/P/subscriptions/S`.
    url: String,
    subscription: String,
    wait: Duration,
    emulator: Option<String>,
    auth: Auth,
    /// Ack ids pulled and neither acknowledged nor given back.
    held: tokio::sync::Mutex<BTreeSet<String>>,
}

impl PubSubDeadLetters {
    /// A client of `subscription` (a short name, or `projects/P/subscriptions/S`).
    /// Each pull waits up to `wait` for a first message. Without an emulator
    /// endpoint this looks up Application Default Credentials.
    pub async fn new(config: PubSubConfig, subscription: &str, wait: Duration) -> Result<Self> {
        const CONTEXT: &str = "connecting to Pub/Sub";
        let emulator = emulator_url(config.emulator_endpoint.as_deref());
        let auth = match &emulator {
            Some(_) => Auth::Anonymous,
            None => Auth::Adc(gcp_auth::provider().await.map_err(|e| {
                Error::store(
                    CONTEXT,
                    format!("no Application Default Credentials were found ({e})"),
                    false,
                )
            })?),
        };
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| Error::store(CONTEXT, e, false))?;
        let subscription = subscription_path(&config.project, subscription);
        let endpoint = emulator.as_deref().unwrap_or(PRODUCTION_ENDPOINT);
        Ok(Self {
            http,
            url: format!("{endpoint}/v1/{subscription}"),
            subscription,
            wait,
            emulator,
            auth,
            held: tokio::sync::Mutex::new(BTreeSet::new()),
        })
    }

    /// POSTs `body` to `subscription:verb`, retrying transient failures
    /// (a refused connection, a time-out, 408, 429, 5xx) for a while. A
    /// missing subscription is `Error::NotFound` with kind `subscription`.
    async fn call(&self, verb: &str, body: &Value) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + RETRY_TIME;
        let mut pause = Duration::from_millis(100);
        loop {
            let failed = match self.call_once(verb, body).await {
                Ok(answer) => return Ok(answer),
                Err(failed) => failed,
            };
            if failed.status == Some(404) {
                return Err(Error::NotFound {
                    kind: "subscription",
                    id: self.subscription.clone(),
                });
            }
            if !failed.retryable || tokio::time::Instant::now() + pause > deadline {
                return Err(Error::store(
                    format!("{verb} on {}", self.subscription),
                    failed.message,
                    failed.retryable,
                ));
            }
            tracing::warn!(verb, error = %failed.message, "a Pub/Sub call failed; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn call_once(&self, verb: &str, body: &Value) -> Result<Value, Failed> {
        let transport = |message: String| Failed {
            status: None,
            message,
            retryable: true,
        };
        let mut request = self.http.post(format!("{}:{verb}", self.url)).json(body);
        if let Auth::Adc(provider) = &self.auth {
            let token = provider
                .token(&[PUBSUB_SCOPE])
                .await
                .map_err(|e| transport(format!("getting a token: {e}")))?;
            request = request.bearer_auth(token.as_str());
        }
        let response = request.send().await.map_err(|e| transport(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| transport(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| Failed {
                status: Some(status.as_u16()),
                message: format!("an answer that is not JSON ({e}): {text}"),
                retryable: false,
            });
        }
        let text: String = text.chars().take(500).collect();
        Err(Failed {
            status: Some(status.as_u16()),
            message: format!("{status}: {text}"),
            retryable: crate::gax::retryable_status(status.as_u16()),
        })
    }

    /// One pull that answers at once, with what it leased.
    async fn pull_once(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let body = json!({"maxMessages": max, "returnImmediately": true});
        let answer = self.call("pull", &body).await?;
        let received = answer["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut letters = Vec::with_capacity(received.len());
        for received in received {
            let message = &received["message"];
            let data = message["data"].as_str().unwrap_or_default();
            let letter = DeadLetter {
                ack_id: received["ackId"].as_str().unwrap_or_default().to_string(),
                message_id: message["messageId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                data: base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map(Bytes::from)
                    .map_err(|e| {
                        Error::store(
                            format!("pulling from {}", self.subscription),
                            format!("a message whose data is not base64 ({e})"),
                            false,
                        )
                    })?,
                attributes: serde_json::from_value(message["attributes"].clone())
                    .unwrap_or_default(),
                delivery_attempt: received["deliveryAttempt"]
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .filter(|n| *n > 0),
            };
            letters.push(letter);
        }
        Ok(letters)
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
        let started = tokio::time::Instant::now();
        let mut last = started;
        let mut letters: Vec<DeadLetter> = Vec::new();
        while letters.len() < max {
            let got = match self.pull_once(max - letters.len()).await {
                Ok(got) => got,
                Err(e) if letters.is_empty() => return Err(e),
                Err(e) => {
                    // What was pulled stays held until `close` gives it back.
                    tracing::warn!(error = %e, "a dead-letter pull failed after a first batch");
                    break;
                }
            };
            if got.is_empty() {
                let quiet = if letters.is_empty() {
                    self.wait
                } else {
                    BATCH_GAP.min(self.wait)
                };
                if last.elapsed() >= quiet {
                    break;
                }
                tokio::time::sleep(POLL.min(quiet)).await;
                continue;
            }
            last = tokio::time::Instant::now();
            self.held
                .lock()
                .await
                .extend(got.iter().map(|l| l.ack_id.clone()));
            letters.extend(got);
        }
        Ok(letters)
    }

    async fn ack(&self, ack_ids: &[String]) -> Result<()> {
        let mut held = self.held.lock().await;
        if let Some(id) = ack_ids.iter().find(|id| !held.contains(*id)) {
            return Err(Error::store(
                format!("acknowledging on {}", self.subscription),
                format!("{id} is not the handle of a message pulled and not yet acknowledged"),
                false,
            ));
        }
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call("acknowledge", &json!({ "ackIds": ack_ids }))
            .await?;
        for id in ack_ids {
            held.remove(id);
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let held: Vec<String> = std::mem::take(&mut *self.held.lock().await)
            .into_iter()
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        // A deadline of zero gives them back now; were this to fail, they
        // come back anyway when the subscription's ack deadline passes.
        self.call(
            "modifyAckDeadline",
            &json!({"ackIds": held, "ackDeadlineSeconds": 0}),
        )
        .await
        .map(|_| ())
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
