//! The store contract: the same tests, unchanged, against every adapter.
//! `embedded` always runs; `firestore` runs on the emulator with the
//! `emulators` feature (tests/run turns it on).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::future::join_all;
use shared::domain::destination::Target;
use shared::domain::download::{DownloadStatus, FileType, NewDownload};
use shared::domain::job::{Job, NewJob, Retention};
use shared::domain::review::PromoteOptions;
use shared::domain::values::Verdict;
use shared::domain::values::{
    BUDGET_EXHAUSTED, DeliveredOutput, FILTERED, JobError, JobKind, JobParams, JobStatus,
    RetryOptions, SUBMIT_UNKNOWN,
};
use shared::domain::{Lease, TransitionError};
use shared::error::Error;
use shared::store::backend::{Collection, Version, Write};
use shared::store::budget::{Billed, Budget, BudgetDay, Budgeted, budget_day_of};
use shared::store::{Claim, JobFilter, Store};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use tests::harness::TestStore;

const MINUTE: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(1);

fn lease(owner: &str) -> Lease {
    Lease::new(owner, MINUTE)
}

fn new_job(prompt: &str, kind: JobKind) -> NewJob {
    NewJob::new(prompt, kind)
}

async fn add(store: &Store, prompt: impl Into<String>, kind: JobKind) -> String {
    store
        .create_job(NewJob::new(prompt, kind))
        .await
        .unwrap()
        .record
        .id()
        .to_string()
}

/// Lets a lease of [`SHORT`] run out.
async fn let_leases_expire() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

// ---- the tests, each a function of a fresh store ----

async fn twenty_claimers_take_fifty_jobs_exactly_once(t: TestStore) {
    let store = &t.store;
    let ids: HashSet<String> =
        join_all((0..50).map(|i| add(store, format!("rain {i}"), JobKind::Video)))
            .await
            .into_iter()
            .collect();
    assert_eq!(ids.len(), 50);
    let started = Instant::now();
    let claimers = (0..20).map(|c| {
        let store = store.clone();
        tokio::spawn(async move {
            let owner = format!("claimer-{c}");
            let mut mine = Vec::new();
            while let Some(job) = store
                .claim_next_job(JobKind::Video, &lease(&owner))
                .await
                .unwrap()
            {
                assert_eq!(job.lease_owner(), Some(owner.as_str()));
                mine.push(job.id().to_string());
            }
            (owner, mine)
        })
    });
    let results: Vec<(String, Vec<String>)> = join_all(claimers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    eprintln!("20 claimers took 50 jobs in {:?}", started.elapsed());

    let mut claimed = BTreeMap::new();
    for (owner, jobs) in &results {
        for id in jobs {
            assert!(
                claimed.insert(id.clone(), owner.clone()).is_none(),
                "{id} claimed twice"
            );
        }
    }
    assert_eq!(
        claimed.keys().cloned().collect::<HashSet<_>>(),
        ids,
        "every job claimed"
    );
    for (id, owner) in &claimed {
        let job = store.job(id).await.unwrap();
        assert_eq!(
            (job.status(), job.attempts()),
            (JobStatus::Processing, 1),
            "{id}"
        );
        assert_eq!(job.lease_owner(), Some(owner.as_str()));
    }
    assert_eq!(
        store
            .job_counts()
            .await
            .unwrap()
            .status(JobStatus::Processing),
        50
    );
}

async fn the_same_request_id_yields_one_job(t: TestStore) {
    let store = &t.store;
    let mut request = new_job("waves", JobKind::Image);
    request.request_id = Some("req-1".into());
    let first = store.create_job(request.clone()).await.unwrap();
    let second = store.create_job(request.clone()).await.unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.record.id(), second.record.id());
    assert_eq!(second.record.prompt(), "waves");

    request.request_id = Some("req-concurrent".into());
    let results = join_all((0..10).map(|_| store.create_job(request.clone()))).await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        results.iter().filter(|r| r.created).count(),
        1,
        "exactly one create wins"
    );
    let ids: HashSet<_> = results.iter().map(|r| r.record.id().to_string()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(store.job_counts().await.unwrap().total(), 2);
}

async fn an_expired_lease_is_claimable_again_with_attempts_counted(t: TestStore) {
    let store = &t.store;
    let id = add(store, "crackling fire", JobKind::Image).await;
    let Claim::Claimed(job) = store
        .claim_job(&id, &Lease::new("w1", SHORT))
        .await
        .unwrap()
    else {
        panic!("the first claim succeeds");
    };
    assert_eq!(job.attempts(), 1);

    // While the lease is live nobody else gets it.
    let id2 = add(store, "whispers", JobKind::Image).await;
    store.claim_job(&id2, &lease("w1")).await.unwrap();
    match store.claim_job(&id2, &lease("w2")).await.unwrap() {
        Claim::Refused(job, _) => assert_eq!(job.lease_owner(), Some("w1")),
        other => panic!("a live lease must refuse, got {other:?}"),
    }

    let_leases_expire().await;
    let Claim::Claimed(job) = store.claim_job(&id, &lease("w2")).await.unwrap() else {
        panic!("an expired lease is claimable");
    };
    assert_eq!((job.attempts(), job.lease_owner()), (2, Some("w2")));

    // The old holder can no longer complete it.
    let err = store.complete_job(&id, "w1", vec![]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transition {
                reason: TransitionError::NotLeaseOwner { .. },
                ..
            }
        ),
        "{err}"
    );

    // The janitor's path: expired leases go back to pending and are claimable by claim-next.
    store
        .extend_job_lease(&id, &Lease::new("w2", SHORT))
        .await
        .unwrap();
    let_leases_expire().await;
    let report = store.expire_job_leases().await.unwrap();
    assert_eq!(
        report.requeued.iter().map(|j| j.id()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    assert!(report.failed.is_empty());
    let job = store
        .claim_next_job(JobKind::Image, &lease("w3"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((job.id(), job.attempts()), (id.as_str(), 3));
}

async fn attempts_past_max_fail_the_job_instead_of_requeueing_it(t: TestStore) {
    let store = &t.store;
    let mut request = new_job("tapping", JobKind::Video);
    request.max_attempts = 2;
    let id = store
        .create_job(request)
        .await
        .unwrap()
        .record
        .id()
        .to_string();
    for n in 1..=2 {
        let Claim::Claimed(job) = store.claim_job(&id, &Lease::new("w", SHORT)).await.unwrap()
        else {
            panic!("claim {n}");
        };
        assert_eq!(job.attempts(), n);
        let_leases_expire().await;
        let report = store.expire_job_leases().await.unwrap();
        if n == 1 {
            assert_eq!(report.requeued.len(), 1);
        } else {
            assert_eq!(report.failed.len(), 1, "the second expiry fails the job");
        }
    }
    let job = store.job(&id).await.unwrap();
    assert_eq!(job.status(), JobStatus::Failed);
    assert_eq!(job.error().unwrap().code, "attempts_exhausted");
    assert!(job.expire_at().is_some());

    // A pending job that somehow has no attempt left fails on claim instead of running.
    let mut request = new_job("brushing", JobKind::Video);
    request.max_attempts = 1;
    let id = store
        .create_job(request)
        .await
        .unwrap()
        .record
        .id()
        .to_string();
    store.claim_job(&id, &lease("w")).await.unwrap();
    store
        .release_job(&id, "w", Some(JobError::new("rate_limited", "429", true)))
        .await
        .unwrap();
    match store.claim_job(&id, &lease("w")).await.unwrap() {
        Claim::Exhausted(job) => {
            assert_eq!(job.status(), JobStatus::Failed);
            assert!(job.error().unwrap().message.contains("rate_limited: 429"));
        }
        other => panic!("expected exhausted, got {other:?}"),
    }
    assert_eq!(store.job(&id).await.unwrap().status(), JobStatus::Failed);
    assert!(
        store
            .claim_next_job(JobKind::Video, &lease("w"))
            .await
            .unwrap()
            .is_none()
    );
}

async fn counts_are_exact_after_a_mixed_workload(t: TestStore) {
    let store = &t.store;
    let images = join_all((0..6).map(|i| add(store, format!("img {i}"), JobKind::Image))).await;
    let videos = join_all((0..5).map(|i| add(store, format!("vid {i}"), JobKind::Video))).await;
    let owner = "w";
    // images: 0 completed, 1 delivered, 2 failed, 3 cancelled, 4 processing, 5 pending
    for id in &images[..5] {
        assert!(matches!(
            store.claim_job(id, &lease(owner)).await.unwrap(),
            Claim::Claimed(_)
        ));
    }
    store
        .complete_job(
            &images[0],
            owner,
            vec!["gs://o/images/a/0.png".parse().unwrap()],
        )
        .await
        .unwrap();
    store
        .complete_job(
            &images[1],
            owner,
            vec!["gs://o/images/b/0.png".parse().unwrap()],
        )
        .await
        .unwrap();
    let delivered = store
        .record_delivery(
            &images[1],
            DeliveredOutput {
                source: "gs://o/images/b/0.png".parse().unwrap(),
                destination: "/d/b".parse().unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(delivered.status(), JobStatus::Delivered);
    store
        .fail_job(
            &images[2],
            Some(owner),
            JobError::new(FILTERED, "blocked", false),
        )
        .await
        .unwrap();
    store.cancel_job(&images[3]).await.unwrap();
    // videos: 0 generating, 1 completed, 2 cancelled (while pending), 3..4 pending
    for id in &videos[..2] {
        store.claim_job(id, &lease(owner)).await.unwrap();
        store
            .start_generating(id, &lease(owner), "projects/p/operations/o")
            .await
            .unwrap();
    }
    store.finish_operation(&videos[1], vec![]).await.unwrap();
    store.cancel_job(&videos[2]).await.unwrap();

    let counts = store.job_counts().await.unwrap();
    let expected = [
        (JobStatus::Pending, JobKind::Image, 1),
        (JobStatus::Processing, JobKind::Image, 1),
        (JobStatus::Completed, JobKind::Image, 1),
        (JobStatus::Delivered, JobKind::Image, 1),
        (JobStatus::Failed, JobKind::Image, 1),
        (JobStatus::Cancelled, JobKind::Image, 1),
        (JobStatus::Pending, JobKind::Video, 2),
        (JobStatus::Generating, JobKind::Video, 1),
        (JobStatus::Completed, JobKind::Video, 1),
        (JobStatus::Cancelled, JobKind::Video, 1),
    ];
    for status in JobStatus::ALL {
        for kind in JobKind::ALL {
            let want = expected
                .iter()
                .find(|(s, k, _)| *s == status && *k == kind)
                .map_or(0, |e| e.2);
            assert_eq!(counts.get(status, kind), want, "{status} {kind}");
        }
    }
    assert_eq!(counts.total(), 11);

    // Downloads too: 2 pending, 1 downloading, 1 completed, 1 failed.
    let ids = join_all(
        (0..5)
            .map(|i| store.create_download(download(&images[0], &format!("images/x/{i}.png"), 0))),
    )
    .await
    .into_iter()
    .map(|c| c.unwrap().record.id().to_string())
    .collect::<Vec<_>>();
    for id in &ids[..3] {
        store.claim_download(id, &lease(owner)).await.unwrap();
    }
    store.complete_download(&ids[1], owner, 10).await.unwrap();
    store
        .fail_download(&ids[2], owner, JobError::new("not_found", "gone", false))
        .await
        .unwrap();
    let counts = store.download_counts().await.unwrap();
    let got: Vec<u64> = DownloadStatus::ALL
        .iter()
        .map(|s| counts.status(*s))
        .collect();
    assert_eq!(got, vec![2, 1, 1, 1]);
    assert_eq!(counts.total(), 5);
}

async fn claim_next_takes_higher_priority_first_and_only_its_kind(t: TestStore) {
    let store = &t.store;
    add(store, "low", JobKind::Image).await;
    let mut high = new_job("high", JobKind::Image);
    high.priority = 5;
    let high = store
        .create_job(high)
        .await
        .unwrap()
        .record
        .id()
        .to_string();
    add(store, "a video", JobKind::Video).await;

    let first = store
        .claim_next_job(JobKind::Image, &lease("w"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id(), high);
    let second = store
        .claim_next_job(JobKind::Image, &lease("w"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.prompt(), "low");
    assert!(
        store
            .claim_next_job(JobKind::Image, &lease("w"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .claim_next_job(JobKind::Video, &lease("w"))
            .await
            .unwrap()
            .unwrap()
            .prompt(),
        "a video"
    );
}

async fn listing_pages_through_everything_newest_first(t: TestStore) {
    let store = &t.store;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            add(
                store,
                format!("p{i}"),
                if i % 2 == 0 {
                    JobKind::Image
                } else {
                    JobKind::Video
                },
            )
            .await,
        );
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_jobs(&JobFilter::default(), 3, after.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|j| j.id().to_string()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");

    let videos = store
        .list_jobs(
            &JobFilter {
                kind: Some(JobKind::Video),
                status: None,
                approved: None,
                tenant: None,
            },
            50,
            None,
        )
        .await
        .unwrap();
    assert_eq!(videos.items.len(), 3);
    assert!(videos.next.is_none());
    store.cancel_job(&created[0]).await.unwrap();
    let cancelled = store
        .list_jobs(
            &JobFilter {
                status: Some(JobStatus::Cancelled),
                kind: Some(JobKind::Image),
                approved: None,
                tenant: None,
            },
            50,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        cancelled.items.iter().map(|j| j.id()).collect::<Vec<_>>(),
        vec![&created[0]]
    );

    let err = store
        .list_jobs(&JobFilter::default(), 3, Some("not a token"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
}

async fn a_job_document_round_trips_every_field(t: TestStore) {
    let store = &t.store;
    let mut params = JobParams::default();
    for (k, v) in [
        ("aspect_ratio", "9:16"),
        ("duration_seconds", "6"),
        ("sample_count", "2"),
        ("negative_prompt", "no music"),
        ("seed", "4294967295"),
        ("generate_audio", "true"),
        ("resolution", "1080p"),
        ("model", "veo-3.1-fast-generate-001"),
    ] {
        params.set(k, v).unwrap();
    }
    let mut request = new_job("héllo \"quoted\"\n\tsecond line 🌧", JobKind::Video);
    request.params = params;
    request.priority = -3;
    request.request_id = Some("round/trip?id".into());
    request.dry_run = false;
    let created = store.create_job(request).await.unwrap().record;
    assert_eq!(store.job(created.id()).await.unwrap(), created);

    store.claim_job(created.id(), &lease("w")).await.unwrap();
    store
        .start_generating(
            created.id(),
            &lease("w"),
            "projects/p/locations/l/operations/1",
        )
        .await
        .unwrap();
    store
        .record_delivery(
            created.id(),
            DeliveredOutput {
                source: "gs://o/videos/x/t/sample_0.mp4".parse().unwrap(),
                destination: "/v/0.mp4".parse().unwrap(),
            },
        )
        .await
        .unwrap();
    let completed = store
        .complete_job(
            created.id(),
            "w",
            vec![
                "gs://o/videos/x/t/sample_0.mp4".parse().unwrap(),
                "gs://o/videos/x/t/sample_1.mp4".parse().unwrap(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(completed.status(), JobStatus::Completed);
    assert_eq!(store.job(created.id()).await.unwrap(), completed);

    let mut failed = new_job("x", JobKind::Image);
    failed.request_id = Some("f".into());
    let failed = store.create_job(failed).await.unwrap().record;
    let failed = store
        .fail_job(
            failed.id(),
            None,
            JobError::new("invalid_argument", "Support codes: 61493863", false),
        )
        .await
        .unwrap();
    assert_eq!(store.job(failed.id()).await.unwrap(), failed);
}

async fn refused_and_missing_operations_say_why(t: TestStore) {
    let store = &t.store;
    let missing = store.cancel_job("nope").await.unwrap_err();
    assert_eq!(missing.to_string(), "job nope not found");
    assert!(store.get_job("nope").await.unwrap().is_none());
    assert_eq!(
        store.claim_job("nope", &lease("w")).await.unwrap(),
        Claim::NotFound
    );

    let id = add(store, "paper", JobKind::Image).await;
    store.cancel_job(&id).await.unwrap();
    let err = store.cancel_job(&id).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("job {id}: cannot cancel a cancelled job")
    );
    assert!(!err.is_retryable());
    match store.claim_job(&id, &lease("w")).await.unwrap() {
        Claim::Refused(job, _) => assert_eq!(job.status(), JobStatus::Cancelled),
        other => panic!("a cancelled job must not be claimed: {other:?}"),
    }

    let blank = store
        .create_job(new_job("  ", JobKind::Image))
        .await
        .unwrap_err();
    assert_eq!(blank.to_string(), "invalid input: prompt: is empty");
    assert_eq!(
        store.job_counts().await.unwrap().total(),
        1,
        "nothing stored for invalid input"
    );
}

async fn stuck_jobs_are_reset_and_filtered_jobs_are_not_retried(t: TestStore) {
    let store = &t.store;
    let a = add(store, "a", JobKind::Video).await;
    let b = add(store, "b", JobKind::Video).await;
    store.claim_job(&a, &lease("w")).await.unwrap();
    store.claim_job(&b, &lease("w")).await.unwrap();
    store
        .start_generating(&b, &lease("w"), "ops/b")
        .await
        .unwrap();

    let none = store
        .reset_stuck_jobs(Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        none.requeued.is_empty() && none.failed.is_empty(),
        "nothing is an hour old"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = store
        .reset_stuck_jobs(Duration::from_millis(5))
        .await
        .unwrap();
    let mut requeued: Vec<_> = report.requeued.iter().map(|j| j.id().to_string()).collect();
    requeued.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(requeued, want, "live leases do not protect stuck jobs");
    let b_job = store.job(&b).await.unwrap();
    assert_eq!(b_job.status(), JobStatus::Pending);
    assert_eq!(
        b_job.operation_name(),
        Some("ops/b"),
        "the operation is kept so it is not paid twice"
    );

    store.claim_job(&a, &lease("w")).await.unwrap();
    store
        .fail_job(
            &a,
            Some("w"),
            JobError::new(FILTERED, "raiMediaFilteredReasons: child", false),
        )
        .await
        .unwrap();
    let err = store
        .retry_job(&a, RetryOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transition {
                reason: TransitionError::Filtered,
                ..
            }
        ),
        "{err}"
    );
    let retried = store
        .retry_job(
            &a,
            RetryOptions {
                include_filtered: true,
                ..RetryOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (retried.status(), retried.attempts(), retried.error()),
        (JobStatus::Pending, 0, None)
    );
}

async fn a_write_on_a_stale_version_is_refused(t: TestStore) {
    use shared::store::backend::Collection::Jobs;
    let backend = &t.backend;
    let doc = |n: i64| {
        let mut doc = serde_json::Map::new();
        doc.insert("id".into(), "cas".into());
        doc.insert("n".into(), n.into());
        doc
    };
    let created = backend.create(Jobs, "cas", &doc(1)).await.unwrap().unwrap();
    assert!(
        backend
            .create(Jobs, "cas", &doc(2))
            .await
            .unwrap()
            .is_none(),
        "create never overwrites"
    );
    let read = backend.get(Jobs, "cas").await.unwrap().unwrap();
    assert_eq!(read.doc, doc(1));
    assert_eq!(
        read.version, created,
        "a create answers the version it made"
    );
    assert!(
        backend
            .replace(Jobs, "cas", &read.version, &doc(3))
            .await
            .unwrap()
    );
    assert!(
        !backend
            .replace(Jobs, "cas", &read.version, &doc(4))
            .await
            .unwrap(),
        "the second writer of the same version loses"
    );
    assert!(
        !backend.delete(Jobs, "cas", &read.version).await.unwrap(),
        "a stale delete is refused"
    );
    let now = backend.get(Jobs, "cas").await.unwrap().unwrap();
    assert_eq!(now.doc, doc(3));
    assert_ne!(now.version, read.version);
    assert!(backend.delete(Jobs, "cas", &now.version).await.unwrap());
    assert!(backend.get(Jobs, "cas").await.unwrap().is_none());
    assert!(
        !backend
            .replace(Jobs, "cas", &now.version, &doc(5))
            .await
            .unwrap(),
        "no resurrection"
    );
    assert!(backend.get(Jobs, "cas").await.unwrap().is_none());
}

// ---- atomic commits ----

fn body(id: &str, n: i64) -> serde_json::Map<String, serde_json::Value> {
    let mut doc = serde_json::Map::new();
    doc.insert("id".into(), id.into());
    doc.insert("n".into(), n.into());
    doc
}

async fn read_n(t: &TestStore, collection: Collection, id: &str) -> Option<i64> {
    t.backend
        .get(collection, id)
        .await
        .unwrap()
        .map(|stored| stored.doc["n"].as_i64().unwrap())
}

async fn a_commit_applies_every_write_or_none(t: TestStore) {
    use Collection::{Budgets, Jobs};
    let backend = &t.backend;
    let create = |collection, id: &str, n| Write::Create {
        collection,
        id: id.into(),
        doc: body(id, n),
    };
    let replace = |collection, id: &str, expected: &Version, n| Write::Replace {
        collection,
        id: id.into(),
        expected: expected.clone(),
        doc: body(id, n),
    };

    // Two creates in two collections: both land.
    assert!(
        backend
            .commit(&[create(Jobs, "a", 1), create(Budgets, "b", 1)])
            .await
            .unwrap()
    );
    assert_eq!(read_n(&t, Jobs, "a").await, Some(1));
    assert_eq!(read_n(&t, Budgets, "b").await, Some(1));
    let a = backend.get(Jobs, "a").await.unwrap().unwrap().version;
    let b = backend.get(Budgets, "b").await.unwrap().unwrap().version;

    // A create of a document that exists fails the whole commit: the
    // replace beside it, valid on its own, is not applied.
    assert!(
        !backend
            .commit(&[replace(Jobs, "a", &a, 2), create(Budgets, "b", 2)])
            .await
            .unwrap(),
        "create-if-absent of an existing document conflicts"
    );
    assert!(
        !backend
            .commit(&[create(Budgets, "c", 2), create(Budgets, "b", 2)])
            .await
            .unwrap()
    );
    assert_eq!(read_n(&t, Jobs, "a").await, Some(1), "nothing written");
    assert_eq!(read_n(&t, Budgets, "b").await, Some(1));
    assert_eq!(read_n(&t, Budgets, "c").await, None, "not even the create");
    assert_eq!(backend.get(Jobs, "a").await.unwrap().unwrap().version, a);

    // Both replaces at the versions read: both land, both versions move.
    assert!(
        backend
            .commit(&[replace(Jobs, "a", &a, 3), replace(Budgets, "b", &b, 3)])
            .await
            .unwrap()
    );
    assert_eq!(read_n(&t, Jobs, "a").await, Some(3));
    assert_eq!(read_n(&t, Budgets, "b").await, Some(3));
    let a2 = backend.get(Jobs, "a").await.unwrap().unwrap().version;
    assert_ne!(a2, a);

    // One stale version fails the commit, creates included.
    assert!(
        !backend
            .commit(&[
                create(Budgets, "d", 4),
                replace(Jobs, "a", &a2, 4),
                replace(Budgets, "b", &b, 4),
            ])
            .await
            .unwrap(),
        "a replace at a stale version conflicts"
    );
    assert_eq!(read_n(&t, Budgets, "d").await, None);
    assert_eq!(read_n(&t, Jobs, "a").await, Some(3));
    assert_eq!(read_n(&t, Budgets, "b").await, Some(3));

    // A replace of a document that is gone conflicts too.
    assert!(backend.delete(Jobs, "a", &a2).await.unwrap());
    assert!(
        !backend
            .commit(&[replace(Jobs, "a", &a2, 5), create(Budgets, "e", 5)])
            .await
            .unwrap()
    );
    assert_eq!(read_n(&t, Jobs, "a").await, None, "no resurrection");
    assert_eq!(read_n(&t, Budgets, "e").await, None);

    // Racing commits on the same version: exactly one wins, whole.
    let b = backend.get(Budgets, "b").await.unwrap().unwrap().version;
    let results = join_all((0..8).map(|i| {
        let writes = [
            replace(Budgets, "b", &b, 100 + i),
            create(Jobs, &format!("race-{i}"), i),
        ];
        async move { backend.commit(&writes).await.unwrap() }
    }))
    .await;
    let winners: Vec<usize> = (0..8).filter(|i| results[*i]).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = i64::try_from(winners[0]).unwrap();
    assert_eq!(read_n(&t, Budgets, "b").await, Some(100 + winner));
    for i in 0..8 {
        let created = read_n(&t, Jobs, &format!("race-{i}")).await;
        assert_eq!(created.is_some(), i == winner, "race-{i}");
    }
}

// ---- the cost guard ----

/// Every image job costs four cents.
const COST: u64 = 40_000;

fn cost_of(_: &Job) -> Option<u64> {
    Some(COST)
}

fn free(_: &Job) -> Option<u64> {
    None
}

fn within(limit: Option<u64>) -> Budget<'static> {
    Budget {
        limit_micros: limit,
        cost: &cost_of,
        model: None,
    }
}

async fn today_of(store: &Store) -> BudgetDay {
    store
        .budget_day(&budget_day_of(shared::time::Timestamp::now()))
        .await
        .unwrap()
}

async fn a_budget_for_n_claims_reserves_exactly_n_among_concurrent_claimers(t: TestStore) {
    let store = &t.store;
    let ids: HashSet<String> =
        join_all((0..12).map(|i| add(store, format!("rain {i}"), JobKind::Image)))
            .await
            .into_iter()
            .collect();
    let limit = 5 * COST;
    let started = Instant::now();
    let claimers = (0..8).map(|c| {
        let store = store.clone();
        tokio::spawn(async move {
            let owner = format!("claimer-{c}");
            let mut mine = Vec::new();
            loop {
                match store
                    .claim_next_job_within(JobKind::Image, &lease(&owner), &within(Some(limit)))
                    .await
                    .unwrap()
                {
                    Budgeted::Within(Some(job)) => {
                        let reservation = job.reservation().cloned().unwrap();
                        assert_eq!(
                            (reservation.micros, reservation.owner),
                            (COST, owner.clone())
                        );
                        mine.push(job.id().to_string());
                    }
                    Budgeted::Within(None) => panic!("jobs were left, yet none was offered"),
                    Budgeted::Over(over) => {
                        assert_eq!((over.needed_micros, over.limit_micros), (COST, limit));
                        assert!(over.committed_micros + COST > limit, "{over:?}");
                        return mine;
                    }
                }
            }
        })
    });
    let claimed: Vec<String> = join_all(claimers)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    eprintln!(
        "8 claimers with a budget for 5 of 12 jobs finished in {:?}",
        started.elapsed()
    );
    assert_eq!(claimed.len(), 5, "{claimed:?}");
    assert_eq!(claimed.iter().collect::<HashSet<_>>().len(), 5, "each once");

    let day = today_of(store).await;
    assert_eq!(
        (day.reserved_micros, day.spent_micros, day.limit_micros),
        (limit, 0, Some(limit))
    );
    let counts = store.job_counts().await.unwrap();
    assert_eq!(counts.status(JobStatus::Processing), 5);
    assert_eq!(counts.status(JobStatus::Pending), 7);
    assert_eq!(store.jobs_waiting_on_budget().await.unwrap(), 7);
    for id in &ids {
        let job = store.job(id).await.unwrap();
        if claimed.contains(id) {
            assert_eq!((job.waiting(), job.attempts()), (None, 1), "{id}");
        } else {
            assert_eq!(
                (job.waiting(), job.attempts(), job.reservation()),
                (Some(BUDGET_EXHAUSTED), 0, None),
                "{id}"
            );
        }
    }

    // Claims by id, all at once, against the same day: none fits.
    let waiting: Vec<String> = ids
        .iter()
        .filter(|id| !claimed.contains(id))
        .cloned()
        .collect();
    let results = join_all(waiting.iter().map(|id| async move {
        store
            .claim_job_within(id, &lease("by-id"), &within(Some(limit)))
            .await
            .unwrap()
    }))
    .await;
    assert!(results.iter().all(|r| matches!(r, Budgeted::Over(_))));

    // Raised by two jobs: exactly two more, concurrently by id.
    let raised = limit + 2 * COST;
    let results = join_all(waiting.iter().map(|id| async move {
        store
            .claim_job_within(id, &lease("by-id"), &within(Some(raised)))
            .await
            .unwrap()
    }))
    .await;
    let won = results
        .iter()
        .filter(|r| matches!(r, Budgeted::Within(Claim::Claimed(_))))
        .count();
    assert_eq!(won, 2, "{results:?}");
    assert_eq!(today_of(store).await.reserved_micros, raised);
    assert_eq!(store.jobs_waiting_on_budget().await.unwrap(), 5);

    // A job that pays nothing (dry run) is claimed whatever the budget,
    // and reserves nothing.
    let dry = add(store, "dry", JobKind::Image).await;
    let nothing = Budget {
        limit_micros: Some(0),
        cost: &free,
        model: None,
    };
    let Budgeted::Within(Claim::Claimed(job)) = store
        .claim_job_within(&dry, &lease("w"), &nothing)
        .await
        .unwrap()
    else {
        panic!("a free job is claimed");
    };
    assert_eq!(job.reservation(), None);
    assert_eq!(today_of(store).await.reserved_micros, raised);
}

async fn settling_a_reservation_is_exact_and_happens_once(t: TestStore) {
    let store = &t.store;
    let no_limit = within(None);
    let claim = |id: String, owner: &'static str, ttl: Duration| {
        let no_limit = &no_limit;
        async move {
            match store
                .claim_job_within(&id, &Lease::new(owner, ttl), no_limit)
                .await
                .unwrap()
            {
                Budgeted::Within(Claim::Claimed(job)) => job,
                other => panic!("{id} should be claimed: {other:?}"),
            }
        }
    };

    // Spent: with no limit the claim still reserves, and settling moves the
    // amount from reserved to spent, once.
    let a = add(store, "a", JobKind::Image).await;
    let job = claim(a.clone(), "w1", MINUTE).await;
    assert_eq!(today_of(store).await.reserved_micros, COST);
    assert_eq!(
        store
            .settle_reservation(&a, Some("w2"), Billed::All)
            .await
            .unwrap(),
        None,
        "another claim's reservation is not touched"
    );
    let settled = store
        .settle_reservation(&a, Some("w1"), Billed::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        settled.reservation,
        job.reservation().cloned().unwrap().clone()
    );
    assert_eq!(settled.spent_micros, COST);
    assert_eq!(
        store
            .settle_reservation(&a, Some("w1"), Billed::All)
            .await
            .unwrap(),
        None,
        "a second settlement is a no-op"
    );
    assert_eq!(store.job(&a).await.unwrap().reservation(), None);
    let day = today_of(store).await;
    assert_eq!((day.reserved_micros, day.spent_micros), (0, COST));

    // Released (filtered), and a partial share.
    let b = add(store, "b", JobKind::Image).await;
    claim(b.clone(), "w1", MINUTE).await;
    let c = add(store, "c", JobKind::Image).await;
    claim(c.clone(), "w1", MINUTE).await;
    let released = store
        .settle_reservation(&b, None, Billed::Nothing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(released.spent_micros, 0);
    let part = Billed::Part {
        delivered: 1,
        requested: 4,
    };
    store
        .settle_reservation(&c, None, part)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .settle_reservation(&b, None, Billed::All)
            .await
            .unwrap(),
        None,
        "a released reservation cannot be spent later"
    );
    let day = today_of(store).await;
    assert_eq!(
        (day.reserved_micros, day.spent_micros),
        (0, COST + COST / 4)
    );

    // Concurrent settlements of one reservation: one wins.
    let d = add(store, "d", JobKind::Image).await;
    claim(d.clone(), "w1", MINUTE).await;
    let results =
        join_all((0..6).map(|_| store.settle_reservation(&d, Some("w1"), Billed::All))).await;
    assert_eq!(
        results.iter().filter(|r| matches!(r, Ok(Some(_)))).count(),
        1
    );
    assert!(results.iter().all(Result::is_ok));
    let day = today_of(store).await;
    assert_eq!(
        (day.reserved_micros, day.spent_micros),
        (0, 2 * COST + COST / 4)
    );

    // A worker that vanished mid-call: its request may have been billed, so
    // its reservation counts as spent, and the claim that finds it sends
    // nothing new: the image job fails as submit_unknown, reserving nothing.
    let e = add(store, "e", JobKind::Image).await;
    claim(e.clone(), "gone", SHORT).await;
    let_leases_expire().await;
    let Budgeted::Within(Claim::Lost(lost)) = store
        .claim_job_within(&e, &lease("w3"), &no_limit)
        .await
        .unwrap()
    else {
        panic!("the claim settles the request in doubt");
    };
    assert_eq!(
        (lost.status(), lost.attempts(), lost.reservation().cloned()),
        (JobStatus::Failed, 1, None)
    );
    assert_eq!(lost.error().unwrap().code, SUBMIT_UNKNOWN);
    let day = today_of(store).await;
    assert_eq!(
        (day.reserved_micros, day.spent_micros),
        (0, 3 * COST + COST / 4)
    );
    assert_eq!(
        store
            .settle_reservation(&e, Some("gone"), Billed::Nothing)
            .await
            .unwrap(),
        None,
        "the vanished worker cannot release what was booked"
    );

    // A submitted video whose job is requeued keeps its reservation for
    // the operation; the claim that resumes it reserves nothing more.
    let v = add(store, "v", JobKind::Video).await;
    claim(v.clone(), "w4", MINUTE).await;
    store
        .start_generating(&v, &lease("w4"), "projects/p/operations/v")
        .await
        .unwrap();
    store.reset_stuck_jobs(Duration::ZERO).await.unwrap();
    let resumed_cost = |job: &Job| job.operation_name().is_none().then_some(COST);
    let resumed = match store
        .claim_job_within(
            &v,
            &lease("w5"),
            &Budget {
                limit_micros: None,
                cost: &resumed_cost,
                model: None,
            },
        )
        .await
        .unwrap()
    {
        Budgeted::Within(Claim::Claimed(job)) => job,
        other => panic!("{other:?}"),
    };
    let reservation = resumed.reservation().unwrap();
    assert_eq!(
        (reservation.micros, reservation.owner.as_str()),
        (COST, "w5")
    );
    // Only the video's reservation is held: the e job's was booked.
    assert_eq!(today_of(store).await.reserved_micros, COST);
}

fn download(job_id: &str, object: &str, priority: i64) -> NewDownload {
    NewDownload {
        job_id: job_id.into(),
        bucket: "out".into(),
        object: object.into(),
        generation: Some(1),
        destination: Target::File(format!("/archive/{object}").into()),
        file_type: if object.starts_with("videos/") {
            FileType::Video
        } else {
            FileType::Image
        },
        priority,
        size: Some(1024),
        crc32c: Some("AAAAAA==".parse().unwrap()),
        tenant: Default::default(),
    }
}

async fn downloads_are_created_once_claimed_in_order_and_retried(t: TestStore) {
    let store = &t.store;
    let first = store
        .create_download(download("j", "videos/j/t/sample_0.mp4", 1))
        .await
        .unwrap();
    let again = store
        .create_download(download("j", "videos/j/t/sample_0.mp4", 1))
        .await
        .unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.record.id(), again.record.id());
    let image = store
        .create_download(download("j", "images/j/0.png", 10))
        .await
        .unwrap()
        .record;

    let next = store
        .claim_next_download(&lease("c"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id(), image.id(), "images (higher priority) first");
    let progressed = store
        .download_progress(next.id(), &lease("c"), 512)
        .await
        .unwrap();
    assert_eq!(progressed.bytes_copied(), 512);
    let done = store.complete_download(next.id(), "c", 1024).await.unwrap();
    assert_eq!(
        (done.status(), done.bytes_copied()),
        (DownloadStatus::Completed, 1024)
    );
    assert!(done.expire_at().is_some());

    let video = first.record.id();
    for attempt in 1..=3 {
        let claimed = store
            .claim_next_download(&lease("c"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((claimed.id(), claimed.attempts()), (video, attempt));
        store
            .fail_download(
                video,
                "c",
                JobError::new("crc_mismatch", "crc32c differs", true),
            )
            .await
            .unwrap();
    }
    let failed = store.download(video).await.unwrap();
    assert_eq!(failed.status(), DownloadStatus::Failed);
    assert!(
        store
            .claim_next_download(&lease("c"))
            .await
            .unwrap()
            .is_none()
    );
    let retried = store.retry_download(video).await.unwrap();
    assert_eq!(
        (retried.status(), retried.attempts()),
        (DownloadStatus::Pending, 0)
    );

    let listed = store
        .list_downloads(Some(DownloadStatus::Pending), 10, None)
        .await
        .unwrap();
    assert_eq!(
        listed.items.iter().map(|d| d.id()).collect::<Vec<_>>(),
        vec![video]
    );
}

async fn expired_records_are_deleted_and_nothing_else(t: TestStore) {
    let store = &t.store;
    let keep = add(store, "keep", JobKind::Image).await;
    let gone = add(store, "gone", JobKind::Image).await;
    store.cancel_job(&gone).await.unwrap();
    let d = store
        .create_download(download(&keep, "images/k/0.png", 0))
        .await
        .unwrap()
        .record
        .id()
        .to_string();
    store.claim_download(&d, &lease("c")).await.unwrap();
    store.complete_download(&d, "c", 1).await.unwrap();
    let pending_download = store
        .create_download(download(&keep, "images/k/1.png", 0))
        .await
        .unwrap()
        .record
        .id()
        .to_string();

    tokio::time::sleep(Duration::from_millis(20)).await;
    let deleted = store.delete_expired().await.unwrap();
    assert_eq!((deleted.jobs, deleted.downloads), (1, 1));
    assert!(store.get_job(&gone).await.unwrap().is_none());
    assert!(store.get_download(&d).await.unwrap().is_none());
    assert!(store.get_job(&keep).await.unwrap().is_some());
    assert!(
        store
            .get_download(&pending_download)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.delete_expired().await.unwrap().jobs, 0);
}

// ---- the review loop ----

/// An image job that a generator completed with one PNG.
async fn completed_image(store: &Store, prompt: &str) -> String {
    let id = add(store, prompt, JobKind::Image).await;
    store.claim_job(&id, &lease("gen")).await.unwrap();
    let output = format!("gs://out/images/{id}/0.png");
    store
        .complete_job(&id, "gen", vec![output.parse().unwrap()])
        .await
        .unwrap();
    id
}

fn is_refused(result: shared::error::Result<impl std::fmt::Debug>, says: &str) {
    match result {
        Err(e @ Error::Transition { .. }) => {
            assert!(e.to_string().contains(says), "{e} lacks {says:?}")
        }
        other => panic!("expected a refused transition saying {says:?}, got {other:?}"),
    }
}

fn is_not_found(result: shared::error::Result<impl std::fmt::Debug>) {
    assert!(matches!(result, Err(Error::NotFound { .. })), "{result:?}");
}

async fn only_a_finished_image_is_reviewed_and_a_second_verdict_replaces_the_first(t: TestStore) {
    let store = &t.store;
    let image = completed_image(store, "soap shavings").await;
    let approved = store
        .review_job(&image, Verdict::Approved, Some("crisp".into()))
        .await
        .unwrap();
    assert_eq!(approved.verdict(), Some(Verdict::Approved));
    assert_eq!(
        approved.reviewed().unwrap().reason.as_deref(),
        Some("crisp")
    );
    let other = completed_image(store, "sand").await;
    store
        .review_job(&other, Verdict::Rejected, None)
        .await
        .unwrap();
    let unreviewed = completed_image(store, "foam").await;

    let listed = |approved| {
        let filter = JobFilter {
            approved: Some(approved),
            ..JobFilter::default()
        };
        async move {
            let page = store.list_jobs(&filter, 10, None).await.unwrap();
            page.items
                .iter()
                .map(|j| j.id().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(true).await, [image.as_str()]);
    assert_eq!(listed(false).await, [other.as_str()]);
    let promotable = store.promotable(None).await.unwrap();
    assert_eq!(promotable.len(), 1);
    assert_eq!(promotable[0].id(), image);

    let rejected = store
        .review_job(
            &image,
            Verdict::Rejected,
            Some("on second look, blurry".into()),
        )
        .await
        .unwrap();
    assert_eq!(rejected.verdict(), Some(Verdict::Rejected));
    assert!(listed(true).await.is_empty(), "the verdict was replaced");
    assert_eq!(listed(false).await.len(), 2);
    assert!(!listed(false).await.contains(&unreviewed));

    let pending = add(store, "not yet", JobKind::Image).await;
    is_refused(
        store.review_job(&pending, Verdict::Approved, None).await,
        &format!("job {pending} is pending; only a completed or delivered image can be reviewed"),
    );
    let video = add(store, "a clip", JobKind::Video).await;
    is_refused(
        store.review_job(&video, Verdict::Approved, None).await,
        "is a video; only images are approved or rejected",
    );
    is_not_found(
        store
            .review_job(&Job::id_for_request("nobody"), Verdict::Approved, None)
            .await,
    );
    assert!(store.job(&pending).await.unwrap().reviewed().is_none());
}

async fn promoting_an_image_twice_makes_one_video_and_again_makes_another(t: TestStore) {
    let store = &t.store;
    let image = completed_image(store, "honey folding").await;
    store
        .review_job(&image, Verdict::Approved, None)
        .await
        .unwrap();
    let options = PromoteOptions {
        duration: Some(4),
        ..PromoteOptions::default()
    };
    let first = store.promote(&image, &options).await.unwrap();
    assert!(first.created);
    let video = &first.video;
    assert_eq!(
        (video.kind(), video.status(), video.parent()),
        (JobKind::Video, JobStatus::Pending, Some(image.as_str()))
    );
    assert_eq!(video.prompt(), "honey folding");
    assert_eq!(video.params().duration_seconds, Some(4));
    let frame = video.first_frame().unwrap();
    assert_eq!(
        (frame.gcs_uri.as_str(), frame.mime_type.as_str()),
        (
            format!("gs://out/images/{image}/0.png").as_str(),
            "image/png"
        )
    );
    assert_eq!(first.image.children(), [video.id()]);

    let repeat = store.promote(&image, &options).await.unwrap();
    assert!(!repeat.created);
    assert_eq!(repeat.video.id(), video.id());
    assert_eq!(repeat.image.children(), [video.id()]);

    let again = PromoteOptions {
        again: true,
        ..options
    };
    let second = store.promote(&image, &again).await.unwrap();
    assert!(second.created);
    assert_ne!(second.video.id(), video.id());
    assert_eq!(second.video.parent(), Some(image.as_str()));

    let stored = store.job(&image).await.unwrap();
    assert_eq!(stored.children(), [video.id(), second.video.id()]);
    assert_eq!(stored.verdict(), Some(Verdict::Approved), "kept");
    for child in stored.children() {
        let child = store.job(child).await.unwrap();
        assert_eq!(child.parent(), Some(image.as_str()), "linked both ways");
    }
    assert_eq!(store.job_counts().await.unwrap().kind(JobKind::Video), 2);
}

async fn concurrent_promotions_of_one_image_create_one_video(t: TestStore) {
    let store = &t.store;
    let image = completed_image(store, "kinetic sand").await;
    let promotions = (0..8).map(|_| {
        let store = store.clone();
        let image = image.clone();
        tokio::spawn(async move { store.promote(&image, &PromoteOptions::default()).await })
    });
    let results: Vec<_> = join_all(promotions)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|p| p.created).count(),
        1,
        "exactly one promotion creates"
    );
    let ids: HashSet<_> = results.iter().map(|p| p.video.id().to_string()).collect();
    assert_eq!(ids.len(), 1, "every promotion answers with the same video");
    let stored = store.job(&image).await.unwrap();
    assert_eq!(
        stored.children().to_vec(),
        ids.into_iter().collect::<Vec<_>>()
    );
    assert_eq!(store.job_counts().await.unwrap().kind(JobKind::Video), 1);
}

async fn a_refused_promotion_creates_nothing(t: TestStore) {
    let store = &t.store;
    let pending = add(store, "not yet", JobKind::Image).await;
    is_refused(
        store.promote(&pending, &PromoteOptions::default()).await,
        &format!(
            "job {pending} is pending; only a completed or delivered image is made into a video"
        ),
    );
    let filtered = add(store, "withheld", JobKind::Image).await;
    store.claim_job(&filtered, &lease("gen")).await.unwrap();
    store
        .fail_job(
            &filtered,
            Some("gen"),
            JobError::new(FILTERED, "withheld", false),
        )
        .await
        .unwrap();
    is_refused(
        store.promote(&filtered, &PromoteOptions::default()).await,
        "was stopped by the safety filters",
    );
    let video = add(store, "a clip", JobKind::Video).await;
    is_refused(
        store.promote(&video, &PromoteOptions::default()).await,
        "is a video; only an image is made into a video",
    );
    is_not_found(
        store
            .promote(&Job::id_for_request("nobody"), &PromoteOptions::default())
            .await,
    );
    let image = completed_image(store, "fine").await;
    let too_long = PromoteOptions {
        duration: Some(10),
        ..PromoteOptions::default()
    };
    assert!(matches!(
        store.promote(&image, &too_long).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        store.job_counts().await.unwrap().kind(JobKind::Video),
        1,
        "only the video made by hand"
    );
    for id in [&pending, &filtered, &image] {
        assert!(store.job(id).await.unwrap().children().is_empty(), "{id}");
    }
}

/// Job events that cannot be published: Pub/Sub is down, or the process
/// stops between the commit and the publish.
struct Unpublished;

#[async_trait::async_trait]
impl shared::job_events::JobEvents for Unpublished {
    async fn publish(&self, _: &shared::job_events::JobEvent) -> shared::error::Result<()> {
        Err(Error::store(
            "publishing a job event",
            "Pub/Sub is down",
            true,
        ))
    }
}

async fn an_event_that_was_not_published_waits_in_the_outbox_and_is_published_once(t: TestStore) {
    use shared::bus::Bus;
    let broken = t
        .store
        .clone()
        .with_events(std::sync::Arc::new(Unpublished));
    let id = add(&broken, "an event to keep", JobKind::Image).await;
    broken
        .fail_job(&id, None, JobError::new("x", "y", false))
        .await
        .unwrap();
    assert_eq!(
        broken.outbox_len().await.unwrap(),
        1,
        "committed with the transition"
    );
    // Later (the janitor's sweep), with Pub/Sub back.
    let bus = std::sync::Arc::new(shared::bus::memory::MemoryBus::new());
    bus.ensure_topic("events").await.unwrap();
    let healed =
        t.store
            .clone()
            .with_events(std::sync::Arc::new(shared::job_events::BusJobEvents::new(
                bus.clone(),
                "events",
            )));
    let report = healed.publish_outbox(Duration::ZERO).await.unwrap();
    assert_eq!((report.published, report.failed), (1, 0));
    assert_eq!(healed.outbox_len().await.unwrap(), 0);
    let again = healed.publish_outbox(Duration::ZERO).await.unwrap();
    assert_eq!(again.published, 0, "published once");
    let published = bus.published("events");
    assert_eq!(published.len(), 1);
    let event: serde_json::Value = serde_json::from_slice(&published[0].data).unwrap();
    assert_eq!(
        (event["job_id"].as_str(), event["status"].as_str()),
        (Some(id.as_str()), Some("failed"))
    );
    assert_eq!(
        published[0].attributes["event_id"],
        event["event_id"].as_str().unwrap()
    );
    // A healthy relay leaves nothing behind.
    let other = add(&healed, "published at once", JobKind::Image).await;
    healed.cancel_job(&other).await.unwrap();
    healed.flush_events().await;
    assert_eq!(healed.outbox_len().await.unwrap(), 0);
    assert_eq!(bus.published("events").len(), 2);
}

// ---- the last hour, as the live page shows it ----

async fn the_last_hour_counts_what_was_made_delivered_and_failed(t: TestStore) {
    let store = &t.store;
    let acme: shared::domain::tenant::TenantName = "acme".parse().unwrap();
    let record = shared::domain::tenant::Tenant::new(
        acme.clone(),
        &Default::default(),
        shared::time::Timestamp::now(),
    )
    .unwrap();
    store.add_tenant(record).await.unwrap();
    let mut made = Vec::new();
    for i in 0..3 {
        made.push(completed_image(store, &format!("made {i}")).await);
    }
    let failed = add(store, "refused", JobKind::Image).await;
    store.claim_job(&failed, &lease("gen")).await.unwrap();
    store
        .fail_job(
            &failed,
            Some("gen"),
            JobError::new(FILTERED, "filtered", false),
        )
        .await
        .unwrap();
    let waiting = add(store, "waits", JobKind::Video).await;
    let theirs = store
        .create_job(NewJob {
            tenant: acme.clone(),
            ..new_job("acme's", JobKind::Image)
        })
        .await
        .unwrap();
    let copy = store
        .create_download(download(&made[0], &format!("images/{}/0.png", made[0]), 10))
        .await
        .unwrap()
        .record;
    store.claim_download(copy.id(), &lease("c")).await.unwrap();
    store.complete_download(copy.id(), "c", 3).await.unwrap();

    let everyone = shared::store::tenants::Scope::Everyone;
    let mut cache = shared::store::activity::ActivityCache::default();
    let stats = store
        .stats_with_activity(&everyone, &mut cache)
        .await
        .unwrap();
    let activity = stats.activity.clone().unwrap();
    let hour = &activity.last_hour;
    assert_eq!(
        (hour.created, hour.generated, hour.delivered, hour.failed),
        (6, 3, 1, 1),
        "{activity:?}"
    );
    assert_eq!(activity.per_minute.created.len(), 60);
    assert_eq!(activity.per_minute.created.iter().sum::<u64>(), 6);
    assert_eq!(
        activity.per_minute.created[58..].iter().sum::<u64>(),
        6,
        "all made in the last two minutes: {:?}",
        activity.per_minute.created
    );
    assert_eq!(
        activity.failures,
        BTreeMap::from([(FILTERED.to_string(), 1)])
    );
    assert_eq!(activity.model_call_success_rate, Some(0.75));
    assert_eq!(activity.download_completion_rate, Some(1.0));
    let age = activity.oldest_pending_age_s.unwrap();
    assert!(age < 120, "the oldest pending job is new: {age}");
    let tenants = stats.jobs_by_tenant.unwrap();
    assert_eq!(tenants["acme"].pending, 1, "{tenants:?}");
    assert_eq!(tenants["default"].total, 5, "{tenants:?}");

    // A second read with the cache finds the same, and what is new.
    store.claim_job(&waiting, &lease("gen")).await.unwrap();
    store
        .fail_job(
            &waiting,
            Some("gen"),
            JobError::new(SUBMIT_UNKNOWN, "lost", false),
        )
        .await
        .unwrap();
    let again = store
        .stats_with_activity(&everyone, &mut cache)
        .await
        .unwrap()
        .activity
        .unwrap();
    assert_eq!(again.last_hour.created, 6);
    assert_eq!(again.last_hour.failed, 2);
    assert_eq!(
        again.failures,
        BTreeMap::from([(FILTERED.to_string(), 1), (SUBMIT_UNKNOWN.to_string(), 1)])
    );

    // One tenant sees its own only; the default tenant everything else.
    let mine = store
        .activity_in(&shared::store::tenants::Scope::Tenant(acme))
        .await
        .unwrap();
    assert_eq!(
        (
            mine.last_hour.created,
            mine.last_hour.failed,
            mine.failures.len()
        ),
        (1, 0, 0)
    );
    assert!(
        mine.oldest_pending_age_s.is_some(),
        "{:?}",
        theirs.record.id()
    );
    let rest = store
        .activity_in(&shared::store::tenants::Scope::default_tenant())
        .await
        .unwrap();
    assert_eq!((rest.last_hour.created, rest.last_hour.failed), (5, 2));
    assert_eq!(
        rest.oldest_pending_age_s, None,
        "the default tenant's jobs all ended or run"
    );

    // Jobs per model: the model a claim recorded, each model found once.
    let mut on_model = Vec::new();
    for (prompt, model) in [
        ("a", "imagen-4.0-generate-001"),
        ("b", "gemini-2.5-flash-image"),
        ("c", "gemini-2.5-flash-image"),
    ] {
        let id = add(store, prompt, JobKind::Image).await;
        let budget = Budget {
            limit_micros: None,
            cost: &free,
            model: Some(model),
        };
        store
            .claim_job_within(&id, &lease("gen"), &budget)
            .await
            .unwrap();
        on_model.push(id);
    }
    assert_eq!(
        store.models_in_use().await.unwrap(),
        ["gemini-2.5-flash-image", "imagen-4.0-generate-001"]
    );
    let by_model = store
        .stats_with_activity(&everyone, &mut cache)
        .await
        .unwrap()
        .jobs_by_model
        .unwrap();
    let processing: Vec<(&str, u64, u64)> = by_model
        .iter()
        .map(|(model, row)| (model.as_str(), row.processing, row.total))
        .collect();
    assert_eq!(
        processing,
        [
            ("gemini-2.5-flash-image", 2, 2),
            ("imagen-4.0-generate-001", 1, 1)
        ]
    );
    // The quota in use: calls that ended in the last minute, per model.
    store
        .fail_job(
            &on_model[0],
            Some("gen"),
            JobError::new(FILTERED, "filtered", false),
        )
        .await
        .unwrap();
    let output = format!("gs://out/images/{}/0.png", on_model[1]);
    store
        .complete_job(&on_model[1], "gen", vec![output.parse().unwrap()])
        .await
        .unwrap();
    let calls = store
        .activity_in(&everyone)
        .await
        .unwrap()
        .calls_last_minute;
    assert_eq!(
        calls,
        BTreeMap::from([
            ("gemini-2.5-flash-image".to_string(), 1),
            ("imagen-4.0-generate-001".to_string(), 1)
        ])
    );
    let acme = shared::store::tenants::Scope::Tenant("acme".parse().unwrap());
    let theirs = store
        .stats_with_activity(&acme, &mut Default::default())
        .await
        .unwrap()
        .jobs_by_model
        .unwrap();
    assert!(theirs.is_empty(), "acme's jobs ran on no model: {theirs:?}");
}

/// Runs every scenario above on one adapter, each named once: a scenario
/// left out of these lists is an unused function, which the lints refuse.
macro_rules! contract {
    ($adapter:ident, $make:path) => {
        mod $adapter {
            use super::*;

            contract!(@each $make, Retention::default(), (), [
                a_write_on_a_stale_version_is_refused,
                the_same_request_id_yields_one_job,
                an_expired_lease_is_claimable_again_with_attempts_counted,
                attempts_past_max_fail_the_job_instead_of_requeueing_it,
                counts_are_exact_after_a_mixed_workload,
                claim_next_takes_higher_priority_first_and_only_its_kind,
                listing_pages_through_everything_newest_first,
                a_job_document_round_trips_every_field,
                refused_and_missing_operations_say_why,
                stuck_jobs_are_reset_and_filtered_jobs_are_not_retried,
                downloads_are_created_once_claimed_in_order_and_retried,
                a_commit_applies_every_write_or_none,
                an_event_that_was_not_published_waits_in_the_outbox_and_is_published_once,
                settling_a_reservation_is_exact_and_happens_once,
                only_a_finished_image_is_reviewed_and_a_second_verdict_replaces_the_first,
                promoting_an_image_twice_makes_one_video_and_again_makes_another,
                a_refused_promotion_creates_nothing,
                the_last_hour_counts_what_was_made_delivered_and_failed,
            ]);
            contract!(@each $make, Retention::default(), (flavor = "multi_thread", worker_threads = 4), [
                twenty_claimers_take_fifty_jobs_exactly_once,
                a_budget_for_n_claims_reserves_exactly_n_among_concurrent_claimers,
                concurrent_promotions_of_one_image_create_one_video,
            ]);
            // Retention of zero: finished records expire at once.
            contract!(@each $make, Retention { failed_jobs: Duration::ZERO, completed_downloads: Duration::ZERO }, (), [
                expired_records_are_deleted_and_nothing_else,
            ]);
        }
    };
    (@each $make:path, $retention:expr, $flavor:tt, [$($name:ident),* $(,)?]) => {
        $(
            #[tokio::test $flavor]
            async fn $name() {
                super::$name($make($retention).await).await
            }
        )*
    };
}

contract!(embedded, tests::harness::embedded);
#[cfg(feature = "emulators")]
contract!(firestore, tests::harness::firestore);
