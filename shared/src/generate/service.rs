//! The HTTP face of a generator and the entry points of the generation
//! binaries (`image-generator`, `video-generator`, `video-poller`).

use super::poller::{PollerSettings, VideoPoller};
use super::{Generator, GeneratorCore, GeneratorSettings, drain, handle};
use crate::ack::Handled;
use crate::config::StageArgs;
use crate::domain::values::JobKind;
use crate::identity::PushGate;
use crate::push::{self, JobMessage};
use crate::server;
use crate::stage::DrainLimits;
use crate::vertex::client::VertexClient;
use crate::vertex::{ImageModel, VideoModel};
use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use clap::Subcommand;
use std::sync::Arc;
use std::time::Duration;

/// How long one push may take: under Pub/Sub's longest ack deadline (600 s).
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(540);

/// `POST /` takes the push of a job message, from anyone (see
/// [`gated_router`]); `GET /healthz` answers.
pub fn router<M: ?Sized + Send + Sync + 'static>(generator: Arc<GeneratorCore<M>>) -> Router
where
    GeneratorCore<M>: Generator,
{
    gated_router(generator, PushGate::open())
}

/// [`router`], taking only the pushes `gate` admits.
pub fn gated_router<M: ?Sized + Send + Sync + 'static>(
    generator: Arc<GeneratorCore<M>>,
    gate: PushGate,
) -> Router
where
    GeneratorCore<M>: Generator,
{
    let app = Router::new()
        .route("/", server::push_route::<GeneratorCore<M>>(&Arc::new(gate)))
        .with_state(generator);
    server::with_basics(app, PUSH_TIMEOUT)
}

impl<M: ?Sized + Send + Sync + 'static> server::Push for GeneratorCore<M>
where
    GeneratorCore<M>: Generator,
{
    type Message = push::PushedMessage;

    fn decode(&self, _headers: &HeaderMap, body: &Bytes) -> Result<push::PushedMessage, String> {
        push::decode(body).map_err(|poison| poison.0)
    }

    fn span(&self, delivery: &push::PushedMessage) -> tracing::Span {
        tracing::info_span!("job_message", message_id = %delivery.message_id, job_id = tracing::field::Empty)
    }

    async fn handle(&self, delivery: push::PushedMessage) -> Handled {
        let message = match JobMessage::from_delivery(&delivery) {
            Ok(message) => message,
            Err(poison) => return Handled::Poison(poison.0),
        };
        tracing::Span::current().record("job_id", message.job_id.as_str());
        handle(self, &message.job_id).await
    }
}

/// How a generator binary runs.
#[derive(Clone, Debug, Subcommand)]
pub enum Mode {
    /// Serve push deliveries on $PORT (the default).
    Serve,
    /// Claim and process pending jobs until none is left or a limit is hit
    /// (a Cloud Run job).
    Drain {
        /// Stop after this many jobs.
        #[arg(long)]
        max_jobs: Option<u64>,
        /// Stop claiming after this many seconds.
        #[arg(long)]
        max_seconds: Option<u64>,
    },
}

fn settings(args: &StageArgs, model: &str) -> anyhow::Result<GeneratorSettings> {
    if args.lease_ttl.is_zero() {
        anyhow::bail!("LEASE_TTL must be more than zero");
    }
    Ok(GeneratorSettings {
        output_bucket: args.output_bucket()?,
        default_model: model.to_string(),
        dry_run: args.dry_run.dry_run,
        lease_ttl: args.lease_ttl,
        operation_timeout: args.operation_timeout,
        retry: args.retry(),
    })
}

/// Checks that a live stage can call Vertex AI and, for images, which it
/// writes itself, write to the output bucket (Veo writes videos as its own
/// service agent); says once, at ERROR and with the fix, when it cannot. A
/// drain stops there; a service keeps serving, and the jobs it meets wait
/// without using attempts until the configuration is fixed.
async fn preflight(
    client: Arc<VertexClient>,
    kind: JobKind,
    args: &StageArgs,
    mode: &Mode,
) -> anyhow::Result<()> {
    if args.dry_run.dry_run {
        return Ok(());
    }
    let bucket = match kind {
        JobKind::Image => Some(args.output_bucket()?),
        JobKind::Video => None,
    };
    let check = async move {
        match client.preflight(bucket.as_deref()).await {
            Ok(()) => {
                tracing::info!(event = "preflight_passed", "Vertex AI credentials found");
                Ok(())
            }
            Err(e) => {
                tracing::error!(event = "preflight_failed", error = %e, "this stage cannot call Vertex AI");
                Err(e)
            }
        }
    };
    match mode {
        Mode::Drain { .. } => check
            .await
            .map_err(|e| anyhow::anyhow!("cannot call Vertex AI: {}", e.message)),
        // Serving starts at once (Cloud Run scales from zero on a request).
        Mode::Serve => {
            tokio::spawn(check);
            Ok(())
        }
    }
}

async fn serve_or_drain<M: ?Sized + Send + Sync + 'static>(
    generator: GeneratorCore<M>,
    args: &StageArgs,
    mode: Mode,
) -> anyhow::Result<()>
where
    GeneratorCore<M>: Generator,
{
    let store = generator.store().clone();
    let stage = format!("{}-generator", GeneratorCore::<M>::KIND);
    let work = match mode {
        Mode::Serve => {
            let gate = args.serve.identity.push_gate(&stage);
            server::Work::Serve(gated_router(Arc::new(generator), gate))
        }
        Mode::Drain {
            max_jobs,
            max_seconds,
        } => server::Work::Drain(Box::pin(async move {
            let limits = DrainLimits {
                max_jobs,
                max_duration: max_seconds.map(Duration::from_secs),
            };
            drain(&generator, limits).await?.log(&stage);
            Ok(())
        })),
    };
    server::serve_or_drain(&store, args.serve.port, work).await
}

/// The `image-generator` and `video-generator` binaries: the generator of
/// `kind`, calling Vertex AI with the model the arguments name for it.
pub async fn generator(kind: JobKind, args: StageArgs, mode: Mode) -> anyhow::Result<()> {
    tracing::info!(config = %args.summary(), "{kind}-generator starting");
    let client = Arc::new(VertexClient::new(args.vertex())?);
    preflight(client.clone(), kind, &args, &mode).await?;
    let store = args.connect().await?.store;
    let objects = args.object_store().await?;
    let guard = args.cost_guard().map_err(anyhow::Error::msg)?;
    match kind {
        JobKind::Image => {
            let settings = settings(&args, &args.vertex.image_model)?;
            let generator = GeneratorCore::<dyn ImageModel>::new(store, objects, client, settings);
            serve_or_drain(generator.with_cost_guard(guard), &args, mode).await
        }
        JobKind::Video => {
            let settings = settings(&args, &args.vertex.video_model)?;
            let generator = GeneratorCore::<dyn VideoModel>::new(store, objects, client, settings);
            serve_or_drain(generator.with_cost_guard(guard), &args, mode).await
        }
    }
}

/// The `video-poller` binary: rounds until nothing is generating or
/// `max_runtime` is spent; prints the summary as one JSON line.
pub async fn video_poller(args: StageArgs, max_runtime: Duration) -> anyhow::Result<()> {
    tracing::info!(config = %args.summary(), "video-poller starting");
    let store = args.connect().await?.store;
    let poller = VideoPoller::new(
        store.clone(),
        Arc::new(VertexClient::new(args.vertex())?),
        args.object_store().await?,
        PollerSettings {
            operation_timeout: args.operation_timeout,
            polling_interval: args.vertex.polling_interval,
            max_runtime,
            output_bucket: args.output_bucket()?,
        },
    );
    let report = poller.run().await;
    store.flush_events().await;
    let report = report?;
    tracing::info!(
        rounds = report.rounds,
        polled = report.polled,
        completed = report.completed,
        failed = report.failed,
        filtered = report.filtered,
        timed_out = report.timed_out,
        running = report.running,
        errors = report.errors,
        event = "poller_finished",
        "video-poller finished"
    );
    Ok(())
}
