//! The live page as the cloud serves it: the real intake binary in its
//! page-only mode (`intake ui`, as terraform/live.tf deploys it) on the
//! Firestore and Pub/Sub emulators, taking only requests that carry an
//! Identity-Aware Proxy assertion of its audience, signed ES256 by a key
//! published at `IAP_KEYS_URL` (here a JWKS served by the test, as
//! `https://www.gstatic.com/iap/verify/public_key-jwk` is in the cloud:
//! `tests::identity::FakeIap`).

#![cfg(feature = "emulators")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::StreamExt;
use shared::domain::Lease;
use shared::domain::values::{JobKind, Verdict};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tests::fake_vertex::FakeOptions;
use tests::identity::FakeIap;
use tests::process::{Running, free_port, wait_healthy, wait_until};
use tests::stages::{World, emulators};

/// The service's audience, in the form IAP uses for a Cloud Run service.
const AUDIENCE: &str = "/projects/123456789/locations/us-central1/services/asmr-live";
/// The person IAP signed in.
const PERSON: &str = "ana@example.com";

/// `intake ui` on this emulator world, its JSON log lines written to
/// `log`; its base URL.
async fn start_page(world: &World, keys_url: &str, log: &Path) -> (Running, String) {
    let port = free_port();
    let prefix = world.prefix.as_deref().unwrap();
    let mut command = tests::harness::emulator_command("intake", prefix);
    command
        .arg("ui")
        .envs([
            ("PORT", port.to_string()),
            ("IAP_AUDIENCE", AUDIENCE.to_string()),
            ("IAP_KEYS_URL", keys_url.to_string()),
        ])
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::inherit());
    let process = Running(command.spawn().expect("intake ui starts"));
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url).await;
    (process, url)
}

/// A completed image job of `world`, as a generator leaves it: one a
/// person can review.
async fn completed_image(world: &World, prompt: &str) -> String {
    let id = world.job(prompt, JobKind::Image, &[]).await;
    let lease = Lease::new("w", Duration::from_secs(60));
    world.store.claim_job(&id, &lease).await.unwrap();
    let output = format!("gs://{}/images/{id}/0.png", world.bucket).parse();
    let done = world.store.complete_job(&id, "w", vec![output.unwrap()]);
    done.await.unwrap();
    id
}

/// The media type of an answer.
fn media_type(answer: &reqwest::Response) -> String {
    let value = answer.headers()[reqwest::header::CONTENT_TYPE].to_str();
    value.unwrap().split(';').next().unwrap().trim().to_string()
}

/// A review action as the page sends it, with `assertion` when given.
async fn act(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    action: &str,
    assertion: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(format!("{url}/ui/jobs/{id}/{action}"))
        .header("content-type", "application/json")
        .header("x-asmr-page", "live")
        .body("{}");
    if let Some(assertion) = assertion {
        request = request.header("x-goog-iap-jwt-assertion", assertion);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_in_the_cloud_answers_only_requests_iap_signed_and_serves_no_api() {
    let world = emulators(FakeOptions::default()).await;
    let (pubsub, topics) = world.topics().await;
    let videos = format!("{}video-jobs-watch", world.prefix.as_deref().unwrap());
    pubsub
        .pull_subscription(&videos, &topics.video_jobs())
        .await;
    let image = completed_image(&world, "soap cut into cubes").await;
    let other = completed_image(&world, "kinetic sand").await;

    let iap = FakeIap::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("intake-ui.log");
    let (_page, url) = start_page(&world, &iap.keys_url, &log).await;
    let http = reqwest::Client::new();
    let good = iap.assertion(PERSON, AUDIENCE);
    let signed_post = |path: String, body: &'static str| {
        http.post(format!("{url}{path}"))
            .header("x-goog-iap-jwt-assertion", &good)
            .body(body)
            .send()
    };
    let get = |path: &str, assertion: Option<&str>| {
        let mut request = http.get(format!("{url}{path}"));
        if let Some(assertion) = assertion {
            request = request.header("x-goog-iap-jwt-assertion", assertion);
        }
        request.send()
    };

    // No assertion, or one for another service: 401 with the reason, never
    // the page.
    let other_service = iap.assertion(
        PERSON,
        "/projects/123456789/locations/us-central1/services/other",
    );
    for (what, assertion) in [("none", None), ("another audience", Some(&*other_service))] {
        let answer = get("/ui", assertion).await.unwrap();
        assert_eq!(answer.status(), 401, "{what}");
        let body = answer.text().await.unwrap();
        assert!(!body.contains("data-metric"), "{what}: {body}");
        let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(reason["error"].as_str().is_some(), "{what}: {body}");
        if assertion.is_none() {
            assert!(body.contains("Identity-Aware Proxy"), "{body}");
        }
        assert_eq!(get("/ui/events", assertion).await.unwrap().status(), 401);
        assert_eq!(get("/ui/cards", assertion).await.unwrap().status(), 401);
    }
    let refused = act(&http, &url, &image, "approve", None).await;
    assert_eq!(refused.status(), 401);
    assert!(world.store.job(&image).await.unwrap().verdict().is_none());
    // Cloud Run's probe needs none.
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);

    // With IAP's assertion: the page, every figure with its data-metric.
    let page = get("/ui", Some(&good)).await.unwrap();
    assert_eq!(
        (page.status().as_u16(), media_type(&page).as_str()),
        (200, "text/html")
    );
    let html = page.text().await.unwrap();
    for figure in [
        "jobs.total",
        "jobs.completed",
        "jobs.pending",
        "budget.spent_usd",
    ] {
        assert!(
            html.contains(&format!("data-metric=\"{figure}\"")),
            "{figure} is not on the page"
        );
    }
    assert!(
        html.contains("data-metric=\"jobs.total\">2</dd>"),
        "two jobs: {html}"
    );

    // The stream of figures.
    let events = get("/ui/events", Some(&good)).await.unwrap();
    assert_eq!(
        (events.status().as_u16(), media_type(&events).as_str()),
        (200, "text/event-stream")
    );
    let mut stream = events.bytes_stream();
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.contains("\n\n") || !seen.contains("event: figures") {
            let chunk = stream.next().await.expect("the stream goes on").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no figures streamed: {seen:?}"));
    let data = seen
        .lines()
        .find_map(|line| line.strip_prefix("data:"))
        .expect("the event carries data");
    let snapshot: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(snapshot["figures"]["jobs.total"], 2, "{snapshot}");
    drop(stream);

    // The cards, and review actions with the assertion: the store's own
    // operations, logged with the person.
    let cards: serde_json::Value = get("/ui/cards", Some(&good))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cards["cards"].as_array().unwrap().len(), 2, "{cards}");
    let approved = act(&http, &url, &image, "approve", Some(&good)).await;
    assert_eq!(approved.status(), 200);
    assert_eq!(
        world.store.job(&image).await.unwrap().verdict(),
        Some(Verdict::Approved)
    );
    let promoted: serde_json::Value = act(&http, &url, &image, "promote", Some(&good))
        .await
        .json()
        .await
        .unwrap();
    let video = promoted["video"].as_str().expect("a video").to_string();
    assert_eq!(promoted["created"], true, "{promoted}");
    let queued = pubsub.drain(&videos, 1).await;
    assert_eq!(queued.len(), 1, "the video is queued");
    assert_eq!(queued[0].json()["job_id"], video.as_str());
    // The page's own rules still hold with IAP's assertion.
    let bare = signed_post(format!("/ui/jobs/{other}/approve"), "{}")
        .await
        .unwrap();
    assert_eq!(bare.status(), 403, "no page header, no JSON");
    assert!(world.store.job(&other).await.unwrap().verdict().is_none());

    wait_until("the review lines", Duration::from_secs(10), async || {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|line| line.contains("\"live_review\""))
            .count()
            >= 2
    })
    .await;
    let lines = std::fs::read_to_string(&log).unwrap();
    let reviews: Vec<serde_json::Value> = lines
        .lines()
        .filter(|line| line.contains("\"live_review\""))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for review in &reviews[..2] {
        assert_eq!(review["by"], PERSON, "{review}");
        assert_eq!(review["jobId"], image.as_str(), "{review}");
    }
    assert!(
        lines.contains("\"iap_refused\""),
        "refusals are logged: {lines}"
    );

    // The API and the push route are not served in this mode, even to a
    // signed-in person.
    for path in [
        "/v1/jobs",
        "/v1/stats",
        "/openapi.json",
        &format!("/v1/jobs/{image}"),
    ] {
        let answer = get(path, Some(&good)).await.unwrap();
        assert_eq!(answer.status(), 404, "{path}");
    }
    let push = signed_post("/".into(), "{}").await.unwrap();
    assert!(
        push.status() == 404 || push.status() == 405,
        "POST / is served: {}",
        push.status()
    );
    let body = r#"{"kind": "image", "prompt": "rain"}"#;
    let created = signed_post("/v1/jobs".into(), body).await.unwrap();
    assert_eq!(created.status(), 404);
    assert_eq!(world.jobs().await.len(), 3, "two images and one video");
}
