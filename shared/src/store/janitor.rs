//! Store queries of the janitor: pending jobs that nobody has touched for a
//! while, and the stamp that keeps their re-dispatch to once per window.

use super::backend::{Collection, Cond, Dir, Scalar};
use super::{Deleted, MAX_PAGE, Round, Store, str_eq, to_doc, until_done};
use crate::domain::job::Job;
use crate::domain::values::JobStatus;
use crate::error::Result;
use crate::time::Timestamp;

impl Store {
    /// Pending jobs whose `updated_at` is before `cutoff`, the longest idle
    /// first, at most [`MAX_PAGE`] of them: a run takes a bounded share of a
    /// large backlog, and the jobs it stamps go to the back of the line.
    pub async fn pending_jobs_idle_since(&self, cutoff: Timestamp) -> Result<Vec<Job>> {
        let conds = vec![
            str_eq("status", JobStatus::Pending.as_str()),
            Cond::Lt("updated_at", Scalar::Time(cutoff)),
        ];
        // Firestore wants a range filter's field first in the order.
        let order = [("updated_at", Dir::Asc), ("id", Dir::Asc)];
        Ok(self.page::<Job>(conds, &order, MAX_PAGE, None).await?.items)
    }

    /// Stamps a job that is still pending and untouched since `cutoff`
    /// (`updated_at` set to now, compare-and-set), so that whoever stamps it
    /// is the only one to dispatch it again in this window. `None` when the
    /// job moved on, was stamped by someone else, or is gone.
    pub async fn stamp_idle_pending_job(&self, id: &str, cutoff: Timestamp) -> Result<Option<Job>> {
        until_done("job", id, || async move {
            let Some((mut job, version)) = self.load::<Job>(id).await? else {
                return Ok(Round::Done(None));
            };
            if job.updated_at() >= cutoff || job.stamp_dispatched(Timestamp::now()).is_err() {
                return Ok(Round::Done(None));
            }
            Ok(
                if self
                    .backend
                    .replace(Collection::Jobs, id, &version, &to_doc(&job)?)
                    .await?
                {
                    Round::Done(Some(job))
                } else {
                    Round::Lost
                },
            )
        })
        .await
    }

    /// Deletes every record whose `expire_at` has passed. A record
    /// changed since it was read (retried, say) is left alone.
    pub async fn delete_expired(&self) -> Result<Deleted> {
        let now = Timestamp::now();
        let order = [("expire_at", Dir::Asc), ("id", Dir::Asc)];
        let mut deleted = Deleted::default();
        // Outbox entries have no expiry: each stays until it is published;
        // tenants stay until an operator removes them.
        for collection in Collection::ALL
            .into_iter()
            .filter(|c| !matches!(c, Collection::Outbox | Collection::Tenants))
        {
            let conds = vec![Cond::Lt("expire_at", Scalar::Time(now))];
            for stored in self.sweep(collection, conds, &order).await? {
                if self
                    .backend
                    .delete(collection, &stored.id, &stored.version)
                    .await?
                {
                    match collection {
                        Collection::Jobs => deleted.jobs += 1,
                        Collection::Downloads => deleted.downloads += 1,
                        Collection::Rejected => deleted.rejected += 1,
                        Collection::Budgets => deleted.budgets += 1,
                        Collection::Held => deleted.held += 1,
                        Collection::Charges => deleted.charges += 1,
                        Collection::Limits => deleted.limits += 1,
                        Collection::Webhooks => deleted.webhooks += 1,
                        Collection::Outbox | Collection::Tenants => {}
                    }
                }
            }
        }
        Ok(deleted)
    }
}
