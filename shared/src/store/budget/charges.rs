//! The ledger of paid attempts: one immutable `charges/{id}` record per
//! settled reservation, created in the commit that settles it, saying what
//! was held and what was spent. The budget documents hold running sums; the
//! charges are the line items they add up from.

use super::BUDGET_RETENTION;
use crate::domain::tenant::TenantName;
use crate::domain::values::Reservation;
use crate::error::Result;
use crate::store::backend::{Collection, Dir, Write};
use crate::store::{Store, from_stored_as, str_eq, to_doc};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// One settled paid attempt (`charges/{id}`), never changed once written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Document id, chosen by the claim that reserved.
    pub id: String,
    /// The job that paid.
    pub job: String,
    /// Its tenant.
    pub tenant: TenantName,
    /// The UTC day whose budget held the reservation.
    pub day: String,
    /// The budget shard that held it (`None`: the day's main document).
    #[serde(default)]
    pub shard: Option<u32>,
    /// The claim that reserved (its lease owner).
    pub owner: String,
    /// Micro-dollars held for the attempt.
    pub reserved_micros: u64,
    /// Of them, micro-dollars spent; the rest was released.
    pub spent_micros: u64,
    /// When it was settled.
    pub settled_at: Timestamp,
    /// When retention may delete it (with its day's budget).
    pub expire_at: Timestamp,
}

impl Charge {
    /// A fresh id for a charge of `job`: the claim that reserves picks it,
    /// so the settlement's record is named before it exists.
    pub(super) fn new_id(job: &str) -> String {
        format!("{job}.{}", uuid::Uuid::new_v4().simple())
    }

    /// The charge of `job`'s `reservation`, settled now with `spent_micros`.
    pub(super) fn of(
        job: &str,
        tenant: &TenantName,
        reservation: &Reservation,
        spent_micros: u64,
        now: Timestamp,
    ) -> Self {
        Self {
            id: reservation
                .charge
                .clone()
                .unwrap_or_else(|| Self::new_id(job)),
            job: job.to_string(),
            tenant: tenant.clone(),
            day: reservation.day.clone(),
            shard: reservation.shard,
            owner: reservation.owner.clone(),
            reserved_micros: reservation.micros,
            spent_micros,
            settled_at: now,
            expire_at: now.plus(BUDGET_RETENTION),
        }
    }

    /// Its creation, in the settling commit: a second settlement of the same
    /// reservation would fail on it.
    pub(super) fn write(&self) -> Result<Write> {
        Ok(Write::Create {
            collection: Collection::Charges,
            id: self.id.clone(),
            doc: to_doc(self)?,
        })
    }
}

impl Store {
    /// Every charge settled against `day`'s budgets, in id order.
    pub async fn charges_on(&self, day: &str) -> Result<Vec<Charge>> {
        let order = [("id", Dir::Asc)];
        self.sweep(Collection::Charges, vec![str_eq("day", day)], &order)
            .await?
            .into_iter()
            .map(|stored| Ok(from_stored_as::<Charge>(Collection::Charges, stored)?.0))
            .collect()
    }
}
