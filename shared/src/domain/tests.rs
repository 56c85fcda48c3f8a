//! The state machines, tested exhaustively: every action from every status.

use super::destination::Target;
use super::download::{Download, DownloadStatus, FileType, NewDownload};
use super::job::{ClaimRefusal, Job, NewJob, Retention};
use super::values::{DeliveredOutput, FILTERED, JobError, JobKind, JobStatus, RetryOptions};
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
    if status == JobStatus::Generating {
        job.operation_name = Some("ops/0".into());
    }
    if status == JobStatus::Completed || status == JobStatus::Delivered {
        job.outputs = vec!["gs://out/videos/a/sample_0.mp4".parse().unwrap()];
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
            j.complete("w1", vec!["gs://out/x".parse().unwrap()], now)
                .is_ok()
        }),
        ("record_delivery", |j, now| {
            j.record_delivery(
                DeliveredOutput {
                    source: "gs://out/x".parse().unwrap(),
                    destination: "/d/x".parse().unwrap(),
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
        ("retry", |j, now| {
            j.retry(&RetryOptions::default(), now).is_ok()
        }),
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
    assert_eq!(
        job.retry(&RetryOptions::default(), now),
        Err(TransitionError::Filtered)
    );
    assert_eq!(job.status, JobStatus::Failed);
    let include_filtered = RetryOptions {
        include_filtered: true,
        ..RetryOptions::default()
    };
    job.retry(&include_filtered, now).unwrap();
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
        DeliveredOutput {
            source: out(0).parse().unwrap(),
            destination: "/v/0".parse().unwrap(),
        },
        now,
    )
    .unwrap();
    assert_eq!(job.status, JobStatus::Generating);
    job.complete(
        "w1",
        vec![out(0).parse().unwrap(), out(1).parse().unwrap()],
        now,
    )
    .unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    job.record_delivery(
        DeliveredOutput {
            source: out(1).parse().unwrap(),
            destination: "/v/1".parse().unwrap(),
        },
        now,
    )
    .unwrap();
    assert_eq!(job.status, JobStatus::Delivered);
    assert_eq!(job.deliveries.len(), 2);
    // A redelivered event does not duplicate the record.
    job.record_delivery(
        DeliveredOutput {
            source: out(1).parse().unwrap(),
            destination: "/v/1".parse().unwrap(),
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
        DeliveredOutput {
            source: "gs://o/a".parse().unwrap(),
            destination: "/a".parse().unwrap(),
        },
        now,
    )
    .unwrap();
    job.complete("w1", vec!["gs://o/a".parse().unwrap()], now)
        .unwrap();
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
            destination: Target::File("/archive/images/j/0.png".into()),
            file_type: FileType::Image,
            priority: 0,
            size: Some(10),
            crc32c: None,
            tenant: Default::default(),
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
        let ok = job
            .finish_operation(vec!["gs://o/v".parse().unwrap()], now)
            .is_ok();
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
    job.finish_operation(vec!["gs://o/v".parse().unwrap()], now)
        .unwrap();
    assert_eq!(
        (job.status, job.lease_owner.clone()),
        (JobStatus::Completed, None)
    );
}

fn reservation(owner: &str) -> super::values::Reservation {
    super::values::Reservation {
        day: "2026-12-03".into(),
        micros: 40_000,
        owner: owner.into(),
        shard: Some(3),
        charge: None,
    }
}

/// A live job of `kind`, claimed by `owner` with a paid request in flight.
fn calling(kind: JobKind, owner: &str, now: Timestamp) -> Job {
    let mut new = NewJob::new("rain on a tent", kind);
    new.dry_run = false;
    let mut job = Job::new(new, now);
    job.claim(&lease(owner), now).unwrap();
    job.reserve(reservation(owner)).unwrap();
    job
}

#[test]
fn waiting_gives_the_attempt_back_however_long_it_lasts() {
    use super::values::{MISCONFIGURED, QUOTA_EXHAUSTED};
    let now = Timestamp::now();
    let mut job = Job::new(NewJob::new("soft rain", JobKind::Image), now);
    for round in 0..50 {
        let owner = format!("w{round}");
        job.claim(&lease(&owner), now).unwrap();
        let reason = if round % 2 == 0 {
            QUOTA_EXHAUSTED
        } else {
            MISCONFIGURED
        };
        job.wait(
            &owner,
            reason,
            JobError::new("rate_limited", "429", true),
            now,
        )
        .unwrap();
        assert_eq!(
            (job.status, job.attempts, job.waiting.as_deref()),
            (JobStatus::Pending, 0, Some(reason))
        );
    }
    // Only the lease holder may put it back, and only from processing.
    job.claim(&lease("w1"), now).unwrap();
    let error = JobError::new("rate_limited", "429", true);
    assert!(job.wait("w2", QUOTA_EXHAUSTED, error.clone(), now).is_err());
    job.release("w1", None, now).unwrap();
    assert!(job.wait("w1", QUOTA_EXHAUSTED, error, now).is_err());
    assert_eq!(job.attempts, 1, "a release after an outage counts");
}

#[test]
fn a_paid_request_in_doubt_is_settled_by_the_next_claim_not_sent_again() {
    use super::values::SUBMIT_UNKNOWN;
    let now = Timestamp::now();
    let later = now.plus(MINUTE * 2);
    for kind in JobKind::ALL {
        let mut job = calling(kind, "w1", now);
        assert_eq!(job.calling.as_deref(), Some("w1"));
        // The worker vanished: its lease runs out and the job is reset...
        job.reset(false, later, &Retention::default()).unwrap();
        assert_eq!(job.status, JobStatus::Pending, "{kind}");
        // ...and the next claim finds the request in doubt.
        assert_eq!(
            job.claim(&lease("w2"), later),
            Err(ClaimRefusal::CallLost { owner: "w1".into() })
        );
        job.lose_call(later, &Retention::default()).unwrap();
        assert_eq!(job.calling, None);
        assert_eq!(job.error.as_ref().unwrap().code, SUBMIT_UNKNOWN, "{kind}");
        match kind {
            JobKind::Image => assert_eq!(job.status, JobStatus::Failed),
            JobKind::Video => {
                assert!(job.awaits_output());
                assert_eq!(job.submitted_at, Some(later));
            }
        }
        assert_eq!(job.attempts, 1, "no new attempt was counted");
    }
}

#[test]
fn a_reset_never_fails_a_job_whose_paid_request_is_in_doubt() {
    let now = Timestamp::now();
    let mut new = NewJob::new("rain on a tent", JobKind::Video);
    new.dry_run = false;
    new.max_attempts = 1;
    let mut job = Job::new(new, now);
    job.claim(&lease("w1"), now).unwrap();
    job.reserve(reservation("w1")).unwrap();
    job.reset(true, now, &Retention::default()).unwrap();
    assert_eq!(
        job.status,
        JobStatus::Pending,
        "left for the claim to settle"
    );
}

#[test]
fn whatever_a_claim_records_next_clears_the_request_in_doubt() {
    let now = Timestamp::now();
    let retention = Retention::default();
    let record: [Action; 5] = [
        ("complete", |j, now| {
            j.complete("w1", vec!["gs://o/i/0.png".parse().unwrap()], now)
                .is_ok()
        }),
        ("release", |j, now| j.release("w1", None, now).is_ok()),
        ("fail", |j, now| {
            j.fail(
                Some("w1"),
                JobError::new("x", "y", false),
                now,
                &Retention::default(),
            )
            .is_ok()
        }),
        ("wait", |j, now| {
            j.wait(
                "w1",
                super::values::QUOTA_EXHAUSTED,
                JobError::new("x", "y", true),
                now,
            )
            .is_ok()
        }),
        ("start_generating", |j, now| {
            j.start_generating(&lease("w1"), "ops/1", now).is_ok()
        }),
    ];
    for (name, act) in record {
        let mut job = calling(JobKind::Video, "w1", now);
        assert!(act(&mut job, now), "{name}");
        assert_eq!(job.calling, None, "{name}");
    }
    let mut job = calling(JobKind::Image, "w1", now);
    job.outcome_unknown("w1", "no answer", now, &retention)
        .unwrap();
    assert_eq!((job.status, job.calling.clone()), (JobStatus::Failed, None));
}

#[test]
fn a_video_awaiting_its_output_is_not_reset_and_takes_the_output_that_arrives() {
    let now = Timestamp::now();
    let retention = Retention::default();
    let mut job = calling(JobKind::Video, "w1", now);
    job.outcome_unknown("w1", "no answer within the time-out", now, &retention)
        .unwrap();
    assert!(job.awaits_output());
    assert!(
        job.reset(true, now, &retention).is_err(),
        "no worker to take it back from"
    );
    assert!(
        job.claim(&lease("w2"), now).is_err(),
        "nothing is sent again"
    );
    let source = format!("gs://out/videos/{}/2026/sample_0.mp4", job.id);
    job.record_delivery(
        DeliveredOutput {
            source: source.parse().unwrap(),
            destination: "/archive/v.mp4".parse().unwrap(),
        },
        now,
    )
    .unwrap();
    assert_eq!(
        (job.status, job.outputs.clone(), job.error.clone()),
        (JobStatus::Delivered, vec![source.parse().unwrap()], None)
    );
}

#[test]
fn a_video_that_arrives_after_its_job_failed_as_timed_out_or_unknown_completes_it() {
    use super::values::{OPERATION_FAILED, SUBMIT_UNKNOWN, TIMED_OUT};
    let now = Timestamp::now();
    for (code, adopted) in [
        (TIMED_OUT, true),
        (SUBMIT_UNKNOWN, true),
        (OPERATION_FAILED, false),
        ("dead_lettered", false),
    ] {
        let mut job = job_in(JobStatus::Generating, now);
        job.fail(
            None,
            JobError::new(code, "m", false),
            now,
            &Retention::default(),
        )
        .unwrap();
        job.record_delivery(
            DeliveredOutput {
                source: "gs://out/videos/a/late/sample_0.mp4".parse().unwrap(),
                destination: "/d/late.mp4".parse().unwrap(),
            },
            now,
        )
        .unwrap();
        let expected = if adopted {
            JobStatus::Delivered
        } else {
            JobStatus::Failed
        };
        assert_eq!(job.status, expected, "{code}");
        assert_eq!(job.expire_at.is_none(), adopted, "{code}");
    }
}

#[test]
fn a_retry_resubmits_a_failed_operation_rewatches_a_timed_out_one_and_pays_again_only_when_told() {
    use super::values::{OPERATION_FAILED, SUBMIT_UNKNOWN, TIMED_OUT};
    let now = Timestamp::now();
    let failed = |code: &str| {
        let mut job = job_in(JobStatus::Generating, now);
        job.submitted_at = Some(now);
        job.fail(
            None,
            JobError::new(code, "m", false),
            now,
            &Retention::default(),
        )
        .unwrap();
        job
    };
    let plain = RetryOptions::default();
    let mut job = failed(OPERATION_FAILED);
    job.retry(&plain, now).unwrap();
    assert_eq!((job.operation_name.clone(), job.submitted_at), (None, None));

    let mut job = failed(TIMED_OUT);
    job.retry(&plain, now).unwrap();
    assert_eq!(
        (job.operation_name.as_deref(), job.submitted_at),
        (Some("ops/0"), None),
        "watched again, with a fresh time-out"
    );

    let mut job = failed(SUBMIT_UNKNOWN);
    assert_eq!(job.retry(&plain, now), Err(TransitionError::OutcomeUnknown));
    let resubmit = RetryOptions {
        resubmit: true,
        ..plain
    };
    job.retry(&resubmit, now).unwrap();
    assert_eq!(
        (job.status, job.operation_name.clone()),
        (JobStatus::Pending, None)
    );
}

#[test]
fn held_outputs_wait_without_an_attempt_and_are_cleared_by_completion() {
    use super::values::{HeldOutput, STORAGE_UNAVAILABLE};
    let now = Timestamp::now();
    let mut job = calling(JobKind::Image, "w1", now);
    let held = vec![HeldOutput {
        key: "k".into(),
        name: format!("images/{}/0.png", job.id),
        content_type: "image/png".into(),
        size: 3,
        crc32c: crate::crc::Crc32c(7),
        chunks: 1,
    }];
    job.hold(
        "w1",
        held.clone(),
        JobError::new(STORAGE_UNAVAILABLE, "503", true),
        now,
    )
    .unwrap();
    assert_eq!(
        (
            job.status,
            job.attempts,
            job.waiting.as_deref(),
            job.calling.clone()
        ),
        (JobStatus::Pending, 0, Some(STORAGE_UNAVAILABLE), None)
    );
    assert_eq!(job.held, held);
    assert!(!job.will_pay(), "the next attempt writes what is held");
    job.claim(&lease("w2"), now).unwrap();
    job.complete("w2", vec!["gs://o/images/j/0.png".parse().unwrap()], now)
        .unwrap();
    assert!(job.held.is_empty());
}
