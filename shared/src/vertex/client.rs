//! [`VertexClient`]: the Vertex AI REST adapter of the image and video ports.
//!
//! One HTTP client for the four calls asmr makes. The model id picks the call:
//! `imagen-*` goes to `:predict`, `gemini-*` to `:generateContent` (one call
//! per sample, run concurrently, since a Gemini call yields one image), and
//! videos go to Veo's `:predictLongRunning` / `:fetchPredictOperation`.
//!
//! Each call retries transient failures in-call (see [`super::retry`]),
//! waits behind a model's spent quota with the others (see [`super::quota`]),
//! and
//! never retries a submit whose outcome is unknown (see
//! [`super::classify`]). Inline base64 is size-checked before it is decoded,
//! and response bodies are read with a cap, so a broken or hostile answer
//! cannot exhaust memory. This module reads no environment variables: all it
//! needs is in [`VertexConfig`].

use super::classify::{CallKind, Failure, classify};
use super::quota::{Outcome, PROBE_INTERVAL, QuotaGates};
use super::retry::{delay_before_retry, jitter, parse_retry_after};
use super::wire::{
    Content, FetchOperationRequest, GenerateContentRequest, GenerateContentResponse,
    GenerationConfig, ImageConfig, ImagenParameters, ImagenRequest, ImagenResponse, Operation,
    OperationRef, Part, PromptInstance, VeoInstance, VeoParameters, VeoRequest,
};
use super::{
    ErrorClass, GeneratedImage, ImageModel, ImageOutcome, ImageRequest, ModelError, OperationState,
    VertexConfig, VideoModel, VideoRequest,
};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::OnceCell;

/// OAuth scope of every Vertex AI call.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Largest base64 payload (one image or video) accepted inline, checked
/// before decoding. A 2K PNG is a few MiB; anything near this is broken.
pub const MAX_INLINE_BASE64: usize = 32 * 1024 * 1024;

/// Largest success body read: four inline samples plus their JSON.
const MAX_RESPONSE_BYTES: usize = 4 * MAX_INLINE_BASE64 + 1024 * 1024;

/// How much of an error body is read (Google's envelopes are a few hundred
/// bytes; the message keeps at most 2 KB of a foreign one).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Upper bound of the connect phase: a connect failure is certain not to
/// have sent anything, so it is worth telling apart from a request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Gemini finish reasons that mean "withheld by a safety or policy filter".
const SAFETY_FINISH_REASONS: &[&str] = &[
    "SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_RECITATION",
];

/// Where access tokens come from.
enum Auth {
    /// `VERTEX_ACCESS_TOKEN`, used as is.
    Static(String),
    /// Application Default Credentials, discovered on first use; the provider
    /// caches and refreshes tokens itself.
    Adc(OnceCell<Arc<dyn gcp_auth::TokenProvider>>),
}

/// Calls Vertex AI over REST; implements [`ImageModel`] and [`VideoModel`].
pub struct VertexClient {
    config: VertexConfig,
    base_url: String,
    http: reqwest::Client,
    auth: Auth,
    /// Calls wait here while a model's quota is spent.
    quota: QuotaGates,
}

/// What a failed request says about the model's quota: a 429 means it is
/// spent, for at least the server's `Retry-After`.
fn quota_outcome(failure: &Failure, policy: &super::RetryPolicy) -> Outcome {
    match failure {
        Failure::Status {
            status: 429,
            retry_after,
            ..
        } => Outcome::RateLimited(
            retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
                .unwrap_or_default()
                .min(policy.max_delay),
        ),
        _ => Outcome::Other,
    }
}

/// A call that waited its time behind a spent quota: transient, so the job
/// goes back to the queue as rate limited.
fn quota_spent(model: &str, waited: Duration) -> ModelError {
    ModelError {
        class: ErrorClass::Transient,
        code: "rate_limited".into(),
        message: format!(
            "the {model} quota is spent: it did not free within QUOTA_WAIT ({waited:?})"
        ),
        http_status: Some(429),
    }
}

impl fmt::Debug for VertexClient {
    // The token stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VertexClient")
            .field("base_url", &self.base_url)
            .field("project", &self.config.project)
            .field("location", &self.config.location)
            .field("retry", &self.config.retry)
            .field("request_timeout", &self.config.request_timeout)
            .field(
                "auth",
                &match self.auth {
                    Auth::Static(_) => "static token",
                    Auth::Adc(_) => "application default credentials",
                },
            )
            .finish()
    }
}

fn invalid_config(message: String) -> ModelError {
    ModelError {
        class: ErrorClass::Permanent,
        code: "invalid_config".into(),
        message,
        http_status: None,
    }
}

fn permanent(code: &str, message: String) -> ModelError {
    ModelError {
        class: ErrorClass::Permanent,
        code: code.into(),
        message,
        http_status: None,
    }
}

/// Whether `text` can sit in a URL path segment as is.
fn is_path_safe(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

impl VertexClient {
    /// A client for `config`. Fails when the config cannot work (empty
    /// project, a base URL that is not http(s), no request timeout); no
    /// network access happens here.
    pub fn new(config: VertexConfig) -> Result<Self, ModelError> {
        for (what, value) in [("project", &config.project), ("location", &config.location)] {
            if !is_path_safe(value) {
                return Err(invalid_config(format!(
                    "the Vertex AI {what} {value:?} is empty or has characters a URL path cannot hold"
                )));
            }
        }
        let base_url = config.base_url.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| {
            invalid_config(format!(
                "the Vertex AI base URL {base_url:?} is not a URL: {e}"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid_config(format!(
                "the Vertex AI base URL {base_url:?} is not http or https"
            )));
        }
        if config.request_timeout.is_zero() {
            return Err(invalid_config(
                "the Vertex AI request timeout must be longer than zero".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(MAX_CONNECT_TIMEOUT))
            .user_agent(concat!("asmr/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid_config(format!("the HTTP client could not be built: {e}")))?;
        let auth = match config.access_token.as_deref().map(str::trim) {
            Some(token) if !token.is_empty() => Auth::Static(token.to_string()),
            _ => Auth::Adc(OnceCell::new()),
        };
        let quota = QuotaGates::new(PROBE_INTERVAL.min(config.retry.base_delay));
        Ok(Self {
            config,
            base_url,
            http,
            auth,
            quota,
        })
    }

    /// The config this client was built with.
    pub fn config(&self) -> &VertexConfig {
        &self.config
    }

    /// Checks, before any job is taken, that calls can be authenticated: a
    /// static token is taken as it is; Application Default Credentials must
    /// yield a token. The error says how to fix what is missing.
    pub async fn preflight(&self) -> Result<(), ModelError> {
        match self.token().await {
            Ok(_) => Ok(()),
            Err(failure) => Err(classify(failure, CallKind::Free, SystemTime::now()).error),
        }
    }

    /// `{base}/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{verb}`.
    fn url(&self, model: &str, verb: &str) -> String {
        format!(
            "{}/v1/projects/{}/locations/{}/publishers/google/models/{model}:{verb}",
            self.base_url, self.config.project, self.config.location
        )
    }

    async fn token(&self) -> Result<String, Failure> {
        let cell = match &self.auth {
            Auth::Static(token) => return Ok(token.clone()),
            Auth::Adc(cell) => cell,
        };
        // Only a success is cached: credentials fixed later are picked up.
        let provider = cell
            .get_or_try_init(gcp_auth::provider)
            .await
            .map_err(|e| Failure::Credentials {
                missing: matches!(e, gcp_auth::Error::NoAuthMethod(..)),
                detail: describe_auth_error(&e),
            })?;
        let token =
            provider
                .token(&[CLOUD_PLATFORM_SCOPE])
                .await
                .map_err(|e| Failure::Credentials {
                    missing: false,
                    detail: describe_auth_error(&e),
                })?;
        Ok(token.as_str().to_string())
    }

    /// POSTs `body` to `model:verb`, retrying transient failures as the
    /// policy allows, and parses the answer as `R`.
    async fn call<B, R>(
        &self,
        model: &str,
        verb: &str,
        body: &B,
        kind: CallKind,
    ) -> Result<R, ModelError>
    where
        B: Serialize + Sync,
        R: DeserializeOwned,
    {
        let url = self.url(model, verb);
        let body = Bytes::from(serde_json::to_vec(body).map_err(|e| {
            permanent(
                "invalid_argument",
                format!("the {verb} request could not be encoded: {e}"),
            )
        })?);
        let policy = self.config.retry;
        let mut quota_deadline = tokio::time::Instant::now() + policy.quota_wait;
        let mut retry = 0;
        loop {
            let Some(ticket) = self.quota.enter(model, quota_deadline).await else {
                return Err(quota_spent(model, policy.quota_wait));
            };
            let probe = ticket.is_probe();
            let failure = match self.attempt(&url, body.clone()).await {
                Ok((status, bytes)) => {
                    ticket.settle(Outcome::Answered);
                    match serde_json::from_slice::<R>(&bytes) {
                        Ok(answer) => return Ok(answer),
                        Err(e) => Failure::BadBody {
                            status,
                            detail: format!("the {verb} answer is not the expected JSON: {e}"),
                        },
                    }
                }
                Err(failure) => {
                    ticket.settle(quota_outcome(&failure, &policy));
                    failure
                }
            };
            let classified = classify(failure, kind, SystemTime::now());
            let mut error = classified.error;
            let rate_limited = error.http_status == Some(429);
            if rate_limited {
                // One line per 429 Vertex AI answered, whatever the call
                // does next: the log-based metric of model 429s counts these.
                tracing::info!(
                    event = "model_rate_limited",
                    model,
                    verb,
                    probe,
                    "the model answered 429"
                );
            }
            // A probe of a spent quota that meets a 429 is the gate's try,
            // not this call's: the call waits on, up to QUOTA_WAIT.
            if error.class == ErrorClass::Transient && rate_limited && probe {
                continue;
            }
            if error.class != ErrorClass::Transient || retry >= policy.max_retries {
                if error.class == ErrorClass::Transient && retry > 0 {
                    let retries = if retry == 1 { "retry" } else { "retries" };
                    error.message = format!("{} (gave up after {retry} {retries})", error.message);
                }
                return Err(error);
            }
            if rate_limited {
                // The gate holds the retry until the quota frees, at least
                // as long as this call's own back-off would have.
                let own = delay_before_retry(&policy, retry, classified.retry_after, 1.0);
                quota_deadline = quota_deadline.max(tokio::time::Instant::now() + own);
                tracing::warn!(
                    model,
                    verb,
                    code = %error.code,
                    retry = retry + 1,
                    max_retries = policy.max_retries,
                    "model quota spent; retrying when it frees: {}",
                    error.message
                );
                retry += 1;
                continue;
            }
            let delay = delay_before_retry(&policy, retry, classified.retry_after, jitter());
            tracing::warn!(
                model,
                verb,
                code = %error.code,
                http_status = error.http_status,
                retry = retry + 1,
                max_retries = policy.max_retries,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "transient Vertex AI error; retrying: {}",
                error.message
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    /// One HTTP attempt: the status and body of a success, or what failed.
    async fn attempt(&self, url: &str, body: Bytes) -> Result<(u16, Bytes), Failure> {
        let token = self.token().await?;
        let response = self
            .http
            .post(url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport_failure)?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            let body = read_body(response, MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| match e {
                    BodyError::Transport(e) => transport_failure(e),
                    BodyError::TooLarge => Failure::BadBody {
                        status,
                        detail: format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
                    },
                })?;
            return Ok((status, body));
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The status decides; a body that cannot be read only loses detail.
        let body = read_prefix(response, MAX_ERROR_BODY_BYTES).await;
        Err(Failure::Status {
            status,
            retry_after,
            body,
        })
    }

    async fn generate_imagen(
        &self,
        model: &str,
        request: &ImageRequest,
    ) -> Result<ImageOutcome, ModelError> {
        let body = imagen_request(model, request)?;
        let sample_count = body.parameters.sample_count.unwrap_or(1);
        let answer: ImagenResponse = self.call(model, "predict", &body, CallKind::Paid).await?;
        imagen_outcome(answer, sample_count)
    }

    async fn generate_gemini(
        &self,
        model: &str,
        request: &ImageRequest,
    ) -> Result<ImageOutcome, ModelError> {
        let body = gemini_request(request);
        let samples = request.params.sample_count.unwrap_or(1).max(1);
        let calls = (0..samples).map(|_| async {
            let answer: GenerateContentResponse = self
                .call(model, "generateContent", &body, CallKind::Paid)
                .await?;
            gemini_sample(answer)
        });
        let results = futures::future::join_all(calls).await;
        combine_gemini_samples(results)
    }
}

fn describe_auth_error(e: &gcp_auth::Error) -> String {
    match e {
        gcp_auth::Error::NoAuthMethod(gcloud, metadata, file) => format!(
            "{e} (application default credentials file: {file}; metadata server: {metadata}; gcloud: {gcloud})"
        ),
        _ => error_chain(e),
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sorts a reqwest error by whether the request may have left.
fn transport_failure(e: reqwest::Error) -> Failure {
    let detail = error_chain(&e);
    if e.is_connect() {
        Failure::Connect(detail)
    } else if e.is_timeout() {
        Failure::Timeout(detail)
    } else {
        Failure::Lost(detail)
    }
}

enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Bytes, BodyError> {
    if response
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Reads at most `limit` bytes of the body, whatever goes wrong.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Bytes {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Bytes::from(body)
}

/// The model id of a request, or the configured default when it is blank.
fn model_id<'a>(requested: &'a str, default: &'a str) -> Result<&'a str, ModelError> {
    let model = match requested.trim() {
        "" => default.trim(),
        model => model,
    };
    if !is_path_safe(model) {
        return Err(permanent(
            "invalid_argument",
            format!("{model:?} is not a model id"),
        ));
    }
    Ok(model)
}

/// The `:predict` body of an Imagen request.
fn imagen_request(model: &str, request: &ImageRequest) -> Result<ImagenRequest, ModelError> {
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

/// Decodes one inline payload after checking its size.
fn decode_inline(data: &str, what: &str) -> Result<Bytes, ModelError> {
    if data.len() > MAX_INLINE_BASE64 {
        return Err(permanent(
            "response_too_large",
            format!(
                "the {what} is {} bytes of base64, more than the {MAX_INLINE_BASE64} accepted",
                data.len()
            ),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map(Bytes::from)
        .map_err(|e| {
            permanent(
                "bad_response",
                format!("the {what} is not valid base64: {e}"),
            )
        })
}

/// What an Imagen answer holds: images, or why there are none or fewer.
fn imagen_outcome(answer: ImagenResponse, sample_count: u32) -> Result<ImageOutcome, ModelError> {
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

/// The `:generateContent` body of a Gemini image request. Gemini has no
/// negative prompt, seed or sample size parameters in the documented shape;
/// those job parameters are not sent.
fn gemini_request(request: &ImageRequest) -> GenerateContentRequest {
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
struct GeminiSample {
    images: Vec<GeneratedImage>,
    reasons: Vec<String>,
}

fn with_message(code: &str, message: Option<&str>) -> String {
    match message.map(str::trim) {
        Some(message) if !message.is_empty() => format!("{code}: {message}"),
        _ => code.to_string(),
    }
}

/// Images of one Gemini answer, or why it has none. An answer without an
/// image and without a safety reason (the model only wrote text) is a
/// permanent `no_image` error that quotes what it said.
fn gemini_sample(answer: GenerateContentResponse) -> Result<GeminiSample, ModelError> {
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
fn severity(class: ErrorClass) -> u8 {
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
fn combine_gemini_samples(
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

/// The `:predictLongRunning` body of a video request.
fn veo_request(request: &VideoRequest) -> Result<VeoRequest, ModelError> {
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

/// The model id inside `projects/…/models/{MODEL}/operations/{id}`.
pub(crate) fn operation_model(operation_name: &str) -> Option<&str> {
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
fn operation_state(operation: Operation) -> Result<OperationState, ModelError> {
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
            (Some(uri), _) => videos.push(uri),
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

#[async_trait]
impl ImageModel for VertexClient {
    async fn generate(&self, request: &ImageRequest) -> Result<ImageOutcome, ModelError> {
        let model = model_id(&request.model, &self.config.image_model)?;
        if model.starts_with("imagen-") {
            self.generate_imagen(model, request).await
        } else if model.starts_with("gemini-") {
            self.generate_gemini(model, request).await
        } else {
            Err(permanent(
                "invalid_argument",
                format!("{model:?} is not an image model; use an imagen-* or gemini-* model"),
            ))
        }
    }
}

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
            .call(model, "predictLongRunning", &body, CallKind::Paid)
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
            .call(model, "fetchPredictOperation", &body, CallKind::Free)
            .await?;
        operation_state(operation)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::domain::job::JobParams;
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
        }
    }

    fn image_request(model: &str, params: JobParams) -> ImageRequest {
        ImageRequest {
            prompt: "soft brush on a microphone".into(),
            params,
            model: model.into(),
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
        } = combine_gemini_samples(vec![ok(), Err(transient.clone()), Err(unknown.clone())])
            .unwrap()
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
                    "gs://out/videos/job-1/20260501120000/sample_0.mp4".into(),
                    "gs://out/videos/job-1/20260501120000/sample_1.mp4".into(),
                ]
            }
        );
        let OperationState::Filtered { reasons } = state("veo_operation_filtered.json").unwrap()
        else {
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
                reasons: vec![
                    "2 videos were withheld by the safety filters without a reason".into()
                ]
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
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        let e = client.poll("operations/123").await.unwrap_err();
        assert_eq!(e.code, "invalid_operation_name");
    }
}
