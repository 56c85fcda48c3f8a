//! The local-directory adapter: buckets as plain directories, for the local
//! run and the tests.
//!
//! Layout under `ROOT`, chosen so that people can open the outputs directly:
//!
//! ```text
//! ROOT/out/images/j/0.png             object `images/j/0.png` of bucket `out`
//! ROOT/.meta/out/images/j/0.png.json  its content type, custom metadata,
//!                                     generation, CRC32C and size
//! ```
//!
//! The sidecars live in their own hidden tree so that a bucket directory
//! lists only real objects.
//!
//! Invariants:
//! - Nothing is written outside `ROOT`: bucket names are plain
//!   `[a-z0-9._-]` words, and object names become paths only through
//!   [`crate::paths::relative_path`], the project's one normalisation (no
//!   `..`, `.`, empty segments, backslashes, control characters, absolute
//!   paths, drive prefixes or names of temporary files).
//! - A reader never sees a partial object: data and sidecar are each written
//!   (or, for a copy, streamed from the source file) to a temporary file in
//!   the target directory, synced, then renamed over the old one. An open
//!   reader keeps reading the generation it opened.
//! - The generation of an object is also the modification time of its file
//!   (in microseconds), and a sidecar counts only if it records that
//!   generation and the file's size. So in the moment between the two
//!   renames, after a crash in it, or for a file dropped in by hand, the
//!   metadata is computed from the file itself (CRC32C read, content type
//!   guessed from the extension) instead of being wrong.
//!
//! Limits, as any file system has them: an object `a` and an object `a/b`
//! cannot both exist, and a segment may be at most 250 bytes long.

use super::{ByteStream, GsUri, ObjectMeta, ObjectStore, ReadRange};
use crate::crc::Crc32c;
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The hidden tree that holds the sidecars.
const META_DIR: &str = ".meta";
/// Extension of a sidecar.
const SIDECAR_SUFFIX: &str = ".json";
/// Start of the name of a temporary file; listings skip such files, and no
/// object name segment may start with it.
use crate::paths::TEMP_PREFIX;
/// Bytes per chunk of a read.
const CHUNK: usize = 256 * 1024;
/// The longest name segment: file systems allow 255 bytes and the sidecar
/// adds `.json`.
const MAX_SEGMENT_BYTES: usize = 250;
/// The longest bucket name, as in Cloud Storage (without dots).
const MAX_BUCKET_BYTES: usize = 63;
/// How often a write retries when a concurrent delete removes the directory
/// it is writing into.
const WRITE_ATTEMPTS: usize = 3;
/// The file under the sidecar tree whose exclusive lock makes a compose's
/// check of the generation and its write one step, across processes too.
/// Its leading dot keeps it apart from every bucket's sidecar folder.
const COMPOSE_LOCK: &str = ".compose.lock";

/// What a sidecar records.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    size: u64,
    crc32c: u32,
    generation: i64,
    content_type: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl Sidecar {
    fn into_meta(self, bucket: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            bucket: bucket.to_string(),
            name: name.to_string(),
            size: self.size,
            crc32c: Crc32c(self.crc32c),
            generation: self.generation,
            content_type: self.content_type,
            metadata: self.metadata,
        }
    }
}

/// How the file work of a copy ended.
enum Copied {
    SourceMissing,
    BucketMissing,
    Done(Sidecar),
}

/// How the file work of a compose ended.
enum Composed {
    /// The destination is not at the generation the caller expected.
    Conflict,
    /// This source (`gs://` text) does not exist.
    SourceMissing(String),
    Done(Sidecar),
}

/// Buckets of objects in a local directory.
pub struct LocalObjectStore {
    root: PathBuf,
    /// The last generation handed out, so that generations strictly
    /// increase within the process even within one microsecond.
    last_generation: Arc<AtomicI64>,
}

impl LocalObjectStore {
    /// A store under `root`, created on demand.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            last_generation: Arc::new(AtomicI64::new(0)),
        }
    }

    /// The directory of the objects of `bucket`.
    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    /// The directory of the sidecars of `bucket`.
    fn meta_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(META_DIR).join(bucket)
    }

    /// The file of an object and the file of its sidecar, once both names
    /// have passed their checks: the one way an object name becomes a path
    /// in this adapter.
    fn locate(&self, bucket: &str, name: &str, context: &str) -> Result<(PathBuf, PathBuf)> {
        check_bucket(bucket, context)?;
        let relative = check_name(name, context)?;
        let data = self.bucket_dir(bucket).join(&relative);
        let mut sidecar = relative.into_os_string();
        sidecar.push(SIDECAR_SUFFIX);
        let meta = self.meta_dir(bucket).join(sidecar);
        Ok((data, meta))
    }

    /// A generation later than every one this process handed out before.
    fn next_generation(&self) -> i64 {
        let now = micros(SystemTime::now());
        let previous =
            match self
                .last_generation
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                    Some(now.max(last + 1))
                }) {
                Ok(previous) | Err(previous) => previous,
            };
        now.max(previous + 1)
    }
}

#[async_trait]
impl ObjectStore for LocalObjectStore {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        let context = format!("creating bucket gs://{bucket}");
        check_bucket(bucket, &context)?;
        let dirs = [self.bucket_dir(bucket), self.meta_dir(bucket)];
        blocking(&context, move || {
            for dir in dirs {
                std::fs::create_dir_all(dir)?;
            }
            Ok(())
        })
        .await
    }

    async fn write(
        &self,
        bucket: &str,
        name: &str,
        data: Bytes,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ObjectMeta> {
        let context = format!("writing {}", gs(bucket, name));
        let (data_path, meta_path) = self.locate(bucket, name, &context)?;
        if !tokio::fs::metadata(self.bucket_dir(bucket))
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return Err(Error::NotFound {
                kind: "bucket",
                id: format!("gs://{bucket}"),
            });
        }
        let generation = self.next_generation();
        let sidecar = Sidecar {
            size: data.len() as u64,
            crc32c: crc32c::crc32c(&data),
            generation,
            content_type: content_type.to_string(),
            metadata: metadata.clone(),
        };
        let sidecar_json =
            serde_json::to_vec_pretty(&sidecar).map_err(|e| Error::objects(&context, e, false))?;
        let mtime = UNIX_EPOCH + Duration::from_micros(generation.unsigned_abs());
        blocking(&context, move || {
            replace(&data_path, &data, Some(mtime))?;
            replace(&meta_path, &sidecar_json, None)
        })
        .await?;
        Ok(sidecar.into_meta(bucket, name))
    }

    async fn read(&self, bucket: &str, name: &str, range: ReadRange) -> Result<ByteStream> {
        let uri = gs(bucket, name);
        let context = format!("reading {uri}");
        let (data_path, _) = self.locate(bucket, name, &context)?;
        if range.end.is_some_and(|end| end < range.start) {
            return Err(Error::objects(
                &context,
                format!(
                    "the range ends (byte {}) before it starts (byte {})",
                    range.end.unwrap_or_default(),
                    range.start
                ),
                false,
            ));
        }
        let mut file = match tokio::fs::File::open(&data_path).await {
            Ok(file) => file,
            Err(e) if missing(&e) => return Err(not_found(&uri)),
            Err(e) => return Err(io_error(&context, &e)),
        };
        let stat = file.metadata().await.map_err(|e| io_error(&context, &e))?;
        if !stat.is_file() {
            return Err(not_found(&uri));
        }
        let size = stat.len();
        if range.start > size {
            return Err(Error::objects(
                &context,
                format!(
                    "the range starts at byte {}, past the end of the {size}-byte object",
                    range.start
                ),
                false,
            ));
        }
        let end = range.end.map_or(size, |end| end.min(size));
        file.seek(io::SeekFrom::Start(range.start))
            .await
            .map_err(|e| io_error(&context, &e))?;
        let remaining = end - range.start;
        let stream = futures::stream::unfold(Some((file, remaining)), move |state| {
            let context = context.clone();
            async move {
                let (mut file, remaining) = state?;
                if remaining == 0 {
                    return None;
                }
                let want = usize::try_from(remaining).unwrap_or(CHUNK).min(CHUNK);
                match read_chunk(&mut file, want).await {
                    Ok(chunk) if chunk.len() == want => {
                        let left = remaining - want as u64;
                        Some((Ok(Bytes::from(chunk)), Some((file, left))))
                    }
                    Ok(_) => Some((
                        Err(Error::objects(
                            &context,
                            "the file shrank while it was being read",
                            true,
                        )),
                        None,
                    )),
                    Err(e) => Some((Err(io_error(&context, &e)), None)),
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn metadata(&self, bucket: &str, name: &str) -> Result<Option<ObjectMeta>> {
        let context = format!("reading the metadata of {}", gs(bucket, name));
        let (data_path, meta_path) = self.locate(bucket, name, &context)?;
        let (bucket, name) = (bucket.to_string(), name.to_string());
        blocking(&context, move || {
            object_meta(&bucket, &name, &data_path, &meta_path)
        })
        .await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let context = format!("listing gs://{bucket}/{prefix}*");
        check_bucket(bucket, &context)?;
        let bucket_dir = self.bucket_dir(bucket);
        let meta_dir = self.meta_dir(bucket);
        let bucket = bucket.to_string();
        let prefix = prefix.to_string();
        blocking(&context, move || {
            if !bucket_dir.is_dir() {
                return Ok(Err(Error::NotFound {
                    kind: "bucket",
                    id: format!("gs://{bucket}"),
                }));
            }
            // Only the directory that the prefix's complete segments name
            // can hold matches. If those segments are no valid name, no
            // object can match.
            let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", &prefix));
            if !dir_part.is_empty() && check_name(dir_part, "").is_err() {
                return Ok(Ok(Vec::new()));
            }
            let mut start = bucket_dir.clone();
            if !dir_part.is_empty() {
                start.extend(dir_part.split('/'));
            }
            let mut names = Vec::new();
            walk(&start, dir_part, &mut names)?;
            names.retain(|n| n.starts_with(prefix.as_str()));
            names.sort();
            let mut objects = Vec::with_capacity(names.len());
            for name in names {
                let data_path = bucket_dir.join(&name);
                let meta_path = meta_dir.join(format!("{name}{SIDECAR_SUFFIX}"));
                // Deleted while we listed: leave it out.
                if let Some(meta) = object_meta(&bucket, &name, &data_path, &meta_path)? {
                    objects.push(meta);
                }
            }
            Ok(Ok(objects))
        })
        .await?
    }

    /// The source file streamed into a temporary file beside the target,
    /// synced and renamed, then a new sidecar: atomic like `write`. The
    /// CRC32C is computed from the bytes as they are copied, so it describes
    /// the copy whatever happens to the source meanwhile.
    async fn copy(
        &self,
        from: &GsUri,
        to: &GsUri,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ObjectMeta> {
        let context = format!("copying {from} to {to}");
        let (source_path, source_meta_path) = self.locate(&from.bucket, &from.name, &context)?;
        let (data_path, meta_path) = self.locate(&to.bucket, &to.name, &context)?;
        let target_bucket = self.bucket_dir(&to.bucket);
        let generation = self.next_generation();
        let mtime = UNIX_EPOCH + Duration::from_micros(generation.unsigned_abs());
        let source_name = from.name.clone();
        let extra = metadata.clone();
        let copied = blocking(&context, move || {
            // Open first, then judge the sidecar against this very file: a
            // concurrent write renames a new file over the name, but this
            // handle keeps reading the generation it opened.
            let mut source = match std::fs::File::open(&source_path) {
                Ok(file) => file,
                Err(e) if missing(&e) || e.kind() == io::ErrorKind::NotADirectory => {
                    return Ok(Copied::SourceMissing);
                }
                Err(e) => return Err(e),
            };
            let stat = source.metadata()?;
            if !stat.is_file() {
                return Ok(Copied::SourceMissing);
            }
            if !target_bucket.is_dir() {
                return Ok(Copied::BucketMissing);
            }
            let described = believed_sidecar(&source_meta_path, &stat)?;
            let mut counted = (0, 0);
            replace_with(&data_path, Some(mtime), |file| {
                counted = copy_counting(&mut source, file, (0, 0))?;
                Ok(())
            })?;
            let (size, crc32c) = counted;
            let (content_type, mut metadata) = match described {
                Some(s) => (s.content_type, s.metadata),
                None => (
                    guess_content_type(&source_name).to_string(),
                    BTreeMap::new(),
                ),
            };
            metadata.extend(extra);
            let sidecar = Sidecar {
                size,
                crc32c,
                generation,
                content_type,
                metadata,
            };
            replace(&meta_path, &serde_json::to_vec_pretty(&sidecar)?, None)?;
            Ok(Copied::Done(sidecar))
        })
        .await?;
        match copied {
            Copied::SourceMissing => Err(not_found(&from.to_string())),
            Copied::BucketMissing => Err(Error::NotFound {
                kind: "bucket",
                id: format!("gs://{}", to.bucket),
            }),
            Copied::Done(sidecar) => Ok(sidecar.into_meta(&to.bucket, &to.name)),
        }
    }

    /// The sources streamed one after the other into a temporary file beside
    /// the destination, synced and renamed, then a new sidecar, all under an
    /// exclusive lock on one lock file of the store: the generation checked
    /// is the one replaced, whichever process composes.
    async fn compose(
        &self,
        bucket: &str,
        sources: &[&str],
        destination: &str,
        content_type: &str,
        if_generation_match: i64,
    ) -> Result<Option<ObjectMeta>> {
        let context = format!("composing {}", gs(bucket, destination));
        let (data_path, meta_path) = self.locate(bucket, destination, &context)?;
        let source_paths = sources
            .iter()
            .map(|name| {
                let (data, _) = self.locate(bucket, name, &context)?;
                Ok((gs(bucket, name), data))
            })
            .collect::<Result<Vec<_>>>()?;
        if !tokio::fs::metadata(self.bucket_dir(bucket))
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return Err(Error::NotFound {
                kind: "bucket",
                id: format!("gs://{bucket}"),
            });
        }
        let lock_path = self.root.join(META_DIR).join(COMPOSE_LOCK);
        let generation = self.next_generation();
        let mtime = UNIX_EPOCH + Duration::from_micros(generation.unsigned_abs());
        let (bucket_name, name) = (bucket.to_string(), destination.to_string());
        let content_type = content_type.to_string();
        let composed = blocking(&context, move || {
            let _lock = lock_exclusively(&lock_path)?;
            let current = object_meta(&bucket_name, &name, &data_path, &meta_path)?;
            if current.map_or(0, |m| m.generation) != if_generation_match {
                return Ok(Composed::Conflict);
            }
            let mut files = Vec::with_capacity(source_paths.len());
            for (uri, path) in source_paths {
                match std::fs::File::open(&path) {
                    Ok(file) => files.push(file),
                    Err(e) if missing(&e) || e.kind() == io::ErrorKind::NotADirectory => {
                        return Ok(Composed::SourceMissing(uri));
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut counted = (0, 0);
            replace_with(&data_path, Some(mtime), |file| {
                for source in &mut files {
                    counted = copy_counting(source, file, counted)?;
                }
                Ok(())
            })?;
            let sidecar = Sidecar {
                size: counted.0,
                crc32c: counted.1,
                generation,
                content_type,
                metadata: BTreeMap::new(),
            };
            replace(&meta_path, &serde_json::to_vec_pretty(&sidecar)?, None)?;
            Ok(Composed::Done(sidecar))
        })
        .await?;
        match composed {
            Composed::Conflict => Ok(None),
            Composed::SourceMissing(uri) => Err(not_found(&uri)),
            Composed::Done(sidecar) => Ok(Some(sidecar.into_meta(bucket, destination))),
        }
    }

    async fn delete(&self, bucket: &str, name: &str) -> Result<bool> {
        let context = format!("deleting {}", gs(bucket, name));
        let (data_path, meta_path) = self.locate(bucket, name, &context)?;
        let stops = [self.bucket_dir(bucket), self.meta_dir(bucket)];
        blocking(&context, move || {
            let existed = match std::fs::symlink_metadata(&data_path) {
                Ok(m) if m.is_dir() => false,
                Ok(_) => match std::fs::remove_file(&data_path) {
                    Ok(()) => true,
                    Err(e) if missing(&e) => false,
                    Err(e) => return Err(e),
                },
                Err(e) if missing(&e) => false,
                Err(e) => return Err(e),
            };
            match std::fs::remove_file(&meta_path) {
                Ok(()) => {}
                Err(e) if missing(&e) => {}
                Err(e) => return Err(e),
            }
            // Empty directories would block a later object of their name.
            prune(&data_path, &stops[0]);
            prune(&meta_path, &stops[1]);
            Ok(existed)
        })
        .await
    }
}

/// Refuses bucket names that are not plain words (which also keeps `.meta`
/// and `..` out).
fn check_bucket(bucket: &str, context: &str) -> Result<()> {
    let plain = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    let ends_ok = bucket
        .bytes()
        .next()
        .zip(bucket.bytes().last())
        .is_some_and(|(first, last)| first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric());
    if plain && ends_ok && bucket.len() <= MAX_BUCKET_BYTES {
        return Ok(());
    }
    Err(Error::objects(
        context,
        format!(
            "bucket name {bucket:?} is not a plain word of at most {MAX_BUCKET_BYTES} lowercase letters, digits, dots, dashes and underscores that starts and ends with a letter or digit"
        ),
        false,
    ))
}

/// The relative path of an object name, by the project's one normalisation
/// ([`crate::paths::relative_path`]), with a shorter segment limit because
/// the sidecar adds `.json`.
fn check_name(name: &str, context: &str) -> Result<PathBuf> {
    let relative =
        crate::paths::relative_path(name).map_err(|e| Error::objects(context, e, false))?;
    if name
        .split('/')
        .any(|segment| segment.len() > MAX_SEGMENT_BYTES)
    {
        let shown: String = name.chars().take(80).collect();
        return Err(Error::objects(
            context,
            format!(
                "object name {shown:?} is refused: a segment is longer than {MAX_SEGMENT_BYTES} bytes"
            ),
            false,
        ));
    }
    Ok(relative)
}

/// Replaces `path` atomically with `bytes`.
fn replace(path: &Path, bytes: &[u8], mtime: Option<SystemTime>) -> io::Result<()> {
    replace_with(path, mtime, |file| file.write_all(bytes))
}

/// Replaces `path` atomically with what `fill` writes: a temporary file
/// beside it, synced, then renamed over it. Creates the parent directories,
/// and retries if a concurrent delete prunes them in between.
fn replace_with(
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
        std::fs::create_dir_all(dir)?;
        match std::fs::File::create_new(&temp) {
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

/// The metadata of an object from its sidecar when that describes the file
/// as it is, else computed from the file. `None` if there is no such file.
fn object_meta(
    bucket: &str,
    name: &str,
    data_path: &Path,
    meta_path: &Path,
) -> io::Result<Option<ObjectMeta>> {
    let stat = match std::fs::metadata(data_path) {
        Ok(stat) if stat.is_file() => stat,
        Ok(_) => return Ok(None),
        Err(e) if missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let sidecar = match believed_sidecar(meta_path, &stat)? {
        Some(sidecar) => sidecar,
        None => Sidecar {
            size: stat.len(),
            crc32c: match file_crc32c(data_path) {
                Ok(crc) => crc,
                Err(e) if missing(&e) => return Ok(None),
                Err(e) => return Err(e),
            },
            generation: stat.modified().map(micros)?,
            content_type: guess_content_type(name).to_string(),
            metadata: BTreeMap::new(),
        },
    };
    Ok(Some(sidecar.into_meta(bucket, name)))
}

/// The sidecar at `meta_path` if it describes the file of `stat` (same
/// generation, same size); `None` if it is missing, unreadable or stale.
fn believed_sidecar(meta_path: &Path, stat: &std::fs::Metadata) -> io::Result<Option<Sidecar>> {
    let generation = stat.modified().map(micros)?;
    Ok(std::fs::read(meta_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Sidecar>(&bytes).ok())
        .filter(|s| s.generation == generation && s.size == stat.len()))
}

/// Copies `from` to `to` in chunks, counting on from `start` (bytes and
/// CRC32C so far, `(0, 0)` for a fresh count); the bytes and CRC32C of all
/// that was counted.
fn copy_counting(
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
fn lock_exclusively(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.lock()?;
    Ok(file)
}

/// The CRC32C of a file, read in chunks.
fn file_crc32c(path: &Path) -> io::Result<u32> {
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0; CHUNK];
    let mut crc = 0;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
    }
}

/// Collects the names of the files under `dir` (`prefix` is `dir`'s name
/// relative to the bucket), skipping temporary files and not following
/// symbolic links.
fn walk(dir: &Path, prefix: &str, names: &mut Vec<String>) -> io::Result<()> {
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
fn prune(path: &Path, stop: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || std::fs::remove_dir(d).is_err() {
            return;
        }
        dir = d.parent();
    }
}

/// Fills a buffer of `want` bytes unless the file ends first.
async fn read_chunk(file: &mut tokio::fs::File, want: usize) -> io::Result<Vec<u8>> {
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

/// The content type of a file dropped in by hand, from its extension.
fn guess_content_type(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "json" => "application/json",
        "txt" | "log" => "text/plain",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T, F>(context: &str, work: F) -> Result<T>
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

fn missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

fn io_error(context: &str, e: &io::Error) -> Error {
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

fn not_found(uri: &str) -> Error {
    Error::NotFound {
        kind: "object",
        id: uri.to_string(),
    }
}

fn gs(bucket: &str, name: &str) -> String {
    format!("gs://{bucket}/{name}")
}

/// Microseconds since the epoch (negative before it).
fn micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_bucket_are_refused() {
        let long = "a".repeat(2000);
        let long_segment = format!("a/{}", "b".repeat(251));
        let temp = format!("a/{TEMP_PREFIX}x");
        for name in [
            "",
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a\\b",
            "a\0b",
            "./a",
            "a/.",
            "a//b",
            "a/",
            long.as_str(),
            long_segment.as_str(),
            temp.as_str(),
        ] {
            assert!(check_name(name, "c").is_err(), "{name:?} was accepted");
        }
        for name in ["a", "images/j/0.png", "..a", "a..", ".hidden", "a b/c+d%e"] {
            check_name(name, "c").unwrap();
        }
    }

    #[test]
    fn only_plain_bucket_names_are_accepted() {
        for bucket in ["", ".meta", "..", "a/b", "Out", "-a", "a-", "a b", "a\0"] {
            assert!(
                check_bucket(bucket, "c").is_err(),
                "{bucket:?} was accepted"
            );
        }
        for bucket in ["out", "asmr-test-1", "a.b_c", "x"] {
            check_bucket(bucket, "c").unwrap();
        }
    }

    #[test]
    fn sidecars_live_in_their_own_tree() {
        let store = LocalObjectStore::new(PathBuf::from("/r"));
        let (data, meta) = store.locate("out", "images/j/0.png", "c").unwrap();
        assert_eq!(data, PathBuf::from("/r/out/images/j/0.png"));
        assert_eq!(meta, PathBuf::from("/r/.meta/out/images/j/0.png.json"));
    }

    #[test]
    fn generations_strictly_increase() {
        let store = LocalObjectStore::new(PathBuf::from("/r"));
        let mut last = 0;
        for _ in 0..1000 {
            let next = store.next_generation();
            assert!(next > last);
            last = next;
        }
    }

    #[tokio::test]
    async fn a_file_dropped_in_by_hand_is_listed_and_read() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(root.path().to_path_buf());
        store.ensure_bucket("out").await.unwrap();
        std::fs::create_dir_all(root.path().join("out/hand")).unwrap();
        std::fs::write(root.path().join("out/hand/pic.PNG"), b"not really a png").unwrap();

        let listed = store.list("out", "").await.unwrap();
        assert_eq!(listed.len(), 1);
        let meta = &listed[0];
        assert_eq!(meta.name, "hand/pic.PNG");
        assert_eq!(meta.crc32c, Crc32c::of(b"not really a png"));
        assert_eq!(meta.content_type, "image/png");
        assert!(meta.generation > 0);
        assert_eq!(
            store
                .metadata("out", "hand/pic.PNG")
                .await
                .unwrap()
                .as_ref(),
            Some(meta)
        );

        let mut stream = store
            .read("out", "hand/pic.PNG", ReadRange::from(4))
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), &b"really a png"[..]);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_copy_of_a_file_dropped_in_by_hand_gets_its_metadata_from_the_file() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(root.path().to_path_buf());
        store.ensure_bucket("out").await.unwrap();
        std::fs::write(root.path().join("out/hand.mp4"), b"not really a video").unwrap();
        let uri = |name: &str| GsUri {
            bucket: "out".into(),
            name: name.into(),
        };

        let copy = store
            .copy(&uri("hand.mp4"), &uri("copy/x"), &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(copy.crc32c, Crc32c::of(b"not really a video"));
        assert_eq!(copy.size, 18);
        // Guessed from the source's name: the copy's has no extension.
        assert_eq!(copy.content_type, "video/mp4");
        assert_eq!(
            store.metadata("out", "copy/x").await.unwrap(),
            Some(copy),
            "the sidecar of the copy is believed"
        );
        // No temporary file is left behind.
        let mut names: Vec<_> = std::fs::read_dir(root.path().join("out/copy"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["x"]);
    }

    #[tokio::test]
    async fn a_stale_sidecar_is_not_believed() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(root.path().to_path_buf());
        store.ensure_bucket("out").await.unwrap();
        let written = store
            .write(
                "out",
                "a.txt",
                Bytes::from_static(b"one"),
                "text/x-one",
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        // Someone replaces the file behind the store's back.
        let path = root.path().join("out/a.txt");
        std::fs::write(&path, b"something else").unwrap();
        let meta = store.metadata("out", "a.txt").await.unwrap().unwrap();
        assert_eq!(meta.crc32c, Crc32c::of(b"something else"));
        assert_eq!(meta.size, 14);
        assert_ne!(meta.generation, written.generation);
        assert_eq!(meta.content_type, "text/plain");
    }

    #[tokio::test]
    async fn deleting_prunes_empty_folders_so_the_name_can_be_an_object_again() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(root.path().to_path_buf());
        store.ensure_bucket("out").await.unwrap();
        let none = BTreeMap::new();
        store
            .write(
                "out",
                "a/b/c",
                Bytes::from_static(b"x"),
                "text/plain",
                &none,
            )
            .await
            .unwrap();
        assert!(store.delete("out", "a/b/c").await.unwrap());
        assert!(!root.path().join("out/a").exists());
        assert!(!root.path().join(".meta/out/a").exists());
        assert!(root.path().join("out").is_dir());
        store
            .write("out", "a", Bytes::from_static(b"y"), "text/plain", &none)
            .await
            .unwrap();
        // Now `a` is a file, so `a/b` cannot be stored, and says why.
        let e = store
            .write("out", "a/b", Bytes::from_static(b"z"), "text/plain", &none)
            .await
            .unwrap_err();
        assert!(!e.is_retryable());
        assert!(e.to_string().starts_with("writing gs://out/a/b: "), "{e}");
    }

    #[tokio::test]
    async fn writing_to_a_bucket_that_does_not_exist_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(root.path().to_path_buf());
        let e = store
            .write(
                "nope",
                "a",
                Bytes::from_static(b"x"),
                "text/plain",
                &BTreeMap::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotFound { kind: "bucket", .. }), "{e}");
        assert!(matches!(
            store.list("nope", "").await.unwrap_err(),
            Error::NotFound { kind: "bucket", .. }
        ));
    }
}
