//! The stages of a local run, as tasks of one process: the generators'
//! drain loops, the poller, and the downloader fed with the finalize events
//! the cloud would send; and the lock that keeps one run per state folder.

use super::{LOCAL_BUCKET, LOCK_FILE, RunSettings};
use crate::ack::Handled;
use crate::bus::Topics;
use crate::bus::memory::{MemoryBus, Message};
use crate::deliver::{Downloader, DownloaderSettings};
use crate::domain::destination::Destination;
use crate::domain::gs_uri::GsUri;
use crate::domain::job::Job;
use crate::domain::values::{JobKind, JobStatus};
use crate::error::{Error, Result};
use crate::events::{ObjectEvent, ObjectEventKind};
use crate::generate::images::ImageGenerator;
use crate::generate::poller::{PollerSettings, VideoPoller};
use crate::generate::videos::VideoGenerator;
use crate::generate::{Generator, GeneratorCore, GeneratorSettings, drain};
use crate::intake::promote::Promoter;
use crate::job_events::JobEvent;
use crate::objects::ObjectStore;
use crate::server::Push;
use crate::stage::DrainLimits;
use crate::store::{JobFilter, Store};
use crate::vertex::RetryPolicy;
use crate::vertex::client::VertexClient;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// A model for a dry run, which never calls one: every job of a dry run is
/// generated from placeholders before a model could be asked.
pub(super) struct NoModel;

pub(super) fn no_model() -> crate::vertex::ModelError {
    crate::vertex::ModelError {
        class: crate::vertex::ErrorClass::Permanent,
        code: "dry_run".into(),
        message: "a dry run calls no model".into(),
        http_status: None,
    }
}

#[async_trait::async_trait]
impl crate::vertex::ImageModel for NoModel {
    async fn generate(
        &self,
        _: &crate::vertex::ImageRequest,
    ) -> std::result::Result<crate::vertex::ImageOutcome, crate::vertex::ModelError> {
        Err(no_model())
    }
}

#[async_trait::async_trait]
impl crate::vertex::VideoModel for NoModel {
    async fn submit(
        &self,
        _: &crate::vertex::VideoRequest,
    ) -> std::result::Result<String, crate::vertex::ModelError> {
        Err(no_model())
    }
    async fn poll(
        &self,
        _: &str,
    ) -> std::result::Result<crate::vertex::OperationState, crate::vertex::ModelError> {
        Err(no_model())
    }
}

/// Holds the state directory for one run; released when dropped.
pub(super) struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    pub(super) fn take(state_dir: &Path) -> Result<Self> {
        let context = || format!("locking the state directory {}", state_dir.display());
        crate::beneath::private_dir(state_dir).map_err(|e| Error::store(context(), e, false))?;
        let file = crate::beneath::private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join(LOCK_FILE))
            .map_err(|e| Error::store(context(), e, false))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::store(
                context(),
                "another `asmr run` is using it; wait for it to finish or use another --state-dir",
                false,
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::store(context(), e, false)),
        }
    }
}

/// Everything the stages of one run share.
pub(super) struct Stages {
    pub(super) store: Store,
    pub(super) objects: Arc<dyn ObjectStore>,
    pub(super) images: ImageGenerator,
    pub(super) videos: VideoGenerator,
    pub(super) poller: Option<VideoPoller>,
    pub(super) downloader: Downloader,
}

pub(super) async fn build_stages(
    store: Store,
    local_objects: Arc<dyn ObjectStore>,
    settings: &RunSettings,
) -> Result<Stages> {
    let (objects, bucket): (Arc<dyn ObjectStore>, String) =
        match settings.live.as_ref().and_then(|live| live.bucket.clone()) {
            Some(bucket) => (
                Arc::new(
                    crate::objects::gcs::GcsObjectStore::new(crate::objects::gcs::GcsConfig {
                        emulator_endpoint: None,
                    })
                    .await?,
                ),
                bucket,
            ),
            None => (local_objects, LOCAL_BUCKET.to_string()),
        };
    if settings.kind == JobKind::Video
        && let Some(live) = &settings.live
        && live.bucket.is_none()
    {
        return Err(Error::store(
            "starting a live video run",
            "Veo writes its videos to Cloud Storage: name a bucket with --bucket",
            false,
        ));
    }
    let (images_model, videos_model): (
        Arc<dyn crate::vertex::ImageModel>,
        Arc<dyn crate::vertex::VideoModel>,
    ) = match &settings.live {
        Some(live) => {
            let client = Arc::new(
                VertexClient::new(live.vertex.clone())
                    .map_err(|e| Error::store("configuring Vertex AI", e, false))?,
            );
            let outputs = live.bucket.as_deref();
            client.preflight(outputs).await.map_err(|e| {
                Error::store(
                    "checking that Vertex AI can be called (nothing was created)",
                    e.message,
                    false,
                )
            })?;
            (client.clone(), client)
        }
        None => (Arc::new(NoModel), Arc::new(NoModel)),
    };
    // Only once the checks passed: on Cloud Storage this may create it.
    objects.ensure_bucket(&bucket).await?;
    let generator = |model: String| GeneratorSettings {
        output_bucket: bucket.clone(),
        default_model: model,
        dry_run: settings.live.is_none(),
        lease_ttl: Duration::from_secs(600),
        operation_timeout: settings.operation_timeout,
        retry: RetryPolicy::default(),
    };
    let (image_model, video_model) = match &settings.live {
        Some(live) => (
            live.vertex.image_model.clone(),
            live.vertex.video_model.clone(),
        ),
        None => (
            crate::vertex::DEFAULT_IMAGE_MODEL.to_string(),
            crate::vertex::DEFAULT_VIDEO_MODEL.to_string(),
        ),
    };
    let poller = settings.live.as_ref().map(|_| {
        VideoPoller::new(
            store.clone(),
            videos_model.clone(),
            objects.clone(),
            PollerSettings {
                operation_timeout: settings.operation_timeout,
                polling_interval: settings.polling_interval,
                max_runtime: Duration::MAX,
                output_bucket: bucket.clone(),
            },
        )
    });
    let cost_guard = match &settings.live {
        Some(live) => {
            let today = crate::store::budget::budget_day_of(crate::time::Timestamp::now());
            let day = store.budget_day(&today).await?;
            let spent = day.spent_micros.saturating_add(day.reserved_micros);
            crate::cost::CostGuard {
                prices: crate::cost::PriceTable::list_prices(),
                budget_micros: Some(live.cap.day_limit(spent)),
            }
        }
        None => crate::cost::CostGuard::default(),
    };
    Ok(Stages {
        images: ImageGenerator::new(
            store.clone(),
            objects.clone(),
            images_model,
            generator(image_model),
        )
        .with_cost_guard(cost_guard.clone()),
        videos: VideoGenerator::new(
            store.clone(),
            objects.clone(),
            videos_model,
            generator(video_model),
        )
        .with_cost_guard(cost_guard),
        poller,
        downloader: Downloader::new(
            store.clone(),
            objects.clone(),
            DownloaderSettings {
                output_buckets: vec![bucket.clone()],
                destination: Destination::Directory(settings.out_dir.clone()),
                concurrency: settings.download_workers.max(1),
                timeout: Duration::from_secs(300),
                // Short, and extended while bytes arrive: after an
                // interruption the next run takes a copy over within seconds.
                lease: Duration::from_secs(5),
                image_priority: 1,
                video_priority: 0,
            },
        ),
        store,
        objects,
    })
}

/// How often the loops look for new work.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// Takes jobs one at a time until `stopping`: a job taken is always seen
/// through, so a paid request is never abandoned half-way by a stop.
pub(super) async fn keep_draining<M: ?Sized>(
    generator: &GeneratorCore<M>,
    stopping: &AtomicBool,
) -> Result<()>
where
    GeneratorCore<M>: Generator,
{
    let one = DrainLimits {
        max_jobs: Some(1),
        ..DrainLimits::default()
    };
    while !stopping.load(Ordering::SeqCst) {
        let report = drain(generator, one).await?;
        if report.processed == 0 {
            tokio::time::sleep(TICK).await;
        }
    }
    Ok(())
}

pub(super) async fn keep_polling(
    stages: &Stages,
    finished: &AtomicBool,
    interval: Duration,
) -> Result<()> {
    let Some(poller) = &stages.poller else {
        return Ok(());
    };
    while !finished.load(Ordering::SeqCst) {
        let report = poller.round().await?;
        let pause = if report.polled == 0 { TICK } else { interval };
        let until = Instant::now() + pause;
        while Instant::now() < until && !finished.load(Ordering::SeqCst) {
            tokio::time::sleep(TICK).await;
        }
    }
    Ok(())
}

/// The job events of the run, handed to the promoter as a push
/// subscription would hand them, and how far it got.
pub(super) struct Promotions {
    events: Arc<MemoryBus>,
    topic: String,
    handled: AtomicU64,
}

/// Tries of one event the promoter answers with "retry" (store trouble).
const PROMOTION_TRIES: u32 = 5;

impl Promotions {
    /// Subscribes to the job events of `events`, before anything is
    /// published on it, so that every event is seen; the subscription is
    /// for [`Promotions::keep_promoting`].
    pub(super) fn new(
        events: &Arc<MemoryBus>,
        topics: &Topics,
    ) -> (Self, UnboundedReceiver<Message>) {
        let topic = topics.job_events();
        let subscription = events.subscribe(&topic);
        let promotions = Self {
            events: events.clone(),
            topic,
            handled: AtomicU64::new(0),
        };
        (promotions, subscription)
    }

    /// Hands every job event of `subscription` to `promoter`, in order,
    /// until `finished`.
    pub(super) async fn keep_promoting(
        &self,
        promoter: &Promoter,
        mut subscription: UnboundedReceiver<Message>,
        finished: &AtomicBool,
    ) {
        while !finished.load(Ordering::SeqCst) {
            let message = match tokio::time::timeout(TICK, subscription.recv()).await {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(_) => continue,
            };
            match serde_json::from_slice::<JobEvent>(&message.data) {
                Ok(event) => {
                    for _ in 0..PROMOTION_TRIES {
                        let handled = promoter.handle(event.clone()).await;
                        tracing::debug!(job_id = %event.job_id, outcome = ?handled, "job event handled");
                        if !matches!(handled, Handled::Retry { .. }) {
                            break;
                        }
                        tokio::time::sleep(TICK).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a message on the job events topic is not a job event")
                }
            }
            self.handled.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Events published so far (with those the store is still relaying).
    async fn published(&self, store: &Store) -> usize {
        store.flush_events().await;
        self.events.published_count(&self.topic)
    }

    /// Reads the run's jobs (`read`) in a moment when the promoter has seen
    /// every event: `Some` when no event was unhandled before the read and
    /// none came during it, so that every video the events ask for is among
    /// the jobs read; `None` with the jobs otherwise.
    pub(super) async fn read_settled<T, F, Fut>(&self, store: &Store, read: F) -> Result<(T, bool)>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let seen = self.published(store).await;
        let caught_up = self.handled.load(Ordering::SeqCst) as usize == seen;
        let jobs = read().await?;
        let quiet = self.published(store).await == seen;
        Ok((jobs, caught_up && quiet))
    }
}

/// The downloader's side of the run: which outputs it has been handed.
#[derive(Default)]
pub(super) struct Handed {
    /// Outputs handed to the downloader, and when.
    pub(super) handed: std::sync::Mutex<HashMap<GsUri, Instant>>,
    /// Whether the last scan found every completed job's outputs handed.
    pub(super) caught_up: AtomicBool,
}

/// Hands an output again if its job is still not delivered after this long
/// (a copy whose lease was left by an interrupted run, a retried download).
pub(super) const HAND_AGAIN_AFTER: Duration = Duration::from_secs(6);

pub(super) async fn keep_delivering(
    stages: &Stages,
    delivery: &Handed,
    finished: &AtomicBool,
) -> Result<()> {
    use futures::StreamExt;
    while !finished.load(Ordering::SeqCst) {
        let jobs = completed_jobs(&stages.store).await?;
        let mut events = Vec::new();
        {
            let now = Instant::now();
            let mut handed = delivery
                .handed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for job in &jobs {
                let delivered: HashSet<&GsUri> =
                    job.deliveries().iter().map(|d| &d.source).collect();
                for output in job.outputs() {
                    if delivered.contains(output)
                        || handed
                            .get(output)
                            .is_some_and(|at| now.duration_since(*at) < HAND_AGAIN_AFTER)
                    {
                        continue;
                    }
                    handed.insert(output.clone(), now);
                    events.push(output.clone());
                }
            }
        }
        delivery
            .caught_up
            .store(events.is_empty(), Ordering::SeqCst);
        let handled: Vec<Result<()>> = futures::stream::iter(events)
            .map(|output| hand_over(stages, output))
            .buffer_unordered(stages.downloader.settings().concurrency)
            .collect()
            .await;
        for result in handled {
            result?;
        }
        // Downloads given back after transient trouble.
        stages.downloader.drain(None).await?;
        tokio::time::sleep(TICK).await;
    }
    Ok(())
}

/// Gives the downloader the finalize event of one output, as GCS would.
pub(super) async fn hand_over(stages: &Stages, uri: GsUri) -> Result<()> {
    let Some(meta) = stages.objects.metadata(&uri.bucket, &uri.name).await? else {
        tracing::warn!(output = %uri, "an output of a completed job is missing");
        return Ok(());
    };
    let event = ObjectEvent {
        kind: ObjectEventKind::Finalized,
        bucket: meta.bucket.clone(),
        name: meta.name.clone(),
        generation: Some(meta.generation),
        event_id: format!("local-{}#{}", meta.uri(), meta.generation),
    };
    let handled = stages.downloader.handle(&event).await;
    tracing::debug!(output = %uri, outcome = ?handled, "output handed to the downloader");
    Ok(())
}

pub(super) async fn completed_jobs(store: &Store) -> Result<Vec<Job>> {
    store
        .all_jobs(&JobFilter::status(JobStatus::Completed))
        .await
}
