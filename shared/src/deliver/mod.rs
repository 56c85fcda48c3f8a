//! DeliveredOutput: every finalized output object is copied, intact, to the
//! destination — another bucket (a server-side rewrite) or a directory (a
//! Cloud Run volume mount, or a local folder).
//!
//! One `downloads/{id}` record per object generation (so a redelivered event
//! is a no-op) tracks the copy: claimed under a lease, at most
//! DOWNLOAD_CONCURRENCY at once per instance, DOWNLOAD_TIMEOUT per attempt,
//! three attempts. A copy to a directory streams into a temporary file next
//! to the target, verifies size and CRC32C against the object's metadata,
//! fsyncs and renames, so a reader never sees a partial file; an interrupted
//! copy resumes from the bytes already on disk. When the last output of a job
//! lands, the job becomes `delivered`.

pub mod copy;
pub mod service;

use crate::ack::Handled;
use crate::domain::Lease;
use crate::domain::destination::{Destination, Target};
use crate::domain::download::{Download, DownloadStatus, FileType, NewDownload, OutputName};
use crate::domain::tenant::{Tenant, TenantName};
use crate::domain::values::{DeliveredOutput, JobError};
use crate::error::Error;
use crate::events::{ObjectEvent, ObjectEventKind};
use crate::objects::ObjectMeta;
use crate::objects::ObjectStore;
use crate::stage::Workers;
use crate::store::downloads::{Fresh, Started};
use crate::store::{Claim, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Downloader settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloaderSettings {
    /// The bucket(s) whose objects are delivered; events of others are ignored.
    pub output_buckets: Vec<String>,
    /// Where copies go.
    pub destination: Destination,
    /// DOWNLOAD_CONCURRENCY: copies at once per instance.
    pub concurrency: usize,
    /// DOWNLOAD_TIMEOUT: the longest one attempt may take.
    pub timeout: Duration,
    /// How long a claim lasts without progress. A copier extends it as bytes
    /// arrive, so a crashed copier's download is free again soon.
    pub lease: Duration,
    /// Priority of images (copied first by default).
    pub image_priority: i64,
    /// Priority of videos.
    pub video_priority: i64,
}

/// A storage event the downloader takes on ([`Downloader::accept`]): the
/// job the object belongs to and its tenant, its file type, where its copy
/// goes, and the object as it is in the bucket.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The job of the object.
    pub job_id: String,
    /// Whose output it is, from the object's prefix.
    pub tenant: TenantName,
    /// Image, video or other, from the object's name.
    pub file_type: FileType,
    /// Where the copy goes.
    pub target: Target,
    /// The object now.
    pub meta: ObjectMeta,
}

fn shutting_down() -> Handled {
    Handled::Retry {
        rate_limited: false,
        reason: "the downloader is shutting down".into(),
    }
}

/// The one line of a completed copy, counted by the bytes-delivered metric.
fn completed_log(download: &Download, bytes: u64) {
    tracing::info!(
        job_id = %download.job_id(),
        download_id = %download.id(),
        source = %download.source(),
        destination = %download.destination(),
        bytes,
        event = "download_completed",
        "delivered"
    );
}

/// The answer once `download` is recorded on `job`, which says so at INFO
/// when that delivery was its last.
fn recorded(download: &Download, job: &crate::domain::job::Job) -> Handled {
    if job.status() == crate::domain::values::JobStatus::Delivered {
        tracing::info!(job_id = %job.id(), kind = %job.kind(), event = "job_delivered", "every output delivered");
    }
    Handled::Done(format!(
        "{} → {}",
        download.source(),
        download.destination()
    ))
}

/// Copies finalized outputs to the destination.
pub struct Downloader {
    store: Store,
    objects: Arc<dyn ObjectStore>,
    settings: DownloaderSettings,
    slots: Semaphore,
    workers: Workers,
    /// The manifest appends of this downloader, composed together.
    manifest: crate::manifest::append::Appender,
}

impl Downloader {
    /// A downloader reading from `objects` (which also holds a bucket
    /// destination) and recording in `store`.
    pub fn new(store: Store, objects: Arc<dyn ObjectStore>, settings: DownloaderSettings) -> Self {
        Self {
            objects,
            slots: Semaphore::new(settings.concurrency.max(1)),
            settings,
            workers: Workers::new("downloader"),
            manifest: crate::manifest::append::Appender::default(),
            store,
        }
    }

    /// Where `tenant`'s files are delivered (see
    /// [`crate::domain::tenant::Tenant::destination_in`]).
    pub async fn destination_of(&self, tenant: &TenantName) -> crate::error::Result<Destination> {
        let record = self
            .store
            .cached_tenant(tenant)
            .await?
            .unwrap_or_else(|| Tenant::unstored(tenant.clone()));
        Ok(record.destination_in(&self.settings.destination))
    }

    /// The settings.
    pub fn settings(&self) -> &DownloaderSettings {
        &self.settings
    }

    fn lease(&self) -> Lease {
        self.workers.lease(self.settings.lease)
    }

    /// Handles one storage event: [`Downloader::accept`], then
    /// [`Downloader::start`].
    pub async fn handle(&self, event: &ObjectEvent) -> Handled {
        match self.accept(event).await {
            Ok(accepted) => self.start(accepted).await,
            Err(answer) => answer,
        }
    }

    /// Whether `event` is a copy to make, and of what: a finalized object of
    /// an output bucket, under `images/{job}/` or `videos/{job}/`, with a
    /// name that stays inside the destination, read as it is in the bucket
    /// now (a stale or forged event cannot make a record of another
    /// generation). `Err` is the answer to an event that is not.
    pub async fn accept(&self, event: &ObjectEvent) -> std::result::Result<Accepted, Handled> {
        if event.kind != ObjectEventKind::Finalized {
            return Err(Handled::Ignored(format!(
                "{:?} of {} is not a finalize event",
                event.kind,
                event.uri()
            )));
        }
        if !self
            .settings
            .output_buckets
            .iter()
            .any(|b| b == &event.bucket)
        {
            return Err(Handled::Ignored(format!(
                "{} is not in an output bucket",
                event.uri()
            )));
        }
        let Some(output) = OutputName::parse(&event.name) else {
            return Err(Handled::Ignored(format!(
                "{} is not under [tenants/{{tenant}}/]images/{{job}}/ or videos/{{job}}/",
                event.uri()
            )));
        };
        let destination = self
            .destination_of(&output.tenant)
            .await
            .map_err(|e| Handled::store_trouble(&e))?;
        let target = destination.target_of(output.relative).map_err(|reason| {
            Handled::Poison(format!("{} cannot be delivered: {reason}", event.uri()))
        })?;
        let (job_id, file_type, tenant) =
            (output.job_id.to_string(), output.file_type, output.tenant);
        let meta = match self.objects.metadata(&event.bucket, &event.name).await {
            Ok(Some(meta)) => meta,
            Ok(None) => {
                return Err(Handled::Ignored(format!(
                    "{} no longer exists",
                    event.uri()
                )));
            }
            Err(e) if e.is_permission_denied() => {
                crate::stage::report_misconfiguration(
                    "Cloud Storage refuses the downloader's credentials or role",
                    &e,
                );
                return Err(Handled::store_trouble(&e));
            }
            Err(e) if e.is_retryable() => return Err(Handled::store_trouble(&e)),
            Err(e) => return Err(Handled::Poison(e.to_string())),
        };
        if let Some(generation) = event.generation
            && generation != meta.generation
        {
            return Err(Handled::Ignored(format!(
                "{} is at generation {}, not {generation}: the event is stale or not from Cloud Storage",
                event.uri(),
                meta.generation
            )));
        }
        Ok(Accepted {
            job_id,
            tenant,
            file_type,
            target,
            meta,
        })
    }

    /// Starts the copy of an accepted object: a new record is created
    /// already claimed, with its job read alongside, and copied at once (one
    /// commit finishes it); a record that existed (a redelivered event) is
    /// finished, answered or claimed like any other.
    pub async fn start(&self, accepted: Accepted) -> Handled {
        let Accepted {
            job_id,
            tenant,
            file_type,
            target,
            meta,
        } = accepted;
        let priority = match file_type {
            FileType::Image => self.settings.image_priority,
            FileType::Video => self.settings.video_priority,
            FileType::Other => 0,
        };
        let uri = meta.uri();
        let new = NewDownload {
            job_id: job_id.clone(),
            bucket: meta.bucket,
            object: meta.name,
            generation: Some(meta.generation),
            destination: target,
            file_type,
            priority,
            size: Some(meta.size),
            crc32c: Some(meta.crc32c),
            tenant,
        };
        let Ok(_slot) = self.slots.acquire().await else {
            return shutting_down();
        };
        let lease = self.lease();
        let (download, job) = match self.store.start_download(new, &lease).await {
            Ok(Started::Fresh(download, fresh)) => {
                return self.attempt(download, &lease, Some(fresh)).await;
            }
            Ok(Started::Existing(download, job)) => (download, job),
            Ok(Started::NoJob) => {
                return Handled::Ignored(format!("{uri} belongs to no job ({job_id})"));
            }
            Err(e) if e.is_retryable() => return Handled::store_trouble(&e),
            Err(e) => return Handled::Poison(e.to_string()),
        };
        match download.status() {
            // A copier that stopped between completing the download and
            // recording it on the job left the job short of a delivery.
            DownloadStatus::Completed
                if !job
                    .deliveries()
                    .iter()
                    .any(|d| d.source == *download.source()) =>
            {
                return self.record_delivery(&download).await;
            }
            DownloadStatus::Completed => {
                return Handled::Duplicate(format!("{} was already delivered", download.source()));
            }
            DownloadStatus::Failed => {
                return Handled::Duplicate(format!(
                    "{} failed for good; `asmr retry-download {}` tries again",
                    download.source(),
                    download.id()
                ));
            }
            DownloadStatus::Pending | DownloadStatus::Downloading => {}
        }
        self.claim_and_copy(download.id()).await
    }

    /// Claims a download and copies it, within the concurrency limit.
    pub async fn deliver(&self, download_id: &str) -> Handled {
        let Ok(_slot) = self.slots.acquire().await else {
            return shutting_down();
        };
        self.claim_and_copy(download_id).await
    }

    /// Claims a download and copies it; the caller holds a slot.
    async fn claim_and_copy(&self, download_id: &str) -> Handled {
        let lease = self.lease();
        let download = match self.store.claim_download(download_id, &lease).await {
            Ok(Claim::Claimed(download)) => download,
            // Another copier holds it. Until its copy is verified the event
            // must come back: if that copier died, the next delivery after
            // its lease runs out resumes the copy.
            Ok(Claim::Refused(download, _)) if download.status() == DownloadStatus::Downloading => {
                return Handled::Retry {
                    rate_limited: false,
                    reason: format!(
                        "{} is being copied by {}",
                        download.source(),
                        download.lease_owner().unwrap_or_default()
                    ),
                };
            }
            Ok(Claim::Refused(download, _)) => {
                return Handled::Duplicate(format!(
                    "{} is {}",
                    download.source(),
                    download.status()
                ));
            }
            Ok(Claim::Exhausted(download)) => {
                tracing::error!(download_id, source = %download.source(), event = "download_failed", "no attempt left");
                return Handled::Done(format!(
                    "{} failed after {} attempts",
                    download.source(),
                    download.attempts()
                ));
            }
            Ok(Claim::NotFound) => {
                return Handled::Poison(format!("download {download_id} does not exist"));
            }
            // Only jobs make paid calls.
            Ok(Claim::Lost(download)) => {
                return Handled::Duplicate(format!(
                    "{} is {}",
                    download.source(),
                    download.status()
                ));
            }
            Err(e) if e.is_retryable() => return Handled::store_trouble(&e),
            Err(e) => return Handled::Poison(e.to_string()),
        };
        self.attempt(download, &lease, None).await
    }

    /// One copy attempt of a claimed download: the copy, its manifest line,
    /// its record. A line that cannot be appended fails the attempt, so the
    /// next one copies again and writes it.
    async fn attempt(&self, download: Download, lease: &Lease, fresh: Option<Fresh>) -> Handled {
        let lease = lease.clone();
        let job = match &fresh {
            Some(fresh) => Some(fresh.job().clone()),
            None => match self.store.get_job(download.job_id()).await {
                Ok(job) => job,
                Err(e) => return Handled::store_trouble(&e),
            },
        };
        let metadata = job
            .as_ref()
            .map(crate::manifest::archive_metadata)
            .unwrap_or_default();
        let copy = copy::copy(self, &download, &lease, &metadata);
        let copied = tokio::time::timeout(self.settings.timeout, copy).await;
        let result = match copied {
            Ok(result) => result,
            Err(_) => Err(copy::CopyError::retryable(
                "timeout",
                format!(
                    "the copy took longer than {:?}; the next attempt resumes it",
                    self.settings.timeout
                ),
            )),
        };
        let verified = match result {
            Ok(verified) => verified,
            Err(e) => return self.give_up_attempt(&download, &lease, e).await,
        };
        if let Err(e) = self.append_line(&download, job.as_ref(), verified).await {
            let e = match e {
                Error::UnsafePath(why) => copy::CopyError::permanent("unsafe_path", why),
                e => copy::CopyError::retryable("manifest", e.to_string()),
            };
            return self.give_up_attempt(&download, &lease, e).await;
        }
        self.finish(&download, &lease, verified.bytes, fresh).await
    }

    /// Appends the manifest line of a verified copy. A file of no job, or
    /// one recorded for another destination than this downloader's, has
    /// none.
    async fn append_line(
        &self,
        download: &Download,
        job: Option<&crate::domain::job::Job>,
        verified: copy::Verified,
    ) -> crate::error::Result<()> {
        let destination = &self.destination_of(download.tenant()).await?;
        let path = destination.relative(download.destination());
        let (Some(job), Some(path)) = (job, path) else {
            tracing::warn!(download_id = %download.id(), destination = %download.destination(), "no manifest line: the file has no job or lies outside {destination}");
            return Ok(());
        };
        let line = crate::manifest::ManifestLine::new(
            job,
            path,
            verified.bytes,
            verified.crc32c,
            crate::time::Timestamp::now(),
        );
        crate::manifest::append::append(&self.manifest, self.objects.as_ref(), destination, &line)
            .await?;
        Ok(())
    }

    async fn finish(
        &self,
        download: &Download,
        lease: &Lease,
        bytes: u64,
        fresh: Option<Fresh>,
    ) -> Handled {
        // The download completed and the job's delivery in one commit, when
        // neither changed since they were read.
        if let Some(fresh) = fresh {
            match self
                .store
                .finish_delivery(download, &fresh, &lease.owner, bytes)
                .await
            {
                Ok(Some((_, job))) => {
                    completed_log(download, bytes);
                    return recorded(download, &job);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "recording the delivery the long way"),
            }
        }
        if let Err(e) = self
            .store
            .complete_download(download.id(), &lease.owner, bytes)
            .await
        {
            return match e {
                Error::Transition { .. } => Handled::Duplicate(e.to_string()),
                e => Handled::store_trouble(&e),
            };
        }
        completed_log(download, bytes);
        self.record_delivery(download).await
    }

    /// Records a completed download on its job; the last one delivers it.
    async fn record_delivery(&self, download: &Download) -> Handled {
        let delivery = DeliveredOutput {
            source: download.source().clone(),
            destination: download.destination().clone(),
        };
        match self
            .store
            .record_delivery(download.job_id(), delivery)
            .await
        {
            Ok(job) => recorded(download, &job),
            // The file is in place; a cancelled job just does not record it.
            Err(Error::Transition { .. } | Error::NotFound { .. }) => Handled::Done(format!(
                "{} → {} (the job no longer takes deliveries)",
                download.source(),
                download.destination()
            )),
            Err(e) => Handled::store_trouble(&e),
        }
    }

    async fn give_up_attempt(
        &self,
        download: &Download,
        lease: &Lease,
        e: copy::CopyError,
    ) -> Handled {
        let error = JobError::new(e.code.clone(), e.message.clone(), e.retryable);
        if e.denied {
            crate::stage::report_misconfiguration(
                "Cloud Storage refuses the downloader's credentials or role",
                &error,
            );
            return match self
                .store
                .wait_download(download.id(), &lease.owner, error)
                .await
            {
                Ok(_) => Handled::Retry {
                    rate_limited: false,
                    reason: format!("{}: {}", e.code, e.message),
                },
                Err(Error::Transition { .. }) => Handled::Duplicate("the lease was lost".into()),
                Err(e) => Handled::store_trouble(&e),
            };
        }
        tracing::warn!(download_id = %download.id(), source = %download.source(), attempt = download.attempts(), error = %error, "copy failed");
        match self
            .store
            .fail_download(download.id(), &lease.owner, error)
            .await
        {
            Ok(after) if after.status() == DownloadStatus::Pending => Handled::Retry {
                rate_limited: false,
                reason: format!("{}: {}", e.code, e.message),
            },
            Ok(after) => {
                tracing::error!(download_id = %download.id(), source = %download.source(), error = ?after.error(), event = "download_failed", "download failed");
                Handled::Done(format!("{} failed: {}", download.source(), e.message))
            }
            Err(Error::Transition { .. }) => Handled::Duplicate("the lease was lost".into()),
            Err(e) => Handled::store_trouble(&e),
        }
    }

    /// Copies pending downloads in priority order (images first by default,
    /// then oldest) until none is left or `max_jobs` is reached: the way a
    /// download an operator retried (`asmr retry-download`), or one whose
    /// event was lost, gets copied. Runs DOWNLOAD_CONCURRENCY at once.
    pub async fn drain(
        &self,
        max_jobs: Option<u64>,
    ) -> crate::error::Result<crate::stage::DrainReport> {
        use futures::StreamExt;
        let claimed = std::sync::atomic::AtomicU64::new(0);
        let retried = std::sync::atomic::AtomicU64::new(0);
        let worker = || async {
            loop {
                if max_jobs
                    .is_some_and(|max| claimed.load(std::sync::atomic::Ordering::SeqCst) >= max)
                {
                    return Ok::<(), Error>(());
                }
                let lease = self.lease();
                let Some(download) = self.store.claim_next_download(&lease).await? else {
                    return Ok(());
                };
                claimed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Handled::Retry { .. } = self.attempt(download, &lease, None).await {
                    retried.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        };
        let results: Vec<_> = futures::stream::iter(0..self.settings.concurrency.max(1))
            .map(|_| worker())
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        for result in results {
            result?;
        }
        Ok(crate::stage::DrainReport {
            processed: claimed.into_inner(),
            retried: retried.into_inner(),
        })
    }
}
