//! The state machines, tested exhaustively: every action from every status.

use super::download::{Download, DownloadStatus, FileType, NewDownload};
use super::job::{
    ClaimRefusal, Delivery, FILTERED, Job, JobError, JobKind, JobStatus, NewJob, Retention,
};
use super::{Lease, TransitionError};
use crate::time::Timestamp;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

fn lease(owner: &str) -> Lease {
    Lease::new(owner, MINUTE)
}

/// A job in `status`, leased to `w1` for a minute when the status is leased.
fn job_in(status: JobStatus, now: Timestamp) -> Job {
    let mut job = Job::new(NewJob::new("soft rain", JobKind::Video), now);
    job.status = status;
    if status.is_leased() {
        job.attempts = 1;
        job.lease_owner = Some("w1".into());
        job.lease_expires_at = Some(now.plus(MINUTE));
    }
    if status == JobStatus::Completed || status == JobStatus::Delivered {
        job.outputs = vec!["gs://out/videos/a/sample_0.mp4".into()];
    }
    job
}

type Action = (&'static str, fn(&mut Job, Timestamp) -> bool);

fn actions() -> Vec<Action> {
    vec![
        ("claim", |j, now| j.claim(&lease("w2"), now).is_ok()),
        ("extend_lease", |j, now| {
            j.extend_lease(&lease("w1"), now).is_ok()
        }),
        ("start_generating", |j, now| {
            j.start_generating(&lease("w1"), "ops/1", now).is_ok()
        }),
        ("complete", |j, now| {
            j.complete("w1", vec!["gs://out/x".into()], now).is_ok()
        }),
        ("record_delivery", |j, now| {
            j.record_delivery(
                Delivery {
                    source: "gs://out/x".into(),
                    destination: "/d/x".into(),
                },
                now,
            )
            .is_ok()
        }),
        ("fail", |j, now| {
            j.fail(
                Some("w1"),
                JobError::new("boom", "it broke", false),
                now,
                &Retention::default(),
            )
            .is_ok()
        }),
        ("cancel", |j, now| {
            j.cancel(now, &Retention::default()).is_ok()
        }),
        ("release", |j, now| j.release("w1", None, now).is_ok()),
        ("reset", |j, now| {
            j.reset(true, now, &Retention::default()).is_ok()
        }),
        ("retry", |j, now| j.retry(false, now).is_ok()),
    ]
}

fn allowed(action: &str, status: JobStatus) -> bool {
    use JobStatus::*;
    match action {
        "claim" => status == Pending,
        "extend_lease" | "complete" | "reset" => matches!(status, Processing | Generating),
        "start_generating" | "release" => status == Processing,
        "record_delivery" => status != Cancelled,
        "fail" | "cancel" => matches!(status, Pending | Processing | Generating),
        "retry" => matches!(status, Failed | Cancelled),
        other => panic!("no rule for {other}"),
    }
}

#[test]
fn every_job_transition_from_every_status_is_allowed_or_refused_as_designed() {
    let now = Timestamp::now();
    let mut checked = 0;
    for status in JobStatus::ALL {
        for (name, act) in actions() {
            let mut job = job_in(status, now);
            let before = job.clone();
            let ok = act(&mut job, now);
            assert_eq!(ok, allowed(name, status), "{name} from {status}");
            if !ok {
                assert_eq!(
                    job, before,
                    "a refused {name} from {status} changed the job"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 70);
}

#[test]
fn transitions_land_in_the_designed_status() {
    let now = Timestamp::now();
    let check = |from: JobStatus, act: fn(&mut Job, Timestamp) -> bool, to: JobStatus| {
        let mut job = job_in(from, now);
        assert!(act(&mut job, now), "{from} -> {to}");
        assert_eq!(job.status, to, "from {from}");
    };
    let actions = actions();
    let find = |name: &str| actions.iter().find(|(n, _)| *n == name).unwrap().1;
    check(JobStatus::Pending, find("claim"), JobStatus::Processing);
    check(
        JobStatus::Processing,
        find("start_generating"),
        JobStatus::Generating,
    );
    check(
        JobStatus::Processing,
        find("complete"),
        JobStatus::Completed,
    );
    check(
        JobStatus::Generating,
        find("complete"),
        JobStatus::Completed,
    );
    check(JobStatus::Processing, find("release"), JobStatus::Pending);
    check(JobStatus::Generating, find("reset"), JobStatus::Pending);
    check(JobStatus::Failed, find("retry"), JobStatus::Pending);
    check(JobStatus::Cancelled, find("retry"), JobStatus::Pending);
    for from in [
        JobStatus::Pending,
        JobStatus::Processing,
        JobStatus::Generating,
    ] {
        check(from, find("fail"), JobStatus::Failed);
        check(from, find("cancel"), JobStatus::Cancelled);
    }
}

#[test]
fn a_claim_counts_an_attempt_and_sets_the_lease() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Pending, now);
    job.claim(&lease("w2"), now).unwrap();
    assert_eq!(job.attempts, 1);
    assert_eq!(job.lease_owner.as_deref(), Some("w2"));
    assert_eq!(job.lease_expires_at, Some(now.plus(MINUTE)));
}

#[test]
fn a_live_lease_blocks_a_claim_and_an_expired_one_does_not() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Processing, now);
    assert_eq!(
        job.claim(&lease("w2"), now),
        Err(ClaimRefusal::Leased {
            owner: "w1".into(),
            until: now.plus(MINUTE)
        })
    );
    let later = now.plus(MINUTE * 2);
    job.claim(&lease("w2"), later).unwrap();
    assert_eq!(job.attempts, 2);
    assert_eq!(job.lease_owner.as_deref(), Some("w2"));
}

#[test]
fn a_generating_job_is_never_claimed_even_with_its_lease_expired() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Generating, now);
    let later = now.plus(MINUTE * 2);
    assert_eq!(
        job.claim(&lease("w2"), later),
        Err(ClaimRefusal::NotClaimable("generating"))
    );
}

#[test]
fn finished_jobs_are_not_claimable() {
    let now = Timestamp::now();
    for status in [
        JobStatus::Completed,
        JobStatus::Delivered,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ] {
        let mut job = job_in(status, now);
        assert_eq!(
            job.claim(&lease("w2"), now),
            Err(ClaimRefusal::NotClaimable(status.as_str()))
        );
    }
}

#[test]
fn no_attempt_left_means_exhausted_then_failed() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Pending, now);
    job.attempts = job.max_attempts;
    assert_eq!(job.claim(&lease("w2"), now), Err(ClaimRefusal::Exhausted));
    job.exhaust(now, &Retention::default()).unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.unwrap();
    assert_eq!(error.code, "attempts_exhausted");
    assert!(!error.retryable);
    assert!(job.expire_at.is_some());
}

#[test]
fn resetting_an_exhausted_job_fails_it_and_keeps_the_operation() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Generating, now);
    job.operation_name = Some("ops/7".into());
    job.reset(true, now, &Retention::default()).unwrap();
    assert_eq!(job.status, JobStatus::Pending);
    assert_eq!(job.operation_name.as_deref(), Some("ops/7"));
    assert_eq!(job.lease_owner, None);

    let mut job = job_in(JobStatus::Processing, now);
    job.attempts = 3;
    job.reset(true, now, &Retention::default()).unwrap();
    assert_eq!(job.status, JobStatus::Failed);
}

#[test]
fn an_unforced_reset_waits_for_the_lease_to_run_out() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Processing, now);
    assert_eq!(
        job.reset(false, now, &Retention::default()),
        Err(TransitionError::LeaseActive {
            holder: Some("w1".into())
        })
    );
    job.reset(false, now.plus(MINUTE), &Retention::default())
        .unwrap();
    assert_eq!(job.status, JobStatus::Pending);
}

#[test]
fn only_the_lease_holder_may_complete_extend_or_fail() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Processing, now);
    let not_owner = TransitionError::NotLeaseOwner {
        owner: "w9".into(),
        holder: Some("w1".into()),
    };
    assert_eq!(job.complete("w9", vec![], now), Err(not_owner.clone()));
    assert_eq!(job.extend_lease(&lease("w9"), now), Err(not_owner.clone()));
    assert_eq!(job.release("w9", None, now), Err(not_owner.clone()));
    assert_eq!(
        job.fail(
            Some("w9"),
            JobError::new("x", "y", false),
            now,
            &Retention::default()
        ),
        Err(not_owner)
    );
    // An operator (no owner) may fail it.
    job.fail(
        None,
        JobError::new("dead_letter", "gone", false),
        now,
        &Retention::default(),
    )
    .unwrap();
    assert_eq!(job.status, JobStatus::Failed);
}

#[test]
fn a_filtered_job_is_retried_only_when_asked_explicitly() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Processing, now);
    job.fail(
        Some("w1"),
        JobError::new(FILTERED, "raiMediaFilteredReasons: x", false),
        now,
        &Retention::default(),
    )
    .unwrap();
    assert_eq!(job.retry(false, now), Err(TransitionError::Filtered));
    assert_eq!(job.status, JobStatus::Failed);
    job.retry(true, now).unwrap();
    assert_eq!(
        (job.status, job.attempts, job.error.clone(), job.expire_at),
        (JobStatus::Pending, 0, None, None)
    );
}

#[test]
fn a_job_is_delivered_once_every_output_is() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Generating, now);
    let out = |n: u32| format!("gs://out/videos/j/t/sample_{n}.mp4");
    // One video lands before the operation is seen done.
    job.record_delivery(
        Delivery {
            source: out(0),
            destination: "/v/0".into(),
        },
        now,
    )
    .unwrap();
    assert_eq!(job.status, JobStatus::Generating);
    job.complete("w1", vec![out(0), out(1)], now).unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    job.record_delivery(
        Delivery {
            source: out(1),
            destination: "/v/1".into(),
        },
        now,
    )
    .unwrap();
    assert_eq!(job.status, JobStatus::Delivered);
    assert_eq!(job.deliveries.len(), 2);
    // A redelivered event does not duplicate the record.
    job.record_delivery(
        Delivery {
            source: out(1),
            destination: "/v/1".into(),
        },
        now,
    )
    .unwrap();
    assert_eq!(job.deliveries.len(), 2);
}

#[test]
fn completing_with_everything_already_delivered_goes_straight_to_delivered() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Generating, now);
    job.record_delivery(
        Delivery {
            source: "gs://o/a".into(),
            destination: "/a".into(),
        },
        now,
    )
    .unwrap();
    job.complete("w1", vec!["gs://o/a".into()], now).unwrap();
    assert_eq!(job.status, JobStatus::Delivered);
}

#[test]
fn a_job_without_outputs_stays_completed() {
    let now = Timestamp::now();
    let mut job = job_in(JobStatus::Processing, now);
    job.complete("w1", vec![], now).unwrap();
    assert_eq!(job.status, JobStatus::Completed);
}

#[test]
fn request_ids_map_to_stable_distinct_job_ids() {
    assert_eq!(Job::id_for_request("r-1"), Job::id_for_request("r-1"));
    assert_ne!(Job::id_for_request("r-1"), Job::id_for_request("r-2"));
    assert_eq!(Job::id_for_request("r-1").len(), 32);
    let mut new = NewJob::new("p", JobKind::Image);
    new.request_id = Some("r-1".into());
    assert_eq!(
        Job::new(new, Timestamp::now()).id,
        Job::id_for_request("r-1")
    );
}

#[test]
fn kinds_accept_the_old_names_and_statuses_parse() {
    let check = |text: &str, kind: Option<JobKind>| {
        assert_eq!(text.parse::<JobKind>().ok(), kind, "{text}");
    };
    check("image", Some(JobKind::Image));
    check("IMAGE_TEST", Some(JobKind::Image));
    check("Video", Some(JobKind::Video));
    check("VIDEO_PROD", Some(JobKind::Video));
    check("audio", None);
    assert_eq!(
        serde_json::from_str::<JobKind>("\"VIDEO_PROD\"").unwrap(),
        JobKind::Video
    );
    assert_eq!(serde_json::to_string(&JobKind::Video).unwrap(), "\"video\"");
    for status in JobStatus::ALL {
        assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            format!("\"{status}\"")
        );
    }
    let err = "done".parse::<JobStatus>().unwrap_err().to_string();
    assert!(err.contains("use one of pending, processing"), "{err}");
}

// ---- downloads ----

fn download_in(status: DownloadStatus, now: Timestamp) -> Download {
    let mut d = Download::new(
        NewDownload {
            job_id: "j".into(),
            bucket: "out".into(),
            object: "images/j/0.png".into(),
            generation: Some(7),
            destination: "/archive/images/j/0.png".into(),
            file_type: FileType::Image,
            priority: 0,
            size: Some(10),
            crc32c: None,
        },
        now,
    );
    d.status = status;
    if status == DownloadStatus::Downloading {
        d.attempts = 1;
        d.lease_owner = Some("w1".into());
        d.lease_expires_at = Some(now.plus(MINUTE));
    }
    d
}

#[test]
fn every_download_transition_from_every_status_is_allowed_or_refused_as_designed() {
    use DownloadStatus::*;
    let now = Timestamp::now();
    let r = Retention::default();
    type DAction = (
        &'static str,
        fn(&mut Download, Timestamp, &Retention) -> bool,
        &'static [DownloadStatus],
    );
    let table: [DAction; 5] = [
        (
            "claim",
            |d, now, _| d.claim(&lease("w2"), now).is_ok(),
            &[Pending],
        ),
        (
            "progress",
            |d, now, _| d.progress(&lease("w1"), 5, now).is_ok(),
            &[Downloading],
        ),
        (
            "complete",
            |d, now, r| d.complete("w1", 10, now, r).is_ok(),
            &[Downloading],
        ),
        (
            "fail",
            |d, now, _| d.fail("w1", JobError::new("io", "x", true), now).is_ok(),
            &[Downloading],
        ),
        ("retry", |d, now, _| d.retry(now).is_ok(), &[Failed]),
    ];
    for status in DownloadStatus::ALL {
        for (name, act, ok_from) in &table {
            let mut d = download_in(status, now);
            let before = d.clone();
            let ok = act(&mut d, now, &r);
            assert_eq!(ok, ok_from.contains(&status), "{name} from {status}");
            if !ok {
                assert_eq!(d, before);
            }
        }
    }
}

#[test]
fn a_failed_copy_is_retried_until_attempts_run_out() {
    let now = Timestamp::now();
    let mut d = download_in(DownloadStatus::Pending, now);
    for attempt in 1..=3 {
        d.claim(&lease("w1"), now).unwrap();
        assert_eq!(d.attempts, attempt);
        d.fail(
            "w1",
            JobError::new("crc_mismatch", "crc differs", true),
            now,
        )
        .unwrap();
    }
    assert_eq!(d.status, DownloadStatus::Failed);
    assert_eq!(d.error.as_ref().unwrap().code, "attempts_exhausted");
    assert!(d.error.as_ref().unwrap().message.contains("crc differs"));
    d.retry(now).unwrap();
    assert_eq!((d.status, d.attempts), (DownloadStatus::Pending, 0));
}

#[test]
fn a_permanent_copy_error_fails_at_once_and_completion_sets_retention() {
    let now = Timestamp::now();
    let mut d = download_in(DownloadStatus::Downloading, now);
    d.fail(
        "w1",
        JobError::new("not_found", "object deleted", false),
        now,
    )
    .unwrap();
    assert_eq!(d.status, DownloadStatus::Failed);

    let mut d = download_in(DownloadStatus::Downloading, now);
    d.complete("w1", 10, now, &Retention::default()).unwrap();
    assert_eq!(d.status, DownloadStatus::Completed);
    assert_eq!(
        d.expire_at,
        Some(now.plus(Duration::from_secs(7 * 24 * 3600)))
    );
}

#[test]
fn download_ids_depend_on_bucket_object_and_generation() {
    let a = Download::id_for("out", "images/j/0.png", Some(1));
    assert_eq!(a, Download::id_for("out", "images/j/0.png", Some(1)));
    assert_ne!(a, Download::id_for("out", "images/j/0.png", Some(2)));
    assert_ne!(a, Download::id_for("out2", "images/j/0.png", Some(1)));
    assert_ne!(
        Download::id_for("a", "b\nc", None),
        Download::id_for("a\nb", "c", None)
    );
}

#[test]
fn the_poller_finishes_only_generating_jobs_and_resumes_keep_the_submission_time() {
    let now = Timestamp::now();
    for status in JobStatus::ALL {
        let mut job = job_in(status, now);
        let ok = job.finish_operation(vec!["gs://o/v".into()], now).is_ok();
        assert_eq!(ok, status == JobStatus::Generating, "from {status}");
    }
    let mut job = job_in(JobStatus::Processing, now);
    job.start_generating(&Lease::new("w1", MINUTE * 40), "ops/1", now)
        .unwrap();
    assert_eq!(job.submitted_at, Some(now));
    assert_eq!(job.lease_expires_at, Some(now.plus(MINUTE * 40)));
    // Reset and resumed later: the same operation keeps its age.
    job.reset(true, now, &Retention::default()).unwrap();
    job.claim(&lease("w2"), now.plus(MINUTE)).unwrap();
    job.start_generating(&lease("w2"), "ops/1", now.plus(MINUTE))
        .unwrap();
    assert_eq!(job.submitted_at, Some(now));
    job.finish_operation(vec!["gs://o/v".into()], now).unwrap();
    assert_eq!(
        (job.status, job.lease_owner.clone()),
        (JobStatus::Completed, None)
    );
}
