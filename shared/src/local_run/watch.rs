//! Watching a local run to its end: progress, the chained videos, the
//! final tally and the contact sheet.

use super::stages::{Handed, Promotions};
use super::{FAILURES_SHOWN, Progress, RunReport};
use crate::domain::job::Job;
use crate::domain::values::JobStatus;
use crate::error::Result;
use crate::store::Store;
use crate::store::tenants::Scope;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Writes the run's contact sheet into its folder.
pub(super) async fn write_sheet(store: &Store, ids: &[String], out_dir: &Path) -> Result<PathBuf> {
    let jobs = store.jobs_with_children(ids).await?;
    let title = format!(
        "asmr run {}",
        out_dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let sheet = crate::report::build::sheet(
        &title,
        &jobs,
        &[],
        out_dir,
        &crate::cost::PriceTable::list_prices(),
    );
    let path = out_dir.join(crate::report::build::REPORT_NAME);
    crate::report::build::write(&sheet, &path)?;
    Ok(path)
}

/// Where this run's jobs stand.
pub(super) async fn snapshot(store: &Store, ids: &[String]) -> Result<Progress> {
    Ok(progress_of(&store.jobs_with_children(ids).await?))
}

/// Where `jobs` stand.
fn progress_of(jobs: &[Job]) -> Progress {
    let mut progress = Progress {
        total: jobs.len() as u64,
        ..Progress::default()
    };
    for job in jobs {
        match job.status() {
            JobStatus::Completed => progress.generated += 1,
            JobStatus::Delivered => {
                progress.generated += 1;
                progress.delivered += 1;
            }
            JobStatus::Failed | JobStatus::Cancelled => {
                progress.generated += 1;
                progress.failed += 1;
            }
            JobStatus::Pending => {
                if let Some(reason) = job.waiting() {
                    let waiting = progress.waiting.entry(reason.to_string()).or_default();
                    waiting.jobs += 1;
                    if let Some(e) = job.error() {
                        waiting.error = Some(format!("{}: {}", e.code, e.message));
                    }
                }
            }
            JobStatus::Processing | JobStatus::Generating => {}
        }
    }
    progress
}

/// Reports progress until nothing is left to do: no job waiting or being
/// generated, no copy waiting or running, and every output of every
/// completed job handed to the downloader.
pub(super) async fn watch_until_done(
    store: &Store,
    ids: &[String],
    promotions: &Promotions,
    delivery: &Handed,
    progress: &(impl Fn(&Progress) + Send + Sync),
) -> Result<()> {
    use crate::domain::download::DownloadStatus;
    let mut quiet_since: Option<Instant> = None;
    loop {
        // One read of the run's jobs a tick, with the videos the promoter
        // made of them (a chained run's), which belong to the run.
        let (jobs, promoted) = promotions
            .read_settled(store, || store.jobs_with_children(ids))
            .await?;
        let now = progress_of(&jobs);
        progress(&now);
        let jobs = store.job_counts().await?;
        let downloads = store.download_counts().await?;
        // A job that waits for budget waits for the operator: it is no
        // work this run can do.
        let over_budget = store
            .waiting_counts()
            .await?
            .get(crate::domain::values::BUDGET_EXHAUSTED)
            .copied()
            .unwrap_or(0);
        let busy = jobs.status(JobStatus::Pending) > over_budget
            || [JobStatus::Processing, JobStatus::Generating]
                .iter()
                .any(|s| jobs.status(*s) > 0)
            || [DownloadStatus::Pending, DownloadStatus::Downloading]
                .iter()
                .any(|s| downloads.status(*s) > 0)
            || !delivery.caught_up.load(Ordering::SeqCst)
            || !promoted;
        // Every job of this run terminal is enough; otherwise the work must
        // have been quiet for a moment (a completed job whose copy failed
        // for good stays completed).
        if promoted && now.total == now.delivered + now.failed {
            return Ok(());
        }
        match (busy, quiet_since) {
            (true, _) => quiet_since = None,
            (false, None) => quiet_since = Some(Instant::now()),
            (false, Some(since)) if since.elapsed() >= Duration::from_secs(1) => return Ok(()),
            (false, Some(_)) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn tally(store: &Store, ids: &[String], report: &mut RunReport) -> Result<()> {
    // Why a copy gave up, by job: a completed job whose file could not be
    // delivered (a planted link, a full disk) says so instead of just not
    // being delivered.
    let mut undelivered: HashMap<String, String> = HashMap::new();
    let failed = Some(crate::domain::download::DownloadStatus::Failed);
    for download in store.all_downloads(failed, &Scope::Everyone).await? {
        if let Some(e) = download.error() {
            undelivered.insert(
                download.job_id().to_string(),
                format!("not delivered: {}: {}", e.code, e.message),
            );
        }
    }
    for job in store.jobs_with_children(ids).await? {
        *report.statuses.entry(job.status()).or_default() += 1;
        if job.waiting() == Some(crate::domain::values::BUDGET_EXHAUSTED) {
            report.over_budget += 1;
        }
        if job.status() == JobStatus::Pending
            && let Some(reason) = job.waiting()
        {
            *report.waiting.entry(reason.to_string()).or_default() += 1;
        }
        report.files += job.deliveries().len() as u64;
        let reason = if job.has_ended() && job.status() != JobStatus::Delivered {
            Some(job.error().map_or_else(
                || job.status().to_string(),
                |e| format!("{}: {}", e.code, e.message),
            ))
        } else if job.status() == JobStatus::Completed {
            undelivered.remove(job.id())
        } else {
            None
        };
        if let Some(reason) = reason
            && report.failures.len() < FAILURES_SHOWN
        {
            report.failures.push((job.id().to_string(), reason));
        }
    }
    Ok(())
}
