//! What the live page costs in store reads: a store shaped like an hour at
//! 10 jobs a second (36,000 jobs and their copies), read as the page's feed
//! reads it, once a second while someone watches. Reads are counted as
//! Firestore bills them (a document read or returned is one; a count is one
//! per 1000 index entries it matches, at least one), from what each call
//! returns, so the count is the same on any adapter: the embedded one holds
//! the store here, since the Firestore emulator counts by scanning every
//! document and takes longer than its own 30 s request limit over 36,000.
//! The page writes nothing.

use crate::table::Report;
use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use shared::domain::destination::Target;
use shared::domain::download::{Download, FileType, NewDownload};
use shared::domain::job::{Job, NewJob};
use shared::domain::values::JobKind;
use shared::store::Store;
use shared::store::activity::ActivityCache;
use shared::store::backend::{Backend, Collection, Doc, Write};
use shared::store::embedded::EmbeddedBackend;
use shared::store::tenants::Scope;
use shared::time::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use tests::counting::Counting;

const GROUP: &str = "Live page store reads";
/// An hour at 10 jobs a second.
const JOBS: usize = 36_000;
const PER_SECOND: usize = 10;
/// One in a hundred fails; the newest ten seconds' jobs are still pending.
const FAIL_EVERY: usize = 100;
const PENDING: usize = 10 * PER_SECOND;
/// Polls measured once the feed is warm.
const WARM_POLLS: u64 = 10;

fn doc_of(value: Value) -> Result<Doc> {
    match value {
        Value::Object(doc) => Ok(doc),
        other => anyhow::bail!("a record serialized to {other}"),
    }
}

/// The job created `n`-th of the hour, and the copy of its file when it
/// was delivered.
fn records(n: usize, start: Timestamp) -> Result<(Doc, Option<Doc>)> {
    let created = start.plus(Duration::from_millis((n * 1000 / PER_SECOND) as u64));
    let done = created.plus(Duration::from_secs(8));
    let job = Job::new(NewJob::new(format!("seeded {n}"), JobKind::Image), created);
    let id = job.id().to_string();
    let mut doc = doc_of(serde_json::to_value(&job)?)?;
    let status = if n >= JOBS - PENDING {
        "pending"
    } else if n.is_multiple_of(FAIL_EVERY) {
        doc.insert("updated_at".into(), json!(done.to_string()));
        doc.insert(
            "error".into(),
            json!({"code": "filtered", "message": "seeded", "retryable": false}),
        );
        "failed"
    } else {
        doc.insert("updated_at".into(), json!(done.to_string()));
        doc.insert("completed_at".into(), json!(done.to_string()));
        "delivered"
    };
    doc.insert("status".into(), json!(status));
    if status != "pending" {
        // What a generator's claim records.
        doc.insert("model".into(), json!(shared::vertex::DEFAULT_IMAGE_MODEL));
    }
    if status != "delivered" {
        return Ok((doc, None));
    }
    let copy = Download::new(
        NewDownload {
            job_id: id.clone(),
            bucket: "out".into(),
            object: format!("images/{id}/0.png"),
            generation: Some(1),
            destination: Target::File(format!("/archive/images/{id}/0.png").into()),
            file_type: FileType::Image,
            priority: 10,
            size: Some(1_500_000),
            crc32c: None,
            tenant: Default::default(),
        },
        done,
    );
    let mut copy = doc_of(serde_json::to_value(&copy)?)?;
    copy.insert("status".into(), json!("completed"));
    copy.insert("completed_at".into(), json!(done.to_string()));
    Ok((doc, Some(copy)))
}

async fn seed(backend: &dyn Backend) -> Result<()> {
    let start = Timestamp::now().minus(Duration::from_secs(3600));
    let mut writes = Vec::new();
    for n in 0..JOBS {
        let (job, copy) = records(n, start)?;
        for (collection, doc) in [(Collection::Jobs, Some(job)), (Collection::Downloads, copy)] {
            let Some(doc) = doc else { continue };
            let id = doc["id"]
                .as_str()
                .context("a record without id")?
                .to_string();
            writes.push(Write::Create {
                collection,
                id,
                doc,
            });
        }
        if writes.len() >= 400 || n == JOBS - 1 {
            anyhow::ensure!(
                backend.commit(&std::mem::take(&mut writes)).await?,
                "a seeding commit was refused"
            );
        }
    }
    Ok(())
}

pub async fn run(report: &mut Report) -> Result<()> {
    let backend = Arc::new(Counting::new(Arc::new(EmbeddedBackend::in_memory()?)));
    seed(backend.as_ref()).await?;
    let store = Store::new(backend.clone());
    let mut cache = ActivityCache::default();

    let before = backend.trips();
    let first = store
        .stats_with_activity(&Scope::Everyone, &mut cache)
        .await?;
    let cold = backend.trips().since(&before);
    let activity = first.activity.context("no activity read")?;
    anyhow::ensure!(
        activity.last_hour.created as usize >= JOBS - PER_SECOND * 60,
        "the seeded hour was not counted: {:?}",
        activity.last_hour
    );

    let before = backend.trips();
    for _ in 0..WARM_POLLS {
        store
            .stats_with_activity(&Scope::Everyone, &mut cache)
            .await?;
    }
    let warm = backend.trips().since(&before);
    let per_poll = warm.billed_reads / WARM_POLLS;
    let queries = warm.queries / WARM_POLLS;
    report.figure(
        GROUP,
        format!("first read of the page's figures, {JOBS} jobs in the last hour"),
        format!(
            "{} reads ({} queries and counts)",
            cold.billed_reads, cold.queries
        ),
    );
    report.figure(
        GROUP,
        "each later read (once a second while watched)".to_string(),
        format!("{per_poll} reads ({queries} queries and counts)"),
    );
    report.figure(
        GROUP,
        "per minute, per process with the page open, at 10 jobs/s".to_string(),
        format!("{} reads, 0 writes", per_poll * 60),
    );
    report.note(format!(
        "{GROUP}: the counts of jobs and copies per status match every record kept, so a read costs \
         about one more read per 1000 records of a status; the hour's series cost the minute under \
         way and the one before (the others are read once); failures are read as they come."
    ));
    Ok(())
}
