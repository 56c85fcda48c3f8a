//! The money rules under the conditions batches really meet, against the
//! real stage binaries on the emulators and the fake Vertex AI: a model
//! quota smaller than the batch for many windows, a model that hangs,
//! Storage, Pub/Sub or Firestore down, a missing credential, and Veo
//! operations that fail, finish late or cannot be polled. Each scenario
//! asserts what the operator pays for: no job lost, nothing paid twice, the
//! budget booked as Google may bill.
//!
//! The storage outage lasts `ASMR_TEST_OUTAGE_SECS`: 50 s by default, longer
//! than a generator keeps trying to write, so its outputs must be held;
//! BENCHMARKS.md records a run with 600 (longer than the production push
//! deadline).

#![cfg(feature = "emulators")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use shared::cost::PriceTable;
use shared::domain::job::NewJob;
use shared::domain::values::{
    JobKind, JobStatus, MISCONFIGURED, OPERATION_FAILED, SUBMIT_UNKNOWN, TIMED_OUT,
};
use shared::store::budget::budget_day_of;
use shared::time::Timestamp;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::fake_vertex::{FakeOptions, Verb};
use tests::harness::binary;
use tests::outage::{Switch, black_hole, refused};
use tests::process::wait_until;
use tests::pubsub::PushPolicy;
use tests::stages::{Service, World, emulators, push_body};

/// `{"job_id"}` for each id, as the job topics carry them.
fn job_messages(ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| json!({ "job_id": id }).to_string())
        .collect()
}

/// POSTs the push of `job_id` to a generator; returns the status.
async fn push(url: &str, job_id: &str, message_id: &str) -> u16 {
    tests::stages::push(url, job_id, message_id).await
}

/// What list prices say one job of `kind` with default parameters costs.
fn list_price(kind: JobKind) -> u64 {
    let model = match kind {
        JobKind::Image => shared::vertex::DEFAULT_IMAGE_MODEL,
        JobKind::Video => shared::vertex::DEFAULT_VIDEO_MODEL,
    };
    PriceTable::list_prices()
        .estimate(kind, model, &Default::default())
        .micros
}

// --- 1. a quota smaller than the batch -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_smaller_than_the_batch_for_many_windows_fails_no_job() {
    // Two requests per 4 s window, twelve jobs: the quota stays spent for
    // six windows, each many times QUOTA_WAIT, and every message meets it
    // more times than the job has attempts and than the subscription has
    // deliveries before dead-lettering.
    let world = emulators(FakeOptions {
        requests_per_minute: Some(2),
        quota_window: Duration::from_secs(4),
        ..FakeOptions::default()
    })
    .await;
    let (pubsub, topics) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    let dead_letters = world.dead_letters(&pubsub).await;
    let images = Service::start(
        "image-generator",
        &world,
        &[
            ("QUOTA_WAIT", "1s".to_string()),
            // The gate probes a spent quota at most every BASE_DELAY (2 s
            // at most): back-pressure, not a loop of 429s.
            ("BASE_DELAY", "1s".to_string()),
        ],
    )
    .await;
    pubsub
        .push_with(
            &format!("{prefix}image-push"),
            &topics.image_jobs(),
            &format!("{}/", images.url),
            &PushPolicy {
                dead_letter: Some((dead_letters, 5)),
                ..PushPolicy::default()
            },
        )
        .await;
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(
            world
                .job(format!("quota bound {n}"), JobKind::Image, &[])
                .await,
        );
    }
    let started = Instant::now();
    pubsub
        .publish_all(&topics.image_jobs(), &job_messages(&ids))
        .await;

    // The janitor runs now and then, as Cloud Scheduler runs it: it
    // publishes again the waiting jobs whose messages were dead-lettered, or
    // that no message has brought back for LOST_AFTER (Pub/Sub's back-off
    // outgrows the quota window; the emulator even stops redelivering).
    let mut requeued = 0;
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let done = futures::future::join_all(ids.iter().map(|id| world.store.job(id)))
            .await
            .into_iter()
            .filter(|job| job.as_ref().unwrap().status() == JobStatus::Completed)
            .count();
        if done == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of 12 completed");
        tokio::time::sleep(Duration::from_secs(4)).await;
        let summary = world
            .run_janitor_with(&pubsub, &[("LOST_AFTER", "3s")])
            .await;
        requeued += summary["dead_letter_requeued"].as_u64().unwrap()
            + summary["republished"].as_u64().unwrap();
        assert_eq!(
            summary["dead_lettered"], 0,
            "no waiting job is failed: {summary}"
        );
    }
    let elapsed = started.elapsed();
    for id in &ids {
        let job = world.store.job(id).await.unwrap();
        assert_eq!(
            (job.status(), job.attempts()),
            (JobStatus::Completed, 1),
            "waiting on quota used no attempt: {id}"
        );
    }
    let rate_limited = world.fake.rate_limited();
    let requests = world.fake.calls(Verb::GenerateContent);
    eprintln!(
        "quota 2 per 4 s, 12 jobs: all completed in {:.1} s (ideal 24 s), {requests} requests, {rate_limited} answered 429 ({:.1} per job), {requeued} waiting jobs published again by the janitor",
        elapsed.as_secs_f64(),
        rate_limited as f64 / 12.0
    );
    assert!(requeued > 0, "the janitor's redispatch was exercised");
    // Back-pressure: a few probes per window, not a request per waiting
    // call per retry.
    assert!(
        rate_limited <= 12 * 12,
        "{rate_limited} 429s for 12 jobs: a hot loop"
    );
    assert!(world.unfinished().await.is_empty());
}

// --- 2, 3. a model that hangs --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_model_gets_one_request_per_job_and_the_budget_books_each_once() {
    let world = emulators(FakeOptions {
        latency: Duration::from_secs(60),
        ..FakeOptions::default()
    })
    .await;
    let (pubsub, _) = world.topics().await;
    let hang = [("VERTEX_TIMEOUT", "1s".to_string())];
    let images = Service::start("image-generator", &world, &hang).await;
    let videos = Service::start("video-generator", &world, &hang).await;
    let image = world.job("a hanging brush", JobKind::Image, &[]).await;
    let video = world.job("a hanging door", JobKind::Video, &[]).await;

    // Three deliveries of each message, and a janitor run between them.
    for delivery in 0..3 {
        let message = format!("m{delivery}");
        assert_eq!(push(&images.url, &image, &message).await, 200);
        assert_eq!(push(&videos.url, &video, &message).await, 200);
        world.run_janitor(&pubsub).await;
    }
    assert_eq!(
        world.fake.calls(Verb::GenerateContent),
        1,
        "one image request"
    );
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 1, "one submit");

    let image_job = world.store.job(&image).await.unwrap();
    assert_eq!(image_job.status(), JobStatus::Failed);
    let error = image_job.error().unwrap();
    assert_eq!(error.code, SUBMIT_UNKNOWN);
    assert!(error.message.contains("--resubmit"), "{}", error.message);
    assert!(
        !error.message.starts_with("submit_unknown"),
        "the code is not repeated in the message: {}",
        error.message
    );
    let video_job = world.store.job(&video).await.unwrap();
    assert!(video_job.awaits_output(), "{video_job:?}");

    // Every request that may be billed is booked, once; nothing is left
    // reserved.
    let day = world
        .store
        .budget_day(&budget_day_of(Timestamp::now()))
        .await
        .unwrap();
    assert_eq!(
        (day.reserved_micros, day.spent_micros),
        (0, list_price(JobKind::Image) + list_price(JobKind::Video))
    );

    // No video appears: after OPERATION_TIMEOUT the video fails too, its
    // cost still booked once, and only an operator pays again.
    world
        .run_poller(&[("OPERATION_TIMEOUT", "1s".to_string())])
        .await;
    let video_job = world.store.job(&video).await.unwrap();
    assert_eq!(
        (video_job.status(), video_job.error().unwrap().code.as_str()),
        (JobStatus::Failed, SUBMIT_UNKNOWN)
    );
    let refused = world.operator(&["retry", &video]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--resubmit"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    world.fake.set_latency(Duration::ZERO);
    let retried = world.operator(&["retry", "--resubmit", &video]);
    assert!(retried.status.success());
    let note = String::from_utf8_lossy(&retried.stderr);
    assert!(note.contains("a new paid request goes to veo"), "{note}");
    assert_eq!(push(&videos.url, &video, "after-retry").await, 200);
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 2);
}

// --- 4. storage down longer than the push deadline ------------------------

fn outage() -> Duration {
    let seconds = std::env::var("ASMR_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    Duration::from_secs(seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_down_longer_than_the_push_deadline_pays_once_and_completes_the_job() {
    let world = emulators(FakeOptions::default()).await;
    let (pubsub, topics) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    let storage = Switch::start(&tests::harness::emulator_host("STORAGE_EMULATOR_HOST")).await;
    let images = Service::start(
        "image-generator",
        &world,
        &[("STORAGE_EMULATOR_HOST", storage.endpoint.clone())],
    )
    .await;
    pubsub
        .push_with(
            &format!("{prefix}image-push"),
            &topics.image_jobs(),
            &format!("{}/", images.url),
            &PushPolicy {
                ack_deadline_seconds: 120,
                ..PushPolicy::default()
            },
        )
        .await;
    let id = world.job("paid for once", JobKind::Image, &[]).await;

    storage.down();
    let down_at = Instant::now();
    pubsub
        .publish_all(
            &topics.image_jobs(),
            &job_messages(std::slice::from_ref(&id)),
        )
        .await;
    wait_until(
        "the outputs to be held",
        Duration::from_secs(90),
        async || !world.store.job(&id).await.unwrap().held().is_empty(),
    )
    .await;
    let held = world.store.job(&id).await.unwrap();
    assert_eq!(
        (held.status(), held.attempts(), held.waiting()),
        (JobStatus::Pending, 0, Some("storage_unavailable"))
    );
    // Redeliveries come and go while the bucket is down; none calls the
    // model again.
    tokio::time::sleep(outage().saturating_sub(down_at.elapsed())).await;
    assert_eq!(world.fake.total_calls(), 1);
    storage.up();
    wait_until("the job to complete", Duration::from_secs(60), async || {
        world.store.job(&id).await.unwrap().status() == JobStatus::Completed
    })
    .await;
    let done = world.store.job(&id).await.unwrap();
    assert_eq!(world.fake.total_calls(), 1, "one paid call in all");
    assert!(done.held().is_empty());
    assert_eq!(done.outputs().len(), 1);
    let uri = done.outputs()[0].clone();
    let meta = world
        .objects
        .metadata(&uri.bucket, &uri.name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        meta.crc32c,
        shared::crc::Crc32c::of(tests::fake_vertex::PNG_1X1),
        "the paid image itself, not another"
    );
    eprintln!(
        "storage down {:.0} s: 1 model call, job completed {} after the bucket came back",
        outage().as_secs_f64(),
        done.updated_at()
    );
}

// --- 5. intake when Pub/Sub or Firestore fail -----------------------------

/// POSTs `body` to intake's `/v1/jobs`; the status, the answer, how long.
async fn post_jobs(
    url: &str,
    api_key: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, Value, Duration) {
    let started = Instant::now();
    let mut request = tests::http::keyed_client(api_key)
        .post(format!("{url}/v1/jobs"))
        .timeout(Duration::from_secs(200))
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let answer = response.json().await.unwrap_or(Value::Null);
    (status, answer, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intake_answers_fast_with_the_jobs_it_made_when_pubsub_is_down_or_frozen() {
    let world = emulators(FakeOptions::default()).await;
    let api_key = world.api_key("default").await;
    let (pubsub, topics) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    pubsub
        .pull_subscription(&format!("{prefix}images"), &topics.image_jobs())
        .await;
    let (frozen, _hole) = black_hole().await;
    for (what, pubsub_host) in [
        ("refused", refused()),
        ("frozen", frozen.trim_start_matches("http://").to_string()),
    ] {
        let intake =
            Service::start("intake", &world, &[("PUBSUB_EMULATOR_HOST", pubsub_host)]).await;
        let body = json!({"kind": "image", "prompts": [format!("{what} a"), format!("{what} b")]});
        let (status, answer, took) = post_jobs(&intake.url, &api_key, &body, None).await;
        assert_eq!(status, 202, "{what}: {answer}");
        assert!(
            took < Duration::from_secs(20),
            "{what}: answered in {took:?}"
        );
        let jobs = answer["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 2);
        for job in jobs {
            assert_eq!(
                (&job["created"], &job["queued"]),
                (&json!(true), &json!(false))
            );
        }
        // The client that resends anyway creates nothing twice.
        let (status, again, _) = post_jobs(&intake.url, &api_key, &body, None).await;
        assert!(status == 200 || status == 202, "{again}");
        assert_eq!(again["jobs"][0]["created"], false);
    }
    let pending = world.unfinished().await;
    assert_eq!(pending.len(), 4, "four jobs, each once");

    // The janitor queues what was never published.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut janitor = tests::harness::emulator_command("janitor", &prefix);
    janitor.env("LOST_AFTER", "1s").env("DEAD_LETTER_MAX", "0");
    let status = tokio::task::spawn_blocking(move || janitor.status().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let queued: Vec<String> = pubsub
        .drain(&format!("{prefix}images"), 100)
        .await
        .iter()
        .map(|m| m.json()["job_id"].as_str().unwrap().to_string())
        .collect();
    for job in &pending {
        assert!(
            queued.iter().any(|q| q == job.id()),
            "{} was queued",
            job.id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_firestore_outage_mid_batch_is_answered_with_what_was_made_and_a_resend_makes_no_duplicate()
 {
    let world = emulators(FakeOptions::default()).await;
    let (_pubsub, _topics) = world.topics().await;
    let firestore = Switch::start(&tests::harness::emulator_host("FIRESTORE_EMULATOR_HOST")).await;
    let api_key = world.api_key("default").await;
    let intake = Service::start(
        "intake",
        &world,
        &[("FIRESTORE_EMULATOR_HOST", firestore.host.clone())],
    )
    .await;
    let prompts: Vec<String> = (0..400).map(|n| format!("batch prompt {n}")).collect();
    let body = json!({"kind": "image", "prompts": prompts});
    let request = {
        let (url, body) = (intake.url.clone(), body.clone());
        let api_key = api_key.clone();
        tokio::spawn(async move { post_jobs(&url, &api_key, &body, None).await })
    };
    wait_until("part of the batch", Duration::from_secs(60), async || {
        world.store.job_counts().await.unwrap().total() >= 40
    })
    .await;
    firestore.down();
    let (status, answer, took) = request.await.unwrap();
    let made = world.store.job_counts().await.unwrap().total();
    assert_eq!(status, 503, "{answer}");
    assert!(took < Duration::from_secs(100), "answered in {took:?}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("nothing is created twice"), "{error}");
    let named = answer["jobs"].as_array().unwrap().len() as u64;
    assert!(named <= made && made < 400, "{named} named, {made} made");
    eprintln!("a Firestore outage after {made} of 400 jobs: 503 in {took:?} naming {named}");

    firestore.up();
    let named: Vec<String> = answer["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let (status, answer, _) = post_jobs(&intake.url, &api_key, &body, None).await;
    assert_eq!(status, 201, "{answer}");
    let jobs = answer["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 400);
    for job in jobs {
        if named.contains(&job["id"].as_str().unwrap().to_string()) {
            assert_eq!(job["created"], false, "made the first time: {job}");
        }
    }
    let created = jobs.iter().filter(|j| j["created"] == true).count() as u64;
    assert!(
        created <= 400 - made,
        "{created} created again, {made} were there"
    );
    assert_eq!(
        world.store.job_counts().await.unwrap().total(),
        400,
        "every prompt once: nothing created twice"
    );
}

// --- 6. job events through the outbox -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_event_that_pubsub_did_not_take_is_published_by_the_janitor_once() {
    let world = emulators(FakeOptions::default()).await;
    let (pubsub, topics) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    let events = format!("{prefix}events");
    pubsub
        .pull_subscription(&events, &topics.job_events())
        .await;
    // The generator's Pub/Sub is gone: the transition commits, its event
    // waits in the outbox.
    let images = Service::start(
        "image-generator",
        &world,
        &[("PUBSUB_EMULATOR_HOST", refused())],
    )
    .await;
    let id = world
        .job("[blocked] an event to keep", JobKind::Image, &[])
        .await;
    assert_eq!(push(&images.url, &id, "m1").await, 200);
    assert_eq!(
        world.store.job(&id).await.unwrap().status(),
        JobStatus::Failed
    );
    pubsub.assert_nothing_published(&events).await;
    assert_eq!(world.store.outbox_len().await.unwrap(), 1);

    tokio::time::sleep(Duration::from_secs(11)).await;
    let summary = world.run_janitor(&pubsub).await;
    assert_eq!(summary["events_published"], 1, "{summary}");
    let published = pubsub.drain(&events, 10).await;
    assert_eq!(published.len(), 1);
    let event = published[0].json();
    assert_eq!(
        (event["job_id"].as_str(), event["status"].as_str()),
        (Some(id.as_str()), Some("failed"))
    );
    assert_eq!(
        published[0].attributes["event_id"],
        event["event_id"].as_str().unwrap()
    );
    assert_eq!(world.store.outbox_len().await.unwrap(), 0);
    let again = world.run_janitor(&pubsub).await;
    assert_eq!(again["events_published"], 0, "published once: {again}");
}

// --- 7. a misconfiguration -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_credential_makes_jobs_wait_and_the_batch_resumes_once_fixed() {
    let world = emulators(FakeOptions::default()).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut wrong = Service::start_logged(
        "image-generator",
        &world,
        &[("VERTEX_ACCESS_TOKEN", "a-token-vertex-refuses".to_string())],
        log.path(),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = world
            .job(format!("misconfigured {n}"), JobKind::Image, &[])
            .await;
        // Delivered more times than the job has attempts.
        for delivery in 0..4 {
            assert_eq!(push(&wrong.url, &id, &format!("{n}-{delivery}")).await, 503);
        }
        ids.push(id);
    }
    for id in &ids {
        let job = world.store.job(id).await.unwrap();
        assert_eq!(
            (job.status(), job.attempts(), job.waiting()),
            (JobStatus::Pending, 0, Some(MISCONFIGURED))
        );
        assert_eq!(job.error().unwrap().code, "unauthenticated");
    }
    wrong.kill();
    let lines = std::fs::read_to_string(log.path()).unwrap();
    let errors: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("\"stage_misconfigured\""))
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR for the batch: {errors:?}");
    assert!(
        errors[0].contains("gcloud auth application-default login"),
        "{}",
        errors[0]
    );

    // Fixed: the same messages, delivered again, finish the batch.
    let fixed = Service::start("image-generator", &world, &[]).await;
    for id in &ids {
        assert_eq!(push(&fixed.url, id, "fixed").await, 200);
        let job = world.store.job(id).await.unwrap();
        assert_eq!((job.status(), job.attempts()), (JobStatus::Completed, 1));
    }
}

#[test]
fn a_live_local_run_without_credentials_stops_at_once_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "one\ntwo\nthree\n").unwrap();
    let state = dir.path().join("state");
    let started = Instant::now();
    let output = Command::new(binary("asmr"))
        .env_clear()
        .env("HOME", dir.path())
        .env("CLOUDSDK_CONFIG", dir.path().join("gcloud"))
        .env("PATH", "/usr/bin:/bin")
        // No metadata server here: a connection refused, not a long wait.
        .env("GCE_METADATA_HOST", refused())
        .env("GCE_METADATA_ROOT", refused())
        .args(["run", prompts.to_str().unwrap(), "--live", "--project", "p"])
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--out", dir.path().join("out").to_str().unwrap()])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gcloud auth application-default login"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was created"), "{stderr}");
    assert!(
        !stderr.contains("unauthenticated: unauthenticated"),
        "said once: {stderr}"
    );
    assert!(took < Duration::from_secs(20), "stopped after {took:?}");
    // The same state directory, read back: `asmr list` must succeed and
    // answer a JSON list, so that an empty one means no job, not a failure.
    let list = tests::harness::asmr_local(&state, &["list", "--json"]);
    let jobs: Value = serde_json::from_str(&list)
        .unwrap_or_else(|e| panic!("asmr list did not answer JSON ({e}): {list}"));
    assert_eq!(
        jobs.as_array().map(Vec::len),
        Some(0),
        "no job was created: {jobs}"
    );
}

// --- 8, 9, 10. Veo operations ----------------------------------------------

/// A video generator and a downloader on this world, the downloader behind
/// the storage notifications; returns them and where files land.
async fn video_topology(world: &World) -> (Service, Service, tempfile::TempDir) {
    let (pubsub, _) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    let destination = tempfile::tempdir().unwrap();
    let videos = Service::start("video-generator", world, &[]).await;
    let downloader = Service::start(
        "downloader",
        world,
        &[(
            "DOWNLOAD_DESTINATION",
            destination.path().display().to_string(),
        )],
    )
    .await;
    let gcs_events = std::env::var("ASMR_TEST_GCS_EVENTS_TOPIC").unwrap();
    pubsub
        .push(
            &format!("{prefix}objects"),
            &gcs_events,
            &format!("{}/", downloader.url),
        )
        .await;
    (videos, downloader, destination)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_video_that_lands_after_its_job_timed_out_completes_it_with_an_event() {
    let world = emulators(FakeOptions::default()).await;
    let (pubsub, topics) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    let events = format!("{prefix}events");
    pubsub
        .pull_subscription(&events, &topics.job_events())
        .await;
    let (videos, _downloader, destination) = video_topology(&world).await;
    let id = world
        .job("[never-done] a slow wave", JobKind::Video, &[])
        .await;
    assert_eq!(push(&videos.url, &id, "m1").await, 200);
    world
        .run_poller(&[("OPERATION_TIMEOUT", "1s".to_string())])
        .await;
    let timed_out = world.store.job(&id).await.unwrap();
    assert_eq!(
        (timed_out.status(), timed_out.error().unwrap().code.as_str()),
        (JobStatus::Failed, TIMED_OUT)
    );
    // Veo finishes after all, and writes where it was told.
    let object = format!("videos/{id}/20261203120000/sample_0.mp4");
    world
        .objects
        .write(
            &world.bucket,
            &object,
            shared::placeholder::mp4("late wave", None),
            "video/mp4",
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    wait_until(
        "the late video to complete the job",
        Duration::from_secs(60),
        async || world.store.job(&id).await.unwrap().status() == JobStatus::Delivered,
    )
    .await;
    let done = world.store.job(&id).await.unwrap();
    assert_eq!(
        done.outputs(),
        [format!("gs://{}/{object}", world.bucket).parse().unwrap()]
    );
    assert!(destination.path().join(&object).exists());
    let published: Vec<Value> = pubsub
        .drain(&events, 10)
        .await
        .iter()
        .map(|m| m.json())
        .collect();
    let statuses: Vec<&str> = published
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "delivered"], "{published:?}");
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polls_that_keep_failing_still_time_out_and_a_retry_watches_the_operation_again() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let videos = Service::start("video-generator", &world, &[]).await;
    let id = world
        .job("an operation nobody can see", JobKind::Video, &[])
        .await;
    assert_eq!(push(&videos.url, &id, "m1").await, 200);
    let operation = world
        .store
        .job(&id)
        .await
        .unwrap()
        .operation_name()
        .map(str::to_string);
    // Every poll answers 500, for longer than OPERATION_TIMEOUT.
    world.fake.fail_next(100_000, 500);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    world
        .run_poller(&[("OPERATION_TIMEOUT", "1s".to_string())])
        .await;
    world.fake.clear_faults();
    let failed = world.store.job(&id).await.unwrap();
    assert_eq!(failed.status(), JobStatus::Failed);
    let error = failed.error().unwrap();
    assert_eq!(error.code, TIMED_OUT);
    assert!(
        error.message.contains("last poll failed"),
        "{}",
        error.message
    );

    // The operation may still finish: a retry watches it again, paying
    // nothing, with a fresh time-out.
    let retried = world.operator(&["retry", &id]);
    assert!(retried.status.success());
    let note = String::from_utf8_lossy(&retried.stderr);
    assert!(
        note.contains("watched again (nothing new is paid)"),
        "{note}"
    );
    assert_eq!(push(&videos.url, &id, "m2").await, 200);
    let watching = world.store.job(&id).await.unwrap();
    assert_eq!(
        (
            watching.status(),
            watching.operation_name().map(str::to_string)
        ),
        (JobStatus::Generating, operation)
    );
    world.run_poller(&[]).await;
    assert_eq!(
        world.store.job(&id).await.unwrap().status(),
        JobStatus::Completed
    );
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_of_a_failed_operation_submits_a_new_one_and_says_what_it_costs() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let videos = Service::start("video-generator", &world, &[]).await;
    let id = world.job("[op-fails] a door", JobKind::Video, &[]).await;
    assert_eq!(push(&videos.url, &id, "m1").await, 200);
    world.run_poller(&[]).await;
    let failed = world.store.job(&id).await.unwrap();
    assert_eq!(failed.error().unwrap().code, OPERATION_FAILED);
    let first = failed.operation_name().map(str::to_string);

    let retried = world.operator(&["retry", &id]);
    assert!(retried.status.success());
    let note = String::from_utf8_lossy(&retried.stderr);
    assert!(
        note.contains("a new paid request goes to veo-3.1-generate-001 (about $"),
        "{note}"
    );
    assert_eq!(push(&videos.url, &id, "m2").await, 200);
    let resubmitted = world.store.job(&id).await.unwrap();
    assert_eq!(resubmitted.status(), JobStatus::Generating);
    assert_ne!(
        resubmitted.operation_name(),
        first.as_deref(),
        "a new operation"
    );
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 2);
}

// --- also: recovery of a worker that died ---------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivery_after_the_lease_ran_out_takes_the_job_over_without_the_janitor() {
    // A worker that died before its call (a dry run: nothing in doubt): the
    // next delivery after LEASE_TTL takes the job over directly.
    let world = emulators(FakeOptions::default()).await;
    let (hanging, _hole) = black_hole().await;
    let mut new = NewJob::new("taken over", JobKind::Image);
    new.dry_run = true;
    let id = world
        .store
        .create_job(new)
        .await
        .unwrap()
        .record
        .id()
        .to_string();
    let mut dying = Service::start(
        "image-generator",
        &world,
        &[
            ("LEASE_TTL", "2s".to_string()),
            ("DRY_RUN", "true".to_string()),
            ("STORAGE_EMULATOR_HOST", hanging),
        ],
    )
    .await;
    let (url, body) = (dying.url.clone(), push_body(&id, "first"));
    let _first = tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("{url}/"))
            .body(body)
            .send()
            .await;
    });
    wait_until("the claim", Duration::from_secs(20), async || {
        world.store.job(&id).await.unwrap().status() == JobStatus::Processing
    })
    .await;
    dying.kill();
    let healthy = Service::start(
        "image-generator",
        &world,
        &[("DRY_RUN", "true".to_string())],
    )
    .await;
    // Within the lease the redelivery is a duplicate...
    assert_eq!(push(&healthy.url, &id, "early").await, 200);
    assert_eq!(
        world.store.job(&id).await.unwrap().status(),
        JobStatus::Processing
    );
    // ...after it, the redelivery takes the job over.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(push(&healthy.url, &id, "late").await, 200);
    let job = world.store.job(&id).await.unwrap();
    assert_eq!((job.status(), job.attempts()), (JobStatus::Completed, 2));
}
