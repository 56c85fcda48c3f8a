//! The REST face of intake: create jobs (`POST /v1/jobs`), read one
//! (`GET /v1/jobs/{id}`), review an image (`POST /v1/jobs/{id}:approve`,
//! `:reject`) and read the figures (`GET /v1/stats`). Every answer that is
//! not a success is `{"error": ...}` with its status; bad input is answered,
//! not recorded in `rejected`: the caller has the reason already.
//!
//! Every call carries an `x-api-key`, which names its tenant: no key or one
//! no tenant holds is 401, a disabled tenant's is 403, a body that names
//! another tenant is 403. A job of another tenant is 404 for every verb,
//! exactly as a job that does not exist, so ids tell nothing across
//! tenants.

use super::{Intake, Refused, Submitted, Unfinished};
use crate::domain::job::Job;
use crate::domain::tenant::Tenant;
use crate::domain::values::Verdict;
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
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The header a client sets to make `POST /v1/jobs` idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header that carries a tenant's API key.
pub const API_KEY: &str = "x-api-key";
/// The largest body of a review (`{"reason": "..."}`): a reason of
/// [`MAX_REASON_CHARS`] characters of up to four bytes, escaped.
const REVIEW_BODY_LIMIT: usize = 64 * 1024;

impl Intake {
    /// The tenant of a call, from its `x-api-key`: 401 without a key or
    /// with one no tenant holds, 403 for a disabled tenant.
    async fn caller(&self, headers: &HeaderMap) -> Result<Tenant, ApiError> {
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

    /// The job `id` if it is `tenant`'s; 404 otherwise, as if it did not
    /// exist.
    async fn tenant_job(&self, tenant: &Tenant, id: &str) -> Result<Job, ApiError> {
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
}

/// The API's routes: create, read and review jobs, and the figures.
pub(super) fn routes() -> Router<Arc<Intake>> {
    Router::new()
        .route("/v1/jobs", post(create_jobs))
        // The router matches whole segments only, so `{id}:approve` is one
        // parameter that the handler splits.
        .route("/v1/jobs/{id}", get(get_job).post(job_action))
        .route("/v1/stats", get(stats))
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
    let tenant = intake.caller(headers).await?;
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

async fn get_job(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let answer = async {
        let tenant = intake.caller(&headers).await?;
        job_json(&intake.tenant_job(&tenant, &id).await?)
    };
    answer.await.map_err(logged)
}

fn job_json(job: &Job) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(job)
        .map(Json)
        .map_err(|e| ApiError::from(Error::store("encoding a job", e, false)))
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
    crate::domain::job::Job::is_plausible_id(id).then_some((id, verdict))
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
    headers: HeaderMap,
    Path(segment): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let tenant = intake.caller(&headers).await.map_err(logged)?;
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
    intake.tenant_job(&tenant, id).await.map_err(logged)?;
    let job = intake
        .store
        .review_job(id, verdict, reason)
        .await
        .map_err(|e| logged(e.into()))?;
    tracing::info!(job_id = %id, tenant = %tenant.name(), verdict = %verdict, event = "job_reviewed", "job reviewed");
    job_json(&job).map_err(logged)
}

/// The caller's tenant's figures.
async fn stats(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
) -> Result<Json<Stats>, ApiError> {
    let tenant = intake.caller(&headers).await.map_err(logged)?;
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
    use std::time::Duration;

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
