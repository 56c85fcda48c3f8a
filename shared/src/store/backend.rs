//! The storage port: versioned JSON documents with compare-and-set writes and
//! a small query language. [`crate::store::Store`] builds every job and
//! download operation on it, so the adapters hold no business logic.

use crate::error::Result;
use crate::time::Timestamp;
use async_trait::async_trait;
use serde_json::{Map, Value};

/// A document body: a JSON object whose `id` field repeats the document id.
pub type Doc = Map<String, Value>;

/// The collections asmr keeps. Adapters add their configured prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Collection {
    /// `jobs/{job_id}`
    Jobs,
    /// `downloads/{download_id}`
    Downloads,
    /// `rejected/{message_id}`: requests intake could not accept.
    Rejected,
    /// `budgets/{YYYY-MM-DD}`: the cost guard's reservations of one UTC day.
    Budgets,
    /// `outbox/{event_id}`: job events written with the transition that
    /// raised them, until they are published.
    Outbox,
    /// `held/{job_id}.{output}.{chunk}`: the bytes of paid outputs the
    /// output bucket would not take yet.
    Held,
    /// `tenants/{name}`: the teams sharing the deployment.
    Tenants,
    /// `charges/{id}`: what each settled paid attempt held and spent.
    Charges,
    /// `limits/{tenant}.{class}.{minute}`: requests a tenant's rate limit
    /// handed out in one minute.
    Limits,
    /// `webhooks/{id}`: webhook deliveries, one per job event sent.
    Webhooks,
}

impl Collection {
    /// Every collection.
    pub const ALL: [Collection; 10] = [
        Collection::Jobs,
        Collection::Downloads,
        Collection::Rejected,
        Collection::Budgets,
        Collection::Outbox,
        Collection::Held,
        Collection::Tenants,
        Collection::Charges,
        Collection::Limits,
        Collection::Webhooks,
    ];

    /// The unprefixed name.
    pub fn name(self) -> &'static str {
        match self {
            Collection::Jobs => "jobs",
            Collection::Downloads => "downloads",
            Collection::Rejected => "rejected",
            Collection::Budgets => "budgets",
            Collection::Outbox => "outbox",
            Collection::Held => "held",
            Collection::Tenants => "tenants",
            Collection::Charges => "charges",
            Collection::Limits => "limits",
            Collection::Webhooks => "webhooks",
        }
    }

    /// Top-level fields that hold a [`Timestamp`]. Adapters with a native time
    /// type (Firestore) store these as such, so that TTL policies and the
    /// console see times, not text.
    pub fn timestamp_fields(self) -> &'static [&'static str] {
        match self {
            Collection::Jobs => &[
                "created_at",
                "updated_at",
                "completed_at",
                "expire_at",
                "lease_expires_at",
            ],
            Collection::Downloads => &[
                "created_at",
                "updated_at",
                "started_at",
                "completed_at",
                "expire_at",
                "lease_expires_at",
            ],
            Collection::Rejected => &["received_at", "expire_at"],
            Collection::Budgets => &["updated_at", "expire_at"],
            Collection::Outbox => &["created_at"],
            Collection::Held => &["expire_at"],
            Collection::Tenants => &["created_at", "updated_at"],
            Collection::Charges => &["settled_at", "expire_at"],
            Collection::Limits => &["expire_at"],
            Collection::Webhooks => &[
                "created_at",
                "next_at",
                "give_up_at",
                "lease_until",
                "last_attempt_at",
                "delivered_at",
                "expire_at",
            ],
        }
    }
}

/// An opaque token for the state of a document when it was read. A write
/// conditioned on it fails if anyone wrote the document since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

/// A document as read, with its id and version.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// Document id.
    pub id: String,
    /// The document's fields.
    pub doc: Doc,
    /// Version for compare-and-set.
    pub version: Version,
}

/// A value in a query condition or cursor.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// A UTF-8 string.
    Str(String),
    /// Whole number.
    Int(i64),
    /// A point in time.
    Time(Timestamp),
}

/// One condition of a query; a query ANDs its conditions.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    /// `field == value`
    Eq(&'static str, Scalar),
    /// `field` is one of the values.
    In(&'static str, Vec<Scalar>),
    /// `field < value`; documents without the field (or with null) never match.
    Lt(&'static str, Scalar),
    /// `field >= value`; documents without the field (or with null) never
    /// match.
    Ge(&'static str, Scalar),
}

/// Sort direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// A query over one collection. The last order field must be `id`, so that
/// the order is total and `after` cursors are exact.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// Conditions, all of which must hold.
    pub conds: Vec<Cond>,
    /// Sort order.
    pub order: Vec<(&'static str, Dir)>,
    /// Start after the document with these values of the order fields.
    pub after: Option<Vec<Scalar>>,
    /// Most documents to return.
    pub limit: u32,
}

/// One write of an atomic [`Backend::commit`].
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create `id`, which must not exist.
    Create {
        /// The collection holding the document.
        collection: Collection,
        /// Document id.
        id: String,
        /// The document's fields.
        doc: Doc,
    },
    /// Replace `id`, which must still be at `expected`.
    Replace {
        /// The collection holding the document.
        collection: Collection,
        /// Document id.
        id: String,
        /// The version it was read at.
        expected: Version,
        /// New body.
        doc: Doc,
    },
    /// Delete `id`: if it is still at `expected`, or whatever its version
    /// when `expected` is `None`. A document that does not exist is no
    /// conflict.
    Delete {
        /// The collection holding the document.
        collection: Collection,
        /// Document id.
        id: String,
        /// The version it was read at, if it must not have changed.
        expected: Option<Version>,
    },
}

impl Write {
    /// The write of `doc` as `id` over what was read of it: a replace at
    /// `version`, or a create when it was absent (`None`), so that either
    /// fails if someone wrote it since.
    pub fn over(collection: Collection, id: String, version: Option<Version>, doc: Doc) -> Self {
        match version {
            Some(expected) => Write::Replace {
                collection,
                id,
                expected,
                doc,
            },
            None => Write::Create {
                collection,
                id,
                doc,
            },
        }
    }
}

/// A store of versioned documents. Every write is conditional, which is what
/// makes claims safe with many writers.
#[async_trait]
pub trait Backend: Send + Sync {
    /// One line naming the adapter and where its data lives.
    fn describe(&self) -> String;

    /// Reads one document.
    async fn get(&self, collection: Collection, id: &str) -> Result<Option<Stored>>;

    /// Creates a document unless one with that id exists: the new
    /// document's version if created, `None` if it existed.
    async fn create(&self, collection: Collection, id: &str, doc: &Doc) -> Result<Option<Version>>;

    /// Replaces a document if it is still at `expected`. `true` if written;
    /// `false` if it changed or vanished since it was read.
    async fn replace(
        &self,
        collection: Collection,
        id: &str,
        expected: &Version,
        doc: &Doc,
    ) -> Result<bool>;

    /// Applies every write or none: `true` if all preconditions held and all
    /// were written, `false` (nothing written) if any did not.
    async fn commit(&self, writes: &[Write]) -> Result<bool>;

    /// Deletes a document if it is still at `expected`. `true` if deleted.
    async fn delete(&self, collection: Collection, id: &str, expected: &Version) -> Result<bool>;

    /// Runs a query.
    async fn query(&self, collection: Collection, query: &Query) -> Result<Vec<Stored>>;

    /// Counts the documents matching every condition.
    async fn count(&self, collection: Collection, conds: &[Cond]) -> Result<u64>;
}
