//! Counting wrappers around the store and bus ports: how many round trips
//! and publishes a stage makes per file or per job, which at scale is the
//! running cost and the contention limit.

use async_trait::async_trait;
use bytes::Bytes;
use shared::bus::Bus;
use shared::error::Result;
use shared::store::backend::{Backend, Collection, Cond, Doc, Query, Stored, Version, Write};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Round trips to the store, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trips {
    /// Single-document reads.
    pub reads: u64,
    /// Queries and counts.
    pub queries: u64,
    /// Single-document writes (create, replace, delete).
    pub writes: u64,
    /// Multi-write atomic commits.
    pub commits: u64,
    /// Conditional writes and commits refused because a document had
    /// changed: contention.
    pub conflicts: u64,
    /// Document reads as Firestore bills them: one per document read or
    /// returned by a query (one for a query that returns none), and one
    /// per 1000 index entries a count matches (at least one).
    pub billed_reads: u64,
}

impl Trips {
    /// Every round trip.
    pub fn total(&self) -> u64 {
        self.reads + self.queries + self.writes + self.commits
    }

    /// What happened between `earlier` and this.
    pub fn since(&self, earlier: &Trips) -> Trips {
        Trips {
            reads: self.reads - earlier.reads,
            queries: self.queries - earlier.queries,
            writes: self.writes - earlier.writes,
            commits: self.commits - earlier.commits,
            conflicts: self.conflicts - earlier.conflicts,
            billed_reads: self.billed_reads - earlier.billed_reads,
        }
    }
}

/// A backend that counts what passes through it, per collection written.
pub struct Counting {
    inner: Arc<dyn Backend>,
    trips: Mutex<Trips>,
    /// When each document (`collection/id`) was written, for the hot ones.
    per_document: Mutex<BTreeMap<String, Vec<Instant>>>,
}

/// How hard one document was written.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteRate {
    /// `collection/id`.
    pub document: String,
    /// Writes in all.
    pub writes: usize,
    /// Writes per second in its busiest window.
    pub busiest_per_second: f64,
}

impl Counting {
    /// Counts the calls to `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            trips: Mutex::new(Trips::default()),
            per_document: Mutex::new(BTreeMap::new()),
        }
    }

    /// The counts so far.
    pub fn trips(&self) -> Trips {
        *self.trips.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the writes counted per document so far.
    pub fn forget_writes(&self) {
        self.per_document
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Every document written, with its writes per second in its busiest
    /// `window` (the whole count over `window` when it never spans one), the
    /// hottest first.
    pub fn rates(&self, window: Duration) -> Vec<WriteRate> {
        let per_document = self
            .per_document
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seconds = window.as_secs_f64();
        let mut all: Vec<WriteRate> = per_document
            .iter()
            .map(|(document, times)| {
                // Two pointers over the sorted times: the most writes within
                // any `window`.
                let mut busiest = 0;
                let mut start = 0;
                for (end, at) in times.iter().enumerate() {
                    while at.duration_since(times[start]) >= window {
                        start += 1;
                    }
                    busiest = busiest.max(end + 1 - start);
                }
                WriteRate {
                    document: document.clone(),
                    writes: times.len(),
                    busiest_per_second: busiest as f64 / seconds,
                }
            })
            .collect();
        all.sort_by(|a, b| b.busiest_per_second.total_cmp(&a.busiest_per_second));
        all
    }

    fn count(&self, change: impl FnOnce(&mut Trips)) {
        change(&mut self.trips.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn wrote(&self, collection: Collection, id: &str) {
        self.per_document
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(format!("{}/{id}", collection.name()))
            .or_default()
            .push(Instant::now());
    }
}

#[async_trait]
impl Backend for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, collection: Collection, id: &str) -> Result<Option<Stored>> {
        self.count(|t| {
            t.reads += 1;
            t.billed_reads += 1;
        });
        self.inner.get(collection, id).await
    }

    async fn create(&self, collection: Collection, id: &str, doc: &Doc) -> Result<Option<Version>> {
        self.count(|t| t.writes += 1);
        self.wrote(collection, id);
        let created = self.inner.create(collection, id, doc).await?;
        if created.is_none() {
            self.count(|t| t.conflicts += 1);
        }
        Ok(created)
    }

    async fn replace(
        &self,
        collection: Collection,
        id: &str,
        expected: &Version,
        doc: &Doc,
    ) -> Result<bool> {
        self.count(|t| t.writes += 1);
        self.wrote(collection, id);
        let written = self.inner.replace(collection, id, expected, doc).await?;
        if !written {
            self.count(|t| t.conflicts += 1);
        }
        Ok(written)
    }

    async fn commit(&self, writes: &[Write]) -> Result<bool> {
        self.count(|t| t.commits += 1);
        for write in writes {
            let (collection, id) = match write {
                Write::Create { collection, id, .. }
                | Write::Replace { collection, id, .. }
                | Write::Delete { collection, id, .. } => (*collection, id),
            };
            self.wrote(collection, id);
        }
        let written = self.inner.commit(writes).await?;
        if !written {
            self.count(|t| t.conflicts += 1);
        }
        Ok(written)
    }

    async fn delete(&self, collection: Collection, id: &str, expected: &Version) -> Result<bool> {
        self.count(|t| t.writes += 1);
        self.inner.delete(collection, id, expected).await
    }

    async fn query(&self, collection: Collection, query: &Query) -> Result<Vec<Stored>> {
        let found = self.inner.query(collection, query).await?;
        self.count(|t| {
            t.queries += 1;
            t.billed_reads += (found.len() as u64).max(1);
        });
        Ok(found)
    }

    async fn count(&self, collection: Collection, conds: &[Cond]) -> Result<u64> {
        let n = self.inner.count(collection, conds).await?;
        self.count(|t| {
            t.queries += 1;
            t.billed_reads += n.div_ceil(1000).max(1);
        });
        Ok(n)
    }
}

/// A bus that counts publishes, per topic.
pub struct CountingBus {
    inner: Arc<dyn Bus>,
    published: AtomicU64,
}

impl CountingBus {
    /// Counts the publishes to `inner`.
    pub fn new(inner: Arc<dyn Bus>) -> Self {
        Self {
            inner,
            published: AtomicU64::new(0),
        }
    }

    /// Publishes so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Bus for CountingBus {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        self.inner.ensure_topic(topic).await
    }

    async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String> {
        self.published.fetch_add(1, Ordering::SeqCst);
        self.inner.publish(topic, data, attributes).await
    }
}
