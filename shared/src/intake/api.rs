//! The REST face of intake: create jobs (`POST /v1/jobs`), read one
//! (`GET /v1/jobs/{id}`), list and act on them (see [`super::actions`]),
//! read the figures (`GET /v1/stats`) and the API's own description
//! (`GET /openapi.json`, from `api/openapi.json`). Every answer that is
//! not a success is `{"error": ...}` with its status; bad input is answered,
//! not recorded in `rejected`: the caller has the reason already.
//!
//! Every call carries an `x-api-key`, which names its tenant: no key or one
//! no tenant holds is 401, a disabled tenant's is 403, a body that names
//! another tenant is 403. A job of another tenant is 404 for every verb,
//! exactly as a job that does not exist, so ids tell nothing across
//! tenants.

use super::limits::{Admission, Class};
use super::{Intake, Refused, Submitted, Unfinished};
use crate::domain::job::Job;
use crate::domain::tenant::Tenant;
use crate::error::Error;
use crate::redact;
use crate::requests::{self, Envelope, MAX_BODY_BYTES};
use crate::server;
use crate::store::stats::Stats;
use crate::store::tenants::Scope;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use axum::Json;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The header a client sets to make `POST /v1/jobs` idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header that carries a tenant's API key.
pub const API_KEY: &str = "x-api-key";

impl Intake {
    /// The tenant of a call, from its `x-api-key`: 401 without a key or
    /// with one no tenant holds, 403 for a disabled tenant. A call through
    /// the gateway with a consumer's JWT is the tenant its claim names
    /// instead ([`super::gateway`]).
    pub(super) async fn caller(&self, headers: &HeaderMap) -> Result<Tenant, ApiError> {
        if let Some(vouched) = self.vouched_tenant(headers).await? {
            return vouched.map_err(|(status, message)| ApiError::new(status, message));
        }
        let key = headers
            .get(API_KEY)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|key| !key.is_empty());
        let Some(key) = key else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "send your tenant's API key in the x-api-key header",
            ));
        };
        match self.tenant_of_key(key).await {
            Ok(Ok(tenant)) => Ok(tenant),
            Ok(Err(refused @ Refused::Unknown(_))) => {
                Err(ApiError::new(StatusCode::UNAUTHORIZED, refused.reason()))
            }
            Ok(Err(refused @ Refused::Disabled(_))) => {
                Err(ApiError::new(StatusCode::FORBIDDEN, refused.reason()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The tenant of a call, as [`Intake::caller`], within its rate limit
    /// for `class`: 429 with `Retry-After` beyond it.
    pub(super) async fn caller_within(
        &self,
        headers: &HeaderMap,
        class: Class,
    ) -> Result<Tenant, ApiError> {
        let tenant = self.caller(headers).await?;
        match self.limits.admit(&self.store, tenant.name(), class).await? {
            Admission::Admitted => Ok(tenant),
            Admission::Limited { retry_after } => Err(ApiError {
                retry_after: Some(retry_after),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "tenant {} is over its {} per minute; try again in {} s",
                        tenant.name(),
                        class.as_str(),
                        retry_after.as_secs().max(1)
                    ),
                )
            }),
        }
    }

    /// The job `id` if it is `tenant`'s; 404 otherwise, as if it did not
    /// exist.
    pub(super) async fn tenant_job(&self, tenant: &Tenant, id: &str) -> Result<Job, ApiError> {
        let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("job {id} not found"));
        if !Job::is_plausible_id(id) {
            return Err(not_found());
        }
        match self.store.get_job(id).await? {
            Some(job) if job.tenant() == tenant.name() => Ok(job),
            _ => Err(not_found()),
        }
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

    /// Publishes `job` (pending again, or new) to its kind's topic; a
    /// failed publish leaves it pending, and the janitor queues it.
    pub(super) async fn dispatch(&self, job: &Job) {
        if let Err(e) =
            crate::bus::publish_job(self.bus.as_ref(), &self.topics, job, "intake").await
        {
            tracing::warn!(job_id = %job.id(), error = %e, "job not queued; the janitor will queue it");
        }
    }
}

/// The API's OpenAPI (Swagger 2.0) document, as `api/openapi.json` in the
/// repository holds it.
pub const OPENAPI: &str = include_str!("../../../api/openapi.json");

pub(super) async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// An HTTP API error: a status and `{"error": ...}` (with the jobs, when
/// some were created before the failure).
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
    /// What the log says instead of `message` when that quotes the
    /// request (see [`redact`]).
    class: Option<String>,
    jobs: Option<Value>,
    /// `Retry-After` of a 429.
    retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            class: None,
            jobs: None,
            retry_after: None,
        }
    }

    /// A refusal whose `message` may quote the caller's text; the log
    /// says `class` instead.
    pub(super) fn quoting(
        status: StatusCode,
        message: impl Into<String>,
        class: impl Into<String>,
    ) -> Self {
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
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            // The only path with a method it lacks is a job's: read-only.
            response.headers_mut().insert(
                axum::http::header::ALLOW,
                axum::http::HeaderValue::from_static("GET"),
            );
        }
        response
    }
}

/// Logs what an API call ends in: a warning for the caller's mistakes, an
/// error for ours.
pub(super) fn logged(e: ApiError) -> ApiError {
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
pub(super) async fn api_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
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

pub(super) async fn create_jobs(
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
    let tenant = intake.caller_within(headers, Class::Writes).await?;
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
        tenant: tenant.name().clone(),
        private_webhooks: intake.private_webhooks,
    };
    let mut jobs = requests::parse(&body, &envelope).map_err(|rejection| {
        let status = match rejection.other_tenant {
            true => StatusCode::FORBIDDEN,
            false => StatusCode::BAD_REQUEST,
        };
        ApiError::quoting(status, rejection.reason, rejection.class)
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
                retry_after: None,
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
        tenant = %tenant.name(),
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

pub(super) async fn get_job(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let answer = async {
        let tenant = intake.caller_within(&headers, Class::Reads).await?;
        job_json(&intake.tenant_job(&tenant, &id).await?)
    };
    answer.await.map_err(logged)
}

pub(super) fn job_json(job: &Job) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(job)
        .map(Json)
        .map_err(|e| ApiError::from(Error::store("encoding a job", e, false)))
}

/// The caller's tenant's figures.
pub(super) async fn stats(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
) -> Result<Json<Stats>, ApiError> {
    let tenant = intake
        .caller_within(&headers, Class::Reads)
        .await
        .map_err(logged)?;
    let scope = Scope::Tenant(tenant.name().clone());
    let stats = intake
        .store
        .stats_in(&scope)
        .await
        .map_err(|e| logged(e.into()))?;
    Ok(Json(stats))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::domain::job::{Job, NewJob};
    use crate::domain::values::JobKind;
    use axum::http::Request;
    use serde_json::json;

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
                format!("/v1/jobs/{image}:delete"),
                "",
                StatusCode::NOT_FOUND,
            ),
            (
                format!("/v1/jobs/{image}"),
                "",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
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
