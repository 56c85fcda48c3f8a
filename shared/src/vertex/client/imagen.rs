//! Imagen (`imagen-*`): one `:predict` call returns every sample.

use super::{
    CallKind, GeneratedImage, ImageOutcome, ImageRequest, ImagenParameters, ImagenRequest,
    ImagenResponse, ModelError, PromptInstance, VertexClient, decode_inline, permanent,
};

impl VertexClient {
    pub(super) async fn generate_imagen(
        &self,
        model: &str,
        request: &ImageRequest,
    ) -> Result<ImageOutcome, ModelError> {
        let body = imagen_request(model, request)?;
        let sample_count = body.parameters.sample_count.unwrap_or(1);
        let answer: ImagenResponse = self
            .call(model, "predict", &body, CallKind::Paid, &request.share)
            .await?;
        imagen_outcome(answer, sample_count)
    }
}

/// The `:predict` body of an Imagen request.
pub(super) fn imagen_request(
    model: &str,
    request: &ImageRequest,
) -> Result<ImagenRequest, ModelError> {
    let params = &request.params;
    let sample_image_size = match params.resolution.as_deref().map(str::trim) {
        None => None,
        Some(size) if size.eq_ignore_ascii_case("1K") || size.eq_ignore_ascii_case("2K") => {
            Some(size.to_ascii_uppercase())
        }
        Some(other) => {
            return Err(permanent(
                "invalid_argument",
                format!("image resolution {other:?} is not 1K or 2K"),
            ));
        }
    };
    Ok(ImagenRequest {
        instances: vec![PromptInstance {
            prompt: request.prompt.clone(),
        }],
        parameters: ImagenParameters {
            sample_count: Some(params.sample_count.unwrap_or(1)),
            aspect_ratio: params.aspect_ratio.clone(),
            negative_prompt: params.negative_prompt.clone(),
            seed: params.seed,
            // Imagen ignores a seed unless the watermark is off.
            add_watermark: params.seed.map(|_| false),
            // Prompt enhancement hurts the fast model on complex prompts.
            enhance_prompt: model.starts_with("imagen-4.0-fast-").then_some(false),
            include_rai_reason: Some(true),
            sample_image_size,
            ..ImagenParameters::default()
        },
    })
}

/// What an Imagen answer holds: images, or why there are none or fewer.
pub(super) fn imagen_outcome(
    answer: ImagenResponse,
    sample_count: u32,
) -> Result<ImageOutcome, ModelError> {
    let mut images = Vec::new();
    let mut reasons = Vec::new();
    for prediction in answer.predictions {
        if let Some(data) = &prediction.bytes_base64_encoded {
            images.push(GeneratedImage {
                data: decode_inline(data, "Imagen image")?,
                mime_type: prediction.mime_type.unwrap_or_else(|| "image/png".into()),
            });
        } else if let Some(uri) = &prediction.gcs_uri {
            return Err(permanent(
                "bad_response",
                format!(
                    "Imagen wrote {uri} instead of answering inline, although no storageUri was sent"
                ),
            ));
        } else if let Some(reason) = prediction.rai_filtered_reason {
            reasons.push(reason);
        }
        // Anything else (safety attribute entries) carries no image.
    }
    let accounted = images.len() + reasons.len();
    let expected = usize::try_from(sample_count).unwrap_or(usize::MAX);
    if accounted < expected {
        reasons.push(format!(
            "{} of {expected} images were withheld without a reason",
            expected - accounted
        ));
    }
    Ok(if images.is_empty() {
        ImageOutcome::Filtered { reasons }
    } else {
        ImageOutcome::Images {
            images,
            filtered: reasons,
            in_doubt: 0,
        }
    })
}
