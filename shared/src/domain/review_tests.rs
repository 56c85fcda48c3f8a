//! The review loop's transitions and the promotion of an image to a video.

use super::TransitionError;
use super::job::{Job, NewJob, Retention};
use super::review::{Grounds, PromoteOptions, PromoteRefusal};
use super::values::{Chain, FirstFrame, Verdict};
use super::values::{FILTERED, JobError, JobKind, JobStatus};
use crate::time::Timestamp;

/// An image job in `status`; a completed or delivered one has `outputs`.
fn image_in(status: JobStatus, outputs: &[&str]) -> Job {
    let mut new = NewJob::new("slime stretched slowly", JobKind::Image);
    new.priority = 5;
    new.params.negative_prompt = Some("hands".into());
    let mut job = Job::new(new, Timestamp::now());
    job.force_state(status, outputs.iter().map(|o| o.parse().unwrap()).collect());
    job
}

fn finished_image() -> Job {
    image_in(JobStatus::Completed, &["gs://out/images/img/0.png"])
}

fn frame(uri: &str, mime: &str) -> FirstFrame {
    FirstFrame {
        gcs_uri: uri.into(),
        mime_type: mime.into(),
    }
}

fn refusal_text(result: super::Transition) -> String {
    match result {
        Err(TransitionError::ReviewLoop(text)) => text,
        other => panic!("expected a review-loop refusal, got {other:?}"),
    }
}

#[test]
fn a_completed_or_delivered_image_takes_a_verdict_and_a_second_one_replaces_it() {
    for status in [JobStatus::Completed, JobStatus::Delivered] {
        let mut job = image_in(status, &["gs://out/images/img/0.png"]);
        let now = Timestamp::now();
        job.review(Verdict::Approved, None, now).unwrap();
        assert_eq!(job.verdict(), Some(Verdict::Approved));
        let review = job.reviewed().unwrap();
        assert_eq!((review.reason.as_deref(), review.at), (None, now));

        job.review(Verdict::Rejected, Some("  too dark ".into()), now)
            .unwrap();
        assert_eq!(job.verdict(), Some(Verdict::Rejected));
        assert_eq!(job.reviewed().unwrap().reason.as_deref(), Some("too dark"));
        assert_eq!(job.status(), status, "a review moves no status");
    }
}

#[test]
fn only_a_finished_image_is_reviewed_and_the_refusal_says_why() {
    let mut video = Job::new(NewJob::new("a clip", JobKind::Video), Timestamp::now());
    let text = refusal_text(video.review(Verdict::Approved, None, Timestamp::now()));
    assert_eq!(
        text,
        format!(
            "job {} is a video; only images are approved or rejected",
            video.id()
        )
    );
    for status in [
        JobStatus::Pending,
        JobStatus::Processing,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ] {
        let mut job = image_in(status, &[]);
        let text = refusal_text(job.review(Verdict::Rejected, None, Timestamp::now()));
        assert_eq!(
            text,
            format!(
                "job {} is {status}; only a completed or delivered image can be reviewed",
                job.id()
            )
        );
        assert!(job.reviewed().is_none() && job.verdict().is_none());
    }
}

#[test]
fn adopting_the_same_child_twice_lists_it_once() {
    let mut image = finished_image();
    image.adopt_child("v1", Timestamp::now()).unwrap();
    image.adopt_child("v2", Timestamp::now()).unwrap();
    image.adopt_child("v1", Timestamp::now()).unwrap();
    assert_eq!(image.children(), ["v1", "v2"]);
}

#[test]
fn a_promotion_is_a_video_of_the_image_opening_on_its_first_output() {
    let image = finished_image();
    let options = PromoteOptions {
        params: vec!["aspect_ratio=9:16".into(), "generate_audio=false".into()],
        duration: Some(6),
        dry_run: Some(false),
        again: false,
        grounds: Grounds::Operator,
    };
    let video = image.promotion(&options).unwrap();
    assert_eq!(video.kind, JobKind::Video);
    assert_eq!(video.prompt, image.prompt());
    assert_eq!(video.parent.as_deref(), Some(image.id()));
    assert_eq!(
        video.first_frame,
        Some(frame("gs://out/images/img/0.png", "image/png"))
    );
    assert_eq!(video.params.negative_prompt.as_deref(), Some("hands"));
    assert_eq!(video.params.aspect_ratio.as_deref(), Some("9:16"));
    assert_eq!(video.params.generate_audio, Some(false));
    assert_eq!(video.params.duration_seconds, Some(6));
    assert_eq!((video.priority, video.dry_run), (5, false));
    assert_eq!(
        video.request_id,
        Some(format!("promote:{}", image.id())),
        "the same image promoted twice is one video"
    );
    let inherited = image.promotion(&PromoteOptions::default()).unwrap();
    assert!(inherited.dry_run, "unset, the image's own dry run");
}

#[test]
fn promoting_again_asks_for_the_next_video_of_the_image() {
    let mut image = finished_image();
    let again = PromoteOptions {
        again: true,
        ..PromoteOptions::default()
    };
    let first = format!("promote:{}", image.id());
    assert_eq!(image.promotion(&again).unwrap().request_id, Some(first));
    image.adopt_child("v1", Timestamp::now()).unwrap();
    assert_eq!(
        image.promotion(&again).unwrap().request_id,
        Some(format!("promote:{}:2", image.id()))
    );
    assert_eq!(
        image
            .promotion(&PromoteOptions::default())
            .unwrap()
            .request_id,
        Some(format!("promote:{}", image.id())),
        "without again, the first video again"
    );
}

#[test]
fn a_jpeg_image_opens_its_video_as_a_jpeg() {
    for uri in ["gs://out/images/img/0.jpg", "gs://out/images/img/0.JPEG"] {
        let image = image_in(JobStatus::Delivered, &[uri]);
        let video = image.promotion(&PromoteOptions::default()).unwrap();
        assert_eq!(video.first_frame, Some(frame(uri, "image/jpeg")));
    }
}

#[test]
fn an_image_that_cannot_be_promoted_is_refused_with_a_clear_reason() {
    let check = |job: Job, want: &str| {
        let refusal = job.promotion(&PromoteOptions::default()).unwrap_err();
        let text = refusal.to_string();
        assert!(text.contains(want), "{text:?} lacks {want:?}");
        assert!(text.contains(job.id()), "{text:?} names the job");
    };
    let video = Job::new(NewJob::new("a clip", JobKind::Video), Timestamp::now());
    check(video, "is a video; only an image is made into a video");
    check(
        image_in(JobStatus::Pending, &[]),
        "is pending; only a completed or delivered image",
    );
    let mut failed = image_in(JobStatus::Processing, &[]);
    failed
        .fail(
            None,
            JobError::new("boom", "x", false),
            Timestamp::now(),
            &Retention::default(),
        )
        .unwrap();
    check(failed, "is failed; only a completed or delivered image");
    let mut filtered = image_in(JobStatus::Failed, &[]);
    filtered.force_error(JobError::new(FILTERED, "withheld", false));
    check(filtered, "was stopped by the safety filters");
    check(
        image_in(JobStatus::Cancelled, &[]),
        "is cancelled; only a completed or delivered image",
    );
    check(image_in(JobStatus::Completed, &[]), "has no image");
    check(
        image_in(JobStatus::Completed, &["gs://out/images/img/0.webp"]),
        "is not a PNG or JPEG",
    );
}

#[test]
fn promotion_options_are_checked_like_the_cli_params() {
    let image = finished_image();
    let check = |options: PromoteOptions, want: &str| {
        match image.promotion(&options) {
            Err(PromoteRefusal::Invalid(e)) => {
                assert!(e.to_string().contains(want), "{e} lacks {want:?}")
            }
            other => panic!("{options:?}: {other:?}"),
        };
    };
    let with = |params: &[&str], duration| PromoteOptions {
        params: params.iter().map(|p| p.to_string()).collect(),
        duration,
        ..PromoteOptions::default()
    };
    check(with(&[], Some(5)), "5 seconds is not a Veo length");
    check(
        with(&["aspect_ratio"], None),
        "\"aspect_ratio\" is not key=value",
    );
    check(with(&["colour=red"], None), "unknown parameter \"colour\"");
    check(with(&["aspect_ratio=1:1"], None), "use one of 16:9, 9:16");
    check(with(&["duration_seconds=7"], None), "7 is not accepted");
}

#[test]
fn a_first_frame_goes_only_on_a_video_and_must_be_a_png_or_jpeg_in_a_bucket() {
    let video_with = |frame: FirstFrame| {
        let mut new = NewJob::new("a clip", JobKind::Video);
        new.first_frame = Some(frame);
        new.validate().map_err(|e| e.to_string())
    };
    assert_eq!(
        video_with(frame("gs://b/images/x/0.png", "image/png")),
        Ok(())
    );
    assert_eq!(video_with(frame("gs://b/x.jpg", "image/jpeg")), Ok(()));
    for (uri, mime, want) in [
        ("gs://b/", "image/png", "is not gs://bucket/object"),
        ("gs:///x.png", "image/png", "is not gs://bucket/object"),
        ("/tmp/x.png", "image/png", "is not gs://bucket/object"),
        (
            "gs://b/x.gif",
            "image/gif",
            "Veo takes image/png or image/jpeg",
        ),
    ] {
        let got = video_with(frame(uri, mime)).unwrap_err();
        assert!(got.contains(want), "{uri}: {got:?} lacks {want:?}");
    }
    let mut image = NewJob::new("a still", JobKind::Image);
    image.first_frame = Some(frame("gs://b/x.png", "image/png"));
    assert_eq!(
        image.validate().unwrap_err().to_string(),
        "first_frame: applies to video jobs only"
    );
    let mut chained = NewJob::new("a clip", JobKind::Video);
    chained.chain = Some(Chain::Video);
    assert!(
        chained
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("chain:")
    );
}

#[test]
fn old_documents_read_unchanged_and_new_fields_are_written_only_when_set() {
    let plain = Job::new(NewJob::new("rain", JobKind::Image), Timestamp::now());
    let doc = serde_json::to_value(&plain).unwrap();
    for field in [
        "parent",
        "children",
        "review",
        "verdict",
        "chain",
        "first_frame",
    ] {
        assert!(
            doc.get(field).is_none(),
            "{field} is not written when unset"
        );
    }
    let read: Job = serde_json::from_value(doc).unwrap();
    assert_eq!(read, plain);

    let mut image = finished_image();
    image
        .review(Verdict::Approved, Some("lovely".into()), Timestamp::now())
        .unwrap();
    image.adopt_child("v1", Timestamp::now()).unwrap();
    let doc = serde_json::to_value(&image).unwrap();
    assert_eq!(doc["verdict"], "approved");
    assert_eq!(doc["review"]["verdict"], "approved");
    assert_eq!(doc["children"], serde_json::json!(["v1"]));
    assert_eq!(serde_json::from_value::<Job>(doc).unwrap(), image);

    let mut new = NewJob::new("rain", JobKind::Image);
    new.chain = Some(Chain::Video);
    let chained = serde_json::to_value(Job::new(new, Timestamp::now())).unwrap();
    assert_eq!(chained["chain"], "video");
}

#[test]
fn a_promotion_needs_the_grounds_the_stored_image_gives() {
    let now = Timestamp::now();
    let with = |grounds| PromoteOptions {
        grounds,
        ..PromoteOptions::default()
    };
    let unreviewed = finished_image();
    let mut approved = finished_image();
    approved.review(Verdict::Approved, None, now).unwrap();
    let mut rejected = approved.clone();
    rejected.review(Verdict::Rejected, None, now).unwrap();
    let chained = |status| {
        let mut new = NewJob::new("rain on glass", JobKind::Image);
        new.chain = Some(Chain::Video);
        let mut job = Job::new(new, now);
        job.force_state(status, vec!["gs://out/images/c/0.png".parse().unwrap()]);
        job
    };
    let delivered = chained(JobStatus::Delivered);
    let completed = chained(JobStatus::Completed);

    // (image, grounds, made?, what a refusal says)
    let cases = [
        (&unreviewed, Grounds::Operator, true, ""),
        (&rejected, Grounds::Operator, true, ""),
        (&approved, Grounds::Approved, true, ""),
        (
            &unreviewed,
            Grounds::Approved,
            false,
            "it is not reviewed, not approved",
        ),
        (
            &rejected,
            Grounds::Approved,
            false,
            "it is rejected, not approved",
        ),
        (&delivered, Grounds::Approved, false, "not approved"),
        (&approved, Grounds::ApprovedOrChained, true, ""),
        (&delivered, Grounds::ApprovedOrChained, true, ""),
        (
            &completed,
            Grounds::ApprovedOrChained,
            false,
            "completed, not yet delivered",
        ),
        (
            &rejected,
            Grounds::ApprovedOrChained,
            false,
            "was not created with \"chain\": \"video\"",
        ),
    ];
    for (image, grounds, made, says) in cases {
        match image.promotion(&with(grounds)) {
            Ok(_) => assert!(made, "{grounds:?} on {:?}", image.verdict()),
            Err(PromoteRefusal::NoGrounds { id, why }) => {
                assert!(!made, "{grounds:?} refused: {why}");
                assert_eq!(id, image.id());
                assert!(why.contains(says), "{why:?} lacks {says:?}");
            }
            Err(other) => panic!("{grounds:?}: {other}"),
        }
    }
}

#[test]
fn a_review_reason_is_capped_like_a_prompt() {
    use super::validate::{MAX_REASON_CHARS, review_reason};
    let check = |reason: Option<&str>, want: Result<Option<&str>, &str>| {
        let got = review_reason(reason.map(str::to_string));
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got.as_deref(), want),
            (Err(e), Err(says)) => {
                assert_eq!(e.field, "reason");
                assert!(e.message.contains(says), "{e}");
            }
            (got, want) => panic!("{reason:?}: {got:?}, want {want:?}"),
        }
    };
    check(None, Ok(None));
    check(Some("  "), Ok(None));
    check(Some(" too dark \n"), Ok(Some("too dark")));
    let longest = "é".repeat(MAX_REASON_CHARS);
    check(Some(&longest), Ok(Some(&longest)));
    let over = "x".repeat(MAX_REASON_CHARS + 1);
    check(Some(&over), Err("the limit is 2000"));
    check(Some("bell\u{7}"), Err("control character U+0007"));
}
