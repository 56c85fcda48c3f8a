//! What only the embedded adapter promises: its state survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::domain::Lease;
use shared::domain::job::NewJob;
use shared::domain::values::{JobKind, JobStatus};
use shared::store::{Store, StoreConfig};
use std::time::Duration;

#[tokio::test]
async fn state_survives_closing_and_reopening_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::Embedded {
        state_dir: dir.path().join("nested/.asmr"),
    };
    let (pending, claimed) = {
        let store = Store::open(&config).await.unwrap();
        let pending = store
            .create_job(NewJob::new("kept", JobKind::Image))
            .await
            .unwrap()
            .record;
        let claimed = store
            .create_job(NewJob::new("taken", JobKind::Video))
            .await
            .unwrap()
            .record;
        store
            .claim_job(claimed.id(), &Lease::new("w", Duration::from_secs(60)))
            .await
            .unwrap();
        (pending.id().to_string(), claimed.id().to_string())
    };
    let store = Store::open(&config).await.unwrap();
    assert!(
        store.describe().contains("nested/.asmr"),
        "{}",
        store.describe()
    );
    assert_eq!(
        store.job(&pending).await.unwrap().status(),
        JobStatus::Pending
    );
    let job = store.job(&claimed).await.unwrap();
    assert_eq!((job.status(), job.attempts()), (JobStatus::Processing, 1));
    assert_eq!(store.job_counts().await.unwrap().total(), 2);
}

#[tokio::test]
async fn two_stores_on_one_directory_see_each_others_writes() {
    // `asmr stats` in one terminal while `asmr run` works in another.
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::Embedded {
        state_dir: dir.path().to_path_buf(),
    };
    let writer = Store::open(&config).await.unwrap();
    let reader = Store::open(&config).await.unwrap();
    let id = writer
        .create_job(NewJob::new("x", JobKind::Image))
        .await
        .unwrap()
        .record
        .id()
        .to_string();
    assert_eq!(reader.job(&id).await.unwrap().prompt(), "x");
    let lease = Lease::new("a", Duration::from_secs(60));
    assert!(
        reader
            .claim_next_job(JobKind::Image, &lease)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        writer
            .claim_next_job(JobKind::Image, &lease)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_unusable_state_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&StoreConfig::Embedded {
        state_dir: file.clone(),
    })
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("creating the state directory {}", file.display())),
        "{text}"
    );
}
