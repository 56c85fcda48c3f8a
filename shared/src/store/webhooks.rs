//! `webhooks/{id}`: webhook deliveries, one per job event a tenant's
//! webhook asks for, kept a week after they finish (`asmr webhooks`).
//!
//! A delivery is created once, whoever brings its event first (a duplicate
//! storm makes no second one), taken under a short lease by one sender at a
//! time, and settled by that sender alone.

use super::backend::{Collection, Cond, Dir, Scalar};
use super::{Created, Page, Record, Round, Store, until_done};
use crate::domain::tenant::{Tenant, TenantName};
use crate::domain::webhook::{DEFAULT_SECRET_GRACE, WebhookSecret};
use crate::domain::webhook_delivery::{Answer, Delivery, DeliveryState, RetrySchedule};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use std::time::Duration;

const LIST_ORDER: &[(&str, Dir)] = &[("created_at", Dir::Desc), ("id", Dir::Desc)];
const DUE_ORDER: &[(&str, Dir)] = &[("next_at", Dir::Asc), ("id", Dir::Asc)];

impl Record for Delivery {
    const COLLECTION: Collection = Collection::Webhooks;
    const KIND: &'static str = "webhook delivery";

    fn id(&self) -> &str {
        &self.id
    }
}

/// Which deliveries a listing shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// One tenant's only.
    pub tenant: Option<TenantName>,
    /// In this state only.
    pub state: Option<DeliveryState>,
}

impl Store {
    /// Records `delivery` unless its event has one already (`created`
    /// says which).
    pub async fn record_webhook(&self, delivery: Delivery) -> Result<Created<Delivery>> {
        self.create(delivery).await
    }

    /// The delivery `id`, if it exists.
    pub async fn get_webhook(&self, id: &str) -> Result<Option<Delivery>> {
        Ok(self.load::<Delivery>(id).await?.map(|(d, _)| d))
    }

    /// Takes delivery `id` for `owner` for `lease` when it is due; `None`
    /// when it is not (sent, not yet due, or another sender holds it).
    pub async fn take_webhook(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Delivery>> {
        self.change_webhook(id, |delivery, now| {
            delivery
                .is_due(now)
                .then(|| delivery.take(owner, lease, now))
        })
        .await
    }

    /// Records the answer to `owner`'s attempt of delivery `id`; `None`
    /// when `owner` no longer holds it (its lease ran out and another
    /// sender took it).
    pub async fn settle_webhook(
        &self,
        id: &str,
        owner: &str,
        answer: &Answer,
        schedule: &RetrySchedule,
    ) -> Result<Option<Delivery>> {
        self.change_webhook(id, |delivery, now| {
            delivery
                .held_by(owner)
                .then(|| delivery.settle(answer, schedule, now))
        })
        .await
    }

    /// Marks delivery `id`, held by `owner`, not sent: its URL is gone.
    pub async fn stop_webhook(&self, id: &str, owner: &str) -> Result<Option<Delivery>> {
        self.change_webhook(id, |delivery, now| {
            delivery.held_by(owner).then(|| delivery.stop(now))
        })
        .await
    }

    /// Makes delivery `id` due now for another full window, whatever became
    /// of it, and takes it for `owner` in the same write (`asmr webhooks
    /// redeliver`); `None` when another sender holds it right now.
    pub async fn rearm_webhook(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
        schedule: &RetrySchedule,
    ) -> Result<Option<Delivery>> {
        if self.get_webhook(id).await?.is_none() {
            return Err(Error::NotFound {
                kind: Delivery::KIND,
                id: id.to_string(),
            });
        }
        self.change_webhook(id, |delivery, now| {
            let held = delivery.state == DeliveryState::Pending
                && delivery.lease_until.is_some_and(|until| until > now);
            (!held).then(|| {
                delivery.rearm(schedule, now);
                delivery.take(owner, lease, now);
            })
        })
        .await
    }

    /// Applies `change` to delivery `id` and writes it back; `None` when
    /// `change` declines (or the delivery does not exist).
    async fn change_webhook(
        &self,
        id: &str,
        change: impl Fn(&mut Delivery, Timestamp) -> Option<()> + Send + Sync,
    ) -> Result<Option<Delivery>> {
        let change = &change;
        until_done(Delivery::KIND, id, || async move {
            let Some((mut delivery, version)) = self.load::<Delivery>(id).await? else {
                return Ok(Round::Done(None));
            };
            let before = delivery.clone();
            if change(&mut delivery, Timestamp::now()).is_none() {
                return Ok(Round::Done(None));
            }
            Ok(
                match self.put(&before, &delivery, &version, Vec::new()).await? {
                    true => Round::Done(Some(delivery)),
                    false => Round::Lost,
                },
            )
        })
        .await
    }

    /// Pending deliveries due by `now`, the longest due first, at most
    /// `limit`.
    pub async fn due_webhooks(&self, now: Timestamp, limit: u32) -> Result<Vec<Delivery>> {
        let conds = vec![
            Cond::Eq(
                "state",
                Scalar::Str(DeliveryState::Pending.as_str().to_string()),
            ),
            Cond::Lt("next_at", Scalar::Time(now.plus(Duration::from_millis(1)))),
        ];
        let page: Page<Delivery> = self.page(conds, DUE_ORDER, limit, None).await?;
        Ok(page.items)
    }

    /// Deliveries newest first, `limit` at a time; `after` is the previous
    /// page's `next`.
    pub async fn list_webhooks(
        &self,
        filter: &DeliveryFilter,
        limit: u32,
        after: Option<&str>,
    ) -> Result<Page<Delivery>> {
        let mut conds = Vec::new();
        if let Some(tenant) = &filter.tenant {
            conds.push(Cond::Eq("tenant", Scalar::Str(tenant.to_string())));
        }
        if let Some(state) = filter.state {
            conds.push(Cond::Eq("state", Scalar::Str(state.as_str().to_string())));
        }
        self.page(conds, LIST_ORDER, limit, after).await
    }

    /// `tenant` with a signing secret: the one it has, or one made now.
    pub async fn tenant_with_webhook_secret(&self, name: &TenantName) -> Result<Tenant> {
        if let Some(tenant) = self.cached_tenant(name).await?
            && !tenant.webhook_secrets(Timestamp::now()).is_empty()
        {
            return Ok(tenant);
        }
        let (tenant, _) = self
            .change_tenant(name, |tenant, now| {
                Ok(match tenant.webhook_secrets(now).is_empty() {
                    true => Some(tenant.rotate_webhook_secret(DEFAULT_SECRET_GRACE, now)),
                    false => None::<WebhookSecret>,
                })
            })
            .await?;
        Ok(tenant)
    }
}
