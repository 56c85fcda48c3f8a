//! One copy attempt of one object, to a bucket or to a file.

use super::Downloader;
use crate::beneath::{Access, Dir, Open, Root};
use crate::crc::Crc32c;
use crate::domain::Lease;
use crate::domain::destination::Target;
use crate::domain::download::Download;
use crate::domain::gs_uri::GsUri;
use crate::error::Error;
use crate::objects::ReadRange;
use futures::{FutureExt, StreamExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Suffix of a file being copied; object names with it are refused (see
/// [`crate::domain::paths`]), so a temporary file can never be mistaken for, or
/// overwrite, an output.
use crate::domain::paths::PARTIAL_SUFFIX;
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

    /// A failure another attempt would repeat.
    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
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
    let name = target.file_name().unwrap_or_default();
    target.with_file_name(partial_name(name, generation))
}

/// `.NAME.GENERATION.asmr-partial`; for a name too long to take the
/// additions within a file system's 255 bytes, a digest of it instead.
fn partial_name(target: &std::ffi::OsStr, generation: Option<i64>) -> std::ffi::OsString {
    const MAX_NAME: usize = 255;
    let suffix = format!(".{}{PARTIAL_SUFFIX}", generation.unwrap_or(0));
    let mut name = std::ffi::OsString::from(".");
    if 1 + target.len() + suffix.len() <= MAX_NAME {
        name.push(target);
    } else {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x9d2e_41b7_0c5a_4e63_8f17_2ab4_c6d0_5e19);
        let digest = uuid::Uuid::new_v5(&NAMESPACE, target.as_encoded_bytes());
        name.push(digest.simple().to_string());
    }
    name.push(suffix);
    name
}

/// The CRC32C of the first `len` bytes of `file`, read through this handle
/// (whatever the file's name leads to now), and how many there were.
fn crc_of(file: &std::fs::File, len: u64) -> std::io::Result<(u64, u32)> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; 1024 * 1024];
    let (mut crc, mut at) = (0u32, 0u64);
    while at < len {
        let want = usize::try_from(len - at)
            .unwrap_or(buffer.len())
            .min(buffer.len());
        let read = file.read_at(&mut buffer[..want], at)?;
        if read == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        at += read as u64;
    }
    Ok((at, crc))
}

/// A partial file opened for a copy, locked, and where it stands.
struct Partial {
    /// Its directory, held open: the rename happens in it.
    dir: Dir,
    name: std::ffi::OsString,
    /// Locked exclusively for the whole copy.
    file: std::fs::File,
    /// Bytes already there (a resumed copy).
    offset: u64,
    /// Their CRC32C.
    crc: u32,
}

/// Opens (or resumes) the partial file of `rel` beneath `root` and locks
/// it: a second copier of the same download finds it busy instead of
/// writing into it. Links are refused ([`crate::beneath`]).
fn open_partial(
    root: &Path,
    rel: &Path,
    generation: Option<i64>,
    size: u64,
) -> Result<Partial, CopyError> {
    let (dir_rel, target_name) = crate::beneath::split(rel).map_err(|e| fs_error("", e))?;
    let name = partial_name(target_name, generation);
    let root = Root::open(root, Access::Shared)
        .map_err(|e| fs_error(&format!("opening {}", root.display()), e))?;
    let dir = root.dir(dir_rel, true).map_err(|e| {
        fs_error(
            &format!("creating {}", root.path().join(dir_rel).display()),
            e,
        )
    })?;
    let shown = dir.path().join(&name);
    let file = dir
        .open(&name, Open::Append)
        .map_err(|e| fs_error(&format!("opening {}", shown.display()), e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(CopyError::retryable(
                "busy",
                format!(
                    "{} is being written by another copy (it holds the lock)",
                    shown.display()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(fs_error(&format!("locking {}", shown.display()), e));
        }
    }
    let len = file
        .metadata()
        .map_err(|e| fs_error(&format!("reading {}", shown.display()), e))?
        .len();
    // Resume from what an earlier attempt left, unless it is too long.
    if len > size {
        file.set_len(0)
            .map_err(|e| fs_error(&format!("emptying {}", shown.display()), e))?;
    }
    let (offset, crc) = crc_of(&file, len.min(size))
        .map_err(|e| fs_error(&format!("reading {}", shown.display()), e))?;
    Ok(Partial {
        dir,
        name,
        file,
        offset,
        crc,
    })
}

/// A file system failure of a copy: a planted link is permanent and says
/// so; anything else may pass.
fn fs_error(context: &str, e: std::io::Error) -> CopyError {
    use std::io::ErrorKind;
    if crate::beneath::is_refused(&e) {
        CopyError::permanent("unsafe_path", e.to_string())
    } else if matches!(e.kind(), ErrorKind::NotADirectory | ErrorKind::IsADirectory) {
        // Another object's file is where this one needs a directory (`a`
        // and `a/b`), or the other way round: no retry changes that.
        CopyError::permanent(
            "path_conflict",
            format!("{context}: {e}; another file or directory has the name"),
        )
    } else {
        CopyError::io(context, e)
    }
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
    // The tenant's own destination is the root nothing may leave.
    let destination = downloader
        .destination_of(download.tenant())
        .await
        .map_err(|e| CopyError::retryable("store", e.to_string()))?;
    let root = match &destination {
        crate::domain::destination::Destination::Directory(root) => root.clone(),
        other => {
            return Err(CopyError::permanent(
                "bad_destination",
                format!(
                    "{} is not a directory destination ({other})",
                    target.display()
                ),
            ));
        }
    };
    let rel = target
        .strip_prefix(&root)
        .map_err(|_| {
            CopyError::permanent(
                "bad_destination",
                format!("{} is not under {}", target.display(), root.display()),
            )
        })?
        .to_path_buf();
    let generation = download.generation();
    let partial = tokio::task::spawn_blocking(move || open_partial(&root, &rel, generation, size))
        .await
        .map_err(|e| CopyError::retryable("io", format!("opening the partial file: {e}")))??;
    let Partial {
        dir,
        name,
        file,
        mut offset,
        crc: mut running,
    } = partial;
    let shown = dir.path().join(&name);
    if offset > 0 {
        tracing::info!(download_id = %download.id(), offset, "resuming a copy");
    }
    let file = tokio::fs::File::from_std(file);
    let mut writeback = Writeback::new(&file, offset).await;
    // Network chunks are small; each write to a tokio file is a trip to the
    // blocking pool, so they go to disk in pieces of WRITE_BUFFER.
    let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);

    if offset < size {
        // The generation the download is of, and no other: an object
        // written again since cannot splice its bytes onto these.
        let range = ReadRange::from(offset).of_generation(generation);
        let mut stream = downloader
            .objects
            .read(&source.bucket, &source.name, range)
            .await?;
        let mut progress = Progress::new(downloader, download, lease, offset);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            file.write_all(&chunk)
                .await
                .map_err(|e| CopyError::io(&format!("writing {}", shown.display()), e))?;
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
        .map_err(|e| CopyError::io(&format!("syncing {}", shown.display()), e))?;
    let file = file.into_std().await;

    // Verified by the file itself, not by what this process counted: the
    // lock keeps other copiers out, and the read-back catches anything
    // else that wrote to it.
    let target_name = target.file_name().unwrap_or_default().to_os_string();
    let checked = tokio::task::spawn_blocking(move || {
        let len = file.metadata()?.len();
        let (read, on_disk) = crc_of(&file, len)?;
        Ok::<_, std::io::Error>((file, dir, len.max(read), on_disk))
    })
    .await
    .map_err(|e| CopyError::retryable("io", format!("checking the copy: {e}")))?
    .map_err(|e| CopyError::io(&format!("checking {}", shown.display()), e))?;
    let (file, dir, len, on_disk) = checked;
    if len != size || Crc32c(on_disk) != crc {
        // Whatever is on disk is wrong: the next attempt starts over.
        let _ = dir.remove(&name);
        drop(file);
        let code = if len != size {
            "size_mismatch"
        } else {
            "crc_mismatch"
        };
        return Err(CopyError::retryable(
            code,
            format!(
                "{source}: {} holds {len} bytes with CRC32C {on_disk:08x} ({offset} bytes with CRC32C {running:08x} were copied); the object has {size} bytes with CRC32C {crc:08x}",
                shown.display()
            ),
        ));
    }
    let renamed = tokio::task::spawn_blocking(move || {
        dir.rename(&name, &target_name)?;
        // The rename is durable only once the directory is.
        let _ = dir.sync();
        drop(file);
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|e| CopyError::retryable("io", format!("renaming the copy: {e}")))?;
    renamed.map_err(|e| fs_error(&format!("renaming into {}", target.display()), e))?;
    Ok(len)
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
