//! The pipeline end to end on the emulators, in its cloud topology: the
//! google-cloud-cli's own `gcloud pubsub topics publish` → push → intake →
//! push → generators (fake Vertex AI) → fake-gcs-server → bucket
//! notification → push → downloader → files on disk, and one job event per
//! job on `asmr-job-events`. Every stage is its real binary with only its
//! documented environment.

#![cfg(feature = "emulators")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::bus::Topics;
use shared::domain::destination::Target;
use shared::domain::values::{JobKind, JobStatus};
use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;
use tests::fake_vertex::{FakeOptions, Verb};
use tests::harness::{binary, emulator_project};
use tests::process::{Running, free_port, wait_healthy, wait_until};
use tests::pubsub::Emulator;
use tests::stages::{World, emulators};

/// A stage of this topology serving on `port`.
fn stage(name: &str, world: &World, port: u16, extra: &[(&str, String)]) -> Running {
    let mut env = vec![
        ("POLLING_INTERVAL", "200ms".to_string()),
        ("PORT", port.to_string()),
    ];
    env.extend_from_slice(extra);
    Running(world.stage_command(name, &env).spawn().unwrap())
}

/// `gcloud pubsub topics publish TOPIC --message M [--attribute A]`, as a
/// user types it (tests/run points gcloud at the emulator).
fn gcloud_publish(topic: &str, message: &str, attributes: &[(&str, &str)]) {
    let mut command = Command::new("gcloud");
    command.args(["pubsub", "topics", "publish", topic, "--message", message]);
    if !attributes.is_empty() {
        let joined: Vec<String> = attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        command.args(["--attribute", &joined.join(",")]);
    }
    let output: Output = command.output().expect("gcloud is installed");
    assert!(
        output.status.success(),
        "gcloud pubsub topics publish failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `asmr ARGS` as an operator of `world`, which must succeed; its JSON.
fn asmr(world: &World, args: &[&str]) -> serde_json::Value {
    let output = world.operator(args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_requests_become_delivered_files_and_one_event_per_job() {
    let world = emulators(FakeOptions::default()).await;
    let prefix = world.prefix.clone().unwrap();
    let topics = Topics::new(prefix.clone());
    let pubsub = Emulator::new();
    for topic in topics.all() {
        pubsub.topic(&topic).await;
    }
    let events = format!("{prefix}events");
    pubsub
        .pull_subscription(&events, &topics.job_events())
        .await;

    let destination = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let _intake = stage("intake", &world, ports[0], &[]);
    let _images = stage("image-generator", &world, ports[1], &[]);
    let _videos = stage("video-generator", &world, ports[2], &[]);
    let _downloader = stage(
        "downloader",
        &world,
        ports[3],
        &[
            (
                "DOWNLOAD_DESTINATION",
                destination.path().display().to_string(),
            ),
            ("DOWNLOAD_LEASE", "2s".to_string()),
        ],
    );
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for url in &urls {
        wait_healthy(url).await;
    }
    let gcs_events = std::env::var("ASMR_TEST_GCS_EVENTS_TOPIC").unwrap();
    for (name, topic, url) in [
        ("requests", topics.requests(), &urls[0]),
        ("images", topics.image_jobs(), &urls[1]),
        ("videos", topics.video_jobs(), &urls[2]),
        ("objects", gcs_events, &urls[3]),
    ] {
        pubsub
            .push(&format!("{prefix}{name}"), &topic, &format!("{url}/"))
            .await;
    }

    // Three ways a user asks, one of them twice.
    let requests = topics.requests();
    gcloud_publish(
        &requests,
        "Rain on a tin roof at night",
        &[("kind", "image")],
    );
    gcloud_publish(
        &requests,
        r#"{"kind": "image", "prompts": ["Slime being folded slowly", "A comb through fine sand"]}"#,
        &[],
    );
    for _ in 0..2 {
        gcloud_publish(
            &requests,
            "Waves over black pebbles",
            &[("kind", "video"), ("request_id", &format!("{prefix}waves"))],
        );
    }
    // And one that cannot be a job: no kind.
    gcloud_publish(&requests, "A prompt with no kind", &[]);

    wait_until("four jobs", Duration::from_secs(60), async || {
        world.jobs().await.len() >= 4
    })
    .await;
    // The video operation finishes when the poller (a Cloud Run job, every
    // minute) looks at it.
    wait_until(
        "the video job to be generating",
        Duration::from_secs(60),
        async || {
            world
                .jobs()
                .await
                .iter()
                .any(|j| j.kind() == JobKind::Video && j.status() == JobStatus::Generating)
        },
    )
    .await;
    let poller = Command::new(binary("video-poller"))
        .env_clear()
        .envs(
            [
                ("GOOGLE_CLOUD_PROJECT", emulator_project()),
                (
                    "FIRESTORE_EMULATOR_HOST",
                    std::env::var("FIRESTORE_EMULATOR_HOST").unwrap(),
                ),
                (
                    "PUBSUB_EMULATOR_HOST",
                    std::env::var("PUBSUB_EMULATOR_HOST").unwrap(),
                ),
                ("ASMR_COLLECTION_PREFIX", prefix.clone()),
                ("ASMR_TOPIC_PREFIX", prefix.clone()),
                ("GCS_OUTPUT_BUCKET", world.bucket.clone()),
                (
                    "STORAGE_EMULATOR_HOST",
                    std::env::var("STORAGE_EMULATOR_HOST").unwrap(),
                ),
                ("VERTEX_BASE_URL", world.fake.base_url()),
                ("VERTEX_ACCESS_TOKEN", world.fake.token().to_string()),
                ("POLLING_INTERVAL", "200ms".to_string()),
            ]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        )
        .status()
        .unwrap();
    assert!(poller.success());

    wait_until("every job delivered", Duration::from_secs(60), async || {
        let all = world.jobs().await;
        all.len() == 4 && all.iter().all(|j| j.status() == JobStatus::Delivered)
    })
    .await;

    let all = world.jobs().await;
    assert_eq!(all.len(), 4, "the repeated request made one job");
    for job in &all {
        assert_eq!(job.deliveries().len(), job.outputs().len(), "{job:?}");
        for delivery in job.deliveries() {
            let uri = delivery.source.clone();
            let Target::File(path) = &delivery.destination else {
                panic!("a copy to a directory is a file: {delivery:?}");
            };
            let on_disk = std::fs::read(path).unwrap();
            assert!(path.starts_with(destination.path()), "{delivery:?}");
            let meta = world
                .objects
                .metadata(&uri.bucket, &uri.name)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                shared::crc::Crc32c::of(&on_disk),
                meta.crc32c,
                "{}",
                delivery.source
            );
        }
    }
    assert_eq!(
        world.fake.calls(Verb::GenerateContent),
        3,
        "one call per image"
    );
    assert_eq!(
        world.fake.calls(Verb::PredictLongRunning),
        1,
        "one video submit"
    );

    // One event per job, each saying delivered, with the documented fields.
    let mut seen = Vec::new();
    wait_until("four job events", Duration::from_secs(30), async || {
        seen.extend(pubsub.drain(&events, 100).await);
        seen.len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.extend(pubsub.drain(&events, 100).await);
    let mut event_jobs: Vec<String> = seen
        .iter()
        .map(|m| {
            let event = m.json();
            assert_eq!(event["status"], "delivered", "{event}");
            assert_eq!(m.attributes["status"], "delivered");
            for field in ["job_id", "kind", "outputs", "deliveries", "error"] {
                assert!(event.get(field).is_some(), "{field} missing in {event}");
            }
            event["job_id"].as_str().unwrap().to_string()
        })
        .collect();
    event_jobs.sort();
    let mut job_ids: Vec<String> = all.iter().map(|j| j.id().to_string()).collect();
    job_ids.sort();
    assert_eq!(event_jobs, job_ids, "exactly one event per job");

    // The request without a kind was acknowledged and kept for the operator.
    let rejected = asmr(&world, &["rejected", "--json"]);
    let rejected = rejected.as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0].to_string().contains("kind"),
        "the reason names the missing kind: {}",
        rejected[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancel_raises_a_job_event_and_a_retry_queues_the_job() {
    let world = emulators(FakeOptions::default()).await;
    let prefix = world.prefix.clone().unwrap();
    let topics = Topics::new(prefix.clone());
    let pubsub = Emulator::new();
    for topic in topics.all() {
        pubsub.topic(&topic).await;
    }
    let (events, images) = (format!("{prefix}events"), format!("{prefix}images"));
    pubsub
        .pull_subscription(&events, &topics.job_events())
        .await;
    pubsub
        .pull_subscription(&images, &topics.image_jobs())
        .await;
    let id = world
        .job("a job an operator cancels", JobKind::Image, &[])
        .await;

    let cancel = world.operator(&["cancel", &id]);
    assert!(cancel.status.success(), "{cancel:?}");
    let mut seen = Vec::new();
    wait_until("the cancel event", Duration::from_secs(10), async || {
        seen.extend(pubsub.drain(&events, 10).await);
        !seen.is_empty()
    })
    .await;
    assert_eq!(seen.len(), 1);
    let event = seen[0].json();
    assert_eq!(
        (&event["job_id"], &event["status"]),
        (&id.clone().into(), &"cancelled".into())
    );

    let retry = world.operator(&["retry", &id]);
    assert!(retry.status.success(), "{retry:?}");
    let mut queued = Vec::new();
    wait_until("the job message", Duration::from_secs(10), async || {
        queued.extend(pubsub.drain(&images, 10).await);
        !queued.is_empty()
    })
    .await;
    assert_eq!(queued[0].json(), serde_json::json!({"job_id": id}));
    assert_eq!(queued[0].attributes["origin"], "cli");
    assert_eq!(
        world.store.job(&id).await.unwrap().status(),
        JobStatus::Pending
    );
}
