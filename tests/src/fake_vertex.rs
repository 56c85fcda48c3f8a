//! A fake Vertex AI server for tests: the four REST calls asmr makes, with
//! the documented Vertex AI JSON shapes, on `127.0.0.1:0`.
//!
//! Tests point a [`shared::vertex::VertexConfig`] at [`FakeVertex::base_url`]
//! (or take [`FakeVertex::config`]) and drive the real client over real HTTP.
//! The fake is deliberately written from the documented JSON, not from the
//! client's wire types, so a mistake in those types cannot hide itself.
//!
//! What it does:
//! - requires `Authorization: Bearer <FakeOptions::token>`; anything else is
//!   a 401 `UNAUTHENTICATED` in Google's error envelope;
//! - counts every request that reaches it, per verb and per prompt, and
//!   records the bodies, so a test can assert "exactly one model call";
//! - injects faults: a requests-per-minute quota (429 `RESOURCE_EXHAUSTED`,
//!   optionally with `Retry-After`), a fixed latency, "fail the next N
//!   requests with status S" ([`FakeVertex::fail_next`]) and "slow down the
//!   next N requests" ([`FakeVertex::slow_next`]);
//! - obeys markers in the prompt: `[blocked]` → 400 `INVALID_ARGUMENT` with a
//!   support code; `[filtered]` → everything withheld by the safety filters
//!   (Imagen: only `raiFilteredReason`; Gemini: `promptFeedback.blockReason`;
//!   Veo: done with `raiMediaFilteredCount` 1 and no videos); `[partial]` →
//!   Imagen withholds the first sample only; `[image-safety]` → Gemini answers
//!   `finishReason: IMAGE_SAFETY` without an image; `[op-fails]` → the Veo
//!   operation ends with `error {code: 3}`; `[never-done]` → it never ends;
//! - finishes a Veo operation after [`FakeOptions::polls_until_done`] polls
//!   and, as Veo does, writes `sample_{n}.mp4` under a timestamped sub-folder
//!   of the request's `storageUri` through [`FakeOptions::objects`]
//!   (content: `shared::placeholder::mp4`), then returns their `gs://` URIs.
//!   Images come back inline: a valid 1×1 PNG ([`PNG_1X1`]).
//! - answers a read of a publisher model
//!   (`GET /v1/publishers/google/models/{model}`, the free call `asmr
//!   doctor` makes), 403 or 404 for a model [`FakeVertex::refuse_model`]
//!   names, and Resource Manager's `getIamPolicy` with the policy
//!   [`FakeVertex::set_iam_policy`] gave;
//! - checks the first frame of an image-to-video submit as Vertex AI does
//!   (`instances[0].image`: a `gs://bucket/object` `gcsUri` and a `mimeType`
//!   of `image/png` or `image/jpeg`; anything else is a 400
//!   `INVALID_ARGUMENT`) and records it ([`FakeVertex::first_frames`]).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};
use shared::domain::gs_uri::GsUri;
use shared::objects::ObjectStore;
use shared::vertex::{RetryPolicy, VertexConfig};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The token [`FakeOptions::default`] expects.
pub const FAKE_TOKEN: &str = "fake-vertex-token";

/// The project of [`FakeVertex::config`].
pub const FAKE_PROJECT: &str = "asmr-test";

/// The location of [`FakeVertex::config`].
pub const FAKE_LOCATION: &str = "us-central1";

/// A valid 1×1 RGBA PNG: every image the fake returns.
pub const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xd8, 0x72, 0xe3, 0xc5,
    0x7f, 0x00, 0x08, 0x2c, 0x03, 0x74, 0x71, 0xd8, 0xa6, 0x6e, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Google's message for a prompt its safety filters refuse; tests look for
/// the support code.
pub const BLOCKED_MESSAGE: &str = "Image generation failed with the following error: The prompt could not be submitted. This prompt contains sensitive words that violate Google's Responsible AI practices. Try rephrasing the prompt. If you think this was an error, send feedback. Support codes: 61493863";

/// The reason the fake gives for a withheld image or video.
pub const FILTERED_REASON: &str = "The output was filtered out because it violated Google's Responsible AI practices. Try rephrasing the prompt. Support codes: 58061214";

/// The message of a `[op-fails]` operation.
pub const OP_FAILED_MESSAGE: &str =
    "The video could not be generated: the request was invalid (fake failure).";

/// The four Vertex AI calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Imagen `:predict`.
    Predict,
    /// Gemini `:generateContent`.
    GenerateContent,
    /// Veo `:predictLongRunning`.
    PredictLongRunning,
    /// Veo `:fetchPredictOperation`.
    FetchPredictOperation,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 4] = [
        Verb::Predict,
        Verb::GenerateContent,
        Verb::PredictLongRunning,
        Verb::FetchPredictOperation,
    ];

    /// The name after the `:` in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Predict => "predict",
            Verb::GenerateContent => "generateContent",
            Verb::PredictLongRunning => "predictLongRunning",
            Verb::FetchPredictOperation => "fetchPredictOperation",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Verb::ALL.into_iter().find(|v| v.as_str() == text)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the fake behaves from the start.
#[derive(Clone)]
pub struct FakeOptions {
    /// The bearer token every request must carry.
    pub token: String,
    /// Requests accepted per rolling [`FakeOptions::quota_window`]; beyond
    /// it, 429 `RESOURCE_EXHAUSTED`. `None`: no quota.
    pub requests_per_minute: Option<u32>,
    /// The window of the quota: a minute, as Vertex AI counts, or shorter so
    /// that a test can spend the quota many times over in seconds.
    pub quota_window: Duration,
    /// `Retry-After` sent with quota 429s (whole seconds, rounded up).
    pub quota_retry_after: Option<Duration>,
    /// Delay before every answer.
    pub latency: Duration,
    /// Polls after which a Veo operation is done (1: the first poll sees it
    /// done).
    pub polls_until_done: u32,
    /// Where finished Veo operations write their videos. The bucket must
    /// exist, as it must for Veo. `None`: the URIs are returned but nothing
    /// is written.
    pub objects: Option<Arc<dyn ObjectStore>>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            token: FAKE_TOKEN.into(),
            requests_per_minute: None,
            quota_window: Duration::from_secs(60),
            quota_retry_after: None,
            latency: Duration::ZERO,
            polls_until_done: 1,
            objects: None,
        }
    }
}

impl fmt::Debug for FakeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeOptions")
            .field("token", &self.token)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("quota_window", &self.quota_window)
            .field("quota_retry_after", &self.quota_retry_after)
            .field("latency", &self.latency)
            .field("polls_until_done", &self.polls_until_done)
            .field(
                "objects",
                &self.objects.as_ref().map(|objects| objects.describe()),
            )
            .finish()
    }
}

/// An error answer to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// HTTP status (the Google status name follows from it).
    pub status: u16,
    /// `Retry-After` to send, in whole seconds rounded up.
    pub retry_after: Option<Duration>,
    /// The envelope's message.
    pub message: String,
}

impl Fault {
    /// An answer with `status` and a generic message.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            message: format!("Injected failure ({} {}).", status, status_name(status)),
        }
    }

    /// The same fault with a `Retry-After`.
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

/// The first frame of an image-to-video submit, as the fake accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedFrame {
    /// `instances[0].image.gcsUri`.
    pub gcs_uri: String,
    /// `instances[0].image.mimeType`.
    pub mime_type: String,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The call.
    pub verb: Verb,
    /// The model id from the URL.
    pub model: String,
    /// The project from the URL.
    pub project: String,
    /// The location from the URL.
    pub location: String,
    /// The prompt in the body (none for polls).
    pub prompt: Option<String>,
    /// The JSON body (`null` if it was not JSON).
    pub body: Value,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Whether it got past authentication, injected faults and the quota:
    /// a call the model answers, and Google may bill.
    pub served: bool,
}

struct FakeOperation {
    model: String,
    prompt: String,
    sample_count: u32,
    aspect_ratio: Option<String>,
    storage_uri: Option<String>,
    polls: u32,
    folder: Option<String>,
    result: Option<Value>,
}

struct Inner {
    requests: Vec<RecordedRequest>,
    quota: VecDeque<Instant>,
    faults: VecDeque<Fault>,
    slow: VecDeque<Duration>,
    latency: Duration,
    operations: HashMap<String, FakeOperation>,
    written: Vec<String>,
    rate_limited: usize,
    frames: Vec<ReceivedFrame>,
    /// Permissions Resource Manager says the caller lacks.
    withheld: std::collections::BTreeSet<String>,
    /// `testIamPermissions` calls answered.
    permission_checks: usize,
    /// The buckets Cloud Storage was asked about, in order.
    buckets_checked: Vec<String>,
    /// Models whose publisher model read is refused, with the status.
    refused_models: BTreeMap<String, u16>,
    /// What `getIamPolicy` answers.
    iam_policy: Value,
}

struct Shared {
    options: FakeOptions,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked mid-request must not hide the real failure.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake Vertex AI server; stops when dropped.
pub struct FakeVertex {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeVertex {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeVertex {
    /// Starts a fake on a free loopback port.
    pub async fn start(options: FakeOptions) -> FakeVertex {
        let latency = options.latency;
        let shared = Arc::new(Shared {
            options,
            inner: Mutex::new(Inner {
                requests: Vec::new(),
                quota: VecDeque::new(),
                faults: VecDeque::new(),
                slow: VecDeque::new(),
                latency,
                operations: HashMap::new(),
                written: Vec::new(),
                rate_limited: 0,
                frames: Vec::new(),
                withheld: std::collections::BTreeSet::new(),
                permission_checks: 0,
                buckets_checked: Vec::new(),
                refused_models: BTreeMap::new(),
                iam_policy: json!({"version": 1, "etag": "BwYAAAAAAAA=", "bindings": []}),
            }),
        });
        let app = Router::new()
            .route(
                "/v1/projects/{project}/locations/{location}/publishers/google/models/{call}",
                post(handle),
            )
            .route(
                "/v1/publishers/google/models/{model}",
                axum::routing::get(publisher_model),
            )
            .route("/v1/projects/{call}", post(resource_manager))
            .route(
                "/storage/v1/b/{bucket}/iam/testPermissions",
                axum::routing::get(bucket_permissions),
            )
            .route("/tokeninfo", axum::routing::get(token_info))
            .fallback(|| async {
                google_error(404, "The requested URL was not found on this server.")
            })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the fake Vertex AI binds a loopback port");
        let addr = listener
            .local_addr()
            .expect("the fake Vertex AI knows its address");
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake Vertex AI stopped: {e}");
            }
        });
        FakeVertex {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, to use as the Vertex AI base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token requests must carry.
    pub fn token(&self) -> &str {
        &self.shared.options.token
    }

    /// A config aimed at this fake: its token, project [`FAKE_PROJECT`],
    /// location [`FAKE_LOCATION`], the default models, 3 retries with
    /// millisecond back-off, and a 5 s request timeout.
    pub fn config(&self) -> VertexConfig {
        VertexConfig {
            project: FAKE_PROJECT.into(),
            location: FAKE_LOCATION.into(),
            base_url: self.base_url(),
            image_model: shared::vertex::DEFAULT_IMAGE_MODEL.into(),
            video_model: shared::vertex::DEFAULT_VIDEO_MODEL.into(),
            retry: RetryPolicy {
                max_retries: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(20),
                quota_wait: Duration::from_millis(100),
            },
            request_timeout: Duration::from_secs(5),
            access_token: Some(self.shared.options.token.clone().into()),
            resource_manager_url: self.base_url(),
            oauth2_url: self.base_url(),
            storage_url: self.base_url(),
        }
    }

    /// Makes Resource Manager say the caller lacks `permission` (as with
    /// credentials that lack a role).
    pub fn withhold_permission(&self, permission: &str) {
        self.shared.lock().withheld.insert(permission.to_string());
    }

    /// Makes a read of `model`'s publisher model answer `status` (403:
    /// refused; 404: unknown).
    pub fn refuse_model(&self, model: &str, status: u16) {
        self.shared
            .lock()
            .refused_models
            .insert(model.to_string(), status);
    }

    /// What Resource Manager's `getIamPolicy` answers from now on.
    pub fn set_iam_policy(&self, policy: Value) {
        self.shared.lock().iam_policy = policy;
    }

    /// `testIamPermissions` calls answered so far (Resource Manager's and
    /// Cloud Storage's).
    pub fn permission_checks(&self) -> usize {
        self.shared.lock().permission_checks
    }

    /// The buckets Cloud Storage was asked about, in order.
    pub fn buckets_checked(&self) -> Vec<String> {
        self.shared.lock().buckets_checked.clone()
    }

    /// Requests received for `verb`, whatever the answer was.
    pub fn calls(&self, verb: Verb) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.verb == verb)
            .count()
    }

    /// Requests received, all verbs.
    pub fn total_calls(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Requests whose prompt is exactly `prompt` (generation calls only; a
    /// poll carries no prompt).
    pub fn calls_for_prompt(&self, prompt: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.prompt.as_deref() == Some(prompt))
            .count()
    }

    /// Requests whose prompt is exactly `prompt` that the model answered
    /// (not refused by the quota, a fault or authentication).
    pub fn served_for_prompt(&self, prompt: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.served && r.prompt.as_deref() == Some(prompt))
            .count()
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// The body of the last request for `verb`.
    pub fn last_body(&self, verb: Verb) -> Option<Value> {
        self.shared
            .lock()
            .requests
            .iter()
            .rev()
            .find(|r| r.verb == verb)
            .map(|r| r.body.clone())
    }

    /// `gs://` URIs of every video written so far.
    pub fn written_objects(&self) -> Vec<String> {
        self.shared.lock().written.clone()
    }

    /// Answers the next `n` requests (any verb) with `status` and a Google
    /// error body.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.fail_next_with(n, Fault::status(status));
    }

    /// Answers the next `n` requests (any verb) with `fault`.
    pub fn fail_next_with(&self, n: usize, fault: Fault) {
        let mut inner = self.shared.lock();
        inner.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Drops the faults not used yet.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Delays the answers to the next `n` requests by `delay` instead of the
    /// usual latency.
    pub fn slow_next(&self, n: usize, delay: Duration) {
        let mut inner = self.shared.lock();
        inner.slow.extend(std::iter::repeat_n(delay, n));
    }

    /// Changes the delay before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// The first frames of the image-to-video submits accepted so far,
    /// oldest first.
    pub fn first_frames(&self) -> Vec<ReceivedFrame> {
        self.shared.lock().frames.clone()
    }

    /// Requests answered 429 (over the quota or injected).
    pub fn rate_limited(&self) -> usize {
        self.shared.lock().rate_limited
    }
}

/// The canonical Google status name of an HTTP status.
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// `{"error": {"code", "message", "status"}}` with that status.
fn google_error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body =
        json!({"error": {"code": status, "message": message, "status": status_name(status)}});
    (code, axum::Json(body)).into_response()
}

fn with_retry_after(mut response: Response, delay: Option<Duration>) -> Response {
    if let Some(delay) = delay {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The prompt of a generation request.
fn prompt_of(verb: Verb, body: &Value) -> Option<String> {
    match verb {
        Verb::Predict | Verb::PredictLongRunning => {
            body["instances"][0]["prompt"].as_str().map(str::to_string)
        }
        Verb::GenerateContent => {
            let parts = body["contents"].as_array()?.iter().flat_map(|content| {
                content["parts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|part| part["text"].as_str())
            });
            Some(parts.collect::<Vec<_>>().join("\n"))
        }
        Verb::FetchPredictOperation => None,
    }
}

/// What to do with a request, decided when it arrives.
enum Decision {
    Unauthenticated,
    Fault(Fault),
    OverQuota,
    Serve,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((project, location, call)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((model, verb)) = call
        .split_once(':')
        .and_then(|(model, verb)| Some((model.to_string(), Verb::parse(verb)?)))
    else {
        return google_error(404, &format!("Unknown method in {call:?}."));
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let prompt = prompt_of(verb, &json);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let expected = format!("Bearer {}", shared.options.token);
    let (delay, decision) = {
        let mut inner = shared.lock();
        inner.requests.push(RecordedRequest {
            verb,
            model: model.clone(),
            project: project.clone(),
            location: location.clone(),
            prompt: prompt.clone(),
            body: json.clone(),
            authorization: authorization.clone(),
            served: false,
        });
        let delay = inner.slow.pop_front().unwrap_or(inner.latency);
        let decision = if authorization.as_deref() != Some(expected.as_str()) {
            Decision::Unauthenticated
        } else if let Some(fault) = inner.faults.pop_front() {
            if fault.status == 429 {
                inner.rate_limited += 1;
            }
            Decision::Fault(fault)
        } else if let Some(limit) = shared.options.requests_per_minute {
            let now = Instant::now();
            while inner
                .quota
                .front()
                .is_some_and(|t| now.duration_since(*t) >= shared.options.quota_window)
            {
                inner.quota.pop_front();
            }
            if inner.quota.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                inner.rate_limited += 1;
                Decision::OverQuota
            } else {
                inner.quota.push_back(now);
                Decision::Serve
            }
        } else {
            Decision::Serve
        };
        if let (Decision::Serve, Some(request)) = (&decision, inner.requests.last_mut()) {
            request.served = true;
        }
        (delay, decision)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match decision {
        Decision::Unauthenticated => google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ),
        Decision::Fault(fault) => with_retry_after(
            google_error(fault.status, &fault.message),
            fault.retry_after,
        ),
        Decision::OverQuota => with_retry_after(
            google_error(
                429,
                &format!(
                    "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base model: {model}. Please submit a quota increase request. https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai."
                ),
            ),
            shared.options.quota_retry_after,
        ),
        Decision::Serve => {
            if json.is_null() {
                return google_error(400, "Invalid JSON payload received.");
            }
            let prompt = prompt.unwrap_or_default();
            if verb != Verb::FetchPredictOperation && prompt.contains("[blocked]") {
                return google_error(400, BLOCKED_MESSAGE);
            }
            match verb {
                Verb::Predict => predict(&prompt, &json),
                Verb::GenerateContent => generate_content(&prompt, &model),
                Verb::PredictLongRunning => {
                    predict_long_running(&shared, &project, &location, &model, &prompt, &json)
                }
                Verb::FetchPredictOperation => fetch_operation(&shared, &model, &json).await,
            }
        }
    }
}

fn png_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(PNG_1X1)
}

fn sample_count(body: &Value) -> u32 {
    body["parameters"]["sampleCount"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
}

fn predict(prompt: &str, body: &Value) -> Response {
    let count = sample_count(body);
    let with_reason = body["parameters"]["includeRaiReason"].as_bool() == Some(true);
    let image = json!({"bytesBase64Encoded": png_base64(), "mimeType": "image/png"});
    let withheld =
        |n: u32| prompt.contains("[filtered]") || (prompt.contains("[partial]") && n == 0);
    let predictions: Vec<Value> = (0..count)
        .filter_map(|n| {
            if !withheld(n) {
                Some(image.clone())
            } else if with_reason {
                Some(json!({"raiFilteredReason": FILTERED_REASON}))
            } else {
                // Without includeRaiReason, Imagen just returns fewer images.
                None
            }
        })
        .collect();
    if predictions.is_empty() {
        return ok(json!({}));
    }
    ok(json!({ "predictions": predictions }))
}

fn generate_content(prompt: &str, model: &str) -> Response {
    let usage = json!({"promptTokenCount": 9, "totalTokenCount": 9});
    if prompt.contains("[filtered]") {
        return ok(json!({
            "promptFeedback": {
                "blockReason": "PROHIBITED_CONTENT",
                "blockReasonMessage": FILTERED_REASON
            },
            "usageMetadata": usage,
            "modelVersion": model
        }));
    }
    if prompt.contains("[image-safety]") {
        return ok(json!({
            "candidates": [{"finishReason": "IMAGE_SAFETY", "finishMessage": FILTERED_REASON}],
            "usageMetadata": usage,
            "modelVersion": model
        }));
    }
    ok(json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "Here is the image you asked for."},
                {"inlineData": {"mimeType": "image/png", "data": png_base64()}}
            ]},
            "finishReason": "STOP"
        }],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1290, "totalTokenCount": 1299},
        "modelVersion": model
    }))
}

fn predict_long_running(
    shared: &Shared,
    project: &str,
    location: &str,
    model: &str,
    prompt: &str,
    body: &Value,
) -> Response {
    let frame = match first_frame(&body["instances"][0]["image"]) {
        Ok(frame) => frame,
        Err(message) => return google_error(400, &message),
    };
    let id = uuid::Uuid::new_v4();
    let name = format!(
        "projects/{project}/locations/{location}/publishers/google/models/{model}/operations/{id}"
    );
    let parameters = &body["parameters"];
    let operation = FakeOperation {
        model: model.to_string(),
        prompt: prompt.to_string(),
        sample_count: sample_count(body),
        aspect_ratio: parameters["aspectRatio"].as_str().map(str::to_string),
        storage_uri: parameters["storageUri"].as_str().map(str::to_string),
        polls: 0,
        folder: None,
        result: None,
    };
    let mut inner = shared.lock();
    inner.operations.insert(name.clone(), operation);
    inner.frames.extend(frame);
    ok(json!({ "name": name }))
}

/// The first frame of a Veo instance, checked as Vertex AI checks it:
/// `None` for a text-to-video request, the message of a 400 for an image
/// Veo would refuse.
fn first_frame(image: &Value) -> Result<Option<ReceivedFrame>, String> {
    if image.is_null() {
        return Ok(None);
    }
    let gcs_uri = image["gcsUri"].as_str().unwrap_or_default();
    let mime_type = image["mimeType"].as_str().unwrap_or_default();
    let in_a_bucket = GsUri::parse(gcs_uri).is_some_and(|uri| !uri.name.is_empty());
    if !in_a_bucket {
        return Err(format!(
            "Invalid image: gcsUri {gcs_uri:?} is not a Cloud Storage object URI (gs://bucket/object)."
        ));
    }
    if !matches!(mime_type, "image/png" | "image/jpeg") {
        return Err(format!(
            "Unsupported image mime type {mime_type:?}. Supported types: image/jpeg, image/png."
        ));
    }
    Ok(Some(ReceivedFrame {
        gcs_uri: gcs_uri.to_string(),
        mime_type: mime_type.to_string(),
    }))
}

/// What a finishing operation needs, taken out of the lock.
struct Finishing {
    prompt: String,
    sample_count: u32,
    aspect_ratio: Option<String>,
    storage_uri: Option<String>,
    folder: String,
}

async fn fetch_operation(shared: &Shared, model: &str, body: &Value) -> Response {
    let Some(name) = body["operationName"].as_str().map(str::to_string) else {
        return google_error(400, "operationName is required.");
    };
    let finishing = {
        let mut inner = shared.lock();
        let Some(operation) = inner.operations.get_mut(&name) else {
            return google_error(404, &format!("Operation {name} not found."));
        };
        if operation.model != model {
            return google_error(
                400,
                &format!(
                    "Operation {name} belongs to model {}, not {model}.",
                    operation.model
                ),
            );
        }
        if let Some(result) = &operation.result {
            return ok(result.clone());
        }
        operation.polls += 1;
        if operation.prompt.contains("[never-done]")
            || operation.polls < shared.options.polls_until_done
        {
            return ok(json!({ "name": name }));
        }
        let folder = operation
            .folder
            .get_or_insert_with(|| chrono::Utc::now().format("%Y%m%d%H%M%S").to_string())
            .clone();
        Finishing {
            prompt: operation.prompt.clone(),
            sample_count: operation.sample_count,
            aspect_ratio: operation.aspect_ratio.clone(),
            storage_uri: operation.storage_uri.clone(),
            folder,
        }
    };
    let result = finish(shared, &name, finishing).await;
    let mut inner = shared.lock();
    let Some(operation) = inner.operations.get_mut(&name) else {
        return google_error(404, &format!("Operation {name} not found."));
    };
    ok(operation.result.get_or_insert(result).clone())
}

/// The final state of an operation; writes its videos.
async fn finish(shared: &Shared, name: &str, op: Finishing) -> Value {
    let failed = |code: i32, message: &str| json!({"name": name, "done": true, "error": {"code": code, "message": message}});
    let response_type = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse";
    if op.prompt.contains("[op-fails]") {
        return failed(3, OP_FAILED_MESSAGE);
    }
    if op.prompt.contains("[filtered]") {
        return json!({"name": name, "done": true, "response": {
            "@type": response_type,
            "raiMediaFilteredCount": 1,
            "raiMediaFilteredReasons": [FILTERED_REASON]
        }});
    }
    let Some(target) = op.storage_uri.as_deref().and_then(GsUri::parse) else {
        return failed(
            3,
            "Generated video is large, an output storage uri is required.",
        );
    };
    let prefix = if target.name.is_empty() || target.name.ends_with('/') {
        target.name.clone()
    } else {
        format!("{}/", target.name)
    };
    let mut videos = Vec::new();
    for n in 0..op.sample_count {
        let object = format!("{prefix}{}/sample_{n}.mp4", op.folder);
        let uri = format!("gs://{}/{object}", target.bucket);
        if let Some(objects) = &shared.options.objects {
            let content = shared::placeholder::mp4(
                &format!("fake veo {name} sample {n}"),
                op.aspect_ratio.as_deref(),
            );
            if let Err(e) = objects
                .write(
                    &target.bucket,
                    &object,
                    content,
                    "video/mp4",
                    &BTreeMap::new(),
                )
                .await
            {
                return failed(13, &format!("The fake could not write {uri}: {e}"));
            }
        }
        shared.lock().written.push(uri.clone());
        videos.push(json!({"gcsUri": uri, "mimeType": "video/mp4"}));
    }
    json!({"name": name, "done": true, "response": {
        "@type": response_type,
        "raiMediaFilteredCount": 0,
        "videos": videos
    }})
}

/// The email `tokeninfo` gives for the fake's token.
pub const FAKE_PRINCIPAL: &str = "tester@example.com";

/// Resource Manager's `POST /v1/projects/{project}:testIamPermissions`: the
/// permissions asked, less those withheld (`{}` when none is held, as
/// Google answers); and `:getIamPolicy`: the policy set, in the shape of
/// https://cloud.google.com/resource-manager/reference/rest/v1/Policy.
async fn resource_manager(
    State(shared): State<Arc<Shared>>,
    Path(call): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let verb = call.split_once(':').map(|(_, verb)| verb);
    if !matches!(verb, Some("testIamPermissions" | "getIamPolicy")) {
        return google_error(404, &format!("Unknown method in {call:?}."));
    }
    if !authenticated(&shared, &headers) {
        return google_error(401, "Request had invalid authentication credentials.");
    }
    if verb == Some("getIamPolicy") {
        return ok(shared.lock().iam_policy.clone());
    }
    let asked: Vec<String> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| serde_json::from_value(v["permissions"].clone()).ok())
        .unwrap_or_default();
    let mut inner = shared.lock();
    inner.permission_checks += 1;
    let held: Vec<&String> = asked
        .iter()
        .filter(|p| !inner.withheld.contains(*p))
        .collect();
    let body = if held.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ "permissions": held })
    };
    axum::Json(body).into_response()
}

/// Cloud Storage's `GET /storage/v1/b/{bucket}/iam/testPermissions
/// ?permissions=P&permissions=Q`: the permissions asked, less those
/// withheld, in the shape of
/// https://cloud.google.com/storage/docs/json_api/v1/buckets/testIamPermissions
/// (`permissions` left out when none is held).
async fn bucket_permissions(
    State(shared): State<Arc<Shared>>,
    Path(bucket): Path<String>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if !authenticated(&shared, &headers) {
        return google_error(401, "Request had invalid authentication credentials.");
    }
    let asked: Vec<String> =
        reqwest::Url::parse(&format!("http://q/?{}", query.unwrap_or_default()))
            .map(|url| {
                url.query_pairs()
                    .filter(|(key, _)| key == "permissions")
                    .map(|(_, value)| value.into_owned())
                    .collect()
            })
            .unwrap_or_default();
    let mut inner = shared.lock();
    inner.permission_checks += 1;
    inner.buckets_checked.push(bucket);
    let held: Vec<&String> = asked
        .iter()
        .filter(|p| !inner.withheld.contains(*p))
        .collect();
    let mut body = json!({ "kind": "storage#testIamPermissionsResponse" });
    if !held.is_empty() {
        body["permissions"] = json!(held);
    }
    axum::Json(body).into_response()
}

/// Whether a request carries the fake's token.
fn authenticated(shared: &Shared, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {}", shared.options.token);
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str())
}

/// `GET /v1/publishers/google/models/{model}`: the publisher model, in
/// the shape of
/// https://cloud.google.com/vertex-ai/docs/reference/rest/v1/publishers.models#PublisherModel
/// (`publishers.models.get`), or the status of [`FakeVertex::refuse_model`].
async fn publisher_model(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authenticated(&shared, &headers) {
        return google_error(401, "Request had invalid authentication credentials.");
    }
    match shared.lock().refused_models.get(&model) {
        Some(404) => {
            return google_error(
                404,
                &format!("Publisher Model `publishers/google/models/{model}` is not found."),
            );
        }
        Some(status) => {
            return google_error(
                *status,
                &format!(
                    "Permission 'aiplatform.models.get' denied on resource publishers/google/models/{model}."
                ),
            );
        }
        None => {}
    }
    ok(json!({
        "name": format!("publishers/google/models/{model}"),
        "versionId": "001",
        "openSourceCategory": "PROPRIETARY",
        "launchStage": "GA",
        "versionState": "VERSION_STATE_STABLE",
        "publisherModelTemplate": format!("projects/{{project}}/locations/{{location}}/publishers/google/models/{model}")
    }))
}

/// `GET /tokeninfo?access_token=...`: whose token it is.
async fn token_info(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if query.get("access_token") != Some(&shared.options.token) {
        return google_error(400, "invalid_token");
    }
    axum::Json(serde_json::json!({ "email": FAKE_PRINCIPAL, "expires_in": 3599 })).into_response()
}
