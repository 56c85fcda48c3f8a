//! The `intake` binary as it runs on Cloud Run: started with only its
//! documented environment, fed by a real push subscription on the Pub/Sub
//! emulator (some requests published with the `gcloud` CLI itself), writing
//! jobs to the Firestore emulator and job messages to per-test topics, read
//! back through pull subscriptions. Also its HTTP API, and `asmr add` on the
//! same write path.

#![cfg(feature = "emulators")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use shared::bus::Topics;
use shared::domain::job::Job;
use shared::domain::values::{JobKind, JobStatus};
use shared::store::{JobFilter, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tests::harness::{
    binary, emulator_command, emulator_project, firestore_backend_with_prefix, unique_prefix,
};
use tests::process::{Running, free_port, wait_healthy, wait_until};
use tests::pubsub::{Emulator, Pulled};

/// One intake service with its own collections and topics.
struct Intake {
    prefix: String,
    topics: Topics,
    store: Store,
    pubsub: Emulator,
    url: String,
    /// The default tenant's API key.
    key: String,
    /// The service's JSON log lines (its stdout).
    log: PathBuf,
    _service: Running,
    _dir: tempfile::TempDir,
}

impl Intake {
    /// Starts the binary; `job_topics` says whether the image and video job
    /// topics (with a pull subscription each) exist from the start.
    async fn start(job_topics: bool) -> Self {
        Self::start_with(job_topics, "off").await
    }

    /// [`Intake::start`] with `AUTO_PROMOTE` set; unless `off`, its
    /// `/v1/job-events` is subscribed to the job events, as terraform does.
    async fn start_with(job_topics: bool, auto_promote: &str) -> Self {
        let prefix = unique_prefix();
        let topics = Topics::new(prefix.clone());
        let pubsub = Emulator::new();
        let store = Store::new(Arc::new(firestore_backend_with_prefix(&prefix).await));
        pubsub.topic(&topics.requests()).await;
        if job_topics {
            Self::job_topics(&pubsub, &prefix, &topics).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("intake.log");
        let port = free_port();
        let mut command = emulator_command("intake", &prefix);
        command.env("PORT", port.to_string());
        command.env("AUTO_PROMOTE", auto_promote);
        command
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit());
        let service = Running(command.spawn().unwrap());
        let url = format!("http://127.0.0.1:{port}");
        wait_healthy(&url).await;
        pubsub
            .push(
                &format!("{prefix}requests"),
                &topics.requests(),
                &format!("{url}/"),
            )
            .await;
        if auto_promote != "off" {
            pubsub.topic(&topics.job_events()).await;
            pubsub
                .push(
                    &format!("{prefix}job-events"),
                    &topics.job_events(),
                    &format!("{url}/v1/job-events"),
                )
                .await;
        }
        Self {
            prefix,
            topics,
            key: tests::stages::api_key(&store, "default").await,
            store,
            pubsub,
            url,
            log,
            _service: service,
            _dir: dir,
        }
    }

    /// The job topics, each with a pull subscription named after its kind.
    async fn job_topics(pubsub: &Emulator, prefix: &str, topics: &Topics) {
        for kind in JobKind::ALL {
            pubsub.topic(&topics.for_kind(kind)).await;
            pubsub
                .pull_subscription(&format!("{prefix}{kind}"), &topics.for_kind(kind))
                .await;
        }
    }

    /// Publishes a request through the emulator's REST API; returns its id.
    async fn publish(&self, data: &str, attributes: &[(&str, &str)]) -> String {
        let attributes: BTreeMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.pubsub
            .publish(&self.topics.requests(), data.as_bytes(), &attributes)
            .await
    }

    /// `gcloud pubsub topics publish` as a user types it; returns the
    /// message id.
    fn gcloud_publish(&self, message: &str, attributes: &[(&str, &str)]) -> String {
        let host = std::env::var("PUBSUB_EMULATOR_HOST").unwrap();
        let mut command = Command::new("gcloud");
        command
            .args(["pubsub", "topics", "publish", &self.topics.requests()])
            .args(["--message", message, "--format=value(messageIds)"])
            .env(
                "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB",
                format!("http://{host}/"),
            )
            .env("CLOUDSDK_AUTH_DISABLE_CREDENTIALS", "true")
            .env("CLOUDSDK_CORE_PROJECT", emulator_project())
            .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1");
        if !attributes.is_empty() {
            let joined: Vec<String> = attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            command.args(["--attribute", &joined.join(",")]);
        }
        let output = command
            .output()
            .expect("gcloud is installed (google-cloud-cli; /usr/lib/google-cloud-sdk/bin)");
        assert!(
            output.status.success(),
            "gcloud pubsub topics publish failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
        assert!(
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
            "gcloud printed no message id: {id:?}"
        );
        id
    }

    async fn jobs(&self) -> Vec<Job> {
        self.store
            .list_jobs(&JobFilter::default(), 100, None)
            .await
            .unwrap()
            .items
    }

    async fn wait_for_jobs(&self, count: usize) -> Vec<Job> {
        wait_until(
            &format!("{count} jobs"),
            Duration::from_secs(30),
            async || self.jobs().await.len() >= count,
        )
        .await;
        self.jobs().await
    }

    /// Pulls from a kind's subscription until `count` messages came.
    async fn job_messages(&self, kind: JobKind, count: usize) -> Vec<Pulled> {
        let subscription = format!("{}{kind}", self.prefix);
        let mut pulled = Vec::new();
        wait_until(
            &format!("{count} {kind} job messages"),
            Duration::from_secs(30),
            async || {
                pulled.extend(self.pubsub.drain(&subscription, 100).await);
                pulled.len() >= count
            },
        )
        .await;
        pulled
    }

    /// Asserts that no job message of `kind` was published.
    async fn assert_no_messages(&self, kind: JobKind) {
        self.pubsub
            .assert_nothing_published(&format!("{}{kind}", self.prefix))
            .await;
    }

    /// The service's log lines.
    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// `asmr ARGS` on this intake's store and topics.
    fn asmr(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("asmr"))
            .env_clear()
            .envs([
                ("ASMR_BACKEND", "firestore".to_string()),
                ("GOOGLE_CLOUD_PROJECT", emulator_project()),
                (
                    "FIRESTORE_EMULATOR_HOST",
                    std::env::var("FIRESTORE_EMULATOR_HOST").unwrap(),
                ),
                (
                    "PUBSUB_EMULATOR_HOST",
                    std::env::var("PUBSUB_EMULATOR_HOST").unwrap(),
                ),
                ("ASMR_COLLECTION_PREFIX", self.prefix.clone()),
                ("ASMR_TOPIC_PREFIX", self.prefix.clone()),
            ])
            .args(args)
            .output()
            .unwrap()
    }
}

fn job_ids(messages: &[Pulled]) -> Vec<String> {
    let mut ids: Vec<String> = messages
        .iter()
        .map(|m| m.json()["job_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn ids_of<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Vec<String> {
    let mut ids: Vec<String> = jobs.into_iter().map(|j| j.id().to_string()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_all_three_forms_become_jobs_with_one_message_each() {
    let intake = Intake::start(true).await;
    let prefix = &intake.prefix;
    intake.gcloud_publish("Rain on a tin roof at night", &[("kind", "video")]);
    intake.gcloud_publish(
        &json!({"prompt": "Pages turning slowly", "kind": "IMAGE_TEST", "request_id": format!("{prefix}pages"), "params": {"aspect_ratio": "16:9"}}).to_string(),
        &[],
    );
    intake
        .publish(
            r#"{"kind": "image", "prompts": ["Slime being folded", "A comb through sand"], "priority": 5}"#,
            &[],
        )
        .await;

    let jobs = intake.wait_for_jobs(4).await;
    assert_eq!(jobs.len(), 4);
    let by_prompt: BTreeMap<&str, &Job> = jobs.iter().map(|j| (j.prompt(), j)).collect();
    let video = by_prompt["Rain on a tin roof at night"];
    assert_eq!(video.kind(), JobKind::Video);
    let pages = by_prompt["Pages turning slowly"];
    assert_eq!(pages.kind(), JobKind::Image);
    assert_eq!(pages.id(), Job::id_for_request(&format!("{prefix}pages")));
    assert_eq!(pages.params().aspect_ratio.as_deref(), Some("16:9"));
    assert_eq!(by_prompt["A comb through sand"].priority(), 5);
    for job in &jobs {
        assert_eq!(job.status(), JobStatus::Pending);
        assert!(job.dry_run(), "DRY_RUN defaults to true");
    }

    let images = intake.job_messages(JobKind::Image, 3).await;
    let videos = intake.job_messages(JobKind::Video, 1).await;
    assert_eq!(
        job_ids(&images),
        ids_of(jobs.iter().filter(|j| j.kind() == JobKind::Image))
    );
    assert_eq!(job_ids(&videos), ids_of([video]));
    assert_eq!(videos[0].attributes["origin"], "intake");
    assert_eq!(videos[0].json(), json!({"job_id": video.id()}));
    tokio::time::sleep(Duration::from_secs(1)).await;
    intake.assert_no_messages(JobKind::Image).await;
    intake.assert_no_messages(JobKind::Video).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_published_twice_is_one_job() {
    let intake = Intake::start(true).await;
    let request_id = format!("{}waves", intake.prefix);
    for _ in 0..2 {
        intake
            .publish(
                "Waves over black pebbles",
                &[("kind", "video"), ("request_id", &request_id)],
            )
            .await;
    }
    // Both deliveries publish the job while it is pending (generators
    // acknowledge the spare message as a duplicate): two messages, one job.
    let messages = intake.job_messages(JobKind::Video, 2).await;
    let id = Job::id_for_request(&request_id);
    assert_eq!(job_ids(&messages), [id.clone(), id.clone()]);
    let jobs = intake.jobs().await;
    assert_eq!(ids_of(&jobs), [id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_requests_are_acknowledged_once_and_kept_for_the_operator() {
    let intake = Intake::start(true).await;
    let no_kind = intake.gcloud_publish("A prompt with no kind", &[]);
    let bad_json = intake
        .publish(r#"{"prompt": "unfinished"#, &[("kind", "image")])
        .await;
    let blank = intake
        .publish(r#"{"prompt": "   ", "kind": "image"}"#, &[])
        .await;
    let expected = [
        (no_kind.as_str(), "kind is missing"),
        (bad_json.as_str(), "not valid JSON"),
        (blank.as_str(), "prompt: is empty"),
    ];

    wait_until(
        "three rejected records",
        Duration::from_secs(30),
        async || intake.store.count_rejected().await.unwrap() >= 3,
    )
    .await;
    // The push subscription retries after 1-2 s: a message that was not
    // acknowledged would have come back (and been logged again) by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let logs = intake.log_lines();
    for (message_id, reason) in expected {
        let record = intake.store.get_rejected(message_id).await.unwrap();
        let record = record.unwrap_or_else(|| panic!("no record of {message_id}"));
        assert!(record.reason.contains(reason), "{record:?}");
        let hits: Vec<&Value> = logs
            .iter()
            .filter(|line| line.to_string().contains(&format!("\"{message_id}\"")))
            .filter(|line| line["event"] == "request.rejected")
            .collect();
        assert_eq!(hits.len(), 1, "delivered once: {hits:?}");
        assert_eq!(hits[0]["severity"], "ERROR", "{}", hits[0]);
        assert_eq!(hits[0]["messageId"], message_id, "{}", hits[0]);
    }
    assert_eq!(intake.store.count_rejected().await.unwrap(), 3);
    assert!(intake.jobs().await.is_empty());
    intake.assert_no_messages(JobKind::Image).await;

    let output = intake.asmr(&["rejected", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (message_id, reason) in expected {
        let record = listed
            .iter()
            .find(|r| r["message_id"] == message_id)
            .unwrap_or_else(|| panic!("{message_id} is not listed"));
        assert!(record["reason"].as_str().unwrap().contains(reason));
        assert_eq!(record["source"], "pubsub");
    }
    let no_kind_record = listed.iter().find(|r| r["message_id"] == no_kind).unwrap();
    assert_eq!(no_kind_record["body"], "A prompt with no kind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_job_could_not_be_queued_is_redelivered_until_it_is() {
    let intake = Intake::start(false).await;
    intake
        .publish("Crinkling paper", &[("kind", "image")])
        .await;
    // The job topic does not exist: the job is created, the publish fails,
    // and intake asks Pub/Sub for the message again.
    let jobs = intake.wait_for_jobs(1).await;
    wait_until(
        "intake to refuse the push",
        Duration::from_secs(30),
        async || {
            intake
                .log_lines()
                .iter()
                .any(|l| l["message"] == "asking Pub/Sub to redeliver")
        },
    )
    .await;
    Intake::job_topics(&intake.pubsub, &intake.prefix, &intake.topics).await;
    let messages = intake.job_messages(JobKind::Image, 1).await;
    assert_eq!(job_ids(&messages[..1]), [jobs[0].id().to_string()]);
    assert_eq!(intake.jobs().await.len(), 1, "redeliveries create nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_creates_reads_refuses_and_counts() {
    let intake = Intake::start(true).await;
    let http = tests::http::keyed_client(&intake.key);
    let post = async |body: reqwest::Body| {
        let response = http
            .post(format!("{}/v1/jobs", intake.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let get = async |path: &str| {
        let response = http
            .get(format!("{}{path}", intake.url))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };

    let request = json!({"prompt": "Brushing a microphone", "kind": "video", "request_id": format!("{}mic", intake.prefix)}).to_string();
    let (status, created) = post(request.clone().into()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["jobs"],
        json!([{"id": id, "kind": "video", "status": "pending", "created": true, "queued": true}])
    );
    let (status, again) = post(request.into()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["jobs"][0]["id"], id.as_str());
    assert_eq!(again["jobs"][0]["created"], false);

    let (status, batch) =
        post(r#"{"kind": "image", "prompts": ["Tapping glass", "Peeling tape"]}"#.into()).await;
    assert_eq!(status, 201, "{batch}");
    assert_eq!(batch["jobs"].as_array().unwrap().len(), 2);

    for (body, says) in [
        (r#"{"prompt": "no kind"}"#, "kind is missing"),
        (
            r#"{"prompt": "x", "kind": "video", "params": {"duration_seconds": 5}}"#,
            "5 is not accepted",
        ),
        ("{broken", "not valid JSON"),
        ("plain text", "must be a JSON object"),
    ] {
        let (status, error) = post(body.into()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(error["error"].as_str().unwrap().contains(says), "{error}");
    }
    let (status, error) = post(vec![b' '; shared::requests::MAX_BODY_BYTES + 1].into()).await;
    assert_eq!(status, 413, "{error}");
    assert!(error["error"].as_str().unwrap().contains("limit"));

    let (status, job) = get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(
        (&job["prompt"], &job["status"], &job["kind"]),
        (
            &json!("Brushing a microphone"),
            &json!("pending"),
            &json!("video")
        )
    );
    let (status, error) = get("/v1/jobs/0123456789abcdef").await;
    assert_eq!(status, 404, "{error}");
    assert!(error["error"].as_str().unwrap().contains("not found"));

    let (status, stats) = get("/v1/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["jobs"]["pending"], 3, "{stats}");
    assert_eq!(stats["jobs"]["total"], 3);
    assert_eq!(stats["jobs_by_kind"]["image"]["pending"], 2);
    assert_eq!(stats["jobs_by_kind"]["video"]["total"], 1);
    assert_eq!(stats["downloads"]["total"], 0);
    assert_eq!(stats["rejected"], 0, "HTTP refusals are answered, not kept");

    // Every pending job was queued: the repeat queued the video job again.
    assert_eq!(
        job_ids(&intake.job_messages(JobKind::Video, 2).await),
        [id.clone(), id]
    );
    assert_eq!(intake.job_messages(JobKind::Image, 2).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asmr_add_on_firestore_queues_jobs_like_intake() {
    let intake = Intake::start(true).await;
    let output = intake.asmr(&["add", "--prompt", "Kneading dough", "--kind", "video"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "# sounds\nRustling leaves\n\nPouring rice\n").unwrap();
    let output = intake.asmr(&["add", "--file", file.to_str().unwrap(), "--kind", "image"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut added: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    added.sort();

    assert_eq!(job_ids(&intake.job_messages(JobKind::Video, 1).await), [id]);
    assert_eq!(
        job_ids(&intake.job_messages(JobKind::Image, 2).await),
        added
    );
    assert_eq!(intake.jobs().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asmr_add_says_so_when_a_new_job_could_not_be_queued() {
    // No job topics: the job is created, its publish fails.
    let intake = Intake::start(false).await;
    let output = intake.asmr(&[
        "add",
        "--prompt",
        "Sanding wood",
        "--kind",
        "image",
        "--request-id",
        "sanding",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(id, Job::id_for_request("sanding"), "{stderr}");
    assert!(
        stderr.contains(&format!("error: job {id} was added but not queued")),
        "{stderr}"
    );
    assert!(stderr.contains("run this command again"), "{stderr}");
    let jobs = intake.jobs().await;
    assert_eq!(ids_of(&jobs), [id]);
    assert_eq!(jobs[0].status(), JobStatus::Pending);
}

/// A completed image job, written as the image generator would.
async fn completed_image(intake: &Intake, prompt: &str) -> Job {
    use shared::domain::Lease;
    use shared::domain::job::NewJob;
    let id = intake
        .store
        .create_job(NewJob::new(prompt, JobKind::Image))
        .await
        .unwrap()
        .record
        .id()
        .to_string();
    let lease = Lease::new("generator", Duration::from_secs(60));
    intake.store.claim_job(&id, &lease).await.unwrap();
    let output = format!("gs://out/images/{id}/0.png");
    intake
        .store
        .complete_job(&id, "generator", vec![output.parse().unwrap()])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_approval_becomes_one_queued_video_through_the_job_events() {
    let intake = Intake::start_with(true, "approved").await;
    let image = completed_image(&intake, "Soap cut into cubes").await;
    let approved = intake.asmr(&["approve", image.id()]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    // asmr-job-events -> push -> intake -> promote -> asmr-video-jobs.
    let messages = intake.job_messages(JobKind::Video, 1).await;
    let image = intake.store.job(image.id()).await.unwrap();
    let [video] = image.children() else {
        panic!("one video, not {:?}", image.children());
    };
    assert_eq!(job_ids(&messages), std::slice::from_ref(video));
    assert_eq!(messages[0].attributes["origin"], "auto-promote");
    let video = intake.store.job(video).await.unwrap();
    assert_eq!(
        (video.kind(), video.parent(), video.status()),
        (JobKind::Video, Some(image.id()), JobStatus::Pending)
    );
    assert_eq!(
        video.first_frame().map(|f| f.gcs_uri.clone()),
        Some(image.outputs()[0].to_string())
    );

    // Approving again raises no event (the verdict did not change), and a
    // redelivered event would find the video made: still one.
    assert!(intake.asmr(&["approve", image.id()]).status.success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    intake.assert_no_messages(JobKind::Video).await;
    assert_eq!(
        intake.store.job(image.id()).await.unwrap().children().len(),
        1
    );
}

/// The running intake (its release of this build, on the emulators, with a
/// tenant's key) is held to its OpenAPI document by Schemathesis, written by
/// others: every operation from the document's examples, its boundary
/// values and random data, valid and not; no 5xx, every status, content
/// type, header and body as the document says, invalid input refused, a
/// missing key refused, the tenant's limits answered 429 with
/// `Retry-After`. Every `{id}` is one of the tenant's completed
/// images, so that the actions reach their checks instead of a 404.
/// Bounded to 100 examples per operation and phase; its report is printed
/// with the test's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_intake_holds_to_its_openapi_document_under_schemathesis() {
    let schemathesis = std::env::var("ASMR_TEST_SCHEMATHESIS").expect(
        "ASMR_TEST_SCHEMATHESIS names the schemathesis that tests/run installs (tests/requirements/api.txt)",
    );
    let world = tests::stages::emulators(tests::fake_vertex::FakeOptions::default()).await;
    world.topics().await;
    let key = world.api_key("acme").await;
    let mut image = shared::domain::job::NewJob::new("a brush on felt", JobKind::Image);
    image.tenant = "acme".parse().unwrap();
    let image = world.store.create_job(image).await.unwrap().record;
    let lease = shared::domain::Lease::new("w", Duration::from_secs(60));
    world.store.claim_job(image.id(), &lease).await.unwrap();
    let output = format!(
        "gs://{}/tenants/acme/images/{}/0.png",
        world.bucket,
        image.id()
    );
    world
        .store
        .complete_job(image.id(), "w", vec![output.parse().unwrap()])
        .await
        .unwrap();
    // Schemathesis keeps its caches in its working directory: a temporary one.
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!("[parameters]\n\"path.id\" = \"{}\"\n", image.id()),
    )
    .unwrap();
    // Limits the run reaches, so that 429s and their Retry-After are held
    // to the document too.
    let limits = [
        ("TENANT_WRITES_PER_MINUTE", "800".to_string()),
        ("TENANT_READS_PER_MINUTE", "350".to_string()),
    ];
    let intake = tests::stages::Service::start("intake", &world, &limits).await;
    let document = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.json");
    let started = std::time::Instant::now();
    let output = Command::new(&schemathesis)
        .args(["--config-file", &config.display().to_string(), "--no-color"])
        .args(["run", &document.display().to_string(), "--url", &intake.url])
        .args(["--header", &format!("x-api-key: {key}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "100", "--workers", "1", "--seed", "20261205"])
        .args(["--request-timeout", "10"])
        .env("NO_COLOR", "1")
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "schemathesis, {:.0} s:\n{}",
        started.elapsed().as_secs_f64(),
        stdout
    );
    assert!(
        output.status.success(),
        "schemathesis found the service and its document apart:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And the running binary's limit, met on purpose: a 429 with the
    // document's error body and a Retry-After within the minute.
    let http = tests::http::keyed_client(&key);
    let mut limited = None;
    // Twice the limit and one: a minute may turn once while this runs.
    for _ in 0..=700 {
        let answer = http
            .get(format!("{}/v1/stats", intake.url))
            .send()
            .await
            .unwrap();
        if answer.status() == 429 {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status(), 200);
    }
    let limited = limited.expect("350 reads a minute: one beyond is refused");
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body: Value = limited.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("per minute"),
        "{body}"
    );
}
