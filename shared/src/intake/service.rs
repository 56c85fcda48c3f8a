//! The intake service's HTTP face and its binary entry point.
//!
//! - `POST /`: the Pub/Sub push of `asmr-requests`. A request that can never
//!   become jobs (undecodable, no kind, blank prompt...) is recorded in
//!   `rejected`, logged at ERROR with its message id and acknowledged; store
//!   or bus trouble is a 503 so Pub/Sub redelivers.
//! - `POST /v1/jobs`: the same request forms as a JSON body; `201` with the
//!   jobs, `200` when they all existed, `400` with `{"error"}` for bad
//!   input. Bad HTTP input is answered, not recorded in `rejected`: the
//!   caller has the reason already. The idempotency key is the body's
//!   `request_id`, else the `Idempotency-Key` header, else the body itself:
//!   a client that resends after a time-out or a 5xx creates nothing twice.
//!   `202` when the jobs are created but Pub/Sub did not take their
//!   messages (the janitor queues them); `503` with the jobs created so far
//!   when the store failed part-way (send the same request again).
//! - `GET /v1/jobs/{id}`: the job document, or `404`.
//! - `POST /v1/jobs/{id}:approve` and `POST /v1/jobs/{id}:reject`, with an
//!   optional body `{"reason": "..."}`: a reviewer's verdict on a completed
//!   or delivered image; `200` with the job document, `404` for a missing
//!   job, `409` with `{"error"}` when the job cannot be reviewed.
//! - `GET /v1/stats`: jobs per status and kind, downloads per status, and
//!   how many rejected requests are kept.

use super::promote::{AutoPromote, Promoter};
use super::{Submitted, Unfinished, submit};
use crate::ack::Handled;
use crate::bus::{Bus, Topics};
use crate::config::{Adapters, DryRunArgs, ServeArgs, StoreArgs};
use crate::domain::download::DownloadStatus;
use crate::domain::job::NewJob;
use crate::domain::values::Verdict;
use crate::domain::values::{JobKind, JobStatus};
use crate::error::Error;
use crate::identity::{IdTokens, PushGate};
use crate::push;
use crate::redact;
use crate::requests::{self, Envelope, MAX_BODY_BYTES};
use crate::server;
use crate::store::Store;
use crate::store::rejected::{Rejected, RejectedSource};
use crate::time::Timestamp;
use anyhow::Context;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one request may take: a batch of [`requests::MAX_BATCH`] jobs
/// on Firestore takes seconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the jobs of one request may take to create, inside
/// [`REQUEST_TIMEOUT`], so that a store that stops answering gets an answer
/// that names the jobs created so far rather than an empty 503.
const SUBMIT_DEADLINE: Duration = Duration::from_secs(90);
/// The header a client sets to make `POST /v1/jobs` idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Everything the intake service reads from the environment.
#[derive(Clone, Debug, Args)]
pub struct IntakeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Whether new jobs are dry runs.
    #[command(flatten)]
    pub dry_run: DryRunArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Which job events pushed to /v1/job-events make a video of their
    /// image: off, approved (an approval) or all (also the delivery of an
    /// image created with "chain": "video").
    #[arg(long, env = "AUTO_PROMOTE", value_enum, default_value = "off")]
    pub auto_promote: AutoPromote,
}

/// What the handlers share: where jobs go and how they are announced.
pub struct Intake {
    store: Store,
    bus: Arc<dyn Bus>,
    topics: Topics,
    dry_run: bool,
    promoter: Arc<Promoter>,
    /// Verifies who calls the API, where the deployment names identities;
    /// the verified account scopes the caller's idempotency keys.
    callers: Option<Arc<IdTokens>>,
}

impl Intake {
    /// Intake over the adapters, publishing job messages on their bus;
    /// `dry_run` marks every new job, and `auto_promote` says which job
    /// events pushed to `/v1/job-events` make a video of their image.
    pub fn new(adapters: Adapters, dry_run: bool, auto_promote: AutoPromote) -> Self {
        let promoter = Arc::new(Promoter {
            store: adapters.store.clone(),
            bus: adapters.bus.clone(),
            topics: adapters.topics.clone(),
            mode: auto_promote,
        });
        Self {
            store: adapters.store,
            bus: adapters.bus,
            topics: adapters.topics,
            dry_run,
            promoter,
            callers: None,
        }
    }

    /// Intake that verifies the Google ID token of every API call that
    /// creates jobs with `callers`, and keeps each account's idempotency
    /// keys apart from every other's. `None` leaves callers unchecked, in
    /// one namespace (the emulators send no token).
    pub fn verifying_callers(mut self, callers: Option<Arc<IdTokens>>) -> Self {
        self.callers = callers;
        self
    }

    /// Whose idempotency keys a call's are: the verified account of its
    /// token, or the shared namespace where callers are not checked.
    async fn key_scope(&self, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
        let Some(callers) = &self.callers else {
            return Ok(None);
        };
        match callers.verify(headers, &[]).await {
            Ok(account) => Ok(Some(account)),
            Err(refused) => Err(ApiError::new(refused.status(), refused.to_string())),
        }
    }

    async fn submit(&self, jobs: Vec<NewJob>) -> Result<Submitted, Unfinished> {
        let deadline = tokio::time::Instant::now() + SUBMIT_DEADLINE;
        submit(
            &self.store,
            self.bus.as_ref(),
            &self.topics,
            jobs,
            Some(deadline),
        )
        .await
    }

    /// Records a request that can never become jobs and acknowledges it;
    /// if the record cannot be written, asks for a redelivery instead, so
    /// the request is not lost unseen. The record keeps `reason`, which may
    /// quote the request; the logs get `class`, which does not.
    async fn reject(
        &self,
        message_id: Option<&str>,
        attributes: BTreeMap<String, String>,
        body: &[u8],
        reason: String,
        class: String,
    ) -> Handled {
        let record = Rejected::new(
            RejectedSource::Pubsub,
            message_id,
            attributes,
            body,
            reason,
            Timestamp::now(),
        );
        let id = record.id.clone();
        match self.store.record_rejected(record).await {
            Ok(created) => {
                tracing::error!(
                    message_id = message_id.unwrap_or("-"),
                    rejected_id = %id,
                    reason = class,
                    redelivered = !created.created,
                    event = "request.rejected",
                    "request rejected and acknowledged"
                );
                Handled::Poison(class)
            }
            Err(e) => {
                tracing::warn!(
                    message_id = message_id.unwrap_or("-"),
                    reason = class,
                    error = %e,
                    "could not record a rejected request; asking for redelivery"
                );
                Handled::store_trouble(&e)
            }
        }
    }
}

/// The largest push body: a Pub/Sub message carrying a request of
/// [`MAX_BODY_BYTES`], grown by a third in base64, and its envelope. A
/// bigger push can only hold a bigger request: it is acknowledged as
/// poison and recorded, without being read further.
const PUSH_BODY_LIMIT: usize = MAX_BODY_BYTES / 3 * 4 + 64 * 1024;
/// The largest body of a review (`{"reason": "..."}`): a reason of
/// [`MAX_REASON_CHARS`] characters of up to four bytes, escaped.
const REVIEW_BODY_LIMIT: usize = 64 * 1024;

/// The service's routes, with `GET /healthz`; pushes from anyone (see
/// [`gated_router`]).
pub fn router(intake: Arc<Intake>) -> Router {
    gated_router(intake, PushGate::open())
}

/// The service's routes; the push routes (`POST /` and
/// `POST /v1/job-events`) admit only what `gate` admits. Each route reads
/// its body only up to its own limit ([`server::read_body`]).
pub fn gated_router(intake: Arc<Intake>, gate: PushGate) -> Router {
    let gate = Arc::new(gate);
    let app = Router::new()
        .route("/", server::push_route::<Intake>(&gate))
        .route("/v1/jobs", post(create_jobs))
        // The router matches whole segments only, so `{id}:approve` is one
        // parameter that the handler splits.
        .route("/v1/jobs/{id}", get(get_job).post(job_action))
        .route("/v1/stats", get(stats))
        .with_state(intake.clone())
        .route(
            "/v1/job-events",
            server::push_route::<Promoter>(&gate).with_state(intake.promoter.clone()),
        );
    server::with_basics(app, REQUEST_TIMEOUT)
}

impl server::Push for Intake {
    type Message = push::PushedMessage;

    const BODY_LIMIT: usize = PUSH_BODY_LIMIT;

    fn decode(&self, _headers: &HeaderMap, body: &Bytes) -> Result<push::PushedMessage, String> {
        push::decode(body).map_err(|poison| poison.0)
    }

    fn span(&self, delivery: &push::PushedMessage) -> tracing::Span {
        tracing::info_span!("request_message", message_id = %delivery.message_id)
    }

    async fn handle(&self, delivery: push::PushedMessage) -> Handled {
        let message_id = delivery.message_id.as_str();
        let envelope = Envelope {
            attributes: delivery.attributes.clone(),
            message_id: Some(message_id),
            dry_run: self.dry_run,
        };
        let reject = |reason: String, class: String| {
            self.reject(
                Some(message_id),
                delivery.attributes.clone(),
                &delivery.data,
                reason,
                class,
            )
        };
        let jobs = match requests::parse(&delivery.data, &envelope) {
            Ok(jobs) => jobs,
            Err(rejection) => return reject(rejection.reason, rejection.class).await,
        };
        match self.submit(jobs).await {
            Ok(submitted) => outcome(&submitted),
            Err(Unfinished {
                error: Error::Invalid(e),
                ..
            }) => reject(e.to_string(), e.class()).await,
            Err(Unfinished {
                error: e @ Error::KeyReused { .. },
                ..
            }) => {
                let class = "its request_id was used before for a different request".to_string();
                reject(e.to_string(), class).await
            }
            Err(unfinished) => Handled::store_trouble(&unfinished.error),
        }
    }

    /// A push that is not a Pub/Sub message is recorded like a rejected
    /// request before it is acknowledged.
    async fn poison(&self, body: &[u8], reason: String) -> Handled {
        // What refuses an envelope quotes none of it.
        self.reject(None, BTreeMap::new(), body, reason.clone(), reason)
            .await
    }
}

/// The acknowledgement of a submitted request: redelivery while a job is
/// not queued, since the redelivery is what publishes it again.
fn outcome(submitted: &Submitted) -> Handled {
    if let Some((job, e)) = submitted.publish_failure() {
        return Handled::Retry {
            rate_limited: false,
            reason: format!("job {} is created but not queued: {e}", job.id()),
        };
    }
    let created = submitted.created();
    let existing = submitted.existing();
    match created.is_empty() {
        true => Handled::Duplicate(format!("jobs exist already: {}", existing.join(", "))),
        false if existing.is_empty() => Handled::Done(format!("created {}", created.join(", "))),
        false => Handled::Done(format!(
            "created {}; existing {}",
            created.join(", "),
            existing.join(", ")
        )),
    }
}

/// An HTTP API error: a status and `{"error": ...}` (with the jobs, when
/// some were created before the failure).
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// What the log says instead of `message` when that quotes the
    /// request (see [`redact`]).
    class: Option<String>,
    jobs: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            class: None,
            jobs: None,
        }
    }

    /// A refusal whose `message` may quote the caller's text; the log
    /// says `class` instead.
    fn quoting(status: StatusCode, message: impl Into<String>, class: impl Into<String>) -> Self {
        Self {
            class: Some(class.into()),
            ..Self::new(status, message)
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Transition { .. } | Error::KeyReused { .. } => StatusCode::CONFLICT,
            e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match &e {
            Error::Invalid(invalid) => Self::quoting(status, e.to_string(), invalid.class()),
            Error::KeyReused { .. } => Self::quoting(
                status,
                e.to_string(),
                "an idempotency key was used before for a different request",
            ),
            _ => Self::new(status, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(jobs) = self.jobs {
            body["jobs"] = jobs;
        }
        (self.status, Json(body)).into_response()
    }
}

/// Logs what an API call ends in: a warning for the caller's mistakes, an
/// error for ours.
fn logged(e: ApiError) -> ApiError {
    let said = e.class.as_deref().unwrap_or(&e.message);
    let said = redact::truncated(said, redact::MAX_LOGGED_CHARS);
    if e.status.is_server_error() {
        tracing::error!(status = e.status.as_u16(), error = %said, "request failed");
    } else {
        tracing::warn!(status = e.status.as_u16(), error = %said, "request refused");
    }
    e
}

fn jobs_json(submitted: &Submitted) -> Value {
    submitted
        .jobs
        .iter()
        .map(|j| {
            json!({
                "id": j.job.id(),
                "kind": j.job.kind(),
                "status": j.job.status(),
                "created": j.created,
                "queued": !matches!(j.dispatch, super::Dispatch::Failed(_)),
            })
        })
        .collect()
}

/// Reads an API request's body up to `limit`; the answer when it cannot.
async fn api_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    server::read_body(body, limit).await.map_err(|e| {
        let status = match e {
            server::BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            server::BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
            server::BodyError::Broken(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, format!("the request body could not be read: {e}"))
    })
}

/// The idempotency key of an HTTP request without a `request_id`: the
/// `Idempotency-Key` header, else the body itself, so that a client that
/// resends after a time-out or a 5xx creates nothing twice.
fn idempotency_key(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x51c2_7e3a_09d4_4f6b_8a1e_c5b7_2d90_3f68);
    match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|key| !key.is_empty() && key.len() <= 255)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "the Idempotency-Key header must be 1 to 255 printable ASCII characters",
                    )
                })?;
            Ok(format!("key:{key}"))
        }
        None => Ok(format!(
            "body:{}",
            uuid::Uuid::new_v5(&NAMESPACE, body).simple()
        )),
    }
}

async fn create_jobs(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    create(&intake, &headers, body).await.map_err(logged)
}

async fn create(
    intake: &Intake,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = api_body(body, MAX_BODY_BYTES).await?;
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object: {\"prompt\": \"...\", \"kind\": \"image\"} or {\"kind\": \"video\", \"prompts\": [...]}",
        ));
    }
    let scope = intake.key_scope(headers).await?;
    let key = idempotency_key(headers, &body)?;
    let envelope = Envelope {
        attributes: BTreeMap::new(),
        message_id: Some(&key),
        dry_run: intake.dry_run,
    };
    let mut jobs = requests::parse(&body, &envelope).map_err(|rejection| {
        ApiError::quoting(StatusCode::BAD_REQUEST, rejection.reason, rejection.class)
    })?;
    for job in &mut jobs {
        job.key_scope.clone_from(&scope);
    }
    let submitted = match intake.submit(jobs).await {
        Ok(submitted) => submitted,
        Err(Unfinished {
            error: e @ (Error::Invalid(_) | Error::KeyReused { .. }),
            ..
        }) => return Err(e.into()),
        Err(unfinished) => {
            let created = unfinished.submitted.jobs.len();
            return Err(ApiError {
                class: None,
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "{created} of the {} jobs were created before the store failed ({}); send the same request again (same body, or the same Idempotency-Key): nothing is created twice",
                    unfinished.total, unfinished.error
                ),
                jobs: Some(jobs_json(&unfinished.submitted)),
            });
        }
    };
    tracing::info!(
        created = submitted.created().len(),
        existing = submitted.existing().len(),
        "jobs submitted"
    );
    let mut answer = json!({ "jobs": jobs_json(&submitted) });
    if let Some((_, e)) = submitted.publish_failure() {
        // The jobs exist and are pending; a pending job the janitor finds
        // idle is published again. The request need not be sent again.
        tracing::warn!(error = %e, "jobs created but not queued; the janitor will queue them");
        answer["note"] = json!(format!(
            "the jobs are created but some are not queued yet ({e}); they are queued automatically within minutes, or by sending the same request again"
        ));
        return Ok((StatusCode::ACCEPTED, Json(answer)));
    }
    let status = match submitted.created().is_empty() {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    Ok((status, Json(answer)))
}

/// Whether `id` could be a job id at all (they are hex; request-derived
/// ones too), so that no stray path, and no id Firestore reserves
/// (`__name__`), reaches the store.
fn plausible_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with("__")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn get_job(
    State(intake): State<Arc<Intake>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("job {id} not found"));
    if !plausible_job_id(&id) {
        return Err(not_found());
    }
    match intake.store.get_job(&id).await {
        Ok(Some(job)) => serde_json::to_value(&job)
            .map(Json)
            .map_err(|e| logged(ApiError::from(Error::store("encoding a job", e, false)))),
        Ok(None) => Err(not_found()),
        Err(e) => Err(logged(e.into())),
    }
}

/// The optional body of a review: why.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The verdict a `{id}:{action}` segment asks for, with the job id.
fn review_action(segment: &str) -> Option<(&str, Verdict)> {
    let (id, action) = segment.rsplit_once(':')?;
    let verdict = match action {
        "approve" => Verdict::Approved,
        "reject" => Verdict::Rejected,
        _ => return None,
    };
    plausible_job_id(id).then_some((id, verdict))
}

fn review_body(body: &[u8]) -> Result<ReviewBody, ApiError> {
    if body.trim_ascii().is_empty() {
        return Ok(ReviewBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let says = "the body must be empty or {\"reason\": \"...\"}";
        ApiError::quoting(
            StatusCode::BAD_REQUEST,
            format!("{says}: {e}"),
            format!("{says}: {}", redact::json_error(&e)),
        )
    })
}

async fn job_action(
    State(intake): State<Arc<Intake>>,
    Path(segment): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = api_body(body, REVIEW_BODY_LIMIT).await.map_err(logged)?;
    let Some((id, verdict)) = review_action(&segment) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no such action: POST /v1/jobs/{{id}}:approve or /v1/jobs/{{id}}:reject, not {segment:?}"
            ),
        ));
    };
    let reason = review_body(&body)?.reason;
    let job = intake
        .store
        .review_job(id, verdict, reason)
        .await
        .map_err(|e| logged(e.into()))?;
    tracing::info!(job_id = %id, verdict = %verdict, event = "job_reviewed", "job reviewed");
    serde_json::to_value(&job)
        .map(Json)
        .map_err(|e| logged(ApiError::from(Error::store("encoding a job", e, false))))
}

async fn stats(State(intake): State<Arc<Intake>>) -> Result<Json<Value>, ApiError> {
    let store = &intake.store;
    let (jobs, downloads, rejected, waiting) = tokio::try_join!(
        store.job_counts(),
        store.download_counts(),
        store.count_rejected(),
        store.waiting_counts()
    )
    .map_err(|e| logged(e.into()))?;
    let mut by_status = Map::new();
    for status in JobStatus::ALL {
        by_status.insert(status.as_str().into(), jobs.status(status).into());
    }
    by_status.insert("total".into(), jobs.total().into());
    let mut by_kind = Map::new();
    for kind in JobKind::ALL {
        let mut counts = Map::new();
        for status in JobStatus::ALL {
            counts.insert(status.as_str().into(), jobs.get(status, kind).into());
        }
        counts.insert("total".into(), jobs.kind(kind).into());
        by_kind.insert(kind.as_str().into(), counts.into());
    }
    let mut download_counts = Map::new();
    for status in DownloadStatus::ALL {
        download_counts.insert(status.as_str().into(), downloads.status(status).into());
    }
    download_counts.insert("total".into(), downloads.total().into());
    Ok(Json(json!({
        "jobs": by_status,
        "waiting": waiting,
        "jobs_by_kind": by_kind,
        "downloads": download_counts,
        "rejected": rejected,
    })))
}

/// The `intake` binary: serves on `$PORT` until SIGTERM.
pub async fn intake(args: IntakeArgs) -> anyhow::Result<()> {
    let topics = args.store.topics();
    tracing::info!(
        backend = ?args.store.backend,
        project = args.store.project.as_deref().unwrap_or("-"),
        collection_prefix = %args.store.collection_prefix,
        topic_prefix = %topics.prefix(),
        dry_run = args.dry_run.dry_run,
        auto_promote = ?args.auto_promote,
        "intake starting"
    );
    let adapters = args
        .store
        .connect()
        .await
        .context("connecting to the store and Pub/Sub")?;
    let gate = args.serve.identity.push_gate("intake");
    let intake = Intake::new(adapters, args.dry_run.dry_run, args.auto_promote)
        .verifying_callers(gate.id_tokens());
    server::serve_on(args.serve.port, gated_router(Arc::new(intake), gate)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::domain::job::Job;
    use crate::store::embedded::EmbeddedBackend;
    use axum::body::Body;
    use axum::http::Request;
    use base64::Engine;
    use tower::ServiceExt;

    struct App {
        router: Router,
        store: Store,
        bus: Arc<MemoryBus>,
    }

    async fn app() -> App {
        let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
        let bus = Arc::new(MemoryBus::new());
        for topic in Topics::default().all() {
            bus.ensure_topic(&topic).await.unwrap();
        }
        let adapters = Adapters {
            store: store.clone(),
            bus: bus.clone(),
            topics: Topics::default(),
        };
        let intake = Intake::new(adapters, true, AutoPromote::Off);
        App {
            router: router(Arc::new(intake)),
            store,
            bus,
        }
    }

    async fn call(app: &App, request: Request<Body>) -> (StatusCode, Value) {
        let response = app.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    fn envelope(message_id: &str, data: &str, attributes: &[(&str, &str)]) -> Vec<u8> {
        let attributes: BTreeMap<_, _> = attributes.iter().copied().collect();
        json!({
            "message": {
                "data": base64::engine::general_purpose::STANDARD.encode(data),
                "attributes": attributes,
                "messageId": message_id,
            },
            "subscription": "projects/p/subscriptions/asmr-requests-push",
        })
        .to_string()
        .into_bytes()
    }

    async fn push(app: &App, body: Vec<u8>) -> (StatusCode, Value) {
        call(app, Request::post("/").body(Body::from(body)).unwrap()).await
    }

    async fn post_jobs(app: &App, body: impl Into<Body>) -> (StatusCode, Value) {
        call(app, Request::post("/v1/jobs").body(body.into()).unwrap()).await
    }

    fn queued(app: &App, topic: &str) -> Vec<String> {
        app.bus.job_ids(topic)
    }

    #[tokio::test]
    async fn a_pushed_request_becomes_a_queued_job_once() {
        let app = app().await;
        let body = envelope("101", "Rain on a tin roof", &[("kind", "video")]);
        let (status, answer) = push(&app, body.clone()).await;
        assert_eq!(
            (status, &answer["outcome"]),
            (StatusCode::OK, &json!("done"))
        );
        let (status, answer) = push(&app, body).await;
        assert_eq!(
            (status, &answer["outcome"]),
            (StatusCode::OK, &json!("duplicate"))
        );
        let id = crate::domain::job::Job::id_for_request("101");
        let job = app.store.job(&id).await.unwrap();
        assert_eq!((job.kind(), job.dry_run()), (JobKind::Video, true));
        // The redelivery queued the still-pending job again; generators take
        // one of the two messages and acknowledge the other as a duplicate.
        assert_eq!(queued(&app, "asmr-video-jobs"), [id.clone(), id]);
        assert_eq!(app.store.job_counts().await.unwrap().total(), 1);
    }

    #[tokio::test]
    async fn poison_requests_are_recorded_and_acknowledged() {
        let app = app().await;
        // (push, message id, what the answer and the log say, what the
        // record keeps): the log names the mistake, the record quotes it.
        let cases: [(Vec<u8>, &str, &str, &str); 4] = [
            (
                envelope("201", "no kind here", &[]),
                "201",
                "kind is missing",
                "kind is missing",
            ),
            (
                envelope("202", "{\"prompt\": ", &[("kind", "image")]),
                "202",
                "not valid JSON: end-of-input error at line 1 column 11",
                "not valid JSON",
            ),
            (
                envelope("203", r#"{"prompt": "  ", "kind": "image"}"#, &[]),
                "203",
                "invalid prompt",
                "prompt: is empty",
            ),
            (
                b"not an envelope".to_vec(),
                "",
                "not a Pub/Sub push envelope: syntax error at line 1 column 2",
                "not a Pub/Sub push envelope",
            ),
        ];
        for (body, message_id, said, recorded) in cases {
            for _ in 0..2 {
                let (status, answer) = push(&app, body.clone()).await;
                assert_eq!(status, StatusCode::OK, "{answer}");
                assert_eq!(answer["outcome"], "poison");
                assert!(
                    answer["detail"].as_str().unwrap().contains(said),
                    "{answer}"
                );
            }
            if !message_id.is_empty() {
                let record = app.store.get_rejected(message_id).await.unwrap().unwrap();
                assert!(record.reason.contains(recorded), "{record:?}");
                assert_eq!(record.message_id.as_deref(), Some(message_id));
            }
        }
        assert_eq!(
            app.store.count_rejected().await.unwrap(),
            4,
            "one per message"
        );
        let broken = app.store.list_rejected(10, None).await.unwrap();
        let broken = broken
            .items
            .iter()
            .find(|r| r.message_id.is_none())
            .unwrap();
        assert_eq!(broken.body, "not an envelope");
        assert_eq!(app.store.job_counts().await.unwrap().total(), 0);
    }

    #[tokio::test]
    async fn a_failed_publish_is_redelivered_and_the_redelivery_queues_the_job() {
        let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
        let bus = Arc::new(MemoryBus::new()); // no topics yet
        let adapters = Adapters {
            store: store.clone(),
            bus: bus.clone(),
            topics: Topics::default(),
        };
        let intake = Intake::new(adapters, true, AutoPromote::Off);
        let app = App {
            router: router(Arc::new(intake)),
            store,
            bus,
        };
        let body = envelope("301", r#"{"kind": "image", "prompts": ["a", "b"]}"#, &[]);
        let (status, answer) = push(&app, body.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert_eq!(
            app.store
                .job_counts()
                .await
                .unwrap()
                .status(JobStatus::Pending),
            2
        );

        app.bus.ensure_topic("asmr-image-jobs").await.unwrap();
        let (status, answer) = push(&app, body).await;
        assert_eq!(
            (status, &answer["outcome"]),
            (StatusCode::OK, &json!("duplicate"))
        );
        let mut ids = queued(&app, "asmr-image-jobs");
        ids.sort();
        let mut want = vec![
            crate::domain::job::Job::id_for_request("301#0"),
            crate::domain::job::Job::id_for_request("301#1"),
        ];
        want.sort();
        assert_eq!(ids, want);
    }

    #[tokio::test]
    async fn the_http_api_creates_jobs_and_answers_repeats_with_200() {
        let app = app().await;
        let body = r#"{"kind": "image", "prompts": ["a", "b"], "request_id": "req-1"}"#;
        let (status, answer) = post_jobs(&app, body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let jobs = answer["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 2);
        for job in jobs {
            assert_eq!(
                (&job["kind"], &job["status"], &job["created"]),
                (&json!("image"), &json!("pending"), &json!(true))
            );
        }
        let (status, again) = post_jobs(&app, body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again["jobs"][1]["id"], jobs[1]["id"]);
        assert_eq!(again["jobs"][1]["created"], false);

        let id = jobs[0]["id"].as_str().unwrap();
        let (status, job) = call(
            &app,
            Request::get(format!("/v1/jobs/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!((status, &job["prompt"]), (StatusCode::OK, &json!("a")));
        assert_eq!(queued(&app, "asmr-image-jobs").len(), 4);
    }

    #[tokio::test]
    async fn the_http_api_refuses_bad_input_with_a_json_error() {
        let app = app().await;
        let check = async |body: Body, want: StatusCode, says: &str| {
            let (status, answer) = post_jobs(&app, body).await;
            assert_eq!(status, want, "{answer}");
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(error.contains(says), "{error:?} lacks {says:?}");
        };
        check(
            Body::from("{bad"),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        )
        .await;
        check(
            Body::from(r#"{"prompt": "x"}"#),
            StatusCode::BAD_REQUEST,
            "kind is missing",
        )
        .await;
        check(
            Body::from("just a prompt"),
            StatusCode::BAD_REQUEST,
            "must be a JSON object",
        )
        .await;
        check(
            Body::from(vec![b' '; MAX_BODY_BYTES + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "over the limit",
        )
        .await;
        assert_eq!(app.store.job_counts().await.unwrap().total(), 0);
        assert_eq!(app.store.count_rejected().await.unwrap(), 0);

        for path in ["/v1/jobs/nope", "/v1/jobs/a%2Fb"] {
            let (status, answer) =
                call(&app, Request::get(path).body(Body::empty()).unwrap()).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(answer["error"].as_str().unwrap().contains("not found"));
        }
    }

    /// An image job that went through a generator: completed with one PNG.
    async fn completed_image(app: &App, prompt: &str) -> String {
        let created = app
            .store
            .create_job(NewJob::new(prompt, JobKind::Image))
            .await
            .unwrap();
        let id = created.record.id().to_string();
        let lease = crate::domain::Lease::new("w", Duration::from_secs(60));
        app.store.claim_job(&id, &lease).await.unwrap();
        let output = format!("gs://out/images/{id}/0.png");
        app.store
            .complete_job(&id, "w", vec![output.parse().unwrap()])
            .await
            .unwrap();
        id
    }

    async fn review(app: &App, path: &str, body: &str) -> (StatusCode, Value) {
        let request = Request::post(path).body(Body::from(body.to_string()));
        call(app, request.unwrap()).await
    }

    #[tokio::test]
    async fn an_image_is_approved_or_rejected_over_http_with_an_optional_reason() {
        let app = app().await;
        let id = completed_image(&app, "soap cutting").await;
        let (status, job) = review(&app, &format!("/v1/jobs/{id}:approve"), "").await;
        assert_eq!(status, StatusCode::OK, "{job}");
        assert_eq!(job["review"]["verdict"], "approved");
        assert_eq!(job["verdict"], "approved");
        assert!(job["review"].get("reason").is_none());

        let body = r#"{"reason": "too dark"}"#;
        let (status, job) = review(&app, &format!("/v1/jobs/{id}:reject"), body).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        assert_eq!(
            (&job["review"]["verdict"], &job["review"]["reason"]),
            (&json!("rejected"), &json!("too dark"))
        );
        let (_, shown) = call(
            &app,
            Request::get(format!("/v1/jobs/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(shown, job, "the answer is the job document GET returns");
    }

    #[tokio::test]
    async fn a_review_of_a_missing_unfinished_or_video_job_is_refused_with_a_reason() {
        let app = app().await;
        let missing = Job::id_for_request("nobody");
        let (status, answer) = review(&app, &format!("/v1/jobs/{missing}:approve"), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

        let pending = app
            .store
            .create_job(NewJob::new("not yet", JobKind::Image))
            .await
            .unwrap()
            .record;
        let (status, answer) =
            review(&app, &format!("/v1/jobs/{}:approve", pending.id()), "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert_eq!(
            answer["error"],
            format!(
                "job {} is pending; only a completed or delivered image can be reviewed",
                pending.id()
            )
        );

        let video = app
            .store
            .create_job(NewJob::new("a clip", JobKind::Video))
            .await
            .unwrap()
            .record;
        let (status, answer) = review(&app, &format!("/v1/jobs/{}:reject", video.id()), "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("is a video; only images are approved or rejected"),
            "{answer}"
        );

        let image = completed_image(&app, "fine").await;
        for (path, body, want) in [
            (
                format!("/v1/jobs/{image}:promote"),
                "",
                StatusCode::NOT_FOUND,
            ),
            (format!("/v1/jobs/{image}"), "", StatusCode::NOT_FOUND),
            (
                format!("/v1/jobs/{image}:approve"),
                r#"{"why": "typo"}"#,
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (status, answer) = review(&app, &path, body).await;
            assert_eq!(status, want, "{path}: {answer}");
            assert!(answer["error"].is_string(), "{answer}");
        }
        assert!(app.store.job(&image).await.unwrap().reviewed().is_none());
    }

    #[tokio::test]
    async fn stats_count_jobs_by_status_and_kind_and_the_rejected() {
        let app = app().await;
        post_jobs(&app, r#"{"kind": "video", "prompts": ["a", "b"]}"#).await;
        post_jobs(&app, r#"{"kind": "image", "prompt": "c"}"#).await;
        push(&app, envelope("401", "no kind", &[])).await;
        let (status, stats) =
            call(&app, Request::get("/v1/stats").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(stats["jobs"]["pending"], 2 + 1);
        assert_eq!(stats["jobs"]["total"], 3);
        assert_eq!(stats["jobs_by_kind"]["video"]["pending"], 2);
        assert_eq!(stats["jobs_by_kind"]["image"]["total"], 1);
        assert_eq!(stats["downloads"]["total"], 0);
        assert_eq!(stats["rejected"], 1);
    }
}
