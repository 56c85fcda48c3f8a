//! What every worker stage shares: the names of its claims, the limits and
//! the report of a drain, saying once that its configuration is wrong, and
//! retrying a store write that must not be lost.

use crate::domain::Lease;
use crate::error::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Names the claims of one process: `image-generator-3f2a9c1e/17`. Unique per
/// claim, so that two tasks of one instance never pass for each other.
#[derive(Debug)]
pub struct Workers {
    prefix: String,
    next: AtomicU64,
}

impl Workers {
    /// Claim names for `stage`, with a random instance suffix.
    pub fn new(stage: &str) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("{stage}-{}", &instance[..8]),
            next: AtomicU64::new(1),
        }
    }

    /// A fresh lease of `ttl` under a new claim name.
    pub fn lease(&self, ttl: Duration) -> Lease {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Lease::new(format!("{}/{n}", self.prefix), ttl)
    }
}

/// Limits of a drain run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainLimits {
    /// Stop after this many jobs.
    pub max_jobs: Option<u64>,
    /// Stop claiming after this long.
    pub max_duration: Option<Duration>,
}

/// What a drain run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Jobs claimed and worked on.
    pub processed: u64,
    /// Of those, handed back for a later try.
    pub retried: u64,
}

impl DrainReport {
    /// The last line of every drain (`event` = `drain_finished`).
    pub fn log(&self, stage: &str) {
        tracing::info!(
            stage,
            processed = self.processed,
            retried = self.retried,
            event = "drain_finished",
            "drain finished"
        );
    }
}

/// How often a stage repeats the ERROR that says its configuration is
/// wrong; in between, jobs that meet it wait at WARN.
const MISCONFIGURED_REPEAT: Duration = Duration::from_secs(300);

/// Logs a misconfiguration (no credentials, a missing role) once per
/// [`MISCONFIGURED_REPEAT`] at ERROR with the fix, so that a batch waiting
/// on it says so once, not once per job.
pub fn report_misconfiguration(what: &str, e: &dyn std::fmt::Display) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let now = std::time::Instant::now();
    let due = {
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.is_none_or(|at| now.duration_since(at) >= MISCONFIGURED_REPEAT);
        if due {
            *last = Some(now);
        }
        due
    };
    if due {
        tracing::error!(
            event = "stage_misconfigured",
            error = %e,
            "{what}: jobs wait, without using attempts, until this is fixed"
        );
    } else {
        tracing::warn!(error = %e, "{what}; the job waits");
    }
}

/// Retries a store write a few times on transient errors. Used after a paid
/// call, where losing the write would mean paying again.
pub async fn with_store_retries<T, F, Fut>(mut write: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        match write().await {
            Err(e) if e.is_retryable() && tries < 5 => {
                tries += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}
