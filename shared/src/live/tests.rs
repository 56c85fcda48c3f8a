use super::*;
use crate::domain::job::NewJob;
use crate::domain::values::JobKind;
use crate::report::escape;
use crate::store::embedded::EmbeddedBackend;
use axum::body::Body;
use axum::http::Request;
use futures::StreamExt;
use tower::ServiceExt;

fn store() -> Store {
    Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()))
}

fn live(feed: Arc<Feed>) -> Arc<Live> {
    Live::new(
        feed,
        Arc::new(crate::bus::memory::MemoryBus::new()),
        crate::bus::Topics::new(""),
    )
}

async fn add(store: &Store, n: usize) {
    for _ in 0..n {
        store
            .create_job(NewJob::new("rain on a tin roof", JobKind::Image))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn figure_names_are_the_paths_of_the_stats_json_joined_by_dots() {
    let store = store();
    add(&store, 2).await;
    let stats = store.stats_in(&Scope::Everyone).await.unwrap();
    let named = figures(&stats);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(named["jobs.pending"], json["jobs"]["pending"]);
    assert_eq!(named["jobs.total"], Value::from(2));
    assert_eq!(named["downloads.total"], Value::from(0));
    assert_eq!(named["budget.spent_usd"], json["budget"]["spent_usd"]);
    assert!(
        named
            .keys()
            .all(|name| !name.ends_with('.') && !name.is_empty())
    );
    // Every leaf of the JSON is one figure, and nothing else is.
    fn leaves(value: &Value) -> usize {
        match value {
            Value::Object(fields) => fields.values().map(leaves).sum(),
            _ => 1,
        }
    }
    assert_eq!(named.len(), leaves(&json));
}

#[test]
fn the_page_carries_every_figure_as_data_metric_with_its_text_escaped() {
    let mut figures = Figures::new();
    figures.insert("jobs.total".into(), Value::from(12));
    figures.insert("budget.budget_usd".into(), Value::Null);
    figures.insert("waiting.<b>odd\"</b>".into(), Value::from(1));
    let html = page::render(&Snapshot {
        at: "2026-12-06T00:00:00Z".into(),
        figures,
        error: None,
    });
    assert!(
        html.contains("<dd data-metric=\"jobs.total\">12</dd>"),
        "{html}"
    );
    assert!(html.contains("<dd data-metric=\"budget.budget_usd\">–</dd>"));
    assert!(html.contains("data-metric=\"waiting.&lt;b&gt;odd&quot;&lt;/b&gt;\""));
    assert!(!html.contains("<b>odd"));
    // Groups in their order: jobs before waiting before budget.
    let jobs = html.find("data-group=\"jobs\"").unwrap();
    let waiting = html.find("data-group=\"waiting\"").unwrap();
    let budget = html.find("data-group=\"budget\"").unwrap();
    assert!(jobs < waiting && waiting < budget);
}

#[test]
fn a_wait_reason_says_what_to_do_while_jobs_wait_and_a_series_carries_its_numbers() {
    use crate::domain::values::{QUOTA_EXHAUSTED, STORAGE_UNAVAILABLE, wait_advice};
    let mut figures = Figures::new();
    figures.insert(format!("waiting.{QUOTA_EXHAUSTED}"), Value::from(2));
    figures.insert(format!("waiting.{STORAGE_UNAVAILABLE}"), Value::from(0));
    figures.insert(
        "activity.per_minute.created".into(),
        serde_json::json!([0, 4, 7]),
    );
    figures.insert("activity.model_call_success_rate".into(), Value::from(1.0));
    let html = page::render(&Snapshot {
        at: "2026-12-06T00:00:00Z".into(),
        figures,
        error: None,
    });
    let row = |reason: &str| {
        let at = html
            .find(&format!("data-metric=\"waiting.{reason}\""))
            .unwrap();
        let start = html[..at].rfind("<div").unwrap();
        let end = at + html[at..].find("</div>").unwrap();
        html[start..end].to_string()
    };
    let quota = row(QUOTA_EXHAUSTED);
    assert!(!quota.contains("data-zero"), "{quota}");
    assert!(
        quota.contains(&format!(
            "<p class=\"advice\">{}</p>",
            escape(wait_advice(QUOTA_EXHAUSTED))
        )),
        "{quota}"
    );
    assert!(
        row(STORAGE_UNAVAILABLE).contains("data-zero"),
        "hidden while none wait"
    );
    assert!(
        html.contains("data-metric=\"activity.per_minute.created\" data-value=\"[0,4,7]\""),
        "{html}"
    );
    assert!(html.contains("<span class=\"now\">7</span>"));
    assert!(html.contains("<dd data-metric=\"activity.model_call_success_rate\">1</dd>"));
}

#[test]
fn the_policy_names_the_hash_of_the_one_script_on_the_page() {
    use base64::Engine;
    use sha2::Digest;
    let html = page::render(&Snapshot {
        at: String::new(),
        figures: Figures::new(),
        error: None,
    });
    let script = html
        .split("<script>")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .unwrap();
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
    let policy = page::content_security_policy();
    assert!(policy.contains(&format!("'sha256-{hash}'")), "{policy}");
    assert!(policy.contains("connect-src 'self'"));
    assert!(policy.starts_with("default-src 'none'"));
    assert_eq!(html.matches("<script").count(), 1);
}

#[tokio::test]
async fn the_page_shows_the_store_and_says_what_it_is() {
    let store = store();
    add(&store, 3).await;
    let feed = Feed::start(store, Scope::Everyone, Duration::from_millis(20));
    let response = router(live(feed))
        .oneshot(Request::get("/ui").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let html = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        html.contains("<dd data-metric=\"jobs.total\">3</dd>"),
        "{html}"
    );
    assert!(html.contains("<dd data-metric=\"jobs.pending\">3</dd>"));
}

/// The next `figures` event of an SSE body, parsed.
async fn next_snapshot(
    body: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    buffer: &mut String,
) -> Value {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                assert!(event.contains("event: figures"), "{event}");
                return serde_json::from_str(data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn the_stream_sends_the_figures_then_each_change_and_ends_when_the_feed_closes() {
    let store = store();
    add(&store, 1).await;
    let feed = Feed::start(store.clone(), Scope::Everyone, Duration::from_millis(20));
    let response = router(live(Arc::clone(&feed)))
        .oneshot(Request::get("/ui/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    let mut buffer = String::new();
    let first = next_snapshot(&mut body, &mut buffer).await;
    assert_eq!(first["figures"]["jobs.total"], 1, "{first}");
    add(&store, 2).await;
    let second = next_snapshot(&mut body, &mut buffer).await;
    assert_eq!(second["figures"]["jobs.total"], 3, "{second}");
    feed.close();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "the stream did not end after close");
}

#[tokio::test]
async fn nothing_is_read_while_nobody_watches() {
    let store = store();
    let feed = Feed::start(store, Scope::Everyone, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(feed.latest.borrow().is_none(), "read with no watcher");
    let mut watcher = feed.subscribe();
    tokio::time::timeout(Duration::from_secs(5), watcher.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(watcher.borrow().is_some());
}

/// An action as a page would send it, with `headers` instead of the
/// page's own.
async fn act(
    store: &Store,
    id: &str,
    action: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let feed = Feed::start(store.clone(), Scope::Everyone, Duration::from_millis(20));
    let mut request = Request::post(format!("/ui/jobs/{id}/{action}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router(live(feed))
        .oneshot(request.body(Body::from("{}")).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const PAGE: [(&str, &str); 2] = [
    ("content-type", "application/json"),
    ("x-asmr-page", "live"),
];

#[tokio::test]
async fn an_action_without_the_pages_header_or_from_another_origin_is_refused_and_changes_nothing()
{
    let store = store();
    let job = store
        .create_job(NewJob::new("rain on a tin roof", JobKind::Image))
        .await
        .unwrap()
        .record;
    let id = job.id();
    // What a form on another site can send.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (status, body) = act(&store, id, "approve", &form).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = act(
        &store,
        id,
        "approve",
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = act(
        &store,
        id,
        "approve",
        &[("x-asmr-page", "live"), ("content-type", "text/plain")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut foreign = PAGE.to_vec();
    foreign.extend([
        ("origin", "https://evil.example"),
        ("host", "127.0.0.1:8090"),
    ]);
    let (status, body) = act(&store, id, "approve", &foreign).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        store.job(id).await.unwrap(),
        job,
        "a refused action changed the job"
    );
    // The page's own origin passes the check, and the store's rules answer:
    // a pending image cannot be approved yet.
    let mut own = PAGE.to_vec();
    own.extend([
        ("origin", "http://127.0.0.1:8090"),
        ("host", "127.0.0.1:8090"),
    ]);
    let (status, body) = act(&store, id, "approve", &own).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains(id), "{body}");
}

#[tokio::test]
async fn an_unknown_job_or_action_is_not_found() {
    let store = store();
    let (status, body) = act(&store, "0123456789abcdef0123456789abcdef", "approve", &PAGE).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let job = store
        .create_job(NewJob::new("rain on a tin roof", JobKind::Image))
        .await
        .unwrap()
        .record;
    let (status, body) = act(&store, job.id(), "delete", &PAGE).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
