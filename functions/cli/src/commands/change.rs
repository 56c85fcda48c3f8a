//! `asmr reset`, `asmr retry` and `asmr cancel`: an operator moving jobs.
//! The state machine in `shared` decides what is allowed; these commands
//! report what it did, ids on stdout.

use super::{IN_FLIGHT, Tenancy};
use crate::args::{ResetArgs, RetryArgs};
use crate::out;
use anyhow::{Result, bail};
use futures::stream::{self, StreamExt};
use shared::bus::{Bus, Topics};
use shared::domain::job::Job;
use shared::domain::values::{JobStatus, RetryOptions};
use shared::error::Error;
use shared::store::{JobFilter, Store};

/// Where requeued jobs are announced: their kind's topic on Firestore, so
/// that a generator takes them now rather than when the janitor next looks;
/// nowhere on the embedded store, where `asmr run` and drains find them.
pub struct Queue<'a> {
    pub bus: &'a dyn Bus,
    pub topics: &'a Topics,
}

impl Queue<'_> {
    /// Publishes the job message of a requeued job. A failure is reported,
    /// not fatal: the job is pending, and the janitor dispatches pending
    /// jobs that sat idle.
    pub(super) async fn dispatch(&self, job: &Job) {
        if let Err(e) = shared::bus::publish_job(self.bus, self.topics, job, "cli").await {
            out::note(format_args!(
                "warning: job {} is pending but was not queued ({e}); the janitor will dispatch it",
                job.id()
            ));
        }
    }
}

pub async fn reset(store: &Store, queue: &Queue<'_>, args: &ResetArgs) -> Result<()> {
    let older_than = humantime::format_duration(args.older_than);
    let report = store.reset_stuck_jobs(args.older_than).await?;
    for job in &report.requeued {
        out::line(job.id())?;
        out::note(format_args!(
            "requeued {} job {} (attempt {} of {} used)",
            job.kind(),
            job.id(),
            job.attempts(),
            job.max_attempts()
        ));
        queue.dispatch(job).await;
    }
    for job in &report.failed {
        out::line(job.id())?;
        let reason = job
            .error()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        out::note(format_args!(
            "failed {} job {}: {reason}",
            job.kind(),
            job.id()
        ));
    }
    if report.requeued.is_empty() && report.failed.is_empty() {
        out::note(format_args!(
            "no job stuck in processing or generating for more than {older_than}"
        ));
    } else {
        out::note(format_args!(
            "requeued {}, failed {} (stuck for more than {older_than})",
            report.requeued.len(),
            report.failed.len()
        ));
    }
    Ok(())
}

pub async fn retry(
    store: &Store,
    queue: &Queue<'_>,
    tenancy: &Tenancy,
    args: &RetryArgs,
) -> Result<()> {
    let options = RetryOptions {
        include_filtered: args.include_filtered,
        resubmit: args.resubmit,
    };
    match (&args.id, args.failed) {
        (Some(id), false) => {
            tenancy.job(store, id).await?;
            let job = store.retry_job(id, options).await?;
            out::line(job.id())?;
            out::note(format_args!(
                "requeued {} job {}: {}",
                job.kind(),
                job.id(),
                what_the_retry_does(&job)
            ));
            queue.dispatch(&job).await;
            Ok(())
        }
        (None, true) => retry_failed(store, queue, tenancy, options).await,
        // clap's `which` group makes this unreachable; say so rather than panic.
        _ => bail!("give exactly one of a job id and --failed"),
    }
}

/// What the next attempt of a requeued job will do, and whether it pays.
fn what_the_retry_does(job: &Job) -> String {
    if let Some(operation) = &job.operation_name() {
        return format!("its operation {operation} is watched again (nothing new is paid)");
    }
    if !job.held().is_empty() {
        return "the outputs it holds are written (nothing new is paid)".into();
    }
    if job.dry_run() {
        return "a dry run: placeholders, nothing paid".into();
    }
    let model = shared::cost::model_of(job);
    let estimate = shared::cost::job_cost(job, &shared::cost::PriceTable::list_prices());
    format!(
        "a new paid request goes to {model} (about {} at list price)",
        shared::cost::format_usd(estimate.micros)
    )
}

/// Requeues every failed job. Refusals (filtered jobs, jobs that moved on
/// meanwhile) are reported and counted; a store error ends the command with
/// exit 1 after the summary.
async fn retry_failed(
    store: &Store,
    queue: &Queue<'_>,
    tenancy: &Tenancy,
    options: RetryOptions,
) -> Result<()> {
    // Collect the ids first: requeued jobs leave the listing while we page.
    let filter = JobFilter::status(JobStatus::Failed).with_tenant(Some(tenancy.tenant.clone()));
    let failed = store.all_jobs(&filter).await?;
    let ids: Vec<String> = failed.iter().map(|job| job.id().to_string()).collect();
    if ids.is_empty() {
        out::note("no failed jobs");
        return Ok(());
    }

    let (mut requeued, mut refused, mut errors, mut filtered, mut unknown) = (0, 0, 0, 0, 0);
    // `buffered` keeps the results in id order.
    let mut results = stream::iter(&ids)
        .map(|id| async move { (id, store.retry_job(id, options).await) })
        .buffered(IN_FLIGHT);
    while let Some((id, outcome)) = results.next().await {
        match outcome {
            Ok(job) => {
                requeued += 1;
                out::line(job.id())?;
                queue.dispatch(&job).await;
            }
            Err(Error::Transition { reason, .. }) => {
                refused += 1;
                match reason {
                    shared::domain::TransitionError::Filtered => filtered += 1,
                    shared::domain::TransitionError::OutcomeUnknown => unknown += 1,
                    _ => {}
                }
                out::note(format_args!("refused job {id}: {reason}"));
            }
            Err(Error::NotFound { .. }) => {
                refused += 1;
                out::note(format_args!("refused job {id}: it no longer exists"));
            }
            Err(err) => {
                errors += 1;
                out::note(format_args!("job {id}: {err}"));
            }
        }
    }

    let mut summary = format!(
        "requeued {} of {}",
        requeued,
        out::count(ids.len(), "failed job", "failed jobs")
    );
    if refused > 0 {
        summary.push_str(&format!(", refused {refused}"));
        if filtered > 0 && !options.include_filtered {
            summary.push_str(&format!(
                " ({filtered} stopped by the safety filters: add --include-filtered to retry those too)"
            ));
        }
        if unknown > 0 && !options.resubmit {
            summary.push_str(&format!(
                " ({unknown} whose last paid request may have been billed: add --resubmit to pay for those again)"
            ));
        }
    }
    out::note(summary);
    if errors > 0 {
        bail!(
            "{} could not be retried because of store errors",
            out::count(errors, "job", "jobs")
        );
    }
    Ok(())
}

pub async fn cancel(store: &Store, tenancy: &Tenancy, id: &str) -> Result<()> {
    tenancy.job(store, id).await?;
    let job = store.cancel_job(id).await?;
    out::line(job.id())?;
    out::note(format_args!("cancelled {} job {}", job.kind(), job.id()));
    Ok(())
}
