//! The outbox of job events. A transition that ends a job writes its event
//! to `outbox/{event_id}` in the same commit (see `Store::put`); the event is
//! then published and its entry deleted, in the background: the caller (a
//! push handler) answers without waiting for Pub/Sub. A process that ends
//! waits for those publishes with [`Store::flush_events`]; what a crash or a
//! Pub/Sub outage left behind is published by [`Store::publish_outbox`],
//! which the janitor runs.

use super::backend::{Collection, Cond, Dir, Scalar, Write};
use super::{Store, from_stored_as};
use crate::error::Result;
use crate::job_events::{JobEvent, OutboxEntry};
use crate::time::Timestamp;
use std::time::Duration;

/// How long the relay of a fresh event waits for Pub/Sub.
const RELAY_PATIENCE: Duration = Duration::from_secs(2);

/// What a sweep of the outbox did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxReport {
    /// Events published (and removed from the outbox).
    pub published: u64,
    /// Events that could not be published; they stay for the next sweep.
    pub failed: u64,
}

/// The publishes of fresh events under way.
#[derive(Default)]
pub(super) struct Relays(std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>);

impl Relays {
    fn add(&self, relay: tokio::task::JoinHandle<()>) {
        let mut relays = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        relays.retain(|r| !r.is_finished());
        relays.push(relay);
    }

    fn take(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The longest [`Store::flush_events`] waits.
const FLUSH_PATIENCE: Duration = Duration::from_secs(5);

impl Store {
    /// Publishes an event just written to the outbox, then deletes its
    /// entry, in the background.
    pub(super) fn relay(&self, event: JobEvent) {
        let store = self.clone();
        self.relays.add(tokio::spawn(
            async move { store.publish_fresh(&event).await },
        ));
    }

    /// Waits (a few seconds at most) for the publishes of fresh events still
    /// under way: what a process does before it ends. An event not
    /// published by then stays in the outbox for the janitor.
    pub async fn flush_events(&self) {
        let relays = self.relays.take();
        if relays.is_empty() {
            return;
        }
        let all = futures::future::join_all(relays);
        if tokio::time::timeout(FLUSH_PATIENCE, all).await.is_err() {
            tracing::warn!(
                "job events still publishing at exit stay in the outbox for the janitor"
            );
        }
    }

    /// Publishes an event just written to the outbox, then deletes its entry.
    /// On failure the entry stays, for [`Store::publish_outbox`].
    async fn publish_fresh(&self, event: &JobEvent) {
        let Some(events) = &self.events else {
            return;
        };
        // The write is already in; a slow Pub/Sub must not hold up the
        // caller (a push handler): what is not published in time is left to
        // the janitor.
        let published = tokio::time::timeout(RELAY_PATIENCE, events.publish(event))
            .await
            .unwrap_or_else(|_| {
                Err(crate::error::Error::store(
                    "publishing a job event",
                    format!("Pub/Sub did not take it within {RELAY_PATIENCE:?}"),
                    true,
                ))
            });
        match published {
            Ok(()) => {
                if let Err(error) = self.forget_event(&event.event_id).await {
                    tracing::warn!(
                        event_id = %event.event_id,
                        job_id = %event.job_id,
                        %error,
                        "a published job event stays in the outbox; the janitor will publish it again (same event_id)"
                    );
                }
            }
            Err(error) => tracing::warn!(
                event = "job_event.deferred",
                event_id = %event.event_id,
                job_id = %event.job_id,
                status = event.status.as_str(),
                %error,
                "job event not published yet; it waits in the outbox for the janitor"
            ),
        }
    }

    async fn forget_event(&self, event_id: &str) -> Result<()> {
        self.backend
            .commit(&[Write::Delete {
                collection: Collection::Outbox,
                id: event_id.to_string(),
                expected: None,
            }])
            .await
            .map(|_| ())
    }

    /// Publishes every outbox entry written more than `older_than` ago (a
    /// relay that failed, or a process that stopped between its commit and
    /// its publish), oldest first, and deletes each one published. Without
    /// job events configured there is nothing to publish to, and nothing is
    /// done.
    pub async fn publish_outbox(&self, older_than: Duration) -> Result<OutboxReport> {
        let Some(events) = &self.events else {
            return Ok(OutboxReport::default());
        };
        let cutoff = Timestamp::now().minus(older_than);
        let conds = vec![Cond::Lt("created_at", Scalar::Time(cutoff))];
        let order = [("created_at", Dir::Asc), ("id", Dir::Asc)];
        let mut report = OutboxReport::default();
        for stored in self.sweep(Collection::Outbox, conds, &order).await? {
            let (entry, _) = from_stored_as::<OutboxEntry>(Collection::Outbox, stored)?;
            match events.publish(&entry.event).await {
                Ok(()) => {
                    self.forget_event(&entry.id).await?;
                    tracing::info!(
                        event = "job_event.republished",
                        event_id = %entry.id,
                        job_id = %entry.event.job_id,
                        status = entry.event.status.as_str(),
                        "job event published from the outbox"
                    );
                    report.published += 1;
                }
                Err(error) => {
                    tracing::error!(
                        event_id = %entry.id,
                        job_id = %entry.event.job_id,
                        %error,
                        "could not publish a job event from the outbox; it stays there"
                    );
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// Events waiting in the outbox.
    pub async fn outbox_len(&self) -> Result<u64> {
        self.backend.count(Collection::Outbox, &[]).await
    }
}
