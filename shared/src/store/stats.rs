//! The figures of a deployment at a glance: jobs per status (and per kind),
//! pending jobs per wait reason, downloads per status, rejected requests
//! kept, and today's spending against the budget. `GET /v1/stats` and
//! `asmr stats --json` both serialize this one type.

use super::activity::{Activity, ActivityCache};
use super::backend::{Collection, Cond, Dir, Scalar};
use super::budget::{BudgetDay, budget_day_of};
use super::tenants::Scope;
use super::{DownloadCounts, JobCounts, Store};
use crate::cost::usd;
use crate::domain::download::DownloadStatus;
use crate::domain::job::Job;
use crate::domain::values::{BUDGET_EXHAUSTED, JobKind, JobStatus};
use crate::error::Result;
use crate::time::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;

/// Most models [`Store::models_in_use`] lists.
pub const MAX_MODELS: usize = 20;

/// Everything `asmr stats` shows. Fields are declared in output order, as
/// serde_json keeps struct order; a part a face does not show is `None`
/// and left out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// Jobs per status, both kinds.
    pub jobs: JobStats,
    /// Pending jobs per wait reason (quota_exhausted, budget_exhausted...).
    pub waiting: BTreeMap<&'static str, u64>,
    /// Jobs per status, per kind (`image`, `video`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs_by_kind: Option<BTreeMap<&'static str, JobStats>>,
    /// Downloads per status.
    pub downloads: DownloadStats,
    /// Rejected requests kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<u64>,
    /// Today's spending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStats>,
    /// Jobs per status for each tenant (a view of everyone's records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs_by_tenant: Option<BTreeMap<String, JobStats>>,
    /// Jobs per status for each model a generator ran them on (recorded
    /// when it takes a job; a job no generator took yet has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs_by_model: Option<BTreeMap<String, JobStats>>,
    /// The last hour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

/// Jobs per status and in all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobStats {
    pub pending: u64,
    pub processing: u64,
    pub generating: u64,
    pub completed: u64,
    pub delivered: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub total: u64,
}

/// Downloads per status and in all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DownloadStats {
    pub pending: u64,
    pub downloading: u64,
    pub completed: u64,
    pub failed: u64,
    pub total: u64,
}

/// Today's spending (UTC day), in US dollars; `budget_usd` is the budget
/// the generators last reserved under (`null`: no limit, or nothing
/// reserved today).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetStats {
    pub day: String,
    pub reserved_usd: f64,
    pub spent_usd: f64,
    pub budget_usd: Option<f64>,
    pub waiting_jobs: u64,
}

impl JobStats {
    /// The row of `kind` (both kinds when `None`).
    fn of(counts: &JobCounts, kind: Option<JobKind>) -> Self {
        let count = |status| match kind {
            Some(kind) => counts.get(status, kind),
            None => counts.status(status),
        };
        let mut stats = Self::default();
        for status in JobStatus::ALL {
            *stats.slot(status) = count(status);
        }
        stats.total = kind.map_or_else(|| counts.total(), |kind| counts.kind(kind));
        stats
    }
}

impl JobStats {
    /// The count of `status`.
    fn slot(&mut self, status: JobStatus) -> &mut u64 {
        // Exhaustive, so a status added later cannot go missing here.
        match status {
            JobStatus::Pending => &mut self.pending,
            JobStatus::Processing => &mut self.processing,
            JobStatus::Generating => &mut self.generating,
            JobStatus::Completed => &mut self.completed,
            JobStatus::Delivered => &mut self.delivered,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Cancelled => &mut self.cancelled,
        }
    }

    /// These counts less `other`'s, status by status.
    fn less(self, other: &JobStats) -> JobStats {
        JobStats {
            pending: self.pending.saturating_sub(other.pending),
            processing: self.processing.saturating_sub(other.processing),
            generating: self.generating.saturating_sub(other.generating),
            completed: self.completed.saturating_sub(other.completed),
            delivered: self.delivered.saturating_sub(other.delivered),
            failed: self.failed.saturating_sub(other.failed),
            cancelled: self.cancelled.saturating_sub(other.cancelled),
            total: self.total.saturating_sub(other.total),
        }
    }
}

impl DownloadStats {
    fn of(counts: &DownloadCounts) -> Self {
        let mut stats = Self::default();
        for status in DownloadStatus::ALL {
            let slot = match status {
                DownloadStatus::Pending => &mut stats.pending,
                DownloadStatus::Downloading => &mut stats.downloading,
                DownloadStatus::Completed => &mut stats.completed,
                DownloadStatus::Failed => &mut stats.failed,
            };
            *slot = counts.status(status);
        }
        stats.total = counts.total();
        stats
    }
}

impl BudgetStats {
    fn of(day: &BudgetDay, waiting: &BTreeMap<&'static str, u64>) -> Self {
        Self {
            day: day.day.clone(),
            reserved_usd: usd(day.reserved_micros),
            spent_usd: usd(day.spent_micros),
            budget_usd: day.limit_micros.map(usd),
            waiting_jobs: waiting.get(BUDGET_EXHAUSTED).copied().unwrap_or(0),
        }
    }
}

impl Stats {
    /// The figures of these counts.
    pub fn of(
        jobs: &JobCounts,
        waiting: BTreeMap<&'static str, u64>,
        downloads: &DownloadCounts,
        rejected: u64,
        day: &BudgetDay,
    ) -> Self {
        let by_kind = JobKind::ALL
            .iter()
            .map(|kind| (kind.as_str(), JobStats::of(jobs, Some(*kind))))
            .collect();
        Self {
            jobs: JobStats::of(jobs, None),
            budget: Some(BudgetStats::of(day, &waiting)),
            waiting,
            jobs_by_kind: Some(by_kind),
            downloads: DownloadStats::of(downloads),
            rejected: Some(rejected),
            jobs_by_tenant: None,
            jobs_by_model: None,
            activity: None,
        }
    }
}

impl Store {
    /// Every figure, read at once.
    pub async fn stats(&self) -> Result<Stats> {
        self.stats_in(&Scope::Everyone).await
    }

    /// Every figure of `scope`, read at once.
    pub async fn stats_in(&self, scope: &Scope) -> Result<Stats> {
        let today = budget_day_of(Timestamp::now());
        let (jobs, waiting, downloads, rejected, day) = tokio::try_join!(
            self.job_counts_in(scope),
            self.waiting_counts_in(scope),
            self.download_counts_in(scope),
            self.count_rejected_in(scope),
            self.budget_day_in(&today, scope),
        )?;
        Ok(Stats::of(&jobs, waiting, &downloads, rejected, &day))
    }

    /// Jobs per status for each tenant on record, and `default` for jobs of
    /// no named tenant: what is left of `everyone`'s once the named
    /// tenants' are taken out (each job has one tenant), so the default
    /// row costs no read.
    pub async fn jobs_by_tenant(&self, everyone: &JobStats) -> Result<BTreeMap<String, JobStats>> {
        let names: Vec<_> = self
            .tenants()
            .await?
            .iter()
            .map(|t| t.name().clone())
            .filter(|name| !name.is_default())
            .collect();
        let rows = futures::future::try_join_all(names.iter().map(|name| async move {
            let counts = self.job_counts_in(&Scope::Tenant(name.clone())).await?;
            Ok::<_, crate::error::Error>((name.to_string(), JobStats::of(&counts, None)))
        }))
        .await?;
        let rest = rows
            .iter()
            .fold(everyone.clone(), |rest, (_, row)| rest.less(row));
        let mut by_tenant: BTreeMap<String, JobStats> = rows.into_iter().collect();
        by_tenant.insert(
            crate::domain::tenant::TenantName::default().to_string(),
            rest,
        );
        Ok(by_tenant)
    }

    /// The models jobs were run on, each named once, found a model at a
    /// time in the order of the `model` field (a query of one record per
    /// model, however many jobs each has), at most [`MAX_MODELS`].
    pub async fn models_in_use(&self) -> Result<Vec<String>> {
        let order = [("model", Dir::Asc), ("id", Dir::Asc)];
        let mut models: Vec<String> = Vec::new();
        while models.len() < MAX_MODELS {
            // The least name after the last one found.
            let after = models
                .last()
                .map_or_else(String::new, |m| format!("{m}\u{0}"));
            let conds = vec![Cond::Ge("model", Scalar::Str(after))];
            let page = self.page::<Job>(conds, &order, 1, None).await?;
            match page.items.first().and_then(|job| job.model()) {
                Some(model) => models.push(model.to_string()),
                None => break,
            }
        }
        Ok(models)
    }

    /// Jobs of `scope` per status for each of `models` (those in use; a
    /// model none of whose jobs are in scope left out).
    pub async fn jobs_by_model(
        &self,
        scope: &Scope,
        models: &[String],
    ) -> Result<BTreeMap<String, JobStats>> {
        let counting = &self.counting(scope).await?;
        let rows = futures::future::try_join_all(models.iter().map(|model| async move {
            let counts = futures::future::try_join_all(JobStatus::ALL.iter().map(|status| {
                let conds = vec![
                    super::str_eq("status", status.as_str()),
                    super::str_eq("model", model),
                ];
                self.count_in(Collection::Jobs, conds, counting)
            }))
            .await?;
            let mut row = JobStats::default();
            for (status, n) in JobStatus::ALL.iter().zip(counts) {
                *row.slot(*status) = n;
                row.total += n;
            }
            Ok::<_, crate::error::Error>((model.clone(), row))
        }))
        .await?;
        Ok(rows.into_iter().filter(|(_, row)| row.total > 0).collect())
    }

    /// Every figure of `scope`, with the last hour's activity and, in a
    /// view of everyone's records, jobs per tenant: what `asmr stats` and
    /// the live page show. `cache` keeps what need not be read again.
    pub async fn stats_with_activity(
        &self,
        scope: &Scope,
        cache: &mut ActivityCache,
    ) -> Result<Stats> {
        // Found once, for the jobs per model and the calls per model.
        let models = self.models_in_use().await?;
        let (mut stats, activity, by_model) = tokio::try_join!(
            self.stats_in(scope),
            self.activity_cached(scope, Timestamp::now(), &models, cache),
            self.jobs_by_model(scope, &models),
        )?;
        stats.jobs_by_model = Some(by_model);
        if *scope == Scope::Everyone {
            stats.jobs_by_tenant = Some(self.jobs_by_tenant(&stats.jobs).await?);
        }
        stats.activity = Some(activity);
        Ok(stats)
    }
}
