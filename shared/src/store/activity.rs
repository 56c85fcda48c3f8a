//! What happened in the last hour: jobs created and generated, files
//! delivered, minute by minute; failures by reason; the model-call and
//! download success rates; how long the oldest pending job has waited; and
//! jobs per status for each tenant. The live page and `asmr stats` show
//! these beside the counts of [`super::stats`].
//!
//! Every figure is read from the store, so every process that reads it
//! shows the same. Minutes that are over do not change, so a reader that
//! keeps an [`ActivityCache`] reads each of them once and then only the
//! minute under way and the one before it (a write can land a moment after
//! its minute ends); failures are read as they come (only those after the
//! newest one already seen).

use super::backend::{Cond, Dir, Scalar};
use super::tenants::{Counting, Scope};
use super::{Store, str_eq};
use crate::domain::job::Job;
use crate::domain::values::JobStatus;
use crate::error::Result;
use crate::store::backend::Collection;
use crate::time::Timestamp;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The minutes of the series: the one under way and the 59 before it.
pub const MINUTES: usize = 60;

/// Minutes read again on every read, the one under way last: a job's
/// timestamp is taken before its write commits, so a minute can still
/// gain a few records just after it ends.
const OPEN_MINUTES: usize = 2;

/// Failed jobs read per page when catching up with new failures.
const FAILURES_PAGE: u32 = 500;

/// The last hour, as the live page and `asmr stats --json` show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Activity {
    /// Totals over the last hour (the 60 minutes of `per_minute`).
    pub last_hour: HourTotals,
    /// Per minute, oldest first, the minute under way last.
    pub per_minute: PerMinute,
    /// Jobs that failed in the last hour, by error code (`filtered`,
    /// `attempts_exhausted`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Of the jobs whose model call ended in the last hour, the share that
    /// produced outputs: generated / (generated + failed). `None` when no
    /// call ended.
    pub model_call_success_rate: Option<f64>,
    /// Of the copies that ended in the last hour, the share that delivered
    /// their file: delivered / (delivered + failed downloads). `None` when
    /// none ended.
    pub download_completion_rate: Option<f64>,
    /// Seconds since the oldest pending job was created; `None` when none
    /// is pending.
    pub oldest_pending_age_s: Option<u64>,
    /// The model's quota in use: per model, the calls that ended in the
    /// last 60 seconds (outputs made, or the job failed), to read against
    /// the model's requests-per-minute quota. A call the quota refused
    /// (429) is not counted, as Vertex AI does not count it either.
    pub calls_last_minute: BTreeMap<String, u64>,
}

/// Totals over the last hour.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HourTotals {
    /// Jobs created.
    pub created: u64,
    /// Jobs whose outputs were made (completed).
    pub generated: u64,
    /// Files delivered (copies completed).
    pub delivered: u64,
    /// Jobs failed.
    pub failed: u64,
    /// Copies failed.
    pub downloads_failed: u64,
}

/// Counts per minute, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PerMinute {
    /// Jobs created.
    pub created: Vec<u64>,
    /// Jobs generated.
    pub generated: Vec<u64>,
    /// Files delivered.
    pub delivered: Vec<u64>,
}

/// The three series, each a count of records whose timestamp falls in a
/// minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Series {
    Created,
    Generated,
    Delivered,
}

impl Series {
    const ALL: [Series; 3] = [Series::Created, Series::Generated, Series::Delivered];

    /// The collection and the timestamp counted.
    fn source(self) -> (Collection, &'static str) {
        match self {
            Series::Created => (Collection::Jobs, "created_at"),
            // Set when the outputs are made; a failure never sets it.
            Series::Generated => (Collection::Jobs, "completed_at"),
            // Set only when a copy completes.
            Series::Delivered => (Collection::Downloads, "completed_at"),
        }
    }
}

/// What a reader keeps between reads: the counts of minutes that are
/// over, and the failures of the last hour.
#[derive(Debug, Default)]
pub struct ActivityCache {
    minutes: HashMap<(Series, i64), u64>,
    failures: BTreeMap<String, (Timestamp, String)>,
    failures_read_to: Option<Timestamp>,
}

/// The start of the minute of `at`, in Unix minutes.
fn minute_of(at: Timestamp) -> i64 {
    at.unix_parts().0.div_euclid(60)
}

fn minute_start(minute: i64) -> Timestamp {
    Timestamp::from_unix_parts(minute * 60, 0).unwrap_or_else(Timestamp::now)
}

fn ratio(good: u64, bad: u64) -> Option<f64> {
    let all = good + bad;
    // Three decimals are enough for a rate, and keep the figure stable.
    (all > 0).then(|| (good as f64 / all as f64 * 1000.0).round() / 1000.0)
}

impl Store {
    /// The last hour of `scope`, read with no cache (every minute read).
    pub async fn activity_in(&self, scope: &Scope) -> Result<Activity> {
        let models = self.models_in_use().await?;
        self.activity_cached(
            scope,
            Timestamp::now(),
            &models,
            &mut ActivityCache::default(),
        )
        .await
    }

    /// The last hour of `scope` at `now`, with the calls to each of
    /// `models` (those in use), reading only what `cache` does not hold
    /// yet.
    pub async fn activity_cached(
        &self,
        scope: &Scope,
        now: Timestamp,
        models: &[String],
        cache: &mut ActivityCache,
    ) -> Result<Activity> {
        let counting = &self.counting(scope).await?;
        let current = minute_of(now);
        let first = current - MINUTES as i64 + 1;
        cache.minutes.retain(|(_, minute), _| *minute >= first);
        let wanted: Vec<(Series, i64)> = Series::ALL
            .iter()
            .flat_map(|series| (first..=current).map(move |minute| (*series, minute)))
            .filter(|key| key.1 > current - OPEN_MINUTES as i64 || !cache.minutes.contains_key(key))
            .collect();
        let hour_ago = now.minus(Duration::from_secs(MINUTES as u64 * 60));
        let failed_since = |collection| {
            self.count_in(
                collection,
                vec![
                    str_eq("status", JobStatus::Failed.as_str()),
                    Cond::Ge("updated_at", Scalar::Time(hour_ago)),
                ],
                counting,
            )
        };
        let (counts, failed, downloads_failed, oldest, calls) = tokio::try_join!(
            futures::future::try_join_all(
                wanted
                    .iter()
                    .map(|(series, minute)| self.count_minute(*series, *minute, counting)),
            ),
            failed_since(Collection::Jobs),
            failed_since(Collection::Downloads),
            self.oldest_pending(scope),
            self.calls_last_minute(now, models, counting),
        )?;
        cache.minutes.extend(wanted.into_iter().zip(counts));
        self.read_failures(scope, hour_ago, cache).await?;

        let series = |series: Series| -> Vec<u64> {
            (first..=current)
                .map(|minute| cache.minutes.get(&(series, minute)).copied().unwrap_or(0))
                .collect()
        };
        let per_minute = PerMinute {
            created: series(Series::Created),
            generated: series(Series::Generated),
            delivered: series(Series::Delivered),
        };
        let last_hour = HourTotals {
            created: per_minute.created.iter().sum(),
            generated: per_minute.generated.iter().sum(),
            delivered: per_minute.delivered.iter().sum(),
            failed,
            downloads_failed,
        };
        let mut failures = BTreeMap::new();
        for (_, code) in cache.failures.values() {
            *failures.entry(code.clone()).or_insert(0) += 1;
        }
        let age = |created: Timestamp| {
            let (now_s, _) = now.unix_parts();
            u64::try_from(now_s - created.unix_parts().0).unwrap_or(0)
        };
        Ok(Activity {
            model_call_success_rate: ratio(last_hour.generated, last_hour.failed),
            download_completion_rate: ratio(last_hour.delivered, last_hour.downloads_failed),
            oldest_pending_age_s: oldest.map(age),
            per_minute,
            failures,
            last_hour,
            calls_last_minute: calls,
        })
    }

    /// Per model in use, the calls that ended in the minute before `now`:
    /// jobs that got their outputs, and jobs that failed.
    async fn calls_last_minute(
        &self,
        now: Timestamp,
        models: &[String],
        counting: &Counting,
    ) -> Result<BTreeMap<String, u64>> {
        let since = Scalar::Time(now.minus(Duration::from_secs(60)));
        let calls = futures::future::try_join_all(models.iter().map(|model| {
            let since = since.clone();
            async move {
                let made = vec![
                    str_eq("model", model),
                    Cond::Ge("completed_at", since.clone()),
                ];
                let failed = vec![
                    str_eq("status", JobStatus::Failed.as_str()),
                    str_eq("model", model),
                    Cond::Ge("updated_at", since),
                ];
                let (made, failed) = tokio::try_join!(
                    self.count_in(Collection::Jobs, made, counting),
                    self.count_in(Collection::Jobs, failed, counting),
                )?;
                Ok::<_, crate::error::Error>((model.clone(), made + failed))
            }
        }))
        .await?;
        Ok(calls.into_iter().collect())
    }

    async fn count_minute(&self, series: Series, minute: i64, counting: &Counting) -> Result<u64> {
        let (collection, field) = series.source();
        let conds = vec![
            Cond::Ge(field, Scalar::Time(minute_start(minute))),
            Cond::Lt(field, Scalar::Time(minute_start(minute + 1))),
        ];
        self.count_in(collection, conds, counting).await
    }

    /// When the oldest pending job of `scope` was created.
    async fn oldest_pending(&self, scope: &Scope) -> Result<Option<Timestamp>> {
        let mut conds = vec![str_eq("status", JobStatus::Pending.as_str())];
        conds.extend(scope.cond());
        let order = [("created_at", Dir::Asc), ("id", Dir::Asc)];
        let mut after = None;
        // The default tenant's jobs carry no field to filter on: pass over
        // others' (a few pages at most; beyond them the age is unknown).
        for _ in 0..4 {
            let page = self
                .page::<Job>(conds.clone(), &order, 100, after.as_deref())
                .await?;
            if let Some(job) = page.items.iter().find(|job| scope.covers(job.tenant())) {
                return Ok(Some(job.created_at()));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Brings `cache.failures` up to `hour_ago`..now: drops those older,
    /// reads those after the newest seen.
    async fn read_failures(
        &self,
        scope: &Scope,
        hour_ago: Timestamp,
        cache: &mut ActivityCache,
    ) -> Result<()> {
        cache.failures.retain(|_, (at, _)| *at >= hour_ago);
        // A failure is stamped before its write commits: read again from a
        // little before the newest one seen.
        let from = match cache.failures_read_to {
            Some(to) if to > hour_ago => to.minus(Duration::from_secs(5)),
            _ => hour_ago,
        };
        let mut conds = vec![
            str_eq("status", JobStatus::Failed.as_str()),
            Cond::Ge("updated_at", Scalar::Time(from)),
        ];
        conds.extend(scope.cond());
        let order = [("updated_at", Dir::Asc), ("id", Dir::Asc)];
        let mut after = None;
        let mut newest = cache.failures_read_to;
        loop {
            let page = self
                .page::<Job>(conds.clone(), &order, FAILURES_PAGE, after.as_deref())
                .await?;
            for job in page.items.iter().filter(|job| scope.covers(job.tenant())) {
                let code = job.error().map_or("unknown", |e| e.code.as_str());
                cache
                    .failures
                    .insert(job.id().to_string(), (job.updated_at(), code.to_string()));
            }
            if let Some(last) = page.items.last() {
                newest = newest.max(Some(last.updated_at()));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        cache.failures_read_to = newest.or(Some(hour_ago));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_has_three_decimals_and_none_without_calls() {
        assert_eq!(ratio(0, 0), None);
        assert_eq!(ratio(2, 1), Some(0.667));
        assert_eq!(ratio(5, 0), Some(1.0));
    }

    #[test]
    fn minutes_are_whole_unix_minutes() {
        let at = Timestamp::parse("2026-12-06T10:00:59.999Z").unwrap();
        let minute = minute_of(at);
        assert_eq!(
            minute_start(minute),
            Timestamp::parse("2026-12-06T10:00:00Z").unwrap()
        );
        assert!(minute_start(minute + 1) > at);
    }
}
