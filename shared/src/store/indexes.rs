//! The composite Firestore indexes the store's queries need.
//!
//! Firestore serves a query that involves more than one field (an equality
//! and an order, two orders, a range and an order) only from a composite
//! index declared in advance; without one the query fails with
//! FAILED_PRECONDITION. Queries made of equality filters alone are served by
//! merging the automatic single-field indexes and need none.
//!
//! [`INDEXES`] lists every composite index the store needs. Terraform
//! declares each of them (`terraform/firestore.tf`, compared by the `tests`
//! crate), and the unit test below runs every store operation over a
//! recording backend and fails on a query that no index here serves, or on
//! an index here that no query uses.

use super::backend::{Collection, Cond, Dir};
use std::collections::BTreeSet;

/// One field of a composite index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexField {
    /// Field path.
    pub path: &'static str,
    /// Sort direction.
    pub dir: Dir,
}

/// A composite index over one collection (unprefixed name): the equality
/// fields first, then the order of the query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Index {
    /// The collection it indexes.
    pub collection: Collection,
    /// Its fields, in index order.
    pub fields: &'static [IndexField],
}

const fn asc(path: &'static str) -> IndexField {
    IndexField {
        path,
        dir: Dir::Asc,
    }
}

const fn desc(path: &'static str) -> IndexField {
    IndexField {
        path,
        dir: Dir::Desc,
    }
}

/// Claim order (priority, then oldest), as used by claims and by the
/// listing of downloads.
const CLAIM: [IndexField; 3] = [desc("priority"), asc("created_at"), asc("id")];

/// Every composite index the store's queries need.
pub const INDEXES: &[Index] = &[
    // claim_next_job
    Index {
        collection: Collection::Jobs,
        fields: &[asc("status"), asc("kind"), CLAIM[0], CLAIM[1], CLAIM[2]],
    },
    // list_jobs without a filter, by status, by kind, by both
    Index {
        collection: Collection::Jobs,
        fields: &[desc("created_at"), desc("id")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("status"), desc("created_at"), desc("id")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("kind"), desc("created_at"), desc("id")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("status"), asc("kind"), desc("created_at"), desc("id")],
    },
    // list_jobs of reviewed jobs (by verdict), alone or with a status, a
    // kind (promotable: approved images), or both
    Index {
        collection: Collection::Jobs,
        fields: &[asc("verdict"), desc("created_at"), desc("id")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[
            asc("status"),
            asc("verdict"),
            desc("created_at"),
            desc("id"),
        ],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("kind"), asc("verdict"), desc("created_at"), desc("id")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[
            asc("status"),
            asc("kind"),
            asc("verdict"),
            desc("created_at"),
            desc("id"),
        ],
    },
    // reset_stuck_jobs; the janitor's idle pending jobs
    Index {
        collection: Collection::Jobs,
        fields: &[asc("status"), asc("updated_at"), asc("id")],
    },
    // expire_job_leases
    Index {
        collection: Collection::Jobs,
        fields: &[asc("status"), asc("lease_expires_at"), asc("id")],
    },
    // list_downloads without a filter
    Index {
        collection: Collection::Downloads,
        fields: &CLAIM,
    },
    // claim_next_download; list_downloads by status
    Index {
        collection: Collection::Downloads,
        fields: &[asc("status"), CLAIM[0], CLAIM[1], CLAIM[2]],
    },
    // a tenant's jobs, downloads and rejected requests; merged with the
    // indexes above for a tenant's jobs by status, kind or verdict
    Index {
        collection: Collection::Jobs,
        fields: &[asc("tenant"), desc("created_at"), desc("id")],
    },
    Index {
        collection: Collection::Downloads,
        fields: &[asc("tenant"), CLAIM[0], CLAIM[1], CLAIM[2]],
    },
    Index {
        collection: Collection::Rejected,
        fields: &[asc("tenant"), desc("received_at"), desc("id")],
    },
    // list_rejected
    Index {
        collection: Collection::Rejected,
        fields: &[desc("received_at"), desc("id")],
    },
    // delete_expired, in every collection
    Index {
        collection: Collection::Jobs,
        fields: &[asc("expire_at"), asc("id")],
    },
    Index {
        collection: Collection::Downloads,
        fields: &[asc("expire_at"), asc("id")],
    },
    Index {
        collection: Collection::Rejected,
        fields: &[asc("expire_at"), asc("id")],
    },
    Index {
        collection: Collection::Budgets,
        fields: &[asc("expire_at"), asc("id")],
    },
    Index {
        collection: Collection::Held,
        fields: &[asc("expire_at"), asc("id")],
    },
    Index {
        collection: Collection::Charges,
        fields: &[asc("expire_at"), asc("id")],
    },
    Index {
        collection: Collection::Limits,
        fields: &[asc("expire_at"), asc("id")],
    },
    Index {
        collection: Collection::Webhooks,
        fields: &[asc("expire_at"), asc("id")],
    },
    // due_deliveries
    Index {
        collection: Collection::Webhooks,
        fields: &[asc("state"), asc("next_at"), asc("id")],
    },
    // list_deliveries
    Index {
        collection: Collection::Webhooks,
        fields: &[desc("created_at"), desc("id")],
    },
    Index {
        collection: Collection::Webhooks,
        fields: &[asc("tenant"), desc("created_at"), desc("id")],
    },
    Index {
        collection: Collection::Webhooks,
        fields: &[asc("state"), desc("created_at"), desc("id")],
    },
    Index {
        collection: Collection::Webhooks,
        fields: &[asc("tenant"), asc("state"), desc("created_at"), desc("id")],
    },
    // a day's budget as a whole: its shards
    Index {
        collection: Collection::Budgets,
        fields: &[asc("budget"), asc("id")],
    },
    // charges_on
    Index {
        collection: Collection::Charges,
        fields: &[asc("day"), asc("id")],
    },
    // the last hour (activity_in): records per minute of one tenant;
    // failures since a time (counted, and read in order); the oldest
    // pending job
    Index {
        collection: Collection::Jobs,
        fields: &[asc("tenant"), asc("created_at")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("tenant"), asc("completed_at")],
    },
    Index {
        collection: Collection::Downloads,
        fields: &[asc("tenant"), asc("completed_at")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("status"), asc("updated_at")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("tenant"), asc("status"), asc("updated_at")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("tenant"), asc("status"), asc("updated_at"), asc("id")],
    },
    Index {
        collection: Collection::Downloads,
        fields: &[asc("status"), asc("updated_at")],
    },
    Index {
        collection: Collection::Downloads,
        fields: &[asc("tenant"), asc("status"), asc("updated_at")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("status"), asc("created_at"), asc("id")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("tenant"), asc("status"), asc("created_at"), asc("id")],
    },
    // calls_last_minute: a model's calls that ended since a time
    Index {
        collection: Collection::Jobs,
        fields: &[asc("model"), asc("completed_at")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("tenant"), asc("model"), asc("completed_at")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[asc("status"), asc("model"), asc("updated_at")],
    },
    Index {
        collection: Collection::Jobs,
        fields: &[
            asc("tenant"),
            asc("status"),
            asc("model"),
            asc("updated_at"),
        ],
    },
    // models_in_use: the next model name after one
    Index {
        collection: Collection::Jobs,
        fields: &[asc("model"), asc("id")],
    },
    // publish_outbox: entries left behind, oldest first
    Index {
        collection: Collection::Outbox,
        fields: &[asc("created_at"), asc("id")],
    },
];

/// What a query asks of an index: its collection, the fields it filters by
/// equality (`==`, `in`), the fields it filters by range, and its order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryShape {
    /// The collection queried.
    pub collection: Collection,
    /// Fields under `==` or `in`.
    pub equalities: BTreeSet<&'static str>,
    /// Fields under `<`.
    pub ranges: BTreeSet<&'static str>,
    /// Sort order.
    pub order: Vec<(&'static str, Dir)>,
}

impl QueryShape {
    /// The shape of a query (a count has no order).
    pub fn of(collection: Collection, conds: &[Cond], order: &[(&'static str, Dir)]) -> Self {
        let mut equalities = BTreeSet::new();
        let mut ranges = BTreeSet::new();
        for cond in conds {
            match cond {
                Cond::Eq(field, _) | Cond::In(field, _) => equalities.insert(*field),
                Cond::Lt(field, _) | Cond::Ge(field, _) => ranges.insert(*field),
            };
        }
        Self {
            collection,
            equalities,
            ranges,
            order: order.to_vec(),
        }
    }

    /// The shape of a count: Firestore serves its range filter in the
    /// order of the range's field, ascending.
    pub fn of_count(collection: Collection, conds: &[Cond]) -> Self {
        let mut shape = Self::of(collection, conds, &[]);
        shape.order = shape
            .ranges
            .iter()
            .map(|field| (*field, Dir::Asc))
            .collect();
        shape
    }

    /// Whether Firestore needs a composite index for it: more than one field
    /// involved, unless every filter is an equality and nothing is ordered.
    pub fn needs_composite_index(&self) -> bool {
        if self.order.is_empty() && self.ranges.is_empty() {
            return false;
        }
        let mut fields: BTreeSet<&str> = self.equalities.clone();
        fields.extend(&self.ranges);
        fields.extend(self.order.iter().map(|(field, _)| *field));
        fields.len() > 1
    }

    /// Whether `index` serves it: same collection, the equality fields first
    /// (in any order), then exactly the query's order, which must include
    /// every range field.
    pub fn served_by(&self, index: &Index) -> bool {
        let eq = self.equalities.len();
        if index.collection != self.collection || index.fields.len() != eq + self.order.len() {
            return false;
        }
        let (head, tail) = index.fields.split_at(eq);
        let head: BTreeSet<&str> = head.iter().map(|f| f.path).collect();
        head == self.equalities
            && tail
                .iter()
                .zip(&self.order)
                .all(|(f, (field, dir))| f.path == *field && f.dir == *dir)
            && self
                .ranges
                .iter()
                .all(|r| self.order.iter().any(|(field, _)| field == r))
    }
}

/// The indexes of [`INDEXES`] that serve `shape`: one that serves it
/// alone, else several Firestore merges (each with some of the equality
/// fields and the query's whole order, together all of them; no range).
/// `None` when nothing here serves it.
pub fn index_for(shape: &QueryShape) -> Option<Vec<&'static Index>> {
    if let Some(index) = INDEXES.iter().find(|index| shape.served_by(index)) {
        return Some(vec![index]);
    }
    if !shape.ranges.is_empty() || shape.equalities.len() < 2 {
        return None;
    }
    let mut covered = BTreeSet::new();
    let mut merged = Vec::new();
    for index in INDEXES {
        let Some(eq) = index.fields.len().checked_sub(shape.order.len()) else {
            continue;
        };
        let part = QueryShape {
            equalities: index.fields[..eq].iter().map(|f| f.path).collect(),
            ..shape.clone()
        };
        if eq > 0 && part.equalities.is_subset(&shape.equalities) && part.served_by(index) {
            covered.extend(part.equalities);
            merged.push(index);
        }
    }
    (covered == shape.equalities).then_some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Lease;
    use crate::domain::download::{FileType, NewDownload};
    use crate::domain::job::NewJob;
    use crate::domain::tenant::TenantName;
    use crate::domain::values::{JobKind, JobStatus};
    use crate::domain::webhook_delivery::DeliveryState;
    use crate::error::Result;
    use crate::store::backend::{Backend, Doc, Query, Scalar, Stored, Version, Write};
    use crate::store::budget::Budget;
    use crate::store::embedded::EmbeddedBackend;
    use crate::store::rejected::{Rejected, RejectedSource};
    use crate::store::tenants::Scope;
    use crate::store::webhooks::DeliveryFilter;
    use crate::store::{JobFilter, Store};
    use crate::time::Timestamp;
    use async_trait::async_trait;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// The embedded backend, remembering the shape of every query and count.
    struct Recording {
        inner: EmbeddedBackend,
        shapes: Mutex<Vec<QueryShape>>,
    }

    impl Recording {
        fn record(&self, shape: QueryShape) {
            let mut shapes = self.shapes.lock().unwrap();
            if !shapes.contains(&shape) {
                shapes.push(shape);
            }
        }
    }

    #[async_trait]
    impl Backend for Recording {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        async fn get(&self, collection: Collection, id: &str) -> Result<Option<Stored>> {
            self.inner.get(collection, id).await
        }
        async fn create(
            &self,
            collection: Collection,
            id: &str,
            doc: &Doc,
        ) -> Result<Option<Version>> {
            self.inner.create(collection, id, doc).await
        }
        async fn replace(
            &self,
            collection: Collection,
            id: &str,
            expected: &Version,
            doc: &Doc,
        ) -> Result<bool> {
            self.inner.replace(collection, id, expected, doc).await
        }
        async fn commit(&self, writes: &[Write]) -> Result<bool> {
            self.inner.commit(writes).await
        }
        async fn delete(
            &self,
            collection: Collection,
            id: &str,
            expected: &Version,
        ) -> Result<bool> {
            self.inner.delete(collection, id, expected).await
        }
        async fn query(&self, collection: Collection, query: &Query) -> Result<Vec<Stored>> {
            self.record(QueryShape::of(collection, &query.conds, &query.order));
            self.inner.query(collection, query).await
        }
        async fn count(&self, collection: Collection, conds: &[Cond]) -> Result<u64> {
            self.record(QueryShape::of_count(collection, conds));
            self.inner.count(collection, conds).await
        }
    }

    fn new_download(job_id: &str, n: usize) -> NewDownload {
        NewDownload {
            job_id: job_id.to_string(),
            bucket: "out".into(),
            object: format!("images/{job_id}/{n}.png"),
            generation: Some(1),
            destination: crate::domain::destination::Target::File(
                format!("/archive/images/{job_id}/{n}.png").into(),
            ),
            file_type: FileType::Image,
            priority: 10,
            size: Some(3),
            crc32c: None,
            tenant: Default::default(),
        }
    }

    /// Runs every query the store can make, with enough records that the
    /// listings page and the claims find candidates.
    async fn exercise(store: &Store) {
        let lease = Lease::new("index-test", Duration::from_secs(60));
        let mut job_ids = Vec::new();
        for (i, kind) in [JobKind::Image, JobKind::Video, JobKind::Image]
            .into_iter()
            .enumerate()
        {
            let job = store
                .create_job(NewJob::new(format!("prompt {i}"), kind))
                .await
                .unwrap();
            job_ids.push(job.record.id().to_string());
        }
        for id in &job_ids {
            store.create_download(new_download(id, 0)).await.unwrap();
            store.create_download(new_download(id, 1)).await.unwrap();
        }

        let acme: crate::domain::tenant::TenantName = "acme".parse().unwrap();
        let tenants = [None, Some(acme.clone())];
        for status in [None, Some(JobStatus::Pending)] {
            for kind in [None, Some(JobKind::Image)] {
                for approved in [None, Some(true)] {
                    for tenant in &tenants {
                        let filter = JobFilter {
                            status,
                            kind,
                            approved,
                            tenant: tenant.clone(),
                        };
                        let first = store.list_jobs(&filter, 1, None).await.unwrap();
                        if let Some(next) = first.next {
                            store.list_jobs(&filter, 1, Some(&next)).await.unwrap();
                        }
                    }
                }
            }
        }
        let scopes = [
            Scope::Everyone,
            Scope::Tenant(acme),
            Scope::default_tenant(),
        ];
        store.promotable(None).await.unwrap();
        store
            .promotable(Some("acme".parse().unwrap()))
            .await
            .unwrap();
        for status in [None, Some(crate::domain::download::DownloadStatus::Pending)] {
            for scope in &scopes {
                let first = store.list_downloads_in(status, scope, 1, None).await;
                if let Some(next) = first.unwrap().next {
                    store
                        .list_downloads_in(status, scope, 1, Some(&next))
                        .await
                        .unwrap();
                }
            }
        }
        for kind in JobKind::ALL {
            store.claim_next_job(kind, &lease).await.unwrap();
        }
        // A model recorded, so that the figures per model are counted too.
        let budget = Budget {
            limit_micros: Some(1_000_000),
            cost: &|_| Some(1),
            model: Some("exercise-model"),
        };
        for kind in JobKind::ALL {
            store
                .claim_next_job_within(kind, &lease, &budget)
                .await
                .unwrap();
        }
        store.jobs_waiting_on_budget().await.unwrap();
        store.waiting_counts().await.unwrap();
        let today = crate::store::budget::budget_day_of(Timestamp::now());
        store.charges_on(&today).await.unwrap();
        store.claim_next_download(&lease).await.unwrap();
        store.due_webhooks(Timestamp::now(), 10).await.unwrap();
        for tenant in [None, Some(TenantName::default())] {
            for state in [None, Some(DeliveryState::Failed)] {
                let filter = DeliveryFilter {
                    tenant: tenant.clone(),
                    state,
                };
                store.list_webhooks(&filter, 10, None).await.unwrap();
            }
        }
        for id in ["1", "2"] {
            let rejected = Rejected::new(
                RejectedSource::Pubsub,
                Some(id),
                BTreeMap::new(),
                b"not json",
                "undecodable",
                Timestamp::now(),
            );
            store.record_rejected(rejected).await.unwrap();
        }
        for scope in &scopes {
            let first = store.list_rejected_in(scope, 1, None).await.unwrap();
            store
                .list_rejected_in(scope, 1, first.next.as_deref())
                .await
                .unwrap();
            store.stats_in(scope).await.unwrap();
            store
                .stats_with_activity(scope, &mut Default::default())
                .await
                .unwrap();
        }
        store
            .reset_stuck_jobs(Duration::from_secs(0))
            .await
            .unwrap();
        store.expire_job_leases().await.unwrap();
        store.delete_expired().await.unwrap();
        store
            .pending_jobs_idle_since(Timestamp::now())
            .await
            .unwrap();
        let events = crate::job_events::BusJobEvents::new(
            std::sync::Arc::new(crate::bus::memory::MemoryBus::new()),
            "events",
        );
        store
            .clone()
            .with_events(std::sync::Arc::new(events))
            .publish_outbox(Duration::ZERO)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn every_store_query_is_served_by_a_declared_index() {
        let backend = Arc::new(Recording {
            inner: EmbeddedBackend::in_memory().unwrap(),
            shapes: Mutex::new(Vec::new()),
        });
        let store = Store::new(backend.clone());
        exercise(&store).await;
        let shapes = backend.shapes.lock().unwrap().clone();
        assert!(!shapes.is_empty(), "no query was recorded");

        let missing: Vec<&QueryShape> = shapes
            .iter()
            .filter(|s| s.needs_composite_index() && index_for(s).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "queries without a composite index in INDEXES (add one there; terraform/firestore.tf must declare it too): {missing:#?}"
        );

        let unused: Vec<&Index> = INDEXES
            .iter()
            .filter(|index| {
                !shapes
                    .iter()
                    .any(|s| index_for(s).is_some_and(|used| used.contains(index)))
            })
            .collect();
        assert!(
            unused.is_empty(),
            "indexes no query of the exercise uses (a removed query, or an operation the test does not run yet): {unused:#?}"
        );
    }

    #[test]
    fn indexes_are_composite_and_distinct() {
        for (i, index) in INDEXES.iter().enumerate() {
            assert!(index.fields.len() > 1, "{index:?} has one field");
            let paths: BTreeSet<&str> = index.fields.iter().map(|f| f.path).collect();
            assert_eq!(paths.len(), index.fields.len(), "{index:?} repeats a field");
            assert!(!INDEXES[..i].contains(index), "{index:?} is declared twice");
        }
    }

    fn shape(conds: &[Cond], order: &[(&'static str, Dir)]) -> QueryShape {
        QueryShape::of(Collection::Jobs, conds, order)
    }

    fn pending() -> Cond {
        Cond::Eq("status", Scalar::Str("pending".into()))
    }

    fn kind() -> Cond {
        Cond::Eq("kind", Scalar::Str("image".into()))
    }

    fn before_now(field: &'static str) -> Cond {
        Cond::Lt(field, Scalar::Time(Timestamp::now()))
    }

    #[test]
    fn which_shapes_need_a_composite_index() {
        fn check(shape: QueryShape, expected: bool) {
            assert_eq!(shape.needs_composite_index(), expected, "{shape:?}");
        }
        // Equality filters alone merge single-field indexes.
        check(shape(&[pending()], &[]), false);
        check(shape(&[pending(), kind()], &[]), false);
        // One field, whatever is done with it.
        check(shape(&[], &[("id", Dir::Asc)]), false);
        check(
            shape(&[before_now("expire_at")], &[("expire_at", Dir::Asc)]),
            false,
        );
        // Two fields with an order or a range.
        check(shape(&[pending()], &[("id", Dir::Asc)]), true);
        check(
            shape(&[], &[("created_at", Dir::Desc), ("id", Dir::Desc)]),
            true,
        );
        check(shape(&[pending(), before_now("updated_at")], &[]), true);
    }

    #[test]
    fn an_index_serves_a_shape_only_in_the_same_order_and_directions() {
        const FIELDS: &[IndexField] = &[asc("kind"), asc("status"), asc("updated_at"), asc("id")];
        let index = Index {
            collection: Collection::Jobs,
            fields: FIELDS,
        };
        let order = [("updated_at", Dir::Asc), ("id", Dir::Asc)];
        // Equality fields in any order.
        assert!(shape(&[pending(), kind(), before_now("updated_at")], &order).served_by(&index));
        // Another direction, another collection, another field set: no.
        let reversed = [("updated_at", Dir::Desc), ("id", Dir::Asc)];
        assert!(!shape(&[pending(), kind()], &reversed).served_by(&index));
        assert!(
            !QueryShape::of(Collection::Downloads, &[pending(), kind()], &order).served_by(&index)
        );
        assert!(!shape(&[pending()], &order).served_by(&index));
        // A range on a field outside the order is not served.
        assert!(!shape(&[pending(), kind(), before_now("created_at")], &order).served_by(&index));
    }
}
