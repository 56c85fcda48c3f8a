//! The manifest written again from the store: for a destination whose
//! manifest was lost, damaged or started after files were delivered.

use super::{MANIFEST_NAME, ManifestLine};
use crate::beneath::{Access, Open, Root};
use crate::domain::destination::Destination;
use crate::domain::download::{Download, DownloadStatus};
use crate::domain::job::Job;
use crate::domain::values::DeliveredOutput;
use crate::error::Result;
use crate::store::tenants::Scope;
use crate::store::{JobFilter, Store};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What [`rebuild`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// The manifest written.
    pub path: PathBuf,
    /// Jobs with at least one delivery.
    pub jobs: u64,
    /// Lines written.
    pub lines: u64,
    /// Deliveries left out, each with the reason: a delivery to another
    /// destination, or one whose download record is gone (past retention).
    pub skipped: Vec<String>,
}

/// Writes `out/manifest.jsonl` from the store: one line per delivered file
/// of every job of `scope` (a tenant's destination holds its files only),
/// in delivery order (the time each download completed),
/// paths relative to the root of `destination`. The file is written beside
/// its final name and renamed, so a reader sees the old manifest or the new
/// one. Size and CRC32C come from each file's download record, and
/// `delivered_at` is when that record completed (a few milliseconds after
/// the appended line's time). Every line is held in memory until written.
pub async fn rebuild(
    store: &Store,
    scope: &Scope,
    destination: &Destination,
    out: &Path,
) -> Result<RebuildReport> {
    let downloads = completed_downloads(store, scope).await?;
    let mut report = RebuildReport {
        path: out.join(MANIFEST_NAME),
        ..RebuildReport::default()
    };
    let mut lines = Vec::new();

    let jobs = store
        .all_jobs(&JobFilter::default().with_tenant(scope.tenant()))
        .await?;
    for job in jobs.iter().filter(|j| !j.deliveries().is_empty()) {
        report.jobs += 1;
        for delivery in job.deliveries() {
            match line_of(job, delivery, destination, &downloads) {
                Ok(line) => lines.push(line),
                Err(why) => report.skipped.push(why),
            }
        }
    }
    lines.sort_by_key(|line| line.delivered_at);
    report.lines = lines.len() as u64;
    write_replacing(&report.path, &lines).await?;
    Ok(report)
}

/// Every completed download, by its source (`gs://bucket/name`); of several
/// generations of one object, the one completed last.
async fn completed_downloads(store: &Store, scope: &Scope) -> Result<HashMap<String, Download>> {
    let mut by_source: HashMap<String, Download> = HashMap::new();
    for download in store
        .all_downloads(Some(DownloadStatus::Completed), scope)
        .await?
    {
        let source = download.source().to_string();
        match by_source.get(&source) {
            Some(known) if known.completed_at() >= download.completed_at() => {}
            _ => {
                by_source.insert(source, download);
            }
        }
    }
    Ok(by_source)
}

/// The line of one delivery, or why it has none.
fn line_of(
    job: &Job,
    delivery: &DeliveredOutput,
    destination: &Destination,
    downloads: &HashMap<String, Download>,
) -> std::result::Result<ManifestLine, String> {
    let path = destination.relative(&delivery.destination).ok_or_else(|| {
        format!(
            "{} is not under {destination} (job {})",
            delivery.destination,
            job.id()
        )
    })?;
    let download = downloads.get(&delivery.source.to_string()).ok_or_else(|| {
        format!(
            "{} (job {}) has no completed download record left",
            delivery.source,
            job.id()
        )
    })?;
    let crc32c = download
        .crc32c()
        .ok_or_else(|| format!("the download of {} records no CRC32C", delivery.source))?;
    let bytes = download.size().unwrap_or(download.bytes_copied());
    let delivered_at = download.completed_at().unwrap_or(download.updated_at());
    Ok(ManifestLine::new(job, path, bytes, crc32c, delivered_at))
}

/// Writes `lines` to a temporary file beside `path`, syncs it and renames
/// it over `path`: beneath `path`'s directory without following a link
/// ([`crate::beneath`]), so a planted `manifest.jsonl` link is replaced,
/// never written through.
async fn write_replacing(path: &Path, lines: &[ManifestLine]) -> Result<()> {
    let context = format!("writing {}", path.display());
    let mut text = Vec::new();
    for line in lines {
        text.extend(line.to_bytes()?);
    }
    let path = path.to_path_buf();
    let work = move || -> std::io::Result<()> {
        let root = Root::open(path.parent().unwrap_or(Path::new(".")), Access::Shared)?;
        let dir = root.dir(Path::new(""), false)?;
        let name = path.file_name().unwrap_or_default();
        let temp = std::ffi::OsString::from(format!(
            ".{MANIFEST_NAME}.{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let written = (|| {
            let mut file = dir.open(&temp, Open::CreateNew)?;
            file.write_all(&text)?;
            file.sync_all()?;
            dir.rename(&temp, name)
        })();
        if written.is_err() {
            let _ = dir.remove(&temp);
        }
        written?;
        dir.sync()
    };
    super::blocking(&context, work).await
}
