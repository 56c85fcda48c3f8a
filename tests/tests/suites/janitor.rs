//! The janitor: lease recovery, lost work, dead letters and retention.
//!
//! Retention runs on the embedded store always and on the Firestore emulator
//! with the `emulators` feature; everything that touches Pub/Sub needs the
//! emulators: the `janitor` binary for the full cycle, the library for the
//! rest. Each test has its own collection prefix, topics and subscriptions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::domain::Lease;
use shared::domain::destination::Target;
use shared::domain::download::{Download, FileType, NewDownload};
use shared::domain::job::{Job, NewJob, Retention};
use shared::domain::values::{JobError, JobKind};
use shared::janitor::{Janitor, JanitorReport, JanitorSettings, run_once};
use shared::store::Store;
use shared::store::backend::{Backend, Collection, Doc};
use shared::time::Timestamp;
use std::time::Duration;
use tests::harness::TestStore;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn doc(record: serde_json::Value) -> Doc {
    record.as_object().unwrap().clone()
}

async fn put(backend: &dyn Backend, collection: Collection, id: &str, doc: &Doc) {
    assert!(
        backend.create(collection, id, doc).await.unwrap().is_some(),
        "{id}"
    );
}

/// A job failed at `at`: it expires 30 days later.
fn failed_job(prompt: &str, at: Timestamp) -> Job {
    let mut job = Job::new(NewJob::new(prompt, JobKind::Image), at);
    job.fail(
        None,
        JobError::new("blocked", "no", false),
        at,
        &Retention::default(),
    )
    .unwrap();
    job
}

/// A download completed at `at`: it expires 7 days later.
fn completed_download(object: &str, at: Timestamp) -> Download {
    let mut download = Download::new(
        NewDownload {
            job_id: "j".into(),
            bucket: "out".into(),
            object: object.into(),
            generation: Some(1),
            destination: Target::File(format!("/mnt/{object}").into()),
            file_type: FileType::Image,
            priority: 10,
            size: Some(3),
            crc32c: None,
            tenant: Default::default(),
        },
        at,
    );
    download
        .claim(&Lease::new("copier", Duration::from_secs(60)), at)
        .unwrap();
    download
        .complete("copier", 3, at, &Retention::default())
        .unwrap();
    download
}

/// A record of the collections without a typed record here: just its times.
fn dated(id: &str, time_field: &str, expire_at: Option<Timestamp>) -> Doc {
    let mut doc = serde_json::json!({"id": id, time_field: Timestamp::now().to_string()});
    if let Some(at) = expire_at {
        doc["expire_at"] = serde_json::Value::String(at.to_string());
    }
    doc.as_object().unwrap().clone()
}

/// Records on both sides of `expire_at` in every collection; returns the ids
/// that must go and those that must stay.
async fn records_around_expiry(
    t: &TestStore,
) -> (Vec<(Collection, String)>, Vec<(Collection, String)>) {
    let now = Timestamp::now();
    let backend = t.backend.as_ref();
    let mut gone = Vec::new();
    let mut kept = Vec::new();

    let old = failed_job("failed 31 days ago", now.minus(31 * DAY));
    let recent = failed_job("failed 29 days ago", now.minus(29 * DAY));
    for job in [&old, &recent] {
        put(
            backend,
            Collection::Jobs,
            job.id(),
            &doc(serde_json::to_value(job).unwrap()),
        )
        .await;
    }
    let pending = t
        .store
        .create_job(NewJob::new("still waiting", JobKind::Image))
        .await
        .unwrap()
        .record;
    gone.push((Collection::Jobs, old.id().to_string()));
    kept.extend([
        (Collection::Jobs, recent.id().to_string()),
        (Collection::Jobs, pending.id().to_string()),
    ]);

    let old = completed_download("images/a/0.png", now.minus(8 * DAY));
    let recent = completed_download("images/b/0.png", now.minus(6 * DAY));
    for download in [&old, &recent] {
        put(
            backend,
            Collection::Downloads,
            download.id(),
            &doc(serde_json::to_value(download).unwrap()),
        )
        .await;
    }
    let pending = Download::new(
        NewDownload {
            job_id: "j".into(),
            bucket: "out".into(),
            object: "images/c/0.png".into(),
            generation: Some(1),
            destination: Target::File("/mnt/c".into()),
            file_type: FileType::Image,
            priority: 10,
            size: None,
            crc32c: None,
            tenant: Default::default(),
        },
        now,
    );
    put(
        backend,
        Collection::Downloads,
        pending.id(),
        &doc(serde_json::to_value(&pending).unwrap()),
    )
    .await;
    gone.push((Collection::Downloads, old.id().to_string()));
    kept.extend([
        (Collection::Downloads, recent.id().to_string()),
        (Collection::Downloads, pending.id().to_string()),
    ]);

    for (collection, time_field) in [
        (Collection::Rejected, "received_at"),
        (Collection::Budgets, "updated_at"),
    ] {
        let cases = [
            ("past", Some(now.minus(DAY))),
            ("future", Some(now.plus(DAY))),
            ("never", None),
        ];
        for (name, expire_at) in cases {
            let id = format!("{}-{name}", collection.name());
            put(backend, collection, &id, &dated(&id, time_field, expire_at)).await;
            if name == "past" {
                gone.push((collection, id));
            } else {
                kept.push((collection, id));
            }
        }
    }
    (gone, kept)
}

fn quiet_janitor(store: Store) -> Janitor {
    Janitor {
        store,
        bus: std::sync::Arc::new(shared::bus::store_queue::StoreQueue::default()),
        topics: shared::bus::Topics::default(),
        dead_letters: std::sync::Arc::new(shared::bus::dead_letters::NoDeadLetters),
    }
}

async fn retention_deletes_exactly_what_is_past_expire_at(t: TestStore) {
    let (gone, kept) = records_around_expiry(&t).await;
    let janitor = quiet_janitor(t.store.clone());
    let report = run_once(&janitor, &JanitorSettings::default())
        .await
        .unwrap();
    assert_eq!(
        (
            report.deleted_jobs,
            report.deleted_downloads,
            report.deleted_rejected,
            report.deleted_budgets,
            report.errors
        ),
        (1, 1, 1, 1, 0),
        "{report:?}"
    );
    for (collection, id) in &gone {
        let found = t.backend.get(*collection, id).await.unwrap();
        assert!(found.is_none(), "{collection:?} {id} should be gone");
    }
    for (collection, id) in &kept {
        let found = t.backend.get(*collection, id).await.unwrap();
        assert!(found.is_some(), "{collection:?} {id} should stay");
    }
    let again = run_once(&janitor, &JanitorSettings::default())
        .await
        .unwrap();
    assert_eq!(again, JanitorReport::default());
}

#[tokio::test]
async fn retention_deletes_exactly_what_is_past_expire_at_on_the_embedded_store() {
    retention_deletes_exactly_what_is_past_expire_at(
        tests::harness::embedded(Retention::default()).await,
    )
    .await;
}

#[cfg(feature = "emulators")]
mod emulators {
    use super::*;
    use serde_json::Value;
    use shared::bus::Topics;
    use shared::bus::dead_letters::{DeadLetters, PubSubDeadLetters, SOURCE_DELIVERY_COUNT};
    use shared::bus::pubsub::{PubSubBus, PubSubConfig};
    use shared::domain::values::{ATTEMPTS_EXHAUSTED, JobStatus};
    use shared::generate::GeneratorSettings;
    use shared::generate::service::router;
    use shared::generate::videos::VideoGenerator;
    use shared::janitor::DEAD_LETTERED;
    use shared::vertex::DEFAULT_VIDEO_MODEL;
    use shared::vertex::client::VertexClient;
    use std::collections::BTreeMap;
    use std::process::Stdio;
    use std::sync::Arc;
    use tests::fake_vertex::{FakeOptions, Verb};
    use tests::harness::{emulator_command, emulator_project, unique_prefix};
    use tests::pubsub::Emulator;
    use tests::stages::{push, serve};

    #[tokio::test]
    async fn retention_deletes_exactly_what_is_past_expire_at_on_firestore() {
        retention_deletes_exactly_what_is_past_expire_at(
            tests::harness::firestore(Retention::default()).await,
        )
        .await;
    }

    /// Topics and pull subscriptions of one test on the Pub/Sub emulator,
    /// over a Firestore store with the same prefix.
    struct Wiring {
        prefix: String,
        store: Store,
        backend: Arc<dyn Backend>,
        topics: Topics,
        pubsub: Emulator,
    }

    impl Wiring {
        async fn new() -> Self {
            let prefix = unique_prefix();
            let backend: Arc<dyn Backend> =
                Arc::new(tests::harness::firestore_backend_with_prefix(&prefix).await);
            let topics = Topics::new(prefix.clone());
            let pubsub = Emulator::new();
            for topic in topics.all() {
                pubsub.topic(&topic).await;
            }
            let wiring = Self {
                store: Store::new(backend.clone()),
                backend,
                topics,
                pubsub,
                prefix,
            };
            wiring
                .pubsub
                .pull_subscription(&wiring.pull("image"), &wiring.topics.image_jobs())
                .await;
            wiring
                .pubsub
                .pull_subscription(&wiring.pull("video"), &wiring.topics.video_jobs())
                .await;
            wiring
                .pubsub
                .pull_subscription(&wiring.pull("events"), &wiring.topics.job_events())
                .await;
            wiring.pubsub.topic(&wiring.dead_letter_topic()).await;
            wiring
                .pubsub
                .pull_subscription(
                    &wiring.dead_letter_subscription(),
                    &wiring.dead_letter_topic(),
                )
                .await;
            wiring
        }

        fn pull(&self, what: &str) -> String {
            format!("{}{what}-pull", self.prefix)
        }

        fn dead_letter_topic(&self) -> String {
            format!("{}asmr-dead-letter", self.prefix)
        }

        /// The janitor's default name with this test's topic prefix.
        fn dead_letter_subscription(&self) -> String {
            format!("{}asmr-dead-letter-janitor", self.prefix)
        }

        /// Job ids published to the topic of `kind` since the last look.
        async fn published(&self, kind: JobKind) -> Vec<String> {
            let what = match kind {
                JobKind::Image => "image",
                JobKind::Video => "video",
            };
            self.pubsub
                .drain(&self.pull(what), 100)
                .await
                .iter()
                .map(|m| m.json()["job_id"].as_str().unwrap().to_string())
                .collect()
        }

        async fn dead_letter(&self, data: &str, attributes: &[(&str, &str)]) {
            let attributes: BTreeMap<String, String> = attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.pubsub
                .publish(&self.dead_letter_topic(), data.as_bytes(), &attributes)
                .await;
        }

        async fn job(&self, kind: JobKind, max_attempts: u32) -> Job {
            let mut new = NewJob::new("sand pouring through fingers", kind);
            new.max_attempts = max_attempts;
            self.store.create_job(new).await.unwrap().record
        }

        async fn bus(&self) -> Arc<PubSubBus> {
            Arc::new(PubSubBus::new(self.pubsub_config()).await.unwrap())
        }

        fn pubsub_config(&self) -> PubSubConfig {
            PubSubConfig {
                project: emulator_project(),
                emulator_endpoint: Some(std::env::var("PUBSUB_EMULATOR_HOST").unwrap()),
            }
        }

        async fn janitor(&self, subscription: &str) -> Janitor {
            let letters =
                PubSubDeadLetters::new(self.pubsub_config(), subscription, Duration::from_secs(2))
                    .await
                    .unwrap();
            Janitor {
                store: self.store.clone(),
                bus: self.bus().await,
                topics: self.topics.clone(),
                dead_letters: Arc::new(letters),
            }
        }

        /// Runs the `janitor` binary with the documented environment; returns
        /// whether it succeeded and its JSON summary line.
        async fn run_binary(&self, extra: &[(&str, &str)]) -> (bool, Value) {
            let mut command = emulator_command("janitor", &self.prefix);
            command.envs([("LOST_AFTER", "10m"), ("DEAD_LETTER_WAIT", "2s")]);
            command.envs(extra.iter().copied());
            command.stdout(Stdio::piped()).stderr(Stdio::inherit());
            let output = tokio::task::spawn_blocking(move || command.output().unwrap())
                .await
                .unwrap();
            let stdout = String::from_utf8(output.stdout).unwrap();
            let lines: Vec<Value> = stdout
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|line| line["event"] == "janitor.summary")
                .collect();
            // The plain summary line, and the log line with the same counts.
            let (plain, logged): (Vec<&Value>, Vec<&Value>) = lines
                .iter()
                .partition(|line| line.get("severity").is_none());
            assert_eq!((plain.len(), logged.len()), (1, 1), "{stdout}");
            let summary = plain[0].clone();
            // The log line's fields are camelCase, as Cloud Logging shows them.
            for (field, count) in summary.as_object().unwrap() {
                if count.is_u64() {
                    let camel = camel_case(field);
                    assert_eq!(&logged[0][&camel], count, "{camel} in {stdout}");
                }
            }
            (output.status.success(), summary)
        }
    }

    fn camel_case(snake: &str) -> String {
        let mut parts = snake.split('_');
        let mut out = parts.next().unwrap_or_default().to_string();
        for part in parts {
            let mut chars = part.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        }
        out
    }

    fn counts(summary: &Value) -> BTreeMap<String, u64> {
        summary
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
            .collect()
    }

    fn expect(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        let mut all: BTreeMap<String, u64> = [
            "requeued",
            "failed_leases",
            "republished",
            "dead_lettered",
            "dead_letter_requeued",
            "dead_letter_other",
            "dead_letter_skipped",
            "deleted_jobs",
            "deleted_downloads",
            "deleted_rejected",
            "deleted_budgets",
            "deleted_held",
            "deleted_charges",
            "deleted_limits",
            "deleted_webhooks",
            "events_published",
            "errors",
        ]
        .into_iter()
        .map(|k| (k.to_string(), 0))
        .collect();
        for (k, v) in pairs {
            assert!(all.contains_key(*k), "{k}");
            all.insert(k.to_string(), *v);
        }
        all
    }

    #[tokio::test]
    async fn the_janitor_binary_recovers_leases_lost_work_dead_letters_and_expired_records() {
        let w = Wiring::new().await;
        let gone_lease = Lease::new("vanished-worker", Duration::ZERO);
        // An expired lease with attempts left, and one with none left.
        let requeue = w.job(JobKind::Image, 3).await;
        w.store.claim_job(requeue.id(), &gone_lease).await.unwrap();
        let spent = w.job(JobKind::Image, 1).await;
        w.store.claim_job(spent.id(), &gone_lease).await.unwrap();
        // A job whose message was dead-lettered after a quota error.
        let quota = w.job(JobKind::Image, 3).await;
        let lease = Lease::new("image-generator-1", Duration::from_secs(60));
        w.store.claim_job(quota.id(), &lease).await.unwrap();
        let last = JobError::new(
            "rate_limited",
            "Quota exceeded for aiplatform.googleapis.com",
            true,
        );
        w.store
            .release_job(quota.id(), &lease.owner, Some(last.clone()))
            .await
            .unwrap();
        w.dead_letter(
            &format!(r#"{{"job_id":"{}"}}"#, quota.id()),
            &[(SOURCE_DELIVERY_COUNT, "5")],
        )
        .await;
        // A dead-lettered request: not a job message.
        w.dead_letter(
            r#"{"prompt": "rain", "kind": "image"}"#,
            &[("kind", "image")],
        )
        .await;
        // A pending video job nobody touched for an hour: its message is lost.
        let lost = Job::new(
            NewJob::new("a brush on a microphone", JobKind::Video),
            Timestamp::now().minus(Duration::from_secs(3600)),
        );
        put(
            w.backend.as_ref(),
            Collection::Jobs,
            lost.id(),
            &doc(serde_json::to_value(&lost).unwrap()),
        )
        .await;
        // One expired failed job and one that stays.
        let expired = failed_job("failed long ago", Timestamp::now().minus(31 * DAY));
        let recent = failed_job("failed yesterday", Timestamp::now().minus(DAY));
        for job in [&expired, &recent] {
            put(
                w.backend.as_ref(),
                Collection::Jobs,
                job.id(),
                &doc(serde_json::to_value(job).unwrap()),
            )
            .await;
        }

        let (ok, summary) = w.run_binary(&[]).await;
        assert!(ok, "{summary}");
        assert_eq!(
            counts(&summary),
            expect(&[
                ("requeued", 1),
                ("failed_leases", 1),
                ("republished", 1),
                ("dead_lettered", 1),
                ("dead_letter_other", 1),
                ("deleted_jobs", 1),
            ]),
            "{summary}"
        );

        assert_eq!(w.published(JobKind::Image).await, [requeue.id()]);
        assert_eq!(w.published(JobKind::Video).await, [lost.id()]);
        assert_eq!(
            w.store.job(requeue.id()).await.unwrap().status(),
            JobStatus::Pending
        );
        let spent = w.store.job(spent.id()).await.unwrap();
        assert_eq!(spent.status(), JobStatus::Failed);
        assert_eq!(spent.error().unwrap().code, ATTEMPTS_EXHAUSTED);
        let quota = w.store.job(quota.id()).await.unwrap();
        assert_eq!(quota.status(), JobStatus::Failed);
        let error = quota.error().unwrap();
        assert_eq!(error.code, DEAD_LETTERED);
        assert!(error.message.contains(&last.message), "{error:?}");
        assert!(w.store.get_job(expired.id()).await.unwrap().is_none());
        assert!(w.store.get_job(recent.id()).await.unwrap().is_some());
        // Both dead letters were acknowledged.
        w.pubsub
            .assert_nothing_published(&w.dead_letter_subscription())
            .await;
        // The store, not the janitor, announced the two failures.
        let mut events: Vec<(String, String)> = w
            .pubsub
            .drain(&w.pull("events"), 10)
            .await
            .iter()
            .map(|m| {
                let event = m.json();
                (
                    event["job_id"].as_str().unwrap().to_string(),
                    event["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        events.sort();
        let mut wanted = vec![
            (spent.id().to_string(), "failed".to_string()),
            (quota.id().to_string(), "failed".to_string()),
        ];
        wanted.sort();
        assert_eq!(events, wanted);

        // At once again: nothing left to do, nothing published twice.
        let (ok, summary) = w.run_binary(&[]).await;
        assert!(ok, "{summary}");
        assert_eq!(counts(&summary), expect(&[]), "{summary}");
        w.pubsub.assert_nothing_published(&w.pull("image")).await;
        w.pubsub.assert_nothing_published(&w.pull("video")).await;
    }

    #[tokio::test]
    async fn a_missing_dead_letter_subscription_fails_the_run_but_not_the_other_sweeps() {
        let w = Wiring::new().await;
        let requeue = w.job(JobKind::Video, 3).await;
        w.store
            .claim_job(requeue.id(), &Lease::new("gone", Duration::ZERO))
            .await
            .unwrap();
        let missing = format!("{}no-such-subscription", w.prefix);
        let (ok, summary) = w
            .run_binary(&[("DEAD_LETTER_SUBSCRIPTION", missing.as_str())])
            .await;
        assert!(!ok, "{summary}");
        assert_eq!(
            counts(&summary),
            expect(&[("requeued", 1), ("errors", 1)]),
            "{summary}"
        );
        assert_eq!(
            summary["failed_sweeps"],
            serde_json::json!(["dead_letters"])
        );
        assert_eq!(w.published(JobKind::Video).await, [requeue.id()]);
    }

    #[tokio::test]
    async fn a_lost_pending_job_is_published_once_and_not_again_on_an_immediate_second_run() {
        let w = Wiring::new().await;
        let idle_since = Timestamp::now().minus(Duration::from_secs(3600));
        let lost = Job::new(NewJob::new("a page turning", JobKind::Image), idle_since);
        let lost_doc = doc(serde_json::to_value(&lost).unwrap());
        put(w.backend.as_ref(), Collection::Jobs, lost.id(), &lost_doc).await;
        let fresh = w.job(JobKind::Image, 3).await;
        let janitor = w.janitor(&w.dead_letter_subscription()).await;
        let settings = JanitorSettings {
            lost_after: Duration::from_secs(600),
            ..JanitorSettings::default()
        };
        let report = run_once(&janitor, &settings).await.unwrap();
        assert_eq!((report.republished, report.errors), (1, 0), "{report:?}");
        let again = run_once(&janitor, &settings).await.unwrap();
        assert_eq!((again.republished, again.errors), (0, 0), "{again:?}");
        assert_eq!(w.published(JobKind::Image).await, [lost.id()]);
        // The stamp is the only change.
        let stamped = w.store.job(lost.id()).await.unwrap();
        assert!(stamped.updated_at() > lost.updated_at());
        let mut expected = lost.clone();
        expected.stamp_dispatched(stamped.updated_at()).unwrap();
        assert_eq!(stamped, expected);
        assert_eq!(w.store.job(fresh.id()).await.unwrap(), fresh);
    }

    #[tokio::test]
    async fn dead_letters_beyond_one_batch_are_all_settled_and_acknowledged() {
        let w = Wiring::new().await;
        let mut jobs = Vec::new();
        for _ in 0..5 {
            let job = w.job(JobKind::Video, 3).await;
            w.dead_letter(
                &format!(r#"{{"job_id":"{}"}}"#, job.id()),
                &[(SOURCE_DELIVERY_COUNT, "5")],
            )
            .await;
            jobs.push(job);
        }
        // A finished job's message needs nothing.
        let cancelled = w.job(JobKind::Image, 3).await;
        w.store.cancel_job(cancelled.id()).await.unwrap();
        w.dead_letter(&format!(r#"{{"job_id":"{}"}}"#, cancelled.id()), &[])
            .await;
        for n in 0..130 {
            w.dead_letter(
                &format!("objects/{n}.png finalized"),
                &[("eventType", "OBJECT_FINALIZE")],
            )
            .await;
        }
        let janitor = w.janitor(&w.dead_letter_subscription()).await;
        let report = run_once(&janitor, &JanitorSettings::default())
            .await
            .unwrap();
        assert_eq!(
            (
                report.dead_lettered,
                report.dead_letter_other,
                report.dead_letter_skipped,
                report.errors
            ),
            (5, 130, 1, 0),
            "{report:?}"
        );
        for job in &jobs {
            let error = w
                .store
                .job(job.id())
                .await
                .unwrap()
                .error()
                .cloned()
                .unwrap();
            assert_eq!(
                (error.code.as_str(), error.message.as_str()),
                (DEAD_LETTERED, "delivery failed 5 times")
            );
        }
        w.pubsub
            .assert_nothing_published(&w.dead_letter_subscription())
            .await;
    }

    /// A closed session gives the subscription back even while its
    /// adapter lives on: what it held unacknowledged comes back, and a
    /// message published afterwards reaches the next puller rather than a
    /// stream that is no longer read. Several rounds, since a stream that
    /// lingers does so only some of the time.
    #[tokio::test]
    async fn a_closed_dead_letter_session_gives_back_what_it_held_and_takes_nothing_more() {
        let w = Wiring::new().await;
        let subscription = w.dead_letter_subscription();
        let letters =
            PubSubDeadLetters::new(w.pubsub_config(), &subscription, Duration::from_secs(2))
                .await
                .unwrap();
        for round in 0..5 {
            for n in 0..3 {
                w.dead_letter(&format!("round {round} letter {n}"), &[])
                    .await;
            }
            let mut pulled = Vec::new();
            while pulled.len() < 3 {
                let batch = letters.pull(100).await.unwrap();
                assert!(!batch.is_empty(), "round {round}: only {pulled:?}");
                pulled.extend(batch);
            }
            let handled: Vec<String> = pulled[..2].iter().map(|l| l.ack_id.clone()).collect();
            letters.ack(&handled).await.unwrap();
            letters.close().await.unwrap();

            let held = &pulled[2].message_id;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut back = Vec::new();
            while !back.contains(held) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: the unacknowledged {held} did not come back; got {back:?}"
                );
                back.extend(
                    w.pubsub
                        .drain(&subscription, 100)
                        .await
                        .into_iter()
                        .map(|m| m.id),
                );
            }
            assert_eq!(back, vec![held.clone()], "round {round}");
            w.pubsub.assert_nothing_published(&subscription).await;
        }
    }

    #[tokio::test]
    async fn an_expired_generating_lease_is_requeued_and_resumes_its_operation_without_paying_again()
     {
        let world = tests::stages::emulators(FakeOptions::default()).await;
        let prefix = world.prefix.clone().unwrap();
        let topics = Topics::new(prefix.clone());
        let pubsub = Emulator::new();
        pubsub.topic(&topics.video_jobs()).await;
        let pull = format!("{prefix}video-pull");
        pubsub.pull_subscription(&pull, &topics.video_jobs()).await;

        let settings = GeneratorSettings {
            output_bucket: world.bucket.clone(),
            default_model: DEFAULT_VIDEO_MODEL.into(),
            dry_run: false,
            lease_ttl: Duration::from_secs(600),
            operation_timeout: Duration::from_secs(1800),
            retry: world.fake.config().retry,
        };
        let generator = VideoGenerator::new(
            world.store.clone(),
            world.objects.clone(),
            Arc::new(VertexClient::new(world.fake.config()).unwrap()),
            settings,
        );
        let url = serve(router(Arc::new(generator))).await;
        let id = world.job("pages turning slowly", JobKind::Video, &[]).await;
        assert_eq!(push(&url, &id, "m1").await, 200);
        let generating = world.store.job(&id).await.unwrap();
        assert_eq!(generating.status(), JobStatus::Generating);
        // The poller stopped watching: the operation's lease runs out.
        let owner = generating.lease_owner().map(str::to_string).unwrap();
        world
            .store
            .extend_job_lease(&id, &Lease::new(owner, Duration::ZERO))
            .await
            .unwrap();

        let janitor = Janitor {
            store: world.store.clone(),
            bus: Arc::new(
                PubSubBus::new(PubSubConfig {
                    project: emulator_project(),
                    emulator_endpoint: Some(std::env::var("PUBSUB_EMULATOR_HOST").unwrap()),
                })
                .await
                .unwrap(),
            ),
            topics,
            dead_letters: Arc::new(shared::bus::dead_letters::NoDeadLetters),
        };
        let report = run_once(&janitor, &JanitorSettings::default())
            .await
            .unwrap();
        assert_eq!((report.requeued, report.errors), (1, 0), "{report:?}");
        let requeued = world.store.job(&id).await.unwrap();
        assert_eq!(requeued.status(), JobStatus::Pending);
        assert_eq!(requeued.operation_name(), generating.operation_name());

        // The generator takes the re-published message and watches the same
        // operation; the poller finishes it. One submit in all.
        let messages = pubsub.drain(&pull, 10).await;
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].json()["job_id"], id.as_str());
        assert_eq!(push(&url, &id, &messages[0].id).await, 200);
        let resumed = world.store.job(&id).await.unwrap();
        assert_eq!(
            (
                resumed.status(),
                &resumed.operation_name(),
                resumed.submitted_at()
            ),
            (
                JobStatus::Generating,
                &generating.operation_name(),
                generating.submitted_at()
            )
        );
        let poller = world.poller(Duration::from_secs(1800));
        poller.run().await.unwrap();
        assert_eq!(
            world.store.job(&id).await.unwrap().status(),
            JobStatus::Completed
        );
        assert_eq!(world.fake.calls(Verb::PredictLongRunning), 1);
    }
}
