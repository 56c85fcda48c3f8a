//! `asmr downloads` and `asmr retry-download`: the download queue (pending,
//! running and given-up downloads), and the operator's way to requeue a
//! download that gave up.

use super::Tenancy;
use crate::args::DownloadsArgs;
use crate::out::{self, Table};
use anyhow::Result;
use shared::domain::download::{Download, DownloadStatus, FileType};
use shared::error::Error;
use shared::store::Store;
use shared::store::tenants::Scope;

/// Width of the source column of `asmr downloads`.
const SOURCE_WIDTH: usize = 60;

pub async fn list(store: &Store, scope: &Scope, args: &DownloadsArgs) -> Result<()> {
    let status = args
        .status
        .as_deref()
        .map(str::parse::<DownloadStatus>)
        .transpose()
        .map_err(Error::from)?;

    let (downloads, more) = store
        .first_downloads(status, scope, args.limit as usize)
        .await?;

    if args.json {
        out::json_pretty(&downloads)?;
    } else if !downloads.is_empty() {
        out::text(&downloads_table(&downloads))?;
    }
    let shown = out::count(downloads.len(), "download", "downloads");
    match (downloads.is_empty(), more) {
        (true, _) => out::note("no downloads match"),
        (false, true) => out::note(format_args!(
            "{shown}, in copy order; there are more (raise --limit)"
        )),
        (false, false) => out::note(format_args!("{shown}, in copy order")),
    }
    Ok(())
}

fn downloads_table(downloads: &[Download]) -> String {
    let mut table = Table::new(&[
        "id",
        "job",
        "type",
        "status",
        "attempts",
        "progress",
        "created (UTC)",
        "source",
        "error",
    ])
    .right(&[4, 5]);
    for download in downloads {
        table.row(vec![
            download.id().to_string(),
            download.job_id().to_string(),
            file_type(download.file_type()).into(),
            download.status().to_string(),
            format!("{}/{}", download.attempts(), download.max_attempts()),
            progress(download.bytes_copied(), download.size()),
            out::short_time(download.created_at()),
            out::middle(&download.source().to_string(), SOURCE_WIDTH),
            download
                .error()
                .as_ref()
                .map_or_else(|| "-".into(), |error| error.code.clone()),
        ]);
    }
    table.render()
}

fn file_type(file_type: FileType) -> &'static str {
    match file_type {
        FileType::Image => "image",
        FileType::Video => "video",
        FileType::Other => "other",
    }
}

/// `copied/size (percent)`; the size is `?` until it is known. The percentage
/// rounds down, so 100% means every byte.
fn progress(copied: u64, size: Option<u64>) -> String {
    match size {
        Some(0) => format!("{}/{}", out::bytes(copied), out::bytes(0)),
        Some(size) => {
            let percent = u128::from(copied) * 100 / u128::from(size);
            format!("{}/{} ({percent}%)", out::bytes(copied), out::bytes(size))
        }
        None => format!("{}/?", out::bytes(copied)),
    }
}

pub async fn retry(store: &Store, tenancy: &Tenancy, id: &str) -> Result<()> {
    match store.get_download(id).await? {
        Some(download) if tenancy.owns(download.tenant()) => {}
        _ => {
            return Err(Error::NotFound {
                kind: "download",
                id: id.to_string(),
            }
            .into());
        }
    }
    let download = store.retry_download(id).await?;
    out::line(download.id())?;
    out::note(format_args!(
        "requeued download {} ({}) with {} fresh attempts",
        download.id(),
        download.source(),
        download.max_attempts()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_shows_a_percentage_when_the_size_is_known() {
        assert_eq!(progress(0, None), "0 B/?");
        assert_eq!(progress(2048, None), "2.0 KiB/?");
        assert_eq!(progress(0, Some(12_897_485)), "0 B/12.3 MiB (0%)");
        assert_eq!(
            progress(6_448_742, Some(12_897_485)),
            "6.1 MiB/12.3 MiB (49%)"
        );
        assert_eq!(progress(999, Some(1000)), "999 B/1000 B (99%)");
        assert_eq!(progress(1000, Some(1000)), "1000 B/1000 B (100%)");
        assert_eq!(progress(0, Some(0)), "0 B/0 B");
        assert_eq!(
            progress(u64::MAX, Some(u64::MAX)),
            "16.0 EiB/16.0 EiB (100%)"
        );
    }
}
