//! The cost guard against the fake Vertex server: with a daily budget for N
//! paid calls exactly N reach the model and the rest wait as pending
//! (`budget_exhausted`) until the budget allows them; refusals and filtered
//! outputs release what they reserved. Each scenario runs on the local world
//! and, with the `emulators` feature, on the emulator world; the last one
//! runs the `image-generator` and `asmr` binaries with their environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::future::join_all;
use shared::cost::CostGuard;
use shared::domain::job::Job;
use shared::domain::values::{BUDGET_EXHAUSTED, FILTERED, JobKind, JobStatus};
use shared::generate::images::ImageGenerator;
use shared::generate::poller::VideoPoller;
use shared::generate::service::router;
use shared::generate::videos::VideoGenerator;
use shared::generate::{GeneratorSettings, drain};
use shared::stage::DrainLimits;
use shared::store::budget::{BudgetDay, budget_day_of};
use shared::time::Timestamp;
use shared::vertex::client::VertexClient;
use shared::vertex::{DEFAULT_IMAGE_MODEL, DEFAULT_VIDEO_MODEL};
use std::sync::Arc;
use std::time::Duration;
use tests::fake_vertex::{FakeOptions, Verb};
use tests::stages::{World, push, serve};

/// Gemini 2.5 Flash Image, the default image model: $0.039 an image.
const IMAGE: u64 = 39_000;
/// Veo 3.1, the default video model: 8 s with audio at $0.40 a second.
const VIDEO: u64 = 3_200_000;

fn settings(world: &World, model: &str) -> GeneratorSettings {
    GeneratorSettings {
        output_bucket: world.bucket.clone(),
        default_model: model.into(),
        dry_run: false,
        lease_ttl: Duration::from_secs(600),
        operation_timeout: Duration::from_secs(1800),
        retry: world.fake.config().retry,
    }
}

fn guard(budget_micros: Option<u64>) -> CostGuard {
    CostGuard {
        budget_micros,
        ..CostGuard::default()
    }
}

fn images(world: &World, budget_micros: Option<u64>) -> ImageGenerator {
    ImageGenerator::new(
        world.store.clone(),
        world.objects.clone(),
        Arc::new(VertexClient::new(world.fake.config()).unwrap()),
        settings(world, DEFAULT_IMAGE_MODEL),
    )
    .with_cost_guard(guard(budget_micros))
}

fn videos(world: &World, budget_micros: Option<u64>) -> VideoGenerator {
    VideoGenerator::new(
        world.store.clone(),
        world.objects.clone(),
        Arc::new(VertexClient::new(world.fake.config()).unwrap()),
        settings(world, DEFAULT_VIDEO_MODEL),
    )
    .with_cost_guard(guard(budget_micros))
}

fn poller(world: &World) -> VideoPoller {
    world.poller(Duration::from_secs(1800))
}

async fn job(world: &World, id: &str) -> Job {
    world.store.job(id).await.unwrap()
}

async fn today(world: &World) -> BudgetDay {
    world
        .store
        .budget_day(&budget_day_of(Timestamp::now()))
        .await
        .unwrap()
}

/// Reserved and spent today, in micro-dollars.
async fn money(world: &World) -> (u64, u64) {
    let day = today(world).await;
    (day.reserved_micros, day.spent_micros)
}

// ---- scenarios ----

async fn a_budget_for_n_image_calls_makes_exactly_n_and_the_rest_wait(world: World) {
    const N: usize = 3;
    let budget = N as u64 * IMAGE;
    let url = serve(router(Arc::new(images(&world, Some(budget))))).await;
    let ids =
        join_all((0..2 * N).map(|i| world.job(format!("rain {i}"), JobKind::Image, &[]))).await;

    // Every push at once, and each acknowledged: a job over budget is not
    // redelivered by Pub/Sub (it would end in the dead-letter topic).
    let statuses = join_all(ids.iter().map(|id| push(&url, id, id))).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    assert_eq!(world.fake.calls(Verb::GenerateContent), N, "paid calls");
    let jobs = join_all(ids.iter().map(|id| job(&world, id))).await;
    let completed: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.status() == JobStatus::Completed)
        .collect();
    let waiting: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.status() == JobStatus::Pending)
        .collect();
    assert_eq!((completed.len(), waiting.len()), (N, N));
    for j in &waiting {
        assert_eq!(
            (j.waiting(), j.attempts(), j.reservation()),
            (Some(BUDGET_EXHAUSTED), 0, None),
            "{}",
            j.id()
        );
    }
    for j in &completed {
        assert_eq!((j.waiting(), j.reservation()), (None, None));
    }
    assert_eq!(money(&world).await, (0, budget), "spent exactly the budget");
    assert_eq!(today(&world).await.limit_micros, Some(budget));
    assert_eq!(
        world.store.jobs_waiting_on_budget().await.unwrap(),
        N as u64
    );

    // A redelivery while the budget is spent calls nothing.
    assert_eq!(push(&url, waiting[0].id(), "again").await, 200);
    assert_eq!(world.fake.calls(Verb::GenerateContent), N);
    let report = drain(&images(&world, Some(budget)), DrainLimits::default())
        .await
        .unwrap();
    assert_eq!(report.processed, 0, "a drain stops at the budget");

    // Raised: a drain takes the rest.
    let raised = 2 * budget;
    let report = drain(&images(&world, Some(raised)), DrainLimits::default())
        .await
        .unwrap();
    assert_eq!(report.processed, N as u64);
    assert_eq!(world.fake.calls(Verb::GenerateContent), 2 * N);
    for id in &ids {
        let done = job(&world, id).await;
        assert_eq!(
            (done.status(), done.waiting()),
            (JobStatus::Completed, None)
        );
    }
    assert_eq!(money(&world).await, (0, raised));
    assert_eq!(world.store.jobs_waiting_on_budget().await.unwrap(), 0);
}

async fn refusals_and_filtered_outputs_release_their_reservation(world: World) {
    // Without a limit, spending is still recorded: an Imagen job of two
    // samples, one of them filtered, spends one image.
    let unlimited = serve(router(Arc::new(images(&world, None)))).await;
    let partial = world
        .job(
            "[partial] soap",
            JobKind::Image,
            &[("model", "imagen-4.0-generate-001"), ("sample_count", "2")],
        )
        .await;
    assert_eq!(push(&unlimited, &partial, "p").await, 200);
    assert_eq!(job(&world, &partial).await.outputs().len(), 1);
    assert_eq!(money(&world).await, (0, 40_000));

    // Room for one more Gemini image today.
    let budget = 40_000 + IMAGE;
    let url = serve(router(Arc::new(images(&world, Some(budget))))).await;

    let filtered = world.job("[filtered] clip", JobKind::Image, &[]).await;
    assert_eq!(push(&url, &filtered, "f").await, 200);
    let failed = job(&world, &filtered).await;
    assert_eq!(failed.error().unwrap().code, FILTERED);
    assert_eq!(failed.reservation(), None);
    assert_eq!(money(&world).await, (0, 40_000), "filtered: released");

    let blocked = world.job("[blocked] prompt", JobKind::Image, &[]).await;
    assert_eq!(push(&url, &blocked, "b").await, 200);
    assert_eq!(
        job(&world, &blocked).await.error().unwrap().code,
        "invalid_argument"
    );
    assert_eq!(money(&world).await, (0, 40_000), "refused: released");

    let quota = world.job("tapping", JobKind::Image, &[]).await;
    // A quota that stays spent for longer than the call waits (QUOTA_WAIT).
    world.fake.fail_next(100_000, 429);
    assert_eq!(push(&url, &quota, "q").await, 429);
    world.fake.clear_faults();
    let back = job(&world, &quota).await;
    assert_eq!(
        (back.status(), back.reservation()),
        (JobStatus::Pending, None)
    );
    assert_eq!(money(&world).await, (0, 40_000), "429: released");

    // What was released is spendable: the next job fits, and the one after
    // it waits.
    let calls_before = world.fake.calls(Verb::GenerateContent);
    assert_eq!(push(&url, &quota, "q2").await, 200);
    assert_eq!(job(&world, &quota).await.status(), JobStatus::Completed);
    let last = world.job("one too many", JobKind::Image, &[]).await;
    assert_eq!(push(&url, &last, "l").await, 200);
    assert_eq!(job(&world, &last).await.status(), JobStatus::Pending);
    assert_eq!(world.fake.calls(Verb::GenerateContent), calls_before + 1);
    assert_eq!(money(&world).await, (0, budget));
}

async fn a_video_keeps_its_reservation_until_its_operation_ends(world: World) {
    let url = serve(router(Arc::new(videos(&world, Some(VIDEO))))).await;
    let filtered = world.job("[filtered] clip", JobKind::Video, &[]).await;
    let second = world.job("honey drip", JobKind::Video, &[]).await;

    assert_eq!(push(&url, &filtered, "f").await, 200);
    assert_eq!(job(&world, &filtered).await.status(), JobStatus::Generating);
    assert_eq!(money(&world).await, (VIDEO, 0), "reserved while it runs");
    assert_eq!(push(&url, &second, "s").await, 200);
    assert_eq!(job(&world, &second).await.waiting(), Some(BUDGET_EXHAUSTED));
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 1);

    // Veo filtered the video: the poller releases the reservation.
    let report = poller(&world).run().await.unwrap();
    assert_eq!(report.filtered, 1);
    assert_eq!(money(&world).await, (0, 0));

    assert_eq!(push(&url, &second, "s2").await, 200);
    assert_eq!(job(&world, &second).await.status(), JobStatus::Generating);
    assert_eq!(world.fake.calls(Verb::PredictLongRunning), 2);
    let report = poller(&world).run().await.unwrap();
    assert_eq!(report.completed, 1);
    assert_eq!(money(&world).await, (0, VIDEO), "spent when it is done");
}

macro_rules! scenarios {
    ($world:ident, $make:path) => {
        mod $world {
            use super::*;

            async fn world() -> World {
                $make(FakeOptions::default()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn a_budget_for_n_image_calls_makes_exactly_n_and_the_rest_wait() {
                super::a_budget_for_n_image_calls_makes_exactly_n_and_the_rest_wait(world().await)
                    .await
            }
            #[tokio::test]
            async fn refusals_and_filtered_outputs_release_their_reservation() {
                super::refusals_and_filtered_outputs_release_their_reservation(world().await).await
            }
            #[tokio::test]
            async fn a_video_keeps_its_reservation_until_its_operation_ends() {
                super::a_video_keeps_its_reservation_until_its_operation_ends(world().await).await
            }
        }
    };
}

scenarios!(local, tests::stages::local);
#[cfg(feature = "emulators")]
scenarios!(emulators, tests::stages::emulators);

// ---- the binaries ----

/// `image-generator drain` with `BUDGET_USD_PER_DAY` and `MODEL_PRICES` from
/// its environment, on an embedded store and a directory of buckets; then
/// `asmr stats` on the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_binary_reads_its_budget_and_asmr_stats_shows_it() {
    use shared::objects::ObjectStore;
    use shared::store::{Store, StoreConfig};
    use std::process::{Command, Stdio};
    use tests::harness::binary;

    let state = tempfile::tempdir().unwrap();
    let buckets = tempfile::tempdir().unwrap();
    let objects = Arc::new(shared::objects::local::LocalObjectStore::new(
        buckets.path().to_path_buf(),
    ));
    objects.ensure_bucket("out").await.unwrap();
    let fake = tests::fake_vertex::FakeVertex::start(FakeOptions::default()).await;
    let store = Store::open(&StoreConfig::Embedded {
        state_dir: state.path().to_path_buf(),
    })
    .await
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut new = shared::domain::job::NewJob::new(format!("rain {i}"), JobKind::Image);
        new.dry_run = false;
        ids.push(store.create_job(new).await.unwrap().record.id().to_string());
    }

    let env = [
        ("ASMR_BACKEND", "embedded".to_string()),
        ("ASMR_STATE_DIR", state.path().display().to_string()),
        ("ASMR_OBJECTS_DIR", buckets.path().display().to_string()),
        ("GOOGLE_CLOUD_PROJECT", "asmr-test".to_string()),
        ("GCS_OUTPUT_BUCKET", "out".to_string()),
        ("VERTEX_BASE_URL", fake.base_url()),
        ("VERTEX_ACCESS_TOKEN", fake.token().to_string()),
        ("DRY_RUN", "false".to_string()),
        ("ASMR_JOB_EVENTS", "false".to_string()),
        // Five cents an image, a budget for two.
        ("MODEL_PRICES", "gemini-2.5-flash-image*=0.05".to_string()),
        ("BUDGET_USD_PER_DAY", "0.10".to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let run = |program: &str, args: &[&str]| {
        let mut command = Command::new(binary(program));
        command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        command.args(args).stdin(Stdio::null());
        command.output().unwrap()
    };

    let drained = tokio::task::block_in_place(|| run("image-generator", &["drain"]));
    assert!(
        drained.status.success(),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    assert_eq!(fake.calls(Verb::GenerateContent), 2);
    let mut statuses = Vec::new();
    for id in &ids {
        statuses.push(store.job(id).await.unwrap().status());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == JobStatus::Completed)
            .count(),
        2
    );

    let stats = tokio::task::block_in_place(|| run("asmr", &["stats", "--json"]));
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        stats["budget"],
        serde_json::json!({
            "day": budget_day_of(Timestamp::now()),
            "reserved_usd": 0.0,
            "spent_usd": 0.1,
            "budget_usd": 0.1,
            "waiting_jobs": 3,
        })
    );

    // A budget that is not an amount stops the binary with a clear error.
    let mut bad = Command::new(binary("image-generator"));
    bad.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("BUDGET_USD_PER_DAY", "ten dollars")
        .arg("drain");
    let bad = tokio::task::block_in_place(|| bad.output().unwrap());
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("BUDGET_USD_PER_DAY") || stderr.contains("budget-usd-per-day"),
        "{stderr}"
    );
    assert!(
        stderr.contains("is not an amount of US dollars"),
        "{stderr}"
    );
    assert_eq!(fake.calls(Verb::GenerateContent), 2);
}
