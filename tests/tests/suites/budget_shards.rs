//! A day's budget split over shard documents stays exact: several instances
//! (stores over one backend, each taking shards in its own turn) claiming
//! at once never reserve more than the limit, a budget smaller than one
//! claim per shard still lets exactly as many claims through as it holds,
//! released room is claimed again, a lowered limit holds at once, a
//! reservation made before budgets had shards settles where it was made,
//! and every settled attempt leaves one charge whose sum is what the
//! budget says was spent. The windows of the API's rate limits, taken the
//! same way in blocks, hand out exactly their limit. Each scenario runs on
//! both stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::future::join_all;
use shared::domain::Lease;
use shared::domain::job::{Job, NewJob};
use shared::domain::values::JobKind;
use shared::store::backend::{Collection, Scalar};
use shared::store::budget::{Billed, Budget, BudgetDay, Budgeted, budget_day_of, shard_id};
use shared::store::{Claim, Store};
use shared::time::Timestamp;
use std::collections::HashSet;
use std::time::Duration;
use tests::harness::TestStore;

/// Every job costs four cents.
const COST: u64 = 40_000;

fn cost_of(_: &Job) -> Option<u64> {
    Some(COST)
}

fn within(limit: Option<u64>) -> Budget<'static> {
    Budget {
        limit_micros: limit,
        cost: &cost_of,
        model: None,
    }
}

fn lease(owner: &str) -> Lease {
    Lease::new(owner, Duration::from_secs(600))
}

fn today() -> String {
    budget_day_of(Timestamp::now())
}

async fn add_jobs(store: &Store, n: usize, tag: &str) -> Vec<String> {
    join_all((0..n).map(|i| async move {
        let mut new = NewJob::new(format!("{tag} {i}"), JobKind::Image);
        new.dry_run = false;
        store.create_job(new).await.unwrap().record.id().to_string()
    }))
    .await
}

/// `n` instances over the backend of `t`, each with `shards` shards.
fn instances(t: &TestStore, n: usize, shards: u32) -> Vec<Store> {
    (0..n)
        .map(|_| Store::new(t.backend.clone()).with_budget_shards(shards))
        .collect()
}

/// Claims until the budget refuses, from every instance at once with
/// `claimers` claimers each; returns the jobs claimed.
async fn claim_until_over(stores: &[Store], claimers: usize, limit: u64) -> Vec<Job> {
    let tasks = stores.iter().enumerate().flat_map(|(i, store)| {
        (0..claimers).map(move |c| {
            let store = store.clone();
            tokio::spawn(async move {
                let owner = format!("instance-{i}/{c}");
                let mut mine = Vec::new();
                loop {
                    match store
                        .claim_next_job_within(JobKind::Image, &lease(&owner), &within(Some(limit)))
                        .await
                        .unwrap()
                    {
                        Budgeted::Within(Some(job)) => mine.push(job),
                        Budgeted::Within(None) => return mine,
                        Budgeted::Over(over) => {
                            assert!(over.committed_micros + COST > limit, "{over:?}");
                            return mine;
                        }
                    }
                }
            })
        })
    });
    join_all(tasks.collect::<Vec<_>>())
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect()
}

/// Every budget document of `main` (the main one and its shards).
async fn documents_of(t: &TestStore, main: &str) -> Vec<BudgetDay> {
    let query = shared::store::backend::Query {
        conds: vec![shared::store::backend::Cond::Eq(
            "budget",
            Scalar::Str(main.to_string()),
        )],
        order: vec![("id", shared::store::backend::Dir::Asc)],
        after: None,
        limit: 500,
    };
    t.backend
        .query(Collection::Budgets, &query)
        .await
        .unwrap()
        .into_iter()
        .map(|s| serde_json::from_value(serde_json::Value::Object(s.doc)).unwrap())
        .collect()
}

/// No shard holds more than the room it was given, and the room handed out
/// never exceeds the limit.
async fn no_shard_overdrawn(t: &TestStore, main: &str, limit: u64) {
    let docs = documents_of(t, main).await;
    let mut allotted = 0;
    for doc in &docs {
        if doc.shard.is_some() {
            assert!(
                doc.committed_micros() <= doc.allotted_micros,
                "overdrawn: {doc:?}"
            );
            allotted += doc.allotted_micros;
        }
    }
    assert!(allotted <= limit, "{allotted} handed out of {limit}");
}

async fn concurrent_instances_never_reserve_beyond_the_limit(t: TestStore) {
    // 7½ claims' worth over 64 shards: fewer than one claim per shard, so
    // every claim after the first blocks moves room between documents.
    let limit = 7 * COST + COST / 2;
    let stores = instances(&t, 4, 64);
    add_jobs(&stores[0], 20, "rain").await;
    let claimed = claim_until_over(&stores, 3, limit).await;
    let ids: HashSet<&str> = claimed.iter().map(Job::id).collect();
    assert_eq!((claimed.len(), ids.len()), (7, 7), "exactly 7, each once");
    let day = stores[1].budget_day(&today()).await.unwrap();
    assert_eq!(
        (day.reserved_micros, day.spent_micros, day.limit_micros),
        (7 * COST, 0, Some(limit))
    );
    no_shard_overdrawn(&t, &today(), limit).await;

    // Two settle with nothing billed: their room is claimed again, exactly.
    for job in &claimed[..2] {
        let owner = job.reservation().unwrap().owner.clone();
        stores[2]
            .settle_reservation(job.id(), Some(&owner), Billed::Nothing)
            .await
            .unwrap()
            .unwrap();
    }
    for job in &claimed[2..] {
        stores[3]
            .settle_reservation(job.id(), None, Billed::All)
            .await
            .unwrap()
            .unwrap();
    }
    let again = claim_until_over(&stores, 3, limit).await;
    assert_eq!(again.len(), 2, "the released room, no more");
    let day = stores[0].budget_day(&today()).await.unwrap();
    assert_eq!(
        (day.reserved_micros, day.spent_micros),
        (2 * COST, 5 * COST)
    );
    no_shard_overdrawn(&t, &today(), limit).await;

    // The ledger: one charge per settled attempt, adding up to what was spent.
    let charges = stores[0].charges_on(&today()).await.unwrap();
    assert_eq!(charges.len(), 7, "{charges:?}");
    let spent: u64 = charges.iter().map(|c| c.spent_micros).sum();
    assert_eq!(spent, day.spent_micros);
    for charge in &charges {
        let job = claimed.iter().find(|j| j.id() == charge.job).unwrap();
        assert_eq!(Some(&charge.id), job.reservation().unwrap().charge.as_ref());
        assert_eq!(charge.shard, job.reservation().unwrap().shard);
    }
}

async fn a_lowered_limit_holds_at_once_and_a_raised_one_lets_claims_through(t: TestStore) {
    let stores = instances(&t, 2, 16);
    add_jobs(&stores[0], 30, "wind").await;
    // Plenty at first: every instance's shards get room in blocks.
    let claimed = claim_until_over(&stores[..1], 2, 100 * COST).await;
    assert_eq!(claimed.len(), 30, "all of them fit");
    for job in &claimed[..10] {
        stores[1]
            .settle_reservation(job.id(), None, Billed::Nothing)
            .await
            .unwrap();
    }
    // 20 committed; lowered to 21: one more claim, although the shards
    // were given room under the old limit.
    add_jobs(&stores[0], 5, "hail").await;
    let lowered = claim_until_over(&stores, 2, 21 * COST).await;
    assert_eq!(lowered.len(), 1, "the lowered limit holds");
    no_shard_overdrawn(&t, &today(), 21 * COST).await;
    // Raised: the rest go.
    let raised = claim_until_over(&stores, 2, 30 * COST).await;
    assert_eq!(raised.len(), 4);
    let day = stores[0].budget_day(&today()).await.unwrap();
    assert_eq!(day.committed_micros(), 25 * COST);
    assert_eq!(day.limit_micros, Some(30 * COST));
}

async fn spending_without_a_limit_counts_once_a_limit_is_set(t: TestStore) {
    let stores = instances(&t, 2, 8);
    add_jobs(&stores[0], 12, "fog").await;
    // No limit: reserved on shards, the main document only told so.
    let unlimited = Budget {
        limit_micros: None,
        cost: &cost_of,
        model: None,
    };
    for n in 0..6 {
        let got = stores[n % 2]
            .claim_next_job_within(JobKind::Image, &lease("free"), &unlimited)
            .await
            .unwrap();
        assert!(matches!(got, Budgeted::Within(Some(_))), "{got:?}");
    }
    // A limit of 8 claims set now: 6 were already made, so 2 more.
    let limited = claim_until_over(&stores, 2, 8 * COST).await;
    assert_eq!(limited.len(), 2);
    no_shard_overdrawn(&t, &today(), 8 * COST).await;
}

async fn a_reservation_from_before_shards_settles_on_the_main_document(t: TestStore) {
    let store = Store::new(t.backend.clone()).with_budget_shards(4);
    let ids = add_jobs(&store, 1, "mist").await;
    let Budgeted::Within(Claim::Claimed(job)) = store
        .claim_job_within(&ids[0], &lease("w"), &within(None))
        .await
        .unwrap()
    else {
        panic!("claimed");
    };
    let reservation = job.reservation().unwrap().clone();
    let shard = shard_id(&today(), reservation.shard.unwrap());

    // Rewrite both as a store without shards left them: the reservation on
    // the job without its shard and charge, the amount on the main document.
    let (mut doc, version) = {
        let stored = t
            .backend
            .get(Collection::Jobs, &ids[0])
            .await
            .unwrap()
            .unwrap();
        (stored.doc, stored.version)
    };
    let held = doc["reservation"].as_object_mut().unwrap();
    held.remove("shard");
    held.remove("charge");
    assert!(
        t.backend
            .replace(Collection::Jobs, &ids[0], &version, &doc)
            .await
            .unwrap()
    );
    let stored = t
        .backend
        .get(Collection::Budgets, &shard)
        .await
        .unwrap()
        .unwrap();
    assert!(
        t.backend
            .delete(Collection::Budgets, &shard, &stored.version)
            .await
            .unwrap()
    );
    let mut main = BudgetDay::new(&today(), Timestamp::now());
    main.reserved_micros = COST;
    let main_doc = match serde_json::to_value(&main).unwrap() {
        serde_json::Value::Object(map) => map,
        _ => unreachable!(),
    };
    t.backend
        .create(Collection::Budgets, &today(), &main_doc)
        .await
        .unwrap()
        .unwrap();

    let settled = store
        .settle_reservation(&ids[0], Some("w"), Billed::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settled.reservation.shard, None);
    let day = store.budget_day(&today()).await.unwrap();
    assert_eq!((day.reserved_micros, day.spent_micros), (0, COST));
    let charges = store.charges_on(&today()).await.unwrap();
    assert_eq!(charges.len(), 1);
    assert_eq!((charges[0].shard, charges[0].spent_micros), (None, COST));
}

macro_rules! scenarios {
    ($adapter:ident, $make:path) => {
        mod $adapter {
            use shared::domain::job::Retention;

            scenarios!(@each $make, [
                concurrent_instances_never_reserve_beyond_the_limit,
                a_lowered_limit_holds_at_once_and_a_raised_one_lets_claims_through,
                spending_without_a_limit_counts_once_a_limit_is_set,
                a_reservation_from_before_shards_settles_on_the_main_document,
                a_rate_limit_window_hands_out_exactly_its_limit_under_concurrent_takers,
            ]);
        }
    };
    (@each $make:path, [$($name:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                super::$name($make(Retention::default()).await).await
            }
        )*
    };
}

scenarios!(embedded, tests::harness::embedded);
#[cfg(feature = "emulators")]
scenarios!(firestore, tests::harness::firestore);

/// The windows of the API's rate limits: many instances taking blocks of
/// one tenant's minute at once never get more than the limit between them,
/// and the minute is spent exactly.
async fn a_rate_limit_window_hands_out_exactly_its_limit_under_concurrent_takers(t: TestStore) {
    let tenant: shared::domain::tenant::TenantName = "acme".parse().unwrap();
    let minute = 29_000_000;
    let takers = (0..12).map(|_| {
        let (store, tenant) = (t.store.clone(), tenant.clone());
        tokio::spawn(async move {
            let mut got = 0;
            loop {
                match store
                    .take_requests(&tenant, "writes", minute, 100, 7)
                    .await
                    .unwrap()
                {
                    0 => return got,
                    n => got += n,
                }
            }
        })
    });
    let got: Vec<u32> = join_all(takers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got.iter().sum::<u32>(), 100, "{got:?}");
    // Another class and another minute are windows of their own.
    assert_eq!(
        t.store
            .take_requests(&tenant, "reads", minute, 100, 7)
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        t.store
            .take_requests(&tenant, "writes", minute + 1, 100, 7)
            .await
            .unwrap(),
        7
    );
}
