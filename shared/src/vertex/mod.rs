//! Vertex AI model clients: images through Imagen `:predict` or Gemini
//! `:generateContent` (chosen by model id), videos through Veo
//! `:predictLongRunning` + `:fetchPredictOperation`. Plain REST over
//! `reqwest`; every outcome is classified once, here, into what the stages
//! need to decide: done, filtered (final), or an error that is transient,
//! permanent, or of unknown outcome.

mod classify;
pub mod client;
mod quota;
pub use quota::QuotaShare;
mod retry;
pub mod wire;

use crate::domain::values::FirstFrame;
use crate::domain::values::JobParams;
use crate::redact::Secret;
use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;
use std::time::Duration;

/// QUOTA_WAIT's default: a minute of quota and a few probes.
pub const DEFAULT_QUOTA_WAIT: Duration = Duration::from_secs(75);

/// Retries inside one model call (`MAX_RETRIES`, `BASE_DELAY`, `MAX_DELAY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: u32,
    /// First back-off; doubles each retry, with jitter.
    pub base_delay: Duration,
    /// Longest back-off (also caps a `Retry-After`).
    pub max_delay: Duration,
    /// Longest wait behind a model's spent quota (QUOTA_WAIT) before the
    /// call gives its job back to the queue. Vertex AI counts quota per
    /// minute, so a little over a minute lets the window turn.
    pub quota_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(60),
            quota_wait: DEFAULT_QUOTA_WAIT,
        }
    }
}

/// Where and how to call Vertex AI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VertexConfig {
    /// Google Cloud project.
    pub project: String,
    /// Region, e.g. `us-central1`.
    pub location: String,
    /// `https://{location}-aiplatform.googleapis.com` unless overridden
    /// (VERTEX_BASE_URL), e.g. by a test server.
    pub base_url: String,
    /// Default image model (IMAGE_MODEL).
    pub image_model: String,
    /// Default video model (VIDEO_MODEL).
    pub video_model: String,
    /// In-call retries.
    pub retry: RetryPolicy,
    /// Timeout of each HTTP request.
    pub request_timeout: Duration,
    /// A static bearer token (VERTEX_ACCESS_TOKEN); `None` uses Application
    /// Default Credentials.
    pub access_token: Option<Secret>,
    /// Resource Manager, asked which permissions the caller holds
    /// (RESOURCE_MANAGER_BASE_URL, for tests).
    pub resource_manager_url: String,
    /// Google's OAuth 2.0 endpoint, asked whose token it is
    /// (OAUTH2_BASE_URL, for tests).
    pub oauth2_url: String,
    /// Cloud Storage's JSON API, asked which permissions the caller holds
    /// on the output bucket (STORAGE_BASE_URL, for tests).
    pub storage_url: String,
}

/// Resource Manager's endpoint.
pub const RESOURCE_MANAGER_URL: &str = "https://cloudresourcemanager.googleapis.com";
/// Google's OAuth 2.0 endpoint.
pub const OAUTH2_URL: &str = "https://oauth2.googleapis.com";
/// Cloud Storage's JSON API endpoint.
pub const STORAGE_URL: &str = "https://storage.googleapis.com";

/// The default image model.
pub const DEFAULT_IMAGE_MODEL: &str = "gemini-2.5-flash-image";
/// The default video model.
pub const DEFAULT_VIDEO_MODEL: &str = "veo-3.1-generate-001";

impl VertexConfig {
    /// The regional endpoint for `location`.
    pub fn default_base_url(location: &str) -> String {
        format!("https://{location}-aiplatform.googleapis.com")
    }
}

/// An image to make.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRequest {
    /// The prompt.
    pub prompt: String,
    /// Job parameters (aspect ratio, sample count, seed...).
    pub params: JobParams,
    /// The model id to call (the job's override or IMAGE_MODEL).
    pub model: String,
    /// Whose call it is, for its share of the model's quota.
    pub share: QuotaShare,
}

/// One generated image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedImage {
    /// `image/png`, `image/jpeg`...
    pub mime_type: String,
    /// The decoded bytes.
    pub data: Bytes,
}

/// What an image call produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageOutcome {
    /// Images (possibly fewer than asked; `filtered` says why some are missing).
    Images {
        /// The images.
        images: Vec<GeneratedImage>,
        /// Why samples are missing: withheld by the safety filters, or (for a
        /// model called once per sample) a request that failed.
        filtered: Vec<String>,
        /// Of the missing samples, those whose request went out with an
        /// unknown outcome: they may have been billed.
        in_doubt: u32,
    },
    /// Nothing came back: the prompt or every output was blocked. Final.
    Filtered {
        /// The reasons Google gave (`raiFilteredReason`, `blockReason`, `finishReason`).
        reasons: Vec<String>,
    },
}

/// A video to make.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoRequest {
    /// The prompt.
    pub prompt: String,
    /// Job parameters.
    pub params: JobParams,
    /// The model id to call.
    pub model: String,
    /// `gs://OUT/videos/{job_id}/`: where Veo writes the files.
    pub storage_uri: String,
    /// The image the video opens on (image-to-video), if any.
    pub first_frame: Option<FirstFrame>,
    /// Whose call it is, for its share of the model's quota.
    pub share: QuotaShare,
}

/// Where a Veo operation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationState {
    /// Still running.
    Running,
    /// Finished with videos (their `gs://` URIs).
    Done {
        /// Video URIs.
        videos: Vec<crate::domain::gs_uri::GsUri>,
    },
    /// Finished, but the safety filters withheld every video. Final.
    Filtered {
        /// `raiMediaFilteredReasons`.
        reasons: Vec<String>,
    },
    /// Finished with an error (`google.rpc.Status`).
    Failed {
        /// Numeric gRPC code.
        code: i32,
        /// The error's message as Vertex AI wrote it.
        message: String,
    },
}

/// How a failed model call should be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// 429, 5xx, a timeout or connection failure before the request was sent:
    /// trying again later can succeed.
    Transient,
    /// 400 INVALID_ARGUMENT (a blocked prompt), 404...: never retry.
    Permanent,
    /// A paid request may have reached Vertex (a time-out or a connection
    /// lost after sending, an unreadable answer): whether it was generated
    /// and billed is unknown. It is never sent again blindly.
    Unknown,
    /// The deployment cannot call the model (no credentials, 401, 403): not
    /// the job's fault. The job waits, without using up an attempt, until
    /// the configuration is fixed.
    Misconfigured,
}

/// A model call that failed, after in-call retries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ModelError {
    /// How to treat it.
    pub class: ErrorClass,
    /// A short code for the job record: `rate_limited`, `unavailable`,
    /// `invalid_argument`, `permission_denied`, `timeout`, `submit_unknown`...
    pub code: String,
    /// Google's message, support code included, or what went wrong.
    pub message: String,
    /// The HTTP status, when there was a response.
    pub http_status: Option<u16>,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.http_status {
            Some(status) => write!(f, "{} (HTTP {status}): {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

/// Makes images.
#[async_trait]
pub trait ImageModel: Send + Sync {
    /// Generates the images of one job (all samples).
    async fn generate(&self, request: &ImageRequest) -> Result<ImageOutcome, ModelError>;
}

/// Makes videos, as long-running operations.
#[async_trait]
pub trait VideoModel: Send + Sync {
    /// Submits a generation; returns the operation name.
    async fn submit(&self, request: &VideoRequest) -> Result<String, ModelError>;
    /// Asks where an operation stands.
    async fn poll(&self, operation_name: &str) -> Result<OperationState, ModelError>;
}
