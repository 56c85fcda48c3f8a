//! The Pub/Sub emulator over its REST API, for wiring test topologies:
//! topics, push subscriptions aimed at stage binaries, pull subscriptions to
//! read what a stage published.

use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long [`Emulator::drain`] waits for more after the last message.
pub const QUIET: Duration = Duration::from_millis(500);
/// The attribute of the marker [`Emulator::assert_nothing_published`] sends.
const MARKER: &str = "asmr-test-marker";
/// How long a marker may take to come back: the emulator, on two busy
/// cores with the whole suite running, has taken more than 15 s.
const MARKER_WAIT: Duration = Duration::from_secs(60);

/// One message as a pull returns it.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The message id.
    pub id: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The attributes.
    pub attributes: BTreeMap<String, String>,
    /// Handle to acknowledge it.
    pub ack_id: String,
}

impl Pulled {
    /// The payload as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.data).unwrap()
    }
}

/// How a push subscription retries.
#[derive(Clone, Debug)]
pub struct PushPolicy {
    /// The ack deadline, also the push request's time limit.
    pub ack_deadline_seconds: u32,
    /// Back-off after the first nack.
    pub min_backoff_seconds: u32,
    /// Longest back-off.
    pub max_backoff_seconds: u32,
    /// A dead-letter topic and the deliveries before a message goes there.
    pub dead_letter: Option<(String, u32)>,
}

impl Default for PushPolicy {
    fn default() -> Self {
        Self {
            ack_deadline_seconds: 30,
            min_backoff_seconds: 1,
            max_backoff_seconds: 2,
            dead_letter: None,
        }
    }
}

/// The emulator `tests/run` started (`PUBSUB_EMULATOR_HOST`).
#[derive(Clone)]
pub struct Emulator {
    base: String,
    project: String,
    http: reqwest::Client,
}

impl Default for Emulator {
    fn default() -> Self {
        Self::new()
    }
}

impl Emulator {
    /// The emulator of this test run; fails loudly when it is not running.
    pub fn new() -> Self {
        let host = std::env::var("PUBSUB_EMULATOR_HOST")
            .expect("PUBSUB_EMULATOR_HOST is not set: run the tests with tests/run");
        let project = crate::harness::emulator_project();
        Self {
            base: format!("http://{host}/v1/projects/{project}"),
            project,
            http: reqwest::Client::new(),
        }
    }

    /// `projects/P/topics/NAME`.
    pub fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    async fn put(&self, path: &str, body: Value) {
        let response = self
            .http
            .put(format!("{}/{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        // An existing topic or subscription is fine.
        assert!(
            status.is_success() || status.as_u16() == 409,
            "PUT {path}: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Creates a topic.
    pub async fn topic(&self, topic: &str) {
        self.put(&format!("topics/{topic}"), json!({})).await;
    }

    /// A push subscription `name` on `topic` to `endpoint`, retried quickly.
    pub async fn push(&self, name: &str, topic: &str, endpoint: &str) {
        self.push_with(name, topic, endpoint, &PushPolicy::default())
            .await;
    }

    /// A push subscription `name` on `topic` to `endpoint` with `policy`.
    pub async fn push_with(&self, name: &str, topic: &str, endpoint: &str, policy: &PushPolicy) {
        let mut subscription = json!({
            "topic": self.topic_path(topic),
            "pushConfig": {"pushEndpoint": endpoint},
            "ackDeadlineSeconds": policy.ack_deadline_seconds,
            "retryPolicy": {
                "minimumBackoff": format!("{}s", policy.min_backoff_seconds),
                "maximumBackoff": format!("{}s", policy.max_backoff_seconds),
            },
        });
        if let Some((topic, attempts)) = &policy.dead_letter {
            subscription["deadLetterPolicy"] = json!({
                "deadLetterTopic": self.topic_path(topic),
                "maxDeliveryAttempts": attempts,
            });
        }
        self.put(&format!("subscriptions/{name}"), subscription)
            .await;
    }

    /// A pull subscription `name` on `topic`.
    pub async fn pull_subscription(&self, name: &str, topic: &str) {
        self.put(
            &format!("subscriptions/{name}"),
            json!({"topic": self.topic_path(topic), "ackDeadlineSeconds": 30}),
        )
        .await;
    }

    /// Publishes one message; returns its id.
    pub async fn publish(
        &self,
        topic: &str,
        data: &[u8],
        attributes: &BTreeMap<String, String>,
    ) -> String {
        let data = base64::engine::general_purpose::STANDARD.encode(data);
        let response = self
            .http
            .post(format!("{}/topics/{topic}:publish", self.base))
            .json(&json!({"messages": [{"data": data, "attributes": attributes}]}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let response: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "publishing to {topic}: {status} {response}"
        );
        response["messageIds"][0].as_str().unwrap().to_string()
    }

    /// Publishes every payload, in as few requests as the emulator takes and
    /// in order (copies of a message next to each other stay so); returns
    /// the message ids.
    pub async fn publish_all(&self, topic: &str, payloads: &[String]) -> Vec<String> {
        let mut ids = Vec::new();
        // The emulator takes at most 1000 messages per request.
        for chunk in payloads.chunks(900) {
            let messages: Vec<Value> = chunk
                .iter()
                .map(|p| json!({"data": base64::engine::general_purpose::STANDARD.encode(p)}))
                .collect();
            let response: Value = self
                .http
                .post(format!("{}/topics/{topic}:publish", self.base))
                .json(&json!({ "messages": messages }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ids.extend(
                response["messageIds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| id.as_str().unwrap().to_string()),
            );
        }
        assert_eq!(ids.len(), payloads.len());
        ids
    }

    /// Pulls up to `max` messages and acknowledges them: pulls again until
    /// `max` came or nothing more came for [`QUIET`], so that an early
    /// empty answer (the emulator gives one now and then while messages
    /// wait) does not end it. A pull or an acknowledgement that fails
    /// fails the test, with what the emulator said.
    pub async fn drain(&self, subscription: &str, max: u32) -> Vec<Pulled> {
        let mut pulled = Vec::new();
        let mut last = Instant::now();
        while pulled.len() < max as usize {
            let left = max - pulled.len() as u32;
            let got = self.pull_once(subscription, left).await;
            if got.is_empty() {
                if last.elapsed() >= QUIET {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                last = Instant::now();
                pulled.extend(got);
            }
        }
        pulled
    }

    /// Asserts that nothing was published to `subscription`'s topic, and
    /// proves the subscription would have shown it: a marker published
    /// now must come back, alone. An empty pull alone proves nothing (an
    /// error, an early empty answer, a subscription of another topic).
    pub async fn assert_nothing_published(&self, subscription: &str) {
        let topic = self.topic_of(subscription).await;
        let marker = uuid::Uuid::new_v4().simple().to_string();
        let attributes = BTreeMap::from([(MARKER.to_string(), marker.clone())]);
        self.publish(&topic, b"a marker of the tests", &attributes)
            .await;
        let mut seen = Vec::new();
        let deadline = Instant::now() + MARKER_WAIT;
        while !seen
            .iter()
            .any(|m: &Pulled| m.attributes.get(MARKER) == Some(&marker))
        {
            assert!(
                Instant::now() < deadline,
                "the marker published to {topic} did not reach {subscription} within {MARKER_WAIT:?}"
            );
            seen.extend(self.pull_once(subscription, 100).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Whatever was published with it.
        seen.extend(self.drain(subscription, 100).await);
        let others: Vec<String> = seen
            .iter()
            .filter(|m| m.attributes.get(MARKER) != Some(&marker))
            .map(|m| format!("{} {}", m.id, String::from_utf8_lossy(&m.data)))
            .collect();
        assert!(
            others.is_empty(),
            "{subscription} got {} message(s): {others:?}",
            others.len()
        );
    }

    /// The topic `subscription` is on.
    async fn topic_of(&self, subscription: &str) -> String {
        let response = self
            .http
            .get(format!("{}/subscriptions/{subscription}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "GET subscription {subscription}: {status} {body}"
        );
        let path = body["topic"].as_str().unwrap_or_default();
        path.rsplit('/').next().unwrap_or_default().to_string()
    }

    /// One pull of at most `max` messages, acknowledged; what the emulator
    /// has now (maybe nothing, even while messages wait).
    async fn pull_once(&self, subscription: &str, max: u32) -> Vec<Pulled> {
        let response = self
            .http
            .post(format!("{}/subscriptions/{subscription}:pull", self.base))
            .json(&json!({"maxMessages": max, "returnImmediately": true}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let response: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "pulling {subscription}: {status} {response}"
        );
        let pulled: Vec<Pulled> = response["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|received| {
                let message = &received["message"];
                Pulled {
                    id: message["messageId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    data: base64::engine::general_purpose::STANDARD
                        .decode(message["data"].as_str().unwrap_or_default())
                        .unwrap(),
                    attributes: serde_json::from_value(message["attributes"].clone())
                        .unwrap_or_default(),
                    ack_id: received["ackId"].as_str().unwrap().to_string(),
                }
            })
            .collect();
        if !pulled.is_empty() {
            let ack_ids: Vec<&str> = pulled.iter().map(|p| p.ack_id.as_str()).collect();
            let response = self
                .http
                .post(format!(
                    "{}/subscriptions/{subscription}:acknowledge",
                    self.base
                ))
                .json(&json!({"ackIds": ack_ids}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert!(
                status.is_success(),
                "acknowledging on {subscription}: {status} {}",
                response.text().await.unwrap_or_default()
            );
        }
        pulled
    }
}
