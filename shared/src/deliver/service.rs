//! The downloader's HTTP face (`POST /` for both Pub/Sub pushes and Eventarc
//! CloudEvents) and its binary entry point.

use super::{Destination, Downloader, DownloaderSettings};
use crate::ack::Handled;
use crate::config::{ObjectArgs, StoreArgs, parse_duration};
use crate::server;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::routing::post;
use clap::Args;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Everything the downloader reads from the environment.
#[derive(Clone, Debug, Args)]
pub struct DownloaderArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Output bucket(s) whose objects are delivered (comma-separated).
    #[arg(
        long,
        env = "GCS_OUTPUT_BUCKET",
        value_delimiter = ',',
        required = true
    )]
    pub output_buckets: Vec<String>,
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
    /// Port of the HTTP service.
    #[arg(long, env = "PORT", default_value = "8080")]
    pub port: u16,
    #[command(flatten)]
    pub objects: ObjectArgs,
}

/// How long one push may take: the copy, under Pub/Sub's 600 s ack deadline.
const PUSH_TIMEOUT: Duration = Duration::from_secs(590);

/// `POST /` takes a storage event; `GET /healthz` answers.
pub fn router(downloader: Arc<Downloader>) -> Router {
    let app = Router::new()
        .route("/", post(event_handler))
        .with_state(downloader);
    server::with_basics(app, PUSH_TIMEOUT)
}

async fn event_handler(
    State(downloader): State<Arc<Downloader>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Handled {
    let body = match server::push_body(body) {
        Ok(body) => body,
        Err(handled) => return handled.logged(),
    };
    let event = match crate::events::decode(&headers, &body) {
        Ok(event) => event,
        Err(poison) => return Handled::Poison(poison.to_string()).logged(),
    };
    let span =
        tracing::info_span!("storage_event", message_id = %event.event_id, object = %event.uri());
    async move { downloader.handle(&event).await.logged() }
        .instrument(span)
        .await
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
        buckets = ?args.output_buckets,
        destination = %args.destination,
        concurrency = args.concurrency,
        timeout = ?args.timeout,
        "downloader starting"
    );
    let store = args.store.open().await?;
    let objects = args.objects.object_store().await?;
    let settings = DownloaderSettings {
        output_buckets: args.output_buckets.clone(),
        destination: args.destination.clone(),
        concurrency: args.concurrency,
        timeout: args.timeout,
        lease: args.lease,
        image_priority: args.image_priority,
        video_priority: args.video_priority,
    };
    let downloader = Downloader::new(store.clone(), objects, settings);
    match mode {
        Mode::Serve => server::serve_on(args.port, router(Arc::new(downloader))).await?,
        Mode::Drain { max_jobs } => downloader.drain(max_jobs).await?.log("downloader"),
    }
    store.flush_events().await;
    Ok(())
}
