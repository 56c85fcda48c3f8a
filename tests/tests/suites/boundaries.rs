//! The trust boundaries of the stage binaries, tried as an attacker would:
//! a forged or stale job event, pushes from someone other than the push
//! subscription, an idempotency key reused by another caller or with
//! another body, bodies far over a route's limit, a review reason the size
//! of a document, and prompts that must not reach the logs. Each against
//! the real binaries, the emulators, and ID tokens signed as Google signs
//! them (`tests::identity`).

#![cfg(feature = "emulators")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use shared::domain::Lease;
use shared::domain::values::Verdict;
use shared::domain::values::{DeliveredOutput, JobKind, JobStatus};
use shared::job_events::JobEvent;
use std::collections::BTreeMap;
use std::time::Duration;
use tests::fake_vertex::FakeOptions;
use tests::http::{Answer, push_envelope as envelope};
use tests::identity::{FakeGoogle, Token};
use tests::stages::{Service, World, emulators};

/// The push subscriptions' account in these tests.
const PUSHER: &str = "asmr-push@asmr-test.iam.gserviceaccount.com";
/// The audience the push subscriptions set.
const AUDIENCE: &str = "https://asmr-intake-123456789.us-central1.run.app";

async fn post(url: &str, body: impl Into<reqwest::Body>, headers: &[(&str, String)]) -> Answer {
    let headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone().into_bytes()))
        .collect();
    tests::http::post(&reqwest::Client::new(), url, body, &headers).await
}

/// The push of a job event, however it came to be.
fn event_push(event: &JobEvent) -> Vec<u8> {
    envelope(
        &event.event_id,
        &serde_json::to_vec(event).unwrap(),
        &event.attributes(),
    )
}

/// A delivered image job of `world`, made as a generator and the
/// downloader would.
async fn delivered_image(world: &World, prompt: &str) -> String {
    let id = world.job(prompt, JobKind::Image, &[]).await;
    let lease = Lease::new("w", Duration::from_secs(60));
    world.store.claim_job(&id, &lease).await.unwrap();
    let output = format!("gs://{}/images/{id}/0.png", world.bucket);
    world
        .store
        .complete_job(&id, "w", vec![output.parse().unwrap()])
        .await
        .unwrap();
    let delivery = DeliveredOutput {
        source: output.parse().unwrap(),
        destination: format!("/archive/images/{id}/0.png").parse().unwrap(),
    };
    world.store.record_delivery(&id, delivery).await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_or_stale_approval_event_buys_no_video() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let intake = Service::start("intake", &world, &[("AUTO_PROMOTE", "approved".into())]).await;
    let events = format!("{}/v1/job-events", intake.url);
    let key = [("x-api-key", world.api_key("default").await)];

    // Approved, then rejected; the approval's event arrives (again) after
    // the rejection.
    let image = delivered_image(&world, "soap cutting").await;
    let approve = post(&format!("{}/v1/jobs/{image}:approve", intake.url), "", &key).await;
    assert_eq!(approve.status, 200, "{}", approve.body);
    let approval = JobEvent::of(&world.store.job(&image).await.unwrap());
    let reject = post(&format!("{}/v1/jobs/{image}:reject", intake.url), "", &key).await;
    assert_eq!(reject.status, 200, "{}", reject.body);
    let stale = post(&events, event_push(&approval), &[]).await;
    assert_eq!(
        (stale.status, stale.body["outcome"].as_str()),
        (200, Some("ignored")),
        "{}",
        stale.body
    );

    // Never reviewed at all: an event that claims an approval.
    let unreviewed = delivered_image(&world, "wet sand").await;
    let mut forged = JobEvent::of(&world.store.job(&unreviewed).await.unwrap());
    forged.verdict = Some(Verdict::Approved);
    let answer = post(&events, event_push(&forged), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    for id in [&image, &unreviewed] {
        let job = world.store.job(id).await.unwrap();
        assert!(job.children().is_empty(), "{id}: {:?}", job.children());
    }
    assert_eq!(
        world.store.job_counts().await.unwrap().kind(JobKind::Video),
        0,
        "no video job was made"
    );

    // The same image approved for real: its event makes the video.
    let approve = post(&format!("{}/v1/jobs/{image}:approve", intake.url), "", &key).await;
    assert_eq!(approve.status, 200, "{}", approve.body);
    let approval = JobEvent::of(&world.store.job(&image).await.unwrap());
    let answer = post(&events, event_push(&approval), &[]).await;
    assert_eq!(
        (answer.status, answer.body["outcome"].as_str()),
        (200, Some("done")),
        "{}",
        answer.body
    );
    assert_eq!(world.store.job(&image).await.unwrap().children().len(), 1);
}

/// A stage that checks push identities: `PUSH_IDENTITY`, `PUSH_AUDIENCE`
/// and the fake issuer's keys, with its JSON log in `log`.
async fn checked(
    name: &'static str,
    world: &World,
    google: &FakeGoogle,
    extra: &[(&str, String)],
    log: &std::path::Path,
) -> Service {
    let mut env = vec![
        (
            "PUSH_IDENTITY",
            format!("other@x.iam.gserviceaccount.com, {PUSHER}"),
        ),
        ("PUSH_AUDIENCE", AUDIENCE.to_string()),
        ("GOOGLE_CERTS_URL", google.certs_url.clone()),
    ];
    env.extend(extra.iter().cloned());
    Service::start_logged(name, world, &env, log).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_routes_take_only_the_push_identitys_signed_tokens() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let google = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    let intake = checked(
        "intake",
        &world,
        &google,
        &[("AUTO_PROMOTE", "approved".into())],
        &dir.path().join("intake.log"),
    )
    .await;
    let good = Token::of(PUSHER, AUDIENCE);
    let bearer = |token: &Token<'_>| format!("Bearer {}", google.token(token));
    // (Authorization, the answer's status)
    let cases: Vec<(Option<String>, u16)> = vec![
        (None, 401),
        (Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l".into()), 401),
        (Some("Bearer not.a.token".into()), 401),
        (
            Some(bearer(&Token {
                unpublished_key: true,
                ..good.clone()
            })),
            401,
        ),
        (
            Some(bearer(&Token {
                expires_in: -600,
                ..good.clone()
            })),
            401,
        ),
        (
            Some(bearer(&Token {
                aud: "https://somewhere-else.run.app",
                ..good.clone()
            })),
            401,
        ),
        (
            Some(bearer(&Token {
                iss: "https://issuer.example",
                ..good.clone()
            })),
            401,
        ),
        (
            Some(bearer(&Token {
                verified: false,
                ..good.clone()
            })),
            401,
        ),
        (
            Some(bearer(&Token::of(
                "operator@asmr-test.iam.gserviceaccount.com",
                AUDIENCE,
            ))),
            403,
        ),
    ];
    let attributes = BTreeMap::from([("kind".to_string(), "image".to_string())]);
    for (n, (authorization, want)) in cases.iter().enumerate() {
        let headers: Vec<(&str, String)> = authorization
            .iter()
            .map(|value| ("authorization", value.clone()))
            .collect();
        for path in ["/", "/v1/job-events"] {
            let push = envelope(&format!("refused-{n}"), b"a forged request", &attributes);
            let answer = post(&format!("{}{path}", intake.url), push, &headers).await;
            assert_eq!(
                answer.status, *want,
                "{path} with {authorization:?}: {}",
                answer.body
            );
            assert!(answer.body["error"].is_string(), "{}", answer.body);
        }
    }
    assert_eq!(world.store.job_counts().await.unwrap().total(), 0);
    assert_eq!(world.store.count_rejected().await.unwrap(), 0);

    // The push subscription's own token.
    let push = envelope("accepted", b"rain on a tin roof", &attributes);
    let answer = post(
        &format!("{}/", intake.url),
        push,
        &[("authorization", bearer(&good))],
    )
    .await;
    assert_eq!(
        (answer.status, answer.body["outcome"].as_str()),
        (200, Some("done")),
        "{}",
        answer.body
    );
    assert_eq!(world.store.job_counts().await.unwrap().total(), 1);

    // The API is no push route: any verified account may call it, none
    // without a token.
    let body = r#"{"prompt": "sand", "kind": "image"}"#;
    let caller = google.bearer("operator@asmr-test.iam.gserviceaccount.com", AUDIENCE);
    let key = ("x-api-key", world.api_key("default").await);
    let answer = post(
        &format!("{}/v1/jobs", intake.url),
        body,
        &[("authorization", caller), key.clone()],
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let answer = post(&format!("{}/v1/jobs", intake.url), body, &[key]).await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    // The other push stages hold the same gate.
    for name in ["downloader", "image-generator"] {
        let extra = [(
            "DOWNLOAD_DESTINATION",
            dir.path().join("out").display().to_string(),
        )];
        let stage = checked(name, &world, &google, &extra, &dir.path().join("stage.log")).await;
        let message = json!({"job_id": "nothing-here"}).to_string();
        let push = envelope("to-a-stage", message.as_bytes(), &BTreeMap::new());
        let url = format!("{}/", stage.url);
        let refused = post(&url, push.clone(), &[]).await;
        assert_eq!(refused.status, 401, "{name}: {}", refused.body);
        let other = google.bearer("operator@asmr-test.iam.gserviceaccount.com", AUDIENCE);
        let refused = post(&url, push.clone(), &[("authorization", other)]).await;
        assert_eq!(refused.status, 403, "{name}: {}", refused.body);
        // Admitted, then handled as the stage handles a message it cannot
        // use: acknowledged.
        let admitted = post(&url, push, &[("authorization", bearer(&good))]).await;
        assert_eq!(admitted.status, 200, "{name}: {}", admitted.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_push_identity_push_routes_are_open_and_the_stage_says_so_once() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("intake.log");
    let intake = Service::start_logged("intake", &world, &[], &log).await;
    let attributes = BTreeMap::from([("kind".to_string(), "image".to_string())]);
    for n in 0..3 {
        let push = envelope(&format!("open-{n}"), b"sand falling", &attributes);
        let answer = post(&format!("{}/", intake.url), push, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(world.store.job_counts().await.unwrap().total(), 3);
    let said = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|line| line.contains("\"push_identity_unchecked\""))
        .count();
    assert_eq!(said, 1, "said once, at start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_belong_to_their_caller_and_come_back_only_with_their_request() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let google = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    let intake = checked("intake", &world, &google, &[], &dir.path().join("i.log")).await;
    let jobs = format!("{}/v1/jobs", intake.url);
    let alice = google.bearer("alice@studio.example", AUDIENCE);
    let bob = google.bearer("bob@agency.example", AUDIENCE);
    let key = ("x-api-key", world.api_key("default").await);
    let with = |caller: &str| {
        vec![
            ("authorization", caller.to_string()),
            ("idempotency-key", "batch-2026-12-05".to_string()),
            key.clone(),
        ]
    };
    let ids = |answer: &Answer| -> Vec<String> {
        answer.body["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", answer.body))
            .iter()
            .map(|job| job["id"].as_str().unwrap().to_string())
            .collect()
    };

    let first = post(
        &jobs,
        r#"{"prompt": "alice's rain", "kind": "image"}"#,
        &with(&alice),
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.body);
    // Bob picks the same key: his own job, not Alice's.
    let other = post(
        &jobs,
        r#"{"prompt": "bob's wind", "kind": "image"}"#,
        &with(&bob),
    )
    .await;
    assert_eq!(other.status, 201, "{}", other.body);
    assert_ne!(ids(&other), ids(&first));
    let bobs = world.store.job(&ids(&other)[0]).await.unwrap();
    assert_eq!(bobs.prompt(), "bob's wind");
    // Alice retries: her jobs again.
    let retry = post(
        &jobs,
        r#"{"prompt": "alice's rain", "kind": "image"}"#,
        &with(&alice),
    )
    .await;
    assert_eq!(
        (retry.status, ids(&retry)),
        (200, ids(&first)),
        "{}",
        retry.body
    );
    // Alice reuses the key for other work: refused, nothing made.
    for body in [
        r#"{"prompt": "alice's thunder", "kind": "image"}"#,
        r#"{"prompt": "alice's rain", "kind": "video"}"#,
        r#"{"prompts": ["alice's rain", "more"], "kind": "image"}"#,
    ] {
        let reused = post(&jobs, body, &with(&alice)).await;
        assert_eq!(reused.status, 409, "{body}: {}", reused.body);
        assert!(
            reused.body["error"]
                .as_str()
                .unwrap()
                .contains("used before for a different request"),
            "{}",
            reused.body
        );
    }
    // A body's own request_id is the caller's too.
    let body =
        |prompt: &str| json!({"prompt": prompt, "kind": "image", "request_id": "r-1"}).to_string();
    let a = post(
        &jobs,
        body("a"),
        &[("authorization", alice.clone()), key.clone()],
    )
    .await;
    let b = post(
        &jobs,
        body("b"),
        &[("authorization", bob.clone()), key.clone()],
    )
    .await;
    assert_eq!((a.status, b.status), (201, 201), "{} {}", a.body, b.body);
    assert_ne!(ids(&a), ids(&b));
    assert_eq!(world.store.job_counts().await.unwrap().total(), 4);

    // Where callers are not identified, a key still comes back only with
    // its own request.
    let open = Service::start("intake", &world, &[]).await;
    let url = format!("{}/v1/jobs", open.url);
    let key = [("idempotency-key", "shared-key".to_string()), key];
    let made = post(&url, r#"{"prompt": "one", "kind": "image"}"#, &key).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let reused = post(&url, r#"{"prompt": "two", "kind": "image"}"#, &key).await;
    assert_eq!(reused.status, 409, "{}", reused.body);
    assert_eq!(world.store.job_counts().await.unwrap().total(), 5);
}

/// The peak resident memory of process `pid` so far, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_oversized_bodies_at_once_hold_intake_to_its_route_limits() {
    const BODIES: usize = 16;
    const SIZE: usize = 30 * 1024 * 1024;
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let intake = Service::start("intake", &world, &[]).await;
    let key = [("x-api-key", world.api_key("default").await)];
    let pid = intake.process.0.id();
    let idle = peak_rss_mib(pid);
    let body = bytes::Bytes::from(vec![b' '; SIZE]);
    // The API, then the push route: every answer reaches its client.
    for (path, want) in [("/v1/jobs", 413), ("/", 200)] {
        let sends = (0..BODIES).map(|_| {
            let url = format!("{}{path}", intake.url);
            let body = body.clone();
            let key = key.clone();
            async move { post(&url, body, &key).await }
        });
        for answer in futures::future::join_all(sends).await {
            assert_eq!(answer.status, want, "{path}: {}", answer.body);
            if path == "/" {
                assert_eq!(answer.body["outcome"], "poison", "{}", answer.body);
            }
        }
    }
    let declared = peak_rss_mib(pid);
    // Without a Content-Length the limit is found while reading.
    let sends = (0..BODIES).map(|_| {
        let url = format!("{}/v1/jobs", intake.url);
        let chunk = bytes::Bytes::from(vec![b' '; 1024 * 1024]);
        let chunks = (0..SIZE >> 20).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
        let key = key.clone();
        async move { post(&url, body, &key).await }
    });
    for answer in futures::future::join_all(sends).await {
        assert_eq!(answer.status, 413, "chunked: {}", answer.body);
    }
    let peak = peak_rss_mib(pid);
    eprintln!(
        "intake peak RSS, {BODIES} concurrent {} MiB bodies: {declared:.0} MiB with Content-Length (on /v1/jobs, then on /), {peak:.0} MiB after chunked ones on /v1/jobs (idle {idle:.0} MiB)",
        SIZE >> 20
    );
    // A declared length over the limit is refused before anything is
    // held; a chunked body holds at most the route's limit (4 MiB).
    assert!(declared < 60.0, "peak RSS {declared:.0} MiB");
    assert!(peak < 160.0, "peak RSS {peak:.0} MiB");
    assert_eq!(world.store.job_counts().await.unwrap().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_review_reason_is_held_to_a_paragraph() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let intake = Service::start("intake", &world, &[]).await;
    let image = delivered_image(&world, "slime").await;
    let url = format!("{}/v1/jobs/{image}:reject", intake.url);
    let key = [("x-api-key", world.api_key("default").await)];
    let long = json!({"reason": "x".repeat(2_001)}).to_string();
    let answer = post(&url, long, &key).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .contains("reason: is 2001 characters long; the limit is 2000"),
        "{}",
        answer.body
    );
    let huge = json!({"reason": "x".repeat(2 * 1024 * 1024)}).to_string();
    let answer = post(&url, huge, &key).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(world.store.job(&image).await.unwrap().reviewed().is_none());

    let fine = json!({"reason": "too dark"}).to_string();
    assert_eq!(post(&url, fine, &key).await.status, 200);

    let output = world.operator(&["reject", &image, "--reason", &"y".repeat(5_000)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the limit is 2000"), "{stderr}");
    let review = world.store.job(&image).await.unwrap();
    assert_eq!(
        review.reviewed().and_then(|r| r.reason.as_deref()),
        Some("too dark")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_logs_never_quote_a_callers_prompt() {
    const SECRET: &str = "the-unreleased-campaign-line";
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("intake.log");
    let intake = Service::start_logged("intake", &world, &[], &log).await;
    let key = [("x-api-key", world.api_key("default").await)];
    let bad = [
        format!(r#"{{"prompt": ["{SECRET}"], "kind": "image"}}"#),
        format!(r#"{{"prompt": "{SECRET}", "kind": "image", "{SECRET}": 1}}"#),
        format!(r#"{{"prompt": "{SECRET}", "kind": "{SECRET}"}}"#),
        format!(r#"{{"prompt": "{SECRET}", "kind": "image", "params": {{"seed": "{SECRET}"}}}}"#),
        format!(r#"{{"prompt": "{SECRET}\u0007", "kind": "image"}}"#),
        format!(r#"{{"prompt": "{SECRET}"#),
    ];
    for (n, body) in bad.iter().enumerate() {
        let push = envelope(&format!("bad-{n}"), body.as_bytes(), &BTreeMap::new());
        let answer = post(&format!("{}/", intake.url), push, &[]).await;
        assert_eq!(answer.body["outcome"], "poison", "{body}: {}", answer.body);
        let answer = post(&format!("{}/v1/jobs", intake.url), body.clone(), &key).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
    }
    // A push whose envelope itself quotes it.
    let broken = format!(r#"{{"message": {{"data": "{SECRET}", "messageId": 7}}}}"#);
    let answer = post(&format!("{}/", intake.url), broken, &[]).await;
    assert_eq!(answer.body["outcome"], "poison", "{}", answer.body);

    // The records keep what was sent, for the operator who reads them.
    assert_eq!(
        world.store.count_rejected().await.unwrap(),
        bad.len() as u64 + 1
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = std::fs::read_to_string(&log).unwrap();
    let rejected = lines
        .lines()
        .filter(|line| line.contains("\"request.rejected\""))
        .count();
    assert_eq!(rejected, bad.len() + 1, "{lines}");
    let quoting: Vec<&str> = lines.lines().filter(|line| line.contains(SECRET)).collect();
    assert!(
        quoting.is_empty(),
        "log lines quote the prompt: {quoting:#?}"
    );
    assert_eq!(
        world
            .store
            .job_counts()
            .await
            .unwrap()
            .status(JobStatus::Pending),
        0
    );
}
