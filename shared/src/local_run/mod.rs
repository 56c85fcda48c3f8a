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

mod stages;
mod watch;

use stages::{
    Handed, Promotions, StateLock, build_stages, keep_delivering, keep_draining, keep_polling,
};
use watch::{snapshot, tally, watch_until_done, write_sheet};

use crate::config::{Adapters, LocalAdapters};
use crate::domain::job::NewJob;
use crate::domain::values::Chain;
use crate::domain::values::{JobKind, JobStatus};
use crate::error::{Error, Result};
use crate::intake::promote::{AutoPromote, Promoter};
use crate::requests::prompt_lines;
use crate::store::Store;
use crate::vertex::VertexConfig;
use std::collections::{BTreeMap, HashMap};
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
    /// The most the run's paid calls may spend: a live run is never
    /// uncapped.
    pub cap: SpendCap,
}

/// How much a live run may spend. Every paid call is reserved against it
/// before it is sent, as the deployment's daily budget is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpendCap {
    /// A budget for the UTC day, in micro-dollars (`--budget`), as
    /// `BUDGET_USD_PER_DAY` is for a deployment.
    Daily(u64),
    /// At most this many micro-dollars more than was spent today when the
    /// run started: its own jobs once each, at list prices
    /// ([`list_price`]).
    Run(u64),
}

impl SpendCap {
    /// The day's budget this cap comes to, given what the day has spent
    /// and holds already.
    pub fn day_limit(self, spent_micros: u64) -> u64 {
        match self {
            SpendCap::Daily(limit) => limit,
            SpendCap::Run(run) => spent_micros.saturating_add(run),
        }
    }
}

/// What the jobs of `settings` cost once each at list prices, with the
/// models they will be sent to: the cap of a live run given no budget.
pub fn list_price(settings: &RunSettings) -> u64 {
    let prices = crate::cost::PriceTable::list_prices();
    let model = |kind: JobKind| match (&settings.live, kind) {
        (Some(live), JobKind::Image) => live.vertex.image_model.clone(),
        (Some(live), JobKind::Video) => live.vertex.video_model.clone(),
        (None, JobKind::Image) => crate::vertex::DEFAULT_IMAGE_MODEL.to_string(),
        (None, JobKind::Video) => crate::vertex::DEFAULT_VIDEO_MODEL.to_string(),
    };
    let each = |kind: JobKind| {
        prices
            .estimate(
                kind,
                &model(kind),
                &crate::domain::values::JobParams::default(),
            )
            .micros
    };
    let jobs = prompt_lines(&settings.prompts)
        .into_iter()
        .filter(|(_, prompt)| prompt.is_ok())
        .count() as u64;
    let mut per_job = each(settings.kind);
    if settings.chain {
        per_job = per_job.saturating_add(each(JobKind::Video));
    }
    jobs.saturating_mul(per_job)
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
    /// Whose jobs they are: a named tenant's files go under `out_dir/{name}`
    /// (its record is made in the local store when there is none).
    pub tenant: crate::domain::tenant::TenantName,
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
            tenant: crate::domain::tenant::TenantName::default(),
        }
    }
}

/// Where a run stands, for a progress display.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Jobs of this run.
    pub total: u64,
    /// Jobs whose model work is over (completed, delivered, or failed).
    pub generated: u64,
    /// Jobs with every output delivered.
    pub delivered: u64,
    /// Jobs failed or cancelled.
    pub failed: u64,
    /// Pending jobs that wait, by reason (`misconfigured`...).
    pub waiting: BTreeMap<String, Waiting>,
}

/// Jobs of a run that wait for one reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// How many.
    pub jobs: u64,
    /// The last error one of them met (what the model or the bucket said).
    pub error: Option<String>,
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
    /// Jobs of this run left waiting because paying for them would pass
    /// the spending cap (`budget_exhausted`).
    pub over_budget: u64,
    /// Jobs of this run left pending and waiting, by reason.
    pub waiting: BTreeMap<String, u64>,
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

/// Makes the run's folder beneath its `--out` directory, refusing one that
/// is a link: everything the run delivers goes beneath it, and a planted
/// link there would take all of it elsewhere.
fn out_folder(folder: &Path) -> Result<()> {
    use crate::beneath::{Access, Root, is_refused};
    let (Some(out), Some(name)) = (folder.parent(), folder.file_name()) else {
        return Ok(());
    };
    let made = Root::open(out, Access::Shared).and_then(|root| root.dir(Path::new(name), true));
    match made {
        Ok(_) => Ok(()),
        Err(e) if is_refused(&e) => Err(Error::UnsafePath(e.to_string())),
        Err(e) => Err(Error::objects(
            format!("making {}", folder.display()),
            e,
            false,
        )),
    }
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
    out_folder(&settings.out_dir)?;
    let LocalAdapters {
        adapters,
        events,
        objects,
    } = Adapters::local(&settings.state_dir).await?;
    let store = adapters.store.clone();
    // Subscribed before anything happens, as a push subscription would be:
    // a chained run's videos are made by the promoter the cloud runs.
    let (promotions, job_events) = Promotions::new(&events, &adapters.topics);
    let promotions = Arc::new(promotions);
    let mode = match settings.chain {
        true => AutoPromote::All,
        false => AutoPromote::Off,
    };
    let promoter = Promoter::new(&adapters, mode);

    let mut report = RunReport {
        out_dir: settings.out_dir.clone(),
        state_dir: settings.state_dir.clone(),
        ..RunReport::default()
    };
    // Before anything is created: a live run that cannot reach Vertex AI
    // says so now, once, instead of failing job after job.
    let stages = Arc::new(build_stages(store.clone(), objects, &settings).await?);
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
    {
        let (promotions, finished) = (promotions.clone(), finished.clone());
        others.spawn(async move {
            promotions
                .keep_promoting(&promoter, job_events, &finished)
                .await;
            Ok(())
        });
    }
    let delivery = Arc::new(Handed::default());
    {
        let (stages, finished, delivery) = (stages.clone(), finished.clone(), delivery.clone());
        others.spawn(async move { keep_delivering(&stages, &delivery, &finished).await });
    }

    // The poller runs here rather than as a task: its rounds borrow the jobs
    // they poll.
    let work = async {
        let watch = async {
            let settled =
                watch_until_done(&stages.store, &ids, &promotions, &delivery, &progress).await;
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
    report.events = events.published_count(&adapters.topics.job_events()) as u64;
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn create_jobs(
    store: &Store,
    settings: &RunSettings,
    report: &mut RunReport,
) -> Result<Vec<String>> {
    use crate::domain::tenant::{Tenant, TenantSettings};
    if store.tenant(&settings.tenant).await?.is_none() {
        let tenant = Tenant::new(
            settings.tenant.clone(),
            &TenantSettings::default(),
            crate::time::Timestamp::now(),
        )
        .map_err(Error::Invalid)?;
        store.add_tenant(tenant).await?;
    }
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
        new.tenant = settings.tenant.clone();
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
