//! The bus contract: the same tests, unchanged, against every adapter.
//! `memory` always runs; `pubsub` runs on the Pub/Sub emulator with the
//! `emulators` feature (tests/run turns it on). Each test publishes to topics
//! of its own and reads them back through a tap attached before publishing:
//! a subscriber of the memory bus, or a pull subscription made through the
//! emulator's REST API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::future::join_all;
use serde_json::{Value, json};
use shared::bus::{Bus, Topics, publish_json};
use shared::error::Error;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How long a tap waits for the messages a test expects.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(20);

/// A message as a tap received it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Received {
    id: String,
    data: Vec<u8>,
    attributes: BTreeMap<String, String>,
}

/// A bus under test and the means to read back what it published.
struct TestBus {
    bus: Arc<dyn Bus>,
    reader: Reader,
}

enum Reader {
    Memory(Arc<shared::bus::memory::MemoryBus>),
    #[cfg_attr(not(feature = "emulators"), allow(dead_code))]
    PubSub {
        http: reqwest::Client,
        /// `http://host:port/v1/projects/P`.
        base: String,
    },
}

/// Receives what is published to one topic after it was made.
enum Tap {
    Memory(tokio::sync::mpsc::UnboundedReceiver<shared::bus::memory::Message>),
    PubSub {
        http: reqwest::Client,
        /// `http://host:port/v1/projects/P/subscriptions/S`.
        subscription: String,
    },
}

impl TestBus {
    /// A fresh, unique topic name, created.
    async fn fresh_topic(&self) -> String {
        let topic = unique("asmr-test-");
        self.bus.ensure_topic(&topic).await.unwrap();
        topic
    }

    /// Starts receiving what `topic` gets from now on.
    async fn tap(&self, topic: &str) -> Tap {
        match &self.reader {
            Reader::Memory(bus) => Tap::Memory(bus.subscribe(topic)),
            Reader::PubSub { http, base } => {
                let subscription = format!("{base}/subscriptions/{}", unique("asmr-test-sub-"));
                let project = base.rsplit('/').next().unwrap();
                let response = http
                    .put(&subscription)
                    .json(&json!({
                        "topic": format!("projects/{project}/topics/{topic}"),
                        "ackDeadlineSeconds": 60,
                    }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                assert!(
                    status.is_success(),
                    "creating subscription {subscription}: {status} {}",
                    response.text().await.unwrap_or_default()
                );
                Tap::PubSub {
                    http: http.clone(),
                    subscription,
                }
            }
        }
    }
}

impl Tap {
    /// Waits for `n` messages, in arrival order; fails the test if fewer
    /// arrive within [`ARRIVAL_TIMEOUT`].
    async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
        while received.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} messages arrived within {ARRIVAL_TIMEOUT:?}",
                received.len()
            );
            match self {
                Tap::Memory(receiver) => {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(m)) => received.push(Received {
                            id: m.id,
                            data: m.data.to_vec(),
                            attributes: m.attributes,
                        }),
                        Ok(None) => panic!("the memory bus dropped its subscriber"),
                        Err(_) => {}
                    }
                }
                Tap::PubSub { http, subscription } => {
                    let batch = pull(http, subscription).await;
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    received.extend(batch);
                }
            }
        }
        received
    }
}

/// One REST pull, acknowledged so nothing is redelivered.
async fn pull(http: &reqwest::Client, subscription: &str) -> Vec<Received> {
    use base64::Engine;
    let response = http
        .post(format!("{subscription}:pull"))
        .json(&json!({ "maxMessages": 100, "returnImmediately": true }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(
        status.is_success(),
        "pulling {subscription}: {status} {body}"
    );
    let mut ack_ids = Vec::new();
    let mut received = Vec::new();
    for item in body["receivedMessages"].as_array().into_iter().flatten() {
        ack_ids.push(item["ackId"].as_str().unwrap().to_string());
        let message = &item["message"];
        let data = base64::engine::general_purpose::STANDARD
            .decode(message["data"].as_str().unwrap_or_default())
            .unwrap();
        let attributes = message["attributes"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        received.push(Received {
            id: message["messageId"].as_str().unwrap().to_string(),
            data,
            attributes,
        });
    }
    if !ack_ids.is_empty() {
        let response = http
            .post(format!("{subscription}:acknowledge"))
            .json(&json!({ "ackIds": ack_ids }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "acknowledging");
    }
    received
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---- the adapters ----

fn memory() -> TestBus {
    let bus = Arc::new(shared::bus::memory::MemoryBus::new());
    TestBus {
        bus: bus.clone(),
        reader: Reader::Memory(bus),
    }
}

#[cfg(feature = "emulators")]
async fn pubsub() -> TestBus {
    use shared::bus::pubsub::{PubSubBus, PubSubConfig};
    let host = std::env::var("PUBSUB_EMULATOR_HOST").expect(
        "PUBSUB_EMULATOR_HOST is not set: run the tests with tests/run, which starts the emulator",
    );
    let project = tests::harness::emulator_project();
    let bus = PubSubBus::new(PubSubConfig {
        project: project.clone(),
        emulator_endpoint: Some(host.clone()),
    })
    .await
    .expect("the Pub/Sub emulator client builds");
    TestBus {
        bus: Arc::new(bus),
        reader: Reader::PubSub {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: format!("http://{host}/v1/projects/{project}"),
        },
    }
}

// ---- the tests, each a function of a fresh bus ----

async fn a_json_message_arrives_with_its_attributes_and_id(t: TestBus) {
    let topic = t.fresh_topic().await;
    let mut tap = t.tap(&topic).await;
    let body = json!({ "job_id": "job-42", "note": "héllo ✓" });
    let attrs = attributes(&[("kind", "video"), ("request_id", "r-1")]);

    let id = publish_json(t.bus.as_ref(), &topic, &body, &attrs)
        .await
        .unwrap();

    let received = tap.take(1).await;
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.id, id, "the id publish returned is the delivered one");
    assert!(!id.is_empty());
    assert_eq!(serde_json::from_slice::<Value>(&got.data).unwrap(), body);
    assert_eq!(got.attributes, attrs);
}

async fn raw_bytes_without_attributes_arrive_unchanged(t: TestBus) {
    let topic = t.fresh_topic().await;
    let mut tap = t.tap(&topic).await;
    let data: Vec<u8> = (0..=255u8).collect();
    let id = t
        .bus
        .publish(&topic, data.clone().into(), &BTreeMap::new())
        .await
        .unwrap();
    let got = tap.take(1).await.remove(0);
    assert_eq!(
        (got.id, got.data, got.attributes),
        (id, data, BTreeMap::new())
    );
}

async fn a_hundred_concurrent_publishes_get_distinct_ids_and_all_arrive(t: TestBus) {
    let topic = t.fresh_topic().await;
    let mut tap = t.tap(&topic).await;
    let publishes = (0..100).map(|i| {
        let bus = t.bus.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let attrs = attributes(&[("n", &i.to_string())]);
            let id = publish_json(
                bus.as_ref(),
                &topic,
                &json!({ "job_id": format!("job-{i}") }),
                &attrs,
            )
            .await
            .unwrap();
            (id, i)
        })
    });
    let sent: BTreeMap<String, i32> = join_all(publishes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sent.len(), 100, "100 distinct message ids");

    let received = tap.take(100).await;
    let received: BTreeMap<String, i32> = received
        .into_iter()
        .map(|m| {
            let n: i32 = m.attributes["n"].parse().unwrap();
            let body: Value = serde_json::from_slice(&m.data).unwrap();
            assert_eq!(body["job_id"], format!("job-{n}"));
            (m.id, n)
        })
        .collect();
    assert_eq!(received, sent, "every message arrived once, under its id");
}

async fn ensuring_a_topic_twice_is_fine(t: TestBus) {
    let topic = unique("asmr-test-");
    t.bus.ensure_topic(&topic).await.unwrap();
    t.bus.ensure_topic(&topic).await.unwrap();
    let mut tap = t.tap(&topic).await;
    let id = t
        .bus
        .publish(&topic, "still there".into(), &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(tap.take(1).await[0].id, id);
}

async fn the_pipeline_topics_work_with_a_prefix(t: TestBus) {
    let topics = Topics::new(unique("t") + "-");
    let mut ids = HashSet::new();
    for topic in topics.all() {
        assert!(topic.starts_with(topics.prefix()), "{topic}");
        t.bus.ensure_topic(&topic).await.unwrap();
        let mut tap = t.tap(&topic).await;
        let id = publish_json(
            t.bus.as_ref(),
            &topic,
            &json!({ "job_id": "j" }),
            &BTreeMap::new(),
        )
        .await
        .unwrap();
        assert_eq!(tap.take(1).await[0].id, id, "{topic}");
        assert!(ids.insert(id), "ids are unique across topics");
    }
}

async fn publishing_to_a_missing_topic_is_not_found(t: TestBus) {
    let topic = unique("asmr-test-missing-");
    let err = t
        .bus
        .publish(&topic, "lost".into(), &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { kind: "topic", id } if *id == topic),
        "{err}"
    );
    assert!(!err.is_retryable());
}

async fn an_empty_message_without_attributes_is_refused(t: TestBus) {
    let topic = t.fresh_topic().await;
    let err = t
        .bus
        .publish(&topic, bytes::Bytes::new(), &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("publishing to topic {topic}")),
        "{err}"
    );
    // An attribute alone is a valid message.
    t.bus
        .publish(
            &topic,
            bytes::Bytes::new(),
            &attributes(&[("kind", "image")]),
        )
        .await
        .unwrap();
}

macro_rules! contract {
    ($adapter:ident, $make:expr) => {
        mod $adapter {
            use super::*;

            #[tokio::test]
            async fn a_json_message_arrives_with_its_attributes_and_id() {
                super::a_json_message_arrives_with_its_attributes_and_id($make).await
            }
            #[tokio::test]
            async fn raw_bytes_without_attributes_arrive_unchanged() {
                super::raw_bytes_without_attributes_arrive_unchanged($make).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn a_hundred_concurrent_publishes_get_distinct_ids_and_all_arrive() {
                super::a_hundred_concurrent_publishes_get_distinct_ids_and_all_arrive($make).await
            }
            #[tokio::test]
            async fn ensuring_a_topic_twice_is_fine() {
                super::ensuring_a_topic_twice_is_fine($make).await
            }
            #[tokio::test]
            async fn the_pipeline_topics_work_with_a_prefix() {
                super::the_pipeline_topics_work_with_a_prefix($make).await
            }
            #[tokio::test]
            async fn publishing_to_a_missing_topic_is_not_found() {
                super::publishing_to_a_missing_topic_is_not_found($make).await
            }
            #[tokio::test]
            async fn an_empty_message_without_attributes_is_refused() {
                super::an_empty_message_without_attributes_is_refused($make).await
            }
        }
    };
}

contract!(memory, memory());
#[cfg(feature = "emulators")]
contract!(pubsub, pubsub().await);

/// Topic names, whatever the adapter.
mod topics {
    use shared::bus::Topics;
    use shared::domain::values::JobKind;

    #[test]
    fn by_default_the_names_are_exactly_the_designs() {
        let topics = Topics::default();
        assert_eq!(topics.image_jobs(), "asmr-image-jobs");
        assert_eq!(topics.video_jobs(), "asmr-video-jobs");
        assert_eq!(topics.job_events(), "asmr-job-events");
        assert_eq!(topics.requests(), "asmr-requests");
        assert_eq!(topics.for_kind(JobKind::Image), "asmr-image-jobs");
        assert_eq!(topics.for_kind(JobKind::Video), "asmr-video-jobs");
    }

    #[test]
    fn a_prefix_goes_in_front_of_every_name() {
        let topics = Topics::new("dev-");
        assert_eq!(topics.image_jobs(), "dev-asmr-image-jobs");
        assert_eq!(topics.video_jobs(), "dev-asmr-video-jobs");
        assert_eq!(topics.job_events(), "dev-asmr-job-events");
        assert_eq!(topics.requests(), "dev-asmr-requests");
        assert_eq!(topics.for_kind(JobKind::Image), "dev-asmr-image-jobs");
        assert_eq!(topics.for_kind(JobKind::Video), "dev-asmr-video-jobs");
    }
}
