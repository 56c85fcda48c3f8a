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
//! the call's estimated cost ([`crate::cost::CostGuard`]) in the same commit; a job that
//! does not fit in the day's budget stays pending as `budget_exhausted` and
//! its message is acknowledged (the janitor dispatches it again later).
//! After the call, the reservation is settled: spent when Google generated
//! (or may have), released when it provably did not or filtered the output.
//!
//! What a failed call does to its job depends on whose fault it is
//! ([`settle::answer_model_error`]): a refusal fails it; a paid request with an
//! unknown outcome is never sent again (a video waits for its output, an
//! image fails with the cost booked); a spent quota or a missing credential
//! or role puts the job back to wait without using up an attempt; other
//! transient trouble gives it back with the attempt counted. A paid output
//! the output bucket will not take is held in the store ([`outputs::keep_outputs`]),
//! never discarded.

pub mod images;
pub mod outputs;
pub mod poller;
pub mod service;
pub mod settle;
pub mod videos;

use crate::ack::Handled;
use crate::cost::{CostGuard, Matched, job_cost, model_of};
use crate::domain::Lease;
use crate::domain::job::Job;
use crate::domain::values::JobKind;
use crate::error::Result;
use crate::objects::ObjectStore;
use crate::stage::{DrainLimits, DrainReport, Workers};
use crate::store::Store;
use crate::store::budget::{Budget, Budgeted};
use settle::describe_over_budget;
use std::sync::Arc;
use std::time::Duration;

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

impl<M: ?Sized> GeneratorCore<M>
where
    Self: Generator,
{
    /// A generator writing to `objects` and calling `model` for live jobs,
    /// with list prices and no budget. Its claims are named after its kind
    /// (`image-generator-3f2a9c1e/17`).
    pub fn new(
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
            workers: Workers::new(&format!("{}-generator", Self::KIND)),
        }
    }
}

impl<M: ?Sized> GeneratorCore<M> {
    /// Reserves the cost of paid calls under `guard` (default: list prices,
    /// no limit).
    pub fn with_cost_guard(mut self, guard: CostGuard) -> Self {
        self.cost_guard = guard;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Claim names.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The model, the timeouts and the retry policy this generator runs with.
    pub fn settings(&self) -> &GeneratorSettings {
        &self.settings
    }

    /// Prices and budget.
    pub fn cost_guard(&self) -> &CostGuard {
        &self.cost_guard
    }
}

/// A generator: claims jobs of one kind and works on them.
#[async_trait::async_trait]
pub trait Generator: Send + Sync + 'static {
    /// The kind of jobs it takes.
    const KIND: JobKind;

    /// Works on a job this worker has claimed under `lease`.
    async fn run(&self, job: Job, lease: &Lease) -> Handled;
}

/// The estimated cost of the paid call `job` would make, or `None` when it
/// makes none: a dry run, or a video whose operation is only watched again.
fn paid_cost<M: ?Sized>(generator: &GeneratorCore<M>, job: &Job) -> Option<u64>
where
    GeneratorCore<M>: Generator,
{
    let settings = generator.settings();
    if settings.is_dry(job) || !job.will_pay() {
        return None;
    }
    let estimate = job_cost(job, &generator.cost_guard().prices);
    if estimate.matched == Matched::Fallback {
        tracing::warn!(
            job_id = %job.id(),
            model = model_of(job),
            price = %estimate.price,
            "no price is known for this model; reserving the highest price of its kind (set MODEL_PRICES)"
        );
    }
    Some(estimate.micros)
}

/// The share of the model's quota `job`'s call is entitled to: its tenant
/// at the tenant's weight (1 when the record cannot be read now: the call
/// still goes, only its turn may come a little early or late).
async fn share_of(store: &Store, job: &Job) -> crate::vertex::QuotaShare {
    let weight = match store.cached_tenant(job.tenant()).await {
        Ok(tenant) => tenant.map_or(1, |t| t.weight()),
        Err(e) => {
            tracing::warn!(job_id = %job.id(), tenant = %job.tenant(), "the tenant's weight could not be read; its call goes at weight 1: {e}");
            1
        }
    };
    crate::vertex::QuotaShare::new(job.tenant().to_string(), weight)
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
pub async fn handle<M: ?Sized>(generator: &GeneratorCore<M>, job_id: &str) -> Handled
where
    GeneratorCore<M>: Generator,
{
    use crate::store::Claim;
    let store = generator.store();
    // A cheap read first: a job of the other kind is poison, and duplicates
    // of finished jobs are answered without a write.
    match store.get_job(job_id).await {
        Ok(Some(job)) if job.kind() != GeneratorCore::<M>::KIND => {
            return Handled::Poison(format!(
                "job {job_id} is a {} job, not a {} job",
                job.kind(),
                GeneratorCore::<M>::KIND
            ));
        }
        Ok(Some(job))
            if job.status() != crate::domain::values::JobStatus::Pending
                && job.status() != crate::domain::values::JobStatus::Processing =>
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
        model: Some(&generator.settings().default_model),
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
            tracing::warn!(job_id = %over.job.id(), tenant = %over.job.tenant(), event = "budget_exhausted", "{detail}");
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
pub async fn drain<M: ?Sized>(
    generator: &GeneratorCore<M>,
    limits: DrainLimits,
) -> Result<DrainReport>
where
    GeneratorCore<M>: Generator,
{
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
            model: Some(&generator.settings().default_model),
        };
        let job = match generator
            .store()
            .claim_next_job_within(GeneratorCore::<M>::KIND, &lease, &budget)
            .await?
        {
            Budgeted::Within(Some(job)) => job,
            Budgeted::Within(None) => break,
            Budgeted::Over(over) => {
                let detail = describe_over_budget(&over);
                tracing::warn!(tenant = %over.job.tenant(), event = "budget_exhausted", "stopping the drain: {detail}");
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
