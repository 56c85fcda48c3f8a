//! Webhooks end to end: two tenants' requests through the real `intake`,
//! `image-generator`, `downloader` and `notifier` binaries on the
//! emulators, to a receiver that checks every signature with the
//! `standardwebhooks` library (PyPI, written by others; tests/run installs
//! it, tests/webhook_receiver.py uses it).

#![cfg(feature = "emulators")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use shared::domain::tenant::TenantName;
use shared::domain::webhook::Webhook;
use shared::domain::webhook_delivery::DeliveryState;
use shared::store::webhooks::DeliveryFilter;
use shared::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::fake_vertex::FakeOptions;
use tests::process::wait_until;
use tests::stages::{Service, emulators};

/// The receiver of tests/webhook_receiver.py, and what it has printed.
struct Receiver {
    child: std::process::Child,
    port: u16,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(secrets: &[(&str, String)], hang: Duration) -> Self {
        let python = std::env::var("ASMR_TEST_API_PYTHON").expect(
            "ASMR_TEST_API_PYTHON names the python that tests/run installs standardwebhooks into (tests/requirements/api.txt)",
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhook_receiver.py");
        let mut command = Command::new(python);
        command
            .arg(script)
            .arg("--hang")
            .arg(hang.as_secs_f64().to_string());
        for (tenant, secret) in secrets {
            command.arg("--secret").arg(format!("{tenant}={secret}"));
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the receiver starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the receiver prints its port").unwrap();
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver said {first:?}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let record: Value = serde_json::from_str(&line).expect("a JSON line");
                sink.lock().unwrap().push(record);
            }
        });
        Self { child, port, seen }
    }

    fn url(&self, tenant: &str, mode: &str) -> String {
        format!("http://127.0.0.1:{}/{tenant}/{mode}", self.port)
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    fn of(&self, tenant: &str, mode: &str) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|r| r["tenant"] == tenant && r["mode"] == mode)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post_jobs(intake: &str, key: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{intake}/v1/jobs"))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {answer}");
    answer
}

fn ids(answer: &Value) -> Vec<String> {
    match answer.get("jobs") {
        Some(jobs) => jobs
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect(),
        None => vec![answer["id"].as_str().unwrap().to_string()],
    }
}

/// acme's receiver answers 500 twice and then 2xx to every delivery;
/// globex's default webhook hangs. Every job event of acme's arrives,
/// verified, with one `webhook-id` across its three attempts; a duplicate
/// storm of the job events makes no second delivery; globex's hanging
/// receiver slows nothing of acme's; a 410 stops a URL; `asmr webhooks`
/// lists and redelivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_arrive_signed_once_per_event_through_refusals_duplicates_and_a_hanging_neighbour()
{
    const ACME_JOBS: usize = 4;
    const GLOBEX_JOBS: usize = 6;
    let world = emulators(FakeOptions::default()).await;
    let (pubsub, topics) = world.topics().await;
    let prefix = world.prefix.clone().unwrap();
    let acme_key = world.api_key("acme").await;
    let globex_key = world.api_key("globex").await;
    let secret_of = async |name: &str| {
        let tenant = world
            .store
            .tenant_with_webhook_secret(&name.parse().unwrap())
            .await
            .unwrap();
        tenant.webhook_secrets(Timestamp::now())[0].secret.clone()
    };
    let secrets = [
        ("acme", secret_of("acme").await),
        ("globex", secret_of("globex").await),
    ];
    let hang = Duration::from_secs(20);
    let receiver = Receiver::start(&secrets, hang);
    // globex's jobs name no webhook: its default one hangs.
    let globex: TenantName = "globex".parse().unwrap();
    let hanging = Webhook::new(&receiver.url("globex", "hang"), None, true).unwrap();
    world
        .store
        .change_tenant(&globex, |tenant, now| {
            let settings = shared::domain::tenant::TenantSettings {
                webhook: Some(Some(hanging.clone())),
                ..Default::default()
            };
            tenant.set(&settings, now)
        })
        .await
        .unwrap();

    let private = ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true".to_string());
    let root = tempfile::tempdir().unwrap();
    let intake = Service::start("intake", &world, std::slice::from_ref(&private)).await;
    let images = Service::start("image-generator", &world, &[]).await;
    let downloader = Service::start(
        "downloader",
        &world,
        &[("DOWNLOAD_DESTINATION", root.path().display().to_string())],
    )
    .await;
    let notifier = Service::start(
        "notifier",
        &world,
        &[
            private.clone(),
            ("WEBHOOK_TIMEOUT", "2s".to_string()),
            ("WEBHOOK_RETRY_DELAYS", "300ms".to_string()),
            ("WEBHOOK_RETRY_FOR", "8s".to_string()),
            ("WEBHOOK_SWEEP_EVERY", "500ms".to_string()),
            ("WEBHOOK_CONCURRENCY_PER_TENANT", "2".to_string()),
        ],
    )
    .await;
    let gcs_events = std::env::var("ASMR_TEST_GCS_EVENTS_TOPIC").unwrap();
    // A copy of every job event, to publish again as a duplicate storm.
    let copies = format!("{prefix}event-copies");
    pubsub
        .pull_subscription(&copies, &topics.job_events())
        .await;
    for (name, topic, url) in [
        ("images", topics.image_jobs(), &images.url),
        ("objects", gcs_events, &downloader.url),
        ("events", topics.job_events(), &notifier.url),
    ] {
        pubsub
            .push(&format!("{prefix}{name}"), &topic, &format!("{url}/"))
            .await;
    }

    // globex first, so that its hanging receiver holds its slots while
    // acme's jobs run.
    let globex_ids = ids(&post_jobs(
        &intake.url,
        &globex_key,
        json!({"kind": "image", "prompts": (0..GLOBEX_JOBS).map(|n| format!("globex: a fan, take {n}")).collect::<Vec<_>>()}),
    )
    .await);
    let started = Instant::now();
    let acme_ids = ids(&post_jobs(
        &intake.url,
        &acme_key,
        json!({
            "kind": "image",
            "prompts": (0..ACME_JOBS).map(|n| format!("acme: pages turning, take {n}")).collect::<Vec<_>>(),
            "webhook": receiver.url("acme", "fail2"),
            "webhook_events_filter": ["start", "output", "completed"],
        }),
    )
    .await);
    let gone = ids(&post_jobs(
        &intake.url,
        &acme_key,
        json!({"kind": "image", "prompt": "acme: a door closing", "webhook": receiver.url("acme", "gone")}),
    )
    .await);

    // Three events per acme job (start, output, completed), each accepted
    // on its third attempt.
    let accepted = |records: &[Value]| -> BTreeSet<String> {
        records
            .iter()
            .filter(|r| r["status"] == 204)
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    wait_until(
        "every acme event accepted",
        Duration::from_secs(120),
        async || accepted(&receiver.of("acme", "fail2")).len() == 3 * ACME_JOBS,
    )
    .await;
    let acme_done = started.elapsed();
    assert!(
        acme_done < hang,
        "acme's webhooks took {acme_done:?}, longer than globex's receiver hangs"
    );

    // The duplicate storm: every job event so far, published twice more.
    let events = pubsub.drain(&copies, 1000).await;
    assert!(
        events.len() >= 3 * ACME_JOBS,
        "{} job events copied",
        events.len()
    );
    for event in &events {
        for _ in 0..2 {
            pubsub
                .publish(&topics.job_events(), &event.data, &event.attributes)
                .await;
        }
    }
    wait_until(
        "every globex job delivered",
        Duration::from_secs(120),
        async || {
            let jobs = world.jobs().await;
            globex_ids.iter().all(|id| {
                jobs.iter()
                    .any(|j| j.id() == id && j.status().as_str() == "delivered")
            })
        },
    )
    .await;
    // Let the storm and the retries play out.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let acme = receiver.of("acme", "fail2");
    let mut per_id: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for record in &acme {
        per_id
            .entry(record["id"].as_str().unwrap().to_string())
            .or_default()
            .push(record);
    }
    assert_eq!(
        per_id.len(),
        3 * ACME_JOBS,
        "one webhook-id per event, none made by the storm"
    );
    for (id, attempts) in &per_id {
        let statuses: Vec<i64> = attempts
            .iter()
            .map(|r| r["status"].as_i64().unwrap())
            .collect();
        assert_eq!(
            statuses,
            [500, 500, 204],
            "{id}: 500 twice, then accepted, once"
        );
        for attempt in attempts {
            assert_eq!(attempt["verified"], true, "{id}: {attempt}");
        }
    }
    // Each job's start, output and end, with the job as the API showed it
    // then (its output and its end can be one write, when the copy was
    // there before the generator recorded the outputs).
    for id in &acme_ids {
        let mut seen: Vec<(String, &str)> = per_id
            .iter()
            .filter(|(_, a)| a[0]["job_id"] == id.as_str())
            .map(|(hook, a)| {
                let event = hook.rsplit('_').next().unwrap().to_string();
                (event, a[0]["job_status"].as_str().unwrap())
            })
            .collect();
        seen.sort();
        let events: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(events, ["completed", "output", "start"], "job {id}");
        assert_eq!(seen[0].1, "delivered", "job {id}: its end");
        assert!(
            ["completed", "delivered"].contains(&seen[1].1),
            "job {id}: its output"
        );
        assert_eq!(seen[2].1, "processing", "job {id}: its start");
    }

    // A 410 stops that URL. The gone job's two events may have been in
    // flight together, so each was sent at most once; a later job's events
    // are not sent there at all.
    let acme_name: TenantName = "acme".parse().unwrap();
    let stopped_of = async |job: &str| {
        world
            .store
            .list_webhooks(
                &DeliveryFilter {
                    tenant: Some(acme_name.clone()),
                    state: Some(DeliveryState::Stopped),
                },
                50,
                None,
            )
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|d| d.job_id == job)
            .count()
    };
    wait_until(
        "the gone job's deliveries stopped",
        Duration::from_secs(60),
        async || stopped_of(&gone[0]).await == 2,
    )
    .await;
    let before = receiver.of("acme", "gone").len();
    assert!(
        (1..=2).contains(&before),
        "{before} requests to the gone URL"
    );
    let later = ids(&post_jobs(
        &intake.url,
        &acme_key,
        json!({"kind": "image", "prompt": "acme: a door, again", "webhook": receiver.url("acme", "gone")}),
    )
    .await);
    wait_until(
        "the later job's deliveries stopped",
        Duration::from_secs(60),
        async || stopped_of(&later[0]).await == 2,
    )
    .await;
    assert_eq!(
        receiver.of("acme", "gone").len(),
        before,
        "nothing more was sent to a URL that answered 410"
    );

    // globex's receiver hung: each attempt timed out, and its deliveries
    // were given up after their window, while acme's went through.
    wait_until(
        "globex's deliveries given up",
        Duration::from_secs(60),
        async || {
            let failed = world
                .store
                .list_webhooks(
                    &DeliveryFilter {
                        tenant: Some(globex.clone()),
                        state: Some(DeliveryState::Failed),
                    },
                    50,
                    None,
                )
                .await
                .unwrap();
            failed.items.len() == 2 * GLOBEX_JOBS
        },
    )
    .await;
    let listed = world.operator(&["webhooks", "--failed", "--tenant", "globex", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 2 * GLOBEX_JOBS);
    assert!(
        listed
            .iter()
            .all(|d| d["last_answer"].as_str().unwrap().contains("timed out")),
        "{listed:?}"
    );

    // Redelivery sends the same event again, with its webhook-id.
    let again = per_id.keys().next().unwrap().clone();
    let redelivered = world.operator(&[
        "webhooks",
        "redeliver",
        &again,
        "--tenant",
        "acme",
        "--allow-private-networks",
        "true",
    ]);
    assert!(redelivered.status.success(), "{redelivered:?}");
    assert!(
        String::from_utf8_lossy(&redelivered.stdout).starts_with("delivered 204"),
        "{redelivered:?}"
    );
    let repeats: Vec<Value> = receiver
        .of("acme", "fail2")
        .into_iter()
        .filter(|r| r["id"] == again.as_str())
        .collect();
    assert_eq!(repeats.len(), 4);
    assert_eq!(repeats[3]["verified"], true);
    assert_eq!(repeats[3]["status"], 204);
    drop(notifier);
}
