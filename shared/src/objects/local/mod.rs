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
//!   [`crate::domain::paths::relative_path`], the project's one normalisation (no
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
//!
//! The adapter and its `ObjectStore` impl are here; the file work is in
//! `files`, the sidecars in `meta`, the checks of names in `names`.

mod files;
mod meta;
mod names;

use self::files::{
    blocking, copy_counting, io_error, lock_exclusively, missing, prune, read_chunk, replace,
    replace_with, walk,
};
use self::meta::{Sidecar, believed_sidecar, guess_content_type, micros, object_meta};
use self::names::{check_bucket, check_name};
use super::{ByteStream, ObjectMeta, ObjectStore, ReadRange};
use crate::domain::gs_uri::GsUri;
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncSeekExt;

/// The hidden tree that holds the sidecars.
const META_DIR: &str = ".meta";

/// Extension of a sidecar.
const SIDECAR_SUFFIX: &str = ".json";

/// Bytes per chunk of a read.
const CHUNK: usize = 256 * 1024;

/// The file under the sidecar tree whose exclusive lock makes a compose's
/// check of the generation and its write one step, across processes too.
/// Its leading dot keeps it apart from every bucket's sidecar folder.
const COMPOSE_LOCK: &str = ".compose.lock";

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
                crate::beneath::private_dir(&dir)?;
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
        // The file's modification time is its generation (see above).
        if let Some(wanted) = range.generation
            && stat.modified().map(meta::micros).ok() != Some(wanted)
        {
            return Err(not_found(&format!("{uri}#{wanted}")));
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

fn not_found(uri: &str) -> Error {
    Error::NotFound {
        kind: "object",
        id: uri.to_string(),
    }
}

fn gs(bucket: &str, name: &str) -> String {
    format!("gs://{bucket}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

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
