//! Request windows of the API's per-tenant rate limits: one
//! `limits/{tenant}.{class}.{minute}` document per tenant, class of
//! request and UTC minute, counting the requests handed out in it. Each
//! intake instance takes requests from it in blocks (one conditional write
//! per block) and admits them from memory, so a tenant's limit holds across
//! any number of instances without a write per request: never more than
//! the limit in a minute, at the cost of what an instance's block leaves
//! unused when the minute ends.

use super::backend::{Collection, Write};
use super::{Round, Store, from_stored_as, to_doc, until_done};
use crate::domain::tenant::TenantName;
use crate::error::Result;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a window is kept after its minute (retention, TTL).
const WINDOW_RETENTION: Duration = Duration::from_secs(3600);

/// One minute of one tenant's requests of one class (`limits/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Window {
    id: String,
    tenant: TenantName,
    class: String,
    /// Unix time of the minute's start, in minutes.
    minute: i64,
    /// Requests handed out to instances in this minute.
    granted: u32,
    expire_at: Timestamp,
}

impl Store {
    /// Takes up to `block` requests of `class` for `tenant` from the minute
    /// `minute` (Unix minutes) under `limit` per minute; how many it got (0:
    /// the minute is spent).
    pub async fn take_requests(
        &self,
        tenant: &TenantName,
        class: &str,
        minute: i64,
        limit: u32,
        block: u32,
    ) -> Result<u32> {
        let id = format!("{tenant}.{class}.{minute}");
        until_done("limit window", &id, || async {
            let (mut window, version) = match self.backend.get(Collection::Limits, &id).await? {
                Some(stored) => {
                    let (window, version) = from_stored_as::<Window>(Collection::Limits, stored)?;
                    (window, Some(version))
                }
                None => {
                    let end = Timestamp::from_unix_parts((minute + 1) * 60, 0)
                        .unwrap_or_else(Timestamp::now);
                    let window = Window {
                        id: id.clone(),
                        tenant: tenant.clone(),
                        class: class.to_string(),
                        minute,
                        granted: 0,
                        expire_at: end.plus(WINDOW_RETENTION),
                    };
                    (window, None)
                }
            };
            let taken = block.min(limit.saturating_sub(window.granted));
            if taken == 0 {
                return Ok(Round::Done(0));
            }
            window.granted += taken;
            let write = Write::over(Collection::Limits, id.clone(), version, to_doc(&window)?);
            Ok(match self.backend.commit(&[write]).await? {
                true => Round::Done(taken),
                false => Round::Lost,
            })
        })
        .await
    }
}
