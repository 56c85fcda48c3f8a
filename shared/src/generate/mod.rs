//! The generation stages: the image and video generators (push services and
//! drain jobs) and the video poller.
//!
//! Every paid model call happens only after a successful claim, so a
//! duplicated push, a second drain or a retried request never pays twice.
//! Outcomes map to Pub/Sub acknowledgements in one place, [`Handled`]'s
//! `IntoResponse`: done, duplicate and poison are acknowledged (2xx);
//! transient trouble is a 429 or 503 so Pub/Sub redelivers with back-off.
//!
//! The cost guard: the claim of a job that will make a paid call reserves
//! the call's estimated cost ([`CostGuard`]) in the same commit; a job that
//! does not fit in the day's budget stays pending as `budget_exhausted` and
//! its message is acknowledged (the janitor dispatches it again later).
//! After the call, the reservation is settled: spent when Google generated
//! (or may have), released when it provably did not or filtered the output.
//!
//! What a failed call does to its job depends on whose fault it is
//! ([`settle_model_error`]): a refusal fails it; a paid request with an
//! unknown outcome is never sent again (a video waits for its output, an
//! image fails with the cost booked); a spent quota or a missing credential
//! or role puts the job back to wait without using up an attempt; other
//! transient trouble gives it back with the attempt counted. A paid output
//! the output bucket will not take is held in the store ([`keep_outputs`]),
//! never discarded.

pub mod images;
pub mod poller;
pub mod service;
pub mod videos;

pub use crate::ack::Handled;
use crate::cost::{Matched, PriceTable, format_usd};
use crate::domain::Lease;
use crate::domain::job::{Job, JobError};
use crate::error::{Error, Result};
use crate::objects::{ObjectStore, OutputFile};
use crate::store::Store;
use crate::store::budget::{Billed, Budget, Budgeted, OverBudget};
use crate::vertex::{ErrorClass, ModelError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Names the claims of one process: `image-generator-3f2a9c1e/17`. Unique per
/// claim, so that two tasks of one instance never pass for each other.
#[derive(Debug)]
pub struct Workers {
    prefix: String,
    next: AtomicU64,
}

impl Workers {
    /// Claim names for `stage`, with a random instance suffix.
    pub fn new(stage: &str) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("{stage}-{}", &instance[..8]),
            next: AtomicU64::new(1),
        }
    }

    /// A fresh lease of `ttl` under a new claim name.
    pub fn lease(&self, ttl: Duration) -> Lease {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Lease::new(format!("{}/{n}", self.prefix), ttl)
    }
}

/// Limits of a drain run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainLimits {
    /// Stop after this many jobs.
    pub max_jobs: Option<u64>,
    /// Stop claiming after this long.
    pub max_duration: Option<Duration>,
}

/// The cost guard of a generator: what models cost, and the daily budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CostGuard {
    /// List prices, with MODEL_PRICES over them.
    pub prices: PriceTable,
    /// BUDGET_USD_PER_DAY in micro-dollars; `None`: no limit (spending is
    /// still recorded, for `asmr stats`).
    pub budget_micros: Option<u64>,
}

/// What Google bills for a call that failed with `e`: nothing when it
/// provably did not generate (it answered with a refusal, 429 or 5xx, or the
/// request never left), all of it otherwise (an answer that came back
/// unreadable, a time-out or a broken connection after sending, a 504 from a
/// gateway that may have let the request through).
pub fn billed_for(e: &ModelError) -> Billed {
    match (e.class, e.http_status) {
        (ErrorClass::Unknown, _) => Billed::All,
        (_, Some(504)) => Billed::All,
        (_, Some(status)) if (200..300).contains(&status) => Billed::All,
        (_, Some(_)) => Billed::Nothing,
        (_, None) => match e.code.as_str() {
            // Connection refused, no credentials, a request that could not
            // be built: nothing reached Vertex.
            "unavailable" | "unauthenticated" | "auth_unavailable" | "invalid_argument" => {
                Billed::Nothing
            }
            _ => Billed::All,
        },
    }
}

/// Settles the reservation of `job` (if it holds one) after its paid call.
/// A settlement that cannot be written leaves the reservation in place,
/// which keeps counting against the budget: too careful, never too lax.
pub(crate) async fn settle_cost(store: &Store, job: &Job, owner: Option<&str>, billed: Billed) {
    if job.reservation().is_none() {
        return;
    }
    match with_store_retries(|| store.settle_reservation(job.id(), owner, billed)).await {
        Ok(Some(settled)) => tracing::info!(
            job_id = %job.id(),
            day = %settled.reservation.day,
            reserved = %format_usd(settled.reservation.micros),
            spent = %format_usd(settled.spent_micros),
            event = "cost_settled",
            "reservation settled"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(
            job_id = %job.id(),
            error = %e,
            "could not settle the reservation; it stays counted against the budget"
        ),
    }
}

fn describe_over_budget(over: &OverBudget) -> String {
    format!(
        "job {} waits for budget: it needs {}, and {} of today's {} ({} UTC) is committed",
        over.job.id(),
        format_usd(over.needed_micros),
        format_usd(over.committed_micros),
        format_usd(over.limit_micros),
        over.day
    )
}

/// What a drain run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Jobs claimed and worked on.
    pub processed: u64,
    /// Of those, handed back for a later try.
    pub retried: u64,
}

impl DrainReport {
    /// The last line of every drain (`event` = `drain_finished`).
    pub fn log(&self, stage: &str) {
        tracing::info!(
            stage,
            processed = self.processed,
            retried = self.retried,
            event = "drain_finished",
            "drain finished"
        );
    }
}

/// A model error as the job's error record: the code once, then what
/// happened.
fn job_error(e: &ModelError) -> JobError {
    let message = match e.http_status {
        Some(status) => format!("HTTP {status}: {}", e.message),
        None => e.message.clone(),
    };
    JobError::new(
        e.code.clone(),
        message,
        e.class != ErrorClass::Permanent && e.class != ErrorClass::Unknown,
    )
}

/// How often a stage repeats the ERROR that says its configuration is
/// wrong; in between, jobs that meet it wait at WARN.
const MISCONFIGURED_REPEAT: Duration = Duration::from_secs(300);

/// Logs a misconfiguration (no credentials, a missing role) once per
/// [`MISCONFIGURED_REPEAT`] at ERROR with the fix, so that a batch waiting
/// on it says so once, not once per job.
pub(crate) fn report_misconfiguration(what: &str, e: &dyn std::fmt::Display) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let now = std::time::Instant::now();
    let due = {
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.is_none_or(|at| now.duration_since(at) >= MISCONFIGURED_REPEAT);
        if due {
            *last = Some(now);
        }
        due
    };
    if due {
        tracing::error!(
            event = "stage_misconfigured",
            error = %e,
            "{what}: jobs wait, without using attempts, until this is fixed"
        );
    } else {
        tracing::warn!(error = %e, "{what}; the job waits");
    }
}

/// Settles a job after a model error, by whose fault it is: a refusal fails
/// it; an unknown outcome is never sent again (a video waits for its
/// output, an image fails with the cost booked); a spent quota or a
/// misconfiguration puts it back to wait without using up an attempt; other
/// transient trouble gives it back with the attempt counted.
async fn settle_model_error(store: &Store, job: &Job, lease: &Lease, e: &ModelError) -> Handled {
    use crate::domain::job::{MISCONFIGURED, QUOTA_EXHAUSTED};
    let error = job_error(e);
    let owner = lease.owner.as_str();
    let (written, handled) = match e.class {
        ErrorClass::Permanent => {
            tracing::warn!(job_id = %job.id(), error = %e, event = "job_failed", "the model refused the job");
            let written =
                with_store_retries(|| store.fail_job(job.id(), Some(owner), error.clone())).await;
            (written, Handled::Done(format!("failed: {e}")))
        }
        ErrorClass::Unknown => {
            tracing::warn!(job_id = %job.id(), kind = %job.kind(), error = %e, "a paid request's outcome is unknown; it is not sent again");
            let written =
                with_store_retries(|| store.outcome_unknown(job.id(), owner, &e.message)).await;
            let detail = match &written {
                Ok(after) => after
                    .error()
                    .as_ref()
                    .map_or_else(|| e.to_string(), |error| error.message.clone()),
                Err(_) => e.to_string(),
            };
            (written, Handled::Done(detail))
        }
        ErrorClass::Misconfigured => {
            report_misconfiguration("Vertex AI refuses this stage's requests", e);
            let written = with_store_retries(|| {
                store.wait_job(job.id(), owner, MISCONFIGURED, error.clone())
            })
            .await;
            (
                written,
                Handled::Retry {
                    rate_limited: false,
                    reason: e.to_string(),
                },
            )
        }
        ErrorClass::Transient if e.code == "rate_limited" => {
            tracing::info!(job_id = %job.id(), error = %e, "the model's quota is spent; the job waits without using an attempt");
            let written = with_store_retries(|| {
                store.wait_job(job.id(), owner, QUOTA_EXHAUSTED, error.clone())
            })
            .await;
            (
                written,
                Handled::Retry {
                    rate_limited: true,
                    reason: e.to_string(),
                },
            )
        }
        ErrorClass::Transient => {
            tracing::warn!(job_id = %job.id(), error = %e, "model trouble; the job goes back to the queue");
            let written =
                with_store_retries(|| store.release_job(job.id(), owner, Some(error.clone())))
                    .await;
            (
                written,
                Handled::Retry {
                    rate_limited: false,
                    reason: e.to_string(),
                },
            )
        }
    };
    match written {
        Ok(_) => handled,
        Err(e) => settled_elsewhere_or_retry(&e),
    }
}

/// A write after the work failed: either someone else settled the job (a
/// refused transition: acknowledge) or the store is in trouble (retry).
fn settled_elsewhere_or_retry(e: &Error) -> Handled {
    match e {
        Error::Transition { .. } | Error::NotFound { .. } => Handled::Duplicate(e.to_string()),
        _ => Handled::store_trouble(e),
    }
}

/// Tries of one output write before the outputs are held in the store.
const OUTPUT_WRITE_TRIES: u32 = 3;
/// The longest one output write may take. With the tries and their pauses
/// (about a minute in all), a generator gives up on the bucket well inside
/// the push deadline (540 s), so it is still there to hold the outputs.
const OUTPUT_WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes one output, a few times over a bounded time.
async fn write_output(
    objects: &dyn crate::objects::ObjectStore,
    bucket: &str,
    output: &OutputFile,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<String> {
    let mut pause = Duration::from_secs(1);
    let mut tries = 0;
    loop {
        let write = objects.write(
            bucket,
            &output.name,
            output.data.clone(),
            &output.content_type,
            metadata,
        );
        let outcome = match tokio::time::timeout(OUTPUT_WRITE_TIMEOUT, write).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::objects(
                format!("writing gs://{bucket}/{}", output.name),
                format!("no answer within {OUTPUT_WRITE_TIMEOUT:?}"),
                true,
            )),
        };
        tries += 1;
        match outcome {
            Ok(meta) => return Ok(meta.uri().to_string()),
            Err(e) if e.is_retryable() && tries < OUTPUT_WRITE_TRIES => {
                tracing::warn!(error = %e, tries, "an output write failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 3;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes a claimed job's outputs to the output bucket (tagged with the job
/// id) and completes the job. Outputs are paid for, so if the bucket will not
/// take them (after a few tries, well inside the push deadline) they are
/// held in the store and the job waits as `storage_unavailable`, without
/// using up an attempt: the next claim writes them from there instead of
/// calling the model again. Outputs a job held before are dropped from the
/// store once written.
pub(crate) async fn keep_outputs(
    store: &Store,
    objects: &dyn crate::objects::ObjectStore,
    bucket: &str,
    job: &Job,
    lease: &Lease,
    outputs: Vec<OutputFile>,
) -> Handled {
    let metadata = std::collections::BTreeMap::from([(
        crate::objects::JOB_ID_METADATA.to_string(),
        job.id().to_string(),
    )]);
    let mut uris = Vec::with_capacity(outputs.len());
    for output in &outputs {
        match write_output(objects, bucket, output, &metadata).await {
            Ok(uri) => uris.push(uri),
            Err(e) => return hold(store, job, lease, &outputs, &e).await,
        }
    }
    let count = uris.len();
    match with_store_retries(|| store.complete_job(job.id(), &lease.owner, uris.clone())).await {
        Ok(_) => {
            if !job.held().is_empty()
                && let Err(e) = store.drop_held(job.held()).await
            {
                // Retention removes them in a few days.
                tracing::warn!(job_id = %job.id(), error = %e, "could not delete the held copies of written outputs");
            }
            tracing::info!(job_id = %job.id(), kind = %job.kind(), outputs = count, event = "job_completed", "job completed");
            Handled::Done(format!("job {} completed with {count} outputs", job.id()))
        }
        Err(e) => settled_elsewhere_or_retry(&e),
    }
}

/// Keeps paid outputs the bucket would not take: in the store, with the
/// job waiting for storage. Only if the store fails too is the attempt
/// given back the old way (and the outputs lost: said at ERROR).
async fn hold(
    store: &Store,
    job: &Job,
    lease: &Lease,
    outputs: &[OutputFile],
    e: &Error,
) -> Handled {
    use crate::domain::job::STORAGE_UNAVAILABLE;
    let denied = e.is_permission_denied();
    let error = JobError::new(STORAGE_UNAVAILABLE, e.to_string(), true);
    if denied {
        report_misconfiguration("the output bucket refuses this stage's writes", e);
    }
    let held =
        with_store_retries(|| store.hold_outputs(job.id(), &lease.owner, outputs, error.clone()))
            .await;
    match held {
        Ok(_) => {
            tracing::warn!(job_id = %job.id(), outputs = outputs.len(), error = %e, event = "outputs_held", "the output bucket would not take the outputs; they are held in the store for the next attempt");
            Handled::Retry {
                rate_limited: false,
                reason: format!("outputs held until the bucket takes them: {e}"),
            }
        }
        Err(Error::Transition { .. } | Error::NotFound { .. }) => Handled::Duplicate(format!(
            "job {} moved on while its outputs were held",
            job.id()
        )),
        Err(hold_error) => {
            tracing::error!(job_id = %job.id(), error = %e, %hold_error, "could not write the outputs nor hold them in the store; they are lost");
            let error = JobError::new("storage", e.to_string(), true);
            match store.release_job(job.id(), &lease.owner, Some(error)).await {
                Ok(_) => Handled::Retry {
                    rate_limited: false,
                    reason: e.to_string(),
                },
                Err(e) => settled_elsewhere_or_retry(&e),
            }
        }
    }
}

/// Writes the outputs a job holds (generated and paid for by an earlier
/// attempt) and completes it: no model is called.
pub(crate) async fn write_held(
    store: &Store,
    objects: &dyn crate::objects::ObjectStore,
    bucket: &str,
    job: &Job,
    lease: &Lease,
) -> Handled {
    let mut outputs = Vec::with_capacity(job.held().len());
    for held in job.held() {
        match with_store_retries(|| store.held_bytes(held)).await {
            Ok(data) => outputs.push(OutputFile {
                name: held.name.clone(),
                content_type: held.content_type.clone(),
                data,
            }),
            Err(e) if e.is_retryable() => {
                let error =
                    JobError::new(crate::domain::job::STORAGE_UNAVAILABLE, e.to_string(), true);
                return match store
                    .wait_job(
                        job.id(),
                        &lease.owner,
                        crate::domain::job::STORAGE_UNAVAILABLE,
                        error,
                    )
                    .await
                {
                    Ok(_) => Handled::store_trouble(&e),
                    Err(e) => settled_elsewhere_or_retry(&e),
                };
            }
            Err(e) => {
                let error = JobError::new(
                    "held_output_lost",
                    format!("a paid output held in the store cannot be read back: {e}"),
                    false,
                );
                tracing::error!(job_id = %job.id(), error = %e, event = "job_failed", "a held output is lost");
                return match store.fail_job(job.id(), Some(&lease.owner), error).await {
                    Ok(_) => {
                        Handled::Done(format!("job {} failed: a held output is lost", job.id()))
                    }
                    Err(e) => settled_elsewhere_or_retry(&e),
                };
            }
        }
    }
    tracing::info!(job_id = %job.id(), outputs = outputs.len(), "writing outputs held from an earlier attempt");
    keep_outputs(store, objects, bucket, job, lease, outputs).await
}

/// Retries a store write a few times on transient errors. Used after a paid
/// call, where losing the write would mean paying again.
async fn with_store_retries<T, F, Fut>(mut write: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        match write().await {
            Err(e) if e.is_retryable() && tries < 5 => {
                tries += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Settings shared by the generators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratorSettings {
    /// GCS_OUTPUT_BUCKET: where outputs are written.
    pub output_bucket: String,
    /// IMAGE_MODEL or VIDEO_MODEL: used unless the job names a model.
    pub default_model: String,
    /// DRY_RUN: placeholders instead of model calls. A job is sent to the
    /// paid model only when neither the service nor the job says dry run.
    pub dry_run: bool,
    /// How long a claim lasts while the model works.
    pub lease_ttl: Duration,
    /// OPERATION_TIMEOUT: how long a video operation may run.
    pub operation_timeout: Duration,
    /// Back-off of a drain after transient trouble (BASE_DELAY, MAX_DELAY).
    pub retry: crate::vertex::RetryPolicy,
}

impl GeneratorSettings {
    /// The model for `job`: its own override, else the default.
    fn model_for(&self, job: &Job) -> String {
        job.params()
            .model
            .clone()
            .unwrap_or_else(|| self.default_model.clone())
    }

    /// Whether `job` runs on placeholders.
    fn is_dry(&self, job: &Job) -> bool {
        self.dry_run || job.dry_run()
    }
}

/// What every generator is made of; the model it calls is the one
/// difference between the image generator (`M` = `dyn ImageModel`) and the
/// video generator (`dyn VideoModel`).
pub struct GeneratorCore<M: ?Sized> {
    store: Store,
    objects: Arc<dyn ObjectStore>,
    model: Arc<M>,
    settings: GeneratorSettings,
    cost_guard: CostGuard,
    workers: Workers,
}

impl<M: ?Sized> GeneratorCore<M> {
    /// A generator named `name` (its claims say so), with list prices and
    /// no budget.
    fn build(
        name: &str,
        store: Store,
        objects: Arc<dyn ObjectStore>,
        model: Arc<M>,
        settings: GeneratorSettings,
    ) -> Self {
        Self {
            store,
            objects,
            model,
            settings,
            cost_guard: CostGuard::default(),
            workers: Workers::new(name),
        }
    }

    /// Reserves the cost of paid calls under `guard` (default: list prices,
    /// no limit).
    pub fn with_cost_guard(mut self, guard: CostGuard) -> Self {
        self.cost_guard = guard;
        self
    }
}

/// What the shared generator code reads of a generator, the same for both.
pub trait Parts {
    /// The store.
    fn store(&self) -> &Store;
    /// Claim names.
    fn workers(&self) -> &Workers;
    /// The model, the timeouts and the retry policy this generator runs with.
    fn settings(&self) -> &GeneratorSettings;
    /// Prices and budget.
    fn cost_guard(&self) -> &CostGuard;
}

impl<M: ?Sized> Parts for GeneratorCore<M> {
    fn store(&self) -> &Store {
        &self.store
    }
    fn workers(&self) -> &Workers {
        &self.workers
    }
    fn settings(&self) -> &GeneratorSettings {
        &self.settings
    }
    fn cost_guard(&self) -> &CostGuard {
        &self.cost_guard
    }
}

/// A generator: claims jobs of one kind and works on them.
#[async_trait::async_trait]
pub trait Generator: Parts + Send + Sync + 'static {
    /// The kind of jobs it takes.
    const KIND: crate::domain::job::JobKind;
    /// Works on a job this worker has claimed under `lease`.
    async fn run(&self, job: Job, lease: &Lease) -> Handled;
}

/// The estimated cost of the paid call `job` would make, or `None` when it
/// makes none: a dry run, or a video whose operation is only watched again.
fn paid_cost<G: Generator>(generator: &G, job: &Job) -> Option<u64> {
    let settings = generator.settings();
    if settings.is_dry(job) || !job.will_pay() {
        return None;
    }
    let model = settings.model_for(job);
    let estimate = generator
        .cost_guard()
        .prices
        .estimate(G::KIND, &model, job.params());
    if estimate.matched == Matched::Fallback {
        tracing::warn!(
            job_id = %job.id(),
            model,
            price = %estimate.price,
            "no price is known for this model; reserving the highest price of its kind (set MODEL_PRICES)"
        );
    }
    Some(estimate.micros)
}

fn describe_refusal(job: &Job, refusal: &crate::domain::job::ClaimRefusal) -> String {
    use crate::domain::job::ClaimRefusal;
    match refusal {
        ClaimRefusal::NotClaimable(status) => {
            format!("job {} is {status}; nothing to do", job.id())
        }
        ClaimRefusal::Leased { owner, until } => {
            format!(
                "job {} is being worked on by {owner} (lease until {until})",
                job.id()
            )
        }
        ClaimRefusal::Exhausted => format!("job {} has no attempt left", job.id()),
        ClaimRefusal::CallLost { owner } => {
            format!(
                "job {}'s paid request sent by {owner} is in doubt",
                job.id()
            )
        }
    }
}

/// Handles the job message for `job_id`: claim it, then work on it.
pub async fn handle<G: Generator>(generator: &G, job_id: &str) -> Handled {
    use crate::store::Claim;
    let store = generator.store();
    // A cheap read first: a job of the other kind is poison, and duplicates
    // of finished jobs are answered without a write.
    match store.get_job(job_id).await {
        Ok(Some(job)) if job.kind() != G::KIND => {
            return Handled::Poison(format!(
                "job {job_id} is a {} job, not a {} job",
                job.kind(),
                G::KIND
            ));
        }
        Ok(Some(job))
            if job.status() != crate::domain::job::JobStatus::Pending
                && job.status() != crate::domain::job::JobStatus::Processing =>
        {
            return Handled::Duplicate(format!("job {job_id} is {}; nothing to do", job.status()));
        }
        Ok(Some(_)) => {}
        Ok(None) => return Handled::Poison(format!("job {job_id} does not exist")),
        Err(e) if e.is_retryable() => return Handled::store_trouble(&e),
        Err(e) => return Handled::Poison(e.to_string()),
    }
    let lease = generator.workers().lease(generator.settings().lease_ttl);
    let cost = |job: &Job| paid_cost(generator, job);
    let budget = Budget {
        limit_micros: generator.cost_guard().budget_micros,
        cost: &cost,
    };
    match store.claim_job_within(job_id, &lease, &budget).await {
        Ok(Budgeted::Within(Claim::Claimed(job))) => generator.run(job, &lease).await,
        Ok(Budgeted::Within(Claim::Refused(job, refusal))) => {
            Handled::Duplicate(describe_refusal(&job, &refusal))
        }
        Ok(Budgeted::Within(Claim::Exhausted(job))) => {
            tracing::warn!(job_id = %job.id(), event = "job_failed", "no attempt left; the job failed");
            Handled::Done(format!("job {} had no attempt left and failed", job.id()))
        }
        Ok(Budgeted::Within(Claim::Lost(job))) => {
            let detail = job
                .error()
                .as_ref()
                .map_or_else(String::new, |e| e.message.clone());
            tracing::warn!(job_id = %job.id(), kind = %job.kind(), status = %job.status(), "an earlier claim's paid request is in doubt; nothing is sent again");
            Handled::Done(format!("job {} is {}: {detail}", job.id(), job.status()))
        }
        Ok(Budgeted::Within(Claim::NotFound)) => {
            Handled::Poison(format!("job {job_id} does not exist"))
        }
        // Acknowledged, not redelivered: the job stays pending and is
        // dispatched again by the janitor (or taken by a drain) once the day
        // rolls over or the budget is raised. A nack would only burn
        // delivery attempts towards the dead-letter topic.
        Ok(Budgeted::Over(over)) => {
            let detail = describe_over_budget(&over);
            tracing::warn!(job_id = %over.job.id(), event = "budget_exhausted", "{detail}");
            Handled::Done(detail)
        }
        Err(e) if e.is_retryable() => Handled::store_trouble(&e),
        Err(e) => Handled::Poison(e.to_string()),
    }
}

/// Claims and works on pending jobs of the generator's kind until none is
/// left or a limit is reached. After transient trouble it backs off
/// (BASE_DELAY doubling up to MAX_DELAY) and gives up after five in a row, so
/// a quota outage does not burn every job's attempts.
pub async fn drain<G: Generator>(generator: &G, limits: DrainLimits) -> Result<DrainReport> {
    let started = std::time::Instant::now();
    let retry = generator.settings().retry;
    let mut report = DrainReport::default();
    let mut backoff = retry.base_delay;
    let mut troubles_in_a_row = 0;
    loop {
        if limits.max_jobs.is_some_and(|max| report.processed >= max)
            || limits
                .max_duration
                .is_some_and(|max| started.elapsed() >= max)
        {
            break;
        }
        let lease = generator.workers().lease(generator.settings().lease_ttl);
        let cost = |job: &Job| paid_cost(generator, job);
        let budget = Budget {
            limit_micros: generator.cost_guard().budget_micros,
            cost: &cost,
        };
        let job = match generator
            .store()
            .claim_next_job_within(G::KIND, &lease, &budget)
            .await?
        {
            Budgeted::Within(Some(job)) => job,
            Budgeted::Within(None) => break,
            Budgeted::Over(over) => {
                let detail = describe_over_budget(&over);
                tracing::warn!(event = "budget_exhausted", "stopping the drain: {detail}");
                break;
            }
        };
        report.processed += 1;
        let job_id = job.id().to_string();
        let handled = generator.run(job, &lease).await;
        tracing::info!(job_id = %job_id, outcome = ?handled, "drained one job");
        if let Handled::Retry { .. } = handled {
            report.retried += 1;
            troubles_in_a_row += 1;
            if troubles_in_a_row >= 5 {
                tracing::warn!("five transient failures in a row; stopping the drain");
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(retry.max_delay);
        } else {
            troubles_in_a_row = 0;
            backoff = retry.base_delay;
        }
    }
    Ok(report)
}
