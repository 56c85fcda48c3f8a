//! Appending one line to the manifest, whole and once.
//!
//! - In a directory, the file is opened for appending and locked
//!   exclusively (an advisory lock every appender takes, in this process or
//!   another on the same volume); under the lock a tail left by a writer
//!   that died mid-line is cut back to the last `\n`, the last
//!   [`TAIL_BYTES`] are searched for the same file, and the line goes out in
//!   one `write_all`, then `sync_data`.
//! - In a bucket, objects cannot be appended to: the line is written as an
//!   object of its own and composed after the manifest, conditioned on the
//!   manifest's generation, and tried again when another writer won. The
//!   tail is searched before each try. The lines of one process waiting for
//!   one manifest are composed together ([`Appender`]), since Cloud Storage
//!   takes about one write per second to one object.

use super::{LineKey, MANIFEST_NAME, ManifestLine};
use crate::beneath::{Access, Open, Root};
use crate::domain::destination::Destination;
use crate::error::{Error, Result};
use crate::objects::{ObjectMeta, ObjectStore, ReadRange};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// How much of the manifest's end is searched for a line of the same file.
pub const TAIL_BYTES: u64 = 64 * 1024;
/// The content type of the manifest and of its parts.
const CONTENT_TYPE: &str = "application/x-ndjson";
/// Where a line waits, as an object, to be composed into the manifest.
const PARTS_FOLDER: &str = ".manifest-parts";
/// Tries of a compose that other writers keep beating.
const COMPOSE_TRIES: u32 = 20;
/// The first pause after a lost compose; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two compose tries (Cloud Storage takes about
/// one write per second to one object).
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The line is now the manifest's last.
    Written,
    /// A line for the same path and CRC32C was already there.
    Duplicate,
}

/// Appends `line` to the manifest of `destination`.
pub async fn append(
    appender: &Appender,
    objects: &dyn ObjectStore,
    destination: &Destination,
    line: &ManifestLine,
) -> Result<Appended> {
    match destination {
        Destination::Directory(root) => append_to_directory(root, line).await,
        Destination::Bucket { bucket, prefix } => {
            append_to_bucket(appender, objects, bucket, prefix, line).await
        }
    }
}

/// Appends `line` to `root/manifest.jsonl` under an exclusive lock (see
/// the module). A `manifest.jsonl` that is a link, or not a plain file, is
/// refused ([`crate::beneath`]): never appended to, never cut.
pub async fn append_to_directory(root: &Path, line: &ManifestLine) -> Result<Appended> {
    let context = format!("appending to {}", root.join(MANIFEST_NAME).display());
    let bytes = line.to_bytes()?;
    let key = line.key();
    let root = root.to_path_buf();
    super::blocking(&context, move || append_locked(&root, &bytes, &key)).await
}

/// The blocking part of [`append_to_directory`].
fn append_locked(root: &Path, line: &[u8], key: &LineKey) -> io::Result<Appended> {
    let root = Root::open(root, Access::Shared)?;
    let mut file = root.file(Path::new(MANIFEST_NAME), Open::Append)?;
    file.lock()?;
    let appended = append_under_lock(&mut file, line, key);
    let unlocked = file.unlock();
    let appended = appended?;
    unlocked?;
    Ok(appended)
}

/// Repairs a torn tail, skips a duplicate, appends: the caller holds the
/// lock.
fn append_under_lock(file: &mut File, line: &[u8], key: &LineKey) -> io::Result<Appended> {
    let len = file.metadata()?.len();
    let mut tail = read_at(file, len.saturating_sub(TAIL_BYTES), len)?;
    if tail.last().is_some_and(|last| *last != b'\n') {
        let whole = whole_lines_end(file, len, &tail)?;
        tracing::warn!(
            cut = len - whole,
            event = "manifest_tail_repaired",
            "the manifest ended mid-line (a writer stopped while appending); cutting the torn line"
        );
        file.set_len(whole)?;
        tail = read_at(file, whole.saturating_sub(TAIL_BYTES), whole)?;
    }
    if key.is_among(&tail) {
        return Ok(Appended::Duplicate);
    }
    file.write_all(line)?;
    file.sync_data()?;
    Ok(Appended::Written)
}

/// The length of the file up to and including its last `\n` (0 if it has
/// none): `tail` is its last bytes, up to `len`; past them the file is
/// searched backwards.
fn whole_lines_end(file: &mut File, len: u64, tail: &[u8]) -> io::Result<u64> {
    let mut end = len;
    let mut chunk = tail.to_vec();
    loop {
        let start = end - chunk.len() as u64;
        if let Some(at) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        if start == 0 {
            return Ok(0);
        }
        end = start;
        chunk = read_at(file, end.saturating_sub(TAIL_BYTES), end)?;
    }
}

/// Bytes `start..end` of `file`.
fn read_at(file: &mut File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; usize::try_from(end - start).unwrap_or(0)];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The appends of one process to bucket manifests, made together: Cloud
/// Storage takes about one write per second to one object, so each compose
/// takes every line that is waiting for the same manifest, up to
/// [`MAX_BATCH`], instead of one. Each appender's line is written first, as
/// an object of its own, and its append returns once that line is in the
/// manifest (or known to be there).
#[derive(Default)]
pub struct Appender {
    manifests: Mutex<HashMap<String, Arc<Batch>>>,
}

/// The lines waiting for one manifest, and the turn to compose it.
#[derive(Default)]
struct Batch {
    waiting: Mutex<Vec<Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

/// A line written as a part, waiting to be composed.
struct Waiting {
    part: String,
    key: LineKey,
    done: oneshot::Sender<Result<Appended>>,
}

/// The most parts one compose takes: Cloud Storage composes at most 32
/// sources, and the manifest is the first.
const MAX_BATCH: usize = 31;

impl Appender {
    fn batch(&self, manifest: &str) -> Arc<Batch> {
        let mut manifests = self
            .manifests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        manifests.entry(manifest.to_string()).or_default().clone()
    }
}

/// Appends `line` to `gs://bucket/{prefix}manifest.jsonl` by compose (see
/// the module), with the other lines `appender` has waiting for it.
pub async fn append_to_bucket(
    appender: &Appender,
    objects: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    line: &ManifestLine,
) -> Result<Appended> {
    let manifest = format!("{prefix}{MANIFEST_NAME}");
    let part = format!(
        "{prefix}{PARTS_FOLDER}/{}.jsonl",
        uuid::Uuid::new_v4().simple()
    );
    let bytes = bytes::Bytes::from(line.to_bytes()?);
    objects
        .write(bucket, &part, bytes, CONTENT_TYPE, &BTreeMap::new())
        .await?;
    let batch = appender.batch(&format!("{bucket}/{manifest}"));
    let (done, mut result) = oneshot::channel();
    batch
        .waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Waiting {
            part,
            key: line.key(),
            done,
        });
    loop {
        // Whoever has the turn composes every line waiting, this one
        // included unless an earlier turn took it.
        let turn = batch.turn.lock().await;
        if let Some(appended) = answered(&mut result, bucket, &manifest) {
            return appended;
        }
        let waiting: Vec<Waiting> = {
            let mut queue = batch.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let take = queue.len().min(MAX_BATCH);
            queue.drain(..take).collect()
        };
        compose_batch(objects, bucket, &manifest, waiting).await;
        drop(turn);
        if let Some(appended) = answered(&mut result, bucket, &manifest) {
            return appended;
        }
    }
}

/// The outcome of this line's append once a turn has told it. A turn that
/// took the line and was then dropped (its own copy timed out) tells
/// nothing: the append fails as retryable, and the copy's next attempt
/// appends the line again (or finds it there).
fn answered(
    result: &mut oneshot::Receiver<Result<Appended>>,
    bucket: &str,
    manifest: &str,
) -> Option<Result<Appended>> {
    match result.try_recv() {
        Ok(appended) => Some(appended),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => Some(Err(Error::objects(
            format!("appending to gs://{bucket}/{manifest}"),
            "the compose that took this line was interrupted",
            true,
        ))),
    }
}

/// Composes the parts of `waiting` after the manifest, leaving out lines
/// already in its tail; tells each its outcome and deletes the parts.
async fn compose_batch(
    objects: &dyn ObjectStore,
    bucket: &str,
    manifest: &str,
    waiting: Vec<Waiting>,
) {
    let outcome = compose_parts(objects, bucket, manifest, &waiting).await;
    for (n, waiter) in waiting.into_iter().enumerate() {
        if let Err(e) = objects.delete(bucket, &waiter.part).await {
            tracing::warn!(error = %e, part = waiter.part, "a manifest part was left behind");
        }
        let result = match &outcome {
            Ok(appended) => Ok(appended[n]),
            Err(e) => Err(Error::objects(
                format!("appending to gs://{bucket}/{manifest}"),
                e.to_string(),
                e.is_retryable(),
            )),
        };
        // The appender may have stopped waiting (its copy timed out).
        let _ = waiter.done.send(result);
    }
}

/// The loop of [`compose_batch`]: read the manifest's generation and tail,
/// compose the parts not yet in it at that generation; again when another
/// writer composed first. The outcome of each part, in order.
async fn compose_parts(
    objects: &dyn ObjectStore,
    bucket: &str,
    manifest: &str,
    waiting: &[Waiting],
) -> Result<Vec<Appended>> {
    let mut pause = FIRST_PAUSE;
    for _ in 0..COMPOSE_TRIES {
        let current = objects.metadata(bucket, manifest).await?;
        let tail = match &current {
            Some(meta) => tail_of(objects, meta).await?,
            None => Vec::new(),
        };
        let outcomes: Vec<Appended> = waiting
            .iter()
            .map(|w| match w.key.is_among(&tail) {
                true => Appended::Duplicate,
                false => Appended::Written,
            })
            .collect();
        let mut sources: Vec<&str> = Vec::new();
        if current.is_some() {
            sources.push(manifest);
        }
        sources.extend(
            waiting
                .iter()
                .zip(&outcomes)
                .filter(|(_, outcome)| **outcome == Appended::Written)
                .map(|(w, _)| w.part.as_str()),
        );
        if sources.len() == usize::from(current.is_some()) {
            return Ok(outcomes);
        }
        let generation = current.map_or(0, |meta| meta.generation);
        match objects
            .compose(bucket, &sources, manifest, CONTENT_TYPE, generation)
            .await
        {
            Ok(Some(_)) => return Ok(outcomes),
            Ok(None) => {}
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, "composing the manifest again");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(jittered(pause)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
    Err(Error::objects(
        format!("appending to gs://{bucket}/{manifest}"),
        format!("other writers changed it first {COMPOSE_TRIES} times in a row"),
        true,
    ))
}

/// The last [`TAIL_BYTES`] of the manifest `meta` describes.
async fn tail_of(objects: &dyn ObjectStore, meta: &ObjectMeta) -> Result<Vec<u8>> {
    let range = ReadRange::segment(meta.size.saturating_sub(TAIL_BYTES), meta.size);
    let mut stream = objects.read(&meta.bucket, &meta.name, range).await?;
    let mut tail = Vec::new();
    while let Some(chunk) = stream.next().await {
        tail.extend_from_slice(&chunk?);
    }
    Ok(tail)
}

/// `pause` scaled by a random factor between 0.5 and 1.5, so writers that
/// collided do not collide again in step.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(0.5 + rand::random::<f64>())
}
