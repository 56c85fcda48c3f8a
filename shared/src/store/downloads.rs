//! The download operations of the store: one record per finalized output
//! object, claimed, copied and settled like a job.

use super::budget;
use super::tenants::Scope;
use super::{
    CLAIM_ORDER, Claim, Collection, Created, DeliveredOutput, Download, DownloadCounts,
    DownloadStatus, Job, JobError, Lease, NewDownload, Page, Store, Timestamp, Tried, Version,
    Write, str_eq, to_doc,
};
use crate::error::Error;
use crate::error::Result;

/// How the copy of a new object starts ([`Store::start_download`]).
pub enum Started {
    /// The record is new and claimed by the caller; [`Fresh`] lets the
    /// copy finish in one commit ([`Store::finish_delivery`]).
    Fresh(Download, Fresh),
    /// A record of that object generation existed (a redelivered event),
    /// unclaimed; with its job.
    Existing(Download, Job),
    /// The object belongs to no job (of its tenant): nothing was kept.
    NoJob,
}

/// What the store read when it started a new copy, for the one commit that
/// finishes it: opaque outside the store.
pub struct Fresh {
    download_version: Version,
    job: Job,
    job_version: Version,
}

impl Fresh {
    /// The job, as read when the copy started.
    pub fn job(&self) -> &Job {
        &self.job
    }
}

impl Store {
    /// Creates a download record unless one exists for that object generation.
    pub async fn create_download(&self, new: NewDownload) -> Result<Created<Download>> {
        self.create(Download::new(new, Timestamp::now())).await
    }

    /// Starts the copy of a new object: creates its download record already
    /// claimed under `lease` (its first attempt) while its job is read, in
    /// one round trip. A record made for an object of no job is deleted
    /// again.
    pub async fn start_download(&self, new: NewDownload, lease: &Lease) -> Result<Started> {
        let (job_id, tenant) = (new.job_id.clone(), new.tenant.clone());
        let (job, created) = tokio::join!(
            self.load::<Job>(&job_id),
            self.create_claimed_download(new, lease)
        );
        let (created, download_version) = created?;
        // An object under another tenant's prefix than its job's is no
        // output of that job.
        let Some((job, job_version)) = job?.filter(|(job, _)| *job.tenant() == tenant) else {
            if created.created {
                // Not copied: the record made alongside goes again.
                let _ = self
                    .backend
                    .delete(
                        Collection::Downloads,
                        created.record.id(),
                        &download_version,
                    )
                    .await;
            }
            return Ok(Started::NoJob);
        };
        Ok(match created.created {
            true => Started::Fresh(
                created.record,
                Fresh {
                    download_version,
                    job,
                    job_version,
                },
            ),
            false => Started::Existing(created.record, job),
        })
    }

    /// Creates a download record already claimed under `lease` (its first
    /// attempt), in one round trip; if one exists for that object
    /// generation, returns it unclaimed. Either way with its version.
    async fn create_claimed_download(
        &self,
        new: NewDownload,
        lease: &Lease,
    ) -> Result<(Created<Download>, Version)> {
        let now = Timestamp::now();
        let mut download = Download::new(new, now);
        download.claim(lease, now).map_err(|refusal| {
            Error::store("claiming a new download", format!("{refusal:?}"), false)
        })?;
        self.create_versioned(download).await
    }

    /// Completes a copy and records it on its job in one atomic commit (the
    /// download and the job at the versions they were read at, with the job
    /// event when the job is now delivered): a delivered file costs one
    /// write. `None` when either changed since (another output of the job
    /// landed meanwhile): the caller records the two the usual way.
    pub async fn finish_delivery(
        &self,
        download: &Download,
        fresh: &Fresh,
        owner: &str,
        bytes: u64,
    ) -> Result<Option<(Download, Job)>> {
        let now = Timestamp::now();
        let (mut done, download_version) = (download.clone(), &fresh.download_version);
        let job = (&fresh.job, &fresh.job_version);
        let transition = |kind, id: &str, reason| Error::Transition {
            kind,
            id: id.to_string(),
            reason,
        };
        done.complete(owner, bytes, now, &self.retention)
            .map_err(|reason| transition("download", done.id(), reason))?;
        let (before, job_version) = (job.0, job.1);
        let mut after = before.clone();
        let delivery = DeliveredOutput {
            source: done.source().clone(),
            destination: done.destination().clone(),
        };
        if after.record_delivery(delivery, now).is_err() {
            // A cancelled job takes no delivery: the usual path says so.
            return Ok(None);
        }
        let extra = vec![Write::Replace {
            collection: Collection::Downloads,
            id: done.id().to_string(),
            expected: download_version.clone(),
            doc: to_doc(&done)?,
        }];
        if self.put(before, &after, job_version, extra).await? {
            Ok(Some((done, after)))
        } else {
            Ok(None)
        }
    }

    /// The download, if it exists.
    pub async fn get_download(&self, id: &str) -> Result<Option<Download>> {
        Ok(self.load::<Download>(id).await?.map(|(d, _)| d))
    }

    /// The download, or [`Error::NotFound`].
    pub async fn download(&self, id: &str) -> Result<Download> {
        self.fetch(id).await
    }

    /// Downloads in copy order (priority, then oldest).
    pub async fn list_downloads(
        &self,
        status: Option<DownloadStatus>,
        limit: u32,
        after: Option<&str>,
    ) -> Result<Page<Download>> {
        self.list_downloads_in(status, &Scope::Everyone, limit, after)
            .await
    }

    /// [`Store::list_downloads`] of `scope` only (a page may hold fewer
    /// than `limit` when the scope is the default tenant, whose older
    /// records carry no tenant to query by).
    pub async fn list_downloads_in(
        &self,
        status: Option<DownloadStatus>,
        scope: &Scope,
        limit: u32,
        after: Option<&str>,
    ) -> Result<Page<Download>> {
        let mut conds = status
            .map(|s| vec![str_eq("status", s.as_str())])
            .unwrap_or_default();
        conds.extend(scope.cond());
        let mut page: Page<Download> = self.page(conds, CLAIM_ORDER, limit, after).await?;
        page.items
            .retain(|download| scope.covers(download.tenant()));
        Ok(page)
    }

    /// Claims one download: pending, or downloading with an expired lease.
    pub async fn claim_download(&self, id: &str, lease: &Lease) -> Result<Claim<Download>> {
        self.claim_by_id(
            id,
            || Claim::NotFound,
            |download, version| async move { self.try_claim(download, &version, lease).await },
        )
        .await
    }

    /// Claims the next pending download in copy order.
    pub async fn claim_next_download(&self, lease: &Lease) -> Result<Option<Download>> {
        let conds = vec![str_eq("status", DownloadStatus::Pending.as_str())];
        let claimed = self
            .claim_first(conds, |download, version| async move {
                Ok(match self.try_claim(download, &version, lease).await? {
                    Some(Claim::Claimed(download)) => Tried::Claimed(download),
                    _ => Tried::Passed,
                })
            })
            .await?;
        // Downloads cost nothing: a claim is never over budget.
        Ok(match claimed {
            budget::Budgeted::Within(download) => download,
            budget::Budgeted::Over(_) => None,
        })
    }

    /// Records copy progress and extends the lease.
    pub async fn download_progress(
        &self,
        id: &str,
        lease: &Lease,
        bytes_copied: u64,
    ) -> Result<Download> {
        self.update(id, |d: &mut Download, now| {
            d.progress(lease, bytes_copied, now)
        })
        .await
    }

    /// downloading → completed.
    pub async fn complete_download(&self, id: &str, owner: &str, bytes: u64) -> Result<Download> {
        let retention = self.retention;
        self.update(id, |d: &mut Download, now| {
            d.complete(owner, bytes, now, &retention)
        })
        .await
    }

    /// A copy attempt failed: pending again while attempts remain and the
    /// error is retryable, else failed.
    pub async fn fail_download(&self, id: &str, owner: &str, error: JobError) -> Result<Download> {
        self.update(id, |d: &mut Download, now| {
            d.fail(owner, error.clone(), now)
        })
        .await
    }

    /// The holder gives a copy back without using up its attempt (the
    /// deployment, not the copy, is at fault).
    pub async fn wait_download(&self, id: &str, owner: &str, error: JobError) -> Result<Download> {
        self.update(id, |d: &mut Download, now| {
            d.wait(owner, error.clone(), now)
        })
        .await
    }

    /// An operator's retry of a failed download.
    pub async fn retry_download(&self, id: &str) -> Result<Download> {
        self.update(id, |d: &mut Download, now| d.retry(now)).await
    }

    /// Downloads per status.
    pub async fn download_counts(&self) -> Result<DownloadCounts> {
        self.download_counts_in(&Scope::Everyone).await
    }

    /// Downloads of `scope` per status.
    pub async fn download_counts_in(&self, scope: &Scope) -> Result<DownloadCounts> {
        let counting = &self.counting(scope).await?;
        let counts = futures::future::try_join_all(DownloadStatus::ALL.iter().map(|status| {
            let conds = vec![str_eq("status", status.as_str())];
            self.count_in(Collection::Downloads, conds, counting)
        }))
        .await?;
        Ok(DownloadCounts(
            DownloadStatus::ALL.into_iter().zip(counts).collect(),
        ))
    }
}
