//! The live page: the figures of `asmr stats --json`, shown in a browser
//! and updated as the store changes, without a reload.
//!
//! - [`Feed`] reads the figures from the store about once a second, but
//!   only while someone watches, and hands every change to all watchers of
//!   this process. Every process (`asmr serve`, each intake instance) reads
//!   the same store, so all show the same figures; nothing is split between
//!   instances the way a subscription's messages would be.
//! - [`router`] serves the page at `GET /ui` and its stream of figures at
//!   `GET /ui/events` (server-sent events; a browser's `EventSource`
//!   reconnects by itself when a stream ends, as Cloud Run ends every
//!   request after at most an hour).
//! - Every figure on the page carries `data-metric="NAME"`, NAME as in
//!   `asmr stats --json` with the levels joined by dots (`jobs.pending`,
//!   `waiting.quota_exhausted`, `budget.spent_usd`), so that scripts can
//!   read the page as people do.
//! - The page is one document with its style and script inline; its
//!   Content-Security-Policy lets it connect to its own origin and nothing
//!   else.
//! - In the cloud, `intake ui` serves it behind Identity-Aware Proxy
//!   (`crate::intake::page`), and each review action names the person IAP
//!   let through in its log line.

mod page;
pub mod review;

use crate::bus::{Bus, Topics};
use crate::domain::job::Job;
use crate::error::Result;
use crate::store::Store;
use crate::store::activity::ActivityCache;
use crate::store::stats::Stats;
use crate::store::tenants::Scope;
use crate::time::Timestamp;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// How often the figures are read while someone watches.
pub const READ_EVERY: Duration = Duration::from_secs(1);

/// Figures by name: `jobs.pending` → 3.
pub type Figures = BTreeMap<String, Value>;

/// The figures of `stats`, one per leaf of its JSON, named by the path to
/// it with dots: the names `data-metric` carries.
pub fn figures(stats: &Stats) -> Figures {
    let mut out = Figures::new();
    // A struct of numbers, strings and maps of them always serializes.
    flatten(
        "",
        &serde_json::to_value(stats).unwrap_or(Value::Null),
        &mut out,
    );
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut Figures) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, value, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

/// What the page shows at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// When the figures were read.
    pub at: String,
    /// The figures.
    pub figures: Figures,
    /// Why the last read failed, when it did (the figures are then the
    /// last ones read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The figures of one store and scope, read while watched.
pub struct Feed {
    store: Store,
    scope: Scope,
    every: Duration,
    latest: watch::Sender<Option<Arc<Snapshot>>>,
    /// The minutes of the last hour that are over, read once.
    cache: tokio::sync::Mutex<ActivityCache>,
    watched: Notify,
    closing: AtomicBool,
    closed: Notify,
}

impl Feed {
    /// A feed of `scope`'s figures in `store`, read every `every` while
    /// watched; its reader runs on the current runtime.
    pub fn start(store: Store, scope: Scope, every: Duration) -> Arc<Self> {
        let feed = Arc::new(Self {
            store,
            scope,
            every,
            latest: watch::Sender::new(None),
            cache: Default::default(),
            watched: Notify::new(),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
        });
        tokio::spawn(Arc::clone(&feed).read_while_watched());
        feed
    }

    /// The figures now, read from the store.
    pub async fn read(&self) -> Result<Snapshot> {
        let mut cache = self.cache.lock().await;
        let stats = self
            .store
            .stats_with_activity(&self.scope, &mut cache)
            .await?;
        Ok(Snapshot {
            at: Timestamp::now().to_string(),
            figures: figures(&stats),
            error: None,
        })
    }

    /// Ends every stream: the server can then stop without waiting for
    /// browsers that would never hang up.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.closed.notify_waiters();
    }

    fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        let receiver = self.latest.subscribe();
        // A permit is kept when the reader is not waiting yet.
        self.watched.notify_one();
        receiver
    }

    async fn read_while_watched(self: Arc<Self>) {
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            if self.latest.receiver_count() == 0 {
                tokio::select! {
                    () = self.watched.notified() => {}
                    () = self.closed.notified() => return,
                }
                continue;
            }
            let next = match self.read().await {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the live figures");
                    let last = self.latest.borrow().clone();
                    Snapshot {
                        at: Timestamp::now().to_string(),
                        figures: last.map(|s| s.figures.clone()).unwrap_or_default(),
                        error: Some(e.to_string()),
                    }
                }
            };
            self.latest.send_if_modified(|latest| {
                let changed = latest
                    .as_ref()
                    .is_none_or(|l| l.figures != next.figures || l.error != next.error);
                if changed {
                    *latest = Some(Arc::new(next));
                }
                changed
            });
            tokio::time::sleep(self.every).await;
        }
    }

    /// The stream of one watcher: the figures now, then each change.
    fn stream(self: &Arc<Self>) -> impl futures::Stream<Item = Result<Event, Infallible>> + use<> {
        let mut receiver = self.subscribe();
        // The figures already read count as a change for a new watcher.
        receiver.mark_changed();
        let feed = Arc::clone(self);
        futures::stream::unfold((receiver, feed), |(mut receiver, feed)| async move {
            loop {
                if feed.closing.load(Ordering::SeqCst) {
                    return None;
                }
                tokio::select! {
                    changed = receiver.changed() => changed.ok()?,
                    () = feed.closed.notified() => return None,
                }
                let Some(snapshot) = receiver.borrow_and_update().clone() else {
                    continue;
                };
                let event = Event::default()
                    .event("figures")
                    .retry(Duration::from_secs(1))
                    .json_data(&*snapshot)
                    .unwrap_or_else(|_| Event::default().comment("unserializable"));
                return Some((Ok(event), (receiver, feed)));
            }
        })
    }
}

/// What the page's server holds: the feed of figures, and where a video
/// made by a promotion is announced.
pub struct Live {
    feed: Arc<Feed>,
    bus: Arc<dyn Bus>,
    topics: Topics,
}

impl Live {
    /// The page of `feed`'s store; new jobs are announced on `bus`.
    pub fn new(feed: Arc<Feed>, bus: Arc<dyn Bus>, topics: Topics) -> Arc<Self> {
        Arc::new(Self { feed, bus, topics })
    }

    /// Announces a job an action made. A failure is logged, not fatal:
    /// the job is pending, and the janitor dispatches pending jobs that sat
    /// idle.
    async fn dispatch(&self, job: &Job) {
        if let Err(e) = crate::bus::publish_job(self.bus.as_ref(), &self.topics, job, "live").await
        {
            tracing::warn!(job_id = %job.id(), error = %e, "a job made from the live page was not queued; the janitor will dispatch it");
        }
    }
}

/// The page's routes: `GET /ui` (the page), `GET /ui/events` (its figures
/// as they change), `GET /ui/cards` (the images to review),
/// `GET /ui/files/{id}/{n}` (a delivered file), `POST
/// /ui/jobs/{id}/{action}` (approve, reject, promote), and `GET /` (to
/// the page).
pub fn router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui") }))
        .route("/ui", get(ui))
        .route("/ui/events", get(events))
        .route("/ui/cards", get(review::cards))
        .route("/ui/files/{id}/{n}", get(review::file))
        .route("/ui/jobs/{id}/{action}", axum::routing::post(review::act))
        .with_state(live)
}

async fn ui(State(live): State<Arc<Live>>) -> Response {
    let snapshot = match live.feed.read().await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store could not be read: {e}"),
            )
                .into_response();
        }
    };
    let mut response = page::render(&snapshot).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(policy) = HeaderValue::from_str(page::content_security_policy()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

async fn events(State(live): State<Arc<Live>>) -> impl IntoResponse {
    let sse = Sse::new(live.feed.stream()).keep_alive(KeepAlive::default());
    ([(header::CACHE_CONTROL, "no-store")], sse)
}

/// Binds `host:port` for the page (port 0 picks a free one).
pub async fn bind(host: std::net::IpAddr, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((host, port)).await
}

/// Serves the page on `listener` until SIGTERM or Ctrl-C, then ends every
/// stream and stops. No request time limit: a stream lasts as long as its
/// page stays open.
pub async fn serve(listener: TcpListener, live: Arc<Live>) -> std::io::Result<()> {
    let app = router(Arc::clone(&live));
    serve_app(listener, &live, app).await
}

/// Serves `app`, made of [`router`] of `live` (behind a gate, say), as
/// [`serve`] does: until SIGTERM or Ctrl-C, then ends `live`'s streams.
pub async fn serve_app(listener: TcpListener, live: &Live, app: Router) -> std::io::Result<()> {
    let closing = Arc::clone(&live.feed);
    crate::server::serve_until(listener, app, async move {
        crate::server::shutdown_signal().await;
        closing.close();
    })
    .await
}

#[cfg(test)]
mod tests;
