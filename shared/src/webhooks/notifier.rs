//! The notifier: turns job events into webhook deliveries and sends them.
//!
//! A pushed job event that carries a webhook call becomes a delivery
//! record per webhook event (created once, whoever brings the event first)
//! and is acknowledged; the sending happens beside the push, so a slow
//! receiver holds no push. Each tenant has a lane per instance: its
//! deliveries wait there in order and a few sending slots take from it, one
//! after another, so a receiver that hangs fills its own tenant's slots and
//! nobody else's, and a tenant's burst moves as fast as its slots allow.
//! What is not sent at once (a refusal, an instance that stopped) is found
//! by the sweep, which queues every due delivery again, on its schedule,
//! for a day.

use super::send::Sender;
use crate::ack::Handled;
use crate::domain::tenant::TenantName;
use crate::domain::webhook_delivery::{Answer, Delivery, DeliveryState, RetrySchedule};
use crate::error::Result;
use crate::job_events::JobEvent;
use crate::store::Store;
use crate::time::Timestamp;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How the notifier sends.
#[derive(Clone, Debug)]
pub struct NotifierSettings {
    /// When a refused delivery is tried again, and for how long.
    pub schedule: RetrySchedule,
    /// Deliveries of one tenant in flight at once, per instance.
    pub per_tenant: usize,
    /// How long a sender holds a delivery: longer than an attempt.
    pub lease: Duration,
    /// Due deliveries taken by one sweep.
    pub sweep_batch: u32,
}

impl Default for NotifierSettings {
    fn default() -> Self {
        Self {
            schedule: RetrySchedule::default(),
            per_tenant: 8,
            lease: Duration::from_secs(60),
            sweep_batch: 200,
        }
    }
}

/// One tenant's deliveries waiting to be sent by this instance, and the
/// slots that send them.
struct Lane {
    slots: Arc<Semaphore>,
    waiting: Mutex<(VecDeque<String>, HashSet<String>)>,
}

impl Lane {
    /// Adds `id` unless it waits already; whether it was added.
    fn queue(&self, id: String) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (order, known) = &mut *waiting;
        if !known.insert(id.clone()) {
            return false;
        }
        order.push_back(id);
        true
    }

    fn next(&self) -> Option<String> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (order, known) = &mut *waiting;
        let id = order.pop_front()?;
        known.remove(&id);
        Some(id)
    }

    fn is_empty(&self) -> bool {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.0.is_empty()
    }
}

/// The notifier of one instance (a clone shares its lanes).
#[derive(Clone)]
pub struct Notifier {
    store: Store,
    sender: Sender,
    settings: NotifierSettings,
    owner: String,
    lanes: Arc<Mutex<HashMap<TenantName, Arc<Lane>>>>,
}

impl Notifier {
    /// A notifier over `store`, sending with `sender`.
    pub fn new(store: Store, sender: Sender, settings: NotifierSettings) -> Self {
        Self {
            store,
            sender,
            settings,
            owner: format!("notifier-{}", uuid::Uuid::new_v4().simple()),
            lanes: Arc::default(),
        }
    }

    /// Records the deliveries `event` asks for (one per webhook event it
    /// makes) and starts sending them.
    pub async fn handle(&self, event: JobEvent) -> Handled {
        let Some(call) = &event.webhook else {
            return Handled::Ignored(format!(
                "job event {} of job {} asks for no webhook",
                event.event_id, event.job_id
            ));
        };
        let mut recorded = Vec::with_capacity(call.events.len());
        for kind in &call.events {
            let delivery = Delivery::new(
                &event.event_id,
                &event.job_id,
                event.tenant.clone(),
                &call.url,
                *kind,
                call.body.clone(),
                &self.settings.schedule,
                Timestamp::now(),
            );
            match self.store.record_webhook(delivery).await {
                Ok(created) => recorded.push(created),
                Err(e) => return Handled::store_trouble(&e),
            }
        }
        let ids: Vec<String> = recorded.iter().map(|r| r.record.id.clone()).collect();
        let new = recorded.iter().any(|r| r.created);
        for created in recorded {
            self.kick(created.record);
        }
        match new {
            true => Handled::Done(format!("webhooks {} recorded", ids.join(", "))),
            false => {
                Handled::Duplicate(format!("webhooks {} were recorded before", ids.join(", ")))
            }
        }
    }

    /// Queues every delivery that is due for sending; how many it queued.
    pub async fn sweep(&self) -> Result<usize> {
        let due = self
            .store
            .due_webhooks(Timestamp::now(), self.settings.sweep_batch)
            .await?;
        Ok(due
            .into_iter()
            .map(|delivery| self.kick(delivery))
            .filter(|started| *started)
            .count())
    }

    /// Sweeps every `every` for as long as the process lives.
    pub fn sweep_every(&self, every: Duration) {
        let notifier = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(e) = notifier.sweep().await {
                    tracing::warn!(event = "webhook_sweep_failed", error = %e, "webhook sweep failed");
                }
            }
        });
    }

    /// Queues `delivery` on its tenant's lane if it is due, and starts a
    /// sender there if a slot is free; whether it was queued.
    fn kick(&self, delivery: Delivery) -> bool {
        if !delivery.is_due(Timestamp::now()) {
            return false;
        }
        let lane = self.lane(&delivery.tenant);
        if !lane.queue(delivery.id) {
            return false;
        }
        self.drive(lane);
        true
    }

    /// Starts a sender on `lane` if one of its slots is free. A sender
    /// sends what the lane holds, one after another, until it is empty:
    /// so a tenant's backlog moves as fast as its slots allow, and a slot
    /// that frees picks up the next delivery at once.
    fn drive(&self, lane: Arc<Lane>) {
        let Ok(permit) = lane.slots.clone().try_acquire_owned() else {
            // Every slot is sending, and each takes from the lane.
            return;
        };
        let notifier = self.clone();
        tokio::spawn(async move {
            let mut permit = Some(permit);
            loop {
                if let Some(id) = lane.next() {
                    if let Err(e) = notifier.attempt(&id).await {
                        tracing::warn!(event = "webhook_attempt_failed", webhook_id = %id, error = %e, "webhook attempt not recorded; the sweep tries again");
                    }
                    continue;
                }
                // Empty: give the slot back, then look once more, since a
                // delivery queued meanwhile may have found every slot taken.
                drop(permit.take());
                if lane.is_empty() {
                    break;
                }
                match lane.slots.clone().try_acquire_owned() {
                    Ok(again) => permit = Some(again),
                    Err(_) => break,
                }
            }
        });
    }

    fn lane(&self, tenant: &TenantName) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Lane {
                    slots: Arc::new(Semaphore::new(self.settings.per_tenant.max(1))),
                    waiting: Mutex::default(),
                })
            })
            .clone()
    }

    /// Takes delivery `id` if it is due, sends it once and records the
    /// answer; `None` when it was not due or another sender holds it.
    pub async fn attempt(&self, id: &str) -> Result<Option<Delivery>> {
        match self
            .store
            .take_webhook(id, &self.owner, self.settings.lease)
            .await?
        {
            Some(delivery) => self.send_held(delivery).await,
            None => Ok(None),
        }
    }

    /// Makes delivery `id` due again for a full window, whatever became of
    /// it, takes it in the same write and sends it once (`asmr webhooks
    /// redeliver`); `None` when another sender holds it right now.
    pub async fn redeliver(&self, id: &str) -> Result<Option<Delivery>> {
        match self
            .store
            .rearm_webhook(
                id,
                &self.owner,
                self.settings.lease,
                &self.settings.schedule,
            )
            .await?
        {
            Some(delivery) => self.send_held(delivery).await,
            None => Ok(None),
        }
    }

    /// Sends `delivery`, which this notifier holds, once, and records the
    /// answer.
    async fn send_held(&self, delivery: Delivery) -> Result<Option<Delivery>> {
        let (id, owner) = (delivery.id.as_str(), &self.owner);
        let tenant = self
            .store
            .tenant_with_webhook_secret(&delivery.tenant)
            .await?;
        if tenant.is_gone(&delivery.url) {
            return self.store.stop_webhook(id, owner).await;
        }
        let answer = self
            .sender
            .send(&delivery, &tenant.webhook_secrets(Timestamp::now()))
            .await;
        if answer == Answer::Gone {
            self.store
                .change_tenant(tenant.name(), |tenant, now| {
                    tenant.set_gone(&delivery.url, true, now);
                    Ok(())
                })
                .await?;
        }
        let settled = self
            .store
            .settle_webhook(id, owner, &answer, &self.settings.schedule)
            .await?;
        if let Some(settled) = &settled {
            log(settled);
        }
        Ok(settled)
    }
}

fn log(delivery: &Delivery) {
    let answer = delivery.last_answer.as_deref().unwrap_or("-");
    match delivery.state {
        DeliveryState::Delivered => tracing::info!(
            event = "webhook_delivered",
            webhook_id = %delivery.id,
            job_id = %delivery.job_id,
            tenant = %delivery.tenant,
            attempts = delivery.attempts,
            "webhook delivered"
        ),
        DeliveryState::Pending => tracing::warn!(
            event = "webhook_refused",
            webhook_id = %delivery.id,
            tenant = %delivery.tenant,
            attempts = delivery.attempts,
            answer,
            next_at = %delivery.next_at,
            "webhook not accepted; sent again later"
        ),
        DeliveryState::Failed | DeliveryState::Stopped => tracing::error!(
            event = "webhook_failed",
            webhook_id = %delivery.id,
            tenant = %delivery.tenant,
            state = delivery.state.as_str(),
            attempts = delivery.attempts,
            answer,
            "webhook given up"
        ),
    }
}
