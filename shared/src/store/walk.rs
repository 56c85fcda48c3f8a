//! Walking listings page by page: callers outside the store ask for every
//! record a filter matches, or the first few, and never follow `next`
//! themselves.

use super::tenants::Scope;
use super::{JobFilter, MAX_PAGE, Page, Store};
use crate::domain::download::{Download, DownloadStatus};
use crate::domain::job::Job;
use crate::domain::tenant::TenantName;
use crate::domain::values::JobKind;
use crate::error::Result;
use crate::store::rejected::Rejected;
use crate::time::Timestamp;
use std::future::Future;

/// Follows `next` from the first page: every record when `limit` is
/// `None`, else the first `limit`. The flag says whether more were left.
async fn walk<T, F, Fut>(mut page: F, limit: Option<usize>) -> Result<(Vec<T>, bool)>
where
    F: FnMut(u32, Option<String>) -> Fut,
    Fut: Future<Output = Result<Page<T>>>,
{
    let mut items = Vec::new();
    let mut after = None;
    loop {
        let want = limit.map_or(MAX_PAGE as usize, |limit| {
            (limit - items.len()).min(MAX_PAGE as usize)
        });
        let next = page(u32::try_from(want).unwrap_or(MAX_PAGE), after).await?;
        items.extend(next.items);
        match next.next {
            Some(cursor) if limit.is_none_or(|limit| items.len() < limit) => after = Some(cursor),
            cursor => return Ok((items, cursor.is_some())),
        }
    }
}

impl Store {
    /// Every job `filter` matches, newest first.
    pub async fn all_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let page = |limit, after: Option<String>| async move {
            self.list_jobs(filter, limit, after.as_deref()).await
        };
        Ok(walk(page, None).await?.0)
    }

    /// The first `limit` jobs `filter` matches, newest first, and whether
    /// more are left.
    pub async fn first_jobs(&self, filter: &JobFilter, limit: usize) -> Result<(Vec<Job>, bool)> {
        let page = |limit, after: Option<String>| async move {
            self.list_jobs(filter, limit, after.as_deref()).await
        };
        walk(page, Some(limit)).await
    }

    /// One page of the jobs `filter` matches, newest first, for a caller
    /// that hands the cursor to a client (the HTTP API) and never walks on
    /// itself: `after` is the `next` of the page before.
    pub async fn page_of_jobs(
        &self,
        filter: &JobFilter,
        limit: u32,
        after: Option<&str>,
    ) -> Result<super::Page<Job>> {
        self.list_jobs(filter, limit, after).await
    }

    /// Every job `filter` matches created at or after `since`, oldest first
    /// (the order of a batch). Pages come newest first, so the walk stops
    /// at the first page that is all older.
    pub async fn jobs_since(
        &self,
        filter: &JobFilter,
        since: Option<Timestamp>,
    ) -> Result<Vec<Job>> {
        let page = |limit, after: Option<String>| async move {
            let mut page = self.list_jobs(filter, limit, after.as_deref()).await?;
            page.items
                .retain(|job| since.is_none_or(|since| job.created_at() >= since));
            if since.is_some() && page.items.is_empty() {
                page.next = None;
            }
            Ok(page)
        };
        let mut jobs = walk(page, None).await?.0;
        jobs.reverse();
        Ok(jobs)
    }

    /// Every job of `ids` that still exists, with the jobs made from them
    /// (a chained run's videos), in that order.
    pub async fn jobs_with_children(&self, ids: &[String]) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        let mut children = Vec::new();
        for id in ids {
            if let Some(job) = self.get_job(id).await? {
                children.extend(job.children().iter().cloned());
                jobs.push(job);
            }
        }
        for id in children {
            if !ids.contains(&id)
                && let Some(child) = self.get_job(&id).await?
            {
                jobs.push(child);
            }
        }
        Ok(jobs)
    }

    /// Approved images of `tenant` (every tenant's when `None`), newest
    /// first: what `asmr promote --approved` makes videos of.
    pub async fn promotable(&self, tenant: Option<TenantName>) -> Result<Vec<Job>> {
        let filter = JobFilter::kind(JobKind::Image)
            .approved(true)
            .with_tenant(tenant);
        self.all_jobs(&filter).await
    }

    /// Every download of `scope` in `status` (any, when `None`), in copy
    /// order.
    pub async fn all_downloads(
        &self,
        status: Option<DownloadStatus>,
        scope: &Scope,
    ) -> Result<Vec<Download>> {
        let page = |limit, after: Option<String>| async move {
            self.list_downloads_in(status, scope, limit, after.as_deref())
                .await
        };
        Ok(walk(page, None).await?.0)
    }

    /// The first `limit` downloads of `scope` in `status`, and whether
    /// more are left.
    pub async fn first_downloads(
        &self,
        status: Option<DownloadStatus>,
        scope: &Scope,
        limit: usize,
    ) -> Result<(Vec<Download>, bool)> {
        let page = |limit, after: Option<String>| async move {
            self.list_downloads_in(status, scope, limit, after.as_deref())
                .await
        };
        walk(page, Some(limit)).await
    }

    /// The first `limit` rejected requests of `scope`, newest first, and
    /// whether more are left.
    pub async fn first_rejected(
        &self,
        scope: &Scope,
        limit: usize,
    ) -> Result<(Vec<Rejected>, bool)> {
        let page = |limit, after: Option<String>| async move {
            self.list_rejected_in(scope, limit, after.as_deref()).await
        };
        walk(page, Some(limit)).await
    }
}

impl JobFilter {
    /// Jobs in `status`.
    pub fn status(status: crate::domain::values::JobStatus) -> Self {
        Self::default().with_status(Some(status))
    }

    /// Jobs of `kind`.
    pub fn kind(kind: JobKind) -> Self {
        Self::default().with_kind(Some(kind))
    }

    /// Only `status`, when given.
    pub fn with_status(self, status: Option<crate::domain::values::JobStatus>) -> Self {
        Self { status, ..self }
    }

    /// Only `kind`, when given.
    pub fn with_kind(self, kind: Option<JobKind>) -> Self {
        Self { kind, ..self }
    }

    /// Only `tenant`'s jobs, when given.
    pub fn with_tenant(self, tenant: Option<TenantName>) -> Self {
        Self { tenant, ..self }
    }

    /// Only approved jobs (`true`) or rejected ones (`false`).
    pub fn approved(self, approved: bool) -> Self {
        self.with_approved(Some(approved))
    }

    /// Only reviewed jobs of that verdict, when given.
    pub fn with_approved(self, approved: Option<bool>) -> Self {
        Self { approved, ..self }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::walk;
    use crate::store::Page;

    /// Pages of at most 2 (or `limit`) of 0..n, as a backend hands them out.
    fn pager(
        n: u32,
        asked: &std::sync::Mutex<Vec<u32>>,
    ) -> impl FnMut(u32, Option<String>) -> std::future::Ready<crate::error::Result<Page<u32>>> + '_
    {
        move |limit, after| {
            asked.lock().unwrap().push(limit);
            let start: u32 = after.map_or(0, |a| a.parse().unwrap());
            let end = (start + limit.min(2)).min(n);
            std::future::ready(Ok(Page {
                items: (start..end).collect(),
                next: (end < n).then(|| end.to_string()),
            }))
        }
    }

    #[tokio::test]
    async fn a_walk_follows_every_page_or_stops_at_the_limit() {
        let asked = std::sync::Mutex::new(Vec::new());
        let (all, more) = walk(pager(5, &asked), None).await.unwrap();
        assert_eq!((all, more), (vec![0, 1, 2, 3, 4], false));
        let (first, more) = walk(pager(5, &asked), Some(3)).await.unwrap();
        assert_eq!((first, more), (vec![0, 1, 2], true));
        // The last page asks only for what is still wanted.
        assert_eq!(asked.lock().unwrap()[3..], [3, 1]);
        let (exact, more) = walk(pager(4, &asked), Some(4)).await.unwrap();
        assert_eq!((exact, more), (vec![0, 1, 2, 3], false));
        let (none, more) = walk(pager(0, &asked), Some(3)).await.unwrap();
        assert_eq!((none, more), (Vec::<u32>::new(), false));
    }
}
