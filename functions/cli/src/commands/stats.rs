//! `asmr stats`: jobs and downloads per status.

use crate::args::StatsArgs;
use crate::out::{self, Table};
use anyhow::Result;
use serde::Serialize;
use shared::domain::download::DownloadStatus;
use shared::domain::job::{JobKind, JobStatus};
use shared::store::{DownloadCounts, JobCounts, Store};

pub async fn run(store: &Store, args: &StatsArgs) -> Result<()> {
    let (jobs, downloads) = tokio::try_join!(store.job_counts(), store.download_counts())?;
    if args.json {
        out::json_line(&Stats::new(&jobs, &downloads))
    } else {
        let text = format!("{}\n{}", jobs_table(&jobs), downloads_table(&downloads));
        Ok(out::text(&text)?)
    }
}

/// The `--json` shape. Fields are declared in output order, since serde_json
/// keeps struct order (maps would come out sorted).
#[derive(Debug, PartialEq, Serialize)]
struct Stats {
    jobs: JobStats,
    downloads: DownloadStats,
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

impl Stats {
    fn new(jobs: &JobCounts, downloads: &DownloadCounts) -> Self {
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
            downloads: download_stats,
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
