//! Veo (`veo-*`): `:predictLongRunning` submits, `:fetchPredictOperation`
//! polls; the video lands in the bucket the request names.

use super::{
    CallKind, ErrorClass, FetchOperationRequest, ModelError, Operation, OperationRef,
    OperationState, VeoInstance, VeoParameters, VeoRequest, VertexClient, VideoModel, VideoRequest,
    is_path_safe, model_id, permanent,
};
use crate::domain::gs_uri::GsUri;
use crate::domain::values::FirstFrame;
use crate::vertex::QuotaShare;
use crate::vertex::wire::Media;
use async_trait::async_trait;

#[async_trait]
impl VideoModel for VertexClient {
    async fn submit(&self, request: &VideoRequest) -> Result<String, ModelError> {
        let model = model_id(&request.model, &self.config.video_model)?;
        if !model.starts_with("veo-") {
            return Err(permanent(
                "invalid_argument",
                format!("{model:?} is not a video model; use a veo-* model"),
            ));
        }
        let body = veo_request(request)?;
        let answer: OperationRef = self
            .call(
                model,
                "predictLongRunning",
                &body,
                CallKind::Paid,
                &request.share,
            )
            .await?;
        if answer.name.trim().is_empty() {
            return Err(ModelError {
                class: ErrorClass::Unknown,
                code: "submit_unknown".into(),
                message: "Vertex AI accepted the submit but returned no operation name".into(),
                http_status: None,
            });
        }
        Ok(answer.name)
    }

    async fn poll(&self, operation_name: &str) -> Result<OperationState, ModelError> {
        let model = operation_model(operation_name).ok_or_else(|| {
            permanent(
                "invalid_operation_name",
                format!(
                    "{operation_name:?} is not a projects/…/publishers/…/models/…/operations/… name"
                ),
            )
        })?;
        let body = FetchOperationRequest {
            operation_name: operation_name.trim().to_string(),
        };
        let operation: Operation = self
            .call(
                model,
                "fetchPredictOperation",
                &body,
                CallKind::Free,
                &QuotaShare::default(),
            )
            .await?;
        operation_state(operation)
    }
}

/// The `:predictLongRunning` body of a video request.
pub(super) fn veo_request(request: &VideoRequest) -> Result<VeoRequest, ModelError> {
    let storage_uri = request.storage_uri.trim();
    if !storage_uri.starts_with("gs://") || storage_uri.len() <= "gs://".len() {
        return Err(permanent(
            "invalid_argument",
            format!("the video storage URI {storage_uri:?} is not a gs:// prefix"),
        ));
    }
    // Veo appends its own sub-folder; without the slash it would be glued
    // onto the job's folder name.
    let storage_uri = if storage_uri.ends_with('/') {
        storage_uri.to_string()
    } else {
        format!("{storage_uri}/")
    };
    let params = &request.params;
    Ok(VeoRequest {
        instances: vec![VeoInstance {
            prompt: request.prompt.clone(),
            image: request.first_frame.as_ref().map(first_frame).transpose()?,
            ..VeoInstance::default()
        }],
        parameters: VeoParameters {
            storage_uri: Some(storage_uri),
            sample_count: Some(params.sample_count.unwrap_or(1)),
            duration_seconds: params.duration_seconds,
            aspect_ratio: params.aspect_ratio.clone(),
            resolution: params.resolution.clone(),
            generate_audio: params.generate_audio,
            negative_prompt: params.negative_prompt.clone(),
            seed: params.seed,
            ..VeoParameters::default()
        },
    })
}

/// `instances[0].image` of an image-to-video request: the first frame in
/// Cloud Storage, which Veo reads itself.
fn first_frame(frame: &FirstFrame) -> Result<Media, ModelError> {
    frame
        .validate()
        .map_err(|e| permanent("invalid_argument", format!("the first frame: {e}")))?;
    Ok(Media {
        gcs_uri: Some(frame.gcs_uri.clone()),
        mime_type: Some(frame.mime_type.clone()),
        ..Media::default()
    })
}

/// The model id inside `projects/…/models/{MODEL}/operations/{id}`.
pub(super) fn operation_model(operation_name: &str) -> Option<&str> {
    let segments: Vec<&str> = operation_name.trim().split('/').collect();
    match segments[..] {
        [
            "projects",
            project,
            "locations",
            location,
            "publishers",
            publisher,
            "models",
            model,
            "operations",
            id,
        ] if [project, location, publisher, id]
            .iter()
            .all(|s| !s.is_empty())
            && is_path_safe(model) =>
        {
            Some(model)
        }
        _ => None,
    }
}

/// Where a fetched operation stands.
pub(super) fn operation_state(operation: Operation) -> Result<OperationState, ModelError> {
    if operation.done != Some(true) {
        return Ok(OperationState::Running);
    }
    if let Some(status) = operation.error {
        return Ok(OperationState::Failed {
            code: status.code,
            message: status.message,
        });
    }
    let Some(response) = operation.response else {
        return Err(permanent(
            "bad_response",
            "the operation is done but has neither a response nor an error".into(),
        ));
    };
    let mut videos = Vec::new();
    for video in response.videos {
        match (video.gcs_uri, video.bytes_base64_encoded) {
            (Some(uri), _) => match GsUri::parse(&uri) {
                Some(uri) => videos.push(uri),
                None => {
                    return Err(permanent(
                        "bad_response",
                        format!("Veo returned a video at {uri:?}, which is not gs://bucket/object"),
                    ));
                }
            },
            (None, Some(_)) => {
                return Err(permanent(
                    "bad_response",
                    "Veo returned a video inline instead of writing it to the storage URI that was sent".into(),
                ));
            }
            (None, None) => {}
        }
    }
    if !videos.is_empty() {
        return Ok(OperationState::Done { videos });
    }
    let filtered = response.rai_media_filtered_count.unwrap_or(0);
    if filtered > 0 || !response.rai_media_filtered_reasons.is_empty() {
        let reasons = if response.rai_media_filtered_reasons.is_empty() {
            vec![format!(
                "{filtered} videos were withheld by the safety filters without a reason"
            )]
        } else {
            response.rai_media_filtered_reasons
        };
        return Ok(OperationState::Filtered { reasons });
    }
    Err(permanent(
        "no_video",
        "the operation is done but returned no videos and no filter reason".into(),
    ))
}
