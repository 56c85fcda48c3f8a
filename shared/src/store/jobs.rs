//! The job operations of the store: create, read, list, claim and every
//! transition, each a read → domain method → compare-and-set.

use super::budget;
use super::tenants::Scope;
use super::{
    Claim, ClaimRefusal, Collection, Cond, Created, DeliveredOutput, Dir, Duration, JOB_LIST_ORDER,
    Job, JobCounts, JobError, JobFilter, JobKind, JobStatus, Lease, NewJob, Page, ResetReport,
    RetryOptions, Scalar, Store, Timestamp, Verdict, from_stored, log_transition, status_in,
    str_eq,
};
use crate::domain::gs_uri::GsUri;
use crate::error::Result;

impl Store {
    /// Creates a job after validating it. With a `request_id`, the same
    /// request twice (even concurrently) yields one job.
    pub async fn create_job(&self, new: NewJob) -> Result<Created<Job>> {
        new.validate()?;
        let created = self.create(Job::new(new, Timestamp::now())).await?;
        if created.created {
            log_transition(None, &created.record);
        }
        Ok(created)
    }

    /// The job, if it exists.
    pub async fn get_job(&self, id: &str) -> Result<Option<Job>> {
        Ok(self.load::<Job>(id).await?.map(|(job, _)| job))
    }

    /// The job, or [`Error::NotFound`].
    pub async fn job(&self, id: &str) -> Result<Job> {
        self.fetch(id).await
    }

    /// Jobs newest first, `limit` (at most [`MAX_PAGE`]) at a time; `after`
    /// is the previous page's `next`.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: u32,
        after: Option<&str>,
    ) -> Result<Page<Job>> {
        let mut conds = Vec::new();
        if let Some(status) = filter.status {
            conds.push(str_eq("status", status.as_str()));
        }
        if let Some(kind) = filter.kind {
            conds.push(str_eq("kind", kind.as_str()));
        }
        if let Some(approved) = filter.approved {
            let verdict = match approved {
                true => Verdict::Approved,
                false => Verdict::Rejected,
            };
            conds.push(str_eq("verdict", verdict.as_str()));
        }
        let scope = filter.tenant.clone().map(Scope::Tenant).unwrap_or_default();
        conds.extend(scope.cond());
        let mut page: Page<Job> = self.page(conds, JOB_LIST_ORDER, limit, after).await?;
        page.items.retain(|job| scope.covers(job.tenant()));
        Ok(page)
    }

    /// Claims one job (the one a push message names): pending, or processing
    /// with an expired lease. Counts an attempt. Reserves nothing: see
    /// [`Store::claim_job_within`] for a claim that is about to pay.
    pub async fn claim_job(&self, id: &str, lease: &Lease) -> Result<Claim<Job>> {
        match self
            .claim_job_within(id, lease, &budget::Budget::FREE)
            .await?
        {
            budget::Budgeted::Within(claim) => Ok(claim),
            budget::Budgeted::Over(over) => Ok(Claim::Refused(
                over.job,
                ClaimRefusal::NotClaimable("over budget"),
            )),
        }
    }

    /// Claims the next pending job of `kind`: highest priority, then oldest.
    pub async fn claim_next_job(&self, kind: JobKind, lease: &Lease) -> Result<Option<Job>> {
        match self
            .claim_next_job_within(kind, lease, &budget::Budget::FREE)
            .await?
        {
            budget::Budgeted::Within(job) => Ok(job),
            budget::Budgeted::Over(_) => Ok(None),
        }
    }

    /// Pushes the holder's lease forward.
    pub async fn extend_job_lease(&self, id: &str, lease: &Lease) -> Result<Job> {
        self.update(id, |job: &mut Job, now| job.extend_lease(lease, now))
            .await
    }

    /// Records a submitted long-running operation: processing → generating,
    /// with the lease renewed for as long as the operation may take.
    pub async fn start_generating(
        &self,
        id: &str,
        lease: &Lease,
        operation_name: &str,
    ) -> Result<Job> {
        self.update(id, |job: &mut Job, now| {
            job.start_generating(lease, operation_name, now)
        })
        .await
    }

    /// The poller saw the operation of a generating job finish: completed.
    pub async fn finish_operation(&self, id: &str, outputs: Vec<GsUri>) -> Result<Job> {
        self.update(id, |job: &mut Job, now| {
            job.finish_operation(outputs.clone(), now)
        })
        .await
    }

    /// processing | generating → completed with its outputs.
    pub async fn complete_job(&self, id: &str, owner: &str, outputs: Vec<GsUri>) -> Result<Job> {
        self.update(id, |job: &mut Job, now| {
            job.complete(owner, outputs.clone(), now)
        })
        .await
    }

    /// Records one delivered output; the job becomes delivered with the last one.
    pub async fn record_delivery(&self, id: &str, delivery: DeliveredOutput) -> Result<Job> {
        self.update(id, |job: &mut Job, now| {
            job.record_delivery(delivery.clone(), now)
        })
        .await
    }

    /// Fails an unfinished job. With `owner`, only the lease holder may.
    pub async fn fail_job(&self, id: &str, owner: Option<&str>, error: JobError) -> Result<Job> {
        let retention = self.retention;
        self.update(id, |job: &mut Job, now| {
            job.fail(owner, error.clone(), now, &retention)
        })
        .await
    }

    /// Cancels an unfinished job.
    pub async fn cancel_job(&self, id: &str) -> Result<Job> {
        let retention = self.retention;
        self.update(id, |job: &mut Job, now| job.cancel(now, &retention))
            .await
    }

    /// The holder gives a job back after transient trouble: processing → pending.
    pub async fn release_job(&self, id: &str, owner: &str, error: Option<JobError>) -> Result<Job> {
        self.update(id, |job: &mut Job, now| {
            job.release(owner, error.clone(), now)
        })
        .await
    }

    /// An operator's retry of a failed or cancelled job, with fresh attempts.
    pub async fn retry_job(&self, id: &str, options: RetryOptions) -> Result<Job> {
        self.update(id, |job: &mut Job, now| job.retry(&options, now))
            .await
    }

    /// The lease holder gives the job back to wait (`reason`, one of
    /// [`crate::domain::values::WAIT_REASONS`]) without using up an attempt.
    pub async fn wait_job(
        &self,
        id: &str,
        owner: &str,
        reason: &str,
        error: JobError,
    ) -> Result<Job> {
        self.update(id, |job: &mut Job, now| {
            job.wait(owner, reason, error.clone(), now)
        })
        .await
    }

    /// The lease holder's paid request has an unknown outcome: the job waits
    /// for its output (video) or fails as `submit_unknown` (image).
    pub async fn outcome_unknown(&self, id: &str, owner: &str, what: &str) -> Result<Job> {
        let retention = self.retention;
        self.update(id, |job: &mut Job, now| {
            job.outcome_unknown(owner, what, now, &retention)
        })
        .await
    }

    /// Resets every leased job whose `field` is before `cutoff`.
    async fn reset_before(
        &self,
        field: &'static str,
        cutoff: Timestamp,
        force: bool,
    ) -> Result<ResetReport> {
        let conds = vec![
            status_in(&[JobStatus::Processing, JobStatus::Generating]),
            Cond::Lt(field, Scalar::Time(cutoff)),
        ];
        // Firestore wants a range filter's field first in the order.
        let order = [(field, Dir::Asc), ("id", Dir::Asc)];
        let mut report = ResetReport::default();
        for stored in self.sweep(Collection::Jobs, conds, &order).await? {
            let (mut job, version) = from_stored::<Job>(stored)?;
            let before = job.clone();
            if job.reset(force, Timestamp::now(), &self.retention).is_err() {
                continue;
            }
            // A conflict means the job moved on its own: it was not stuck.
            if self.put(&before, &job, &version, Vec::new()).await? {
                match job.status() {
                    JobStatus::Pending => report.requeued.push(job),
                    _ => report.failed.push(job),
                }
            }
        }
        Ok(report)
    }

    /// Puts back jobs that sat in processing or generating for longer than
    /// `older_than` without any update, whatever their lease says (the
    /// operator's reset of stuck jobs). Jobs with no attempt left fail.
    pub async fn reset_stuck_jobs(&self, older_than: Duration) -> Result<ResetReport> {
        let cutoff = Timestamp::now().minus(older_than);
        self.reset_before("updated_at", cutoff, true).await
    }

    /// Puts back jobs whose lease ran out; jobs with no attempt left fail.
    pub async fn expire_job_leases(&self) -> Result<ResetReport> {
        self.reset_before("lease_expires_at", Timestamp::now(), false)
            .await
    }

    /// Jobs per status and kind.
    pub async fn job_counts(&self) -> Result<JobCounts> {
        self.job_counts_in(&Scope::Everyone).await
    }

    /// Jobs of `scope` per status and kind.
    pub async fn job_counts_in(&self, scope: &Scope) -> Result<JobCounts> {
        let cells: Vec<(JobStatus, JobKind)> = JobStatus::ALL
            .iter()
            .flat_map(|s| JobKind::ALL.iter().map(move |k| (*s, *k)))
            .collect();
        let counting = &self.counting(scope).await?;
        let counts = futures::future::try_join_all(cells.iter().map(|(status, kind)| {
            let conds = vec![
                str_eq("status", status.as_str()),
                str_eq("kind", kind.as_str()),
            ];
            self.count_in(Collection::Jobs, conds, counting)
        }))
        .await?;
        Ok(JobCounts(cells.into_iter().zip(counts).collect()))
    }
}
