//! The notifier's HTTP face and its binary's entry point: `POST /` takes
//! pushes of `asmr-job-events`, `POST /sweep` (Cloud Scheduler) sends what
//! is due, `GET /healthz` answers.

use super::notifier::{Notifier, NotifierSettings};
use super::send::Sender;
use crate::ack::Handled;
use crate::config::{ServeArgs, StoreArgs, WebhookNetworkArgs, parse_duration};
use crate::domain::webhook_delivery::RetrySchedule;
use crate::identity::PushGate;
use crate::job_events::JobEvent;
use crate::server;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Args;
use std::sync::Arc;
use std::time::Duration;

/// Everything the notifier reads from the environment.
#[derive(Clone, Debug, Args)]
pub struct NotifierArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub network: WebhookNetworkArgs,
    #[command(flatten)]
    pub sending: SendingArgs,
}

/// How webhooks are sent and retried.
#[derive(Clone, Debug, Args)]
pub struct SendingArgs {
    /// The longest one attempt may take, connection and answer.
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value = "10", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The waits after the first, second... refused attempt (the last
    /// repeats).
    #[arg(long, env = "WEBHOOK_RETRY_DELAYS", default_value = "5s,5m,30m,2h,5h,10h",
          value_delimiter = ',', value_parser = parse_duration)]
    pub retry_delays: Vec<Duration>,
    /// How long after its event a delivery is tried before it is failed.
    #[arg(long, env = "WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = parse_duration)]
    pub retry_for: Duration,
    /// Deliveries of one tenant in flight at once per instance: a receiver
    /// that hangs holds this many of its own tenant's, and no one else's.
    #[arg(long, env = "WEBHOOK_CONCURRENCY_PER_TENANT", default_value = "8")]
    pub per_tenant: usize,
    /// How often an instance looks for due deliveries by itself, besides
    /// the scheduled `POST /sweep`.
    #[arg(long, env = "WEBHOOK_SWEEP_EVERY", default_value = "10", value_parser = parse_duration)]
    pub sweep_every: Duration,
}

impl SendingArgs {
    /// The notifier's settings.
    pub fn settings(&self) -> NotifierSettings {
        NotifierSettings {
            schedule: RetrySchedule {
                delays: self.retry_delays.clone(),
                window: self.retry_for,
            },
            per_tenant: self.per_tenant,
            lease: self.timeout * 3 + Duration::from_secs(30),
            ..NotifierSettings::default()
        }
    }
}

/// How long a push may take: recording the delivery.
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

impl server::Push for Notifier {
    type Message = JobEvent;

    fn decode(&self, _headers: &HeaderMap, body: &Bytes) -> Result<JobEvent, String> {
        JobEvent::from_push(body)
    }

    fn span(&self, event: &JobEvent) -> tracing::Span {
        event.span()
    }

    async fn handle(&self, event: JobEvent) -> Handled {
        Notifier::handle(self, event).await
    }
}

/// The notifier's routes: pushes and sweeps from `gate`'s identities only.
pub fn router(notifier: Arc<Notifier>, gate: PushGate) -> Router {
    let gate = Arc::new(gate);
    let sweep_route = axum::routing::post(sweep).route_layer(axum::middleware::from_fn_with_state(
        gate.clone(),
        crate::identity::require_pusher,
    ));
    let app = Router::new()
        .route("/", server::push_route::<Notifier>(&gate))
        .route("/sweep", sweep_route)
        .with_state(notifier);
    server::with_basics(app, PUSH_TIMEOUT)
}

async fn sweep(State(notifier): State<Arc<Notifier>>) -> (StatusCode, String) {
    match notifier.sweep().await {
        Ok(started) => (StatusCode::OK, format!("{started} due webhooks started\n")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// The `notifier` binary.
pub async fn run(args: NotifierArgs) -> anyhow::Result<()> {
    let private = args.network.allow_private_networks;
    tracing::info!(
        timeout = ?args.sending.timeout,
        retry_for = ?args.sending.retry_for,
        per_tenant = args.sending.per_tenant,
        private_networks = private,
        "notifier starting"
    );
    if private {
        tracing::warn!(
            event = "webhook_private_networks",
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS=true: webhooks may reach private addresses over http; never in a deployment"
        );
    }
    let store = args.store.connect().await?.store;
    let sender = Sender::new(private, args.sending.timeout)?;
    let notifier = Arc::new(Notifier::new(
        store.clone(),
        sender,
        args.sending.settings(),
    ));
    notifier.sweep_every(args.sending.sweep_every);
    let gate = args.serve.identity.push_gate("notifier");
    server::serve_on(args.serve.port, router(notifier, gate)).await
}
