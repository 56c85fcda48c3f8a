//! What a tenant does to its jobs over HTTP beyond creating them: list them
//! page by page (`GET /v1/jobs`), and act on one (`POST
//! /v1/jobs/{id}:approve`, `:reject`, `:promote`, `:cancel`, `:retry`),
//! through the same store operations and checks as the CLI. A job that
//! another action put back in the queue (a retry, a new video) is published
//! to its kind's topic at once; a publish that fails leaves it pending for
//! the janitor.

use super::Intake;
use super::api::{ApiError, api_body, job_json, logged};
use super::limits::Class;
use crate::domain::job::Job;
use crate::domain::review::PromoteOptions;
use crate::domain::values::{JobKind, JobStatus, RetryOptions, Verdict};
use crate::redact;
use crate::store::JobFilter;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;

/// The largest body of an action: a review reason of up to 2000 characters
/// of up to four bytes, escaped, or a promotion's parameters.
const ACTION_BODY_LIMIT: usize = 64 * 1024;
/// Jobs per page of `GET /v1/jobs` unless `limit` says otherwise.
const DEFAULT_PAGE: u32 = 50;
/// The most jobs a page holds.
const MAX_PAGE: u32 = 200;

/// What `POST /v1/jobs/{id}:{action}` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Review(Verdict),
    Promote,
    Cancel,
    Retry,
}

/// Every action, as its path suffix names it.
pub const ACTIONS: [&str; 5] = ["approve", "reject", "promote", "cancel", "retry"];

/// The action a `{id}:{action}` segment asks for, with the job id.
fn action_of(segment: &str) -> Option<(&str, Action)> {
    let (id, action) = segment.rsplit_once(':')?;
    let action = match action {
        "approve" => Action::Review(Verdict::Approved),
        "reject" => Action::Review(Verdict::Rejected),
        "promote" => Action::Promote,
        "cancel" => Action::Cancel,
        "retry" => Action::Retry,
        _ => return None,
    };
    Job::is_plausible_id(id).then_some((id, action))
}

/// The optional body of a review: why.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The optional body of a promotion.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    /// Video length in seconds (4, 6 or 8).
    #[serde(default)]
    duration_seconds: Option<u32>,
    /// Video parameters, `key=value`.
    #[serde(default)]
    params: Vec<String>,
    /// Placeholders instead of a paid call; unset: as the image was made.
    #[serde(default)]
    dry_run: Option<bool>,
    /// Make another video even if one was made of this image already.
    #[serde(default)]
    again: bool,
}

/// The optional body of a retry.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    /// Send again a job the safety filters stopped.
    #[serde(default)]
    include_filtered: bool,
    /// Pay again for a job whose last paid request has an unknown outcome.
    #[serde(default)]
    resubmit: bool,
}

/// An empty body, or a JSON object of the `shape` of `T` (not an array:
/// serde would read a struct from one).
fn body_of<T: DeserializeOwned + Default>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    // JSON's own whitespace only: a form feed is not an empty body.
    if body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(T::default());
    }
    let says = format!("the body must be empty or {shape}");
    let refused = |e: serde_json::Error| {
        ApiError::quoting(
            StatusCode::BAD_REQUEST,
            format!("{says}: {e}"),
            format!("{says}: {}", redact::json_error(&e)),
        )
    };
    match serde_json::from_slice::<Value>(body).map_err(refused)? {
        object @ Value::Object(_) => serde_json::from_value(object).map_err(refused),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{says}: not a JSON object"),
        )),
    }
}

pub(super) async fn job_action(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
    Path(segment): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    act(&intake, &headers, &segment, body).await.map_err(logged)
}

async fn act(
    intake: &Intake,
    headers: &HeaderMap,
    segment: &str,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    if !segment.contains(':') {
        // `POST /v1/jobs/{id}`: the path is a job's, which is only read.
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "a job is read with GET; POST /v1/jobs/{{id}}:ACTION acts on it, with ACTION one of {}",
                ACTIONS.join(", ")
            ),
        ));
    }
    let tenant = intake.caller_within(headers, Class::Writes).await?;
    let body = api_body(body, ACTION_BODY_LIMIT).await?;
    let Some((id, action)) = action_of(segment) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no such action: POST /v1/jobs/{{id}}:ACTION with ACTION one of {}, not {segment:?}",
                ACTIONS.join(", ")
            ),
        ));
    };
    let job = intake.tenant_job(&tenant, id).await?;
    let store = &intake.store;
    let changed = match action {
        Action::Review(verdict) => {
            let reason = body_of::<ReviewBody>(&body, "{\"reason\": \"...\"}")?.reason;
            let job = store.review_job(id, verdict, reason).await?;
            tracing::info!(job_id = %id, tenant = %tenant.name(), verdict = %verdict, event = "job_reviewed", "job reviewed");
            job
        }
        Action::Promote => {
            let asked: PromoteBody = body_of(&body, "{\"duration_seconds\": 8, \"again\": false}")?;
            let options = PromoteOptions {
                params: asked.params,
                duration: asked.duration_seconds,
                dry_run: asked.dry_run,
                again: asked.again,
                ..PromoteOptions::default()
            };
            let promoted = store.promote(job.id(), &options).await?;
            if promoted.created {
                intake.dispatch(&promoted.video).await;
            }
            return Ok(Json(json!({
                "image": job_json(&job)?.0,
                "video": job_json(&promoted.video)?.0,
                "created": promoted.created,
            })));
        }
        Action::Cancel => store.cancel_job(id).await?,
        Action::Retry => {
            let asked: RetryBody =
                body_of(&body, "{\"include_filtered\": false, \"resubmit\": false}")?;
            let options = RetryOptions {
                include_filtered: asked.include_filtered,
                resubmit: asked.resubmit,
            };
            let job = store.retry_job(id, options).await?;
            intake.dispatch(&job).await;
            job
        }
    };
    job_json(&changed)
}

/// The query of `GET /v1/jobs`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn parsed<T: std::str::FromStr>(name: &str, value: Option<&str>) -> Result<Option<T>, ApiError> {
    value
        .map(|text| {
            text.parse().map_err(|_| {
                ApiError::quoting(
                    StatusCode::BAD_REQUEST,
                    format!("{name} {text:?} is not one of the accepted values"),
                    format!("{name} is not one of the accepted values"),
                )
            })
        })
        .transpose()
}

/// The caller's jobs, newest first, a page at a time: `next` is the
/// `cursor` of the following page (`null` on the last).
pub(super) async fn list_tenant_jobs(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let answer = async {
        let tenant = intake.caller_within(&headers, Class::Reads).await?;
        let Query(query) = query.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the query must hold only status, kind, limit and cursor: {e}"),
            )
        })?;
        let limit = parsed::<u32>("limit", query.limit.as_deref())?.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("limit must be 1 to {MAX_PAGE}"),
            ));
        }
        let filter = JobFilter {
            status: parsed::<JobStatus>("status", query.status.as_deref())?,
            kind: parsed::<JobKind>("kind", query.kind.as_deref())?,
            tenant: Some(tenant.name().clone()),
            ..JobFilter::default()
        };
        let page = intake
            .store
            .page_of_jobs(&filter, limit, query.cursor.as_deref())
            .await?;
        let jobs = page
            .items
            .iter()
            .map(|job| job_json(job).map(|j| j.0))
            .collect::<Result<Vec<Value>, ApiError>>()?;
        Ok(Json(json!({ "jobs": jobs, "next": page.next })))
    };
    answer.await.map_err(logged)
}

#[cfg(test)]
mod tests {
    use super::super::api::OPENAPI;
    use super::super::testing::*;
    use super::*;
    use axum::http::Request;
    use std::collections::BTreeSet;
    use tower::ServiceExt;

    #[test]
    fn every_action_is_read_from_its_segment_and_nothing_else() {
        let id = Job::id_for_request("x");
        for action in ACTIONS {
            assert!(action_of(&format!("{id}:{action}")).is_some(), "{action}");
        }
        for bad in [format!("{id}:delete"), id.clone(), ":approve".into()] {
            assert_eq!(action_of(&bad), None, "{bad}");
        }
    }

    async fn get(app: &App, path: &str) -> (StatusCode, Value) {
        call(app, Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn post(app: &App, path: &str, body: &str) -> (StatusCode, Value) {
        let request = Request::post(path).body(Body::from(body.to_string()));
        call(app, request.unwrap()).await
    }

    #[tokio::test]
    async fn a_tenant_lists_its_own_jobs_page_by_page_and_filtered() {
        let app = app().await;
        post_jobs(&app, r#"{"kind": "image", "prompts": ["a", "b", "c"]}"#).await;
        post_jobs(&app, r#"{"kind": "video", "prompt": "d"}"#).await;
        // Another tenant's job never shows.
        let other = key_of(&app.store, "globex").await;
        let mut request = Request::post("/v1/jobs")
            .body(Body::from(r#"{"kind": "image", "prompt": "theirs"}"#))
            .unwrap();
        request
            .headers_mut()
            .insert("x-api-key", other.parse().unwrap());
        assert_eq!(call(&app, request).await.0, StatusCode::CREATED);

        let mut seen = Vec::new();
        let mut path = "/v1/jobs?limit=3".to_string();
        loop {
            let (status, page) = get(&app, &path).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            for job in page["jobs"].as_array().unwrap() {
                seen.push(job["prompt"].as_str().unwrap().to_string());
            }
            match page["next"].as_str() {
                Some(next) => {
                    let cursor: String = next
                        .bytes()
                        .map(|b| match b.is_ascii_alphanumeric() {
                            true => char::from(b).to_string(),
                            false => format!("%{b:02X}"),
                        })
                        .collect();
                    path = format!("/v1/jobs?limit=3&cursor={cursor}");
                }
                None => break,
            }
        }
        assert_eq!(
            seen,
            ["d", "c", "b", "a"],
            "newest first, each once, only mine"
        );
        let (_, videos) = get(&app, "/v1/jobs?kind=video&status=pending").await;
        assert_eq!(videos["jobs"].as_array().unwrap().len(), 1);
        for bad in [
            "/v1/jobs?limit=0",
            "/v1/jobs?limit=201",
            "/v1/jobs?status=lost",
            "/v1/jobs?kind=audio",
            "/v1/jobs?cursor=x",
            "/v1/jobs?order=asc",
        ] {
            let (status, answer) = get(&app, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
            assert!(answer["error"].is_string(), "{bad}: {answer}");
        }
    }

    #[tokio::test]
    async fn cancel_retry_and_promote_act_as_the_cli_does_and_queue_what_they_make() {
        let app = app().await;
        let (_, made) = post_jobs(&app, r#"{"kind": "image", "prompt": "foil"}"#).await;
        let id = made["jobs"][0]["id"].as_str().unwrap().to_string();
        let (status, job) = post(&app, &format!("/v1/jobs/{id}:cancel"), "").await;
        assert_eq!(
            (status, &job["status"]),
            (StatusCode::OK, &json!("cancelled")),
            "{job}"
        );
        let (status, again) = post(&app, &format!("/v1/jobs/{id}:cancel"), "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{again}");
        let queued_before = queued(&app, "asmr-image-jobs").len();
        let (status, job) = post(&app, &format!("/v1/jobs/{id}:retry"), "{}").await;
        assert_eq!(
            (status, &job["status"]),
            (StatusCode::OK, &json!("pending")),
            "{job}"
        );
        assert_eq!(queued(&app, "asmr-image-jobs").len(), queued_before + 1);
        for body in [r#"{"force": true}"#, "[]", "[true]", "null", "3", "\x0c"] {
            let (status, answer) = post(&app, &format!("/v1/jobs/{id}:retry"), body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        }

        let image = completed_image(&app, "sand").await;
        let (status, promoted) = post(
            &app,
            &format!("/v1/jobs/{image}:promote"),
            r#"{"duration_seconds": 8}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{promoted}");
        assert_eq!(
            (&promoted["created"], &promoted["video"]["kind"]),
            (&json!(true), &json!("video"))
        );
        assert_eq!(queued(&app, "asmr-video-jobs").len(), 1);
        let (_, twice) = post(&app, &format!("/v1/jobs/{image}:promote"), "").await;
        assert_eq!(
            (&twice["created"], &twice["video"]["id"]),
            (&json!(false), &promoted["video"]["id"])
        );
        assert_eq!(
            queued(&app, "asmr-video-jobs").len(),
            1,
            "nothing queued twice"
        );
    }

    /// The operations of the OpenAPI document, as (METHOD, path).
    fn documented() -> BTreeSet<(String, String)> {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.to_uppercase(), path.clone()))
            })
            .collect()
    }

    /// The document and the router agree: every documented operation is
    /// served (not the router's own 404 or 405), every action and route is
    /// documented, and a method a path does not have is refused.
    #[tokio::test]
    async fn the_openapi_document_and_the_router_name_the_same_operations() {
        let app = app().await;
        let image = completed_image(&app, "felt").await;
        let mut served = BTreeSet::new();
        for route in super::super::routes::ROUTES {
            for (method, path) in route.operations() {
                served.insert((method.to_string(), path));
            }
        }
        assert_eq!(documented(), served, "the document and the routes differ");
        for (method, path) in &served {
            let path = path.replace("{id}", &image);
            let request = Request::builder().method(method.as_str()).uri(&path);
            let response = app
                .router
                .clone()
                .oneshot(
                    request
                        .header("x-api-key", &app.key)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let routed = status != StatusCode::METHOD_NOT_ALLOWED
                && !(status == StatusCode::NOT_FOUND && body.is_empty());
            assert!(
                routed,
                "{method} {path}: {status}, not served by the router"
            );
        }
        for (method, path) in [
            ("DELETE", "/v1/jobs"),
            ("PUT", "/v1/stats"),
            ("POST", "/openapi.json"),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap();
            let status = app.router.clone().oneshot(request).await.unwrap().status();
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }

    /// Every example body in the document is accepted by the real handler.
    #[tokio::test]
    async fn the_documents_examples_are_accepted_by_the_handlers() {
        let app = app().await;
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let example = |name: &str| doc["definitions"][name]["example"].to_string();
        let (status, made) = post_jobs(&app, example("CreateJobs")).await;
        assert_eq!(status, StatusCode::CREATED, "{made}");
        let image = completed_image(&app, "linen").await;
        for (action, body) in [
            ("approve", example("Review")),
            ("reject", example("Review")),
            ("promote", example("Promote")),
        ] {
            let (status, answer) = post(&app, &format!("/v1/jobs/{image}:{action}"), &body).await;
            assert_eq!(status, StatusCode::OK, "{action} {body}: {answer}");
        }
        let id = made["jobs"][0]["id"].as_str().unwrap().to_string();
        post(&app, &format!("/v1/jobs/{id}:cancel"), "").await;
        let (status, answer) = post(&app, &format!("/v1/jobs/{id}:retry"), &example("Retry")).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
}
