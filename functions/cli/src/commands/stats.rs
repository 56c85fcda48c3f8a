//! `asmr stats`: jobs and downloads per status, and today's spending on
//! paid model calls against the budget.

use crate::args::StatsArgs;
use crate::out::{self, Table};
use anyhow::Result;
use serde::Serialize;
use shared::cost::{format_usd, usd};
use shared::domain::download::DownloadStatus;
use shared::domain::values::{BUDGET_EXHAUSTED, JobKind, JobStatus};
use shared::store::budget::{BudgetDay, budget_day_of};
use shared::store::{DownloadCounts, JobCounts, Store};
use shared::time::Timestamp;
use std::collections::BTreeMap;

pub async fn run(store: &Store, args: &StatsArgs) -> Result<()> {
    let today = budget_day_of(Timestamp::now());
    let (jobs, downloads, day, waiting) = tokio::try_join!(
        store.job_counts(),
        store.download_counts(),
        store.budget_day(&today),
        store.waiting_counts(),
    )?;
    if args.json {
        out::json_line(&Stats::new(&jobs, &downloads, &day, &waiting))
    } else {
        let text = format!(
            "{}\n{}\n{}\n{}",
            jobs_table(&jobs),
            waiting_table(&waiting),
            downloads_table(&downloads),
            budget_table(&day, waiting.get(BUDGET_EXHAUSTED).copied().unwrap_or(0))
        );
        Ok(out::text(&text)?)
    }
}

/// Pending jobs that wait, and why: none of these costs an attempt.
fn waiting_table(waiting: &BTreeMap<&'static str, u64>) -> String {
    let mut table = Table::new(&["pending, waiting on", "jobs"]).right(&[1]);
    for (reason, n) in waiting {
        table.row(vec![(*reason).to_string(), n.to_string()]);
    }
    table.render()
}

/// The `--json` shape. Fields are declared in output order, since serde_json
/// keeps struct order (maps would come out sorted).
#[derive(Debug, PartialEq, Serialize)]
struct Stats {
    jobs: JobStats,
    /// Pending jobs per wait reason (quota_exhausted, budget_exhausted...).
    waiting: BTreeMap<&'static str, u64>,
    downloads: DownloadStats,
    budget: BudgetStats,
}

#[derive(Debug, Default, PartialEq, Serialize)]
struct JobStats {
    pending: u64,
    processing: u64,
    generating: u64,
    completed: u64,
    delivered: u64,
    failed: u64,
    cancelled: u64,
    total: u64,
}

#[derive(Debug, Default, PartialEq, Serialize)]
struct DownloadStats {
    pending: u64,
    downloading: u64,
    completed: u64,
    failed: u64,
    total: u64,
}

/// Today's spending (UTC day), in US dollars; `budget_usd` is the budget the
/// generators last reserved under (`null`: no limit, or nothing reserved
/// today).
#[derive(Debug, PartialEq, Serialize)]
struct BudgetStats {
    day: String,
    reserved_usd: f64,
    spent_usd: f64,
    budget_usd: Option<f64>,
    waiting_jobs: u64,
}

impl BudgetStats {
    fn new(day: &BudgetDay, waiting: u64) -> Self {
        Self {
            day: day.day.clone(),
            reserved_usd: usd(day.reserved_micros),
            spent_usd: usd(day.spent_micros),
            budget_usd: day.limit_micros.map(usd),
            waiting_jobs: waiting,
        }
    }
}

impl Stats {
    fn new(
        jobs: &JobCounts,
        downloads: &DownloadCounts,
        day: &BudgetDay,
        waiting: &BTreeMap<&'static str, u64>,
    ) -> Self {
        let mut job_stats = JobStats::default();
        for status in JobStatus::ALL {
            // Exhaustive, so a status added in `shared` cannot go missing here.
            let slot = match status {
                JobStatus::Pending => &mut job_stats.pending,
                JobStatus::Processing => &mut job_stats.processing,
                JobStatus::Generating => &mut job_stats.generating,
                JobStatus::Completed => &mut job_stats.completed,
                JobStatus::Delivered => &mut job_stats.delivered,
                JobStatus::Failed => &mut job_stats.failed,
                JobStatus::Cancelled => &mut job_stats.cancelled,
            };
            *slot = jobs.status(status);
        }
        job_stats.total = jobs.total();

        let mut download_stats = DownloadStats::default();
        for status in DownloadStatus::ALL {
            let slot = match status {
                DownloadStatus::Pending => &mut download_stats.pending,
                DownloadStatus::Downloading => &mut download_stats.downloading,
                DownloadStatus::Completed => &mut download_stats.completed,
                DownloadStatus::Failed => &mut download_stats.failed,
            };
            *slot = downloads.status(status);
        }
        download_stats.total = downloads.total();

        Self {
            jobs: job_stats,
            waiting: waiting.clone(),
            downloads: download_stats,
            budget: BudgetStats::new(day, waiting.get(BUDGET_EXHAUSTED).copied().unwrap_or(0)),
        }
    }
}

fn jobs_table(counts: &JobCounts) -> String {
    let mut header = vec!["jobs"];
    header.extend(JobKind::ALL.map(JobKind::as_str));
    header.push("total");
    let numbers: Vec<usize> = (1..header.len()).collect();
    let mut table = Table::new(&header).right(&numbers);
    for status in JobStatus::ALL {
        let mut row = vec![status.to_string()];
        row.extend(JobKind::ALL.map(|kind| counts.get(status, kind).to_string()));
        row.push(counts.status(status).to_string());
        table.row(row);
    }
    let mut total = vec!["total".to_string()];
    total.extend(JobKind::ALL.map(|kind| counts.kind(kind).to_string()));
    total.push(counts.total().to_string());
    table.row(total);
    table.render()
}

fn downloads_table(counts: &DownloadCounts) -> String {
    let mut table = Table::new(&["downloads", "count"]).right(&[1]);
    for status in DownloadStatus::ALL {
        table.row(vec![status.to_string(), counts.status(status).to_string()]);
    }
    table.row(vec!["total".into(), counts.total().to_string()]);
    table.render()
}

fn budget_table(day: &BudgetDay, waiting: u64) -> String {
    let header = format!("budget (UTC {})", day.day);
    let mut table = Table::new(&[header.as_str(), "usd"]).right(&[1]);
    table.row(vec!["reserved".into(), format_usd(day.reserved_micros)]);
    table.row(vec!["spent".into(), format_usd(day.spent_micros)]);
    table.row(vec![
        "budget".into(),
        day.limit_micros
            .map_or_else(|| "no limit".into(), format_usd),
    ]);
    table.row(vec!["jobs waiting".into(), waiting.to_string()]);
    table.render()
}
