//! A day's budget split over sub-budget documents, so that no document takes
//! every paid claim's writes.
//!
//! Each budget of a day (the deployment's `budgets/{day}`, a tenant's
//! `budgets/{day}.{tenant}`) has a main document and up to N shards
//! `budgets/{main}~{k}`. The main document holds the limit in force and the
//! room it has handed out (`allotted_micros`); each shard holds the room it
//! was given and what its claims reserved and spent. A claim reserves on one
//! shard, within that shard's room, writing that shard alone; when the room
//! runs short it takes a block from the main document in the same commit,
//! and when the main document has none left either it moves room from other
//! shards. Every write is conditioned on the version read, and room only
//! moves between documents of one commit, so the sum of the shards' room
//! never exceeds the limit: the budget stays exact with any number of
//! claimers.

use super::BudgetDay;
use crate::error::Result;
use crate::store::backend::{Collection, Dir, Version, Write};
use crate::store::{Store, from_stored_as, str_eq, to_doc};
use crate::time::Timestamp;
use std::collections::BTreeMap;

/// How many shards a budget has unless the store is told otherwise: at
/// 1000 paid jobs a minute (two writes each), about one write every two
/// seconds on each.
pub const BUDGET_SHARDS: u32 = 64;

/// The id of shard `k` of the budget whose main document is `main`.
pub fn shard_id(main: &str, k: u32) -> String {
    format!("{main}~{k}")
}

/// A budget's room that one claim could not find: what the budget holds
/// committed against its limit.
pub(super) struct Short {
    pub committed_micros: u64,
    pub limit_micros: u64,
}

/// Budget documents read for one commit, each with the version it was read
/// at (`None`: absent, to be created) and whether the commit changes it.
#[derive(Default)]
pub(super) struct Books(BTreeMap<String, Entry>);

struct Entry {
    day: BudgetDay,
    version: Option<Version>,
    changed: bool,
}

impl Books {
    /// The document `id` (read once per commit; an empty one if absent).
    async fn load(&mut self, store: &Store, id: &str, now: Timestamp) -> Result<&mut BudgetDay> {
        if !self.0.contains_key(id) {
            let (day, version) = match store.load_day(id).await? {
                Some((day, version)) => (day, Some(version)),
                None => (BudgetDay::new(id, now), None),
            };
            self.keep(day, version);
        }
        Ok(self.day(id))
    }

    /// Keeps `day` as read at `version`: a fresher read replaces an older
    /// one, unless this commit changed it already (its write is conditioned
    /// on what it read, so a stale one fails and is tried again).
    fn keep(&mut self, day: BudgetDay, version: Option<Version>) {
        match self.0.get_mut(&day.id) {
            Some(entry) if entry.changed => {}
            Some(entry) => {
                entry.day = day;
                entry.version = version;
            }
            None => {
                let entry = Entry {
                    day,
                    version,
                    changed: false,
                };
                self.0.insert(entry.day.id.clone(), entry);
            }
        }
    }

    fn changed(&mut self, id: &str, now: Timestamp) {
        if let Some(entry) = self.0.get_mut(id) {
            entry.changed = true;
            entry.day.touch(now);
        }
    }

    /// The document `id` if it exists, to change (a settlement).
    pub(super) async fn existing(
        &mut self,
        store: &Store,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<&mut BudgetDay>> {
        self.load(store, id, now).await?;
        if self.0.get(id).is_none_or(|e| e.version.is_none()) {
            return Ok(None);
        }
        self.changed(id, now);
        Ok(self.0.get_mut(id).map(|e| &mut e.day))
    }

    /// Every shard of `main` the store holds, into these books (with the
    /// main document, read again where this commit has not changed it).
    async fn load_shards(&mut self, store: &Store, main: &str) -> Result<Vec<String>> {
        let order = [("id", Dir::Asc)];
        let stored = store
            .sweep(Collection::Budgets, vec![str_eq("budget", main)], &order)
            .await?;
        let mut ids = Vec::with_capacity(stored.len());
        for stored in stored {
            let (day, version) = from_stored_as::<BudgetDay>(Collection::Budgets, stored)?;
            if day.shard.is_some() {
                ids.push(day.id.clone());
            }
            self.keep(day, Some(version));
        }
        Ok(ids)
    }

    /// Document `id` of these books. Every caller loads it first; were one
    /// not to, an empty one is taken as absent, and a commit that creates
    /// it fails if it exists after all (and is tried again).
    fn day(&mut self, id: &str) -> &mut BudgetDay {
        &mut self
            .0
            .entry(id.to_string())
            .or_insert_with(|| Entry {
                day: BudgetDay::new(id, Timestamp::now()),
                version: None,
                changed: false,
            })
            .day
    }

    /// Reserves `micros` on shard `k` of the budget `main`, under `limit`
    /// (`None`: no limit, spending only recorded). `Err(Short)` when the
    /// budget as a whole has no room for it: the claim then commits none of
    /// these books' changes.
    pub(super) async fn reserve(
        &mut self,
        store: &Store,
        (main, k, shards): (&str, u32, u32),
        limit: Option<u64>,
        micros: u64,
        now: Timestamp,
    ) -> Result<std::result::Result<(), Short>> {
        let id = shard_id(main, k);
        self.load(store, &id, now).await?;
        let Some(limit) = limit else {
            // No limit: the main document only learns that there is none
            // (once), so that a limit set later counts what shards spent
            // meanwhile.
            if self.load(store, main, now).await?.limit_micros.is_some() {
                self.day(main).limit_micros = None;
                self.changed(main, now);
            }
            self.take(&id, micros, now);
            return Ok(Ok(()));
        };
        let shard = self.day(&id);
        let granted_within = shard.limit_micros.is_some_and(|was| was <= limit);
        if granted_within && shard.room() >= micros {
            self.take(&id, micros, now);
            return Ok(Ok(()));
        }
        let main_doc = self.load(store, main, now).await?;
        let settled = main_doc.limit_micros.is_some_and(|was| was <= limit);
        if !settled {
            // A limit set or lowered since room was handed out: every shard
            // gives its room back and owes what it committed.
            self.reconcile(store, (main, shards), limit, micros, now)
                .await?;
        }
        let place = (main, id.as_str(), shards);
        if self.granted(place, limit, micros, now) {
            return Ok(Ok(()));
        }
        // Not enough in the main document: gather from the other shards,
        // all read afresh together with it and this claim's own.
        let others = self.load_shards(store, main).await?;
        if self.granted(place, limit, micros, now) {
            return Ok(Ok(()));
        }
        let spare = limit.saturating_sub(self.day(main).used_micros());
        let own_room = self.day(&id).room();
        let short = micros.saturating_sub(own_room);
        let mut donors: Vec<(u64, String)> = others
            .into_iter()
            .filter(|other| *other != id)
            .map(|other| (self.day(&other).room(), other))
            .filter(|(room, _)| *room > 0)
            .collect();
        let room = donors
            .iter()
            .fold(own_room.saturating_add(spare), |sum, (room, _)| {
                sum.saturating_add(*room)
            });
        if room < micros {
            let committed = self.0.iter().filter(|(other, _)| belongs(other, main));
            let committed = committed.fold(0u64, |sum, (_, e)| {
                sum.saturating_add(e.day.committed_micros())
            });
            return Ok(Err(Short {
                committed_micros: committed,
                limit_micros: limit,
            }));
        }
        self.move_room(main, &id, spare, limit, now);
        donors.sort();
        let mut need = short - spare;
        while need > 0
            && let Some((room, donor)) = donors.pop()
        {
            let given = room.min(need);
            self.move_room(&donor, &id, given, limit, now);
            need -= given;
        }
        self.take(&id, micros, now);
        Ok(Ok(()))
    }

    /// Reserves `micros` on shard `id` with room from the main document (a
    /// block, at least what the shard lacks), if it has enough.
    fn granted(
        &mut self,
        (main, id, shards): (&str, &str, u32),
        limit: u64,
        micros: u64,
        now: Timestamp,
    ) -> bool {
        let spare = limit.saturating_sub(self.day(main).used_micros());
        // (Room read before another claim took it back: this commit fails
        // on that shard's version and is tried again.)
        let short = micros.saturating_sub(self.day(id).room());
        if spare < short {
            return false;
        }
        let block = block_of(limit, shards).max(short);
        self.move_room(main, id, block.min(spare), limit, now);
        self.take(id, micros, now);
        true
    }

    /// Takes back every shard's room into the main document under `limit`:
    /// each shard keeps room for exactly what it committed. Then, when a
    /// block is worth a claim of `micros`, hands every shard a block at
    /// once, so that the main document is written again only when a
    /// shard's block runs out (a day's first claim does this).
    async fn reconcile(
        &mut self,
        store: &Store,
        (main, shards): (&str, u32),
        limit: u64,
        micros: u64,
        now: Timestamp,
    ) -> Result<()> {
        let known = self.load_shards(store, main).await?;
        let mut allotted = 0u64;
        for id in known {
            let shard = self.day(&id);
            let committed = shard.committed_micros();
            if shard.allotted_micros != committed || shard.limit_micros != Some(limit) {
                shard.allotted_micros = committed;
                shard.limit_micros = Some(limit);
                self.changed(&id, now);
            }
            allotted = allotted.saturating_add(committed);
        }
        let main_doc = self.day(main);
        main_doc.allotted_micros = allotted;
        main_doc.limit_micros = Some(limit);
        self.changed(main, now);
        let block = block_of(limit, shards);
        if block < micros {
            return Ok(());
        }
        for k in 0..shards {
            let id = shard_id(main, k);
            // Not found by the query above: absent (a shard created
            // meanwhile makes this commit fail, and it is tried again).
            if !self.0.contains_key(&id) {
                self.keep(BudgetDay::new(&id, now), None);
            }
            let spare = limit.saturating_sub(self.day(main).used_micros());
            let wanted = block.saturating_sub(self.day(&id).room());
            if wanted > 0 && spare >= wanted {
                self.move_room(main, &id, wanted, limit, now);
            }
        }
        Ok(())
    }

    /// Moves `micros` of room from `from` (a shard, or the main document,
    /// whose room is what it has not handed out) to shard `to`.
    fn move_room(&mut self, from: &str, to: &str, micros: u64, limit: u64, now: Timestamp) {
        if micros == 0 {
            return;
        }
        let giver = self.day(from);
        match giver.shard {
            Some(_) => giver.allotted_micros -= micros,
            None => {
                giver.allotted_micros += micros;
                giver.limit_micros = Some(limit);
            }
        }
        self.changed(from, now);
        let taker = self.day(to);
        taker.allotted_micros += micros;
        taker.limit_micros = Some(limit);
        self.changed(to, now);
    }

    fn take(&mut self, id: &str, micros: u64, now: Timestamp) {
        let day = self.day(id);
        day.reserved_micros = day.reserved_micros.saturating_add(micros);
        self.changed(id, now);
    }

    /// The writes of every document this commit changes, each conditioned on
    /// the version read (created when it was absent).
    pub(super) fn writes(&self) -> Result<Vec<Write>> {
        self.0
            .values()
            .filter(|e| e.changed)
            .map(|e| {
                let doc = to_doc(&e.day)?;
                Ok(Write::over(
                    Collection::Budgets,
                    e.day.id.clone(),
                    e.version.clone(),
                    doc,
                ))
            })
            .collect()
    }
}

/// The room a shard is given at a time: a quarter of the limit spread
/// over the shards, so that three quarters stay where any shard can reach
/// them.
fn block_of(limit: u64, shards: u32) -> u64 {
    limit / (4 * u64::from(shards.max(1)))
}

/// Whether document `id` is budget `main`'s main document or one of its
/// shards.
fn belongs(id: &str, main: &str) -> bool {
    id == main
        || id
            .strip_prefix(main)
            .is_some_and(|rest| rest.starts_with('~'))
}

impl Store {
    /// Budget `main` of a day as a whole: its main document with every
    /// shard's reservations and spending added. `None` when nothing of it
    /// was written.
    pub(super) async fn whole_budget(&self, main: &str) -> Result<Option<BudgetDay>> {
        let mut books = Books::default();
        let now = Timestamp::now();
        let shards = books.load_shards(self, main).await?;
        let mut whole = books.load(self, main, now).await?.clone();
        let existed = books.0.get(main).is_some_and(|e| e.version.is_some());
        if !existed && shards.is_empty() {
            return Ok(None);
        }
        for id in shards {
            let shard = books.day(&id);
            whole.reserved_micros = whole.reserved_micros.saturating_add(shard.reserved_micros);
            whole.spent_micros = whole.spent_micros.saturating_add(shard.spent_micros);
            whole.updated_at = whole.updated_at.max(shard.updated_at);
        }
        Ok(Some(whole))
    }
}
