//! `intake ui`: the live page in the cloud, for people, and nothing else.
//!
//! The same binary and image as the intake API, started as a second Cloud
//! Run service with Identity-Aware Proxy turned on (terraform/live.tf). The
//! page cannot share the API's service: IAP checks every request to a
//! service it is on before anything else, and Pub/Sub's pushes and API
//! Gateway's calls carry no IAP sign-in, so they would stop. Nor can it go
//! through API Gateway, which does not stream the page's events.
//!
//! So this mode serves only the page's routes (`/ui`, `/ui/events`,
//! `/ui/cards`, `/ui/files/...`, `/ui/jobs/{id}/{action}` and `/` to the
//! page) and `/healthz` for Cloud Run's probe; no API, no push route. Each
//! of the page's requests must carry an IAP assertion of this service's
//! audience, verified here ([`IapAssertions`]) although IAP checked the
//! person already: a request that reached the service some other way is
//! answered 401, never with the page. The API service, for its part,
//! serves no page at all.
//!
//! The page shows every tenant's figures and images (the operators' view,
//! like `asmr stats --all-tenants`), as `asmr serve` does with no tenant.

use crate::config::StoreArgs;
use crate::identity::{IapArgs, IapAssertions, require_iap};
use crate::live::{self, Feed, Live};
use crate::server;
use crate::store::tenants::Scope;
use anyhow::Context;
use axum::Router;
use clap::{Args, Subcommand};
use std::sync::Arc;
use std::time::Duration;

/// How long the page's server may take to start an answer; the stream of
/// events then goes on until the browser leaves or Cloud Run's request
/// timeout ends it, and the browser reconnects.
pub const PAGE_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What the intake binary serves.
#[derive(Clone, Debug, Subcommand)]
pub enum Mode {
    /// The API and Pub/Sub's pushes, on $PORT (the default).
    Api,
    /// Only the live page (/ui), each request proven by Identity-Aware
    /// Proxy's signed assertion; on $PORT, with the store options of
    /// `intake`.
    Ui(UiArgs),
}

/// What `intake ui` reads beyond the store and the port.
#[derive(Clone, Debug, Args)]
pub struct UiArgs {
    #[command(flatten)]
    pub iap: IapArgs,
}

/// The page's routes behind the IAP gate, with `GET /healthz` (outside it:
/// Cloud Run's probe comes from no person).
pub fn router(live: Arc<Live>, assertions: Arc<IapAssertions>) -> Router {
    let page = live::router(live).layer(axum::middleware::from_fn_with_state(
        assertions,
        require_iap,
    ));
    server::with_basics(page, PAGE_REQUEST_TIMEOUT)
}

/// `intake ui`: serves the page of the store on `port` until SIGTERM.
pub async fn ui(store: &StoreArgs, port: u16, args: UiArgs) -> anyhow::Result<()> {
    let assertions = args.iap.assertions().map_err(anyhow::Error::msg)?;
    tracing::info!(
        project = store.project.as_deref().unwrap_or("-"),
        collection_prefix = %store.collection_prefix,
        audience = %args.iap.iap_audience.trim(),
        keys = %args.iap.iap_keys_url,
        event = "live_page_starting",
        "intake serves the live page only, to requests Identity-Aware Proxy signed for this audience"
    );
    let adapters = store
        .connect()
        .await
        .context("connecting to the store and Pub/Sub")?;
    let feed = Feed::start(adapters.store, Scope::Everyone, live::READ_EVERY);
    let live = Live::new(feed, adapters.bus, adapters.topics);
    let app = router(Arc::clone(&live), Arc::new(assertions));
    let listener = server::bind(port)
        .await
        .with_context(|| format!("binding port {port}"))?;
    live::serve_app(listener, &live, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::testing::app;
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn status(app: &Router, method: &str, path: &str) -> StatusCode {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .header("x-asmr-page", "live")
            .body(Body::from("{}"))
            .unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn the_api_serves_no_page_and_the_page_nothing_without_iap() {
        let api = app().await;
        for path in ["/ui", "/ui/events", "/ui/cards"] {
            assert_eq!(
                status(&api.router, "GET", path).await,
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        let feed = Feed::start(api.store.clone(), Scope::Everyone, live::READ_EVERY);
        let live = Live::new(feed, api.bus.clone(), crate::bus::Topics::default());
        // No key is fetched: a request without an assertion is refused first.
        let assertions = IapAssertions::new(
            "http://127.0.0.1:9/keys",
            "/projects/1/locations/r/services/s",
        );
        let page = router(live, Arc::new(assertions));
        assert_eq!(status(&page, "GET", "/healthz").await, StatusCode::OK);
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/ui"),
            ("GET", "/ui/events"),
            ("GET", "/ui/cards"),
            ("POST", "/ui/jobs/abc/approve"),
            ("GET", "/v1/jobs"),
            ("POST", "/"),
        ] {
            assert_eq!(
                status(&page, method, path).await,
                StatusCode::UNAUTHORIZED,
                "{method} {path}"
            );
        }
    }
}
