//! The cost guard's records: each UTC day's budget of the deployment
//! (`budgets/{YYYY-MM-DD}`) and of each tenant that keeps its own
//! (`budgets/{YYYY-MM-DD}.{tenant}`), split over shards (see [`books`]), and
//! the charge of every settled paid attempt (see [`charges`]).
//!
//! A claim that is about to pay reserves its estimated cost in the same
//! atomic commit that claims the job ([`Backend::commit`]: the job at the
//! version read, each budget document it changes at the version read or
//! created), so a crash can never leave a claimed job without its
//! reservation or a reservation without its claim. The job records what it
//! reserved and where; settling moves that amount from reserved to spent (or
//! releases it) and creates the attempt's charge in one commit that also
//! clears the job's record, so a repeated settlement is a no-op.
//!
//! [`Backend::commit`]: super::backend::Backend::commit

mod books;
mod charges;

pub use books::{BUDGET_SHARDS, shard_id};
pub use charges::Charge;

use super::backend::{Collection, Stored, Version, Write};
use super::tenants::{Counting, Scope};
use super::{Claim, Round, Store, Tried, from_stored_as, str_eq, to_doc, until_done};
use crate::domain::Lease;
use crate::domain::job::{ClaimRefusal, Job};
use crate::domain::tenant::{Tenant, TenantName};
use crate::domain::values::{BUDGET_EXHAUSTED, JobKind, JobStatus, Reservation, WAIT_REASONS};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use books::Books;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a day's budget document is kept.
pub const BUDGET_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// One budget document: a day's main document (`budgets/{YYYY-MM-DD}`, or
/// a tenant's `budgets/{YYYY-MM-DD}.{tenant}`) or one of its shards
/// (`budgets/{main}~{k}`); see [`books`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetDay {
    /// Document id.
    pub id: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// The id of the main document of the budget it belongs to.
    #[serde(default)]
    pub budget: String,
    /// Which shard it is (`None`: the main document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// Micro-dollars held by claimed jobs whose calls have not settled.
    pub reserved_micros: u64,
    /// Micro-dollars of settled calls (including those whose outcome was
    /// unknown, counted as paid).
    pub spent_micros: u64,
    /// A shard: the room it was given for its claims. The main document: the
    /// room it has handed out to its shards.
    #[serde(default)]
    pub allotted_micros: u64,
    /// The budget in force when room was last handed out (`None`: no limit).
    #[serde(default)]
    pub limit_micros: Option<u64>,
    /// Last change.
    pub updated_at: Timestamp,
    /// When retention may delete it.
    pub expire_at: Timestamp,
}

impl BudgetDay {
    /// An empty document; `id` names a day, a tenant's day (see
    /// [`tenant_day_of`]) or a shard of one (see [`books::shard_id`]).
    pub fn new(id: &str, now: Timestamp) -> Self {
        let (budget, shard) = match id.split_once('~') {
            Some((main, k)) => (main, k.parse().ok()),
            None => (id, None),
        };
        Self {
            id: id.to_string(),
            day: budget.split('.').next().unwrap_or(budget).to_string(),
            budget: budget.to_string(),
            shard,
            reserved_micros: 0,
            spent_micros: 0,
            allotted_micros: 0,
            limit_micros: None,
            updated_at: now,
            expire_at: now.plus(BUDGET_RETENTION),
        }
    }

    /// Reserved plus spent: what counts against the budget.
    pub fn committed_micros(&self) -> u64 {
        self.reserved_micros.saturating_add(self.spent_micros)
    }

    /// A main document's share of the limit in use: handed out to shards,
    /// or reserved and spent on it directly (before its budget had shards).
    fn used_micros(&self) -> u64 {
        self.allotted_micros.saturating_add(self.committed_micros())
    }

    /// A shard's room left for claims.
    fn room(&self) -> u64 {
        self.allotted_micros.saturating_sub(self.committed_micros())
    }

    fn touch(&mut self, now: Timestamp) {
        self.updated_at = now;
        self.expire_at = now.plus(BUDGET_RETENTION);
    }

    /// Settles a reservation of `reserved_micros`: the hold goes, and what
    /// the call cost (`spent_micros`) is spent. A shard keeps what was
    /// released as room.
    fn settle(&mut self, reserved_micros: u64, spent_micros: u64) {
        self.reserved_micros = self.reserved_micros.saturating_sub(reserved_micros);
        self.spent_micros = self.spent_micros.saturating_add(spent_micros);
    }
}

/// The UTC day of `at`, as budget documents are named.
pub fn budget_day_of(at: Timestamp) -> String {
    at.as_datetime().format("%Y-%m-%d").to_string()
}

/// The id of `tenant`'s own budget document of `day`
/// (`budgets/{YYYY-MM-DD}.{tenant}`), beside the deployment's
/// `budgets/{YYYY-MM-DD}`.
pub fn tenant_day_of(day: &str, tenant: &TenantName) -> String {
    format!("{day}.{tenant}")
}

/// Whether a job of `tenant` reserves in its tenant's own day document
/// too: every named tenant's does, so its spending is its own; the
/// default tenant's only when it has a budget of its own (a single-team
/// deployment writes one budget document per claim, as before tenants).
fn keeps_own_day(tenant: &Tenant) -> bool {
    !tenant.name().is_default() || tenant.daily_budget_micros().is_some()
}

/// The spending rule of a claim.
pub struct Budget<'a> {
    /// The day's budget in micro-dollars; `None`: no limit (spending is
    /// still recorded).
    pub limit_micros: Option<u64>,
    /// The estimated cost of the paid call the claimed job will make, or
    /// `None` when working on it pays nothing (dry run, a resumed operation).
    pub cost: &'a (dyn Fn(&Job) -> Option<u64> + Send + Sync),
    /// The claimer's default model, recorded on the job it claims (unless
    /// the job names its own) before `cost` prices it; `None` records
    /// nothing.
    pub model: Option<&'a str>,
}

fn costs_nothing(_: &Job) -> Option<u64> {
    None
}

impl Budget<'static> {
    /// A claim that will pay nothing and reserves nothing.
    pub const FREE: Budget<'static> = Budget {
        limit_micros: None,
        cost: &costs_nothing,
        model: None,
    };
}

/// A claim refused because the job's cost does not fit in today's budget
/// (the deployment's, or its tenant's own). The job stays pending, marked
/// [`BUDGET_EXHAUSTED`].
#[derive(Clone, Debug, PartialEq)]
pub struct OverBudget {
    /// The tenant whose own budget refused it; `None`: the deployment's.
    pub tenant: Option<TenantName>,
    /// The job, as it now stands.
    pub job: Job,
    /// The UTC day.
    pub day: String,
    /// What the job would reserve.
    pub needed_micros: u64,
    /// Reserved plus spent today.
    pub committed_micros: u64,
    /// Today's budget.
    pub limit_micros: u64,
}

/// The result of a claim under a budget.
#[derive(Clone, Debug, PartialEq)]
pub enum Budgeted<T> {
    /// The budget allowed it (or it costs nothing): the usual outcome.
    Within(T),
    /// Not claimed: it would exceed the budget.
    Over(Box<OverBudget>),
}

/// How much of a reservation a settled call cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Billed {
    /// All of it: the call produced its outputs, or may have (unknown).
    All,
    /// Nothing: Google refused before generating, or filtered every output.
    Nothing,
    /// A share: `delivered` of `requested` outputs came back (the rest were
    /// filtered, which Google does not bill).
    Part {
        /// Outputs produced.
        delivered: u32,
        /// Outputs asked for.
        requested: u32,
    },
}

impl Billed {
    /// The micro-dollars of `reserved` this settles as spent.
    pub fn of(self, reserved: u64) -> u64 {
        match self {
            Billed::All => reserved,
            Billed::Nothing => 0,
            Billed::Part { requested: 0, .. } => reserved,
            Billed::Part {
                delivered,
                requested,
            } => {
                let delivered = u128::from(delivered.min(requested));
                let share = u128::from(reserved) * delivered / u128::from(requested);
                u64::try_from(share).unwrap_or(reserved)
            }
        }
    }
}

/// What a settlement did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The reservation it settled.
    pub reservation: Reservation,
    /// Of it, micro-dollars counted as spent; the rest was released.
    pub spent_micros: u64,
}

fn decode_day(stored: Stored) -> Result<(BudgetDay, Version)> {
    from_stored_as(Collection::Budgets, stored)
}

fn job_write(job: &Job, version: &Version) -> Result<Write> {
    Ok(Write::Replace {
        collection: Collection::Jobs,
        id: job.id().to_string(),
        expected: version.clone(),
        doc: to_doc(job)?,
    })
}

impl Store {
    /// Splits each day's budget over `shards` documents (at least one);
    /// see [`books`].
    pub fn with_budget_shards(mut self, shards: u32) -> Self {
        self.budget_shards = shards.max(1);
        self
    }

    /// The shard the next paid claim reserves on.
    fn next_shard(&self) -> u32 {
        let turn = self
            .next_shard
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        turn % self.budget_shards
    }

    /// The deployment's budget of `day` as a whole (its shards added up),
    /// or an empty day when there is none.
    pub async fn budget_day(&self, day: &str) -> Result<BudgetDay> {
        Ok(self
            .whole_budget(day)
            .await?
            .unwrap_or_else(|| BudgetDay::new(day, Timestamp::now())))
    }

    /// The budget of `day` as `scope` sees it: a tenant's own (empty when
    /// none was written; the deployment's for a default tenant that keeps
    /// none), or the deployment's.
    pub async fn budget_day_in(&self, day: &str, scope: &Scope) -> Result<BudgetDay> {
        let Scope::Tenant(tenant) = scope else {
            return self.budget_day(day).await;
        };
        let own = tenant_day_of(day, tenant);
        match self.whole_budget(&own).await? {
            Some(day) => Ok(day),
            None if tenant.is_default() => self.budget_day(day).await,
            None => Ok(BudgetDay::new(&own, Timestamp::now())),
        }
    }

    /// Pending jobs waiting for budget.
    pub async fn jobs_waiting_on_budget(&self) -> Result<u64> {
        self.jobs_waiting(BUDGET_EXHAUSTED).await
    }

    /// Pending jobs waiting for `reason` (one of
    /// [`crate::domain::values::WAIT_REASONS`]).
    pub async fn jobs_waiting(&self, reason: &str) -> Result<u64> {
        self.jobs_waiting_in(reason, &Scope::Everyone).await
    }

    /// Pending jobs of `scope` waiting for `reason`.
    pub async fn jobs_waiting_in(&self, reason: &str, scope: &Scope) -> Result<u64> {
        self.jobs_waiting_counted(reason, &self.counting(scope).await?)
            .await
    }

    async fn jobs_waiting_counted(&self, reason: &str, counting: &Counting) -> Result<u64> {
        let conds = vec![
            str_eq("status", JobStatus::Pending.as_str()),
            str_eq("waiting", reason),
        ];
        self.count_in(Collection::Jobs, conds, counting).await
    }

    /// Pending jobs per wait reason, every reason listed.
    pub async fn waiting_counts(&self) -> Result<BTreeMap<&'static str, u64>> {
        self.waiting_counts_in(&Scope::Everyone).await
    }

    /// Pending jobs of `scope` per wait reason, every reason listed.
    pub async fn waiting_counts_in(&self, scope: &Scope) -> Result<BTreeMap<&'static str, u64>> {
        let counting = &self.counting(scope).await?;
        let counts = futures::future::try_join_all(
            WAIT_REASONS
                .iter()
                .map(|reason| self.jobs_waiting_counted(reason, counting)),
        )
        .await?;
        Ok(WAIT_REASONS.into_iter().zip(counts).collect())
    }

    pub(super) async fn load_day(&self, day: &str) -> Result<Option<(BudgetDay, Version)>> {
        self.backend
            .get(Collection::Budgets, day)
            .await?
            .map(decode_day)
            .transpose()
    }

    /// Claims one job like [`Store::claim_job`], reserving the cost of its
    /// paid call under `budget` in the same commit. A job whose cost does
    /// not fit stays pending and is marked [`BUDGET_EXHAUSTED`].
    pub async fn claim_job_within(
        &self,
        id: &str,
        lease: &Lease,
        budget: &Budget<'_>,
    ) -> Result<Budgeted<Claim<Job>>> {
        self.claim_by_id(
            id,
            || Budgeted::Within(Claim::NotFound),
            |job, version| async move { self.try_claim_within(job, &version, lease, budget).await },
        )
        .await
    }

    /// Claims the next pending job of `kind` like [`Store::claim_next_job`],
    /// under `budget`. `Over` when every candidate of the highest priority
    /// costs more than is left today.
    pub async fn claim_next_job_within(
        &self,
        kind: JobKind,
        lease: &Lease,
        budget: &Budget<'_>,
    ) -> Result<Budgeted<Option<Job>>> {
        let conds = vec![
            str_eq("status", JobStatus::Pending.as_str()),
            str_eq("kind", kind.as_str()),
        ];
        self.claim_first(conds, |job, version| async move {
            Ok(
                match self.try_claim_within(job, &version, lease, budget).await? {
                    Some(Budgeted::Within(Claim::Claimed(job))) => Tried::Claimed(job),
                    Some(Budgeted::Over(refused)) => Tried::Over(refused),
                    // Exhausted or lost (now failed), refused, or taken by
                    // someone else.
                    _ => Tried::Passed,
                },
            )
        })
        .await
    }

    /// Tries to claim `job` as read at `version`, with its reservation.
    /// `None` when a document changed in between (read again and retry).
    async fn try_claim_within(
        &self,
        mut job: Job,
        version: &Version,
        lease: &Lease,
        budget: &Budget<'_>,
    ) -> Result<Option<Budgeted<Claim<Job>>>> {
        let now = Timestamp::now();
        let before = job.clone();
        let transition = |id: &str, reason| Error::Transition {
            kind: "job",
            id: id.to_string(),
            reason,
        };
        let settled: Option<fn(Job) -> Claim<Job>> = match job.claim(lease, now) {
            Ok(()) => None,
            Err(ClaimRefusal::Exhausted) => {
                job.exhaust(now, &self.retention)
                    .map_err(|reason| transition(job.id(), reason))?;
                Some(Claim::Exhausted)
            }
            // An earlier claim's paid request is in doubt: record that
            // instead of sending another.
            Err(ClaimRefusal::CallLost { .. }) => {
                job.lose_call(now, &self.retention)
                    .map_err(|reason| transition(job.id(), reason))?;
                Some(Claim::Lost)
            }
            Err(refusal) => return Ok(Some(Budgeted::Within(Claim::Refused(job, refusal)))),
        };
        let claimed = settled.is_none();
        if claimed && let Some(model) = budget.model {
            job.run_on(model);
        }
        let today = budget_day_of(now);
        let cost = if claimed {
            (budget.cost)(&job).filter(|micros| *micros > 0)
        } else {
            None
        };
        // A reservation left by an earlier claim whose worker vanished: its
        // call may have been paid, so it counts as spent, unless it belongs
        // to a submitted operation this claim resumes (the poller settles it).
        let leftover = job.take_leftover_reservation(claimed.then_some(lease.owner.as_str()));

        // The tenant's own budget, when its jobs keep one: reserved and
        // settled in the same commits as the deployment's.
        let tenant = match leftover.is_some() || cost.is_some() {
            true => self.cached_tenant(job.tenant()).await?,
            false => None,
        };
        let own = tenant.as_ref().filter(|t| keeps_own_day(t));
        let mut books = Books::default();
        let mut extra = Vec::new();
        if let Some(held) = &leftover {
            let charge = self
                .settle_on(&mut books, &job, held, held.micros, now)
                .await?;
            extra.push(charge.write()?);
        }
        if let Some(micros) = cost {
            let shard = self.next_shard();
            let mut budgets = vec![(today.clone(), budget.limit_micros, None)];
            if let Some(tenant) = own {
                budgets.push((
                    tenant_day_of(&today, tenant.name()),
                    tenant.daily_budget_micros(),
                    Some(tenant.name().clone()),
                ));
            }
            for (main, limit, whose) in budgets {
                let place = (main.as_str(), shard, self.budget_shards);
                if let Err(short) = books.reserve(self, place, limit, micros, now).await? {
                    let over = OverBudget {
                        tenant: whose,
                        job: before,
                        day: today.clone(),
                        needed_micros: micros,
                        committed_micros: short.committed_micros,
                        limit_micros: short.limit_micros,
                    };
                    return self.wait_for_budget(over, version).await;
                }
            }
            job.reserve(Reservation {
                day: today.clone(),
                micros,
                owner: lease.owner.clone(),
                shard: Some(shard),
                charge: Some(Charge::new_id(job.id())),
            })
            .map_err(|reason| transition(job.id(), reason))?;
        }
        extra.extend(books.writes()?);

        if !self.put(&before, &job, version, extra).await? {
            return Ok(None);
        }
        Ok(Some(Budgeted::Within(match settled {
            None => Claim::Claimed(job),
            Some(settled) => settled(job),
        })))
    }

    /// Leaves `job` unclaimed, marking a pending one as waiting for budget
    /// (once: an already marked job is not written again).
    async fn wait_for_budget(
        &self,
        mut over: OverBudget,
        version: &Version,
    ) -> Result<Option<Budgeted<Claim<Job>>>> {
        let job = &mut over.job;
        if job.mark_waiting(BUDGET_EXHAUSTED)
            && !self
                .backend
                .replace(Collection::Jobs, job.id(), version, &to_doc(&*job)?)
                .await?
        {
            return Ok(None);
        }
        Ok(Some(Budgeted::Over(Box::new(over))))
    }

    /// Settles `reservation` of `job` in `books`, `spent_micros` of it
    /// spent, on the documents that hold it: the deployment's and its
    /// tenant's, on the claim's shard (or the main documents, for a
    /// reservation made before budgets had shards). A document gone
    /// (retention), or a tenant's never written (its jobs keep none), has
    /// nothing to settle. Returns the attempt's charge record.
    async fn settle_on(
        &self,
        books: &mut Books,
        job: &Job,
        reservation: &Reservation,
        spent_micros: u64,
        now: Timestamp,
    ) -> Result<Charge> {
        let day = reservation.day.as_str();
        for main in [day.to_string(), tenant_day_of(day, job.tenant())] {
            let id = match reservation.shard {
                Some(k) => books::shard_id(&main, k),
                None => main,
            };
            if let Some(held) = books.existing(self, &id, now).await? {
                held.settle(reservation.micros, spent_micros);
            }
        }
        Ok(Charge::of(
            job.id(),
            job.tenant(),
            reservation,
            spent_micros,
            now,
        ))
    }

    /// Settles the reservation of job `id` after its paid call: `billed` of
    /// it moves from reserved to spent, the rest is released, and the job's
    /// record of it is cleared, all in one commit. With `owner`, only that
    /// claim's reservation is settled. `None` when there is nothing to settle
    /// (already settled, another claim's, no such job): safe to repeat.
    pub async fn settle_reservation(
        &self,
        id: &str,
        owner: Option<&str>,
        billed: Billed,
    ) -> Result<Option<Settled>> {
        until_done("budget", id, || async move {
            let Some((mut job, version)) = self.load::<Job>(id).await? else {
                return Ok(Round::Done(None));
            };
            let Some(reservation) = job.release_reservation(owner) else {
                return Ok(Round::Done(None));
            };
            let spent_micros = billed.of(reservation.micros);
            let now = Timestamp::now();
            let mut books = Books::default();
            let charge = self
                .settle_on(&mut books, &job, &reservation, spent_micros, now)
                .await?;
            let mut writes = vec![job_write(&job, &version)?, charge.write()?];
            writes.extend(books.writes()?);
            let written = self.backend.commit(&writes).await?;
            Ok(if written {
                Round::Done(Some(Settled {
                    reservation,
                    spent_micros,
                }))
            } else {
                Round::Lost
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_a_reservation_is_exact_and_never_more_than_all() {
        let check = |billed: Billed, reserved: u64, spent: u64| {
            assert_eq!(billed.of(reserved), spent, "{billed:?} of {reserved}");
        };
        check(Billed::All, 3_200_000, 3_200_000);
        check(Billed::Nothing, 3_200_000, 0);
        let part = |delivered, requested| Billed::Part {
            delivered,
            requested,
        };
        check(part(1, 2), 3_200_000, 1_600_000);
        check(part(2, 3), 117_000, 78_000);
        check(part(5, 4), 160_000, 160_000);
        check(part(0, 4), 160_000, 0);
        check(part(1, 0), 160_000, 160_000);
        check(part(1, 3), u64::MAX, u64::MAX / 3);
    }

    #[test]
    fn days_are_utc_dates() {
        let at = Timestamp::parse("2026-03-01T23:59:59.999999-02:00").unwrap();
        assert_eq!(budget_day_of(at), "2026-03-02");
        let day = BudgetDay::new("2026-03-02", at);
        assert_eq!(day.committed_micros(), 0);
        assert_eq!(day.expire_at, at.plus(BUDGET_RETENTION));
    }
}
