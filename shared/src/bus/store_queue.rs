//! The bus of the embedded store: nobody subscribes to it.
//!
//! On the embedded store there is no Pub/Sub. Workers (a local run, a
//! drain) take pending jobs from the store itself, so a job message would
//! reach no one. This adapter stands where Pub/Sub would, says so through
//! [`Bus::reaches_workers`], and drops what is published to it.

use super::Bus;
use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A bus without subscribers: publishing succeeds and goes nowhere.
#[derive(Debug, Default)]
pub struct StoreQueue {
    dropped: AtomicU64,
}

#[async_trait]
impl Bus for StoreQueue {
    fn describe(&self) -> String {
        "no bus (workers take pending jobs from the store)".to_string()
    }

    fn reaches_workers(&self) -> bool {
        false
    }

    async fn ensure_topic(&self, _topic: &str) -> Result<()> {
        Ok(())
    }

    async fn publish(
        &self,
        topic: &str,
        _data: Bytes,
        _attributes: &BTreeMap<String, String>,
    ) -> Result<String> {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(format!("{topic}/unsent-{n}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishing_succeeds_and_says_it_reaches_no_worker() {
        let bus = StoreQueue::default();
        assert!(!bus.reaches_workers());
        bus.ensure_topic("asmr-image-jobs").await.unwrap();
        let first = bus
            .publish(
                "asmr-image-jobs",
                Bytes::from_static(b"{}"),
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        let second = bus
            .publish(
                "asmr-image-jobs",
                Bytes::from_static(b"{}"),
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        assert_ne!(first, second);
    }
}
