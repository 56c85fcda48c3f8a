//! Claiming the next record in queue order: strict priority, approximate
//! age (so that concurrent claimers spread out), and past the candidates of
//! tenants out of their own budget.

use super::backend::{Query, Stored, Version};
use super::{
    CLAIM_CANDIDATES, CLAIM_ORDER, Claimable, Cond, Round, Store, Tried, budget, cursor_after,
    from_stored, until_done,
};
use crate::domain::tenant::TenantName;
use crate::error::Result;
use rand::seq::SliceRandom;
use serde_json::Value;
use std::collections::BTreeSet;

/// Past candidates of tenants out of budget, a claim reads on in pages of
/// this many...
const CLAIM_PAGE: u32 = 100;
/// ...up to this many pages in all.
const CLAIM_PAGES: usize = 10;
/// `stored` (in claim order) in runs of one priority.
fn by_priority(stored: Vec<Stored>) -> Vec<Vec<Stored>> {
    let mut groups: Vec<Vec<Stored>> = Vec::new();
    for one in stored {
        match groups.last_mut() {
            Some(group) if group[0].doc.get("priority") == one.doc.get("priority") => {
                group.push(one);
            }
            _ => groups.push(vec![one]),
        }
    }
    groups
}

impl Store {
    /// Claims the first record of `conds` in claim order: the highest
    /// priority, and among the oldest few of that priority a random one, so
    /// that concurrent claimers spread out instead of fighting over one.
    /// `attempt` tries one candidate. `Over` when nothing was claimed and at
    /// least one candidate did not fit the budget.
    pub(super) async fn claim_first<T: Claimable, F: Future<Output = Result<Tried<T>>>>(
        &self,
        conds: Vec<Cond>,
        attempt: impl Fn(T, Version) -> F,
    ) -> Result<budget::Budgeted<Option<T>>> {
        let (conds, attempt) = (&conds, &attempt);
        until_done(T::KIND, "(next pending)", || async move {
            // Tenants whose own budget refused a candidate: their other
            // candidates are passed over, so one tenant out of money does
            // not stop the others' work.
            let mut broke: BTreeSet<String> = BTreeSet::new();
            let mut over = None;
            let mut contended = false;
            let mut after = None;
            for page in 0..CLAIM_PAGES {
                let query = Query {
                    conds: conds.clone(),
                    order: CLAIM_ORDER.to_vec(),
                    after: after.take(),
                    limit: if page == 0 {
                        CLAIM_CANDIDATES
                    } else {
                        CLAIM_PAGE
                    },
                };
                let candidates = self.backend.query(T::COLLECTION, &query).await?;
                let full = candidates.len() == query.limit as usize;
                if let Some(last) = candidates.last() {
                    after = Some(cursor_after(T::COLLECTION, CLAIM_ORDER, &last.doc)?);
                }
                // Priority is strict; age within a priority is approximate,
                // which is what lets concurrent claimers spread out.
                for mut group in by_priority(candidates) {
                    group.shuffle(&mut rand::rng());
                    for stored in group {
                        let tenant = stored
                            .doc
                            .get("tenant")
                            .and_then(Value::as_str)
                            .unwrap_or(TenantName::DEFAULT)
                            .to_string();
                        if broke.contains(&tenant) {
                            continue;
                        }
                        let (record, version) = from_stored::<T>(stored)?;
                        match attempt(record, version).await? {
                            Tried::Claimed(record) => {
                                return Ok(Round::Done(budget::Budgeted::Within(Some(record))));
                            }
                            // A cheaper job may still fit.
                            Tried::Over(refused) => {
                                if refused.tenant.is_some() {
                                    broke.insert(tenant);
                                }
                                over.get_or_insert(refused);
                            }
                            Tried::Passed => contended = true,
                        }
                    }
                }
                if !full || broke.is_empty() {
                    break;
                }
            }
            Ok(match over {
                Some(refused) => Round::Done(budget::Budgeted::Over(refused)),
                None if contended => Round::Lost,
                None => Round::Done(budget::Budgeted::Within(None)),
            })
        })
        .await
    }
}
