//! The object store port: buckets of immutable objects, as GCS has them.
//!
//! Two adapters: [`gcs`] (Cloud Storage, or fake-gcs-server when
//! `STORAGE_EMULATOR_HOST` is set) and [`local`] (one directory per bucket,
//! for the local run and tests). Reads are streams, so no caller ever holds a
//! whole video in memory.

pub mod gcs;
pub mod local;

use crate::domain::gs_uri::GsUri;
use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::collections::BTreeMap;

/// Custom metadata key naming the job an output belongs to.
pub const JOB_ID_METADATA: &str = "asmr-job-id";

/// What the store knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Bucket name.
    pub bucket: String,
    /// Object name (`images/{job}/0.png`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32C (Castagnoli) of the content, as GCS computes it.
    pub crc32c: crate::crc::Crc32c,
    /// Generation: changes whenever the object is rewritten.
    pub generation: i64,
    /// MIME type.
    pub content_type: String,
    /// Custom metadata.
    pub metadata: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// `gs://bucket/name`.
    pub fn uri(&self) -> GsUri {
        GsUri {
            bucket: self.bucket.clone(),
            name: self.name.clone(),
        }
    }
}

/// A whole object to write: what the generators produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    /// Object name (`images/{job}/0.png`).
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// The bytes.
    pub data: Bytes,
}

/// Which bytes of an object to read: from `start`, up to (not including)
/// `end` when given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte; `None` reads to the end.
    pub end: Option<u64>,
    /// The generation to read; `None` is whichever is live. A read of a
    /// generation that is no longer there is `NotFound`, so a resumed copy
    /// cannot splice the bytes of an object written again onto the first
    /// one's.
    pub generation: Option<i64>,
}

impl ReadRange {
    /// The whole object.
    pub const ALL: ReadRange = ReadRange {
        start: 0,
        end: None,
        generation: None,
    };

    /// From `start` to the end (resuming a copy).
    pub fn from(start: u64) -> Self {
        Self { start, ..Self::ALL }
    }

    /// Bytes `start..end`.
    pub fn segment(start: u64, end: u64) -> Self {
        Self {
            start,
            end: Some(end),
            ..Self::ALL
        }
    }

    /// The same bytes of `generation` only (of any, when `None`).
    pub fn of_generation(self, generation: Option<i64>) -> Self {
        Self { generation, ..self }
    }
}

/// A stream of chunks of an object.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// Buckets of objects.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// One line naming the adapter and where its data lives.
    fn describe(&self) -> String;

    /// Creates a bucket if it does not exist (tests, local run; production
    /// buckets come from terraform).
    async fn ensure_bucket(&self, bucket: &str) -> Result<()>;

    /// Writes a whole object (replacing any previous generation) and returns
    /// its metadata.
    async fn write(
        &self,
        bucket: &str,
        name: &str,
        data: Bytes,
        content_type: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ObjectMeta>;

    /// Streams the bytes of `range`. A missing object is `Error::NotFound`.
    /// The bytes are not checked here: the caller compares the CRC32C of
    /// what it kept with [`ObjectMeta::crc32c`] (the downloader does, over a
    /// resumed copy's earlier part too), so it is computed once.
    async fn read(&self, bucket: &str, name: &str, range: ReadRange) -> Result<ByteStream>;

    /// The object's metadata, `None` if it does not exist.
    async fn metadata(&self, bucket: &str, name: &str) -> Result<Option<ObjectMeta>>;

    /// Every object whose name starts with `prefix`, in name order.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes an object; `false` if it did not exist.
    async fn delete(&self, bucket: &str, name: &str) -> Result<bool>;

    /// Copies an object inside the store, without the bytes passing through
    /// this process where the store allows it (GCS rewrite). The copy keeps
    /// the source's content type and custom metadata, with `metadata` set
    /// over the latter (a key in both takes the value given here); its
    /// CRC32C equals the source's.
    async fn copy(
        &self,
        from: &GsUri,
        to: &GsUri,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ObjectMeta>;

    /// Concatenates `sources` (objects of `bucket`, in this order) into
    /// `destination` of the same bucket, with `content_type`, only if
    /// `destination` is at generation `if_generation_match` (0: only if it
    /// does not exist): a compare-and-set, so appends by concurrent writers
    /// never overwrite each other. `None` when that precondition failed
    /// (someone else changed `destination` first: read it again and retry).
    /// A missing source is `Error::NotFound`.
    async fn compose(
        &self,
        bucket: &str,
        sources: &[&str],
        destination: &str,
        content_type: &str,
        if_generation_match: i64,
    ) -> Result<Option<ObjectMeta>>;
}
