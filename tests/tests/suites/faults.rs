//! The fault suite: tries to lose a job or pay twice for one, against the
//! real stage binaries on the emulators (Firestore, Pub/Sub, fake-gcs-server)
//! and the fake Vertex server.
//!
//! - duplicate delivery: every job message three times at once, directly and
//!   through a real push subscription → one model call per job;
//! - crash after claim: a generator killed while its model call is in flight
//!   → the `janitor` binary requeues the job once the lease (`LEASE_TTL`)
//!   runs out, another generator finishes it, nothing stays unfinished; a job
//!   whose worker dies on every attempt ends failed, not stuck;
//! - crash mid-copy: the downloader killed partway through an object → the
//!   next instance resumes and reads only the rest (the 256 MiB variant with
//!   its memory ceiling is `binaries::a_256_mib_copy_killed_halfway_resumes_with_flat_memory`);
//! - hostile input: the corpus in `tests/fixtures/hostile/` (see its README)
//!   and variants of it, sent to `intake`, both generators and the
//!   downloader → no process dies, no 5xx, every poison push acknowledged
//!   and, at intake, recorded; nothing written outside the destination;
//! - tenants under faults: two tenants' requests through the push topology,
//!   every request and job message three times, the model quota half the
//!   batch → one paid call per job, each tenant's files in its own
//!   destination only, its listing, stats and charges its own.
//!
//! Duplicate delivery at scale (200 image and 100 video jobs) is ignored by
//! default; `--run-ignored all` runs it.

#![cfg(feature = "emulators")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use base64::Engine;
use futures::StreamExt;
use serde_json::{Value, json};
use shared::domain::job::{Job, NewJob};
use shared::domain::values::{ATTEMPTS_EXHAUSTED, JobKind, JobStatus, SUBMIT_UNKNOWN};
use shared::requests::{Envelope, MAX_BODY_BYTES};
use shared::store::rejected::{Rejected, RejectedSource};
use shared::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::fake_vertex::{FakeOptions, Verb};
use tests::process::{Running, free_port, wait_healthy, wait_until};
use tests::pubsub::Emulator;
use tests::stages::{Service, World, emulators, push_body};

// --- HTTP ----------------------------------------------------------------

use tests::http::{Answer, post};

/// One request of a hostile batch.
struct Sent {
    label: String,
    body: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Sent {
    fn new(label: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            label: label.into(),
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// POSTs every request to `url`, `at_once` at a time; the answers in order.
async fn send_all(url: &str, sent: &[Sent], at_once: usize) -> Vec<Answer> {
    let http = reqwest::Client::new();
    futures::stream::iter(sent)
        .map(|s| post(&http, url, s.body.clone(), &s.headers))
        .buffered(at_once)
        .collect()
        .await
}

/// Checks that no answer is a 5xx and every push was acknowledged.
fn assert_all_acknowledged(service: &str, sent: &[Sent], answers: &[Answer]) {
    let bad: Vec<String> = sent
        .iter()
        .zip(answers)
        .filter(|(_, a)| !(200..300).contains(&a.status))
        .map(|(s, a)| format!("{}: {} {}", s.label, a.status, a.body))
        .collect();
    assert!(
        bad.is_empty(),
        "{service} did not acknowledge {} of {} hostile pushes:\n{}",
        bad.len(),
        sent.len(),
        bad.join("\n")
    );
}

/// A Pub/Sub push envelope around `data`.
fn envelope(message_id: &str, data: &[u8], attributes: &BTreeMap<String, String>) -> Vec<u8> {
    json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "attributes": attributes,
            "messageId": message_id,
            "publishTime": "2026-11-28T10:00:00.000Z",
        },
        "subscription": "projects/asmr-test/subscriptions/hostile",
    })
    .to_string()
    .into_bytes()
}

/// POSTs a push until it is acknowledged, as Pub/Sub would redeliver it;
/// returns why it was not acknowledged before (503 or 429 answers).
async fn deliver_until_acknowledged(
    http: &reqwest::Client,
    url: &str,
    body: String,
) -> Vec<String> {
    let mut refusals = Vec::new();
    while refusals.len() < 30 {
        let answer = post(http, &format!("{url}/"), body.clone().into_bytes(), &[]).await;
        if (200..300).contains(&answer.status) {
            return refusals;
        }
        assert!(
            answer.status == 503 || answer.status == 429,
            "a push was answered {} {}",
            answer.status,
            answer.body
        );
        refusals.push(answer.body["detail"].as_str().unwrap_or("-").to_string());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("a push was not acknowledged after 30 deliveries: {refusals:?}");
}

/// A push endpoint that forwards to `target` and records, per message id,
/// every status it answered; it stands between a real push subscription
/// and a stage, so a test knows when every message was acknowledged.
async fn recording_proxy(target: &str) -> (String, Arc<Mutex<Vec<(String, u16)>>>) {
    #[derive(Clone)]
    struct Proxy {
        target: String,
        http: reqwest::Client,
        answers: Arc<Mutex<Vec<(String, u16)>>>,
    }
    async fn forward(State(proxy): State<Proxy>, body: Bytes) -> impl IntoResponse {
        let message_id = shared::push::decode(&body)
            .map(|d| d.message_id)
            .unwrap_or_default();
        let response = proxy
            .http
            .post(&proxy.target)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        proxy
            .answers
            .lock()
            .unwrap()
            .push((message_id, status.as_u16()));
        (status, bytes)
    }
    let answers = Arc::new(Mutex::new(Vec::new()));
    let proxy = Proxy {
        target: format!("{target}/"),
        http: reqwest::Client::new(),
        answers: answers.clone(),
    };
    let app = axum::Router::new()
        .route("/", axum::routing::post(forward))
        .with_state(proxy);
    (tests::stages::serve(app).await, answers)
}

// --- duplicate delivery --------------------------------------------------

/// Creates `n` live jobs of `kind` with distinct prompts; returns (id, prompt).
async fn jobs(world: &World, kind: JobKind, n: usize, what: &str) -> Vec<(String, String)> {
    let prompts: Vec<String> = (0..n).map(|i| format!("{what} {kind}, take {i}")).collect();
    let ids =
        futures::future::join_all(prompts.iter().map(|p| world.job(p.clone(), kind, &[]))).await;
    ids.into_iter().zip(prompts).collect()
}

async fn duplicates_cost_one_model_call_each(image_jobs: usize, video_jobs: usize) {
    let world = emulators(FakeOptions {
        // Long enough that the copies of a message overlap the first call.
        latency: Duration::from_millis(200),
        ..FakeOptions::default()
    })
    .await;
    let (pubsub, _) = world.topics().await;
    let mut images = Service::start("image-generator", &world, &[]).await;
    let mut videos = Service::start("video-generator", &world, &[]).await;
    let image = jobs(&world, JobKind::Image, image_jobs, "a pencil on paper").await;
    let video = jobs(
        &world,
        JobKind::Video,
        video_jobs,
        "a brush on a microphone",
    )
    .await;
    let started = Instant::now();

    // Images: three copies of every message POSTed at the same moment, each
    // delivered again (as Pub/Sub would) until it is acknowledged.
    let http = reqwest::Client::new();
    let copies: Vec<String> = image
        .iter()
        .flat_map(|(id, _)| (0..3).map(move |copy| push_body(id, &format!("{id}-{copy}"))))
        .collect();
    let refusals: Vec<String> = futures::future::join_all(
        copies
            .into_iter()
            .map(|body| deliver_until_acknowledged(&http, &images.url, body)),
    )
    .await
    .into_iter()
    .flatten()
    .collect();

    // Videos: three copies of every message published at once to a topic
    // whose push subscription (the emulator's) feeds the video generator.
    let prefix = world.prefix.clone().unwrap();
    let topic = format!("{prefix}duplicated-video-jobs");
    pubsub.topic(&topic).await;
    let (proxy, answers) = recording_proxy(&videos.url).await;
    pubsub
        .push(
            &format!("{prefix}duplicated-video-push"),
            &topic,
            &format!("{proxy}/"),
        )
        .await;
    let payloads: Vec<String> = video
        .iter()
        .flat_map(|(id, _)| std::iter::repeat_n(json!({ "job_id": id }).to_string(), 3))
        .collect();
    let message_ids: BTreeSet<String> = pubsub
        .publish_all(&topic, &payloads)
        .await
        .into_iter()
        .collect();
    wait_until(
        "every video job message to be acknowledged",
        Duration::from_secs(120),
        async || {
            let answers = answers.lock().unwrap();
            let acknowledged: BTreeSet<&String> = answers
                .iter()
                .filter(|(_, status)| (200..300).contains(status))
                .map(|(id, _)| id)
                .collect();
            message_ids.iter().all(|id| acknowledged.contains(id))
        },
    )
    .await;
    let elapsed = started.elapsed();

    for (id, prompt) in &image {
        assert_eq!(world.fake.calls_for_prompt(prompt), 1, "{prompt}");
        let job = world.store.job(id).await.unwrap();
        assert_eq!(
            (job.status(), job.attempts()),
            (JobStatus::Completed, 1),
            "{id}"
        );
    }
    for (id, prompt) in &video {
        assert_eq!(world.fake.calls_for_prompt(prompt), 1, "{prompt}");
        let job = world.store.job(id).await.unwrap();
        assert_eq!(
            (job.status(), job.attempts()),
            (JobStatus::Generating, 1),
            "{id}"
        );
    }
    assert_eq!(world.fake.calls(Verb::GenerateContent), image_jobs);
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), video_jobs);
    let answers = answers.lock().unwrap().clone();
    let redelivered = answers.len() - message_ids.len();
    let bad: Vec<&(String, u16)> = answers
        .iter()
        .filter(|(_, status)| !(200..300).contains(status) && *status != 503)
        .collect();
    assert!(bad.is_empty(), "answers other than 2xx and 503: {bad:?}");
    eprintln!(
        "{} image and {} video jobs, each delivered 3 times: one model call per job in {elapsed:?}; \
         {} image pushes and {redelivered} video pushes had to be delivered again",
        image_jobs,
        video_jobs,
        refusals.len(),
    );
    if let Some(example) = refusals.first() {
        eprintln!("an image push answered 503: {example}");
    }
    images.assert_healthy().await;
    videos.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_job_message_delivered_three_times_at_once_costs_one_model_call() {
    duplicates_cost_one_model_call_each(30, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "takes minutes; run it with `tests/run --no-lint -E 'test(/^faults::/)' --run-ignored all`"]
async fn duplicate_delivery_at_scale() {
    duplicates_cost_one_model_call_each(200, 100).await;
}

// --- crash after claim ---------------------------------------------------

/// Pushes `job_id` to `url` in the background: the answer never comes when
/// the service is killed first.
fn push_in_background(url: &str, job_id: &str) -> tokio::task::JoinHandle<()> {
    let url = url.to_string();
    let body = push_body(job_id, &format!("{job_id}-first"));
    tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("{url}/"))
            .body(body)
            .send()
            .await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generators_killed_mid_call_never_pay_twice_and_leave_no_job_unfinished() {
    let world = emulators(FakeOptions::default()).await;
    let (pubsub, topics) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    let image_prompt = "a generator dies while it draws";
    let video_prompt = "a generator dies while it films";
    let image = world.job(image_prompt, JobKind::Image, &[]).await;
    let video = world.job(video_prompt, JobKind::Video, &[]).await;

    // The first call of each hangs, so the kill lands after the paid
    // request went out: whether the model made (and billed) it is unknown.
    world.fake.slow_next(2, Duration::from_secs(300));
    let short_lease = [("LEASE_TTL", "5s".to_string())];
    let mut images = Service::start("image-generator", &world, &short_lease).await;
    let mut videos = Service::start("video-generator", &world, &short_lease).await;
    let _first = [
        push_in_background(&images.url, &image),
        push_in_background(&videos.url, &video),
    ];
    wait_until("both model calls", Duration::from_secs(30), async || {
        world.fake.calls_for_prompt(image_prompt) == 1
            && world.fake.calls_for_prompt(video_prompt) == 1
    })
    .await;
    for id in [&image, &video] {
        let job = world.store.job(id).await.unwrap();
        assert_eq!(
            (job.status(), job.attempts()),
            (JobStatus::Processing, 1),
            "{id}"
        );
    }
    images.kill();
    videos.kill();
    // Before the lease runs out the janitor leaves the jobs alone.
    let early = world.run_janitor(&pubsub).await;
    assert_eq!(early["requeued"], 0, "{early}");

    // Healthy generators behind real push subscriptions on the job topics,
    // where the janitor publishes what it requeues.
    let mut images = Service::start("image-generator", &world, &[]).await;
    let mut videos = Service::start("video-generator", &world, &[]).await;
    pubsub
        .push(
            &format!("{prefix}image-push"),
            &topics.image_jobs(),
            &format!("{}/", images.url),
        )
        .await;
    pubsub
        .push(
            &format!("{prefix}video-push"),
            &topics.video_jobs(),
            &format!("{}/", videos.url),
        )
        .await;

    let leased_until = world.store.job(&image).await.unwrap().lease_expires_at();
    let wait = leased_until
        .and_then(|until| {
            (until.as_datetime() - Timestamp::now().as_datetime())
                .to_std()
                .ok()
        })
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    let summary = world.run_janitor(&pubsub).await;
    assert_eq!(
        (&summary["requeued"], &summary["failed_leases"]),
        (&json!(2), &json!(0)),
        "{summary}"
    );

    // The claims that take them back find the requests in doubt and send
    // nothing: the image fails with its cost booked, the video waits for
    // its output under its prefix.
    wait_until(
        "the image job to settle",
        Duration::from_secs(30),
        async || world.store.job(&image).await.unwrap().status() == JobStatus::Failed,
    )
    .await;
    wait_until(
        "the video job to await its output",
        Duration::from_secs(30),
        async || world.store.job(&video).await.unwrap().awaits_output(),
    )
    .await;
    // No video ever appears (the killed submit never started one): the
    // poller ends the wait after OPERATION_TIMEOUT.
    tokio::time::sleep(Duration::from_secs(2)).await;
    world
        .run_poller(&[("OPERATION_TIMEOUT", "1s".to_string())])
        .await;

    for (id, prompt) in [(&image, image_prompt), (&video, video_prompt)] {
        let job = world.store.job(id).await.unwrap();
        assert_eq!(
            (job.status(), job.attempts()),
            (JobStatus::Failed, 1),
            "{id}"
        );
        let error = job.error().unwrap();
        assert_eq!(error.code, SUBMIT_UNKNOWN, "{id}");
        assert!(error.message.contains("--resubmit"), "{}", error.message);
        assert_eq!(
            world.fake.calls_for_prompt(prompt),
            1,
            "paid once: {prompt}"
        );
    }
    let left = world.unfinished().await;
    assert!(left.is_empty(), "unfinished jobs: {left:#?}");
    images.assert_healthy().await;
    videos.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_worker_dies_on_every_attempt_fails_instead_of_staying_stuck() {
    let world = emulators(FakeOptions::default()).await;
    let (pubsub, _) = world.topics().await;
    // A dry run pays nothing, so a worker that dies mid-job leaves nothing
    // in doubt: each death uses an attempt. Its bucket hangs, so every
    // worker dies while writing.
    let mut new = NewJob::new("a worker that never comes back", JobKind::Image);
    new.max_attempts = 2;
    let id = world
        .store
        .create_job(new)
        .await
        .unwrap()
        .record
        .id()
        .to_string();
    let (hanging_storage, _hole) = tests::outage::black_hole().await;
    let dying = [
        ("LEASE_TTL", "1s".to_string()),
        ("DRY_RUN", "true".to_string()),
        ("STORAGE_EMULATOR_HOST", hanging_storage),
    ];
    for attempt in 1..=2 {
        let mut images = Service::start("image-generator", &world, &dying).await;
        let _push = push_in_background(&images.url, &id);
        wait_until("the claim", Duration::from_secs(30), async || {
            world.store.job(&id).await.unwrap().attempts() == attempt
        })
        .await;
        images.kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let summary = world.run_janitor(&pubsub).await;
        let expected = match attempt {
            1 => (json!(1), json!(0)),
            _ => (json!(0), json!(1)),
        };
        assert_eq!(
            (
                summary["requeued"].clone(),
                summary["failed_leases"].clone()
            ),
            expected,
            "{summary}"
        );
    }
    let job = world.store.job(&id).await.unwrap();
    assert_eq!((job.status(), job.attempts()), (JobStatus::Failed, 2));
    assert_eq!(job.error().unwrap().code, ATTEMPTS_EXHAUSTED);
    // Its message, delivered again, changes nothing.
    let mut images = Service::start("image-generator", &world, &[]).await;
    let answer = post(
        &reqwest::Client::new(),
        &format!("{}/", images.url),
        push_body(&id, "late").into_bytes(),
        &[],
    )
    .await;
    assert_eq!((answer.status, answer.outcome()), (200, "duplicate"));
    assert_eq!(world.fake.total_calls(), 0);
    assert!(world.unfinished().await.is_empty());
    images.assert_healthy().await;
}

// --- crash mid-copy ------------------------------------------------------

/// A TCP proxy to `upstream` that counts the bytes flowing back to clients.
struct CountingProxy {
    endpoint: String,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn counting_proxy(upstream: &str) -> CountingProxy {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let requests = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    let _ = server_write.shutdown().await;
                });
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buffer).await {
                    if n == 0 || client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                }
                requests.abort();
            });
        }
    });
    CountingProxy {
        endpoint,
        received,
        task,
    }
}

/// A push subscription on the topic fake-gcs-server publishes its
/// notifications to (tests/run wires it), aimed at `endpoint`.
async fn storage_events_to(pubsub: &Emulator, prefix: &str, endpoint: &str) {
    let topic = std::env::var("ASMR_TEST_GCS_EVENTS_TOPIC")
        .expect("ASMR_TEST_GCS_EVENTS_TOPIC is not set: run tests/run");
    pubsub
        .push(&format!("{prefix}storage-events"), &topic, endpoint)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_killed_partway_resumes_and_reads_only_the_rest() {
    const SIZE: usize = 48 * 1024 * 1024;
    let world = emulators(FakeOptions::default()).await;
    let (pubsub, _) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    let sandbox = tempfile::tempdir().unwrap();
    let destination = sandbox.path().join("archive");
    let storage = std::env::var("STORAGE_EMULATOR_HOST").unwrap();
    let copier = |endpoint: &str, port: u16| {
        let mut command = world.stage_command(
            "downloader",
            &[
                ("DOWNLOAD_DESTINATION", destination.display().to_string()),
                ("DOWNLOAD_LEASE", "2s".to_string()),
                ("PORT", port.to_string()),
            ],
        );
        command.env("STORAGE_EMULATOR_HOST", endpoint);
        Running(command.spawn().unwrap())
    };
    // The first copier reads at 16 MB/s, so the kill lands partway whatever
    // the machine's load; the second reads through a proxy that counts.
    let slow = tests::throttle::start(&storage, 16_000_000).await;
    let counted = counting_proxy(&storage).await;
    let port = free_port();
    let mut first = copier(&slow.endpoint, port);
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url).await;
    storage_events_to(&pubsub, &prefix, &format!("{url}/")).await;

    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let crc = shared::crc::Crc32c::of(&data).to_string();
    let id = world.job("an object cut in two", JobKind::Image, &[]).await;
    let lease = shared::domain::Lease::new("w", Duration::from_secs(600));
    world.store.claim_job(&id, &lease).await.unwrap();
    let name = format!("images/{id}/0.png");
    world
        .store
        .complete_job(
            &id,
            "w",
            vec![format!("gs://{}/{name}", world.bucket).parse().unwrap()],
        )
        .await
        .unwrap();
    world
        .objects
        .write(
            &world.bucket,
            &name,
            bytes::Bytes::from(data.clone()),
            "image/png",
            &Default::default(),
        )
        .await
        .unwrap();
    let target = destination.join(&name);
    let generation = world
        .objects
        .metadata(&world.bucket, &name)
        .await
        .unwrap()
        .unwrap()
        .generation;
    let partial = shared::deliver::copy::partial_path(&target, Some(generation));

    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < (SIZE / 4) as u64 {
        assert!(!target.exists(), "the copy finished before the kill");
        assert!(
            Instant::now() < deadline,
            "the copy never got a quarter through"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let on_disk = std::fs::metadata(&partial).unwrap().len();
    assert!(on_disk < SIZE as u64, "the kill came too late");
    assert!(
        !target.exists(),
        "a killed copy leaves nothing at the final path"
    );

    // The event comes back to a new instance once the lease has run out.
    let _second = copier(&counted.endpoint, port);
    wait_until(
        "the job to be delivered",
        Duration::from_secs(60),
        async || world.store.job(&id).await.unwrap().status() == JobStatus::Delivered,
    )
    .await;
    let read = counted.received.load(Ordering::SeqCst);
    let rest = SIZE as u64 - on_disk;
    eprintln!(
        "killed with {on_disk} of {SIZE} bytes on disk; the resumed copy read {read} bytes for the remaining {rest}"
    );
    assert!(
        read >= rest,
        "the resumed copy read {read} bytes, less than the {rest} left"
    );
    assert!(
        read < rest + 256 * 1024,
        "the resumed copy read {read} bytes for the {rest} left: it started over"
    );
    let copied = std::fs::read(&target).unwrap();
    assert!(copied == data, "the delivered file differs from the object");
    assert_eq!(shared::crc::Crc32c::of(&copied).to_string(), crc);
    let download = world
        .store
        .list_downloads(None, 10, None)
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(
        (
            download.status(),
            download.attempts(),
            download.crc32c().map(|c| c.to_string())
        ),
        (
            shared::domain::download::DownloadStatus::Completed,
            2,
            Some(crc)
        )
    );
    let leftovers = tests::harness::files_below(sandbox.path());
    assert_eq!(
        leftovers,
        vec![
            target.clone(),
            destination.join(shared::manifest::MANIFEST_NAME)
        ],
        "only the delivered file and its manifest line are left"
    );
}

// --- hostile input -------------------------------------------------------

/// The committed corpus of `tests/fixtures/hostile/`.
struct Corpus {
    push: Vec<(String, Vec<u8>)>,
    job_ids: Vec<Value>,
    job_messages: Vec<String>,
    requests: Vec<RequestCase>,
    prompts: Vec<String>,
    /// Each name, and whether it must be delivered inside its job's folder
    /// (else refused): written down in the fixture by hand.
    object_names: Vec<(String, bool)>,
    notifications: Vec<Value>,
    cloud_events: Vec<Value>,
}

struct RequestCase {
    name: String,
    body: Vec<u8>,
    attributes: BTreeMap<String, String>,
}

fn hostile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile")
}

fn fixture(name: &str) -> Value {
    let path = hostile_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(value: Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn attributes(value: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

impl Corpus {
    fn load() -> Self {
        let mut push: Vec<(String, Vec<u8>)> = std::fs::read_dir(hostile_dir().join("push"))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        push.sort();
        let requests = fixture("requests.json")
            .as_array()
            .unwrap()
            .iter()
            .map(|case| RequestCase {
                name: case["name"].as_str().unwrap().to_string(),
                body: match case["body_base64"].as_str() {
                    Some(encoded) => base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .unwrap(),
                    None => case["body"].as_str().unwrap().as_bytes().to_vec(),
                },
                attributes: attributes(&case["attributes"]),
            })
            .collect();
        Self {
            push,
            job_ids: fixture("job-ids.json").as_array().unwrap().clone(),
            job_messages: strings(fixture("job-messages.json")),
            requests,
            prompts: strings(fixture("prompts.json")),
            object_names: fixture("object-names.json")
                .as_array()
                .unwrap()
                .iter()
                .map(|case| {
                    let expect = case["expect"].as_str().unwrap();
                    assert!(["refused", "delivered"].contains(&expect), "{case}");
                    (
                        case["name"].as_str().unwrap().to_string(),
                        expect == "delivered",
                    )
                })
                .collect(),
            notifications: fixture("notifications.json").as_array().unwrap().clone(),
            cloud_events: fixture("cloudevents.json").as_array().unwrap().clone(),
        }
    }

    fn len(&self) -> usize {
        self.push.len()
            + self.job_ids.len()
            + self.job_messages.len()
            + self.requests.len()
            + self.prompts.len()
            + self.object_names.len()
            + self.notifications.len()
            + self.cloud_events.len()
    }
}

#[test]
fn the_hostile_corpus_has_at_least_200_cases() {
    let corpus = Corpus::load();
    assert!(corpus.len() >= 200, "only {} cases", corpus.len());
    assert!(
        corpus.push.len() >= 50,
        "only {} push bodies",
        corpus.push.len()
    );
}

/// What intake should make of a push: its jobs, or why it is refused.
fn intake_verdict(push: &[u8]) -> Result<Vec<NewJob>, String> {
    let delivery = shared::push::decode(push).map_err(|e| e.0)?;
    let envelope = Envelope {
        attributes: delivery.attributes.clone(),
        message_id: Some(&delivery.message_id),
        dry_run: true,
        ..Default::default()
    };
    shared::requests::parse(&delivery.data, &envelope).map_err(|e| e.reason)
}

/// The `rejected` record a refused push must leave.
fn rejected_id(push: &[u8]) -> String {
    let now = Timestamp::now();
    match shared::push::decode(push) {
        Ok(d) => {
            Rejected::new(
                RejectedSource::Pubsub,
                Some(&d.message_id),
                d.attributes,
                &d.data,
                "",
                now,
            )
            .id
        }
        Err(_) => Rejected::new(RejectedSource::Pubsub, None, BTreeMap::new(), push, "", now).id,
    }
}

/// A prompt in the two JSON request forms (the third is the bare text).
fn prompt_requests(prompt: &str) -> [Vec<u8>; 2] {
    [
        json!({"prompt": prompt, "kind": "image"})
            .to_string()
            .into_bytes(),
        json!({"kind": "video", "prompts": [prompt, "a quiet room"]})
            .to_string()
            .into_bytes(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intake_acknowledges_and_records_every_hostile_push_and_refuses_bad_http_input() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let mut intake = Service::start("intake", &world, &[]).await;
    let corpus = Corpus::load();

    // Pushes of asmr-requests: broken envelopes, bad requests, and every
    // prompt in the three request forms.
    let mut pushes: Vec<Sent> = corpus
        .push
        .iter()
        .map(|(name, body)| Sent::new(format!("push/{name}"), body.clone()))
        .collect();
    for (n, case) in corpus.requests.iter().enumerate() {
        pushes.push(Sent::new(
            format!("requests/{}", case.name),
            envelope(&format!("request-{n}"), &case.body, &case.attributes),
        ));
    }
    // The corpus itself: no request in it may be valid in any form.
    let valid: Vec<&str> = corpus
        .requests
        .iter()
        .zip(&pushes[corpus.push.len()..])
        .filter(|(case, push)| {
            intake_verdict(&push.body).is_ok()
                || shared::requests::parse(&case.body, &Envelope::default()).is_ok()
        })
        .map(|(case, _)| case.name.as_str())
        .collect();
    assert!(
        valid.is_empty(),
        "requests.json has valid requests: {valid:?}"
    );
    let image_kind = BTreeMap::from([("kind".to_string(), "image".to_string())]);
    for (n, prompt) in corpus.prompts.iter().enumerate() {
        let [object, batch] = prompt_requests(prompt);
        for (form, body, attributes) in [
            ("object", object, BTreeMap::new()),
            ("batch", batch, BTreeMap::new()),
            ("text", prompt.as_bytes().to_vec(), image_kind.clone()),
        ] {
            pushes.push(Sent::new(
                format!("prompts[{n}] as {form}"),
                envelope(&format!("prompt-{n}-{form}"), &body, &attributes),
            ));
        }
    }
    pushes.push(Sent::new(
        "a request over the size limit",
        envelope("oversized", &vec![b'x'; MAX_BODY_BYTES + 1], &image_kind),
    ));
    let answers = send_all(&format!("{}/", intake.url), &pushes, 8).await;
    assert_all_acknowledged("intake", &pushes, &answers);

    let mut refused = BTreeSet::new();
    let mut expected_jobs = 0;
    for (sent, answer) in pushes.iter().zip(&answers) {
        let label = &sent.label;
        match intake_verdict(&sent.body) {
            Err(reason) => {
                assert_eq!(answer.outcome(), "poison", "{label}: {answer:?} ({reason})");
                let id = rejected_id(&sent.body);
                let record = world
                    .store
                    .get_rejected(&id)
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("{label}: no rejected record {id}"));
                assert!(!record.reason.is_empty(), "{label}");
                refused.insert(id);
            }
            Ok(jobs) => {
                assert_eq!(answer.outcome(), "done", "{label}: {answer:?}");
                for job in &jobs {
                    let id = Job::id_for_request(job.request_id.as_deref().unwrap());
                    let stored = world.store.job(&id).await.unwrap();
                    assert_eq!(stored.prompt(), job.prompt, "{label}");
                }
                expected_jobs += jobs.len() as u64;
            }
        }
    }
    assert_eq!(
        world.store.count_rejected().await.unwrap(),
        refused.len() as u64
    );

    // The HTTP API: 4xx for what it cannot take, never a 5xx.
    let mut calls: Vec<(String, Vec<u8>, bool)> = corpus
        .requests
        .iter()
        .map(|case| (format!("requests/{}", case.name), case.body.clone(), false))
        .collect();
    for (n, prompt) in corpus.prompts.iter().enumerate() {
        for (form, body) in ["object", "batch"].into_iter().zip(prompt_requests(prompt)) {
            let accepted = shared::requests::parse(&body, &Envelope::default()).is_ok();
            calls.push((format!("prompts[{n}] as {form}"), body, accepted));
        }
        calls.push((
            format!("prompts[{n}] as text"),
            prompt.as_bytes().to_vec(),
            false,
        ));
    }
    for (name, body) in &corpus.push {
        calls.push((format!("push/{name}"), body.clone(), false));
    }
    calls.push((
        "a body over the size limit".into(),
        [
            b"{\"prompt\": \"".as_slice(),
            &vec![b'x'; MAX_BODY_BYTES],
            b"\"}",
        ]
        .concat(),
        false,
    ));
    let key = world.api_key("default").await;
    let sent: Vec<Sent> = calls
        .iter()
        .map(|(label, body, _)| {
            let mut s = Sent::new(label.clone(), body.clone());
            s.headers
                .push(("content-type".into(), b"application/json".to_vec()));
            s.headers
                .push(("x-api-key".into(), key.clone().into_bytes()));
            s
        })
        .collect();
    let answers = send_all(&format!("{}/v1/jobs", intake.url), &sent, 8).await;
    for ((label, _, accepted), answer) in calls.iter().zip(&answers) {
        if *accepted {
            assert_eq!(answer.status, 201, "{label}: {answer:?}");
            expected_jobs += answer.body["jobs"].as_array().unwrap().len() as u64;
        } else {
            assert!(
                (400..500).contains(&answer.status),
                "{label}: {} {}",
                answer.status,
                answer.body
            );
            assert!(answer.body["error"].is_string(), "{label}: {answer:?}");
        }
    }
    // GET /v1/jobs/{id} with hostile ids: not found, never a 5xx.
    let http = tests::http::keyed_client(&key);
    for id in corpus.job_ids.iter().filter_map(Value::as_str) {
        let mut url = reqwest::Url::parse(&intake.url).unwrap();
        url.path_segments_mut().unwrap().extend(["v1", "jobs", id]);
        let status = http.get(url.clone()).send().await.unwrap().status();
        // An empty id leaves the listing's own path: the tenant's jobs.
        let listing = url.path().trim_end_matches('/') == "/v1/jobs";
        assert!(
            [400, 404, 405].contains(&status.as_u16()) || (listing && status == 200),
            "GET {url}: {status}"
        );
    }

    let counts = world.store.job_counts().await.unwrap();
    assert_eq!(counts.total(), expected_jobs, "jobs created");
    eprintln!(
        "intake: {} hostile pushes ({} refused and recorded), {} HTTP requests, {} jobs from the valid ones",
        pushes.len(),
        refused.len(),
        calls.len(),
        expected_jobs
    );
    intake.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_generators_acknowledge_every_hostile_job_message_as_poison() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let mut images = Service::start("image-generator", &world, &[]).await;
    let mut videos = Service::start("video-generator", &world, &[]).await;
    let corpus = Corpus::load();

    let mut pushes: Vec<Sent> = corpus
        .push
        .iter()
        .map(|(name, body)| Sent::new(format!("push/{name}"), body.clone()))
        .collect();
    let none = BTreeMap::new();
    for (n, value) in corpus.job_ids.iter().enumerate() {
        let data = json!({ "job_id": value }).to_string();
        pushes.push(Sent::new(
            format!("job-ids[{n}] {value}"),
            envelope(&format!("job-id-{n}"), data.as_bytes(), &none),
        ));
    }
    for (n, data) in corpus.job_messages.iter().enumerate() {
        pushes.push(Sent::new(
            format!("job-messages[{n}]"),
            envelope(&format!("job-message-{n}"), data.as_bytes(), &none),
        ));
    }
    pushes.push(Sent::new(
        "a push over the body limit",
        envelope("oversized", &vec![b' '; 3 * 1024 * 1024], &none),
    ));
    let image = world
        .job("a job of the other kind", JobKind::Image, &[])
        .await;
    let video = world
        .job("a job of the other kind", JobKind::Video, &[])
        .await;

    for (service, other) in [(&mut images, &video), (&mut videos, &image)] {
        let mut sent: Vec<Sent> = pushes
            .iter()
            .map(|s| Sent::new(s.label.clone(), s.body.clone()))
            .collect();
        sent.push(Sent::new(
            "a job of the other kind",
            push_body(other, "other-kind").into_bytes(),
        ));
        let answers = send_all(&format!("{}/", service.url), &sent, 8).await;
        assert_all_acknowledged(service.name, &sent, &answers);
        for (s, answer) in sent.iter().zip(&answers) {
            assert_eq!(
                answer.outcome(),
                "poison",
                "{}: {}: {answer:?}",
                service.name,
                s.label
            );
        }
        service.assert_healthy().await;
    }
    assert_eq!(
        world.fake.total_calls(),
        0,
        "a hostile message reached the model"
    );
    for id in [&image, &video] {
        let job = world.store.job(id).await.unwrap();
        assert_eq!((job.status(), job.attempts()), (JobStatus::Pending, 0));
    }
    eprintln!(
        "generators: {} hostile pushes each, all acknowledged as poison",
        pushes.len() + 1
    );
}

/// Entries of `dir` whose name contains `marker`.
fn marked(dir: &Path, marker: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains(marker))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn fill(text: &str, bucket: &str, job: &str) -> String {
    text.replace("{bucket}", bucket).replace("{job}", job)
}

/// A GCS notification push of `name` in `bucket`.
fn notification(message_id: &str, bucket: &str, name: &str, generation: i64) -> Vec<u8> {
    let attributes = BTreeMap::from(
        [
            ("eventType", "OBJECT_FINALIZE".to_string()),
            ("bucketId", bucket.to_string()),
            ("objectId", name.to_string()),
            ("objectGeneration", generation.to_string()),
            ("payloadFormat", "NONE".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    envelope(message_id, b"", &attributes)
}

/// A binary-mode CloudEvent of generation `generation` of `name` in
/// `bucket`.
fn cloud_event(id: &str, bucket: &str, name: &str, generation: i64) -> Sent {
    let mut sent = Sent::new(
        format!("CloudEvent of {name:?}"),
        json!({"bucket": bucket, "name": name, "generation": generation.to_string()}).to_string(),
    );
    sent.headers = [
        ("ce-specversion", "1.0"),
        ("ce-type", "google.cloud.storage.object.v1.finalized"),
        ("ce-id", id),
        ("content-type", "application/json"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_downloader_acknowledges_hostile_events_and_writes_only_under_its_root() {
    const ESCAPE: &str = "asmr-hostile-escape";
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let corpus = Corpus::load();
    // The destination inside a sandbox, with a neighbour to keep clean.
    let sandbox = tempfile::tempdir().unwrap();
    let root = sandbox.path().join("archive");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(sandbox.path().join("neighbour")).unwrap();
    std::fs::write(sandbox.path().join("neighbour/keep.txt"), b"keep").unwrap();
    let watched: Vec<PathBuf> = [
        Some(std::env::temp_dir()),
        Some(std::env::current_dir().unwrap()),
        std::env::current_dir()
            .unwrap()
            .parent()
            .map(Path::to_path_buf),
        sandbox.path().parent().map(Path::to_path_buf),
    ]
    .into_iter()
    .flatten()
    .collect();
    let before: Vec<PathBuf> = watched.iter().flat_map(|d| marked(d, ESCAPE)).collect();
    let mut downloader = Service::start(
        "downloader",
        &world,
        &[
            ("DOWNLOAD_DESTINATION", root.display().to_string()),
            ("DOWNLOAD_LEASE", "2s".to_string()),
        ],
    )
    .await;
    let bucket = world.bucket.clone();
    let job = world
        .job("a job with hostile outputs", JobKind::Image, &[])
        .await;

    // Every name exists for real inside the job's folder, so a name the
    // path rules let through would be copied: whatever the downloader
    // refuses, it refuses by its name, not for want of an object.
    // Each in a job of its own: `~` and `~/x` cannot both be files.
    let mut uploaded = Vec::new();
    for (name, delivered) in &corpus.object_names {
        let own = world.job("a hostile output", JobKind::Image, &[]).await;
        let full = format!("images/{own}/{name}");
        let data = format!("content of {name:?}").into_bytes();
        let generation = tests::objects::upload_as_named(&bucket, &full, data.clone()).await;
        uploaded.push((full, generation, data, *delivered));
    }

    let mut sent: Vec<Sent> = corpus
        .push
        .iter()
        .map(|(name, body)| Sent::new(format!("push/{name}"), body.clone()))
        .collect();
    for (n, case) in corpus.notifications.iter().enumerate() {
        let attributes: BTreeMap<String, String> = attributes(&case["attributes"])
            .into_iter()
            .map(|(k, v)| (k, fill(&v, &bucket, &job)))
            .collect();
        let data = case["data"]
            .as_str()
            .map(|d| fill(d, &bucket, &job))
            .unwrap_or_default();
        sent.push(Sent::new(
            format!("notifications/{}", case["name"].as_str().unwrap()),
            envelope(&format!("notification-{n}"), data.as_bytes(), &attributes),
        ));
    }
    for case in &corpus.cloud_events {
        let mut s = Sent::new(
            format!("cloudevents/{}", case["name"].as_str().unwrap()),
            fill(case["body"].as_str().unwrap(), &bucket, &job),
        );
        s.headers = attributes(&case["headers"])
            .into_iter()
            .map(|(k, v)| (k, fill(&v, &bucket, &job).into_bytes()))
            .collect();
        sent.push(s);
    }
    // Every hostile name on its own (no job: never copied), as a
    // notification and as a CloudEvent.
    for (n, (name, _)) in corpus.object_names.iter().enumerate() {
        let mut s = Sent::new(
            format!("object-names[{n}] bare {name:?}"),
            notification(&format!("name-{n}-bare"), &bucket, name, 1),
        );
        s.label = format!("object-names[{n}] bare {name:?} (notification)");
        sent.push(s);
        sent.push(cloud_event(&format!("name-{n}-bare"), &bucket, name, 1));
    }
    // Inside the job's folder, at the generation uploaded: a notification,
    // then a CloudEvent of the same object (a duplicate once it is copied).
    let first_upload = sent.len();
    for (n, (full, generation, _, _)) in uploaded.iter().enumerate() {
        sent.push(Sent::new(
            format!("object-names[{n}] {full:?} (notification)"),
            notification(&format!("uploaded-{n}"), &bucket, full, *generation),
        ));
        sent.push(cloud_event(
            &format!("uploaded-{n}"),
            &bucket,
            full,
            *generation,
        ));
    }
    sent.push(Sent::new(
        "a push over the body limit",
        envelope("oversized", &vec![b' '; 3 * 1024 * 1024], &BTreeMap::new()),
    ));

    // One at a time: events of one object sent at once are rightly answered
    // 503 while the first copy runs (its event must come back should that
    // copier die), which is not what this test is about.
    let answers = send_all(&format!("{}/", downloader.url), &sent, 1).await;
    assert_all_acknowledged("the downloader", &sent, &answers);
    for (n, (full, _, data, delivered)) in uploaded.iter().enumerate() {
        let (first, second) = (
            &answers[first_upload + 2 * n],
            &answers[first_upload + 2 * n + 1],
        );
        let relative: PathBuf = full.split('/').collect();
        let path = root.join(&relative);
        if *delivered {
            assert_eq!(first.outcome(), "done", "{full:?}: {first:?}");
            assert_eq!(second.outcome(), "duplicate", "{full:?}: {second:?}");
            assert_eq!(std::fs::read(&path).unwrap(), *data, "{full:?}");
        } else {
            // Refused by its name (poison), or not a job's output at all
            // (`images/{job}/` itself): acknowledged, never copied, which
            // the count of files below holds.
            for answer in [first, second] {
                let outcome = answer.outcome();
                assert!(
                    ["poison", "ignored"].contains(&outcome),
                    "{full:?}: {answer:?}"
                );
            }
        }
    }

    // Nothing outside the destination: the sandbox holds only the
    // neighbour's file and what is under the root, as plain files.
    let files = tests::harness::files_below(sandbox.path());
    for file in &files {
        let inside = file.starts_with(&root) || file == &sandbox.path().join("neighbour/keep.txt");
        assert!(
            inside,
            "{} was written outside {}",
            file.display(),
            root.display()
        );
        let meta = std::fs::symlink_metadata(file).unwrap();
        assert!(meta.is_file(), "{} is not a plain file", file.display());
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            !name.ends_with(shared::domain::paths::PARTIAL_SUFFIX),
            "{} was left",
            file.display()
        );
    }
    let manifest = root.join(shared::manifest::MANIFEST_NAME);
    let delivered = files
        .iter()
        .filter(|f| f.starts_with(&root) && **f != manifest)
        .count();
    let to_deliver = uploaded.iter().filter(|(.., delivered)| *delivered).count();
    assert_eq!(delivered, to_deliver, "{files:#?}");
    let after: Vec<PathBuf> = watched.iter().flat_map(|d| marked(d, ESCAPE)).collect();
    assert_eq!(after, before, "something escaped the destination");
    eprintln!(
        "downloader: {} hostile events acknowledged, {} real copies, all under the root",
        sent.len(),
        delivered
    );
    downloader.assert_healthy().await;
}

// --- limits at the edge ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intake_acknowledges_huge_ids_attributes_and_bodies_as_recorded_poison() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let mut intake = Service::start("intake", &world, &[]).await;
    let url = format!("{}/", intake.url);
    let http = reqwest::Client::new();
    let huge = "x".repeat(1024 * 1024);
    let attributes = BTreeMap::from([
        (huge.clone(), huge.clone()),
        ("kind".into(), "video".into()),
    ]);
    let cases = [
        (
            "a 1 MiB message id",
            envelope(&huge, b"no kind", &BTreeMap::new()),
        ),
        (
            "a 1 MiB attribute",
            envelope("huge-attribute", &[b'{'; 10], &attributes),
        ),
        // Over the 16 MiB every route reads at most.
        ("a 17 MiB push", vec![b'{'; 17 * 1024 * 1024]),
    ];
    for (what, body) in cases {
        let answer = post(&http, &url, body, &[]).await;
        assert_eq!(
            (answer.status, answer.outcome()),
            (200, "poison"),
            "{what}: {}",
            answer.body
        );
    }
    let rejected = world.store.list_rejected(10, None).await.unwrap().items;
    assert_eq!(rejected.len(), 3, "each one recorded: {rejected:#?}");
    for record in &rejected {
        let size = serde_json::to_vec(record).unwrap().len();
        assert!(size < 16 * 1024, "a record fits a document: {size} bytes");
    }
    intake.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_ids_a_generator_would_refuse_are_refused_at_intake() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let intake = Service::start("intake", &world, &[]).await;
    let http = tests::http::keyed_client(&world.api_key("default").await);
    for model in [
        "gemini-../../x",
        "gemini-x?alt=1",
        "gemini-a b",
        "veo-3.1-generate-001",
    ] {
        let body = json!({"prompt": "rain", "kind": "image", "params": {"model": model}});
        let answer = post(
            &http,
            &format!("{}/v1/jobs", intake.url),
            body.to_string().into_bytes(),
            &[],
        )
        .await;
        assert_eq!(answer.status, 400, "{model}: {}", answer.body);
        let pushed = envelope(
            &format!("model-{}", model.len()),
            body.to_string().as_bytes(),
            &BTreeMap::new(),
        );
        let answer = post(&http, &format!("{}/", intake.url), pushed, &[]).await;
        assert_eq!(
            (answer.status, answer.outcome()),
            (200, "poison"),
            "{model}"
        );
    }
    assert!(world.unfinished().await.is_empty(), "no job was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_clients_are_cut_off_while_the_service_keeps_answering() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let mut intake = Service::start("intake", &world, &[]).await;
    let address = intake.url.trim_start_matches("http://").to_string();
    // Idle connections, a request whose headers trickle at a byte a second,
    // and one whose body does.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let trickle = |prefix: &'static [u8]| {
        let address = address.clone();
        tokio::spawn(async move {
            let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
            socket.write_all(prefix).await.unwrap();
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if socket.write_all(b"a").await.is_err() {
                    return started.elapsed();
                }
                let mut buffer = [0u8; 256];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(10), socket.read(&mut buffer)).await
                {
                    return started.elapsed();
                }
                assert!(started.elapsed() < Duration::from_secs(90), "never cut off");
            }
        })
    };
    let slow_headers = trickle(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let slow_body = trickle(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"prompt\": \"",
    );
    // The service answers others meanwhile.
    for _ in 0..3 {
        intake.assert_healthy().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let headers_cut = slow_headers.await.unwrap();
    let body_cut = slow_body.await.unwrap();
    assert!(
        headers_cut < Duration::from_secs(40),
        "headers: {headers_cut:?}"
    );
    assert!(body_cut < Duration::from_secs(40), "body: {body_cut:?}");
    // Every idle connection was closed too.
    let mut closed = 0;
    for socket in &mut idle {
        let mut buffer = [0u8; 16];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buffer)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, idle.len(), "idle connections closed");
    intake.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finalize_event_of_another_generation_copies_nothing() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let destination = tempfile::tempdir().unwrap();
    let downloader = Service::start(
        "downloader",
        &world,
        &[(
            "DOWNLOAD_DESTINATION",
            destination.path().display().to_string(),
        )],
    )
    .await;
    let id = world.job("one generation", JobKind::Image, &[]).await;
    let name = format!("images/{id}/0.png");
    let meta = world
        .objects
        .write(
            &world.bucket,
            &name,
            tests::fake_vertex::PNG_1X1.to_vec().into(),
            "image/png",
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/", downloader.url);
    for (n, generation) in [meta.generation + 1, meta.generation - 1, 1]
        .into_iter()
        .enumerate()
    {
        let forged = notification(&format!("forged-{n}"), &world.bucket, &name, generation);
        let answer = post(&http, &url, forged, &[]).await;
        assert_eq!(
            (answer.status, answer.outcome()),
            (200, "ignored"),
            "{}",
            answer.body
        );
    }
    assert_eq!(world.store.download_counts().await.unwrap().total(), 0);
    let real = notification("real", &world.bucket, &name, meta.generation);
    let answer = post(&http, &url, real, &[]).await;
    assert_eq!(
        (answer.status, answer.outcome()),
        (200, "done"),
        "{}",
        answer.body
    );
    assert_eq!(world.store.download_counts().await.unwrap().total(), 1);
}

// --- tenants under faults ------------------------------------------------

/// Every file below `dir`, relative to it (none when it does not exist).
fn relative_files(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    tests::harness::files_below(dir)
        .into_iter()
        .map(|path| path.strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

/// Two tenants through the push topology (requests with a `tenant`
/// attribute → `intake` → `image-generator` → bucket notifications →
/// `downloader`) while every request and every job message arrives three
/// times and the model's quota is half the batch per window: each job is
/// paid once, each tenant's files land in its own destination only with its
/// own manifest, and neither tenant's listing, stats or budget holds the
/// other's jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tenants_under_a_duplicate_storm_and_a_quota_squeeze_never_cross() {
    use shared::domain::tenant::{Tenant, TenantName, TenantSettings};
    use shared::store::JobFilter;
    use shared::store::tenants::Scope;
    const PER_TENANT: usize = 6;
    let world = emulators(FakeOptions {
        latency: Duration::from_millis(100),
        requests_per_minute: Some(PER_TENANT as u32),
        quota_window: Duration::from_secs(3),
        quota_retry_after: Some(Duration::from_secs(1)),
        ..FakeOptions::default()
    })
    .await;
    let (pubsub, topics) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    let root = tempfile::tempdir().unwrap();
    let names = ["acme", "globex"];
    let own_dir = |name: &str| root.path().join(format!("{name}-archive"));
    for name in names {
        let settings = TenantSettings {
            destination: Some(Some(own_dir(name).display().to_string())),
            daily_budget_micros: Some(Some(100_000_000)),
            ..TenantSettings::default()
        };
        let tenant = Tenant::new(name.parse().unwrap(), &settings, Timestamp::now()).unwrap();
        world.store.add_tenant(tenant).await.unwrap();
    }
    let default_dir = root.path().join("deployment");
    let intake = Service::start("intake", &world, &[]).await;
    let images = Service::start("image-generator", &world, &[]).await;
    let downloader = Service::start(
        "downloader",
        &world,
        &[
            ("DOWNLOAD_DESTINATION", default_dir.display().to_string()),
            ("DOWNLOAD_LEASE", "2s".to_string()),
        ],
    )
    .await;
    let gcs_events = std::env::var("ASMR_TEST_GCS_EVENTS_TOPIC").unwrap();
    for (name, topic, url) in [
        ("requests", topics.requests(), &intake.url),
        ("images", topics.image_jobs(), &images.url),
        ("objects", gcs_events, &downloader.url),
    ] {
        pubsub
            .push(&format!("{prefix}{name}"), &topic, &format!("{url}/"))
            .await;
    }

    // Every request three times, each tenant's interleaved with the other's.
    let prompt = |name: &str, n: usize| format!("{name}: gravel under boots, take {n}");
    for n in 0..PER_TENANT {
        for name in names {
            let attributes: BTreeMap<String, String> = [
                ("tenant", name.to_string()),
                ("kind", "image".to_string()),
                ("request_id", format!("{name}-{n}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            for _ in 0..3 {
                pubsub
                    .publish(&topics.requests(), prompt(name, n).as_bytes(), &attributes)
                    .await;
            }
        }
    }
    wait_until("a job per request", Duration::from_secs(60), async || {
        world.jobs().await.len() >= 2 * PER_TENANT
    })
    .await;
    // And every job message twice more, as a storm of redeliveries would.
    let copies: Vec<String> = world
        .jobs()
        .await
        .iter()
        .flat_map(|job| std::iter::repeat_n(json!({ "job_id": job.id() }).to_string(), 2))
        .collect();
    pubsub.publish_all(&topics.image_jobs(), &copies).await;

    wait_until(
        "every job delivered",
        Duration::from_secs(240),
        async || {
            let jobs = world.jobs().await;
            jobs.len() == 2 * PER_TENANT && jobs.iter().all(|j| j.status() == JobStatus::Delivered)
        },
    )
    .await;

    let jobs = world.jobs().await;
    assert_eq!(
        jobs.len(),
        2 * PER_TENANT,
        "three copies of a request make one job"
    );
    assert!(world.fake.rate_limited() > 0, "the quota squeezed");
    for name in names {
        let tenant: TenantName = name.parse().unwrap();
        let theirs: Vec<&Job> = jobs.iter().filter(|j| *j.tenant() == tenant).collect();
        assert_eq!(theirs.len(), PER_TENANT, "{name}");
        for job in &theirs {
            assert_eq!(
                world.fake.served_for_prompt(job.prompt()),
                1,
                "{name}: paid once"
            );
            assert!(
                job.prompt().starts_with(name),
                "{name} got {}",
                job.prompt()
            );
        }
        // Its files, and only its files, in its own destination.
        let dir = own_dir(name);
        let mut expected: Vec<String> = theirs
            .iter()
            .map(|j| format!("images/{}/0.png", j.id()))
            .collect();
        expected.push("manifest.jsonl".into());
        expected.sort();
        let mut found = relative_files(&dir);
        found.sort();
        assert_eq!(found, expected, "{name}'s destination");
        let manifest = std::fs::read_to_string(dir.join("manifest.jsonl")).unwrap();
        let lines: Vec<Value> = manifest
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), PER_TENANT, "{manifest}");
        assert!(lines.iter().all(|l| l["tenant"] == name), "{manifest}");
        // Its listing, stats and budget count its own jobs only.
        let filter = JobFilter {
            tenant: Some(tenant.clone()),
            ..JobFilter::default()
        };
        let listed = world
            .store
            .list_jobs(&filter, 100, None)
            .await
            .unwrap()
            .items;
        assert_eq!(listed.len(), PER_TENANT);
        let scope = Scope::Tenant(tenant.clone());
        let stats = world.store.stats_in(&scope).await.unwrap();
        assert_eq!(stats.jobs.total, PER_TENANT as u64, "{stats:?}");
        let today = shared::store::budget::budget_day_of(Timestamp::now());
        let charges = world.store.charges_on(&today).await.unwrap();
        let own = world.store.budget_day_in(&today, &scope).await.unwrap();
        let charged: u64 = charges
            .iter()
            .filter(|c| c.tenant == tenant)
            .map(|c| c.spent_micros)
            .sum();
        assert!(
            own.spent_micros > 0 && own.spent_micros == charged,
            "{own:?}"
        );
    }
    assert!(
        relative_files(&default_dir).is_empty(),
        "nothing in the deployment's own destination: {:?}",
        relative_files(&default_dir)
    );
}
