//! The downloader's HTTP face (`POST /` for both Pub/Sub pushes and Eventarc
//! CloudEvents) and its binary entry point.

use super::{Downloader, DownloaderSettings};
use crate::ack::Handled;
use crate::config::{ObjectArgs, OutputArgs, ServeArgs, StoreArgs, parse_duration};
use crate::domain::destination::Destination;
use crate::events::ObjectEvent;
use crate::identity::PushGate;
use crate::server;
use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use clap::Args;
use std::sync::Arc;
use std::time::Duration;

/// Everything the downloader reads from the environment.
#[derive(Clone, Debug, Args)]
pub struct DownloaderArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Where copies go: gs://bucket/prefix, or a directory (a volume mount).
    #[arg(long, env = "DOWNLOAD_DESTINATION")]
    pub destination: Destination,
    /// Copies at once per instance.
    #[arg(long, env = "DOWNLOAD_CONCURRENCY", default_value = "5")]
    pub concurrency: usize,
    /// Longest one copy attempt may take.
    #[arg(long, env = "DOWNLOAD_TIMEOUT", default_value = "300", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long a copy's claim lasts without progress (a crashed copier's
    /// download is taken over after this).
    #[arg(long, env = "DOWNLOAD_LEASE", default_value = "60", value_parser = parse_duration)]
    pub lease: Duration,
    /// Priority of images.
    #[arg(
        long,
        env = "DOWNLOAD_PRIORITY_IMAGE",
        default_value = "10",
        allow_hyphen_values = true
    )]
    pub image_priority: i64,
    /// Priority of videos.
    #[arg(
        long,
        env = "DOWNLOAD_PRIORITY_VIDEO",
        default_value = "0",
        allow_hyphen_values = true
    )]
    pub video_priority: i64,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
}

/// How long one push may take: the copy, under Pub/Sub's 600 s ack deadline.
const PUSH_TIMEOUT: Duration = Duration::from_secs(590);

/// `POST /` takes a storage event, from anyone (see [`gated_router`]);
/// `GET /healthz` answers.
pub fn router(downloader: Arc<Downloader>) -> Router {
    gated_router(downloader, PushGate::open())
}

/// [`router`], taking only the pushes `gate` admits.
pub fn gated_router(downloader: Arc<Downloader>, gate: PushGate) -> Router {
    let app = Router::new()
        .route("/", server::push_route::<Downloader>(&Arc::new(gate)))
        .with_state(downloader);
    server::with_basics(app, PUSH_TIMEOUT)
}

impl server::Push for Downloader {
    type Message = ObjectEvent;

    fn decode(&self, headers: &HeaderMap, body: &Bytes) -> Result<ObjectEvent, String> {
        crate::events::decode(headers, body).map_err(|poison| poison.to_string())
    }

    fn span(&self, event: &ObjectEvent) -> tracing::Span {
        tracing::info_span!("storage_event", message_id = %event.event_id, object = %event.uri())
    }

    async fn handle(&self, event: ObjectEvent) -> Handled {
        Downloader::handle(self, &event).await
    }
}

/// How the downloader binary runs.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Mode {
    /// Serve storage events on $PORT (the default).
    Serve,
    /// Copy every pending download (retried ones, ones whose event was lost)
    /// in priority order, then exit (a Cloud Run job).
    Drain {
        /// Stop after this many downloads.
        #[arg(long)]
        max_jobs: Option<u64>,
    },
}

/// The `downloader` binary.
pub async fn downloader(args: DownloaderArgs, mode: Mode) -> anyhow::Result<()> {
    tracing::info!(
        buckets = %args.output.describe(),
        destination = %args.destination,
        concurrency = args.concurrency,
        timeout = ?args.timeout,
        "downloader starting"
    );
    let output_buckets = args.output.all()?;
    let store = args.store.connect().await?.store;
    let objects = args.objects.object_store().await?;
    let settings = DownloaderSettings {
        output_buckets,
        destination: args.destination.clone(),
        concurrency: args.concurrency,
        timeout: args.timeout,
        lease: args.lease,
        image_priority: args.image_priority,
        video_priority: args.video_priority,
    };
    let downloader = Downloader::new(store.clone(), objects, settings);
    let work = match mode {
        Mode::Serve => {
            let gate = args.serve.identity.push_gate("downloader");
            server::Work::Serve(gated_router(Arc::new(downloader), gate))
        }
        Mode::Drain { max_jobs } => server::Work::Drain(async move {
            downloader.drain(max_jobs).await?.log("downloader");
            Ok(())
        }),
    };
    server::serve_or_drain(&store, args.serve.port, work).await
}
