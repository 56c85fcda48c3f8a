//! The request and answer mappings of every family, against the documented
//! shapes in `tests/fixtures/vertex/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::gemini::*;
use super::imagen::*;
use super::veo::*;
use super::*;
use crate::domain::values::FirstFrame;
use crate::domain::values::JobParams;
use crate::vertex::RetryPolicy;
use crate::vertex::wire::{Candidate, ImagenPrediction, Media};

fn fixture<T: DeserializeOwned>(name: &str) -> T {
    let path = format!(
        "{}/../tests/fixtures/vertex/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn config() -> VertexConfig {
    VertexConfig {
        project: "asmr-test".into(),
        location: "us-central1".into(),
        base_url: "http://127.0.0.1:9/".into(),
        image_model: "gemini-2.5-flash-image".into(),
        video_model: "veo-3.1-generate-001".into(),
        retry: RetryPolicy::default(),
        request_timeout: Duration::from_secs(5),
        access_token: Some("t".into()),
        resource_manager_url: "http://127.0.0.1:9".into(),
        storage_url: "http://127.0.0.1:9".into(),
        oauth2_url: "http://127.0.0.1:9".into(),
    }
}

fn image_request(model: &str, params: JobParams) -> ImageRequest {
    ImageRequest {
        prompt: "soft brush on a microphone".into(),
        params,
        model: model.into(),
        share: Default::default(),
    }
}

const PNG_B64: &str = "iVBORw0KGgo=";

#[test]
fn urls_follow_the_publisher_model_path() {
    let client = VertexClient::new(config()).unwrap();
    assert_eq!(
        client.url("imagen-4.0-generate-001", "predict"),
        "http://127.0.0.1:9/v1/projects/asmr-test/locations/us-central1/publishers/google/models/imagen-4.0-generate-001:predict"
    );
}

#[test]
fn configs_that_cannot_work_are_refused() {
    let check = |change: fn(&mut VertexConfig), expected: &str| {
        let mut c = config();
        change(&mut c);
        let e = VertexClient::new(c).unwrap_err();
        assert_eq!(e.code, "invalid_config");
        assert!(e.message.contains(expected), "{e}");
    };
    check(|c| c.project = String::new(), "project");
    check(|c| c.location = "us central".into(), "location");
    check(|c| c.base_url = "not a url".into(), "not a URL");
    check(|c| c.base_url = "ftp://x".into(), "not http");
    check(|c| c.request_timeout = Duration::ZERO, "timeout");
}

#[test]
fn debug_output_hides_the_token() {
    let mut c = config();
    c.access_token = Some("secret-token".into());
    let client = VertexClient::new(c).unwrap();
    assert!(!format!("{client:?}").contains("secret-token"));
}

#[test]
fn operation_names_yield_their_model() {
    let check = |name: &str, expected: Option<&str>| {
        assert_eq!(operation_model(name), expected, "{name:?}");
    };
    check(
        "projects/p/locations/us-central1/publishers/google/models/veo-3.1-generate-001/operations/a1b07c8e-7b5a-4aba-bb34-3e1ccb8afcc8",
        Some("veo-3.1-generate-001"),
    );
    check(
        "projects/123456/locations/global/publishers/google/models/veo-3.1-fast-generate-001/operations/42",
        Some("veo-3.1-fast-generate-001"),
    );
    check("projects/p/locations/l/operations/42", None);
    check(
        "projects/p/locations/l/publishers/google/models//operations/42",
        None,
    );
    check(
        "projects/p/locations/l/publishers/google/models/veo/operations/",
        None,
    );
    check(
        "projects/p/locations/l/publishers/google/models/veo:x/operations/1",
        None,
    );
    check(
        "projects/p/locations/l/publishers/google/models/veo/operations/1/extra",
        None,
    );
    check("", None);
}

#[test]
fn imagen_requests_carry_the_job_parameters() {
    let params = JobParams {
        aspect_ratio: Some("16:9".into()),
        sample_count: Some(3),
        negative_prompt: Some("text".into()),
        seed: Some(7),
        resolution: Some("2k".into()),
        ..JobParams::default()
    };
    let body = imagen_request(
        "imagen-4.0-generate-001",
        &image_request("imagen-4.0-generate-001", params),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        serde_json::json!({
            "instances": [{"prompt": "soft brush on a microphone"}],
            "parameters": {
                "sampleCount": 3, "aspectRatio": "16:9", "negativePrompt": "text",
                "seed": 7, "addWatermark": false, "includeRaiReason": true,
                "sampleImageSize": "2K"
            }
        })
    );
}

#[test]
fn imagen_fast_turns_prompt_enhancement_off_and_no_seed_keeps_the_watermark() {
    let body = imagen_request(
        "imagen-4.0-fast-generate-001",
        &image_request("imagen-4.0-fast-generate-001", JobParams::default()),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&body.parameters).unwrap(),
        serde_json::json!({"sampleCount": 1, "enhancePrompt": false, "includeRaiReason": true})
    );
}

#[test]
fn an_imagen_resolution_other_than_1k_or_2k_is_refused() {
    let params = JobParams {
        resolution: Some("1080p".into()),
        ..JobParams::default()
    };
    let e = imagen_request(
        "imagen-4.0-generate-001",
        &image_request("imagen-x", params),
    )
    .unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "invalid_argument")
    );
}

fn prediction(image: bool, reason: Option<&str>) -> ImagenPrediction {
    ImagenPrediction {
        bytes_base64_encoded: image.then(|| PNG_B64.to_string()),
        mime_type: image.then(|| "image/png".to_string()),
        rai_filtered_reason: reason.map(str::to_string),
        ..ImagenPrediction::default()
    }
}

#[test]
fn imagen_answers_become_images_filtered_or_partial() {
    let png = Bytes::from_static(b"\x89PNG\r\n\x1a\n");
    let image = GeneratedImage {
        mime_type: "image/png".into(),
        data: png,
    };
    let check = |predictions: Vec<ImagenPrediction>, count: u32, expected: ImageOutcome| {
        let got = imagen_outcome(ImagenResponse { predictions }, count).unwrap();
        assert_eq!(got, expected);
    };
    check(
        vec![prediction(true, None), prediction(true, None)],
        2,
        ImageOutcome::Images {
            images: vec![image.clone(), image.clone()],
            filtered: vec![],
            in_doubt: 0,
        },
    );
    check(
        vec![prediction(false, Some("blocked: Support codes: 1"))],
        1,
        ImageOutcome::Filtered {
            reasons: vec!["blocked: Support codes: 1".into()],
        },
    );
    check(
        vec![],
        2,
        ImageOutcome::Filtered {
            reasons: vec!["2 of 2 images were withheld without a reason".into()],
        },
    );
    check(
        vec![prediction(true, None), prediction(false, Some("r"))],
        3,
        ImageOutcome::Images {
            images: vec![image.clone()],
            filtered: vec![
                "r".into(),
                "1 of 3 images were withheld without a reason".into(),
            ],
            in_doubt: 0,
        },
    );
}

#[test]
fn the_documented_imagen_sample_with_a_gcs_uri_is_refused() {
    // asmr never sends storageUri for images, so a gcsUri is a surprise.
    let e = imagen_outcome(fixture("imagen_predict_response.json"), 3).unwrap_err();
    assert_eq!(e.code, "bad_response");
    assert!(e.message.contains("gs://bucket/prefix/sample_1.png"));
}

#[test]
fn oversized_inline_payloads_are_refused_before_decoding() {
    let huge = "A".repeat(MAX_INLINE_BASE64 + 4);
    let e = decode_inline(&huge, "Imagen image").unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "response_too_large")
    );
    let e = decode_inline("not base64!", "Imagen image").unwrap_err();
    assert_eq!(e.code, "bad_response");
}

#[test]
fn gemini_requests_ask_for_text_and_image() {
    let params = JobParams {
        aspect_ratio: Some("21:9".into()),
        ..JobParams::default()
    };
    let body = gemini_request(&image_request("gemini-2.5-flash-image", params));
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        serde_json::json!({
            "contents": [{"role": "user", "parts": [{"text": "soft brush on a microphone"}]}],
            "generationConfig": {
                "responseModalities": ["TEXT", "IMAGE"],
                "imageConfig": {"aspectRatio": "21:9"}
            }
        })
    );
}

#[test]
fn gemini_samples_parse_from_the_documented_answers() {
    let sample = gemini_sample(fixture("gemini_generate_content_response.json")).unwrap();
    assert_eq!(sample.images.len(), 1);
    assert!(sample.reasons.is_empty());
    let blocked = gemini_sample(fixture("gemini_blocked_prompt_response.json")).unwrap();
    assert!(blocked.images.is_empty());
    assert_eq!(
        blocked.reasons,
        ["PROHIBITED_CONTENT: The prompt was blocked due to prohibited content."]
    );
    let safety = gemini_sample(fixture("gemini_image_safety_response.json")).unwrap();
    assert!(safety.reasons[0].starts_with("IMAGE_SAFETY: Unable to show"));
}

#[test]
fn a_gemini_answer_with_only_text_is_a_no_image_error() {
    let answer = GenerateContentResponse {
        candidates: vec![Candidate {
            content: Some(Content {
                role: Some("model".into()),
                parts: vec![Part {
                    text: Some("I can only describe it.".into()),
                    inline_data: None,
                }],
            }),
            finish_reason: Some("STOP".into()),
            ..Candidate::default()
        }],
        ..GenerateContentResponse::default()
    };
    let e = gemini_sample(answer).unwrap_err();
    assert_eq!(e.code, "no_image");
    assert!(e.message.contains("STOP") && e.message.contains("only describe"));
}

#[test]
fn gemini_samples_combine_into_partial_or_filtered_outcomes() {
    let image = GeneratedImage {
        mime_type: "image/png".into(),
        data: Bytes::from_static(b"png"),
    };
    let ok = || {
        Ok(GeminiSample {
            images: vec![image.clone()],
            reasons: vec![],
        })
    };
    let filtered = || {
        Ok(GeminiSample {
            images: vec![],
            reasons: vec!["SAFETY".into()],
        })
    };
    assert_eq!(
        combine_gemini_samples(vec![ok(), filtered()]).unwrap(),
        ImageOutcome::Images {
            images: vec![image.clone()],
            filtered: vec!["SAFETY".into()],
            in_doubt: 0,
        }
    );
    assert_eq!(
        combine_gemini_samples(vec![filtered(), filtered()]).unwrap(),
        ImageOutcome::Filtered {
            reasons: vec!["SAFETY".into(), "SAFETY".into()],
        }
    );
    let failed = |class, code: &str| ModelError {
        class,
        code: code.into(),
        message: "m".into(),
        http_status: None,
    };
    let transient = failed(ErrorClass::Transient, "rate_limited");
    let unknown = failed(ErrorClass::Unknown, "submit_unknown");
    let blocked = permanent("invalid_argument", "blocked".into());
    // A paid image is kept whatever befell the other samples.
    let ImageOutcome::Images {
        images,
        filtered,
        in_doubt,
    } = combine_gemini_samples(vec![ok(), Err(transient.clone()), Err(unknown.clone())]).unwrap()
    else {
        panic!("images expected");
    };
    assert_eq!((images.len(), in_doubt), (1, 1));
    assert!(
        filtered[0].starts_with("sample 1: rate_limited"),
        "{filtered:?}"
    );
    // Without an image, the weightiest error speaks: unknown, then
    // refused, then transient.
    let e = combine_gemini_samples(vec![
        Err(transient.clone()),
        Err(blocked.clone()),
        Err(unknown),
    ])
    .unwrap_err();
    assert_eq!(e.code, "submit_unknown");
    let e = combine_gemini_samples(vec![Err(transient.clone()), Err(blocked)]).unwrap_err();
    assert_eq!(e.code, "invalid_argument");
    let e = combine_gemini_samples(vec![Err(transient)]).unwrap_err();
    assert_eq!(e.code, "rate_limited");
}

#[test]
fn veo_requests_carry_the_job_parameters_and_a_slash_ended_prefix() {
    let request = VideoRequest {
        prompt: "kinetic sand cut".into(),
        params: JobParams {
            aspect_ratio: Some("9:16".into()),
            sample_count: Some(2),
            duration_seconds: Some(6),
            negative_prompt: Some("music".into()),
            seed: Some(9),
            generate_audio: Some(true),
            resolution: Some("1080p".into()),
            model: None,
        },
        model: "veo-3.1-generate-001".into(),
        storage_uri: "gs://out/videos/job-1".into(),
        first_frame: None,
        share: Default::default(),
    };
    assert_eq!(
        serde_json::to_value(veo_request(&request).unwrap()).unwrap(),
        serde_json::json!({
            "instances": [{"prompt": "kinetic sand cut"}],
            "parameters": {
                "storageUri": "gs://out/videos/job-1/", "sampleCount": 2,
                "durationSeconds": 6, "aspectRatio": "9:16", "resolution": "1080p",
                "generateAudio": true, "negativePrompt": "music", "seed": 9
            }
        })
    );
    let mut bad = request.clone();
    bad.storage_uri = "/tmp/videos".into();
    assert_eq!(veo_request(&bad).unwrap_err().code, "invalid_argument");
}

#[test]
fn an_image_to_video_request_sends_the_first_frame_from_cloud_storage() {
    let frame = FirstFrame {
        gcs_uri: "gs://out/images/img-1/0.png".into(),
        mime_type: "image/png".into(),
    };
    let request = VideoRequest {
        prompt: "foam pressed flat".into(),
        params: JobParams::default(),
        model: "veo-3.1-generate-001".into(),
        storage_uri: "gs://out/videos/job-2/".into(),
        first_frame: Some(frame.clone()),
        share: Default::default(),
    };
    let body = serde_json::to_value(veo_request(&request).unwrap()).unwrap();
    assert_eq!(
        body["instances"][0],
        serde_json::json!({
            "prompt": "foam pressed flat",
            "image": {"gcsUri": "gs://out/images/img-1/0.png", "mimeType": "image/png"}
        })
    );
    for (uri, mime) in [
        ("https://example.com/0.png", "image/png"),
        ("gs://out/images/img-1/0.gif", "image/gif"),
    ] {
        let mut bad = request.clone();
        bad.first_frame = Some(FirstFrame {
            gcs_uri: uri.into(),
            mime_type: mime.into(),
        });
        let e = veo_request(&bad).unwrap_err();
        assert_eq!(e.code, "invalid_argument", "{uri}");
        assert!(e.message.starts_with("the first frame: "), "{}", e.message);
    }
}

#[test]
fn operations_map_to_states() {
    let state = |name: &str| operation_state(fixture(name));
    assert_eq!(
        state("veo_operation_running.json").unwrap(),
        OperationState::Running
    );
    assert_eq!(
        operation_state(Operation::default()).unwrap(),
        OperationState::Running
    );
    assert_eq!(
        state("veo_operation_done.json").unwrap(),
        OperationState::Done {
            videos: vec![
                "gs://out/videos/job-1/20260501120000/sample_0.mp4"
                    .parse()
                    .unwrap(),
                "gs://out/videos/job-1/20260501120000/sample_1.mp4"
                    .parse()
                    .unwrap(),
            ]
        }
    );
    let OperationState::Filtered { reasons } = state("veo_operation_filtered.json").unwrap() else {
        panic!("filtered expected");
    };
    assert!(reasons[0].contains("Support codes: 17301594"));
    assert_eq!(
        state("veo_operation_failed.json").unwrap(),
        OperationState::Failed {
            code: 3,
            message: "Generated video is large, an output storage uri is required.".into()
        }
    );
    let e = state("veo_operation_inline_video.json").unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "bad_response")
    );
    assert!(e.message.contains("inline"));
}

#[test]
fn odd_finished_operations_are_errors_or_filtered() {
    let done = |response| Operation {
        done: Some(true),
        response,
        ..Operation::default()
    };
    assert_eq!(
        operation_state(done(None)).unwrap_err().code,
        "bad_response"
    );
    assert_eq!(
        operation_state(done(Some(Default::default())))
            .unwrap_err()
            .code,
        "no_video"
    );
    let counted_only = crate::vertex::wire::GenerateVideoResponse {
        rai_media_filtered_count: Some(2),
        videos: vec![Media::default()],
        ..Default::default()
    };
    assert_eq!(
        operation_state(done(Some(counted_only))).unwrap(),
        OperationState::Filtered {
            reasons: vec!["2 videos were withheld by the safety filters without a reason".into()]
        }
    );
}

#[test]
fn model_ids_pick_the_default_and_refuse_junk() {
    assert_eq!(
        model_id("  ", "veo-3.1-generate-001").unwrap(),
        "veo-3.1-generate-001"
    );
    assert_eq!(model_id(" imagen-x ", "d").unwrap(), "imagen-x");
    assert_eq!(model_id("a/b", "d").unwrap_err().code, "invalid_argument");
    assert_eq!(model_id("", "").unwrap_err().code, "invalid_argument");
}

#[tokio::test]
async fn models_of_the_wrong_family_are_refused_without_a_call() {
    let client = VertexClient::new(config()).unwrap();
    let e = client
        .generate(&image_request("veo-3.1-generate-001", JobParams::default()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "invalid_argument")
    );
    let e = client
        .submit(&VideoRequest {
            prompt: "p".into(),
            params: JobParams::default(),
            model: "imagen-4.0-generate-001".into(),
            storage_uri: "gs://b/v/".into(),
            first_frame: None,
            share: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_argument");
    let e = client.poll("operations/123").await.unwrap_err();
    assert_eq!(e.code, "invalid_operation_name");
}

#[test]
fn a_principal_is_named_as_the_member_iam_grants_to() {
    assert_eq!(
        super::iam_member(Some("gen@p.iam.gserviceaccount.com")),
        "serviceAccount:gen@p.iam.gserviceaccount.com"
    );
    assert_eq!(
        super::iam_member(Some("ana@example.com")),
        "user:ana@example.com"
    );
    assert_eq!(super::iam_member(None), "user:YOU@example.com");
}

#[test]
fn what_an_answer_does_not_list_is_lacking() {
    let asked = ["a.b.c", "d.e.f"];
    assert_eq!(super::lacking(&asked, &serde_json::json!({})), asked);
    assert_eq!(
        super::lacking(&asked, &serde_json::json!({"permissions": ["d.e.f"]})),
        ["a.b.c"]
    );
    assert!(super::lacking(&asked, &serde_json::json!({"permissions": asked})).is_empty());
}
