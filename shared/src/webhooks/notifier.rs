//! The notifier: turns job events into webhook deliveries and sends them.
//!
//! A pushed job event that carries a webhook call becomes one delivery
//! record (created once, whoever brings the event first) and is
//! acknowledged; the sending happens beside the push, so a slow receiver
//! holds no push and no other tenant. Each tenant has a few sending slots
//! per instance: a receiver that hangs fills its own tenant's slots and
//! nobody else's. What is not sent at once (no free slot, a refusal, an
//! instance that stopped) is found by the sweep, which sends every due
//! delivery again, on its schedule, for a day.

use super::send::Sender;
use crate::ack::Handled;
use crate::domain::tenant::TenantName;
use crate::domain::webhook_delivery::{Answer, Delivery, DeliveryState, RetrySchedule};
use crate::error::Result;
use crate::job_events::JobEvent;
use crate::store::Store;
use crate::time::Timestamp;
use std::collections::HashMap;
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

/// The notifier of one instance (a clone shares its slots).
#[derive(Clone)]
pub struct Notifier {
    store: Store,
    sender: Sender,
    settings: NotifierSettings,
    owner: String,
    slots: Arc<Mutex<HashMap<TenantName, Arc<Semaphore>>>>,
}

impl Notifier {
    /// A notifier over `store`, sending with `sender`.
    pub fn new(store: Store, sender: Sender, settings: NotifierSettings) -> Self {
        Self {
            store,
            sender,
            settings,
            owner: format!("notifier-{}", uuid::Uuid::new_v4().simple()),
            slots: Arc::default(),
        }
    }

    /// Records the delivery `event` asks for and starts sending it.
    pub async fn handle(&self, event: JobEvent) -> Handled {
        let Some(call) = &event.webhook else {
            return Handled::Ignored(format!(
                "job event {} of job {} asks for no webhook",
                event.event_id, event.job_id
            ));
        };
        let delivery = Delivery::new(
            &event.event_id,
            &event.job_id,
            event.tenant.clone(),
            &call.url,
            call.events.clone(),
            call.body.clone(),
            &self.settings.schedule,
            Timestamp::now(),
        );
        match self.store.record_webhook(delivery).await {
            Ok(recorded) => {
                let id = recorded.record.id.clone();
                self.kick(recorded.record);
                match recorded.created {
                    true => Handled::Done(format!("webhook {id} recorded")),
                    false => Handled::Duplicate(format!("webhook {id} was recorded before")),
                }
            }
            Err(e) => Handled::store_trouble(&e),
        }
    }

    /// Sends every delivery that is due, as slots allow; how many it
    /// started.
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

    /// Starts sending `delivery` beside the caller if it is due and its
    /// tenant has a free slot; whether it started.
    fn kick(&self, delivery: Delivery) -> bool {
        if !delivery.is_due(Timestamp::now()) {
            return false;
        }
        let Ok(permit) = self.slot(&delivery.tenant).try_acquire_owned() else {
            return false;
        };
        let notifier = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = notifier.attempt(&delivery.id).await {
                tracing::warn!(event = "webhook_attempt_failed", webhook_id = %delivery.id, error = %e, "webhook attempt not recorded; the sweep tries again");
            }
        });
        true
    }

    fn slot(&self, tenant: &TenantName) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_tenant.max(1))))
            .clone()
    }

    /// Takes delivery `id` if it is due, sends it once and records the
    /// answer; `None` when it was not due or another sender holds it.
    pub async fn attempt(&self, id: &str) -> Result<Option<Delivery>> {
        let owner = &self.owner;
        let Some(delivery) = self
            .store
            .take_webhook(id, owner, self.settings.lease)
            .await?
        else {
            return Ok(None);
        };
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
