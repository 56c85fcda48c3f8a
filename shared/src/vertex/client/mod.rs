//! [`VertexClient`]: the Vertex AI REST adapter of the image and video ports.
//!
//! One HTTP client for the four calls asmr makes; this module is its
//! transport (auth, the call with its retries and quota gate, bounded
//! bodies) and each API family maps its requests and answers in a module of
//! its own. The model id picks the call: `imagen-*` goes to `:predict`
//! (`imagen.rs`), `gemini-*` to `:generateContent` (`gemini.rs`: one call per
//! sample, run concurrently, since a Gemini call yields one image), and
//! videos go to Veo's `:predictLongRunning` / `:fetchPredictOperation`
//! (`veo.rs`).
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
use super::quota::{Outcome, PROBE_INTERVAL, QuotaGates, QuotaShare};
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

/// What calling the models needs on the project.
pub const MODEL_PERMISSIONS: [&str; 1] = ["aiplatform.endpoints.predict"];
/// The role that grants [`MODEL_PERMISSIONS`].
pub const MODEL_ROLE: &str = "roles/aiplatform.user";
/// What writing the outputs needs on the output bucket.
pub const BUCKET_PERMISSIONS: [&str; 1] = ["storage.objects.create"];
/// The role that grants [`BUCKET_PERMISSIONS`].
pub const BUCKET_ROLE: &str = "roles/storage.objectCreator";

/// The IAM member of the account `principal` names (as `tokeninfo` gives
/// it): a service account's, a person's, or a placeholder to fill in when
/// Google did not say whose the token is.
pub fn iam_member(principal: Option<&str>) -> String {
    match principal {
        Some(email) if email.ends_with(".gserviceaccount.com") => {
            format!("serviceAccount:{email}")
        }
        Some(email) => format!("user:{email}"),
        None => "user:YOU@example.com".to_string(),
    }
}

/// Of `asked`, the permissions a `testIamPermissions` answer does not list
/// as held (Resource Manager's and Cloud Storage's answers alike leave
/// `permissions` out when none is held).
pub fn lacking<'a>(asked: &[&'a str], answer: &serde_json::Value) -> Vec<&'a str> {
    let held: Vec<&str> = answer["permissions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .collect();
    asked
        .iter()
        .copied()
        .filter(|p| !held.contains(p))
        .collect()
}

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
        let auth = match config.access_token.as_ref().map(|t| t.expose().trim()) {
            Some(token) if !token.is_empty() => Auth::Static(token.to_string()),
            _ => Auth::Adc(OnceCell::new()),
        };
        let quota = QuotaGates::new(PROBE_INTERVAL.min(config.retry.base_delay)).jittered();
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

    /// Checks, before any job is taken, that calls can be authenticated (a
    /// static token is taken as it is; Application Default Credentials must
    /// yield a token), that the caller holds what calling the models needs
    /// (asked of Resource Manager), and, when the outputs go to `bucket`,
    /// what writing them there needs (asked of Cloud Storage); both
    /// questions are free. The error names the caller, each permission
    /// missing, the role that grants it and the command that grants it.
    /// When a service cannot answer, its check is passed with a warning:
    /// the call itself will tell.
    pub async fn preflight(&self, bucket: Option<&str>) -> Result<(), ModelError> {
        let token = match self.token().await {
            Ok(token) => token,
            Err(failure) => return Err(classify(failure, CallKind::Free, SystemTime::now()).error),
        };
        let project = &self.config.project;
        let on_project = format!(
            "{}/v1/projects/{project}:testIamPermissions",
            self.config.resource_manager_url.trim_end_matches('/'),
        );
        let on_bucket = bucket.map(|bucket| {
            format!(
                "{}/storage/v1/b/{bucket}/iam/testPermissions",
                self.config.storage_url.trim_end_matches('/'),
            )
        });
        let (models, outputs) = tokio::join!(
            self.missing_permissions(&token, &on_project, &MODEL_PERMISSIONS, false),
            async {
                match &on_bucket {
                    Some(url) => {
                        self.missing_permissions(&token, url, &BUCKET_PERMISSIONS, true)
                            .await
                    }
                    None => Ok(Vec::new()),
                }
            },
        );
        let missing = |asked: Result<Vec<String>, String>, of: &str| {
            asked.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not ask {of} which permissions this caller holds; going on");
                Vec::new()
            })
        };
        let models = missing(models, "Resource Manager");
        let outputs = missing(outputs, "Cloud Storage");
        if models.is_empty() && outputs.is_empty() {
            return Ok(());
        }
        let principal = self.principal(&token).await;
        let member = iam_member(principal.as_deref());
        let who = principal.unwrap_or_else(|| "this caller".into());
        let mut lacks = Vec::new();
        if !models.is_empty() {
            lacks.push(format!(
                "{} on project {project}, which calling the models needs; {MODEL_ROLE} grants it: gcloud projects add-iam-policy-binding {project} --member={member} --role={MODEL_ROLE}",
                models.join(", "),
            ));
        }
        if let (false, Some(bucket)) = (outputs.is_empty(), bucket) {
            lacks.push(format!(
                "{} on bucket gs://{bucket}, which writing the outputs needs; {BUCKET_ROLE} grants it: gcloud storage buckets add-iam-policy-binding gs://{bucket} --member={member} --role={BUCKET_ROLE}",
                outputs.join(", "),
            ));
        }
        Err(ModelError {
            class: ErrorClass::Misconfigured,
            code: "permission_denied".into(),
            message: format!("{who} lacks {}", lacks.join("; and lacks ")),
            http_status: None,
        })
    }

    /// Of `permissions`, those the caller lacks, as `url` answers a
    /// `testIamPermissions` call (which needs no permission itself and
    /// costs nothing): Resource Manager takes them in a JSON body, Cloud
    /// Storage in the query (`in_query`).
    async fn missing_permissions(
        &self,
        token: &str,
        url: &str,
        permissions: &[&str],
        in_query: bool,
    ) -> Result<Vec<String>, String> {
        let request = if in_query {
            let query: Vec<(&str, &str)> =
                permissions.iter().map(|p| ("permissions", *p)).collect();
            self.http.get(url).query(&query)
        } else {
            self.http
                .post(url)
                .json(&serde_json::json!({ "permissions": permissions }))
        };
        let response = request
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        Ok(lacking(permissions, &body)
            .into_iter()
            .map(str::to_string)
            .collect())
    }

    /// The email of the account `token` is for, when Google says
    /// (`tokeninfo`); `None` when it does not.
    async fn principal(&self, token: &str) -> Option<String> {
        let url = format!("{}/tokeninfo", self.config.oauth2_url.trim_end_matches('/'));
        let response = self
            .http
            .get(url)
            .query(&[("access_token", token)])
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: serde_json::Value = response.json().await.ok()?;
        body["email"].as_str().map(str::to_string)
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
        share: &QuotaShare,
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
            let Some(ticket) = self.quota.enter(model, share, quota_deadline).await else {
                return Err(quota_spent(model, policy.quota_wait));
            };
            let probe = ticket.is_probe();
            let failure = match self.attempt(&url, body.clone()).await {
                Ok((status, bytes)) => {
                    ticket.close(Outcome::Answered);
                    match serde_json::from_slice::<R>(&bytes) {
                        Ok(answer) => return Ok(answer),
                        Err(e) => Failure::BadBody {
                            status,
                            detail: format!("the {verb} answer is not the expected JSON: {e}"),
                        },
                    }
                }
                Err(failure) => {
                    ticket.close(quota_outcome(&failure, &policy));
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

mod gemini;
mod imagen;
#[cfg(test)]
mod tests;
mod veo;
