use super::*;
use crate::domain::job::NewJob;
use crate::domain::values::JobKind;
use crate::store::embedded::EmbeddedBackend;
use axum::body::Body;
use axum::http::Request;
use futures::StreamExt;
use tower::ServiceExt;

fn store() -> Store {
    Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()))
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
    let response = router(feed)
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
    let response = router(Arc::clone(&feed))
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
