//! `asmr stats`: jobs and downloads per status, and today's spending on
//! paid model calls against the budget.

use crate::args::StatsArgs;
use crate::out::{self, Table};
use anyhow::Result;
use shared::cost::format_usd;
use shared::domain::download::DownloadStatus;
use shared::domain::values::{BUDGET_EXHAUSTED, JobKind, JobStatus};
use shared::store::activity::{Activity, ActivityCache};
use shared::store::budget::{BudgetDay, budget_day_of};
use shared::store::tenants::Scope;
use shared::store::{DownloadCounts, JobCounts, Store};
use shared::time::Timestamp;
use std::collections::BTreeMap;

pub async fn run(store: &Store, scope: &Scope, args: &StatsArgs) -> Result<()> {
    if args.json {
        // Every figure the live page shows, by the same names.
        let stats = store
            .stats_with_activity(scope, &mut ActivityCache::default())
            .await?;
        return out::json_line(&stats);
    }
    let today = budget_day_of(Timestamp::now());
    let (jobs, downloads, day, waiting, activity) = tokio::try_join!(
        store.job_counts_in(scope),
        store.download_counts_in(scope),
        store.budget_day_in(&today, scope),
        store.waiting_counts_in(scope),
        store.activity_in(scope),
    )?;
    let mut text = format!(
        "{}\n{}\n{}\n{}\n{}",
        jobs_table(&jobs),
        waiting_table(&waiting),
        downloads_table(&downloads),
        budget_table(&day, waiting.get(BUDGET_EXHAUSTED).copied().unwrap_or(0)),
        activity_table(&activity),
    );
    if *scope == Scope::Everyone {
        text.push('\n');
        text.push_str(&tenants_table(store).await?);
    }
    Ok(out::text(&text)?)
}

/// A row per tenant: its jobs, and today's spending against its own budget.
async fn tenants_table(store: &Store) -> Result<String> {
    let today = budget_day_of(Timestamp::now());
    let mut table = Table::new(&[
        "tenant",
        "pending",
        "waiting on budget",
        "total",
        "reserved",
        "spent",
        "budget/day",
    ])
    .right(&[1, 2, 3, 4, 5, 6]);
    for tenant in store.tenants().await? {
        let scope = Scope::Tenant(tenant.name().clone());
        let (jobs, day, waiting) = tokio::try_join!(
            store.job_counts_in(&scope),
            store.budget_day_in(&today, &scope),
            store.jobs_waiting_in(BUDGET_EXHAUSTED, &scope),
        )?;
        table.row(vec![
            tenant.name().to_string(),
            jobs.status(JobStatus::Pending).to_string(),
            waiting.to_string(),
            jobs.total().to_string(),
            format_usd(day.reserved_micros),
            format_usd(day.spent_micros),
            tenant
                .daily_budget_micros()
                .map_or_else(|| "-".into(), format_usd),
        ]);
    }
    Ok(table.render())
}

/// Pending jobs that wait, and why: none of these costs an attempt.
fn waiting_table(waiting: &BTreeMap<&'static str, u64>) -> String {
    let mut table = Table::new(&["pending, waiting on", "jobs"]).right(&[1]);
    for (reason, n) in waiting {
        table.row(vec![(*reason).to_string(), n.to_string()]);
    }
    table.render()
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

/// The last hour: what was made and delivered, how calls and copies went,
/// why jobs failed, and how long the oldest pending job has waited.
fn activity_table(activity: &Activity) -> String {
    let rate =
        |rate: Option<f64>| rate.map_or_else(|| "-".into(), |r| format!("{:.1} %", r * 100.0));
    let hour = &activity.last_hour;
    let mut table = Table::new(&["last hour", "count"]).right(&[1]);
    table.row(vec!["jobs created".into(), hour.created.to_string()]);
    table.row(vec!["jobs generated".into(), hour.generated.to_string()]);
    table.row(vec!["files delivered".into(), hour.delivered.to_string()]);
    table.row(vec!["jobs failed".into(), hour.failed.to_string()]);
    for (code, n) in &activity.failures {
        table.row(vec![format!("  {code}"), n.to_string()]);
    }
    table.row(vec![
        "copies failed".into(),
        hour.downloads_failed.to_string(),
    ]);
    table.row(vec![
        "model calls that made outputs".into(),
        rate(activity.model_call_success_rate),
    ]);
    table.row(vec![
        "copies that delivered".into(),
        rate(activity.download_completion_rate),
    ]);
    for (model, calls) in &activity.calls_last_minute {
        table.row(vec![
            format!("calls in the last minute, {model}"),
            calls.to_string(),
        ]);
    }
    table.row(vec![
        "oldest pending job".into(),
        activity
            .oldest_pending_age_s
            .map_or_else(|| "-".into(), |s| format!("{s} s")),
    ]);
    table.render()
}
