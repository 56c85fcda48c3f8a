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

pub mod promote;
pub mod service;

use crate::bus::{Bus, Topics};
use crate::domain::job::{Job, JobStatus, NewJob};
use crate::error::{Error, Result};
use crate::store::{Created, Store};
use futures::stream::{self, StreamExt};

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
/// the call; a failed publish is reported in [`SubmittedJob::dispatch`].
pub async fn submit_job(
    store: &Store,
    bus: &dyn Bus,
    topics: &Topics,
    new: NewJob,
) -> Result<SubmittedJob> {
    let Created {
        record: job,
        created,
    } = store.create_job(new).await?;
    let dispatch = match bus.reaches_workers() {
        false => Dispatch::NoBus,
        true if job.status() != JobStatus::Pending => Dispatch::NotPending,
        true => match publish(bus, topics, &job).await {
            Ok(message_id) => Dispatch::Published(message_id),
            Err(e) => Dispatch::Failed(e),
        },
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

/// The job message of `job`, published to its kind's topic.
async fn publish(bus: &dyn Bus, topics: &Topics, job: &Job) -> Result<String> {
    crate::bus::publish_job(bus, topics, job, "intake").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::domain::Lease;
    use crate::domain::job::JobKind;
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
            &crate::bus::StoreQueue::default(),
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
            &crate::bus::StoreQueue::default(),
            &Topics::default(),
            job(" ", JobKind::Image, None),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert_eq!(store.job_counts().await.unwrap().total(), 0);
    }
}
