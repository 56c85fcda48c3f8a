//! The Firestore adapter.

use super::backend::{Backend, Collection, Cond, Doc, Query, Stored, Version};
use crate::error::{Error, Result};
use async_trait::async_trait;

/// Where the Firestore documents live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirestoreConfig {
    /// Google Cloud project id.
    pub project: String,
    /// Database id, `(default)` unless set.
    pub database: String,
    /// Prepended to every collection name (`test42_jobs`), so that several
    /// deployments or test runs can share one database.
    pub prefix: String,
}

/// Jobs and downloads in Firestore.
pub struct FirestoreBackend {
    config: FirestoreConfig,
}

impl FirestoreBackend {
    /// Connects with Application Default Credentials, or to the emulator when
    /// `FIRESTORE_EMULATOR_HOST` is set.
    pub async fn connect(config: FirestoreConfig) -> Result<Self> {
        Err(Error::store("connecting to Firestore", format!("{config:?} not built yet"), false))
    }
}

#[async_trait]
impl Backend for FirestoreBackend {
    fn describe(&self) -> String {
        format!("firestore (project {})", self.config.project)
    }
    async fn get(&self, _c: Collection, _id: &str) -> Result<Option<Stored>> {
        Err(Error::store("x", "not built", false))
    }
    async fn create(&self, _c: Collection, _id: &str, _doc: &Doc) -> Result<bool> {
        Err(Error::store("x", "not built", false))
    }
    async fn replace(&self, _c: Collection, _id: &str, _v: &Version, _doc: &Doc) -> Result<bool> {
        Err(Error::store("x", "not built", false))
    }
    async fn delete(&self, _c: Collection, _id: &str, _v: &Version) -> Result<bool> {
        Err(Error::store("x", "not built", false))
    }
    async fn query(&self, _c: Collection, _q: &Query) -> Result<Vec<Stored>> {
        Err(Error::store("x", "not built", false))
    }
    async fn count(&self, _c: Collection, _conds: &[Cond]) -> Result<u64> {
        Err(Error::store("x", "not built", false))
    }
}
