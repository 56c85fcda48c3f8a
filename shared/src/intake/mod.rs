//! Intake: the one write path of new jobs. Every way in (the Pub/Sub push of
//! `asmr-requests`, `POST /v1/jobs`, `asmr add`) ends in [`submit`]: create
//! each validated job once (idempotent by its request id), then publish
//! `{"job_id"}` to its kind's topic so a generator takes it.
//!
//! A job that is still `pending` after the create is published, whether this
//! call created it or a redelivery found it: if an earlier publish failed,
//! the redelivery is what queues it, and the generators acknowledge a job
//! message for a job that is no longer pending as a duplicate, so publishing
//! twice costs nothing.
//!
//! Without a bus (the embedded store of a local run) the jobs are only
//! created; `asmr run` and the generators' drains find them in the store.
//!
//! A request id is an idempotency key: sent again with the same request it
//! finds the jobs made the first time; sent with another request it is
//! refused ([`Error::KeyReused`]), never answered with another request's
//! jobs. Each job records a digest of its whole request to tell the two
//! apart.

mod actions;
pub mod api;
pub mod gateway;
pub mod limits;
pub mod page;
pub mod promote;
pub mod routes;
pub mod service;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testing;

use crate::ack::Handled;
use crate::bus::{Announced, Bus, Topics};
use crate::config::Adapters;
use crate::domain::job::{Job, NewJob};
use crate::domain::tenant::{Tenant, TenantName};
use crate::domain::values::JobStatus;
use crate::error::{Error, Result};
use crate::identity::IdTokens;
use crate::store::rejected::{Rejected, RejectedSource};
use crate::store::{Created, Store};
use crate::time::Timestamp;
use futures::stream::{self, StreamExt};
use promote::{AutoPromote, Promoter};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Creates (and publishes) this many jobs of one request at once.
const IN_FLIGHT: usize = 16;

/// What became of a job's message to its generator.
#[derive(Debug)]
pub enum Dispatch {
    /// Published to the kind's topic; the bus's message id.
    Published(String),
    /// The job is past `pending` (a redelivery): nothing to publish.
    NotPending,
    /// No bus: the job waits in the store for a drain or a local run.
    NoBus,
    /// The publish failed; the job stays `pending` in the store.
    Failed(Error),
}

/// One job of a submission.
#[derive(Debug)]
pub struct SubmittedJob {
    /// The job as stored (the existing one when `created` is false).
    pub job: Job,
    /// Whether this submission created it.
    pub created: bool,
    /// Whether (and where) it was sent to its generator.
    pub dispatch: Dispatch,
}

/// The jobs of one request, in request order.
#[derive(Debug, Default)]
pub struct Submitted {
    /// One entry per requested job.
    pub jobs: Vec<SubmittedJob>,
}

impl Submitted {
    /// Ids of the jobs this submission created.
    pub fn created(&self) -> Vec<&str> {
        self.ids(true)
    }

    /// Ids of the jobs that existed already (a repeated request).
    pub fn existing(&self) -> Vec<&str> {
        self.ids(false)
    }

    fn ids(&self, created: bool) -> Vec<&str> {
        self.jobs
            .iter()
            .filter(|j| j.created == created)
            .map(|j| j.job.id())
            .collect()
    }

    /// The first failed publish, if any.
    pub fn publish_failure(&self) -> Option<(&Job, &Error)> {
        self.jobs.iter().find_map(|j| match &j.dispatch {
            Dispatch::Failed(e) => Some((&j.job, e)),
            _ => None,
        })
    }
}

/// Creates one job unless its request id exists already, then publishes it
/// to its kind's topic on `bus` if it is pending. Only the create can fail
/// the call; a failed publish is reported in [`SubmittedJob::dispatch`]. A
/// job found under the request id that was made of another request is
/// [`Error::KeyReused`].
pub async fn submit_job(
    store: &Store,
    bus: &dyn Bus,
    topics: &Topics,
    mut new: NewJob,
) -> Result<SubmittedJob> {
    let digest = match &new.request_digest {
        Some(digest) => digest.clone(),
        None => request_digest(std::slice::from_ref(&new)),
    };
    new.request_digest = Some(digest.clone());
    // The tenant's default webhook, for a job that names none; after the
    // digest, so a changed default does not make a retry another request.
    if new.webhook.is_none()
        && let Some(tenant) = store.cached_tenant(&new.tenant).await?
    {
        new.webhook = tenant.webhook().cloned();
    }
    let Created {
        record: job,
        created,
    } = store.create_job(new).await?;
    if !created {
        same_request(&job, &digest)?;
    }
    let dispatch = match job.status() {
        JobStatus::Pending => match crate::bus::publish_job(bus, topics, &job, "intake").await {
            Ok(Announced::Published(message_id)) => Dispatch::Published(message_id),
            Ok(Announced::NoWorkers) => Dispatch::NoBus,
            Err(e) => Dispatch::Failed(e),
        },
        _ => Dispatch::NotPending,
    };
    Ok(SubmittedJob {
        job,
        created,
        dispatch,
    })
}

/// A request whose jobs were not all created: the store failed (or did not
/// answer in time) part-way.
#[derive(Debug)]
pub struct Unfinished {
    /// The jobs created (or found) before it stopped, in request order.
    pub submitted: Submitted,
    /// Jobs the request asked for.
    pub total: usize,
    /// Why it stopped.
    pub error: Error,
}

/// [`submit_job`] for every job of a request, some at once; the result is
/// in request order. Stops at the first failed create, and at `deadline`:
/// with request ids, submitting the same jobs again creates only the
/// missing ones.
pub async fn submit(
    store: &Store,
    bus: &dyn Bus,
    topics: &Topics,
    jobs: Vec<NewJob>,
    deadline: Option<tokio::time::Instant>,
) -> std::result::Result<Submitted, Unfinished> {
    let total = jobs.len();
    let jobs = match digested(store, jobs).await {
        Ok(jobs) => jobs,
        Err(error) => {
            return Err(Unfinished {
                submitted: Submitted::default(),
                total,
                error,
            });
        }
    };
    let mut results = stream::iter(jobs)
        .map(|new| async move {
            let submitted = submit_job(store, bus, topics, new);
            match deadline {
                None => submitted.await,
                Some(deadline) => tokio::time::timeout_at(deadline, submitted)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::store(
                            "creating jobs",
                            "the store did not answer in time",
                            true,
                        ))
                    }),
            }
        })
        .buffered(IN_FLIGHT);
    let mut submitted = Submitted::default();
    while let Some(result) = results.next().await {
        match result {
            Ok(job) => submitted.jobs.push(job),
            Err(error) => {
                return Err(Unfinished {
                    submitted,
                    total,
                    error,
                });
            }
        }
    }
    Ok(submitted)
}

/// The digest of a request: what its jobs ask for, in order. What a
/// service sets on its own (dry run, attempts) is left out, so a retry
/// that meets another `DRY_RUN` is still the same request.
pub fn request_digest(jobs: &[NewJob]) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2f4c_91e0_6b3d_4a87_b5c2_7d18_e9a0_3c46);
    let asked: Vec<_> = jobs
        .iter()
        .map(|job| {
            let mut asked =
                serde_json::json!([job.prompt, job.kind, job.params, job.priority, job.chain]);
            // Only when named, so requests of before webhooks keep their digest.
            if let (Some(hook), Some(list)) = (&job.webhook, asked.as_array_mut()) {
                list.push(serde_json::json!(hook));
            }
            asked
        })
        .collect();
    let bytes = serde_json::to_vec(&asked).unwrap_or_default();
    uuid::Uuid::new_v5(&NAMESPACE, &bytes).simple().to_string()
}

/// `jobs` with their request's digest, after checking that the jobs its
/// key already named (if any) were made of the same request. A request
/// with one prompt has the key itself as its request id, a batch
/// `{key}#{n}`; both shapes are looked up, so that a key used for one
/// prompt and sent again with a batch (or the other way round), or a
/// batch sent again with other prompts, is refused before anything is
/// created.
async fn digested(store: &Store, mut jobs: Vec<NewJob>) -> Result<Vec<NewJob>> {
    let digest = request_digest(&jobs);
    for job in &mut jobs {
        job.request_digest = Some(digest.clone());
    }
    let Some(first) = jobs.first() else {
        return Ok(jobs);
    };
    let Some(request_id) = first.request_id.as_deref() else {
        return Ok(jobs);
    };
    let key = match jobs.len() {
        1 => request_id,
        _ => request_id.strip_suffix("#0").unwrap_or(request_id),
    };
    let scope = Job::request_scope(&first.tenant, first.key_scope.as_deref());
    let single = Job::id_for_scoped_request(scope.as_deref(), key);
    let batch = Job::id_for_scoped_request(scope.as_deref(), &format!("{key}#0"));
    // The create finds a job of the request's own first id itself.
    let other = match jobs.len() {
        1 => vec![batch],
        _ => vec![single, batch],
    };
    for id in other {
        if let Some(existing) = store.get_job(&id).await? {
            same_request(&existing, &digest)?;
        }
    }
    Ok(jobs)
}

/// Whether `job`, found under a request id, was made of the request whose
/// digest is `digest`. A job made before digests were recorded passes.
fn same_request(job: &Job, digest: &str) -> Result<()> {
    match job.request_digest() {
        Some(made_of) if made_of != digest => Err(Error::KeyReused {
            request_id: crate::redact::clipped(job.request_id().unwrap_or_default()),
        }),
        _ => Ok(()),
    }
}

/// How long the jobs of one request may take to create, inside
/// [`service::REQUEST_TIMEOUT`], so that a store that stops answering gets an answer
/// that names the jobs created so far rather than an empty 503.
const SUBMIT_DEADLINE: Duration = Duration::from_secs(90);
/// What the handlers share: where jobs go and how they are announced.
pub struct Intake {
    store: Store,
    bus: Arc<dyn Bus>,
    topics: Topics,
    dry_run: bool,
    promoter: Arc<Promoter>,
    /// Verifies who calls the API, where the deployment names identities;
    /// the verified account scopes the caller's idempotency keys.
    callers: Option<Arc<IdTokens>>,
    /// Each tenant's requests per minute over HTTP.
    limits: limits::RateLimits,
    /// The API Gateway whose consumers' claims name their tenant.
    gateway: Option<gateway::Gateway>,
    /// Whether webhooks may be http:// or private addresses.
    private_webhooks: bool,
}

/// Why a request is not taken for a tenant.
pub(crate) enum Refused {
    /// No tenant is named by the key or attribute given (HTTP 401).
    Unknown(String),
    /// The tenant is disabled (HTTP 403).
    Disabled(String),
}

/// `tenant` if it is enabled.
fn enabled(tenant: Tenant) -> std::result::Result<Tenant, Refused> {
    match tenant.disabled() {
        true => Err(Refused::Disabled(format!(
            "tenant {} is disabled",
            tenant.name()
        ))),
        false => Ok(tenant),
    }
}

impl Refused {
    /// The sentence for whoever sent it.
    pub(crate) fn reason(&self) -> &str {
        match self {
            Refused::Unknown(reason) | Refused::Disabled(reason) => reason,
        }
    }
}

impl Intake {
    /// Intake over the adapters, publishing job messages on their bus;
    /// `dry_run` marks every new job, and `auto_promote` says which job
    /// events pushed to `/v1/job-events` make a video of their image.
    pub fn new(adapters: Adapters, dry_run: bool, auto_promote: AutoPromote) -> Self {
        let promoter = Arc::new(Promoter::new(&adapters, auto_promote));
        Self {
            store: adapters.store,
            bus: adapters.bus,
            topics: adapters.topics,
            dry_run,
            promoter,
            callers: None,
            limits: limits::RateLimits::default(),
            gateway: None,
            private_webhooks: false,
        }
    }

    /// Intake that takes webhooks to `http://` URLs and private addresses
    /// when `allowed` (`WEBHOOK_ALLOW_PRIVATE_NETWORKS`).
    pub fn allowing_private_webhooks(mut self, allowed: bool) -> Self {
        self.private_webhooks = allowed;
        self
    }

    /// Holds each tenant to `limits` over HTTP.
    pub fn with_rate_limits(mut self, limits: limits::RateLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Takes the tenant of a call that comes through `gateway` with a
    /// consumer's JWT from the claim it forwards ([`gateway`]).
    pub fn with_gateway(mut self, gateway: Option<gateway::Gateway>) -> Self {
        self.gateway = gateway;
        self
    }

    /// The tenant a Pub/Sub request is for: the one its `tenant` attribute
    /// names, the default tenant without one.
    pub(crate) async fn tenant_of_message(
        &self,
        attributes: &BTreeMap<String, String>,
    ) -> Result<std::result::Result<Tenant, Refused>> {
        let named = attributes
            .get("tenant")
            .map_or(TenantName::DEFAULT, String::as_str);
        let unknown = || {
            Refused::Unknown(format!(
                "tenant {:?} does not exist",
                crate::redact::clipped(named)
            ))
        };
        let Ok(name) = named.parse::<TenantName>() else {
            return Ok(Err(unknown()));
        };
        Ok(match self.store.cached_tenant(&name).await? {
            None => Err(unknown()),
            Some(tenant) => enabled(tenant),
        })
    }

    /// The tenant holding API key `key`.
    pub(crate) async fn tenant_of_key(
        &self,
        key: &str,
    ) -> Result<std::result::Result<Tenant, Refused>> {
        Ok(match self.store.tenant_of_key(key).await? {
            None => Err(Refused::Unknown(
                "the x-api-key is not a key of any tenant (or it was rotated out)".into(),
            )),
            Some(tenant) => enabled(tenant),
        })
    }

    /// Intake that verifies the Google ID token of every API call that
    /// creates jobs with `callers`, and keeps each account's idempotency
    /// keys apart from every other's. `None` leaves callers unchecked, in
    /// one namespace (the emulators send no token).
    pub fn verifying_callers(mut self, callers: Option<Arc<IdTokens>>) -> Self {
        self.callers = callers;
        self
    }

    pub(crate) async fn submit(&self, jobs: Vec<NewJob>) -> Result<Submitted, Unfinished> {
        let deadline = tokio::time::Instant::now() + SUBMIT_DEADLINE;
        submit(
            &self.store,
            self.bus.as_ref(),
            &self.topics,
            jobs,
            Some(deadline),
        )
        .await
    }

    /// Records a request that can never become jobs and acknowledges it;
    /// if the record cannot be written, asks for a redelivery instead, so
    /// the request is not lost unseen. The record keeps `reason`, which may
    /// quote the request; the logs get `class`, which does not.
    pub(crate) async fn reject(
        &self,
        message_id: Option<&str>,
        attributes: BTreeMap<String, String>,
        body: &[u8],
        reason: String,
        class: String,
        tenant: Option<&TenantName>,
    ) -> Handled {
        let mut record = Rejected::new(
            RejectedSource::Pubsub,
            message_id,
            attributes,
            body,
            reason,
            Timestamp::now(),
        );
        if let Some(tenant) = tenant {
            record.tenant = tenant.clone();
        }
        let id = record.id.clone();
        match self.store.record_rejected(record).await {
            Ok(created) => {
                tracing::error!(
                    message_id = message_id.unwrap_or("-"),
                    tenant = tenant.map_or("-", TenantName::as_str),
                    rejected_id = %id,
                    reason = class,
                    redelivered = !created.created,
                    event = "request.rejected",
                    "request rejected and acknowledged"
                );
                Handled::Poison(class)
            }
            Err(e) => {
                tracing::warn!(
                    message_id = message_id.unwrap_or("-"),
                    reason = class,
                    error = %e,
                    "could not record a rejected request; asking for redelivery"
                );
                Handled::store_trouble(&e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::domain::Lease;
    use crate::domain::values::JobKind;
    use crate::store::embedded::EmbeddedBackend;
    use std::sync::Arc;
    use std::time::Duration;

    fn store() -> Store {
        Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()))
    }

    fn job(prompt: &str, kind: JobKind, request_id: Option<&str>) -> NewJob {
        let mut new = NewJob::new(prompt, kind);
        new.request_id = request_id.map(str::to_string);
        new
    }

    async fn bus(topics: &Topics) -> MemoryBus {
        let bus = MemoryBus::new();
        for topic in topics.all() {
            bus.ensure_topic(&topic).await.unwrap();
        }
        bus
    }

    fn job_ids(bus: &MemoryBus, topic: &str) -> Vec<String> {
        bus.job_ids(topic)
    }

    #[tokio::test]
    async fn each_job_is_created_once_and_published_to_its_kinds_topic() {
        let store = store();
        let topics = Topics::new("t-");
        let bus = bus(&topics).await;
        let jobs = vec![
            job("rain", JobKind::Image, Some("r#0")),
            job("waves", JobKind::Video, Some("r#1")),
            job("sand", JobKind::Image, Some("r#2")),
        ];
        let submitted = submit(&store, &bus, &topics, jobs, None).await.unwrap();
        let prompts: Vec<_> = submitted.jobs.iter().map(|j| j.job.prompt()).collect();
        assert_eq!(prompts, ["rain", "waves", "sand"], "request order");
        assert_eq!(submitted.created().len(), 3);
        assert!(submitted.publish_failure().is_none());
        let ids: Vec<String> = submitted
            .jobs
            .iter()
            .map(|j| j.job.id().to_string())
            .collect();
        // Jobs are published as their creates finish, in any order.
        let mut images = job_ids(&bus, "t-asmr-image-jobs");
        images.sort();
        let mut want = vec![ids[0].clone(), ids[2].clone()];
        want.sort();
        assert_eq!(images, want);
        assert_eq!(job_ids(&bus, "t-asmr-video-jobs"), [ids[1].clone()]);
        let message = &bus.published("t-asmr-video-jobs")[0];
        assert_eq!(message.attributes["origin"], "intake");
        assert_eq!(message.attributes["kind"], "video");
    }

    #[tokio::test]
    async fn a_repeat_creates_nothing_and_republishes_only_pending_jobs() {
        let store = store();
        let topics = Topics::default();
        let bus = bus(&topics).await;
        let first = submit_job(&store, &bus, &topics, job("a", JobKind::Image, Some("k")))
            .await
            .unwrap();
        let again = submit_job(&store, &bus, &topics, job("a", JobKind::Image, Some("k")))
            .await
            .unwrap();
        assert!(first.created && !again.created);
        assert_eq!(first.job.id(), again.job.id());
        assert!(matches!(again.dispatch, Dispatch::Published(_)));
        assert_eq!(store.job_counts().await.unwrap().total(), 1);

        // Once a generator has it, a third delivery publishes nothing.
        let lease = Lease::new("worker", Duration::from_secs(60));
        store.claim_job(first.job.id(), &lease).await.unwrap();
        let third = submit_job(&store, &bus, &topics, job("a", JobKind::Image, Some("k")))
            .await
            .unwrap();
        assert!(matches!(third.dispatch, Dispatch::NotPending));
        assert_eq!(job_ids(&bus, "asmr-image-jobs").len(), 2);
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_the_job_pending_and_is_reported() {
        let store = store();
        let topics = Topics::default();
        let bus = MemoryBus::new(); // no topics: every publish is NotFound
        let submitted = submit(
            &store,
            &bus,
            &topics,
            vec![job("a", JobKind::Video, Some("k"))],
            None,
        )
        .await
        .unwrap();
        let (job, error) = submitted.publish_failure().unwrap();
        assert_eq!(job.status(), JobStatus::Pending);
        assert!(
            matches!(error, Error::NotFound { kind: "topic", .. }),
            "{error}"
        );
        assert_eq!(submitted.created(), [job.id()]);
    }

    #[tokio::test]
    async fn on_a_bus_that_reaches_no_worker_jobs_are_only_created() {
        let store = store();
        let submitted = submit(
            &store,
            &crate::bus::store_queue::StoreQueue::default(),
            &Topics::default(),
            vec![
                job("a", JobKind::Image, None),
                job("b", JobKind::Image, None),
            ],
            None,
        )
        .await
        .unwrap();
        assert!(
            submitted
                .jobs
                .iter()
                .all(|j| matches!(j.dispatch, Dispatch::NoBus))
        );
        assert_eq!(store.job_counts().await.unwrap().total(), 2);
    }

    #[tokio::test]
    async fn an_invalid_job_is_refused_before_anything_is_written() {
        let store = store();
        let err = submit_job(
            &store,
            &crate::bus::store_queue::StoreQueue::default(),
            &Topics::default(),
            job(" ", JobKind::Image, None),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert_eq!(store.job_counts().await.unwrap().total(), 0);
    }
}
