//! The HTTP API's rate limits per tenant: requests per minute that write
//! (create jobs, act on them) and that read (get, list, the figures), each
//! tenant with its own. Each UTC minute of a tenant's class of requests is
//! a window in the store; an instance takes requests from it in blocks of
//! an eighth of the limit and admits them from memory, so the limit holds
//! across instances (never more in a minute, whatever their number) with a
//! store write per block, not per request. A request over the limit is
//! answered `429` with `Retry-After`: the seconds until the next minute.

use crate::domain::tenant::TenantName;
use crate::error::Result;
use crate::store::Store;
use crate::time::Timestamp;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A class of API requests, each with its own limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Creating jobs and acting on them.
    Writes,
    /// Reading jobs and figures.
    Reads,
}

impl Class {
    /// Its name in window ids and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Writes => "writes",
            Class::Reads => "reads",
        }
    }
}

/// What a request is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Within the limit.
    Admitted,
    /// Over it; the minute turns in this long.
    Limited {
        /// Until the next window.
        retry_after: Duration,
    },
}

/// Requests an instance holds for a tenant's class in a minute.
#[derive(Clone, Copy, Debug)]
struct Held {
    minute: i64,
    left: u32,
}

/// The per-tenant limits of one intake instance, and the requests it holds.
#[derive(Debug, Default)]
pub struct RateLimits {
    writes: Option<u32>,
    reads: Option<u32>,
    held: Mutex<HashMap<(TenantName, Class), Held>>,
}

impl RateLimits {
    /// At most `writes` and `reads` requests a minute per tenant (`None`:
    /// no limit).
    pub fn new(writes: Option<u32>, reads: Option<u32>) -> Self {
        Self {
            writes: writes.filter(|n| *n > 0),
            reads: reads.filter(|n| *n > 0),
            held: Mutex::default(),
        }
    }

    fn limit(&self, class: Class) -> Option<u32> {
        match class {
            Class::Writes => self.writes,
            Class::Reads => self.reads,
        }
    }

    /// Admits one request of `class` for `tenant`, or says how long to wait.
    pub async fn admit(
        &self,
        store: &Store,
        tenant: &TenantName,
        class: Class,
    ) -> Result<Admission> {
        let Some(limit) = self.limit(class) else {
            return Ok(Admission::Admitted);
        };
        let (seconds, _) = Timestamp::now().unix_parts();
        let minute = seconds.div_euclid(60);
        let key = (tenant.clone(), class);
        if self.take_held(&key, minute) {
            return Ok(Admission::Admitted);
        }
        let block = (limit / 8).max(1);
        let taken = store
            .take_requests(tenant, class.as_str(), minute, limit, block)
            .await?;
        if taken == 0 {
            let retry_after =
                Duration::from_secs(u64::try_from(60 - seconds.rem_euclid(60)).unwrap_or(60));
            return Ok(Admission::Limited { retry_after });
        }
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = held.entry(key).or_insert(Held { minute, left: 0 });
        if entry.minute != minute {
            *entry = Held { minute, left: 0 };
        }
        // This request takes one of the block; the rest wait in memory.
        entry.left += taken - 1;
        Ok(Admission::Admitted)
    }

    /// Takes one request held for `key` in `minute`, if any.
    fn take_held(&self, key: &(TenantName, Class), minute: i64) -> bool {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match held.get_mut(key) {
            Some(entry) if entry.minute == minute && entry.left > 0 => {
                entry.left -= 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::store::embedded::EmbeddedBackend;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use std::sync::Arc;
    use tower::ServiceExt;

    /// Status and `Retry-After` of `request` sent with `key`.
    async fn send(app: &App, key: &str, request: Request<Body>) -> (StatusCode, Option<u64>) {
        let mut request = request;
        request
            .headers_mut()
            .insert("x-api-key", key.parse().unwrap());
        let response = app.router.clone().oneshot(request).await.unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        (response.status(), retry_after)
    }

    fn create(n: usize) -> Request<Body> {
        let body = format!(r#"{{"kind": "image", "prompt": "tap {n}"}}"#);
        Request::post("/v1/jobs").body(Body::from(body)).unwrap()
    }

    /// The current UTC minute, as windows count them.
    fn minute() -> i64 {
        Timestamp::now().unix_parts().0.div_euclid(60)
    }

    fn stats() -> Request<Body> {
        Request::get("/v1/stats").body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_tenants_limit_holds_across_instances_and_leaves_others_alone() {
        let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
        let limits = || RateLimits::new(Some(5), Some(100));
        let (one, two) = (
            app_on(store.clone(), limits()).await,
            app_on(store.clone(), limits()).await,
        );
        let acme = key_of(&store, "acme").await;
        let began = minute();
        let mut admitted = 0;
        let mut limited = Vec::new();
        for n in 0..8 {
            let app = if n % 2 == 0 { &one } else { &two };
            match send(app, &acme, create(n)).await {
                (StatusCode::CREATED, None) => admitted += 1,
                (StatusCode::TOO_MANY_REQUESTS, Some(wait)) => limited.push(wait),
                other => panic!("create {n}: {other:?}"),
            }
        }
        // Exactly the limit went through, over both instances together
        // (more only if a new minute began during the loop).
        match minute() == began {
            true => assert_eq!(admitted, 5, "{limited:?}"),
            false => assert!(admitted <= 8),
        }
        assert!(
            limited.iter().all(|wait| (1..=60).contains(wait)),
            "{limited:?}"
        );
        // Reads have their own limit, and another tenant its own window.
        assert_eq!(send(&one, &acme, stats()).await.0, StatusCode::OK);
        let globex = key_of(&store, "globex").await;
        assert_eq!(
            send(&two, &globex, create(100)).await.0,
            StatusCode::CREATED
        );
    }

    #[tokio::test]
    async fn an_instance_takes_a_block_of_an_eighth_and_admits_it_from_memory() {
        let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()));
        let limits = RateLimits::new(None, Some(64));
        let tenant: TenantName = "acme".parse().unwrap();
        let began = minute();
        for _ in 0..8 {
            let admitted = limits.admit(&store, &tenant, Class::Reads).await.unwrap();
            assert_eq!(admitted, Admission::Admitted);
        }
        if minute() == began {
            // Eight requests took one block of 8: the window handed out 8,
            // so 56 are left for anyone else.
            let left = store
                .take_requests(&tenant, "reads", began, 64, 64)
                .await
                .unwrap();
            assert_eq!(left, 56);
            // And now the window is spent: the next request beyond what
            // this instance holds waits for the next minute.
            let next = limits.admit(&store, &tenant, Class::Reads).await.unwrap();
            if minute() == began {
                assert!(matches!(next, Admission::Limited { .. }), "{next:?}");
            }
        }
        // No limit for writes: nothing is counted.
        let free = limits.admit(&store, &tenant, Class::Writes).await.unwrap();
        assert_eq!(free, Admission::Admitted);
    }
}
