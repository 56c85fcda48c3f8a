//! Store queries of the janitor: pending jobs that nobody has touched for a
//! while, and the stamp that keeps their re-dispatch to once per window.

use super::backend::{Collection, Cond, Dir, Scalar};
use super::{CAS_ROUNDS, MAX_PAGE, Store, str_eq, to_doc};
use crate::domain::job::{Job, JobStatus};
use crate::error::{Error, Result};
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
        for _ in 0..CAS_ROUNDS {
            let Some((mut job, version)) = self.load::<Job>(id).await? else {
                return Ok(None);
            };
            if job.status != JobStatus::Pending || job.updated_at >= cutoff {
                return Ok(None);
            }
            job.updated_at = Timestamp::now();
            if self
                .backend
                .replace(Collection::Jobs, id, &version, &to_doc(&job)?)
                .await?
            {
                return Ok(Some(job));
            }
        }
        Err(Error::Contention {
            kind: "job",
            id: id.to_string(),
        })
    }
}
