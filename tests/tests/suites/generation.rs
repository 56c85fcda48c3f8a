//! The generation stages against the fake Vertex server: the image and video
//! generators as push services and drains, and the video poller. Each test
//! runs on the local world (embedded store, directory buckets) and, with the
//! `emulators` feature, on the emulator world (Firestore, fake-gcs-server).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::future::join_all;
use shared::domain::job::Job;
use shared::domain::review::PromoteOptions;
use shared::domain::values::TIMED_OUT;
use shared::domain::values::{FILTERED, JobKind, JobStatus, QUOTA_EXHAUSTED, SUBMIT_UNKNOWN};
use shared::domain::values::{FIRST_FRAME_MISSING, Verdict};
use shared::generate::images::ImageGenerator;
use shared::generate::poller::VideoPoller;
use shared::generate::service::router;
use shared::generate::videos::VideoGenerator;
use shared::generate::{GeneratorSettings, drain};
use shared::objects::{JOB_ID_METADATA, ReadRange};
use shared::stage::DrainLimits;
use shared::store::budget::budget_day_of;
use shared::time::Timestamp;
use shared::vertex::client::VertexClient;
use shared::vertex::{DEFAULT_IMAGE_MODEL, DEFAULT_VIDEO_MODEL};
use std::sync::Arc;
use std::time::Duration;
use tests::fake_vertex::{FakeOptions, ReceivedFrame, Verb};
use tests::stages::{World, post_raw, push, serve};

fn settings(world: &World, model: &str, dry_run: bool) -> GeneratorSettings {
    GeneratorSettings {
        output_bucket: world.bucket.clone(),
        default_model: model.into(),
        dry_run,
        lease_ttl: Duration::from_secs(600),
        operation_timeout: Duration::from_secs(1800),
        retry: world.fake.config().retry,
    }
}

fn images(world: &World, dry_run: bool) -> ImageGenerator {
    ImageGenerator::new(
        world.store.clone(),
        world.objects.clone(),
        Arc::new(VertexClient::new(world.fake.config()).unwrap()),
        settings(world, DEFAULT_IMAGE_MODEL, dry_run),
    )
}

fn videos(world: &World, dry_run: bool) -> VideoGenerator {
    VideoGenerator::new(
        world.store.clone(),
        world.objects.clone(),
        Arc::new(VertexClient::new(world.fake.config()).unwrap()),
        settings(world, DEFAULT_VIDEO_MODEL, dry_run),
    )
}

fn poller(world: &World, operation_timeout: Duration) -> VideoPoller {
    world.poller(operation_timeout)
}

/// The outputs as the text records carry.
fn texts(uris: &[shared::domain::gs_uri::GsUri]) -> Vec<String> {
    uris.iter().map(ToString::to_string).collect()
}

async fn job(world: &World, id: &str) -> Job {
    world.store.job(id).await.unwrap()
}

async fn read_all(world: &World, uri: &shared::domain::gs_uri::GsUri) -> Vec<u8> {
    use futures::StreamExt;
    let mut stream = world
        .objects
        .read(&uri.bucket, &uri.name, ReadRange::ALL)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    bytes
}

// ---- images ----

async fn an_imagen_job_is_generated_and_written_to_the_bucket(world: World) {
    let url = serve(router(Arc::new(images(&world, false)))).await;
    let id = world
        .job(
            "soap cubes crumbling",
            JobKind::Image,
            &[("model", "imagen-4.0-generate-001"), ("sample_count", "2")],
        )
        .await;
    assert_eq!(push(&url, &id, "m1").await, 200);
    let done = job(&world, &id).await;
    assert_eq!(done.status(), JobStatus::Completed, "{:?}", done.error());
    let expected: Vec<String> = (0..2)
        .map(|n| format!("gs://{}/images/{id}/{n}.png", world.bucket))
        .collect();
    assert_eq!(texts(done.outputs()), expected);
    for uri in done.outputs() {
        let name = uri.name.as_str();
        let meta = world
            .objects
            .metadata(&world.bucket, name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(meta.metadata.get(JOB_ID_METADATA), Some(&id));
        assert_eq!(meta.content_type, "image/png");
        assert!(read_all(&world, uri).await.starts_with(b"\x89PNG"));
    }
    assert_eq!(world.fake.calls(Verb::Predict), 1);
    let body = world.fake.last_body(Verb::Predict).unwrap();
    assert_eq!(body["parameters"]["sampleCount"], 2);
}

async fn a_gemini_job_makes_one_call_per_sample(world: World) {
    let url = serve(router(Arc::new(images(&world, false)))).await;
    let id = world
        .job(
            "rain on leaves",
            JobKind::Image,
            &[("sample_count", "3"), ("aspect_ratio", "21:9")],
        )
        .await;
    assert_eq!(push(&url, &id, "m1").await, 200);
    let done = job(&world, &id).await;
    assert_eq!(
        (done.status(), done.outputs().len()),
        (JobStatus::Completed, 3)
    );
    assert_eq!(world.fake.calls(Verb::GenerateContent), 3);
    assert_eq!(world.fake.calls(Verb::Predict), 0);
}

async fn a_quota_429_is_retried_within_the_call(world: World) {
    let url = serve(router(Arc::new(images(&world, false)))).await;
    let id = world.job("whispering", JobKind::Image, &[]).await;
    world.fake.fail_next(1, 429);
    assert_eq!(push(&url, &id, "m1").await, 200);
    let done = job(&world, &id).await;
    assert_eq!((done.status(), done.attempts()), (JobStatus::Completed, 1));
    assert_eq!(world.fake.calls(Verb::GenerateContent), 2);
}

async fn a_quota_that_outlasts_quota_wait_puts_the_job_back_to_wait_without_an_attempt(
    world: World,
) {
    let url = serve(router(Arc::new(images(&world, false)))).await;
    let id = world.job("tapping", JobKind::Image, &[]).await;
    // More 429s than the call can meet in QUOTA_WAIT (100 ms, probing
    // every millisecond), delivery after delivery: more deliveries than
    // the job has attempts.
    world.fake.fail_next(1_000_000, 429);
    for delivery in 0..6 {
        assert_eq!(
            push(&url, &id, &format!("m{delivery}")).await,
            429,
            "Pub/Sub should redeliver later"
        );
        let back = job(&world, &id).await;
        assert_eq!(
            (back.status(), back.attempts(), back.waiting()),
            (JobStatus::Pending, 0, Some(QUOTA_EXHAUSTED)),
            "waiting on quota is not an attempt"
        );
        let error = back.error().unwrap();
        assert_eq!(error.code, "rate_limited");
        assert!(error.message.contains("QUOTA_WAIT"), "{}", error.message);
    }
    world.fake.clear_faults();
    let tries = world.fake.calls(Verb::GenerateContent);
    assert!(
        (6..=6 * 150).contains(&tries),
        "one try, then about one probe per millisecond, per delivery: {tries}"
    );
    assert_eq!(push(&url, &id, "m-last").await, 200);
    let done = job(&world, &id).await;
    assert_eq!(
        (done.status(), done.attempts(), done.waiting()),
        (JobStatus::Completed, 1, None)
    );
}

async fn a_blocked_prompt_fails_for_good_with_googles_message(world: World) {
    let url = serve(router(Arc::new(images(&world, false)))).await;
    let id = world.job("[blocked] something", JobKind::Image, &[]).await;
    assert_eq!(push(&url, &id, "m1").await, 200);
    let failed = job(&world, &id).await;
    assert_eq!(failed.status(), JobStatus::Failed);
    let error = failed.error().unwrap();
    assert_eq!(error.code, "invalid_argument");
    assert!(
        error.message.contains("Support codes: 61493863"),
        "{}",
        error.message
    );
    assert!(!error.retryable);
    assert_eq!(
        push(&url, &id, "m2").await,
        200,
        "a redelivery is acknowledged"
    );
    assert_eq!(world.fake.total_calls(), 1, "and calls nothing");
}

async fn a_filtered_image_fails_as_filtered_and_is_never_resubmitted(world: World) {
    let url = serve(router(Arc::new(images(&world, false)))).await;
    for model in ["imagen-4.0-generate-001", DEFAULT_IMAGE_MODEL] {
        let id = world
            .job(
                &format!("[filtered] {model}"),
                JobKind::Image,
                &[("model", model)],
            )
            .await;
        assert_eq!(push(&url, &id, "m1").await, 200);
        let failed = job(&world, &id).await;
        assert_eq!(failed.status(), JobStatus::Failed, "{model}");
        assert_eq!(failed.error().unwrap().code, FILTERED, "{model}");
        let err = world
            .store
            .retry_job(&id, Default::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("safety filters"), "{err}");
    }
    assert_eq!(world.fake.total_calls(), 2);
}

async fn the_same_push_three_times_at_once_calls_the_model_once(world: World) {
    let url = serve(router(Arc::new(images(&world, false)))).await;
    let id = world.job("crinkling foil", JobKind::Image, &[]).await;
    world.fake.set_latency(Duration::from_millis(300));
    let statuses = join_all((0..3).map(|_| push(&url, &id, "same-message"))).await;
    assert_eq!(statuses, vec![200, 200, 200]);
    assert_eq!(world.fake.calls_for_prompt("crinkling foil"), 1);
    assert_eq!(job(&world, &id).await.status(), JobStatus::Completed);
}

async fn two_drains_and_the_service_generate_thirty_jobs_once_each(world: World) {
    let generator = Arc::new(images(&world, false));
    let url = serve(router(generator.clone())).await;
    world.fake.set_latency(Duration::from_millis(20));
    let ids =
        join_all((0..30).map(|n| world.job(format!("brush stroke {n}"), JobKind::Image, &[])))
            .await;
    let drains = (0..2).map(|_| {
        let generator = generator.clone();
        tokio::spawn(async move {
            drain(generator.as_ref(), DrainLimits::default())
                .await
                .unwrap()
        })
    });
    let pushes = join_all(ids.iter().map(|id| push(&url, id, id)));
    let (reports, statuses) = futures::join!(join_all(drains), pushes);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let drained: u64 = reports.into_iter().map(|r| r.unwrap().processed).sum();
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(job(&world, id).await.status(), JobStatus::Completed);
        assert_eq!(
            world.fake.calls_for_prompt(&format!("brush stroke {n}")),
            1,
            "job {n}"
        );
    }
    assert_eq!(world.fake.calls(Verb::GenerateContent), 30);
    eprintln!("drains took {drained} of 30 jobs; the service the rest");
}

async fn poison_and_misdirected_pushes_are_acknowledged_without_a_call(world: World) {
    let url = serve(router(Arc::new(images(&world, false)))).await;
    let video = world.job("a video", JobKind::Video, &[]).await;
    let cases = [
        String::new(),
        "{".into(),
        r#"{"message": {"messageId": "1", "data": "bm90IGpzb24="}}"#.into(),
        tests::stages::push_body("no-such-job", "2"),
        tests::stages::push_body(&video, "3"),
        tests::stages::push_body("../etc", "4"),
    ];
    for body in cases {
        assert_eq!(post_raw(&url, body.clone()).await, 200, "{body}");
    }
    assert_eq!(
        job(&world, &video).await.status(),
        JobStatus::Pending,
        "not touched by the image generator"
    );
    assert_eq!(world.fake.total_calls(), 0);
}

async fn dry_run_writes_a_real_png_and_a_real_mp4_without_a_call(world: World) {
    let image_url = serve(router(Arc::new(images(&world, true)))).await;
    let video_url = serve(router(Arc::new(videos(&world, true)))).await;
    let image = world
        .job("sand", JobKind::Image, &[("aspect_ratio", "16:9")])
        .await;
    let video = world
        .job(
            "waves",
            JobKind::Video,
            &[("sample_count", "2"), ("aspect_ratio", "9:16")],
        )
        .await;
    assert_eq!(push(&image_url, &image, "1").await, 200);
    assert_eq!(push(&video_url, &video, "2").await, 200);

    let image = job(&world, &image).await;
    assert_eq!(image.status(), JobStatus::Completed);
    let png = read_all(&world, &image.outputs()[0]).await;
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (1408, 768));

    let video = job(&world, &video).await;
    assert_eq!(
        video.status(),
        JobStatus::Completed,
        "dry-run videos complete at once"
    );
    assert_eq!(video.outputs().len(), 2);
    for (n, uri) in video.outputs().iter().enumerate() {
        let prefix = format!("gs://{}/videos/{}/", world.bucket, video.id());
        let text = uri.to_string();
        let rest = text.strip_prefix(&prefix).unwrap();
        let (folder, file) = rest.split_once('/').unwrap();
        assert!(
            folder.chars().all(|c| c.is_ascii_digit()),
            "timestamped folder: {folder}"
        );
        assert_eq!(file, format!("sample_{n}.mp4"));
        let mp4 = read_all(&world, uri).await;
        assert_eq!(top_level_boxes(&mp4)[0], "ftyp");
        assert!(top_level_boxes(&mp4).contains(&"moov".to_string()));
        assert!(top_level_boxes(&mp4).contains(&"mdat".to_string()));
    }
    assert_eq!(world.fake.total_calls(), 0);
}

/// The top-level box types of an MP4; panics unless the boxes tile the file.
fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut at = 0usize;
    let mut types = Vec::new();
    while at < bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).to_string();
        let size = if size == 1 {
            u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()) as usize
        } else {
            size
        };
        assert!(
            size >= 8 && at + size <= bytes.len(),
            "box {kind} at {at} overruns"
        );
        types.push(kind);
        at += size;
    }
    assert_eq!(at, bytes.len());
    types
}

// ---- videos ----

async fn a_video_is_submitted_then_finished_by_the_poller(world: World) {
    let url = serve(router(Arc::new(videos(&world, false)))).await;
    let id = world
        .job(
            "slow honey drip",
            JobKind::Video,
            &[("duration_seconds", "6"), ("sample_count", "2")],
        )
        .await;
    assert_eq!(push(&url, &id, "m1").await, 200);
    let generating = job(&world, &id).await;
    assert_eq!(generating.status(), JobStatus::Generating);
    assert!(
        generating
            .operation_name()
            .unwrap()
            .contains("/operations/")
    );
    let body = world.fake.last_body(Verb::PredictLongRunning).unwrap();
    assert_eq!(
        body["parameters"]["storageUri"],
        format!("gs://{}/videos/{id}/", world.bucket)
    );
    assert_eq!(body["parameters"]["durationSeconds"], 6);

    let report = poller(&world, Duration::from_secs(1800))
        .run()
        .await
        .unwrap();
    assert_eq!((report.completed, report.running), (1, 0));
    let done = job(&world, &id).await;
    assert_eq!(done.status(), JobStatus::Completed);
    assert_eq!(done.outputs().len(), 2);
    for uri in done.outputs() {
        assert!(
            uri.to_string()
                .starts_with(&format!("gs://{}/videos/{id}/", world.bucket)),
            "{uri}"
        );
        assert!(!read_all(&world, uri).await.is_empty(), "Veo wrote {uri}");
    }
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 1);
}

async fn filtered_failed_and_endless_operations_end_as_they_should(world: World) {
    let url = serve(router(Arc::new(videos(&world, false)))).await;
    let filtered = world.job("[filtered] clip", JobKind::Video, &[]).await;
    let failing = world.job("[op-fails] clip", JobKind::Video, &[]).await;
    let endless = world.job("[never-done] clip", JobKind::Video, &[]).await;
    for id in [&filtered, &failing, &endless] {
        assert_eq!(push(&url, id, id).await, 200);
    }
    // The first round sees nothing past its time-out; shrink it to zero to end the endless one.
    let report = poller(&world, Duration::ZERO).run().await.unwrap();
    assert_eq!(
        (
            report.filtered,
            report.failed,
            report.timed_out,
            report.running
        ),
        (1, 1, 1, 0)
    );
    let code = |job: Job| job.error().map(|e| e.code.clone()).unwrap_or_default();
    assert_eq!(code(job(&world, &filtered).await), FILTERED);
    assert_eq!(code(job(&world, &failing).await), "operation_failed");
    assert_eq!(code(job(&world, &endless).await), TIMED_OUT);
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 3);
}

async fn an_unknown_submit_is_never_sent_again_and_its_video_completes_the_job(world: World) {
    let url = serve(router(Arc::new(videos(&world, false)))).await;
    let id = world.job("creaking door", JobKind::Video, &[]).await;
    world.fake.slow_next(1, Duration::from_secs(8));
    assert_eq!(push(&url, &id, "m1").await, 200, "nothing to redeliver");
    let waiting = job(&world, &id).await;
    assert!(waiting.awaits_output(), "{waiting:?}");
    assert_eq!(waiting.attempts(), 1);
    assert_eq!(waiting.error().unwrap().code, SUBMIT_UNKNOWN);
    // A redelivery sends nothing.
    assert_eq!(push(&url, &id, "m2").await, 200);
    assert_eq!(
        world.fake.calls(Verb::PredictLongRunning),
        1,
        "never sent again, within the call or across deliveries"
    );
    // Still nothing under its prefix: the poller keeps waiting.
    let report = poller(&world, Duration::from_secs(1800))
        .round()
        .await
        .unwrap();
    assert_eq!((report.running, report.completed), (1, 0));
    // The lost submit did start: Veo writes under the job's prefix, and the
    // poller completes the job with it.
    let object = format!("videos/{id}/20261203120000/sample_0.mp4");
    world
        .objects
        .write(
            &world.bucket,
            &object,
            shared::placeholder::mp4("late", None),
            "video/mp4",
            &Default::default(),
        )
        .await
        .unwrap();
    let report = poller(&world, Duration::from_secs(1800))
        .round()
        .await
        .unwrap();
    assert_eq!(report.completed, 1);
    let done = job(&world, &id).await;
    assert_eq!(
        (done.status(), done.outputs().to_vec()),
        (
            JobStatus::Completed,
            vec![format!("gs://{}/{object}", world.bucket).parse().unwrap()]
        )
    );
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 1);
}

async fn an_unknown_submit_whose_video_never_comes_fails_after_the_operation_timeout(world: World) {
    let url = serve(router(Arc::new(videos(&world, false)))).await;
    let id = world
        .job("a door that never creaks", JobKind::Video, &[])
        .await;
    world.fake.slow_next(1, Duration::from_secs(8));
    assert_eq!(push(&url, &id, "m1").await, 200);
    poller(&world, Duration::from_millis(50))
        .run()
        .await
        .unwrap();
    let failed = job(&world, &id).await;
    assert_eq!(failed.status(), JobStatus::Failed);
    let error = failed.error().unwrap();
    assert_eq!(error.code, SUBMIT_UNKNOWN);
    assert!(error.message.contains("--resubmit"), "{}", error.message);
    // Only an operator pays again.
    assert!(
        world
            .store
            .retry_job(&id, Default::default())
            .await
            .is_err()
    );
    let resubmit = shared::domain::values::RetryOptions {
        resubmit: true,
        ..Default::default()
    };
    world.store.retry_job(&id, resubmit).await.unwrap();
    assert_eq!(push(&url, &id, "m2").await, 200);
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 2);
    assert_eq!(job(&world, &id).await.status(), JobStatus::Generating);
}

async fn a_requeued_generating_job_resumes_its_operation_instead_of_paying_again(world: World) {
    let url = serve(router(Arc::new(videos(&world, false)))).await;
    let id = world.job("pages turning", JobKind::Video, &[]).await;
    assert_eq!(push(&url, &id, "m1").await, 200);
    let operation = job(&world, &id).await.operation_name().map(str::to_string);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reset = world
        .store
        .reset_stuck_jobs(Duration::from_millis(5))
        .await
        .unwrap();
    assert_eq!(reset.requeued.len(), 1);
    assert_eq!(push(&url, &id, "m2").await, 200);
    let resumed = job(&world, &id).await;
    assert_eq!(
        (
            resumed.status(),
            resumed.operation_name().map(str::to_string)
        ),
        (JobStatus::Generating, operation)
    );
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 1);
    poller(&world, Duration::from_secs(1800))
        .run()
        .await
        .unwrap();
    assert_eq!(job(&world, &id).await.status(), JobStatus::Completed);
}

// ---- promoted videos (image-to-video) ----

/// A live image made by the image generator, approved, and promoted to a
/// live video: the video's id.
async fn promoted_video(world: &World) -> (String, String) {
    let url = serve(router(Arc::new(images(world, false)))).await;
    let image = world.job("bubble wrap popping", JobKind::Image, &[]).await;
    assert_eq!(push(&url, &image, "image").await, 200);
    world
        .store
        .review_job(&image, Verdict::Approved, None)
        .await
        .unwrap();
    let options = PromoteOptions {
        dry_run: Some(false),
        ..PromoteOptions::default()
    };
    let promoted = world.store.promote(&image, &options).await.unwrap();
    (image, promoted.video.id().to_string())
}

async fn a_promoted_video_sends_its_image_to_veo_as_the_first_frame(world: World) {
    let (image, video) = promoted_video(&world).await;
    let url = serve(router(Arc::new(videos(&world, false)))).await;
    assert_eq!(push(&url, &video, "video").await, 200);
    assert_eq!(job(&world, &video).await.status(), JobStatus::Generating);
    let frame = format!("gs://{}/images/{image}/0.png", world.bucket);
    assert_eq!(
        world.fake.first_frames(),
        [ReceivedFrame {
            gcs_uri: frame,
            mime_type: "image/png".into(),
        }]
    );
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 1);
}

async fn a_missing_first_frame_fails_the_video_before_anything_is_paid(world: World) {
    let (image, video) = promoted_video(&world).await;
    let before = money(&world).await;
    let name = format!("images/{image}/0.png");
    assert!(world.objects.delete(&world.bucket, &name).await.unwrap());
    let url = serve(router(Arc::new(videos(&world, false)))).await;
    assert_eq!(
        push(&url, &video, "video").await,
        200,
        "nothing to redeliver"
    );
    let failed = job(&world, &video).await;
    assert_eq!(failed.status(), JobStatus::Failed);
    let error = failed.error().unwrap();
    assert_eq!(error.code, FIRST_FRAME_MISSING);
    assert!(
        error
            .message
            .contains(&format!("gs://{}/{name}", world.bucket)),
        "{}",
        error.message
    );
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 0, "no submit");
    assert!(
        failed.reservation().is_none(),
        "the reservation is released"
    );
    assert_eq!(
        money(&world).await,
        before,
        "nothing left reserved, nothing spent on the video"
    );
}

/// Reserved and spent today, in micro-dollars.
async fn money(world: &World) -> (u64, u64) {
    let today = budget_day_of(Timestamp::now());
    let day = world.store.budget_day(&today).await.unwrap();
    (day.reserved_micros, day.spent_micros)
}

async fn a_dry_run_of_a_promoted_video_checks_its_frame_and_labels_the_clip_with_it(world: World) {
    let (image, video) = promoted_video(&world).await;
    let url = serve(router(Arc::new(videos(&world, true)))).await;
    assert_eq!(push(&url, &video, "video").await, 200);
    let done = job(&world, &video).await;
    assert_eq!(done.status(), JobStatus::Completed);
    let clip = read_all(&world, &done.outputs()[0]).await;
    let frame = format!("gs://{}/images/{image}/0.png", world.bucket);
    let label = format!("{video} from {frame} sample 0");
    assert!(
        clip.windows(label.len()).any(|w| w == label.as_bytes()),
        "the clip is labelled from its first frame"
    );
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 0);

    // A second promotion whose frame is gone fails even in a dry run.
    let again = PromoteOptions {
        again: true,
        ..PromoteOptions::default()
    };
    let second = world.store.promote(&image, &again).await.unwrap().video;
    let name = format!("images/{image}/0.png");
    world.objects.delete(&world.bucket, &name).await.unwrap();
    assert_eq!(push(&url, second.id(), "second").await, 200);
    let failed = job(&world, second.id()).await;
    assert_eq!(
        (failed.status(), failed.error().map(|e| e.code.as_str())),
        (JobStatus::Failed, Some(FIRST_FRAME_MISSING))
    );
}

macro_rules! scenarios {
    ($world:ident, $make:path) => {
        mod $world {
            use super::*;

            async fn world() -> World {
                $make(FakeOptions::default()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_imagen_job_is_generated_and_written_to_the_bucket() {
                super::an_imagen_job_is_generated_and_written_to_the_bucket(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_gemini_job_makes_one_call_per_sample() {
                super::a_gemini_job_makes_one_call_per_sample(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_quota_429_is_retried_within_the_call() {
                super::a_quota_429_is_retried_within_the_call(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_quota_that_outlasts_quota_wait_puts_the_job_back_to_wait_without_an_attempt() {
                super::a_quota_that_outlasts_quota_wait_puts_the_job_back_to_wait_without_an_attempt(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_blocked_prompt_fails_for_good_with_googles_message() {
                super::a_blocked_prompt_fails_for_good_with_googles_message(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_filtered_image_fails_as_filtered_and_is_never_resubmitted() {
                super::a_filtered_image_fails_as_filtered_and_is_never_resubmitted(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_same_push_three_times_at_once_calls_the_model_once() {
                super::the_same_push_three_times_at_once_calls_the_model_once(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn two_drains_and_the_service_generate_thirty_jobs_once_each() {
                super::two_drains_and_the_service_generate_thirty_jobs_once_each(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn poison_and_misdirected_pushes_are_acknowledged_without_a_call() {
                super::poison_and_misdirected_pushes_are_acknowledged_without_a_call(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dry_run_writes_a_real_png_and_a_real_mp4_without_a_call() {
                super::dry_run_writes_a_real_png_and_a_real_mp4_without_a_call(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_video_is_submitted_then_finished_by_the_poller() {
                super::a_video_is_submitted_then_finished_by_the_poller(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn filtered_failed_and_endless_operations_end_as_they_should() {
                super::filtered_failed_and_endless_operations_end_as_they_should(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_unknown_submit_is_never_sent_again_and_its_video_completes_the_job() {
                super::an_unknown_submit_is_never_sent_again_and_its_video_completes_the_job(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_unknown_submit_whose_video_never_comes_fails_after_the_operation_timeout() {
                super::an_unknown_submit_whose_video_never_comes_fails_after_the_operation_timeout(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_requeued_generating_job_resumes_its_operation_instead_of_paying_again() {
                super::a_requeued_generating_job_resumes_its_operation_instead_of_paying_again(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_promoted_video_sends_its_image_to_veo_as_the_first_frame() {
                super::a_promoted_video_sends_its_image_to_veo_as_the_first_frame(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_missing_first_frame_fails_the_video_before_anything_is_paid() {
                super::a_missing_first_frame_fails_the_video_before_anything_is_paid(world().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_dry_run_of_a_promoted_video_checks_its_frame_and_labels_the_clip_with_it() {
                super::a_dry_run_of_a_promoted_video_checks_its_frame_and_labels_the_clip_with_it(world().await).await
            }
        }
    };
}

scenarios!(local, tests::stages::local);
#[cfg(feature = "emulators")]
scenarios!(emulators, tests::stages::emulators);
