//! The intake service's HTTP face and its binary entry point.
//!
//! - `POST /`: the Pub/Sub push of `asmr-requests`. A request that can never
//!   become jobs (undecodable, no kind, blank prompt...) is recorded in
//!   `rejected`, logged at ERROR with its message id and acknowledged; store
//!   or bus trouble is a 503 so Pub/Sub redelivers.
//! - `POST /v1/jobs`: the same request forms as a JSON body; `201` with the
//!   jobs, `200` when they all existed, `400` with `{"error"}` for bad
//!   input. Bad HTTP input is answered, not recorded in `rejected`: the
//!   caller has the reason already. The idempotency key is the body's
//!   `request_id`, else the `Idempotency-Key` header, else the body itself:
//!   a client that resends after a time-out or a 5xx creates nothing twice.
//!   `202` when the jobs are created but Pub/Sub did not take their
//!   messages (the janitor queues them); `503` with the jobs created so far
//!   when the store failed part-way (send the same request again).
//! - `GET /v1/jobs/{id}`: the job document, or `404`.
//! - `POST /v1/jobs/{id}:approve` and `POST /v1/jobs/{id}:reject`, with an
//!   optional body `{"reason": "..."}`: a reviewer's verdict on a completed
//!   or delivered image; `200` with the job document, `404` for a missing
//!   job, `409` with `{"error"}` when the job cannot be reviewed.
//! - `GET /v1/stats`: jobs per status and kind, downloads per status, and
//!   how many rejected requests are kept.

use super::promote::{AutoPromote, Promoter};
use super::routes;
use super::{Intake, Refused, Submitted, Unfinished};
use crate::ack::Handled;
use crate::config::{DryRunArgs, ServeArgs, StoreArgs, WebhookNetworkArgs};
use crate::error::Error;
use crate::identity::PushGate;
use crate::push;
use crate::requests::{self, Envelope, MAX_BODY_BYTES};
use crate::server;
use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use clap::Args;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one request may take: a batch of [`requests::MAX_BATCH`] jobs
/// on Firestore takes seconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Everything the intake service reads from the environment.
#[derive(Clone, Debug, Args)]
pub struct IntakeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Whether new jobs are dry runs.
    #[command(flatten)]
    pub dry_run: DryRunArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Which job events pushed to /v1/job-events make a video of their
    /// image: off, approved (an approval) or all (also the delivery of an
    /// image created with "chain": "video").
    #[arg(long, env = "AUTO_PROMOTE", value_enum, default_value = "off")]
    pub auto_promote: AutoPromote,
    /// Requests per minute each tenant may make over HTTP that create jobs
    /// or act on them (unset or 0: no limit); beyond it, 429 with
    /// Retry-After.
    #[arg(long, env = "TENANT_WRITES_PER_MINUTE")]
    pub tenant_writes_per_minute: Option<u32>,
    /// Requests per minute each tenant may make over HTTP that read jobs or
    /// figures (unset or 0: no limit).
    #[arg(long, env = "TENANT_READS_PER_MINUTE")]
    pub tenant_reads_per_minute: Option<u32>,
    #[command(flatten)]
    pub webhooks: WebhookNetworkArgs,
    #[command(flatten)]
    pub gateway: super::gateway::GatewayArgs,
}

/// The largest push body: a Pub/Sub message carrying a request of
/// [`MAX_BODY_BYTES`], grown by a third in base64, and its envelope. A
/// bigger push can only hold a bigger request: it is acknowledged as
/// poison and recorded, without being read further.
const PUSH_BODY_LIMIT: usize = MAX_BODY_BYTES / 3 * 4 + 64 * 1024;
/// The service's routes, with `GET /healthz`; pushes from anyone (see
/// [`gated_router`]).
pub fn router(intake: Arc<Intake>) -> Router {
    gated_router(intake, PushGate::open())
}

/// The service's routes; the push routes (`POST /` and
/// `POST /v1/job-events`) admit only what `gate` admits. Each route reads
/// its body only up to its own limit ([`server::read_body`]).
pub fn gated_router(intake: Arc<Intake>, gate: PushGate) -> Router {
    let gate = Arc::new(gate);
    let app = routes::routes()
        .route("/", server::push_route::<Intake>(&gate))
        .with_state(intake.clone())
        .route(
            "/v1/job-events",
            server::push_route::<Promoter>(&gate).with_state(intake.promoter.clone()),
        );
    server::with_basics(app, REQUEST_TIMEOUT)
}

impl server::Push for Intake {
    type Message = push::PushedMessage;

    const BODY_LIMIT: usize = PUSH_BODY_LIMIT;

    fn decode(&self, _headers: &HeaderMap, body: &Bytes) -> Result<push::PushedMessage, String> {
        push::decode(body).map_err(|poison| poison.0)
    }

    fn span(&self, delivery: &push::PushedMessage) -> tracing::Span {
        tracing::info_span!("request_message", message_id = %delivery.message_id)
    }

    async fn handle(&self, delivery: push::PushedMessage) -> Handled {
        let message_id = delivery.message_id.as_str();
        let tenant = match self.tenant_of_message(&delivery.attributes).await {
            Ok(Ok(tenant)) => Some(tenant.name().clone()),
            Ok(Err(refused)) => {
                let class = match refused {
                    Refused::Unknown(_) => "the tenant attribute names no tenant",
                    Refused::Disabled(_) => "the tenant is disabled",
                };
                let reason = refused.reason().to_string();
                let (attributes, data) = (delivery.attributes.clone(), &delivery.data);
                return self
                    .reject(
                        Some(message_id),
                        attributes,
                        data,
                        reason,
                        class.into(),
                        None,
                    )
                    .await;
            }
            Err(e) => return Handled::store_trouble(&e),
        };
        let envelope = Envelope {
            attributes: delivery.attributes.clone(),
            message_id: Some(message_id),
            dry_run: self.dry_run,
            tenant: tenant.clone().unwrap_or_default(),
            private_webhooks: self.private_webhooks,
        };
        let reject = |reason: String, class: String| {
            self.reject(
                Some(message_id),
                delivery.attributes.clone(),
                &delivery.data,
                reason,
                class,
                tenant.as_ref(),
            )
        };
        let jobs = match requests::parse(&delivery.data, &envelope) {
            Ok(jobs) => jobs,
            Err(rejection) => return reject(rejection.reason, rejection.class).await,
        };
        match self.submit(jobs).await {
            Ok(submitted) => outcome(&submitted),
            Err(Unfinished {
                error: Error::Invalid(e),
                ..
            }) => reject(e.to_string(), e.class()).await,
            Err(Unfinished {
                error: e @ Error::KeyReused { .. },
                ..
            }) => {
                let class = "its request_id was used before for a different request".to_string();
                reject(e.to_string(), class).await
            }
            Err(unfinished) => Handled::store_trouble(&unfinished.error),
        }
    }

    /// A push that is not a Pub/Sub message is recorded like a rejected
    /// request before it is acknowledged.
    async fn poison(&self, body: &[u8], reason: String) -> Handled {
        // What refuses an envelope quotes none of it.
        self.reject(None, BTreeMap::new(), body, reason.clone(), reason, None)
            .await
    }
}

/// The acknowledgement of a submitted request: redelivery while a job is
/// not queued, since the redelivery is what publishes it again.
fn outcome(submitted: &Submitted) -> Handled {
    if let Some((job, e)) = submitted.publish_failure() {
        return Handled::Retry {
            rate_limited: false,
            reason: format!("job {} is created but not queued: {e}", job.id()),
        };
    }
    let created = submitted.created();
    let existing = submitted.existing();
    match created.is_empty() {
        true => Handled::Duplicate(format!("jobs exist already: {}", existing.join(", "))),
        false if existing.is_empty() => Handled::Done(format!("created {}", created.join(", "))),
        false => Handled::Done(format!(
            "created {}; existing {}",
            created.join(", "),
            existing.join(", ")
        )),
    }
}

/// The `intake` binary: serves on `$PORT` until SIGTERM.
pub async fn intake(args: IntakeArgs) -> anyhow::Result<()> {
    let topics = args.store.topics();
    tracing::info!(
        backend = ?args.store.backend,
        project = args.store.project.as_deref().unwrap_or("-"),
        collection_prefix = %args.store.collection_prefix,
        topic_prefix = %topics.prefix(),
        dry_run = args.dry_run.dry_run,
        auto_promote = ?args.auto_promote,
        "intake starting"
    );
    let adapters = args
        .store
        .connect()
        .await
        .context("connecting to the store and Pub/Sub")?;
    let gate = args.serve.identity.push_gate("intake");
    let limits =
        super::limits::RateLimits::new(args.tenant_writes_per_minute, args.tenant_reads_per_minute);
    let intake = Intake::new(adapters, args.dry_run.dry_run, args.auto_promote)
        .verifying_callers(gate.id_tokens())
        .with_rate_limits(limits)
        .allowing_private_webhooks(args.webhooks.allow_private_networks)
        .with_gateway(args.gateway.gateway(&args.serve.identity.google_certs_url));
    server::serve_on(args.serve.port, gated_router(Arc::new(intake), gate)).await
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::bus::{Bus, Topics};
    use crate::config::Adapters;
    use crate::domain::values::{JobKind, JobStatus};
    use crate::store::Store;
    use crate::store::embedded::EmbeddedBackend;
    use axum::http::StatusCode;
    use serde_json::json;

    #[tokio::test]
    async fn a_pushed_request_becomes_a_queued_job_once() {
        let app = app().await;
        let body = envelope("101", "Rain on a tin roof", &[("kind", "video")]);
        let (status, answer) = push(&app, body.clone()).await;
        assert_eq!(
            (status, &answer["outcome"]),
            (StatusCode::OK, &json!("done"))
        );
        let (status, answer) = push(&app, body).await;
        assert_eq!(
            (status, &answer["outcome"]),
            (StatusCode::OK, &json!("duplicate"))
        );
        let id = crate::domain::job::Job::id_for_request("101");
        let job = app.store.job(&id).await.unwrap();
        assert_eq!((job.kind(), job.dry_run()), (JobKind::Video, true));
        // The redelivery queued the still-pending job again; generators take
        // one of the two messages and acknowledge the other as a duplicate.
        assert_eq!(queued(&app, "asmr-video-jobs"), [id.clone(), id]);
        assert_eq!(app.store.job_counts().await.unwrap().total(), 1);
    }

    #[tokio::test]
    async fn poison_requests_are_recorded_and_acknowledged() {
        let app = app().await;
        // (push, message id, what the answer and the log say, what the
        // record keeps): the log names the mistake, the record quotes it.
        let cases: [(Vec<u8>, &str, &str, &str); 4] = [
            (
                envelope("201", "no kind here", &[]),
                "201",
                "kind is missing",
                "kind is missing",
            ),
            (
                envelope("202", "{\"prompt\": ", &[("kind", "image")]),
                "202",
                "not valid JSON: end-of-input error at line 1 column 11",
                "not valid JSON",
            ),
            (
                envelope("203", r#"{"prompt": "  ", "kind": "image"}"#, &[]),
                "203",
                "invalid prompt",
                "prompt: is empty",
            ),
            (
                b"not an envelope".to_vec(),
                "",
                "not a Pub/Sub push envelope: syntax error at line 1 column 2",
                "not a Pub/Sub push envelope",
            ),
        ];
        for (body, message_id, said, recorded) in cases {
            for _ in 0..2 {
                let (status, answer) = push(&app, body.clone()).await;
                assert_eq!(status, StatusCode::OK, "{answer}");
                assert_eq!(answer["outcome"], "poison");
                assert!(
                    answer["detail"].as_str().unwrap().contains(said),
                    "{answer}"
                );
            }
            if !message_id.is_empty() {
                let record = app.store.get_rejected(message_id).await.unwrap().unwrap();
                assert!(record.reason.contains(recorded), "{record:?}");
                assert_eq!(record.message_id.as_deref(), Some(message_id));
            }
        }
        assert_eq!(
            app.store.count_rejected().await.unwrap(),
            4,
            "one per message"
        );
        let broken = app.store.list_rejected(10, None).await.unwrap();
        let broken = broken
            .items
            .iter()
            .find(|r| r.message_id.is_none())
            .unwrap();
        assert_eq!(broken.body, "not an envelope");
        assert_eq!(app.store.job_counts().await.unwrap().total(), 0);
    }

    #[tokio::test]
    async fn a_failed_publish_is_redelivered_and_the_redelivery_queues_the_job() {
        let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
        let bus = Arc::new(MemoryBus::new()); // no topics yet
        let adapters = Adapters {
            store: store.clone(),
            bus: bus.clone(),
            topics: Topics::default(),
        };
        let intake = Intake::new(adapters, true, AutoPromote::Off);
        let app = App {
            router: router(Arc::new(intake)),
            key: key_of(&store, "default").await,
            store,
            bus,
        };
        let body = envelope("301", r#"{"kind": "image", "prompts": ["a", "b"]}"#, &[]);
        let (status, answer) = push(&app, body.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert_eq!(
            app.store
                .job_counts()
                .await
                .unwrap()
                .status(JobStatus::Pending),
            2
        );

        app.bus.ensure_topic("asmr-image-jobs").await.unwrap();
        let (status, answer) = push(&app, body).await;
        assert_eq!(
            (status, &answer["outcome"]),
            (StatusCode::OK, &json!("duplicate"))
        );
        let mut ids = queued(&app, "asmr-image-jobs");
        ids.sort();
        let mut want = vec![
            crate::domain::job::Job::id_for_request("301#0"),
            crate::domain::job::Job::id_for_request("301#1"),
        ];
        want.sort();
        assert_eq!(ids, want);
    }
}
