//! The stage binaries as they run on Cloud Run: started with only the
//! documented environment, fed by a real Pub/Sub push subscription (the
//! emulator's), against the Firestore emulator, fake-gcs-server and the fake
//! Vertex server.

#![cfg(feature = "emulators")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use shared::domain::values::{JobKind, JobStatus};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::fake_vertex::{FakeOptions, Verb};
use tests::harness::binary;
use tests::process::{Running, free_port};
use tests::stages::{World, emulators};

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Creates a topic with a push subscription to `endpoint` in the Pub/Sub emulator.
async fn push_topic(endpoint: &str) -> (reqwest::Client, String) {
    let host = std::env::var("PUBSUB_EMULATOR_HOST")
        .expect("PUBSUB_EMULATOR_HOST is not set: run tests/run");
    let project = tests::harness::emulator_project();
    let name = tests::harness::unique_prefix()
        .trim_end_matches('_')
        .to_string();
    let base = format!("http://{host}/v1/projects/{project}");
    let client = reqwest::Client::new();
    let topic = client
        .put(format!("{base}/topics/{name}"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(topic.status().is_success(), "{:?}", topic.text().await);
    let subscription = client
        .put(format!("{base}/subscriptions/{name}"))
        .json(&serde_json::json!({
            "topic": format!("projects/{project}/topics/{name}"),
            "pushConfig": {"pushEndpoint": endpoint},
            "ackDeadlineSeconds": 60,
        }))
        .send()
        .await
        .unwrap();
    assert!(
        subscription.status().is_success(),
        "{:?}",
        subscription.text().await
    );
    (client, format!("{base}/topics/{name}:publish"))
}

async fn publish(client: &reqwest::Client, url: &str, job_id: &str) {
    let data =
        base64::engine::general_purpose::STANDARD.encode(format!("{{\"job_id\":\"{job_id}\"}}"));
    let response = client
        .post(url)
        .json(&serde_json::json!({"messages": [{"data": data}]}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_json_for_cloud_logging_with_the_request_trace() {
    let world = emulators(FakeOptions::default()).await;
    let port = free_port();
    let mut command = world.stage_command("image-generator", &[("PORT", port.to_string())]);
    command.stdout(Stdio::piped());
    let mut service = Running(command.spawn().unwrap());
    let url = format!("http://127.0.0.1:{port}");
    tests::process::wait_healthy(&url).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let status = reqwest::Client::new()
        .post(format!("{url}/"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(tests::stages::push_body("no-such-job", "m-trace"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "a poison message is acknowledged");
    service.0.kill().unwrap();
    let output = std::mem::replace(&mut service.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every stdout line is JSON"))
        .collect();
    let poison = lines
        .iter()
        .find(|l| l["severity"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR line in {lines:#?}"));
    assert_eq!(
        poison["logging.googleapis.com/trace"],
        format!(
            "projects/{}/traces/{trace}",
            tests::harness::emulator_project()
        ),
        "{poison}"
    );
    assert!(poison["message"].is_string(), "{poison}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_generator_serves_pushes_from_a_real_subscription() {
    let world = emulators(FakeOptions::default()).await;
    let port = free_port();
    let _service = Running(
        world
            .stage_command("image-generator", &[("PORT", port.to_string())])
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("/healthz", async || {
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let id = world.job("fingers on velvet", JobKind::Image, &[]).await;
    let (client, publish_url) = push_topic(&format!("{url}/")).await;
    publish(&client, &publish_url, &id).await;
    wait_for("the job to complete", async || {
        world.store.job(&id).await.unwrap().status() == JobStatus::Completed
    })
    .await;
    let job = world.store.job(&id).await.unwrap();
    assert_eq!(
        job.outputs(),
        vec![
            format!("gs://{}/images/{id}/0.png", world.bucket)
                .parse()
                .unwrap()
        ]
    );
    assert!(
        world
            .objects
            .metadata(&world.bucket, &format!("images/{id}/0.png"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(world.fake.calls(Verb::GenerateContent), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_video_generator_drains_and_the_poller_finishes_what_it_submitted() {
    let world = emulators(FakeOptions::default()).await;
    let ids = futures::future::join_all(
        (0..3).map(|n| world.job(format!("kneading dough {n}"), JobKind::Video, &[])),
    )
    .await;
    let status = world
        .stage_command("video-generator", &[])
        .arg("drain")
        .status()
        .unwrap();
    assert!(status.success());
    for id in &ids {
        assert_eq!(
            world.store.job(id).await.unwrap().status(),
            JobStatus::Generating
        );
    }
    let status = world
        .stage_command("video-poller", &[("POLLING_INTERVAL", "100ms".into())])
        .status()
        .unwrap();
    assert!(status.success());
    for id in &ids {
        let job = world.store.job(id).await.unwrap();
        assert_eq!(
            (job.status(), job.outputs().len()),
            (JobStatus::Completed, 1)
        );
    }
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 3);
}

#[test]
fn every_binary_lists_its_environment_in_help() {
    for name in ["image-generator", "video-generator", "video-poller"] {
        let output = Command::new(binary(name)).arg("--help").output().unwrap();
        assert!(output.status.success());
        let help = String::from_utf8(output.stdout).unwrap();
        for variable in [
            "GOOGLE_CLOUD_PROJECT",
            "GOOGLE_CLOUD_LOCATION",
            "GCS_OUTPUT_BUCKET",
            "IMAGE_MODEL",
            "VIDEO_MODEL",
            "VERTEX_BASE_URL",
            "VERTEX_ACCESS_TOKEN",
            "DRY_RUN",
            "MAX_RETRIES",
            "BASE_DELAY",
            "MAX_DELAY",
            "OPERATION_TIMEOUT",
            "POLLING_INTERVAL",
            "PORT",
            "ASMR_COLLECTION_PREFIX",
            "FIRESTORE_EMULATOR_HOST",
            "STORAGE_EMULATOR_HOST",
            "PUBSUB_EMULATOR_HOST",
            "ASMR_TOPIC_PREFIX",
            "ASMR_JOB_EVENTS",
        ] {
            assert!(
                help.contains(variable),
                "{name} --help does not mention {variable}"
            );
        }
    }
}

#[test]
fn the_downloader_lists_its_environment_in_help() {
    let output = Command::new(binary("downloader"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for variable in [
        "GCS_OUTPUT_BUCKET",
        "DOWNLOAD_DESTINATION",
        "DOWNLOAD_CONCURRENCY",
        "DOWNLOAD_TIMEOUT",
        "DOWNLOAD_LEASE",
        "DOWNLOAD_PRIORITY_IMAGE",
        "DOWNLOAD_PRIORITY_VIDEO",
        "PORT",
        "GOOGLE_CLOUD_PROJECT",
        "ASMR_COLLECTION_PREFIX",
        "FIRESTORE_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "PUBSUB_EMULATOR_HOST",
        "ASMR_TOPIC_PREFIX",
        "ASMR_JOB_EVENTS",
    ] {
        assert!(
            help.contains(variable),
            "downloader --help does not mention {variable}"
        );
    }
}

#[test]
fn a_binary_without_its_bucket_says_so_and_exits_non_zero() {
    let output = Command::new(binary("image-generator"))
        .env_clear()
        .env("GOOGLE_CLOUD_PROJECT", "p")
        .env(
            "FIRESTORE_EMULATOR_HOST",
            std::env::var("FIRESTORE_EMULATOR_HOST").unwrap(),
        )
        .env(
            "STORAGE_EMULATOR_HOST",
            std::env::var("STORAGE_EMULATOR_HOST").unwrap(),
        )
        .arg("drain")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(logs.contains("GCS_OUTPUT_BUCKET is not set"), "{logs}");
}

/// The downloader's documented environment, delivering to `destination`.
fn downloader_command(world: &World, destination: &Path, port: u16) -> Command {
    let mut command = Command::new(binary("downloader"));
    command.env_clear();
    let env = [
        ("GOOGLE_CLOUD_PROJECT", tests::harness::emulator_project()),
        (
            "FIRESTORE_EMULATOR_HOST",
            std::env::var("FIRESTORE_EMULATOR_HOST").unwrap(),
        ),
        (
            "STORAGE_EMULATOR_HOST",
            std::env::var("STORAGE_EMULATOR_HOST").unwrap(),
        ),
        ("ASMR_COLLECTION_PREFIX", world.prefix.clone().unwrap()),
        (
            "PUBSUB_EMULATOR_HOST",
            std::env::var("PUBSUB_EMULATOR_HOST").unwrap(),
        ),
        ("ASMR_TOPIC_PREFIX", world.prefix.clone().unwrap()),
        ("GCS_OUTPUT_BUCKET", world.bucket.clone()),
        ("DOWNLOAD_DESTINATION", destination.display().to_string()),
        ("DOWNLOAD_LEASE", "2s".to_string()),
        ("PORT", port.to_string()),
        ("RUST_LOG", "info".to_string()),
    ];
    for (key, value) in env {
        command.env(key, value);
    }
    command.stdout(Stdio::null()).stderr(Stdio::inherit());
    command
}

/// A push subscription on the topic fake-gcs-server publishes its
/// notifications to (tests/run wires that up), aimed at `endpoint`.
async fn storage_events_to(endpoint: &str) {
    let host = std::env::var("PUBSUB_EMULATOR_HOST")
        .expect("PUBSUB_EMULATOR_HOST is not set: run tests/run");
    let topic = std::env::var("ASMR_TEST_GCS_EVENTS_TOPIC")
        .expect("ASMR_TEST_GCS_EVENTS_TOPIC is not set: run tests/run");
    let project = tests::harness::emulator_project();
    let name = tests::harness::unique_prefix()
        .trim_end_matches('_')
        .to_string();
    let response = reqwest::Client::new()
        .put(format!(
            "http://{host}/v1/projects/{project}/subscriptions/{name}"
        ))
        .json(&serde_json::json!({
            "topic": format!("projects/{project}/topics/{topic}"),
            "pushConfig": {"pushEndpoint": endpoint},
            "ackDeadlineSeconds": 10,
            "retryPolicy": {"minimumBackoff": "1s", "maximumBackoff": "2s"},
        }))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

/// A completed job whose one output of `data` is uploaded to the output bucket.
async fn job_with_output(world: &World, data: bytes::Bytes) -> (String, String) {
    let id = world.job("delivered", JobKind::Image, &[]).await;
    let lease = shared::domain::Lease::new("w", Duration::from_secs(600));
    world.store.claim_job(&id, &lease).await.unwrap();
    let name = format!("images/{id}/0.png");
    let uri = format!("gs://{}/{name}", world.bucket);
    world
        .store
        .complete_job(&id, "w", vec![uri.parse().unwrap()])
        .await
        .unwrap();
    world
        .objects
        .write(&world.bucket, &name, data, "image/png", &Default::default())
        .await
        .unwrap();
    (id, name)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reaches_the_destination_through_real_notifications() {
    let world = emulators(FakeOptions::default()).await;
    let destination = tempfile::tempdir().unwrap();
    let port = free_port();
    let _downloader = Running(
        downloader_command(&world, destination.path(), port)
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("/healthz", async || {
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    storage_events_to(&format!("{url}/")).await;

    let data = bytes::Bytes::from(
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let (id, name) = job_with_output(&world, data.clone()).await;
    let target = destination.path().join(&name);
    wait_for("the job to be delivered", async || {
        world.store.job(&id).await.unwrap().status() == JobStatus::Delivered
    })
    .await;
    assert_eq!(std::fs::read(&target).unwrap(), data.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_copy_killed_halfway_resumes_with_flat_memory() {
    const SIZE: usize = 256 * 1024 * 1024;
    let world = emulators(FakeOptions::default()).await;
    let destination = tempfile::tempdir().unwrap();
    let port = free_port();
    // The first copier reads through a proxy at 16 MB/s (16 s for the
    // whole object), so the test can stop it partway even when a loaded
    // machine leaves the watching loop unscheduled for seconds; the second
    // reads at full speed.
    let slow =
        tests::throttle::start(&std::env::var("STORAGE_EMULATOR_HOST").unwrap(), 16_000_000).await;
    let mut first = Running(
        downloader_command(&world, destination.path(), port)
            .env("STORAGE_EMULATOR_HOST", &slow.endpoint)
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("/healthz", async || {
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    storage_events_to(&format!("{url}/")).await;

    let data = bytes::Bytes::from(
        (0..SIZE)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    );
    let crc = shared::crc::Crc32c::of(&data).to_string();
    let (id, name) = job_with_output(&world, data.clone()).await;
    drop(data);
    let target = destination.path().join(&name);
    let generation = world
        .objects
        .metadata(&world.bucket, &name)
        .await
        .unwrap()
        .unwrap()
        .generation;
    let partial = shared::deliver::copy::partial_path(&target, Some(generation));

    // Kill the copier once a good part of the object is on disk.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let (copied_before_kill, first_peak) = loop {
        let size = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if size >= (SIZE / 16) as u64 {
            let peak = peak_rss_kib(first.0.id());
            first.0.kill().unwrap();
            break (size, peak);
        }
        assert!(
            !target.exists(),
            "the copy finished before it could be interrupted: {size} bytes seen at {} after {:?}",
            partial.display(),
            started.elapsed()
        );
        assert!(Instant::now() < deadline, "the copy never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = first.0.wait();
    assert!(
        !target.exists(),
        "a killed copy leaves no file at the final path"
    );

    // A new instance gets the redelivered event once the lease has run out.
    // It reads through a counting proxy at full speed: what it reads again
    // of the object is the cost of the kill.
    let on_disk_at_restart = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    let counting =
        tests::throttle::start(&std::env::var("STORAGE_EMULATOR_HOST").unwrap(), 1 << 40).await;
    let second = Running(
        downloader_command(&world, destination.path(), port)
            .env("STORAGE_EMULATOR_HOST", &counting.endpoint)
            .spawn()
            .unwrap(),
    );
    wait_for("the job to be delivered", async || {
        world.store.job(&id).await.unwrap().status() == JobStatus::Delivered
    })
    .await;
    let peak = peak_rss_kib(second.0.id());
    let download = &world
        .store
        .list_downloads(None, 10, None)
        .await
        .unwrap()
        .items[0];
    assert_eq!(
        (download.status(), download.attempts()),
        (shared::domain::download::DownloadStatus::Completed, 2)
    );
    assert_eq!(download.crc32c().map(|c| c.to_string()), Some(crc.clone()));
    let on_disk = std::fs::read(&target).unwrap();
    assert_eq!(on_disk.len(), SIZE);
    assert_eq!(shared::crc::Crc32c::of(&on_disk).to_string(), crc);
    // The rest, and no more than the rest: the resumed copy read from the
    // bytes on disk (plus headers and the metadata of a few requests).
    let read_again = counting.bytes_relayed();
    let rest = SIZE as u64 - on_disk_at_restart;
    eprintln!(
        "killed after {copied_before_kill} bytes at {first_peak} KiB peak RSS ({on_disk_at_restart} on disk); the resumed downloader read {read_again} bytes of the object store for the {rest} left and peaked at {peak} KiB"
    );
    assert!(on_disk_at_restart >= copied_before_kill);
    assert!(
        read_again >= rest,
        "read {read_again} bytes for the {rest} left"
    );
    assert!(
        read_again <= rest + 1024 * 1024,
        "read {read_again} bytes for the {rest} left: the copy started over"
    );
    assert!(
        first_peak < 64 * 1024,
        "peak RSS {first_peak} KiB is over 64 MiB"
    );
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB is over 64 MiB");
}
