//! The file work of the local adapter: atomic replacement through a
//! temporary file, copying with a running CRC32C, the compose lock, walking
//! and pruning folders, chunked reads, and file system errors as the port's.

use super::CHUNK;
use super::names::check_name;
use crate::error::{Error, Result};
// Start of the name of a temporary file; listings skip such files, and no
// object name segment may start with it.
use crate::domain::paths::TEMP_PREFIX;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::SystemTime;
use tokio::io::AsyncReadExt;

/// How often a write retries when a concurrent delete removes the directory
/// it is writing into.
const WRITE_ATTEMPTS: usize = 3;

/// Replaces `path` atomically with `bytes`.
pub(super) fn replace(path: &Path, bytes: &[u8], mtime: Option<SystemTime>) -> io::Result<()> {
    replace_with(path, mtime, |file| file.write_all(bytes))
}

/// Replaces `path` atomically with what `fill` writes: a temporary file
/// beside it, synced, then renamed over it. Creates the parent directories,
/// and retries if a concurrent delete prunes them in between.
pub(super) fn replace_with(
    path: &Path,
    mtime: Option<SystemTime>,
    fill: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path has no parent directory",
        )
    })?;
    let temp = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let mut attempt = 0;
    let mut file = loop {
        attempt += 1;
        crate::beneath::private_dir(dir)?;
        match crate::beneath::private_file()
            .write(true)
            .create_new(true)
            .open(&temp)
        {
            Ok(file) => break file,
            Err(e) if missing(&e) && attempt < WRITE_ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        fill(&mut file)?;
        if let Some(mtime) = mtime {
            file.set_modified(mtime)?;
        }
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    // Make the rename itself durable.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Copies `from` to `to` in chunks, counting on from `start` (bytes and
/// CRC32C so far, `(0, 0)` for a fresh count); the bytes and CRC32C of all
/// that was counted.
pub(super) fn copy_counting(
    from: &mut impl Read,
    to: &mut impl Write,
    start: (u64, u32),
) -> io::Result<(u64, u32)> {
    let mut buffer = vec![0; CHUNK];
    let (mut size, mut crc) = start;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return Ok((size, crc)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..n])?;
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
        size += n as u64;
    }
}

/// `path` opened (created if need be) and locked exclusively; the lock
/// lasts as long as the returned file.
pub(super) fn lock_exclusively(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        crate::beneath::private_dir(dir)?;
    }
    let file = crate::beneath::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.lock()?;
    Ok(file)
}

/// Collects the names of the files under `dir` (`prefix` is `dir`'s name
/// relative to the bucket), skipping temporary files and not following
/// symbolic links.
pub(super) fn walk(dir: &Path, prefix: &str, names: &mut Vec<String>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if missing(&e) || e.kind() == io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(file_name) = entry.file_name().into_string() else {
            continue; // not UTF-8: no object has this name
        };
        if file_name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let name = if prefix.is_empty() {
            file_name
        } else {
            format!("{prefix}/{file_name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &name, names)?;
        } else if kind.is_file() && check_name(&name, "").is_ok() {
            names.push(name);
        }
    }
    Ok(())
}

/// Removes the empty directories above `path`, up to but not including
/// `stop`. A directory that is not empty (or just got a new file) stays.
pub(super) fn prune(path: &Path, stop: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || std::fs::remove_dir(d).is_err() {
            return;
        }
        dir = d.parent();
    }
}

/// Fills a buffer of `want` bytes unless the file ends first.
pub(super) async fn read_chunk(file: &mut tokio::fs::File, want: usize) -> io::Result<Vec<u8>> {
    let mut chunk = vec![0; want];
    let mut filled = 0;
    while filled < want {
        let n = file.read(&mut chunk[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    chunk.truncate(filled);
    Ok(chunk)
}

/// Runs blocking file work off the async threads.
pub(super) async fn blocking<T, F>(context: &str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| io_error(context, &e)),
        Err(e) => Err(Error::objects(
            context,
            format!("the file task failed ({e})"),
            true,
        )),
    }
}

pub(super) fn missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

pub(super) fn io_error(context: &str, e: &io::Error) -> Error {
    let message = match e.kind() {
        io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => format!(
            "a file and a directory cannot share a name here: another object's name uses this one as a folder, or the other way round ({e})"
        ),
        _ => format!("the file system said: {e}"),
    };
    let retryable = matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    );
    Error::objects(context, message, retryable)
}
