//! Gemini image models (`gemini-*`): `:generateContent` yields one image a
//! call, so a job of N samples makes N calls at once and keeps what came back.

use super::{
    CallKind, Content, ErrorClass, GenerateContentRequest, GenerateContentResponse, GeneratedImage,
    GenerationConfig, ImageConfig, ImageOutcome, ImageRequest, ModelError, Part,
    SAFETY_FINISH_REASONS, VertexClient, decode_inline, permanent,
};

impl VertexClient {
    pub(super) async fn generate_gemini(
        &self,
        model: &str,
        request: &ImageRequest,
    ) -> Result<ImageOutcome, ModelError> {
        let body = gemini_request(request);
        let samples = request.params.sample_count.unwrap_or(1).max(1);
        let calls = (0..samples).map(|_| async {
            let answer: GenerateContentResponse = self
                .call(
                    model,
                    "generateContent",
                    &body,
                    CallKind::Paid,
                    &request.share,
                )
                .await?;
            gemini_sample(answer)
        });
        let results = futures::future::join_all(calls).await;
        combine_gemini_samples(results)
    }
}

/// The `:generateContent` body of a Gemini image request. Gemini has no
/// negative prompt, seed or sample size parameters in the documented shape;
/// those job parameters are not sent.
pub(super) fn gemini_request(request: &ImageRequest) -> GenerateContentRequest {
    GenerateContentRequest {
        contents: vec![Content {
            role: Some("user".into()),
            parts: vec![Part {
                text: Some(request.prompt.clone()),
                inline_data: None,
            }],
        }],
        generation_config: Some(GenerationConfig {
            response_modalities: vec!["TEXT".into(), "IMAGE".into()],
            image_config: request
                .params
                .aspect_ratio
                .as_ref()
                .map(|ratio| ImageConfig {
                    aspect_ratio: Some(ratio.clone()),
                }),
        }),
        safety_settings: Vec::new(),
    }
}

/// What one Gemini call produced.
#[derive(Debug, Default, PartialEq)]
pub(super) struct GeminiSample {
    pub(super) images: Vec<GeneratedImage>,
    pub(super) reasons: Vec<String>,
}

pub(super) fn with_message(code: &str, message: Option<&str>) -> String {
    match message.map(str::trim) {
        Some(message) if !message.is_empty() => format!("{code}: {message}"),
        _ => code.to_string(),
    }
}

/// Images of one Gemini answer, or why it has none. An answer without an
/// image and without a safety reason (the model only wrote text) is a
/// permanent `no_image` error that quotes what it said.
pub(super) fn gemini_sample(answer: GenerateContentResponse) -> Result<GeminiSample, ModelError> {
    let mut sample = GeminiSample::default();
    if let Some(feedback) = &answer.prompt_feedback
        && let Some(reason) = &feedback.block_reason
    {
        sample.reasons.push(with_message(
            reason,
            feedback.block_reason_message.as_deref(),
        ));
    }
    let mut finish_reasons = Vec::new();
    let mut text = String::new();
    for candidate in answer.candidates {
        let before = sample.images.len();
        for part in candidate.content.into_iter().flat_map(|c| c.parts) {
            if let Some(blob) = part.inline_data
                && blob.mime_type.starts_with("image/")
            {
                sample.images.push(GeneratedImage {
                    data: decode_inline(&blob.data, "Gemini image")?,
                    mime_type: blob.mime_type,
                });
            } else if let Some(part_text) = part.text {
                text.push_str(&part_text);
            }
        }
        let Some(reason) = candidate.finish_reason else {
            continue;
        };
        if sample.images.len() == before && SAFETY_FINISH_REASONS.contains(&reason.as_str()) {
            sample
                .reasons
                .push(with_message(&reason, candidate.finish_message.as_deref()));
        } else {
            finish_reasons.push(reason);
        }
    }
    if sample.images.is_empty() && sample.reasons.is_empty() {
        let finish = if finish_reasons.is_empty() {
            "none".to_string()
        } else {
            finish_reasons.join(", ")
        };
        let said: String = text.trim().chars().take(300).collect();
        return Err(permanent(
            "no_image",
            format!("Gemini answered without an image (finish reason {finish}): {said:?}"),
        ));
    }
    Ok(sample)
}

/// How much a failed sample's error weighs when one must speak for a job
/// that got no image at all: an unknown outcome first (it may be billed,
/// and must not be sent again), then a refusal (final), then a
/// misconfiguration, then transient trouble.
pub(super) fn severity(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Unknown => 3,
        ErrorClass::Permanent => 2,
        ErrorClass::Misconfigured => 1,
        ErrorClass::Transient => 0,
    }
}

/// Joins the answers of the N calls of one Gemini job. Images that came back
/// are kept whatever happened to the other samples: they were paid for, and
/// calling again would pay for them twice. The failed samples are listed
/// with the filtered ones (and counted as `in_doubt` when their outcome is
/// unknown). Without any image, the weightiest error speaks for the job.
pub(super) fn combine_gemini_samples(
    results: Vec<Result<GeminiSample, ModelError>>,
) -> Result<ImageOutcome, ModelError> {
    let mut images = Vec::new();
    let mut reasons = Vec::new();
    let mut in_doubt = 0;
    let mut worst: Option<ModelError> = None;
    for (n, result) in results.into_iter().enumerate() {
        match result {
            Ok(sample) => {
                images.extend(sample.images);
                reasons.extend(sample.reasons);
            }
            Err(e) => {
                reasons.push(format!("sample {n}: {e}"));
                if e.class == ErrorClass::Unknown {
                    in_doubt += 1;
                }
                if worst
                    .as_ref()
                    .is_none_or(|kept| severity(e.class) > severity(kept.class))
                {
                    worst = Some(e);
                }
            }
        }
    }
    if images.is_empty()
        && let Some(e) = worst
    {
        return Err(e);
    }
    Ok(if images.is_empty() {
        ImageOutcome::Filtered { reasons }
    } else {
        ImageOutcome::Images {
            images,
            filtered: reasons,
            in_doubt,
        }
    })
}
