//! `rejected/{id}`: requests intake could not accept, kept for 30 days so an
//! operator can see what was sent and why it was refused (`asmr rejected`).
//!
//! The id is the Pub/Sub message id, so a redelivered poison message is one
//! record; a push body too broken to carry a message id gets an id derived
//! from its bytes, for the same reason.

#[cfg(doc)]
use super::MAX_PAGE;
use super::backend::{Collection, Dir};
use super::tenants::Scope;
use super::{Created, Page, Store};
use crate::domain::tenant::TenantName;
use crate::error::Result;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a rejected request is kept.
pub const REJECTED_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most bytes of a rejected body that are kept.
pub const BODY_EXCERPT_BYTES: usize = 2048;
/// The most bytes of a message id, an attribute name or an attribute value
/// that are kept: a record must fit in a Firestore document whatever was
/// sent, or the poison message would be redelivered forever.
pub const FIELD_EXCERPT_BYTES: usize = 256;
/// The most attributes of a rejected request that are kept.
pub const MAX_ATTRIBUTES: usize = 64;

const LIST_ORDER: &[(&str, Dir)] = &[("received_at", Dir::Desc), ("id", Dir::Desc)];

/// Which way a rejected request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectedSource {
    /// A Pub/Sub push of `asmr-requests`.
    Pubsub,
    /// `POST /v1/jobs`.
    Http,
}

/// A request that could not become jobs (`rejected/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// Document id: the message id, or one derived from the body.
    pub id: String,
    /// The Pub/Sub message id, when the push carried one.
    #[serde(default)]
    pub message_id: Option<String>,
    /// Why it was refused, as the sender would be told.
    pub reason: String,
    /// Which way it came in.
    pub source: RejectedSource,
    /// Message attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The start of the body ([`BODY_EXCERPT_BYTES`] at most), invalid UTF-8
    /// replaced.
    #[serde(default)]
    pub body: String,
    /// The size of the whole body in bytes.
    #[serde(default)]
    pub body_bytes: u64,
    /// When intake saw it first.
    pub received_at: Timestamp,
    /// When retention may delete it.
    pub expire_at: Timestamp,
    /// The tenant it was sent for, when intake knew it (absent: `default`).
    #[serde(default, skip_serializing_if = "TenantName::is_default")]
    pub tenant: TenantName,
}

impl Rejected {
    /// A record of `body`, refused for `reason`. Without a message id the id
    /// is derived from the body, so that the same broken push is one record.
    pub fn new(
        source: RejectedSource,
        message_id: Option<&str>,
        attributes: BTreeMap<String, String>,
        body: &[u8],
        reason: impl Into<String>,
        now: Timestamp,
    ) -> Self {
        let id = match message_id {
            Some(id) if is_plain_id(id) => id.to_string(),
            Some(id) => derived_id("message", id.as_bytes()),
            None => derived_id("body", body),
        };
        let attributes = attributes
            .iter()
            .take(MAX_ATTRIBUTES)
            .map(|(key, value)| {
                (
                    cut(key.as_bytes(), FIELD_EXCERPT_BYTES),
                    cut(value.as_bytes(), FIELD_EXCERPT_BYTES),
                )
            })
            .collect();
        Self {
            id,
            message_id: message_id.map(|id| cut(id.as_bytes(), FIELD_EXCERPT_BYTES)),
            reason: cut(reason.into().as_bytes(), BODY_EXCERPT_BYTES),
            source,
            attributes,
            body: cut(body, BODY_EXCERPT_BYTES),
            body_bytes: body.len() as u64,
            received_at: now,
            expire_at: now.plus(REJECTED_RETENTION),
            tenant: TenantName::default(),
        }
    }
}

/// Whether `id` can be a document id as it is (Pub/Sub's are digits).
fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !id.starts_with("__")
}

fn derived_id(what: &str, bytes: &[u8]) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2d7b_91c4_5e0f_4a8b_b3d6_0c9e_7f1a_4e22);
    format!("{what}-{}", uuid::Uuid::new_v5(&NAMESPACE, bytes).simple())
}

/// The first `limit` bytes of `bytes` as text, cut on a character boundary
/// when they are UTF-8.
fn cut(bytes: &[u8], limit: usize) -> String {
    let mut end = bytes.len().min(limit);
    if let Err(e) = std::str::from_utf8(&bytes[..end])
        && e.error_len().is_none()
    {
        // Only the last character was cut in half: drop it.
        end = e.valid_up_to();
    }
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl super::Record for Rejected {
    const COLLECTION: Collection = Collection::Rejected;
    const KIND: &'static str = "rejected request";

    fn id(&self) -> &str {
        &self.id
    }
}

impl Store {
    /// Records a rejected request unless one with its id exists (a
    /// redelivery); `created` says which.
    pub async fn record_rejected(&self, rejected: Rejected) -> Result<Created<Rejected>> {
        self.create(rejected).await
    }

    /// The rejected request, if it exists.
    pub async fn get_rejected(&self, id: &str) -> Result<Option<Rejected>> {
        Ok(self
            .load::<Rejected>(id)
            .await?
            .map(|(rejected, _)| rejected))
    }

    /// Rejected requests newest first, `limit` (at most [`MAX_PAGE`]) at a
    /// time; `after` is the previous page's `next`.
    pub async fn list_rejected(&self, limit: u32, after: Option<&str>) -> Result<Page<Rejected>> {
        self.list_rejected_in(&Scope::Everyone, limit, after).await
    }

    /// [`Store::list_rejected`] of `scope` only.
    pub async fn list_rejected_in(
        &self,
        scope: &Scope,
        limit: u32,
        after: Option<&str>,
    ) -> Result<Page<Rejected>> {
        let conds = scope.cond().into_iter().collect();
        let mut page: Page<Rejected> = self.page(conds, LIST_ORDER, limit, after).await?;
        page.items.retain(|rejected| scope.covers(&rejected.tenant));
        Ok(page)
    }

    /// How many rejected requests are kept.
    pub async fn count_rejected(&self) -> Result<u64> {
        self.count_rejected_in(&Scope::Everyone).await
    }

    /// How many rejected requests of `scope` are kept.
    pub async fn count_rejected_in(&self, scope: &Scope) -> Result<u64> {
        let counting = self.counting(scope).await?;
        self.count_in(Collection::Rejected, Vec::new(), &counting)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedBackend;
    use std::sync::Arc;

    fn store() -> Store {
        Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()))
    }

    fn rejected(message_id: Option<&str>, body: &[u8], at: Timestamp) -> Rejected {
        Rejected::new(
            RejectedSource::Pubsub,
            message_id,
            BTreeMap::from([("kind".to_string(), "audio".to_string())]),
            body,
            "kind is wrong",
            at,
        )
    }

    #[test]
    fn ids_are_message_ids_or_derived_from_what_was_sent() {
        let now = Timestamp::now();
        assert_eq!(
            rejected(Some("2070443601311540"), b"x", now).id,
            "2070443601311540"
        );
        let odd = rejected(Some("a/b"), b"x", now).id;
        assert!(odd.starts_with("message-") && !odd.contains('/'), "{odd}");
        assert_eq!(odd, rejected(Some("a/b"), b"y", now).id);
        let broken = rejected(None, b"{not json", now).id;
        assert!(broken.starts_with("body-"), "{broken}");
        assert_eq!(broken, rejected(None, b"{not json", now).id);
        assert_ne!(broken, rejected(None, b"{other", now).id);
        assert!(rejected(Some("__x__"), b"", now).id.starts_with("message-"));
    }

    #[test]
    fn bodies_are_kept_in_part_as_text() {
        let now = Timestamp::now();
        let big = "é".repeat(BODY_EXCERPT_BYTES);
        let record = rejected(Some("1"), big.as_bytes(), now);
        assert_eq!(record.body, "é".repeat(BODY_EXCERPT_BYTES / 2));
        assert_eq!(record.body_bytes, (BODY_EXCERPT_BYTES * 2) as u64);
        // Cut in the middle of a character: the half is dropped.
        let odd = format!("a{}", "é".repeat(BODY_EXCERPT_BYTES));
        let record = rejected(Some("1"), odd.as_bytes(), now);
        assert_eq!(record.body.len(), BODY_EXCERPT_BYTES - 1);
        assert!(!record.body.contains('\u{fffd}'));
        assert_eq!(
            rejected(Some("1"), b"\xff\xfeok", now).body,
            "\u{fffd}\u{fffd}ok"
        );
        assert_eq!(
            record.expire_at,
            record.received_at.plus(REJECTED_RETENTION)
        );
    }

    #[tokio::test]
    async fn a_redelivered_rejection_is_one_record_and_listing_is_newest_first() {
        let store = store();
        let start = Timestamp::now();
        for n in 0..5u64 {
            let at = start.plus(Duration::from_secs(n));
            let created = store
                .record_rejected(rejected(Some(&format!("m{n}")), b"body", at))
                .await
                .unwrap();
            assert!(created.created);
        }
        let again = store
            .record_rejected(rejected(
                Some("m1"),
                b"body",
                start.plus(Duration::from_secs(99)),
            ))
            .await
            .unwrap();
        assert!(!again.created);
        assert_eq!(again.record.received_at, start.plus(Duration::from_secs(1)));
        assert_eq!(store.count_rejected().await.unwrap(), 5);

        let first = store.list_rejected(2, None).await.unwrap();
        let ids: Vec<_> = first.items.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["m4", "m3"]);
        let mut all = ids.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut after = first.next;
        while let Some(token) = after {
            let page = store.list_rejected(2, Some(&token)).await.unwrap();
            all.extend(page.items.iter().map(|r| r.id.clone()));
            after = page.next;
        }
        assert_eq!(all, ["m4", "m3", "m2", "m1", "m0"]);
        assert_eq!(
            store.get_rejected("m2").await.unwrap().unwrap().reason,
            "kind is wrong"
        );
    }

    #[tokio::test]
    async fn rejected_requests_expire_after_thirty_days() {
        let store = store();
        let old = Timestamp::now().minus(REJECTED_RETENTION + Duration::from_secs(60));
        store
            .record_rejected(rejected(Some("old"), b"", old))
            .await
            .unwrap();
        store
            .record_rejected(rejected(Some("new"), b"", Timestamp::now()))
            .await
            .unwrap();
        assert_eq!(store.delete_expired().await.unwrap().rejected, 1);
        assert!(store.get_rejected("old").await.unwrap().is_none());
        assert!(store.get_rejected("new").await.unwrap().is_some());
    }
}
