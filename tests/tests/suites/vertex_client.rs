//! The Vertex AI client against the fake Vertex AI server, over real HTTP:
//! request shapes, outcomes, in-call retries, and the money rule that a
//! submit whose outcome is unknown is never sent twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use shared::domain::values::FirstFrame;
use shared::domain::values::JobParams;
use shared::objects::ObjectStore;
use shared::vertex::client::VertexClient;
use shared::vertex::{
    ErrorClass, ImageModel, ImageOutcome, ImageRequest, ModelError, OperationState, RetryPolicy,
    VertexConfig, VideoModel, VideoRequest,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::fake_vertex::{
    BLOCKED_MESSAGE, FILTERED_REASON, FakeOptions, FakeVertex, Fault, OP_FAILED_MESSAGE, PNG_1X1,
    ReceivedFrame, Verb,
};

const IMAGEN: &str = "imagen-4.0-generate-001";
const GEMINI: &str = "gemini-2.5-flash-image";
const VEO: &str = "veo-3.1-generate-001";

fn client(config: VertexConfig) -> VertexClient {
    VertexClient::new(config).expect("the client accepts the fake's config")
}

fn image(model: &str, prompt: &str, params: JobParams) -> ImageRequest {
    ImageRequest {
        prompt: prompt.into(),
        params,
        model: model.into(),
        share: Default::default(),
    }
}

fn samples(n: u32) -> JobParams {
    JobParams {
        sample_count: Some(n),
        ..JobParams::default()
    }
}

fn video(prompt: &str, params: JobParams) -> VideoRequest {
    VideoRequest {
        prompt: prompt.into(),
        params,
        model: VEO.into(),
        storage_uri: "gs://out/videos/job-1/".into(),
        first_frame: None,
        share: Default::default(),
    }
}

fn assert_error(e: &ModelError, class: ErrorClass, code: &str) {
    assert_eq!((e.class, e.code.as_str()), (class, code), "{e}");
}

fn image_count(outcome: &ImageOutcome) -> usize {
    match outcome {
        ImageOutcome::Images { images, .. } => images.len(),
        ImageOutcome::Filtered { .. } => 0,
    }
}

#[tokio::test]
async fn vertex_imagen_returns_every_sample_and_sends_the_documented_body() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let params = JobParams {
        sample_count: Some(2),
        aspect_ratio: Some("16:9".into()),
        negative_prompt: Some("text".into()),
        seed: Some(7),
        resolution: Some("2K".into()),
        ..JobParams::default()
    };
    let outcome = client(fake.config())
        .generate(&image(IMAGEN, "rain on a window", params))
        .await
        .unwrap();

    let ImageOutcome::Images {
        images, filtered, ..
    } = outcome
    else {
        panic!("images expected: {outcome:?}");
    };
    assert_eq!(images.len(), 2);
    assert!(filtered.is_empty());
    assert_eq!(images[0].mime_type, "image/png");
    assert_eq!(images[0].data.as_ref(), PNG_1X1);
    assert_eq!(fake.calls(Verb::Predict), 1);
    assert_eq!(
        fake.last_body(Verb::Predict).unwrap(),
        json!({
            "instances": [{"prompt": "rain on a window"}],
            "parameters": {
                "sampleCount": 2, "aspectRatio": "16:9", "negativePrompt": "text",
                "seed": 7, "addWatermark": false, "includeRaiReason": true,
                "sampleImageSize": "2K"
            }
        })
    );
    let request = &fake.requests()[0];
    assert_eq!(request.model, IMAGEN);
    assert_eq!(request.project, "asmr-test");
    assert_eq!(request.location, "us-central1");
}

#[tokio::test]
async fn vertex_gemini_makes_one_call_per_sample() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let params = JobParams {
        sample_count: Some(2),
        aspect_ratio: Some("21:9".into()),
        ..JobParams::default()
    };
    let outcome = client(fake.config())
        .generate(&image(GEMINI, "crinkling paper", params))
        .await
        .unwrap();

    assert_eq!(image_count(&outcome), 2);
    assert_eq!(fake.calls(Verb::GenerateContent), 2);
    assert_eq!(fake.calls_for_prompt("crinkling paper"), 2);
    assert_eq!(
        fake.last_body(Verb::GenerateContent).unwrap(),
        json!({
            "contents": [{"role": "user", "parts": [{"text": "crinkling paper"}]}],
            "generationConfig": {
                "responseModalities": ["TEXT", "IMAGE"],
                "imageConfig": {"aspectRatio": "21:9"}
            }
        })
    );
}

#[tokio::test]
async fn vertex_a_429_is_retried_in_call_then_succeeds() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    fake.fail_next(1, 429);
    let outcome = client(fake.config())
        .generate(&image(IMAGEN, "tapping nails", samples(1)))
        .await
        .unwrap();
    assert_eq!(image_count(&outcome), 1);
    assert_eq!(fake.calls(Verb::Predict), 2);
}

#[tokio::test]
async fn vertex_retry_after_is_honoured_up_to_the_maximum_delay() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let mut config = fake.config();
    config.retry = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_secs(5),
        quota_wait: Duration::from_secs(5),
    };
    fake.fail_next_with(
        1,
        Fault::status(429).with_retry_after(Duration::from_secs(1)),
    );
    let started = Instant::now();
    client(config)
        .generate(&image(IMAGEN, "whispering", samples(1)))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited only {:?}",
        started.elapsed()
    );
    assert_eq!(fake.calls(Verb::Predict), 2);

    // A Retry-After longer than max_delay is cut to max_delay.
    let mut config = fake.config();
    config.retry.max_delay = Duration::from_millis(50);
    fake.fail_next_with(
        1,
        Fault::status(503).with_retry_after(Duration::from_secs(30)),
    );
    let started = Instant::now();
    client(config)
        .generate(&image(IMAGEN, "whispering", samples(1)))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.calls(Verb::Predict), 4);
}

#[tokio::test]
async fn vertex_server_errors_are_retried_then_succeed() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    fake.fail_next(1, 500);
    fake.fail_next(1, 503);
    let outcome = client(fake.config())
        .generate(&image(GEMINI, "soap cutting", samples(1)))
        .await
        .unwrap();
    assert_eq!(image_count(&outcome), 1);
    assert_eq!(fake.calls(Verb::GenerateContent), 3);
}

#[tokio::test]
async fn vertex_a_quota_that_stays_spent_gives_a_transient_rate_limited_error() {
    let fake = FakeVertex::start(FakeOptions {
        requests_per_minute: Some(1),
        ..FakeOptions::default()
    })
    .await;
    let mut config = fake.config();
    config.retry = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        quota_wait: Duration::from_millis(100),
    };
    let client = client(config);
    client
        .generate(&image(IMAGEN, "first", samples(1)))
        .await
        .unwrap();
    let started = Instant::now();
    let e = client
        .generate(&image(IMAGEN, "second", samples(1)))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_error(&e, ErrorClass::Transient, "rate_limited");
    assert_eq!(e.http_status, Some(429));
    assert!(e.message.contains("quota is spent"), "{e}");
    assert!(e.message.contains("QUOTA_WAIT"), "{e}");
    // It waited QUOTA_WAIT, probing every 10 ms (base_delay under 2 s).
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    let tries = fake.calls_for_prompt("second");
    let most = (elapsed.as_millis() / 10) as usize + 2;
    assert!((3..=most).contains(&tries), "{tries} tries in {elapsed:?}");
}

#[tokio::test]
async fn vertex_exhausted_retries_of_other_transient_errors_say_so() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    fake.fail_next(10, 503);
    let e = client(fake.config())
        .generate(&image(IMAGEN, "unavailable", samples(1)))
        .await
        .unwrap_err();
    assert_error(&e, ErrorClass::Transient, "unavailable");
    assert!(e.message.contains("gave up after 3 retries"), "{e}");
    // The first try and 3 retries.
    assert_eq!(fake.calls_for_prompt("unavailable"), 4);
}

#[tokio::test]
async fn vertex_calls_behind_a_spent_quota_wait_for_one_probe_at_a_time() {
    let fake = FakeVertex::start(FakeOptions {
        requests_per_minute: Some(2),
        ..FakeOptions::default()
    })
    .await;
    let mut config = fake.config();
    // Each call may wait 350 ms behind the quota; the gate probes every 50 ms.
    config.retry = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(5),
        quota_wait: Duration::from_millis(350),
    };
    let client = Arc::new(client(config));
    for n in 0..2 {
        client
            .generate(&image(IMAGEN, &format!("spends the quota {n}"), samples(1)))
            .await
            .unwrap();
    }
    // The gate learns of the spent quota from the first 429; from then on
    // the waiting calls send one probe per interval between them, not one
    // each per back-off step (that would be 4 tries each, 40 in all).
    let started = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .generate(&image(IMAGEN, &format!("waits {n}"), samples(1)))
                    .await
            })
        })
        .collect();
    for call in calls {
        let e = call.await.unwrap().unwrap_err();
        assert_error(&e, ErrorClass::Transient, "rate_limited");
        assert_eq!(e.http_status, Some(429));
    }
    let elapsed = started.elapsed();
    let tries = fake.total_calls() - 2;
    // Up to all 10 may go before the first 429 closes the gate; then at most
    // one probe per 50 ms over the 350 ms (plus a late one each side).
    let probes_bound = (elapsed.as_millis() / 50) as usize + 2;
    assert!(
        tries <= 10 + probes_bound && tries < 40,
        "{tries} tries in {elapsed:?}"
    );
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
}

#[tokio::test]
async fn vertex_a_blocked_prompt_is_permanent_keeps_the_support_code_and_is_not_retried() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let client = client(fake.config());
    for model in [IMAGEN, GEMINI] {
        let prompt = format!("{model} [blocked]");
        let e = client
            .generate(&image(model, &prompt, samples(1)))
            .await
            .unwrap_err();
        assert_error(&e, ErrorClass::Permanent, "invalid_argument");
        assert_eq!(e.message, BLOCKED_MESSAGE);
        assert!(e.message.contains("Support codes: 61493863"));
        assert_eq!(fake.calls_for_prompt(&prompt), 1);
    }
    let e = client
        .submit(&video("slime [blocked]", JobParams::default()))
        .await
        .unwrap_err();
    assert_error(&e, ErrorClass::Permanent, "invalid_argument");
    assert_eq!(fake.calls(Verb::PredictLongRunning), 1);
}

#[tokio::test]
async fn vertex_filtered_images_are_reported_for_both_families() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let client = client(fake.config());

    let outcome = client
        .generate(&image(IMAGEN, "imagen [filtered]", samples(2)))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ImageOutcome::Filtered {
            reasons: vec![FILTERED_REASON.into(), FILTERED_REASON.into()]
        }
    );

    let outcome = client
        .generate(&image(GEMINI, "gemini [filtered]", samples(1)))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ImageOutcome::Filtered {
            reasons: vec![format!("PROHIBITED_CONTENT: {FILTERED_REASON}")]
        }
    );

    let outcome = client
        .generate(&image(GEMINI, "gemini [image-safety]", samples(1)))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ImageOutcome::Filtered {
            reasons: vec![format!("IMAGE_SAFETY: {FILTERED_REASON}")]
        }
    );
    // Filtered output is final: one call each, no retry.
    assert_eq!(fake.total_calls(), 3);
}

#[tokio::test]
async fn vertex_partly_filtered_imagen_output_keeps_the_images_and_the_reasons() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let outcome = client(fake.config())
        .generate(&image(IMAGEN, "partly [partial]", samples(3)))
        .await
        .unwrap();
    let ImageOutcome::Images {
        images, filtered, ..
    } = outcome
    else {
        panic!("images expected: {outcome:?}");
    };
    assert_eq!(images.len(), 2);
    assert_eq!(filtered, [FILTERED_REASON]);
}

#[tokio::test]
async fn vertex_a_video_is_submitted_polled_and_written_where_veo_writes() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Arc::new(shared::objects::local::LocalObjectStore::new(
        dir.path().to_path_buf(),
    ));
    objects.ensure_bucket("out").await.unwrap();
    let fake = FakeVertex::start(FakeOptions {
        polls_until_done: 2,
        objects: Some(objects.clone()),
        ..FakeOptions::default()
    })
    .await;
    let client = client(fake.config());
    let params = JobParams {
        sample_count: Some(2),
        duration_seconds: Some(8),
        aspect_ratio: Some("9:16".into()),
        resolution: Some("1080p".into()),
        generate_audio: Some(true),
        negative_prompt: Some("music".into()),
        seed: Some(5),
        model: None,
    };
    let name = client
        .submit(&video("folding slime", params))
        .await
        .unwrap();
    assert!(
        name.starts_with(&format!(
            "projects/asmr-test/locations/us-central1/publishers/google/models/{VEO}/operations/"
        )),
        "{name}"
    );
    assert_eq!(
        fake.last_body(Verb::PredictLongRunning).unwrap(),
        json!({
            "instances": [{"prompt": "folding slime"}],
            "parameters": {
                "storageUri": "gs://out/videos/job-1/", "sampleCount": 2,
                "durationSeconds": 8, "aspectRatio": "9:16", "resolution": "1080p",
                "generateAudio": true, "negativePrompt": "music", "seed": 5
            }
        })
    );

    assert_eq!(client.poll(&name).await.unwrap(), OperationState::Running);
    let OperationState::Done { videos } = client.poll(&name).await.unwrap() else {
        panic!("done expected");
    };
    assert_eq!(videos.len(), 2);
    let videos: Vec<String> = videos.iter().map(ToString::to_string).collect();
    assert_eq!(videos, fake.written_objects());
    for (n, uri) in videos.iter().enumerate() {
        let rest = uri.strip_prefix("gs://out/videos/job-1/").expect(uri);
        let (folder, file) = rest.split_once('/').expect(uri);
        assert_eq!(folder.len(), 14, "a yyyymmddhhmmss folder: {uri}");
        assert!(folder.chars().all(|c| c.is_ascii_digit()), "{uri}");
        assert_eq!(file, format!("sample_{n}.mp4"));
        let meta = objects
            .metadata("out", uri.strip_prefix("gs://out/").unwrap())
            .await
            .unwrap()
            .expect("the video was written");
        assert_eq!(meta.content_type, "video/mp4");
        assert!(meta.size > 0);
    }
    // A finished operation stays finished, with the same videos.
    assert_eq!(
        client.poll(&name).await.unwrap(),
        OperationState::Done {
            videos: videos.iter().map(|v| v.parse().unwrap()).collect()
        }
    );
    assert_eq!(fake.calls(Verb::PredictLongRunning), 1);
    assert_eq!(fake.calls(Verb::FetchPredictOperation), 3);
    let poll = fake.last_body(Verb::FetchPredictOperation).unwrap();
    assert_eq!(poll, json!({"operationName": name}));
    assert!(
        fake.requests()
            .iter()
            .filter(|r| r.verb == Verb::FetchPredictOperation)
            .all(|r| r.model == VEO)
    );
}

#[tokio::test]
async fn vertex_a_filtered_video_is_final() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let client = client(fake.config());
    let name = client
        .submit(&video("slime [filtered]", JobParams::default()))
        .await
        .unwrap();
    assert_eq!(
        client.poll(&name).await.unwrap(),
        OperationState::Filtered {
            reasons: vec![FILTERED_REASON.into()]
        }
    );
    assert!(fake.written_objects().is_empty());
}

#[tokio::test]
async fn vertex_a_failed_operation_reports_its_code_and_message() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let client = client(fake.config());
    let name = client
        .submit(&video("slime [op-fails]", JobParams::default()))
        .await
        .unwrap();
    assert_eq!(
        client.poll(&name).await.unwrap(),
        OperationState::Failed {
            code: 3,
            message: OP_FAILED_MESSAGE.into()
        }
    );
}

#[tokio::test]
async fn vertex_a_never_done_operation_stays_running() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let client = client(fake.config());
    let name = client
        .submit(&video("slime [never-done]", JobParams::default()))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(client.poll(&name).await.unwrap(), OperationState::Running);
    }
    assert_eq!(fake.calls(Verb::FetchPredictOperation), 3);
}

#[tokio::test]
async fn vertex_polling_an_unknown_operation_is_not_found() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let name = format!(
        "projects/asmr-test/locations/us-central1/publishers/google/models/{VEO}/operations/nope"
    );
    let e = client(fake.config()).poll(&name).await.unwrap_err();
    assert_error(&e, ErrorClass::Permanent, "not_found");
    assert_eq!(fake.calls(Verb::FetchPredictOperation), 1);
}

#[tokio::test]
async fn vertex_a_poll_that_hits_a_server_error_is_retried() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let client = client(fake.config());
    let name = client
        .submit(&video("rain", JobParams::default()))
        .await
        .unwrap();
    fake.fail_next(2, 503);
    assert!(matches!(
        client.poll(&name).await.unwrap(),
        OperationState::Done { .. }
    ));
    assert_eq!(fake.calls(Verb::FetchPredictOperation), 3);
}

#[tokio::test]
async fn vertex_a_wrong_token_is_a_misconfiguration_and_not_retried() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let mut config = fake.config();
    config.access_token = Some("not-the-token".into());
    let client = client(config);
    let e = client
        .generate(&image(IMAGEN, "tapping", samples(1)))
        .await
        .unwrap_err();
    assert_error(&e, ErrorClass::Misconfigured, "unauthenticated");
    assert_eq!(e.http_status, Some(401));
    assert!(
        e.message.contains("gcloud auth application-default login"),
        "{e}"
    );
    let e = client
        .submit(&video("tapping", JobParams::default()))
        .await
        .unwrap_err();
    assert_error(&e, ErrorClass::Misconfigured, "unauthenticated");
    assert_eq!(fake.total_calls(), 2);
    assert_eq!(
        fake.requests()[0].authorization.as_deref(),
        Some("Bearer not-the-token")
    );
}

#[tokio::test]
async fn vertex_the_fake_refuses_a_request_without_a_token() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let url = format!(
        "{}/v1/projects/p/locations/l/publishers/google/models/{IMAGEN}:predict",
        fake.base_url()
    );
    let response = reqwest::Client::new()
        .post(url)
        .json(&json!({"instances": [{"prompt": "x"}], "parameters": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(fake.calls(Verb::Predict), 1);
    assert_eq!(fake.requests()[0].authorization, None);
}

#[tokio::test]
async fn vertex_a_submit_slower_than_the_timeout_is_unknown_and_sent_once() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let mut config = fake.config();
    config.request_timeout = Duration::from_millis(300);
    fake.set_latency(Duration::from_secs(2));
    let e = client(config)
        .submit(&video("expensive slime", JobParams::default()))
        .await
        .unwrap_err();
    assert_error(&e, ErrorClass::Unknown, "submit_unknown");
    assert!(e.message.contains("may have generated (and billed)"), "{e}");
    assert_eq!(fake.calls(Verb::PredictLongRunning), 1);
    // Nothing else arrives later either.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.total_calls(), 1);
}

#[tokio::test]
async fn vertex_an_image_call_that_times_out_is_unknown_and_sent_once() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let mut config = fake.config();
    config.request_timeout = Duration::from_millis(300);
    fake.set_latency(Duration::from_secs(2));
    for model in [IMAGEN, GEMINI] {
        let e = client(config.clone())
            .generate(&image(model, "slow brushing", samples(1)))
            .await
            .unwrap_err();
        assert_error(&e, ErrorClass::Unknown, "submit_unknown");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        (fake.calls(Verb::Predict), fake.calls(Verb::GenerateContent)),
        (1, 1),
        "a hanging model gets one request per call"
    );
}

#[tokio::test]
async fn vertex_gemini_keeps_the_samples_that_came_back_when_another_hangs() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let mut config = fake.config();
    config.request_timeout = Duration::from_millis(500);
    fake.slow_next(1, Duration::from_secs(3));
    let outcome = client(config)
        .generate(&image(GEMINI, "two brushes", samples(2)))
        .await
        .unwrap();
    let ImageOutcome::Images {
        images, in_doubt, ..
    } = outcome
    else {
        panic!("the sample that came back is kept: {outcome:?}");
    };
    assert_eq!((images.len(), in_doubt), (1, 1));
    assert_eq!(fake.calls(Verb::GenerateContent), 2, "nothing sent again");
}

#[tokio::test]
async fn vertex_an_unreachable_endpoint_is_transient_after_retries() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = VertexConfig {
        project: "asmr-test".into(),
        location: "us-central1".into(),
        base_url: format!("http://127.0.0.1:{port}"),
        image_model: GEMINI.into(),
        video_model: VEO.into(),
        retry: RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            quota_wait: Duration::from_millis(100),
        },
        request_timeout: Duration::from_secs(2),
        access_token: Some("t".into()),
        resource_manager_url: format!("http://127.0.0.1:{port}"),
        oauth2_url: format!("http://127.0.0.1:{port}"),
        storage_url: format!("http://127.0.0.1:{port}"),
    };
    let e = client(config)
        .submit(&video("never sent", JobParams::default()))
        .await
        .unwrap_err();
    // Connection refused: the submit never left, so it is safe to retry.
    assert_error(&e, ErrorClass::Transient, "unavailable");
}

#[tokio::test]
async fn vertex_the_fake_quota_answers_429_with_a_google_body_and_retry_after() {
    let fake = FakeVertex::start(FakeOptions {
        requests_per_minute: Some(1),
        quota_retry_after: Some(Duration::from_millis(1500)),
        ..FakeOptions::default()
    })
    .await;
    let url = format!(
        "{}/v1/projects/p/locations/l/publishers/google/models/{GEMINI}:generateContent",
        fake.base_url()
    );
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}]});
    let send = || {
        reqwest::Client::new()
            .post(&url)
            .bearer_auth(fake.token())
            .json(&body)
            .send()
    };
    assert_eq!(send().await.unwrap().status().as_u16(), 200);
    let response = send().await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(body["error"]["code"], 429);
    assert_eq!(fake.calls_for_prompt("x"), 2);
}

#[tokio::test]
async fn vertex_an_image_to_video_submit_sends_its_first_frame_to_veo() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let frame = FirstFrame {
        gcs_uri: "gs://out/images/img-1/0.png".into(),
        mime_type: "image/png".into(),
    };
    let request = VideoRequest {
        first_frame: Some(frame.clone()),
        share: Default::default(),
        ..video("foam pressed flat", JobParams::default())
    };
    client(fake.config()).submit(&request).await.unwrap();
    assert_eq!(
        fake.first_frames(),
        [ReceivedFrame {
            gcs_uri: frame.gcs_uri.clone(),
            mime_type: frame.mime_type.clone(),
        }]
    );
    let body = fake.last_body(Verb::PredictLongRunning).unwrap();
    assert_eq!(
        body["instances"][0]["image"],
        json!({"gcsUri": "gs://out/images/img-1/0.png", "mimeType": "image/png"})
    );
    // A text-to-video submit carries none.
    client(fake.config())
        .submit(&video("just words", JobParams::default()))
        .await
        .unwrap();
    assert_eq!(fake.first_frames().len(), 1);
}

#[tokio::test]
async fn vertex_the_fake_refuses_a_first_frame_veo_would_refuse() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    let url = format!(
        "{}/v1/projects/p/locations/l/publishers/google/models/{VEO}:predictLongRunning",
        fake.base_url()
    );
    for (image, says) in [
        (
            json!({"gcsUri": "https://example.com/0.png", "mimeType": "image/png"}),
            "gs://bucket/object",
        ),
        (
            json!({"gcsUri": "gs://out/", "mimeType": "image/png"}),
            "gs://bucket/object",
        ),
        (
            json!({"gcsUri": "gs://out/0.gif", "mimeType": "image/gif"}),
            "Unsupported image mime type",
        ),
        (
            json!({"gcsUri": "gs://out/0.png"}),
            "Unsupported image mime type",
        ),
    ] {
        let body = json!({
            "instances": [{"prompt": "x", "image": image}],
            "parameters": {"storageUri": "gs://out/videos/j/"}
        });
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(fake.token())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{image}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["status"], "INVALID_ARGUMENT");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} lacks {says:?}");
    }
    assert!(
        fake.first_frames().is_empty(),
        "nothing refused is recorded"
    );
}

#[tokio::test]
async fn vertex_preflight_asks_resource_manager_and_cloud_storage_and_names_what_is_missing() {
    let fake = FakeVertex::start(FakeOptions::default()).await;
    client(fake.config()).preflight(None).await.unwrap();
    assert_eq!(fake.permission_checks(), 1);
    client(fake.config()).preflight(Some("out")).await.unwrap();
    assert_eq!(
        fake.permission_checks(),
        3,
        "the project, then the project and the bucket"
    );
    assert_eq!(fake.buckets_checked(), ["out"]);

    // Writing to the bucket withheld: named with its role and command.
    fake.withhold_permission("storage.objects.create");
    let e = client(fake.config())
        .preflight(Some("out"))
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Misconfigured, "{e}");
    assert_eq!(
        e.message,
        "tester@example.com lacks storage.objects.create on bucket gs://out, which writing the outputs needs; roles/storage.objectCreator grants it: gcloud storage buckets add-iam-policy-binding gs://out --member=user:tester@example.com --role=roles/storage.objectCreator"
    );
    client(fake.config()).preflight(None).await.unwrap();

    fake.withhold_permission("aiplatform.endpoints.predict");
    let both = client(fake.config())
        .preflight(Some("out"))
        .await
        .unwrap_err();
    assert!(
        both.message.contains("on project")
            && both
                .message
                .contains("; and lacks storage.objects.create on bucket gs://out"),
        "{both}"
    );
    let e = client(fake.config()).preflight(None).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Misconfigured, "{e}");
    assert!(
        e.message
            .contains("tester@example.com lacks aiplatform.endpoints.predict on project"),
        "{e}"
    );
    assert!(
        e.message
            .contains("--member=user:tester@example.com --role=roles/aiplatform.user"),
        "{e}"
    );
    assert_eq!(fake.total_calls(), 0, "the check calls no model");

    // Resource Manager and Cloud Storage unreachable: the checks step aside (the
    // calls themselves will tell).
    let mut config = fake.config();
    config.resource_manager_url = "http://127.0.0.1:9".into();
    config.storage_url = "http://127.0.0.1:9".into();
    client(config).preflight(Some("out")).await.unwrap();
}
