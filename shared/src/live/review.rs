//! Review by clicking: the images a person can review, as cards with their
//! files, and the approve, reject and promote actions. Each action is the
//! store operation `asmr approve`, `asmr reject` and `asmr promote` call,
//! so the same rules hold (only a completed or delivered image is reviewed
//! or promoted; promoting an image twice makes one video).
//!
//! Writes are safe against other sites: an action must be JSON and carry
//! the `x-asmr-page` header. A form on another site can send neither
//! without the browser asking this server first (a CORS preflight), which
//! it never allows; an `Origin` that is not this page's is refused too.
//!
//! Each action is logged (`live_review`) with the job, the action, its
//! outcome and, in the cloud, the person Identity-Aware Proxy let through
//! (`by`); `asmr serve` on a laptop names no one.

use super::Live;
use crate::domain::destination::Target;
use crate::domain::job::Job;
use crate::domain::review::{Grounds, PromoteOptions};
use crate::domain::values::{JobKind, JobStatus, Verdict};
use crate::error::Error;
use crate::identity::Person;
use crate::store::JobFilter;
use crate::store::tenants::Scope;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

/// The header every action must carry, with this value.
pub const PAGE_HEADER: &str = "x-asmr-page";
/// The value of [`PAGE_HEADER`].
pub const PAGE_HEADER_VALUE: &str = "live";
/// Images listed per request of cards.
const CARDS_PER_PAGE: u32 = 200;
/// The longest reason accepted in an action's body, in bytes.
const BODY_LIMIT: usize = 16 * 1024;

/// One image as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Card {
    pub id: String,
    pub prompt: String,
    pub status: &'static str,
    /// `approved`, `rejected`, or none.
    pub verdict: Option<&'static str>,
    /// The reviewer's reason, when one was given.
    pub reason: Option<String>,
    /// Where the page fetches each delivered file that is on this machine.
    pub files: Vec<String>,
    /// The videos made from it.
    pub videos: Vec<String>,
}

impl Card {
    fn of(job: &Job) -> Self {
        let files = job
            .deliveries()
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d.destination, Target::File(_)))
            .map(|(n, _)| format!("/ui/files/{}/{n}", job.id()))
            .collect();
        Self {
            id: job.id().to_string(),
            prompt: job.prompt().to_string(),
            status: job.status().as_str(),
            verdict: job.verdict().map(Verdict::as_str),
            reason: job.reviewed().and_then(|r| r.reason.clone()),
            files,
            videos: job.children().to_vec(),
        }
    }
}

/// Whether a person can review `job` now.
fn reviewable(job: &Job) -> bool {
    job.kind() == JobKind::Image
        && matches!(job.status(), JobStatus::Completed | JobStatus::Delivered)
}

#[derive(Debug, Deserialize)]
pub(super) struct CardsQuery {
    #[serde(default)]
    after: Option<String>,
}

/// `GET /ui/cards`: reviewable images, newest first, a page at a time.
pub(super) async fn cards(
    State(live): State<Arc<Live>>,
    Query(query): Query<CardsQuery>,
) -> Response {
    let filter = JobFilter::default()
        .with_kind(Some(JobKind::Image))
        .with_tenant(tenant_of(&live.feed.scope));
    match live
        .feed
        .store
        .page_of_jobs(&filter, CARDS_PER_PAGE, query.after.as_deref())
        .await
    {
        Ok(page) => {
            let cards: Vec<Card> = page
                .items
                .iter()
                .filter(|j| reviewable(j))
                .map(Card::of)
                .collect();
            no_store(Json(json!({ "cards": cards, "next": page.next })).into_response())
        }
        Err(e) => failure(&e),
    }
}

/// `GET /ui/files/{id}/{n}`: the `n`-th delivered file of a job, when it
/// is a file on this machine. The path is the one the store recorded for
/// the delivery; the request names only the job and the number.
pub(super) async fn file(
    State(live): State<Arc<Live>>,
    Path((id, n)): Path<(String, usize)>,
) -> Response {
    let job = match job_in_scope(&live, &id).await {
        Ok(job) => job,
        Err(e) => return failure(&e),
    };
    let Some(Target::File(path)) = job.deliveries().get(n).map(|d| &d.destination) else {
        return (StatusCode::NOT_FOUND, "no such file on this machine").into_response();
    };
    match tokio::fs::read(path).await {
        Ok(bytes) => {
            let kind = content_type(path);
            let mut response = bytes.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            );
            response
        }
        Err(e) => (StatusCode::NOT_FOUND, format!("{}: {e}", path.display())).into_response(),
    }
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// What an action's body may say.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /ui/jobs/{id}/{action}`: approve, reject (with a reason) or
/// promote one image. Answers the card as it now is (and, for a
/// promotion, the video), or `{"error": ...}` with 400, 403, 404 or 409.
pub(super) async fn act(
    State(live): State<Arc<Live>>,
    Path((id, action)): Path<(String, String)>,
    person: Option<Extension<Person>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let by = person.map(|Extension(Person(email))| email);
    let response = act_as(&live, &id, &action, &headers, &body).await;
    tracing::info!(
        event = "live_review",
        job_id = %id,
        action = %action,
        by = by.as_deref().unwrap_or("-"),
        status = response.status().as_u16(),
        "a review action from the live page"
    );
    response
}

async fn act_as(live: &Live, id: &str, action: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Err(refusal) = same_page(headers) {
        return error(StatusCode::FORBIDDEN, &refusal);
    }
    if body.len() > BODY_LIMIT {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large");
    }
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(body) => body,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the body: {e}")),
        }
    };
    if let Err(e) = job_in_scope(live, id).await {
        return failure(&e);
    }
    let store = &live.feed.store;
    let outcome = match action {
        "approve" => store
            .review_job(id, Verdict::Approved, None)
            .await
            .map(|job| json!({ "card": Card::of(&job) })),
        "reject" => store
            .review_job(id, Verdict::Rejected, body.reason)
            .await
            .map(|job| json!({ "card": Card::of(&job) })),
        "promote" => {
            let options = PromoteOptions {
                params: Vec::new(),
                duration: None,
                dry_run: None,
                again: false,
                grounds: Grounds::Operator,
            };
            match store.promote(id, &options).await {
                Ok(promoted) => {
                    if promoted.created {
                        live.dispatch(&promoted.video).await;
                    }
                    Ok(json!({
                        "card": Card::of(&promoted.image),
                        "video": promoted.video.id(),
                        "created": promoted.created,
                    }))
                }
                Err(e) => Err(e),
            }
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no action {other:?}: approve, reject or promote"),
            );
        }
    };
    match outcome {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(e) => failure(&e),
    }
}

/// Refuses what a page of another site could have sent.
fn same_page(headers: &HeaderMap) -> Result<(), String> {
    let marked = headers
        .get(PAGE_HEADER)
        .is_some_and(|v| v.as_bytes() == PAGE_HEADER_VALUE.as_bytes());
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !marked || !json {
        return Err(format!(
            "an action is JSON with the {PAGE_HEADER}: {PAGE_HEADER_VALUE} header, as the live page sends it"
        ));
    }
    if let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        let origin = origin.to_str().unwrap_or_default();
        let host = host.to_str().unwrap_or_default();
        let own = origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host));
        if !own {
            return Err(format!("an action from another site ({origin})"));
        }
    }
    Ok(())
}

async fn job_in_scope(live: &Live, id: &str) -> Result<Job, Error> {
    let job = live.feed.store.job(id).await?;
    if live.feed.scope.covers(job.tenant()) {
        Ok(job)
    } else {
        Err(Error::NotFound {
            kind: "job",
            id: id.to_string(),
        })
    }
}

fn tenant_of(scope: &Scope) -> Option<crate::domain::tenant::TenantName> {
    match scope {
        Scope::Everyone => None,
        Scope::Tenant(name) => Some(name.clone()),
    }
}

fn failure(e: &Error) -> Response {
    let status = match e {
        Error::Invalid(_) => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Transition { .. } | Error::KeyReused { .. } | Error::Contention { .. } => {
            StatusCode::CONFLICT
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
}

fn error(status: StatusCode, message: &str) -> Response {
    no_store((status, Json(json!({ "error": message }))).into_response())
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
