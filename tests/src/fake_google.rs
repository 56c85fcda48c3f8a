//! A fake of the Google Cloud admin APIs `asmr doctor` reads and no
//! emulator speaks, on `127.0.0.1:0`, answering in their documented JSON
//! shapes (each handler and builder below names its reference page):
//! Service Usage's enabled services, Firestore's composite indexes, Cloud
//! Scheduler's jobs, Cloud Quotas' quota infos and Cloud Storage's bucket
//! notifications (fake-gcs-server answers 404 to `notificationConfigs`).
//!
//! Listings come in pages of [`PAGE`] items with a `nextPageToken`, as
//! Google's do, so a reader that stops after the first page is caught. A
//! test sets what each listing holds ([`FakeGoogle::change`]), can make an
//! API hang ([`Listings::stalled`]), and sees every request path
//! ([`FakeGoogle::requests`]).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Items per page of every listing.
pub const PAGE: usize = 5;

/// What the fake's listings hold; a test changes them at will.
#[derive(Clone, Debug, Default)]
pub struct Listings {
    /// Enabled services ([`service`]).
    pub services: Vec<Value>,
    /// Composite indexes of every collection group ([`index`]).
    pub indexes: Vec<Value>,
    /// Scheduler jobs of every location ([`scheduler_job`]).
    pub jobs: Vec<Value>,
    /// Quota infos of aiplatform.googleapis.com ([`quota_info`]).
    pub quota_infos: Vec<Value>,
    /// Notifications per bucket ([`notification`]); a bucket not here is 404.
    pub notifications: BTreeMap<String, Vec<Value>>,
    /// APIs that never answer: `serviceusage`, `firestore`,
    /// `cloudscheduler`, `cloudquotas`, `storage`.
    pub stalled: BTreeSet<&'static str>,
}

struct Shared {
    listings: Mutex<Listings>,
    requests: Mutex<Vec<String>>,
}

impl Shared {
    fn listings(&self) -> MutexGuard<'_, Listings> {
        self.listings.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake; stops when dropped.
pub struct FakeGoogle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Params = Query<HashMap<String, String>>;

impl FakeGoogle {
    /// Starts a fake holding `listings`.
    pub async fn start(listings: Listings) -> FakeGoogle {
        let shared = Arc::new(Shared {
            listings: Mutex::new(listings),
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/projects/{project}/services", get(services))
            .route(
                "/v1/projects/{project}/databases/{database}/collectionGroups/{group}/indexes",
                get(indexes),
            )
            .route(
                "/v1/projects/{project}/locations/{location}/jobs",
                get(jobs),
            )
            .route(
                "/v1/projects/{project}/locations/{location}/services/{service}/quotaInfos",
                get(quota_infos),
            )
            .route(
                "/storage/v1/b/{bucket}/notificationConfigs",
                get(notifications),
            )
            .fallback(|| async { error(404, "The requested URL was not found on this server.") })
            .layer(axum::middleware::from_fn_with_state(shared.clone(), record))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the fake Google APIs bind a loopback port");
        let addr = listener.local_addr().expect("the fake knows its address");
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake Google APIs stopped: {e}");
            }
        });
        FakeGoogle {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, the base URL of every API it fakes.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes what the listings hold.
    pub fn change(&self, change: impl FnOnce(&mut Listings)) {
        change(&mut self.shared.listings());
    }

    /// Every request's path and query, oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = request.uri().to_string();
    shared
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(uri);
    next.run(request).await
}

/// Google's error envelope.
fn error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"code": status, "message": message,
        "status": crate::fake_vertex::status_name(status)}});
    (code, axum::Json(body)).into_response()
}

/// One page of `items` under `field`, from `pageToken` (an offset), with
/// the next token while items remain.
fn page(field: &str, items: &[Value], params: &HashMap<String, String>) -> Response {
    let from: usize = params
        .get("pageToken")
        .and_then(|t| t.strip_prefix("page-"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let to = (from + PAGE).min(items.len());
    let mut body = json!({ field: items.get(from..to).unwrap_or_default() });
    if to < items.len() {
        body["nextPageToken"] = json!(format!("page-{to}"));
    }
    axum::Json(body).into_response()
}

/// The items whose `name` `keep` takes.
fn named(items: &[Value], keep: impl Fn(&str) -> bool) -> Vec<Value> {
    items
        .iter()
        .filter(|item| item["name"].as_str().is_some_and(&keep))
        .cloned()
        .collect()
}

/// Waits for ever when `api` is stalled.
async fn stall_if(shared: &Shared, api: &str) {
    if shared.listings().stalled.contains(api) {
        std::future::pending::<()>().await;
    }
}

/// Service Usage `services.list`
/// (https://cloud.google.com/service-usage/docs/reference/rest/v1/services/list):
/// `{"services": [Service], "nextPageToken"}`; only `filter=state:ENABLED`
/// is understood, which is what the listings hold.
async fn services(State(shared): State<Arc<Shared>>, Query(params): Params) -> Response {
    stall_if(&shared, "serviceusage").await;
    if params.get("filter").map(String::as_str) != Some("state:ENABLED") {
        return error(
            400,
            "This fake lists enabled services only (filter=state:ENABLED).",
        );
    }
    let items = shared.listings().services.clone();
    page("services", &items, &params)
}

/// A Service
/// (https://cloud.google.com/service-usage/docs/reference/rest/v1/services#Service).
pub fn service(name: &str) -> Value {
    json!({
        "name": format!("projects/123456789012/services/{name}"),
        "parent": "projects/123456789012",
        "config": {"name": name, "title": name},
        "state": "ENABLED"
    })
}

/// Firestore `collectionGroups.indexes.list`
/// (https://cloud.google.com/firestore/docs/reference/rest/v1/projects.databases.collectionGroups.indexes/list),
/// over every group with `-`: `{"indexes": [Index], "nextPageToken"}`.
async fn indexes(
    State(shared): State<Arc<Shared>>,
    Path((_, _, group)): Path<(String, String, String)>,
    Query(params): Params,
) -> Response {
    stall_if(&shared, "firestore").await;
    let group = format!("/collectionGroups/{group}/");
    let items = named(&shared.listings().indexes, |name| {
        group == "/collectionGroups/-/" || name.contains(&group)
    });
    page("indexes", &items, &params)
}

/// An Index
/// (https://cloud.google.com/firestore/docs/reference/rest/v1/projects.databases.collectionGroups.indexes#Index)
/// of `collection` over `fields` (path, `ASCENDING`/`DESCENDING`), with
/// the `__name__` field Firestore adds at the end, in `state` (`READY`,
/// `CREATING`, `NEEDS_REPAIR`).
pub fn index(
    project: &str,
    database: &str,
    collection: &str,
    fields: &[(&str, &str)],
    state: &str,
    id: usize,
) -> Value {
    let last = fields.last().map_or("ASCENDING", |(_, order)| *order);
    let mut listed: Vec<Value> = fields
        .iter()
        .map(|(path, order)| json!({"fieldPath": path, "order": order}))
        .collect();
    listed.push(json!({"fieldPath": "__name__", "order": last}));
    json!({
        "name": format!("projects/{project}/databases/{database}/collectionGroups/{collection}/indexes/CICAgOjXh4EK{id}"),
        "queryScope": "COLLECTION",
        "apiScope": "ANY_API",
        "fields": listed,
        "state": state,
        "density": "SPARSE_ALL"
    })
}

/// Cloud Scheduler `jobs.list`
/// (https://cloud.google.com/scheduler/docs/reference/rest/v1/projects.locations.jobs/list):
/// `{"jobs": [Job], "nextPageToken"}` of the location.
async fn jobs(
    State(shared): State<Arc<Shared>>,
    Path((project, location)): Path<(String, String)>,
    Query(params): Params,
) -> Response {
    stall_if(&shared, "cloudscheduler").await;
    let parent = format!("projects/{project}/locations/{location}/jobs/");
    let items = named(&shared.listings().jobs, |name| name.starts_with(&parent));
    page("jobs", &items, &params)
}

/// A Job
/// (https://cloud.google.com/scheduler/docs/reference/rest/v1/projects.locations.jobs#Job)
/// in `state` (`ENABLED`, `PAUSED`, `DISABLED`, `UPDATE_FAILED`).
pub fn scheduler_job(project: &str, region: &str, name: &str, state: &str) -> Value {
    json!({
        "name": format!("projects/{project}/locations/{region}/jobs/{name}"),
        "schedule": "* * * * *",
        "timeZone": "Etc/UTC",
        "state": state,
        "attemptDeadline": "60s",
        "retryConfig": {"retryCount": 0},
        "httpTarget": {"httpMethod": "POST", "uri": format!("https://run.googleapis.com/v2/projects/{project}/locations/{region}/jobs/{name}:run")}
    })
}

/// Cloud Quotas `quotaInfos.list`
/// (https://cloud.google.com/docs/quotas/reference/rest/v1/projects.locations.services.quotaInfos/list):
/// `{"quotaInfos": [QuotaInfo], "nextPageToken"}`.
async fn quota_infos(
    State(shared): State<Arc<Shared>>,
    Path((_, _, service)): Path<(String, String, String)>,
    Query(params): Params,
) -> Response {
    stall_if(&shared, "cloudquotas").await;
    if service != "aiplatform.googleapis.com" {
        return page("quotaInfos", &[], &params);
    }
    let items = shared.listings().quota_infos.clone();
    page("quotaInfos", &items, &params)
}

/// A QuotaInfo
/// (https://cloud.google.com/docs/quotas/reference/rest/v1/projects.locations.services.quotaInfos#QuotaInfo)
/// of requests per minute per base model, with one dimensions-info per
/// `(region, base_model, value)`.
pub fn quota_info(quota_id: &str, limits: &[(&str, &str, i64)]) -> Value {
    let infos: Vec<Value> = limits
        .iter()
        .map(|(region, model, value)| {
            json!({
                "dimensions": {"region": region, "base_model": model},
                "details": {"value": value.to_string()},
                "applicableLocations": [region]
            })
        })
        .collect();
    json!({
        "name": format!("projects/123456789012/locations/global/services/aiplatform.googleapis.com/quotaInfos/{quota_id}"),
        "quotaId": quota_id,
        "metric": "aiplatform.googleapis.com/online_prediction_requests_per_base_model",
        "service": "aiplatform.googleapis.com",
        "isPrecise": true,
        "refreshInterval": "minute",
        "containerType": "PROJECT",
        "dimensions": ["region", "base_model"],
        "metricDisplayName": "Online prediction requests per base model",
        "quotaDisplayName": "Online prediction requests per minute per region per base_model",
        "metricUnit": "1/min/{project}/{region}/{base_model}",
        "quotaIncreaseEligibility": {"isEligible": true},
        "isFixed": false,
        "dimensionsInfos": infos,
        "isConcurrent": false
    })
}

/// Cloud Storage `notifications.list`
/// (https://cloud.google.com/storage/docs/json_api/v1/notifications/list):
/// `{"kind": "storage#notifications", "items": [Notification]}`, not
/// paged; 404 for a bucket the listings do not hold.
async fn notifications(State(shared): State<Arc<Shared>>, Path(bucket): Path<String>) -> Response {
    stall_if(&shared, "storage").await;
    match shared.listings().notifications.get(&bucket) {
        Some(items) => {
            axum::Json(json!({"kind": "storage#notifications", "items": items})).into_response()
        }
        None => error(404, "The specified bucket does not exist."),
    }
}

/// A Notification
/// (https://cloud.google.com/storage/docs/json_api/v1/notifications#resource)
/// of OBJECT_FINALIZE under `prefix` to `topic` (`projects/P/topics/T`).
pub fn notification(id: usize, topic: &str, prefix: &str) -> Value {
    json!({
        "kind": "storage#notification",
        "id": id.to_string(),
        "topic": format!("//pubsub.googleapis.com/{topic}"),
        "event_types": ["OBJECT_FINALIZE"],
        "payload_format": "JSON_API_V1",
        "object_name_prefix": prefix,
        "etag": id.to_string()
    })
}
