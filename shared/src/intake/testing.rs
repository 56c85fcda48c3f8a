//! The intake app over an in-memory store and bus, for the tests of both
//! faces.

use super::Intake;
use super::api::API_KEY;
use super::promote::AutoPromote;
use super::service::router;
use crate::bus::memory::MemoryBus;
use crate::bus::{Bus, Topics};
use crate::config::Adapters;
use crate::domain::tenant::{Tenant, TenantName, TenantSettings};
use crate::store::Store;
use crate::store::embedded::EmbeddedBackend;
use crate::time::Timestamp;
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::http::StatusCode;
use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;

pub(super) struct App {
    pub(super) router: Router,
    pub(super) store: Store,
    pub(super) bus: Arc<MemoryBus>,
    /// The default tenant's API key, sent by [`call`] unless the request
    /// carries its own.
    pub(super) key: String,
}

/// Gives `tenant` (stored first when it is not the default one) a key.
pub(crate) async fn key_of(store: &Store, tenant: &str) -> String {
    let name: TenantName = tenant.parse().unwrap();
    if !name.is_default() {
        let tenant = Tenant::new(name.clone(), &TenantSettings::default(), Timestamp::now());
        store.add_tenant(tenant.unwrap()).await.unwrap();
    }
    let (_, key) = store
        .change_tenant(&name, |tenant, now| {
            Ok(tenant.rotate_key(std::time::Duration::ZERO, now))
        })
        .await
        .unwrap();
    key.reveal().to_string()
}

pub(super) async fn app() -> App {
    let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
    app_on(store, super::limits::RateLimits::default()).await
}

/// An intake instance over `store` (which other instances may share),
/// holding tenants to `limits`; its key is a new one of the default tenant.
pub(super) async fn app_on(store: Store, limits: super::limits::RateLimits) -> App {
    let (adapters, bus) = adapters_on(&store).await;
    let intake = Intake::new(adapters, true, AutoPromote::Off).with_rate_limits(limits);
    App {
        router: router(Arc::new(intake)),
        key: key_of(&store, "default").await,
        store,
        bus,
    }
}

/// Adapters over `store` and a new in-memory bus that has every topic.
pub(super) async fn adapters_on(store: &Store) -> (Adapters, Arc<MemoryBus>) {
    let bus = Arc::new(MemoryBus::new());
    for topic in Topics::default().all() {
        bus.ensure_topic(&topic).await.unwrap();
    }
    let adapters = Adapters {
        store: store.clone(),
        bus: bus.clone(),
        topics: Topics::default(),
    };
    (adapters, bus)
}

pub(super) async fn call(app: &App, mut request: Request<Body>) -> (StatusCode, Value) {
    if !request.headers().contains_key(API_KEY) {
        request
            .headers_mut()
            .insert(API_KEY, app.key.parse().unwrap());
    }
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

pub(super) fn envelope(message_id: &str, data: &str, attributes: &[(&str, &str)]) -> Vec<u8> {
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

pub(super) async fn push(app: &App, body: Vec<u8>) -> (StatusCode, Value) {
    call(app, Request::post("/").body(Body::from(body)).unwrap()).await
}

pub(super) async fn post_jobs(app: &App, body: impl Into<Body>) -> (StatusCode, Value) {
    call(app, Request::post("/v1/jobs").body(body.into()).unwrap()).await
}

pub(super) fn queued(app: &App, topic: &str) -> Vec<String> {
    app.bus.job_ids(topic)
}

/// An image job that went through a generator: completed with one PNG.
pub(super) async fn completed_image(app: &App, prompt: &str) -> String {
    use crate::domain::job::NewJob;
    use crate::domain::values::JobKind;
    let created = app
        .store
        .create_job(NewJob::new(prompt, JobKind::Image))
        .await
        .unwrap();
    let id = created.record.id().to_string();
    let lease = crate::domain::Lease::new("w", std::time::Duration::from_secs(60));
    app.store.claim_job(&id, &lease).await.unwrap();
    let output = format!("gs://out/images/{id}/0.png");
    app.store
        .complete_job(&id, "w", vec![output.parse().unwrap()])
        .await
        .unwrap();
    id
}
