//! `asmr list` and `asmr show`: read-only views of jobs.

use super::Tenancy;
use crate::args::{ListArgs, ShowArgs};
use crate::out::{self, Table};
use anyhow::Result;
use shared::domain::job::Job;
use shared::store::tenants::Scope;
use shared::store::{JobFilter, Store};
use std::fmt::Write as _;

/// Width of the prompt column of `asmr list`.
const PROMPT_WIDTH: usize = 60;

pub async fn list(store: &Store, scope: &Scope, args: &ListArgs) -> Result<()> {
    let filter = JobFilter::default()
        .with_tenant(scope.tenant())
        .with_status(super::parsed(args.status.as_deref())?)
        .with_kind(super::parsed(args.kind.as_deref())?)
        .with_approved(args.approved.then_some(true));
    let (jobs, more) = store.first_jobs(&filter, args.limit as usize).await?;

    if args.json {
        out::json_pretty(&jobs)?;
    } else if !jobs.is_empty() {
        out::text(&jobs_table(&jobs))?;
    }
    let shown = out::count(jobs.len(), "job", "jobs");
    match (jobs.is_empty(), more) {
        (true, _) => out::note("no jobs match"),
        (false, true) => out::note(format_args!(
            "{shown}, newest first; there are more (raise --limit)"
        )),
        (false, false) => out::note(format_args!("{shown}, newest first")),
    }
    Ok(())
}

fn jobs_table(jobs: &[Job]) -> String {
    let mut table = Table::new(&[
        "id",
        "kind",
        "status",
        "attempts",
        "priority",
        "created (UTC)",
        "prompt",
    ])
    .right(&[3, 4]);
    for job in jobs {
        table.row(vec![
            job.id().to_string(),
            job.kind().to_string(),
            match &job.waiting() {
                Some(reason) => format!("{} ({reason})", job.status()),
                None if job.awaits_output() => format!("{} (awaiting output)", job.status()),
                None => job.status().to_string(),
            },
            format!("{}/{}", job.attempts(), job.max_attempts()),
            job.priority().to_string(),
            out::short_time(job.created_at()),
            out::one_line(job.prompt(), PROMPT_WIDTH),
        ]);
    }
    table.render()
}

pub async fn show(store: &Store, tenancy: &Tenancy, args: &ShowArgs) -> Result<()> {
    let job = tenancy.job(store, &args.id).await?;
    if args.json {
        out::json_pretty(&job)
    } else {
        Ok(out::text(&describe(&job))?)
    }
}

/// `key: value` lines for every field of a job; absent ones show as `-`.
fn describe(job: &Job) -> String {
    let mut text = String::new();
    let mut field = |key: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(text, "{key}: {value}");
    };
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());

    field("id", &job.id());
    field("kind", &job.kind());
    field("tenant", job.tenant());
    field("status", &job.status());
    // A multi-line prompt keeps its lines, indented under the key.
    field("prompt", &job.prompt().replace('\n', "\n  "));
    field("priority", &job.priority());
    field(
        "attempts",
        &format_args!("{}/{}", job.attempts(), job.max_attempts()),
    );
    field("dry_run", &job.dry_run());
    field("request_id", &or_dash(job.request_id().map(str::to_string)));
    field("created_at", &job.created_at());
    field("updated_at", &job.updated_at());
    field(
        "completed_at",
        &or_dash(job.completed_at().map(|t| t.to_string())),
    );
    field(
        "expire_at",
        &or_dash(job.expire_at().map(|t| t.to_string())),
    );
    if job.status().is_leased() || job.lease_owner().is_some() {
        field(
            "lease_owner",
            &or_dash(job.lease_owner().map(str::to_string)),
        );
        field(
            "lease_expires_at",
            &or_dash(job.lease_expires_at().map(|t| t.to_string())),
        );
    }
    field(
        "operation_name",
        &or_dash(job.operation_name().map(str::to_string)),
    );
    if let Some(waiting) = &job.waiting() {
        field("waiting", waiting);
    }
    if job.awaits_output() {
        field(
            "waiting",
            &"for the video of a submit whose answer was lost to appear under its prefix",
        );
    }
    if let Some(owner) = &job.calling() {
        field("paid request in flight", owner);
    }
    for held in job.held() {
        field(
            "held output",
            &format_args!(
                "{} ({} bytes, waiting for the bucket)",
                held.name, held.size
            ),
        );
    }
    if let Some(reservation) = &job.reservation() {
        field(
            "reserved",
            &format_args!(
                "{} (UTC {})",
                shared::cost::format_usd(reservation.micros),
                reservation.day
            ),
        );
    }

    // Every parameter that is set, by its document name.
    match serde_json::to_value(job.params()) {
        Ok(serde_json::Value::Object(params)) if !params.is_empty() => {
            for (key, value) in params {
                let value = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                field(&format!("params.{key}"), &value);
            }
        }
        _ => field("params", &"- (model defaults)"),
    }

    if job.outputs().is_empty() {
        field("outputs", &"-");
    }
    for (i, output) in job.outputs().iter().enumerate() {
        field(&format!("outputs[{i}]"), output);
    }
    if job.deliveries().is_empty() {
        field("deliveries", &"-");
    }
    for (i, delivery) in job.deliveries().iter().enumerate() {
        field(
            &format!("deliveries[{i}]"),
            &format_args!("{} -> {}", delivery.source, delivery.destination),
        );
    }
    match &job.error() {
        Some(error) => {
            let retry = if error.retryable {
                "retryable"
            } else {
                "not retryable"
            };
            field("error", &format_args!("{error} ({retry})"));
        }
        None => field("error", &"-"),
    }
    text
}
