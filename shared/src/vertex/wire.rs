//! The JSON that goes over the wire to Vertex AI, typed once.
//!
//! One struct per documented request and response shape (the Vertex AI REST
//! references of Imagen, Gemini image models and Veo): Imagen `:predict`, Gemini
//! `:generateContent`, Veo `:predictLongRunning` and `:fetchPredictOperation`,
//! and Google's error envelope. Optional fields are skipped when unset, so a
//! request carries only what the job asked for and the model defaults the
//! rest; unknown response fields are ignored, so new fields Google adds do not
//! break parsing. Nothing outside `vertex` should need these types.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{"prompt": "..."}`: the instance of an Imagen `:predict` call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptInstance {
    /// The text prompt.
    pub prompt: String,
}

/// Body of Imagen `:predict`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagenRequest {
    /// One instance per prompt; asmr always sends one.
    pub instances: Vec<PromptInstance>,
    /// Generation parameters.
    pub parameters: ImagenParameters,
}

/// `parameters` of Imagen `:predict` (`VisionGenerativeModelParams`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagenParameters {
    /// Images per request, 1 to 4 (Ultra: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_count: Option<u32>,
    /// `1:1`, `3:4`, `4:3`, `16:9`, `9:16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspect_ratio: Option<String>,
    /// What the image must not show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// 1..2147483647; honoured only with `addWatermark: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    /// SynthID watermark, default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_watermark: Option<bool>,
    /// LLM prompt rewriting, default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhance_prompt: Option<bool>,
    /// `block_low_and_above`, `block_medium_and_above`, `block_only_high`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_setting: Option<String>,
    /// `allow_all`, `allow_adult`, `dont_allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_generation: Option<String>,
    /// Return `raiFilteredReason` for withheld images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_rai_reason: Option<bool>,
    /// Return safety attributes beside each image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_safety_attributes: Option<bool>,
    /// Prompt language (`en`, `auto`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Imagen 4: `1K` or `2K`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_image_size: Option<String>,
    /// When set, images are written to GCS instead of returned inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_uri: Option<String>,
    /// Output encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_options: Option<OutputOptions>,
}

/// `parameters.outputOptions` of Imagen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputOptions {
    /// `image/png` or `image/jpeg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// JPEG quality 0..100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_quality: Option<u32>,
}

/// Body of an Imagen `:predict` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagenResponse {
    /// One entry per returned (or withheld) image; absent when all were filtered.
    #[serde(default)]
    pub predictions: Vec<ImagenPrediction>,
}

/// One entry of `predictions` (`VisionGenerativeModelResult.images[]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagenPrediction {
    /// The image, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_base64_encoded: Option<String>,
    /// The image, in GCS (only when `storageUri` was set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_uri: Option<String>,
    /// `image/png`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// The enhanced prompt, when prompt enhancement was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Why this image was withheld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rai_filtered_reason: Option<String>,
    /// Kind of entry (safety attribute entries carry one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Safety scores, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_attributes: Option<Value>,
}

/// Body of Gemini `:generateContent`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    /// The conversation; asmr sends one user turn with the prompt.
    pub contents: Vec<Content>,
    /// Output modalities and image settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig>,
    /// Safety thresholds per harm category.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safety_settings: Vec<SafetySetting>,
}

/// One turn of a Gemini conversation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    /// `user` or `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text and inline data.
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// A part of a turn: text or inline data (other kinds are ignored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// A text part: the prompt going out, or the model's words coming back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Inline bytes (a generated image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<Blob>,
}

/// `inlineData`: base64 bytes with their MIME type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    /// `image/png`...
    #[serde(default)]
    pub mime_type: String,
    /// Base64 (standard alphabet).
    #[serde(default)]
    pub data: String,
}

/// `generationConfig` of a Gemini image call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    /// `["TEXT", "IMAGE"]` for image models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_modalities: Vec<String>,
    /// Image settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<ImageConfig>,
}

/// `generationConfig.imageConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// `1:1`, `3:2`, `16:9`, `21:9`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspect_ratio: Option<String>,
}

/// One entry of `safetySettings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SafetySetting {
    /// Harm category.
    pub category: String,
    /// Blocking threshold.
    pub threshold: String,
}

/// Body of a Gemini `:generateContent` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    /// Answers; absent when the prompt was blocked.
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    /// Why the prompt was blocked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_feedback: Option<PromptFeedback>,
    /// The model version that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<Value>,
}

/// One answer of Gemini.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The answer's parts; absent when it was withheld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// `STOP`, `SAFETY`, `PROHIBITED_CONTENT`, `IMAGE_SAFETY`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// A human explanation of the finish reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_message: Option<String>,
    /// Safety scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_ratings: Option<Value>,
}

/// `promptFeedback` of a Gemini answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    /// `SAFETY`, `PROHIBITED_CONTENT`, `BLOCKLIST`, `OTHER`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_reason: Option<String>,
    /// A human explanation of the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_reason_message: Option<String>,
    /// Safety scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_ratings: Option<Value>,
}

/// Body of Veo `:predictLongRunning`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VeoRequest {
    /// One instance: the prompt, and the first frame of an image-to-video
    /// request.
    pub instances: Vec<VeoInstance>,
    /// Generation parameters.
    pub parameters: VeoParameters,
}

/// One Veo instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VeoInstance {
    /// The text prompt.
    pub prompt: String,
    /// First frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Media>,
    /// Last frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_frame: Option<Media>,
    /// A video to extend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<Media>,
    /// Asset or style references.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_images: Vec<ReferenceImage>,
}

/// An image or a video, inline or in GCS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    /// Inline bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_base64_encoded: Option<String>,
    /// `gs://...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_uri: Option<String>,
    /// MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One entry of `referenceImages`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceImage {
    /// The image.
    pub image: Media,
    /// `asset` or `style`.
    pub reference_type: String,
}

/// `parameters` of Veo (`VideoGenerationModelParams`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VeoParameters {
    /// `gs://bucket/prefix/`: where Veo writes the videos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_uri: Option<String>,
    /// Videos per request, 1 to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_count: Option<u32>,
    /// 4, 6 or 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u32>,
    /// `16:9` or `9:16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspect_ratio: Option<String>,
    /// `720p`, `1080p`, `4k`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// Veo 3: sound on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_audio: Option<bool>,
    /// What the video must not show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// `allow_adult`, `dont_allow`, `allow_all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_generation: Option<String>,
    /// uint32 seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    /// LLM prompt rewriting, default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhance_prompt: Option<bool>,
    /// `optimized` or `lossless`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_quality: Option<String>,
    /// Frames per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    /// Topic for progress messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubsub_topic: Option<String>,
}

/// `{"name": "projects/.../operations/ID"}`: the answer of `:predictLongRunning`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationRef {
    /// The full operation name.
    #[serde(default)]
    pub name: String,
}

/// Body of `:fetchPredictOperation`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchOperationRequest {
    /// The full operation name `:predictLongRunning` returned.
    pub operation_name: String,
}

/// A `google.longrunning.Operation` as `:fetchPredictOperation` returns it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The operation name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `true` once finished; absent or `false` while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
    /// Set when it finished with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcStatus>,
    /// Set when it finished successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<GenerateVideoResponse>,
    /// Progress information, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// A `google.rpc.Status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RpcStatus {
    /// Numeric gRPC code (3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED...).
    #[serde(default)]
    pub code: i32,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// Typed details.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Value>,
}

/// `response` of a finished Veo operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateVideoResponse {
    /// `type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse`.
    #[serde(rename = "@type", default, skip_serializing_if = "Option::is_none")]
    pub type_url: Option<String>,
    /// How many videos the safety filters withheld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rai_media_filtered_count: Option<u32>,
    /// Why they were withheld.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rai_media_filtered_reasons: Vec<String>,
    /// The videos that were made.
    #[serde(default)]
    pub videos: Vec<Media>,
}

/// Google's error body: `{"error": {"code", "message", "status"}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEnvelope {
    /// The error.
    pub error: GoogleError,
}

/// The `error` of Google's error body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoogleError {
    /// The HTTP status again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// What went wrong, support codes included.
    #[serde(default)]
    pub message: String,
    /// The canonical status name: `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Typed details (`google.rpc.RetryInfo`, `ErrorInfo`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Value>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!(
            "{}/../tests/fixtures/vertex/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn imagen_request_sample_parses_and_round_trips() {
        let request: ImagenRequest = fixture("imagen_predict_request.json");
        assert_eq!(
            request.instances[0].prompt,
            "a glass marble rolling on felt"
        );
        let p = &request.parameters;
        assert_eq!(p.sample_count, Some(2));
        assert_eq!(p.aspect_ratio.as_deref(), Some("16:9"));
        assert_eq!(p.seed, Some(42));
        assert_eq!(p.add_watermark, Some(false));
        assert_eq!(p.include_rai_reason, Some(true));
        assert_eq!(p.sample_image_size.as_deref(), Some("2K"));
        assert_eq!(
            p.output_options
                .as_ref()
                .and_then(|o| o.mime_type.as_deref()),
            Some("image/png")
        );
        let again: ImagenRequest =
            serde_json::from_value(serde_json::to_value(&request).unwrap()).unwrap();
        assert_eq!(again, request);
    }

    #[test]
    fn imagen_response_sample_has_an_inline_image_a_gcs_image_and_a_filtered_one() {
        let response: ImagenResponse = fixture("imagen_predict_response.json");
        let [inline, gcs, filtered] = &response.predictions[..] else {
            panic!("three predictions expected: {response:?}");
        };
        assert_eq!(inline.bytes_base64_encoded.as_deref(), Some("iVBORw0KGgo="));
        assert_eq!(inline.mime_type.as_deref(), Some("image/png"));
        assert!(inline.prompt.is_some());
        assert_eq!(
            gcs.gcs_uri.as_deref(),
            Some("gs://bucket/prefix/sample_1.png")
        );
        assert!(
            filtered
                .rai_filtered_reason
                .as_deref()
                .unwrap()
                .contains("Support codes")
        );
    }

    #[test]
    fn an_imagen_response_without_predictions_parses_as_empty() {
        let response: ImagenResponse = serde_json::from_str("{}").unwrap();
        assert!(response.predictions.is_empty());
    }

    #[test]
    fn gemini_request_sample_parses() {
        let request: GenerateContentRequest = fixture("gemini_generate_content_request.json");
        assert_eq!(request.contents[0].role.as_deref(), Some("user"));
        assert_eq!(
            request.contents[0].parts[0].text.as_deref(),
            Some("rain on a tin roof")
        );
        let config = request.generation_config.unwrap();
        assert_eq!(config.response_modalities, ["TEXT", "IMAGE"]);
        assert_eq!(
            config.image_config.unwrap().aspect_ratio.as_deref(),
            Some("16:9")
        );
        assert_eq!(request.safety_settings.len(), 1);
    }

    #[test]
    fn gemini_response_sample_has_text_and_an_inline_image() {
        let response: GenerateContentResponse = fixture("gemini_generate_content_response.json");
        let candidate = &response.candidates[0];
        assert_eq!(candidate.finish_reason.as_deref(), Some("STOP"));
        let parts = &candidate.content.as_ref().unwrap().parts;
        assert!(parts[0].text.is_some());
        let blob = parts[1].inline_data.as_ref().unwrap();
        assert_eq!(blob.mime_type, "image/png");
        assert_eq!(blob.data, "iVBORw0KGgo=");
    }

    #[test]
    fn gemini_blocked_prompt_sample_has_a_block_reason_and_no_candidates() {
        let response: GenerateContentResponse = fixture("gemini_blocked_prompt_response.json");
        assert!(response.candidates.is_empty());
        assert_eq!(
            response.prompt_feedback.unwrap().block_reason.as_deref(),
            Some("PROHIBITED_CONTENT")
        );
    }

    #[test]
    fn gemini_image_safety_sample_has_a_finish_reason_and_no_parts() {
        let response: GenerateContentResponse = fixture("gemini_image_safety_response.json");
        assert_eq!(
            response.candidates[0].finish_reason.as_deref(),
            Some("IMAGE_SAFETY")
        );
        assert!(response.candidates[0].content.is_none());
    }

    #[test]
    fn veo_request_sample_parses() {
        let request: VeoRequest = fixture("veo_predict_long_running_request.json");
        assert_eq!(request.instances[0].prompt, "slime being folded slowly");
        let p = &request.parameters;
        assert_eq!(p.storage_uri.as_deref(), Some("gs://out/videos/job-1/"));
        assert_eq!(p.sample_count, Some(2));
        assert_eq!(p.duration_seconds, Some(8));
        assert_eq!(p.resolution.as_deref(), Some("1080p"));
        assert_eq!(p.generate_audio, Some(true));
        assert_eq!(p.seed, Some(123));
    }

    #[test]
    fn veo_submit_answer_sample_carries_the_operation_name() {
        let answer: OperationRef = fixture("veo_predict_long_running_response.json");
        assert!(
            answer
                .name
                .ends_with("/operations/a1b07c8e-7b5a-4aba-bb34-3e1ccb8afcc8")
        );
    }

    #[test]
    fn fetch_operation_request_sample_parses() {
        let request: FetchOperationRequest = fixture("veo_fetch_operation_request.json");
        assert!(request.operation_name.starts_with("projects/"));
    }

    #[test]
    fn veo_operation_samples_parse() {
        let running: Operation = fixture("veo_operation_running.json");
        assert_eq!(running.done, Some(false));
        let done: Operation = fixture("veo_operation_done.json");
        let response = done.response.unwrap();
        assert_eq!(
            response.type_url.as_deref(),
            Some("type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse")
        );
        assert_eq!(response.videos.len(), 2);
        assert_eq!(
            response.videos[0].gcs_uri.as_deref(),
            Some("gs://out/videos/job-1/20260501120000/sample_0.mp4")
        );
        let filtered: Operation = fixture("veo_operation_filtered.json");
        let response = filtered.response.unwrap();
        assert_eq!(response.rai_media_filtered_count, Some(1));
        assert_eq!(response.rai_media_filtered_reasons.len(), 1);
        assert!(response.videos.is_empty());
        let failed: Operation = fixture("veo_operation_failed.json");
        assert_eq!(failed.error.unwrap().code, 3);
    }

    #[test]
    fn error_envelope_samples_parse() {
        let quota: ErrorEnvelope = fixture("error_resource_exhausted.json");
        assert_eq!(quota.error.code, Some(429));
        assert_eq!(quota.error.status.as_deref(), Some("RESOURCE_EXHAUSTED"));
        let blocked: ErrorEnvelope = fixture("error_invalid_argument_blocked.json");
        assert!(blocked.error.message.contains("Support codes: 61493863"));
    }
}
