//! One copy attempt of one object, to a bucket or to a file.

use super::Downloader;
use crate::crc::Crc32c;
use crate::domain::Lease;
use crate::domain::download::Download;
use crate::domain::download::Target;
use crate::error::Error;
use crate::objects::{GsUri, ReadRange};
use futures::{FutureExt, StreamExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Suffix of a file being copied; object names with it are refused (see
/// [`crate::paths`]), so a temporary file can never be mistaken for, or
/// overwrite, an output.
pub use crate::paths::PARTIAL_SUFFIX;
/// Progress is recorded (and the lease extended) every this many bytes, or
/// after this long, whichever comes first.
const PROGRESS_EVERY: u64 = 16 * 1024 * 1024;
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes gathered before one write to the partial file.
const WRITE_BUFFER: usize = 1024 * 1024;
/// The partial file is flushed to disk in the background every this many
/// bytes, so the final fsync waits for the last stretch only instead of the
/// whole object (Linux starts writeback on its own only past a share of
/// memory, more than most outputs).
const WRITEBACK_EVERY: u64 = 32 * 1024 * 1024;

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyError {
    /// `crc_mismatch`, `size_mismatch`, `not_found`, `storage`, `io`, `timeout`...
    pub code: String,
    /// What happened.
    pub message: String,
    /// Whether another attempt can help.
    pub retryable: bool,
    /// The bucket refused this stage's credentials or role: not the copy's
    /// fault, so it is no attempt.
    pub denied: bool,
}

impl CopyError {
    /// A failure another attempt may not repeat.
    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
            denied: false,
        }
    }

    fn permanent(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
            denied: false,
        }
    }

    fn io(context: &str, e: std::io::Error) -> Self {
        Self::retryable("io", format!("{context}: {e}"))
    }
}

impl From<Error> for CopyError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound { .. } => Self::permanent("not_found", e.to_string()),
            e => Self {
                code: "storage".into(),
                retryable: e.is_retryable(),
                denied: e.is_permission_denied(),
                message: e.to_string(),
            },
        }
    }
}

/// The size and CRC32C the copy must match: the event's, else the object's
/// current metadata.
async fn expected(
    downloader: &Downloader,
    download: &Download,
    source: &GsUri,
) -> Result<(u64, Crc32c), CopyError> {
    if let (Some(size), Some(crc)) = (download.size(), download.crc32c()) {
        return Ok((size, crc));
    }
    let meta = downloader
        .objects
        .metadata(&source.bucket, &source.name)
        .await?
        .ok_or_else(|| CopyError::permanent("not_found", format!("{source} no longer exists")))?;
    Ok((meta.size, meta.crc32c))
}

/// What a verified copy holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Its size.
    pub bytes: u64,
    /// Its CRC32C, the same as the source's.
    pub crc32c: Crc32c,
}

/// Copies `download` once; a copy in a bucket gets `metadata` over the
/// source's custom metadata. Returns what was delivered.
pub async fn copy(
    downloader: &Downloader,
    download: &Download,
    lease: &Lease,
    metadata: &BTreeMap<String, String>,
) -> Result<Verified, CopyError> {
    let source = download.source();
    let (size, crc) = expected(downloader, download, source).await?;
    let bytes = match download.destination() {
        Target::Object(target) => {
            let meta = downloader.objects.copy(source, target, metadata).await?;
            if meta.size != size || meta.crc32c != crc {
                return Err(CopyError::retryable(
                    "crc_mismatch",
                    format!(
                        "the copy at {target} has size {} and CRC32C {:08x}, the source {size} and {crc:08x}",
                        meta.size, meta.crc32c
                    ),
                ));
            }
            meta.size
        }
        Target::File(target) => {
            to_file(downloader, download, lease, source, target, size, crc).await?
        }
    };
    Ok(Verified { bytes, crc32c: crc })
}

/// The temporary file of a copy: beside the target, named after the object
/// generation, so a later attempt for the same generation resumes it.
pub fn partial_path(target: &Path, generation: Option<i64>) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(
        ".{name}.{}{PARTIAL_SUFFIX}",
        generation.unwrap_or(0)
    ))
}

/// CRC32C of the first `len` bytes of `path`, read in chunks.
async fn crc_of_prefix(path: &Path, len: u64) -> std::io::Result<u32> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut buffer = vec![0u8; 1024 * 1024];
    let mut crc = 0u32;
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buffer.len() as u64)).unwrap_or(buffer.len());
        let read = file.read(&mut buffer[..want]).await?;
        if read == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        left -= read as u64;
    }
    Ok(crc)
}

async fn to_file(
    downloader: &Downloader,
    download: &Download,
    lease: &Lease,
    source: &GsUri,
    target: &Path,
    size: u64,
    crc: Crc32c,
) -> Result<u64, CopyError> {
    let parent = target.parent().ok_or_else(|| {
        CopyError::permanent(
            "bad_destination",
            format!("{} has no directory", target.display()),
        )
    })?;
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| CopyError::io(&format!("creating {}", parent.display()), e))?;
    let partial = partial_path(target, download.generation());

    // Resume from what an earlier attempt left, unless it is already too long.
    let mut offset = match tokio::fs::metadata(&partial).await {
        Ok(meta) if meta.len() <= size => meta.len(),
        Ok(_) => {
            let _ = tokio::fs::remove_file(&partial).await;
            0
        }
        Err(_) => 0,
    };
    let mut running = if offset > 0 {
        crc_of_prefix(&partial, offset)
            .await
            .map_err(|e| CopyError::io(&format!("reading {}", partial.display()), e))?
    } else {
        0
    };
    if offset > 0 {
        tracing::info!(download_id = %download.id(), offset, "resuming a copy");
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .await
        .map_err(|e| CopyError::io(&format!("opening {}", partial.display()), e))?;
    let mut writeback = Writeback::new(&file, offset).await;
    // Network chunks are small; each write to a tokio file is a trip to the
    // blocking pool, so they go to disk in pieces of WRITE_BUFFER.
    let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);

    if offset < size {
        let mut stream = downloader
            .objects
            .read(&source.bucket, &source.name, ReadRange::from(offset))
            .await?;
        let mut progress = Progress::new(downloader, download, lease, offset);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            file.write_all(&chunk)
                .await
                .map_err(|e| CopyError::io(&format!("writing {}", partial.display()), e))?;
            running = crc32c::crc32c_append(running, &chunk);
            offset += chunk.len() as u64;
            progress.copied(offset)?;
            writeback.written(offset);
        }
        progress.finish().await?;
        writeback.finish().await;
    }
    file.flush()
        .await
        .map_err(|e| CopyError::io("flushing", e))?;
    let file = file.into_inner();
    file.sync_all()
        .await
        .map_err(|e| CopyError::io(&format!("syncing {}", partial.display()), e))?;
    drop(file);

    if offset != size || Crc32c(running) != crc {
        // Whatever is on disk is wrong: the next attempt starts over.
        let _ = tokio::fs::remove_file(&partial).await;
        let code = if offset != size {
            "size_mismatch"
        } else {
            "crc_mismatch"
        };
        return Err(CopyError::retryable(
            code,
            format!(
                "{source}: copied {offset} bytes with CRC32C {running:08x}; the object has {size} bytes with CRC32C {crc:08x}"
            ),
        ));
    }
    tokio::fs::rename(&partial, target)
        .await
        .map_err(|e| CopyError::io(&format!("renaming into {}", target.display()), e))?;
    // The rename is durable only once the directory is.
    if let Ok(dir) = tokio::fs::File::open(parent).await {
        let _ = dir.sync_all().await;
    }
    Ok(offset)
}

/// Records a copy's progress (which also extends its lease) in the
/// background, one record at a time, so the stream never waits on the
/// store. A record that finds the lease gone ends the copy.
struct Progress<'a> {
    downloader: &'a Downloader,
    download_id: &'a str,
    lease: &'a Lease,
    reported: u64,
    reported_at: std::time::Instant,
    in_flight: Option<tokio::task::JoinHandle<Result<(), Error>>>,
}

impl<'a> Progress<'a> {
    fn new(
        downloader: &'a Downloader,
        download: &'a Download,
        lease: &'a Lease,
        offset: u64,
    ) -> Self {
        Progress {
            downloader,
            download_id: download.id(),
            lease,
            reported: offset,
            reported_at: std::time::Instant::now(),
            in_flight: None,
        }
    }

    /// Notes that `offset` bytes are copied; starts a record when one is due
    /// and the previous one has finished.
    fn copied(&mut self, offset: u64) -> Result<(), CopyError> {
        let due = offset - self.reported >= PROGRESS_EVERY
            || self.reported_at.elapsed() >= PROGRESS_INTERVAL;
        if !due {
            return Ok(());
        }
        if let Some(previous) = self.in_flight.take() {
            if !previous.is_finished() {
                self.in_flight = Some(previous);
                return Ok(());
            }
            if let Some(result) = previous.now_or_never() {
                Self::check(result)?;
            }
        }
        self.reported = offset;
        self.reported_at = std::time::Instant::now();
        let store = self.downloader.store.clone();
        let id = self.download_id.to_string();
        let lease = self.lease.clone();
        self.in_flight = Some(tokio::spawn(async move {
            store.download_progress(&id, &lease, offset).await.map(drop)
        }));
        Ok(())
    }

    /// Waits for the record in flight, if any.
    async fn finish(mut self) -> Result<(), CopyError> {
        match self.in_flight.take() {
            Some(last) => Self::check(last.await),
            None => Ok(()),
        }
    }

    /// A store that is only unavailable does not stop the copy; a lost lease
    /// means another worker took it over.
    fn check(result: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), CopyError> {
        match result {
            Ok(Err(e)) if !e.is_retryable() => {
                Err(CopyError::permanent("lease_lost", e.to_string()))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Progress<'_> {
    /// A copy that ended early records nothing more.
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.abort();
        }
    }
}

/// Flushes what a copy has written so far to disk while the copy goes on,
/// one flush at a time, on a handle of its own.
struct Writeback {
    handle: Option<std::sync::Arc<std::fs::File>>,
    flushed: u64,
    in_flight: Option<tokio::task::JoinHandle<()>>,
}

impl Writeback {
    async fn new(file: &tokio::fs::File, offset: u64) -> Self {
        // Without a second handle the copy goes on without early flushes;
        // the final fsync still covers everything.
        let handle = match file.try_clone().await {
            Ok(clone) => Some(std::sync::Arc::new(clone.into_std().await)),
            Err(e) => {
                tracing::debug!(error = %e, "no handle for early flushes");
                None
            }
        };
        Writeback {
            handle,
            flushed: offset,
            in_flight: None,
        }
    }

    /// Notes that `offset` bytes are written; starts a flush when one is due
    /// and the previous one has finished. Its errors surface again in the
    /// final fsync, which decides.
    fn written(&mut self, offset: u64) {
        let Some(handle) = &self.handle else { return };
        if offset - self.flushed < WRITEBACK_EVERY
            || self.in_flight.as_ref().is_some_and(|f| !f.is_finished())
        {
            return;
        }
        self.flushed = offset;
        let handle = handle.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let _ = handle.sync_data();
        }));
    }

    async fn finish(mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            let _ = in_flight.await;
        }
    }
}
