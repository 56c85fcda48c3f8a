//! The local run: every stage in one process on the embedded adapters.
//!
//! `asmr run prompts.txt` creates one job per prompt line in the SQLite
//! store under the state directory, then runs the same stage code the cloud
//! runs: the image and video generators' drain loops (placeholders in a dry
//! run, Vertex AI with `--live`), the video poller, and the downloader, which
//! copies every output from the local bucket directory to the output
//! directory with the same resume and CRC32C checks. Job events go to an
//! in-process bus.
//!
//! Where the cloud learns of a finished object from a GCS notification, the
//! local run hands the downloader the same finalize event for every output
//! of a completed job it finds in the store. That scan is what makes a rerun
//! after an interruption finish the work: nothing depends on an event that
//! was lost with the process.
//!
//! A rerun on the same state directory creates no duplicates: each job's
//! request id is derived from its kind, its prompt and how many times that
//! prompt came before it in the file. One run at a time holds the state
//! directory (a lock file), so at start every leased job is known to belong
//! to a dead process and goes straight back to the queue.

use crate::bus::memory::MemoryBus;
use crate::bus::{Bus, Topics};
use crate::deliver::{Destination, Downloader, DownloaderSettings};
use crate::domain::job::{Job, JobKind, JobStatus, NewJob};
use crate::domain::review::{Chain, PromoteOptions};
use crate::error::{Error, Result};
use crate::events::{ObjectEvent, ObjectEventKind};
use crate::generate::images::ImageGenerator;
use crate::generate::poller::{PollerSettings, VideoPoller};
use crate::generate::videos::VideoGenerator;
use crate::generate::{DrainLimits, Generator, GeneratorSettings, drain};
use crate::job_events::BusJobEvents;
use crate::objects::{GsUri, ObjectStore};
use crate::requests::prompt_lines;
use crate::store::{JobFilter, Store, StoreConfig};
use crate::vertex::{RetryPolicy, VertexClient, VertexConfig};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The bucket a local run writes its outputs to (a directory under
/// `STATE_DIR/objects`).
pub const LOCAL_BUCKET: &str = "asmr-local";
/// The lock file that keeps two runs off one state directory.
pub const LOCK_FILE: &str = "run.lock";

/// Calling the real models instead of writing placeholders.
#[derive(Clone, Debug)]
pub struct Live {
    /// Vertex AI: project, location, models, retries.
    pub vertex: VertexConfig,
    /// A real Cloud Storage bucket for the outputs. Veo writes its videos to
    /// Cloud Storage, so live video jobs need one; images do not.
    pub bucket: Option<String>,
}

/// What a local run does.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// The prompts, one per line (blank lines and `#` comments skipped).
    pub prompts: Vec<u8>,
    /// Kind of every job.
    pub kind: JobKind,
    /// Where the files are delivered.
    pub out_dir: PathBuf,
    /// Store, local buckets, lock.
    pub state_dir: PathBuf,
    /// `None`: a dry run.
    pub live: Option<Live>,
    /// Image jobs generated at once.
    pub image_workers: usize,
    /// Video jobs submitted at once.
    pub video_workers: usize,
    /// Copies at once.
    pub download_workers: usize,
    /// Pause between polls of running video operations.
    pub polling_interval: Duration,
    /// How long a live video operation may run.
    pub operation_timeout: Duration,
    /// Make a video of every image once it is delivered, starting from it.
    pub chain: bool,
}

impl RunSettings {
    /// A dry run of `prompts` with the default concurrency.
    pub fn dry_run(prompts: Vec<u8>, kind: JobKind, out_dir: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            prompts,
            kind,
            out_dir,
            state_dir,
            live: None,
            image_workers: 4,
            video_workers: 2,
            download_workers: 5,
            polling_interval: Duration::from_secs(15),
            operation_timeout: Duration::from_secs(1800),
            chain: false,
        }
    }
}

/// Where a run stands, for a progress display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Jobs of this run.
    pub total: u64,
    /// Jobs whose model work is over (completed, delivered, or failed).
    pub generated: u64,
    /// Jobs with every output delivered.
    pub delivered: u64,
    /// Jobs failed or cancelled.
    pub failed: u64,
}

/// A prompt line that could not become a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line number.
    pub line: usize,
    /// Why the line is not a job, in words for the operator.
    pub reason: String,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Jobs this run created.
    pub created: u64,
    /// Jobs of this file that an earlier run had created already.
    pub existing: u64,
    /// Jobs left over by an interrupted run and put back in the queue.
    pub resumed: u64,
    /// Lines that were not prompts.
    pub skipped: Vec<Skipped>,
    /// This run's jobs per status at the end.
    pub statuses: BTreeMap<JobStatus, u64>,
    /// Failed jobs with their errors, at most [`FAILURES_SHOWN`].
    pub failures: Vec<(String, String)>,
    /// Files delivered for this run's jobs.
    pub files: u64,
    /// Job events published.
    pub events: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether the run was interrupted before it finished.
    pub interrupted: bool,
    /// Where the files are.
    pub out_dir: PathBuf,
    /// Where the state is.
    pub state_dir: PathBuf,
    /// The contact sheet of the run, once written.
    pub sheet: Option<PathBuf>,
}

impl RunReport {
    /// Jobs of this run.
    pub fn jobs(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Jobs this run brought to a terminal status (one job event each), per
    /// second of the run.
    pub fn jobs_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The most failures a report lists.
pub const FAILURES_SHOWN: usize = 10;

/// The folder of one run under `out`: the prompts file's name and a digest
/// of what the run makes (kind, chaining, prompts), so that a rerun of the
/// same file resumes into the same folder and another file or another
/// content gets its own.
pub fn run_folder(out: &Path, file: &Path, prompts: &[u8], kind: JobKind, chain: bool) -> PathBuf {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b1e_0d47_2c93_4f5a_9e08_d3a1_57c6_4b29);
    let stem: String = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && s != "-")
        .unwrap_or_else(|| "stdin".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut key = format!("{}\n{chain}\n", kind.as_str()).into_bytes();
    key.extend_from_slice(prompts);
    let digest = uuid::Uuid::new_v5(&NAMESPACE, &key).simple().to_string();
    out.join(format!("{stem}-{}", &digest[..8]))
}

/// The request id of the `occurrence`-th copy (from 0) of `prompt` in a
/// prompts file: stable across runs, so a rerun finds its jobs.
pub fn request_id(kind: JobKind, prompt: &str, occurrence: usize) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x0f3c_52d1_8a0e_4b7d_a1c4_6e29_d5b8_31f0);
    let key = format!("{}\n{occurrence}\n{prompt}", kind.as_str());
    format!(
        "local-{}",
        uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes()).simple()
    )
}

/// A model for a dry run, which never calls one: every job of a dry run is
/// generated from placeholders before a model could be asked.
struct NoModel;

fn no_model() -> crate::vertex::ModelError {
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
struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    fn take(state_dir: &Path) -> Result<Self> {
        let context = || format!("locking the state directory {}", state_dir.display());
        std::fs::create_dir_all(state_dir).map_err(|e| Error::store(context(), e, false))?;
        let file = std::fs::OpenOptions::new()
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
struct Stages {
    store: Store,
    objects: Arc<dyn ObjectStore>,
    images: ImageGenerator,
    videos: VideoGenerator,
    poller: Option<VideoPoller>,
    downloader: Downloader,
}

/// Runs `settings` until every job of the file is settled or an interrupt
/// comes: `interrupt()` resolves once per interrupt. At the first one, no
/// new job is taken and the paid requests in flight are waited for, so that
/// their outcomes are recorded rather than left in doubt; a second one
/// abandons them. `progress` is called a few times a second.
pub async fn run<F>(
    settings: RunSettings,
    progress: impl Fn(&Progress) + Send + Sync,
    interrupt: impl Fn() -> F,
) -> Result<RunReport>
where
    F: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let _lock = StateLock::take(&settings.state_dir)?;
    let bus = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    for topic in topics.all() {
        bus.ensure_topic(&topic).await?;
    }
    let store = Store::open(&StoreConfig::Embedded {
        state_dir: settings.state_dir.clone(),
    })
    .await?
    .with_events(Arc::new(BusJobEvents::new(
        bus.clone(),
        topics.job_events(),
    )));

    let mut report = RunReport {
        out_dir: settings.out_dir.clone(),
        state_dir: settings.state_dir.clone(),
        ..RunReport::default()
    };
    // Before anything is created: a live run that cannot reach Vertex AI
    // says so now, once, instead of failing job after job.
    let stages = Arc::new(build_stages(store.clone(), &settings).await?);
    // Whatever is leased belongs to a run that died: the lock says no other
    // run is alive. Video jobs keep their operation, and a paid request the
    // dead run may have sent is settled by the next claim, never sent again.
    let reset = store.reset_stuck_jobs(Duration::ZERO).await?;
    report.resumed = reset.requeued.len() as u64;

    let ids = create_jobs(&store, &settings, &mut report).await?;

    // Generators stop taking jobs when `stopping` is set; the other loops
    // stop when `finished` is.
    let stopping = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let mut generators = tokio::task::JoinSet::new();
    for _ in 0..settings.image_workers.max(1) {
        let (stages, stopping) = (stages.clone(), stopping.clone());
        generators.spawn(async move { keep_draining(&stages.images, &stopping).await });
    }
    for _ in 0..settings.video_workers.max(1) {
        let (stages, stopping) = (stages.clone(), stopping.clone());
        generators.spawn(async move { keep_draining(&stages.videos, &stopping).await });
    }
    let mut others = tokio::task::JoinSet::new();
    let delivery = Arc::new(Delivery::default());
    {
        let (stages, finished, delivery) = (stages.clone(), finished.clone(), delivery.clone());
        others.spawn(async move { keep_delivering(&stages, &delivery, &finished).await });
    }

    // The poller runs here rather than as a task: its rounds borrow the jobs
    // they poll.
    let work = async {
        let watch = async {
            let settled =
                watch_until_settled(&stages.store, &ids, settings.chain, &delivery, &progress)
                    .await;
            finished.store(true, Ordering::SeqCst);
            stopping.store(true, Ordering::SeqCst);
            settled
        };
        let (settled, polled) = tokio::join!(
            watch,
            keep_polling(&stages, &finished, settings.polling_interval)
        );
        settled.and(polled)
    };
    let interrupted = tokio::select! {
        outcome = work => { outcome?; false }
        () = interrupt() => true,
        Some(Ok(Err(e))) = generators.join_next() => return Err(e),
        Some(Ok(Err(e))) = others.join_next() => return Err(e),
    };
    stopping.store(true, Ordering::SeqCst);
    if interrupted {
        tracing::warn!(
            "interrupted: no new job is taken; waiting for the paid requests in flight (interrupt again to abandon them)"
        );
        // Copies and polls are resumable: they stop at once.
        finished.store(true, Ordering::SeqCst);
        others.abort_all();
        let all_done = async { while generators.join_next().await.is_some() {} };
        tokio::select! {
            () = all_done => {}
            () = interrupt() => {
                tracing::warn!("abandoning the requests in flight; the next run settles them without sending them again");
                generators.abort_all();
            }
        }
    }
    finished.store(true, Ordering::SeqCst);
    for tasks in [&mut generators, &mut others] {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                tracing::warn!(error = %e, "a stage of the local run stopped with an error");
            }
        }
    }

    report.interrupted = interrupted;
    tally(&stages.store, &ids, &mut report).await?;
    report.sheet = Some(write_sheet(&stages.store, &ids, &settings.out_dir).await?);
    progress(&snapshot(&stages.store, &ids).await?);
    stages.store.flush_events().await;
    report.events = bus.published(&topics.job_events()).len() as u64;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Writes the run's contact sheet into its folder.
async fn write_sheet(store: &Store, ids: &[String], out_dir: &Path) -> Result<PathBuf> {
    let jobs = crate::report::with_children(store, ids).await?;
    let title = format!(
        "asmr run {}",
        out_dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let sheet = crate::report::sheet(
        &title,
        &jobs,
        &[],
        out_dir,
        &crate::cost::PriceTable::list_prices(),
    );
    let path = out_dir.join(crate::report::REPORT_NAME);
    crate::report::write(&sheet, &path)?;
    Ok(path)
}

async fn create_jobs(
    store: &Store,
    settings: &RunSettings,
    report: &mut RunReport,
) -> Result<Vec<String>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut ids = Vec::new();
    for (line, prompt) in prompt_lines(&settings.prompts) {
        let prompt = match prompt {
            Ok(prompt) => prompt,
            Err(reason) => {
                report.skipped.push(Skipped {
                    line,
                    reason: reason.to_string(),
                });
                continue;
            }
        };
        let occurrence = seen.entry(prompt.clone()).or_default();
        let mut new = NewJob::new(prompt.clone(), settings.kind);
        new.request_id = Some(request_id(settings.kind, &prompt, *occurrence));
        new.dry_run = settings.live.is_none();
        if settings.chain && settings.kind == JobKind::Image {
            new.chain = Some(Chain::Video);
        }
        *occurrence += 1;
        match store.create_job(new).await {
            Ok(created) => {
                if created.created {
                    report.created += 1;
                } else {
                    report.existing += 1;
                }
                ids.push(created.record.id().to_string());
            }
            Err(Error::Invalid(reason)) => report.skipped.push(Skipped {
                line,
                reason: reason.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(ids)
}

async fn build_stages(store: Store, settings: &RunSettings) -> Result<Stages> {
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
            None => (
                Arc::new(crate::objects::local::LocalObjectStore::new(
                    settings.state_dir.join("objects"),
                )),
                LOCAL_BUCKET.to_string(),
            ),
        };
    objects.ensure_bucket(&bucket).await?;
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
            client.preflight().await.map_err(|e| {
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
    Ok(Stages {
        images: ImageGenerator::new(
            store.clone(),
            objects.clone(),
            images_model,
            generator(image_model),
        ),
        videos: VideoGenerator::new(
            store.clone(),
            objects.clone(),
            videos_model,
            generator(video_model),
        ),
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
const TICK: Duration = Duration::from_millis(100);

/// Takes jobs one at a time until `stopping`: a job taken is always seen
/// through, so a paid request is never abandoned half-way by a stop.
async fn keep_draining<G: Generator>(generator: &G, stopping: &AtomicBool) -> Result<()> {
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

async fn keep_polling(stages: &Stages, finished: &AtomicBool, interval: Duration) -> Result<()> {
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

/// The downloader's side of the run: which outputs it has been handed.
#[derive(Default)]
struct Delivery {
    /// Outputs handed to the downloader, and when.
    handed: std::sync::Mutex<HashMap<String, Instant>>,
    /// Whether the last scan found every completed job's outputs handed.
    caught_up: AtomicBool,
}

/// Hands an output again if its job is still not delivered after this long
/// (a copy whose lease was left by an interrupted run, a retried download).
const HAND_AGAIN_AFTER: Duration = Duration::from_secs(6);

async fn keep_delivering(
    stages: &Stages,
    delivery: &Delivery,
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
                let delivered: HashSet<&str> =
                    job.deliveries().iter().map(|d| d.source.as_str()).collect();
                for output in job.outputs() {
                    if delivered.contains(output.as_str())
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
async fn hand_over(stages: &Stages, output: String) -> Result<()> {
    let Some(uri) = GsUri::parse(&output) else {
        tracing::warn!(
            output,
            "an output is not a gs:// URI; it cannot be delivered"
        );
        return Ok(());
    };
    let Some(meta) = stages.objects.metadata(&uri.bucket, &uri.name).await? else {
        tracing::warn!(output, "an output of a completed job is missing");
        return Ok(());
    };
    let event = ObjectEvent {
        kind: ObjectEventKind::Finalized,
        bucket: meta.bucket.clone(),
        name: meta.name.clone(),
        generation: Some(meta.generation),
        size: Some(meta.size),
        crc32c: Some(meta.crc32c),
        content_type: Some(meta.content_type.clone()),
        event_id: format!("local-{}#{}", meta.uri(), meta.generation),
        event_time: None,
    };
    let handled = stages.downloader.handle(&event).await;
    tracing::debug!(output, outcome = ?handled, "output handed to the downloader");
    Ok(())
}

async fn completed_jobs(store: &Store) -> Result<Vec<Job>> {
    let filter = JobFilter {
        status: Some(JobStatus::Completed),
        kind: None,
        approved: None,
    };
    let mut jobs = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_jobs(&filter, 500, after.as_deref()).await?;
        jobs.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(jobs),
        }
    }
}

/// Makes the video of every delivered image of `ids` that has none yet
/// (a chained run). Promoting is idempotent, so a rerun makes no second
/// video; an image that cannot be promoted is reported and left.
async fn promote_delivered(store: &Store, ids: &[String]) -> Result<()> {
    for id in ids {
        let Some(job) = store.get_job(id).await? else {
            continue;
        };
        if job.kind() != JobKind::Image
            || job.status() != JobStatus::Delivered
            || !job.children().is_empty()
        {
            continue;
        }
        match store.promote(id, &PromoteOptions::default()).await {
            Ok(promoted) => {
                tracing::info!(
                    image = id,
                    video = promoted.video.id(),
                    "video job made from the image"
                );
            }
            Err(e @ (Error::Transition { .. } | Error::Invalid(_))) => {
                tracing::warn!(image = id, error = %e, "the image cannot be made into a video");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where this run's jobs stand.
async fn snapshot(store: &Store, ids: &[String]) -> Result<Progress> {
    let jobs = crate::report::with_children(store, ids).await?;
    let mut progress = Progress {
        total: jobs.len() as u64,
        ..Progress::default()
    };
    for job in jobs {
        match job.status() {
            JobStatus::Completed => progress.generated += 1,
            JobStatus::Delivered => {
                progress.generated += 1;
                progress.delivered += 1;
            }
            JobStatus::Failed | JobStatus::Cancelled => {
                progress.generated += 1;
                progress.failed += 1;
            }
            JobStatus::Pending | JobStatus::Processing | JobStatus::Generating => {}
        }
    }
    Ok(progress)
}

/// Reports progress until nothing is left to do: no job waiting or being
/// generated, no copy waiting or running, and every output of every
/// completed job handed to the downloader.
async fn watch_until_settled(
    store: &Store,
    ids: &[String],
    chain: bool,
    delivery: &Delivery,
    progress: &(impl Fn(&Progress) + Send + Sync),
) -> Result<()> {
    use crate::domain::download::DownloadStatus;
    let mut quiet_since: Option<Instant> = None;
    loop {
        if chain {
            promote_delivered(store, ids).await?;
        }
        let now = snapshot(store, ids).await?;
        progress(&now);
        let jobs = store.job_counts().await?;
        let downloads = store.download_counts().await?;
        let busy = [
            JobStatus::Pending,
            JobStatus::Processing,
            JobStatus::Generating,
        ]
        .iter()
        .any(|s| jobs.status(*s) > 0)
            || [DownloadStatus::Pending, DownloadStatus::Downloading]
                .iter()
                .any(|s| downloads.status(*s) > 0)
            || !delivery.caught_up.load(Ordering::SeqCst);
        // Every job of this run terminal is enough; otherwise the work must
        // have been quiet for a moment (a completed job whose copy failed
        // for good stays completed).
        if now.total == now.delivered + now.failed {
            return Ok(());
        }
        match (busy, quiet_since) {
            (true, _) => quiet_since = None,
            (false, None) => quiet_since = Some(Instant::now()),
            (false, Some(since)) if since.elapsed() >= Duration::from_secs(1) => return Ok(()),
            (false, Some(_)) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn tally(store: &Store, ids: &[String], report: &mut RunReport) -> Result<()> {
    for job in crate::report::with_children(store, ids).await? {
        *report.statuses.entry(job.status()).or_default() += 1;
        report.files += job.deliveries().len() as u64;
        if job.has_ended()
            && job.status() != JobStatus::Delivered
            && report.failures.len() < FAILURES_SHOWN
        {
            let reason = job.error().map_or_else(
                || job.status().to_string(),
                |e| format!("{}: {}", e.code, e.message),
            );
            report.failures.push((job.id().to_string(), reason));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_stable_and_tell_repeated_prompts_apart() {
        let a = request_id(JobKind::Image, "rain on a tin roof", 0);
        assert_eq!(a, request_id(JobKind::Image, "rain on a tin roof", 0));
        assert_ne!(a, request_id(JobKind::Image, "rain on a tin roof", 1));
        assert_ne!(a, request_id(JobKind::Video, "rain on a tin roof", 0));
        assert_ne!(a, request_id(JobKind::Image, "rain on a tin roof.", 0));
        assert!(a.starts_with("local-") && a.len() < 100);
    }

    #[test]
    fn prompt_lines_skip_blanks_and_comments_and_flag_bad_bytes() {
        let file = b"\xef\xbb\xbffirst\r\n\n  # a comment\n  second  \n\xff\xfe\n\t\n";
        let lines: Vec<_> = prompt_lines(file)
            .into_iter()
            .map(|(n, p)| (n, p.map_err(|e| e.to_string())))
            .collect();
        assert_eq!(
            lines,
            vec![
                (1, Ok("first".to_string())),
                (4, Ok("second".to_string())),
                (5, Err("prompt: is not valid UTF-8".to_string())),
            ]
        );
    }
}
