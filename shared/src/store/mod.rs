//! The job and download store.
//!
//! [`Store`] is what the stages use: every operation on jobs and downloads,
//! written once over the [`Backend`] port. A write reads the document, applies
//! one state-machine method from [`crate::domain`], and writes it back only if
//! nobody changed it in between (compare-and-set), retrying on conflict. The
//! two adapters, [`embedded`] and [`firestore`], only store documents.

pub mod activity;
pub mod backend;
pub mod budget;
mod claim;
pub mod downloads;
pub mod embedded;
pub mod firestore;
mod held;
pub mod indexes;
mod janitor;
mod jobs;
mod limits;
mod outbox;
pub mod rejected;
pub mod review;
pub mod stats;
pub mod tenants;
mod walk;
pub mod webhooks;

use crate::domain::download::{Download, DownloadStatus, NewDownload};
use crate::domain::job::{ClaimRefusal, Job, NewJob, Retention};
use crate::domain::tenant::TenantName;
use crate::domain::values::Verdict;
use crate::domain::values::{DeliveredOutput, JobError, JobKind, JobStatus, RetryOptions};
use crate::domain::{Lease, TransitionError};
use crate::error::{Error, Result};
use crate::job_events::{JobEvent, JobEvents, OutboxEntry, raises_event};
use crate::time::Timestamp;
use backend::{Backend, Collection, Cond, Dir, Doc, Query, Scalar, Stored, Version, Write};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How many pending candidates a claimer looks at. Each claimer tries them in
/// its own random order, so concurrent claimers rarely fight over one
/// document.
const CLAIM_CANDIDATES: u32 = 16;
/// Rounds of re-reading before a contended write gives up with
/// [`Error::Contention`].
const CAS_ROUNDS: usize = 50;

/// One round of a compare-and-set: read, decide, write if unchanged.
enum Round<R> {
    /// The round ended the operation (written, or nothing to do).
    Done(R),
    /// Another writer came first: read again.
    Lost,
}

/// Runs `round` until one is done, at most [`CAS_ROUNDS`] times; then gives
/// up with [`Error::Contention`] on `kind` `id`.
async fn until_done<R, F>(kind: &'static str, id: &str, mut round: impl FnMut() -> F) -> Result<R>
where
    F: Future<Output = Result<Round<R>>>,
{
    for _ in 0..CAS_ROUNDS {
        if let Round::Done(outcome) = round().await? {
            return Ok(outcome);
        }
    }
    Err(Error::Contention {
        kind,
        id: id.to_string(),
    })
}
/// Page size of sweeps (resets, retention).
const SWEEP_PAGE: u32 = 200;
/// The largest page a listing returns.
pub const MAX_PAGE: u32 = 1000;

/// A record kept in the store: one document of one collection.
trait Record: Clone + Serialize + DeserializeOwned + Send + Sync {
    const COLLECTION: Collection;
    const KIND: &'static str;

    fn id(&self) -> &str;
    /// The record as a job, for job events.
    fn as_job(&self) -> Option<&Job> {
        None
    }
}

/// A record workers take turns on: claimed under a lease, and failed for
/// good once its attempts are used up.
trait Claimable: Record {
    fn claim(&mut self, lease: &Lease, now: Timestamp) -> Result<(), ClaimRefusal>;
    fn exhaust(&mut self, now: Timestamp, retention: &Retention) -> Result<(), TransitionError>;
}

impl Record for Job {
    const COLLECTION: Collection = Collection::Jobs;
    const KIND: &'static str = "job";

    fn id(&self) -> &str {
        self.id()
    }
    fn as_job(&self) -> Option<&Job> {
        Some(self)
    }
}

impl Claimable for Job {
    fn claim(&mut self, lease: &Lease, now: Timestamp) -> Result<(), ClaimRefusal> {
        Job::claim(self, lease, now)
    }
    fn exhaust(&mut self, now: Timestamp, retention: &Retention) -> Result<(), TransitionError> {
        Job::exhaust(self, now, retention)
    }
}

impl Record for Download {
    const COLLECTION: Collection = Collection::Downloads;
    const KIND: &'static str = "download";

    fn id(&self) -> &str {
        self.id()
    }
}

impl Claimable for Download {
    fn claim(&mut self, lease: &Lease, now: Timestamp) -> Result<(), ClaimRefusal> {
        Download::claim(self, lease, now)
    }
    fn exhaust(&mut self, now: Timestamp, _retention: &Retention) -> Result<(), TransitionError> {
        Download::exhaust(self, now)
    }
}

/// What one try at claiming a candidate came to.
pub(super) enum Tried<T> {
    /// Claimed: the caller has it.
    Claimed(T),
    /// Not claimed for want of budget (jobs only).
    Over(Box<budget::OverBudget>),
    /// Not claimable (failed for good, refused), or taken by someone else
    /// meanwhile: try the next candidate.
    Passed,
}

/// The result of a create: the record, and whether this call made it.
#[derive(Clone, Debug, PartialEq)]
pub struct Created<T> {
    /// The stored record (the existing one when `created` is false).
    pub record: T,
    /// `false` when a record with the same id existed already.
    pub created: bool,
}

/// The result of a claim of one record.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim<T> {
    /// This caller now holds the lease.
    Claimed(T),
    /// Not claimable now: finished, leased by another worker, or generating.
    Refused(T, ClaimRefusal),
    /// No attempt was left; the record is now failed.
    Exhausted(T),
    /// An earlier claim's paid request may have gone out and its outcome was
    /// never recorded: nothing new is sent. The job now awaits its output
    /// (video) or failed as `submit_unknown` (image); see
    /// [`Job::lose_call`].
    Lost(T),
    /// No such record.
    NotFound,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The records, in listing order.
    pub items: Vec<T>,
    /// Pass back as `after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Filter of [`Store::list_jobs`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this kind.
    pub kind: Option<JobKind>,
    /// Only reviewed jobs: `true` those approved, `false` those rejected
    /// (a job nobody reviewed matches neither).
    pub approved: Option<bool>,
    /// Only this tenant's; every tenant's when `None`.
    pub tenant: Option<TenantName>,
}

/// Jobs per status and kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobCounts(pub BTreeMap<(JobStatus, JobKind), u64>);

impl JobCounts {
    /// Jobs in `status`, both kinds.
    pub fn status(&self, status: JobStatus) -> u64 {
        JobKind::ALL.iter().map(|k| self.get(status, *k)).sum()
    }
    /// Jobs of `kind`, every status.
    pub fn kind(&self, kind: JobKind) -> u64 {
        JobStatus::ALL.iter().map(|s| self.get(*s, kind)).sum()
    }
    /// Jobs in `status` of `kind`.
    pub fn get(&self, status: JobStatus, kind: JobKind) -> u64 {
        self.0.get(&(status, kind)).copied().unwrap_or(0)
    }
    /// All jobs.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Downloads per status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownloadCounts(pub BTreeMap<DownloadStatus, u64>);

impl DownloadCounts {
    /// Downloads in `status`.
    pub fn status(&self, status: DownloadStatus) -> u64 {
        self.0.get(&status).copied().unwrap_or(0)
    }
    /// All downloads.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// What a reset of stuck or expired jobs did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResetReport {
    /// Jobs put back to pending (to be dispatched again).
    pub requeued: Vec<Job>,
    /// Jobs that had no attempt left and are now failed.
    pub failed: Vec<Job>,
}

/// What a retention sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Jobs deleted.
    pub jobs: u64,
    /// Downloads deleted.
    pub downloads: u64,
    /// Rejected requests deleted.
    pub rejected: u64,
    /// Budget days deleted.
    pub budgets: u64,
    /// Chunks of held outputs deleted (left behind by a crash).
    pub held: u64,
    /// Charge records deleted.
    pub charges: u64,
    /// Rate-limit windows deleted.
    pub limits: u64,
    /// Webhook deliveries.
    pub webhooks: u64,
}

/// Which adapter holds the store, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite under a local state directory.
    Embedded {
        /// The state directory (`.asmr` by default).
        state_dir: std::path::PathBuf,
    },
    /// Cloud Firestore (or its emulator), in Native mode.
    Firestore(firestore::FirestoreConfig),
}

impl StoreConfig {
    /// One line naming the adapter and where its data lives, the same line
    /// [`Store::describe`] gives once it is open.
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Embedded { state_dir } => embedded::describe(state_dir),
            StoreConfig::Firestore(config) => config.describe(),
        }
    }
}

/// The job and download store: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    retention: Retention,
    /// Told of every job that became terminal (see [`crate::job_events`]).
    events: Option<Arc<dyn JobEvents>>,
    /// Publishes of fresh events still under way.
    relays: Arc<outbox::Relays>,
    /// The tenants, as last read (see [`tenants::TenantDirectory`]).
    tenant_directory: Arc<tenants::TenantDirectory>,
    /// How many shards each day's budget is split over.
    budget_shards: u32,
    /// The shard this store's next paid claim reserves on (taken in turn
    /// from a random start, so that instances spread their writes).
    next_shard: Arc<std::sync::atomic::AtomicU32>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.describe())
            .finish()
    }
}

/// The one log line of a job's status change (`from` is `None` for a new
/// job), with a stable `event` field for log-based metrics.
fn log_transition(from: Option<JobStatus>, job: &Job) {
    let code = job.error().map_or("", |e| e.code.as_str());
    tracing::info!(
        event = "job_transition",
        job_id = %job.id(),
        tenant = %job.tenant(),
        kind = job.kind().as_str(),
        from = from.map_or("", JobStatus::as_str),
        to = job.status().as_str(),
        attempt = job.attempts(),
        code,
        "job {} {} -> {}",
        job.id(),
        from.map_or("new", JobStatus::as_str),
        job.status().as_str()
    );
}

fn to_doc<T: Serialize>(record: &T) -> Result<Doc> {
    match serde_json::to_value(record) {
        Ok(Value::Object(doc)) => Ok(doc),
        Ok(_) => Err(Error::store(
            "encoding a record",
            "not a JSON object",
            false,
        )),
        Err(e) => Err(Error::store("encoding a record", e, false)),
    }
}

fn from_stored_as<T: DeserializeOwned>(
    collection: Collection,
    stored: Stored,
) -> Result<(T, Version)> {
    let record =
        serde_json::from_value(Value::Object(stored.doc)).map_err(|cause| Error::Corrupt {
            collection: collection.name(),
            id: stored.id,
            cause,
        })?;
    Ok((record, stored.version))
}

fn from_stored<T: Record>(stored: Stored) -> Result<(T, Version)> {
    from_stored_as(T::COLLECTION, stored)
}

fn status_in(statuses: &[JobStatus]) -> Cond {
    Cond::In(
        "status",
        statuses
            .iter()
            .map(|s| Scalar::Str(s.as_str().into()))
            .collect(),
    )
}

fn str_eq(field: &'static str, value: &str) -> Cond {
    Cond::Eq(field, Scalar::Str(value.to_string()))
}

/// The cursor after `doc` in a query ordered by `order`.
fn cursor_of(order: &[(&'static str, Dir)], doc: &Doc) -> Result<String> {
    let values: Vec<Value> = order
        .iter()
        .map(|(field, _)| doc.get(*field).cloned().unwrap_or(Value::Null))
        .collect();
    serde_json::to_string(&values).map_err(|e| Error::store("encoding a page token", e, false))
}

fn parse_cursor(
    collection: Collection,
    order: &[(&'static str, Dir)],
    token: &str,
) -> Result<Vec<Scalar>> {
    use crate::domain::invalid::ValidationError;
    let bad = || {
        Error::Invalid(ValidationError::new(
            "after",
            "is not a page token from this listing",
        ))
    };
    let values: Vec<Value> = serde_json::from_str(token).map_err(|_| bad())?;
    if values.len() != order.len() {
        return Err(bad());
    }
    scalars_of(collection, order, values).ok_or_else(bad)
}

/// A cursor right after `doc` in `order`, without a token's round trip.
fn cursor_after(
    collection: Collection,
    order: &[(&'static str, Dir)],
    doc: &Doc,
) -> Result<Vec<Scalar>> {
    let values = order
        .iter()
        .map(|(field, _)| doc.get(*field).cloned().unwrap_or(Value::Null))
        .collect();
    scalars_of(collection, order, values).ok_or_else(|| {
        Error::store(
            "reading a record's order fields",
            "a field is not a string, number or time",
            false,
        )
    })
}

/// `values` of the `order` fields as query scalars; `None` when one is of no
/// orderable kind.
fn scalars_of(
    collection: Collection,
    order: &[(&'static str, Dir)],
    values: Vec<Value>,
) -> Option<Vec<Scalar>> {
    order
        .iter()
        .zip(values)
        .map(|((field, _), value)| match value {
            Value::String(s) if collection.timestamp_fields().contains(field) => {
                Timestamp::parse(&s).map(Scalar::Time)
            }
            Value::String(s) => Some(Scalar::Str(s)),
            Value::Number(n) => n.as_i64().map(Scalar::Int),
            _ => None,
        })
        .collect()
}

const JOB_LIST_ORDER: &[(&str, Dir)] = &[("created_at", Dir::Desc), ("id", Dir::Desc)];
const CLAIM_ORDER: &[(&str, Dir)] = &[
    ("priority", Dir::Desc),
    ("created_at", Dir::Asc),
    ("id", Dir::Asc),
];

impl Store {
    /// A store over `backend` with the default retention.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            retention: Retention::default(),
            events: None,
            relays: Arc::default(),
            tenant_directory: Arc::default(),
            budget_shards: budget::BUDGET_SHARDS,
            next_shard: Arc::new(rand::random::<u32>().into()),
        }
    }

    /// Raises a job event through `events` after every write that makes a
    /// job terminal.
    pub fn with_events(mut self, events: Arc<dyn JobEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// Writes `after` over the record read at `version` (as `before`), with
    /// `extra` writes in the same atomic commit. A job that this write ends (or
    /// approves) also writes its event to the outbox in that commit, and the
    /// event is published once the commit is in. `false` on a conflict.
    async fn put<T: Record>(
        &self,
        before: &T,
        after: &T,
        version: &Version,
        mut extra: Vec<Write>,
    ) -> Result<bool> {
        let jobs = before.as_job().zip(after.as_job());
        let event = match (jobs, &self.events) {
            (Some((before, after)), Some(_)) if raises_event(before, after) => {
                let entry = OutboxEntry::new(JobEvent::of_write(before, after), Timestamp::now());
                extra.push(Write::Create {
                    collection: Collection::Outbox,
                    id: entry.id.clone(),
                    doc: to_doc(&entry)?,
                });
                Some(entry.event)
            }
            _ => None,
        };
        let doc = to_doc(after)?;
        let written = if extra.is_empty() {
            self.backend
                .replace(T::COLLECTION, after.id(), version, &doc)
                .await?
        } else {
            let mut writes = vec![Write::Replace {
                collection: T::COLLECTION,
                id: after.id().to_string(),
                expected: version.clone(),
                doc,
            }];
            writes.extend(extra);
            self.backend.commit(&writes).await?
        };
        if !written {
            return Ok(false);
        }
        if let Some((before, after)) = jobs
            && before.status() != after.status()
        {
            log_transition(Some(before.status()), after);
        }
        if let Some(event) = event {
            self.relay(event);
        }
        Ok(true)
    }

    /// Opens the store `config` names.
    pub async fn open(config: &StoreConfig) -> Result<Self> {
        let backend: Arc<dyn Backend> = match config {
            StoreConfig::Embedded { state_dir } => {
                Arc::new(embedded::EmbeddedBackend::open(state_dir)?)
            }
            StoreConfig::Firestore(config) => {
                Arc::new(firestore::FirestoreBackend::connect(config.clone()).await?)
            }
        };
        Ok(Self::new(backend))
    }

    /// Overrides how long finished records are kept.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// One line naming the backend and where its data is.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    // ---- generic machinery ----

    async fn load<T: Record>(&self, id: &str) -> Result<Option<(T, Version)>> {
        match self.backend.get(T::COLLECTION, id).await? {
            Some(stored) => from_stored(stored).map(Some),
            None => Ok(None),
        }
    }

    async fn fetch<T: Record>(&self, id: &str) -> Result<T> {
        match self.load::<T>(id).await? {
            Some((record, _)) => Ok(record),
            None => Err(Error::NotFound {
                kind: T::KIND,
                id: id.to_string(),
            }),
        }
    }

    async fn create<T: Record>(&self, record: T) -> Result<Created<T>> {
        self.create_versioned(record)
            .await
            .map(|(created, _)| created)
    }

    /// Creates `record` unless it exists; either way returns what is stored
    /// and its version, in one round trip when it is new.
    async fn create_versioned<T: Record>(&self, record: T) -> Result<(Created<T>, Version)> {
        let doc = &to_doc(&record)?;
        let id = record.id();
        // Settles with the stored record when one was there, `None` when
        // this one was written.
        let (existing, version) = until_done(T::KIND, id, || async move {
            if let Some(version) = self.backend.create(T::COLLECTION, id, doc).await? {
                return Ok(Round::Done((None, version)));
            }
            // It exists: return what is stored. If it vanished in between
            // (retention), create again.
            Ok(match self.load::<T>(id).await? {
                Some((existing, version)) => Round::Done((Some(existing), version)),
                None => Round::Lost,
            })
        })
        .await?;
        let created = Created {
            created: existing.is_none(),
            record: existing.unwrap_or(record),
        };
        Ok((created, version))
    }

    /// Reads, applies `change`, writes back if unchanged; repeats on conflict.
    async fn update<T: Record>(
        &self,
        id: &str,
        change: impl Fn(&mut T, Timestamp) -> Result<(), TransitionError> + Send,
    ) -> Result<T> {
        let change = &change;
        until_done(T::KIND, id, || async move {
            let Some((mut record, version)) = self.load::<T>(id).await? else {
                return Err(Error::NotFound {
                    kind: T::KIND,
                    id: id.to_string(),
                });
            };
            let before = record.clone();
            change(&mut record, Timestamp::now()).map_err(|reason| Error::Transition {
                kind: T::KIND,
                id: id.to_string(),
                reason,
            })?;
            Ok(if self.put(&before, &record, &version, Vec::new()).await? {
                Round::Done(record)
            } else {
                Round::Lost
            })
        })
        .await
    }

    /// Tries to claim a record as read at `version`. `Ok(None)` when someone
    /// else wrote it first.
    async fn try_claim<T: Claimable>(
        &self,
        mut record: T,
        version: &Version,
        lease: &Lease,
    ) -> Result<Option<Claim<T>>> {
        let now = Timestamp::now();
        let before = record.clone();
        let outcome = match record.claim(lease, now) {
            Ok(()) => Claim::Claimed,
            Err(ClaimRefusal::Exhausted) => {
                record
                    .exhaust(now, &self.retention)
                    .map_err(|reason| Error::Transition {
                        kind: T::KIND,
                        id: record.id().to_string(),
                        reason,
                    })?;
                Claim::Exhausted
            }
            Err(refusal) => return Ok(Some(Claim::Refused(record, refusal))),
        };
        let written = self.put(&before, &record, version, Vec::new()).await?;
        Ok(written.then(|| outcome(record)))
    }

    /// Claims record `id` with `attempt`, which tries it as read and
    /// answers `None` when it changed meanwhile (read again).
    async fn claim_by_id<T: Claimable, O, F: Future<Output = Result<Option<O>>>>(
        &self,
        id: &str,
        not_found: impl Fn() -> O,
        attempt: impl Fn(T, Version) -> F,
    ) -> Result<O> {
        let (not_found, attempt) = (&not_found, &attempt);
        until_done(T::KIND, id, || async move {
            let Some((record, version)) = self.load::<T>(id).await? else {
                return Ok(Round::Done(not_found()));
            };
            Ok(match attempt(record, version).await? {
                Some(outcome) => Round::Done(outcome),
                None => Round::Lost,
            })
        })
        .await
    }

    async fn page<T: Record>(
        &self,
        conds: Vec<Cond>,
        order: &[(&'static str, Dir)],
        limit: u32,
        after: Option<&str>,
    ) -> Result<Page<T>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let query = Query {
            conds,
            order: order.to_vec(),
            after: after
                .map(|token| parse_cursor(T::COLLECTION, order, token))
                .transpose()?,
            limit: limit + 1,
        };
        let mut stored = self.backend.query(T::COLLECTION, &query).await?;
        let more = stored.len() > limit as usize;
        stored.truncate(limit as usize);
        let next = match (more, stored.last()) {
            (true, Some(last)) => Some(cursor_of(order, &last.doc)?),
            _ => None,
        };
        let items = stored
            .into_iter()
            .map(|s| from_stored::<T>(s).map(|(record, _)| record))
            .collect::<Result<_>>()?;
        Ok(Page { items, next })
    }

    /// Every record matching `conds`, page by page, in `order`.
    async fn sweep(
        &self,
        collection: Collection,
        conds: Vec<Cond>,
        order: &[(&'static str, Dir)],
    ) -> Result<Vec<Stored>> {
        let mut all = Vec::new();
        let mut query = Query {
            conds,
            order: order.to_vec(),
            after: None,
            limit: SWEEP_PAGE,
        };
        loop {
            let page = self.backend.query(collection, &query).await?;
            let full = page.len() == SWEEP_PAGE as usize;
            if let Some(last) = page.last() {
                let token = cursor_of(order, &last.doc)?;
                query.after = Some(parse_cursor(collection, order, &token)?);
            }
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }
}
