//! What each stage asks of the store and the bus per job: round trips
//! (reads, queries, writes, commits) and publishes, counted by wrappers
//! around the ports while the stage code runs in this process on the
//! emulators (Firestore, Pub/Sub, fake-gcs-server). At scale these are the
//! running cost and the contention limit, so the hot documents are named and
//! a rate of 1000 paid jobs a minute is simulated against them.

use crate::common::{self, Context};
use crate::table::Report;
use anyhow::{Context as _, Result};
use futures::StreamExt;
use shared::bus::Topics;
use shared::bus::pubsub::{PubSubBus, PubSubConfig};
use shared::deliver::{Downloader, DownloaderSettings};
use shared::domain::Lease;
use shared::domain::destination::Destination;
use shared::domain::job::NewJob;
use shared::domain::values::JobKind;
use shared::events::{ObjectEvent, ObjectEventKind};
use shared::generate::images::{DryRunImages, ImageGenerator};
use shared::generate::{GeneratorSettings, handle};
use shared::job_events::BusJobEvents;
use shared::objects::ObjectStore;
use shared::store::Store;
use shared::store::budget::{Billed, Budget, Budgeted};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::counting::{Counting, CountingBus, Trips};

const GROUP: &str = "Store round trips";
/// Jobs each stage is measured over.
const JOBS: usize = 50;

struct Wired {
    backend: Arc<Counting>,
    bus: Arc<CountingBus>,
    store: Store,
    topics: Topics,
}

async fn wire(ctx: &Context, prefix: &str) -> Result<Wired> {
    let backend = Arc::new(Counting::new(Arc::new(
        tests::harness::firestore_backend_with_prefix(prefix).await,
    )));
    let pubsub = PubSubBus::new(PubSubConfig {
        project: ctx.env.project.clone(),
        emulator_endpoint: Some(ctx.env.pubsub.clone()),
    })
    .await?;
    let bus = Arc::new(CountingBus::new(Arc::new(pubsub)));
    let topics = Topics::new(prefix.to_string());
    for topic in topics.all() {
        ctx.pubsub.topic(&topic).await?;
    }
    let store = Store::new(backend.clone()).with_events(Arc::new(BusJobEvents::new(
        bus.clone(),
        topics.job_events(),
    )));
    Ok(Wired {
        backend,
        bus,
        store,
        topics,
    })
}

fn per_job(trips: &Trips, jobs: usize) -> String {
    let n = jobs as f64;
    format!(
        "{:.1} ({:.1} reads, {:.1} queries, {:.1} writes, {:.1} commits)",
        trips.total() as f64 / n,
        trips.reads as f64 / n,
        trips.queries as f64 / n,
        trips.writes as f64 / n,
        trips.commits as f64 / n
    )
}

pub async fn run(ctx: &Context, report: &mut Report) -> Result<()> {
    let prefix = common::unique_prefix();
    let wired = wire(ctx, &prefix).await?;
    let objects: Arc<dyn ObjectStore> = Arc::new(tests::harness::gcs().await);
    let bucket = common::unique_bucket();
    objects.ensure_bucket(&bucket).await?;

    // Intake: a batch of JOBS prompts.
    let before = (wired.backend.trips(), wired.bus.published());
    let new_jobs: Vec<NewJob> = (0..JOBS)
        .map(|n| NewJob::new(format!("counted prompt {n}"), JobKind::Image))
        .collect();
    let submitted = shared::intake::submit(
        &wired.store,
        wired.bus.as_ref(),
        &wired.topics,
        new_jobs,
        None,
    )
    .await
    .map_err(|u| anyhow::anyhow!("{}", u.error))?;
    let intake = wired.backend.trips().since(&before.0);
    let intake_publishes = wired.bus.published() - before.1;
    let ids: Vec<String> = submitted
        .jobs
        .iter()
        .map(|j| j.job.id().to_string())
        .collect();

    // The image generator (dry run: placeholders instead of the model).
    let generator = ImageGenerator::new(
        wired.store.clone(),
        objects.clone(),
        Arc::new(DryRunImages),
        GeneratorSettings {
            output_bucket: bucket.clone(),
            default_model: shared::vertex::DEFAULT_IMAGE_MODEL.into(),
            dry_run: true,
            lease_ttl: Duration::from_secs(900),
            operation_timeout: Duration::from_secs(1800),
            retry: shared::vertex::RetryPolicy::default(),
        },
    );
    let before = (wired.backend.trips(), wired.bus.published());
    futures::stream::iter(&ids)
        .for_each_concurrent(5, |id| {
            let generator = &generator;
            async move {
                handle(generator, id).await;
            }
        })
        .await;
    let generate = wired.backend.trips().since(&before.0);
    let generate_publishes = wired.bus.published() - before.1;

    // The downloader: the finalize event of each output.
    let destination = ctx.dir("trips")?;
    let downloader = Downloader::new(
        wired.store.clone(),
        objects.clone(),
        DownloaderSettings {
            output_buckets: vec![bucket.clone()],
            destination: Destination::Directory(destination.clone()),
            concurrency: 5,
            timeout: Duration::from_secs(300),
            lease: Duration::from_secs(60),
            image_priority: 10,
            video_priority: 0,
        },
    );
    let mut events = Vec::new();
    for id in &ids {
        let job = wired.store.job(id).await?;
        for output in job.outputs() {
            let uri = output.clone();
            let meta = objects
                .metadata(&uri.bucket, &uri.name)
                .await?
                .context("an output")?;
            events.push(ObjectEvent {
                kind: ObjectEventKind::Finalized,
                bucket: meta.bucket.clone(),
                name: meta.name.clone(),
                generation: Some(meta.generation),
                event_id: format!("trips-{}", meta.name),
            });
        }
    }
    let before = (wired.backend.trips(), wired.bus.published());
    futures::stream::iter(&events)
        .for_each_concurrent(5, |event| {
            let downloader = &downloader;
            async move {
                downloader.handle(event).await;
            }
        })
        .await;
    let deliver = wired.backend.trips().since(&before.0);
    let deliver_publishes = wired.bus.published() - before.1;
    let files = events.len();
    let delivered = wired
        .store
        .job_counts()
        .await?
        .status(shared::domain::values::JobStatus::Delivered);
    anyhow::ensure!(
        delivered as usize == JOBS,
        "{delivered} of {JOBS} delivered"
    );

    report.figure(GROUP, "intake, per job", per_job(&intake, JOBS));
    report.figure(
        GROUP,
        "image generator (dry run), per job",
        per_job(&generate, JOBS),
    );
    let per_file = deliver.total() as f64 / files as f64;
    report.goal(
        GROUP,
        "downloader, per delivered image",
        per_job(&deliver, files),
        "≤ 4",
        per_file <= 4.0,
    );
    report.figure(
        GROUP,
        "Pub/Sub publishes per job: intake / generator / downloader",
        format!(
            "{:.1} / {:.1} / {:.1} (job message; job event)",
            intake_publishes as f64 / JOBS as f64,
            generate_publishes as f64 / JOBS as f64,
            deliver_publishes as f64 / JOBS as f64
        ),
    );
    report.figure(
        GROUP,
        "conflicts (refused conditional writes) over the three stages",
        format!(
            "{}",
            intake.conflicts + generate.conflicts + deliver.conflicts
        ),
    );
    let _ = std::fs::remove_dir_all(&destination);
    for object in objects.list(&bucket, "").await.unwrap_or_default() {
        let _ = objects.delete(&bucket, &object.name).await;
    }
    common::delete_bucket(ctx, &bucket).await;

    contention(ctx, report).await
}

/// Paid claims arriving at 1000 a minute for 30 s, each reserving on the
/// day's budget document with its claim and settling after its "call":
/// that document is written twice per paid job.
async fn contention(ctx: &Context, report: &mut Report) -> Result<()> {
    const PER_MINUTE: u64 = 1000;
    const SECONDS: u64 = 30;
    let prefix = common::unique_prefix();
    let wired = wire(ctx, &prefix).await?;
    let total = (PER_MINUTE * SECONDS / 60) as usize;
    let mut ids = Vec::with_capacity(total);
    for n in 0..total {
        let mut new = NewJob::new(format!("paid {n}"), JobKind::Image);
        new.dry_run = false;
        ids.push(wired.store.create_job(new).await?.record.id().to_string());
    }
    let before = wired.backend.trips();
    let cost = |_: &shared::domain::job::Job| Some(40_000u64);
    let budget = Budget {
        limit_micros: Some(1_000_000_000_000),
        cost: &cost,
        model: None,
    };
    let interval = Duration::from_micros(60_000_000 / PER_MINUTE);
    let started = Instant::now();
    let latencies: Vec<Result<Duration>> = futures::stream::iter(ids.iter().enumerate())
        .map(|(n, id)| {
            let (store, budget) = (&wired.store, &budget);
            async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(
                    started + interval * u32::try_from(n).unwrap_or(u32::MAX),
                ))
                .await;
                let begun = Instant::now();
                let lease = Lease::new(format!("c{n}"), Duration::from_secs(600));
                match store.claim_job_within(id, &lease, budget).await? {
                    Budgeted::Within(shared::store::Claim::Claimed(_)) => {}
                    other => anyhow::bail!("{id} not claimed: {other:?}"),
                }
                store
                    .settle_reservation(id, Some(&lease.owner), Billed::All)
                    .await?;
                Ok(begun.elapsed())
            }
        })
        .buffer_unordered(total)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut latencies: Vec<f64> = latencies
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let trips = wired.backend.trips().since(&before);
    let hottest = wired.backend.hottest(1);
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    report.figure(
        GROUP,
        format!("{PER_MINUTE} paid jobs/min for {SECONDS} s: claim + settle latency p50 / p99"),
        format!("{:.0} / {:.0} ms", pick(0.5), pick(0.99)),
    );
    report.figure(
        GROUP,
        format!("{PER_MINUTE} paid jobs/min: conflicts and retries"),
        format!(
            "{} refused writes for {total} jobs ({:.2} per job), {:.1} round trips per job",
            trips.conflicts,
            trips.conflicts as f64 / total as f64,
            trips.total() as f64 / total as f64
        ),
    );
    if let Some((document, writes)) = hottest.first() {
        report.figure(
            GROUP,
            "hottest document under that load",
            format!(
                "{document}: {writes} writes in {:.0} s ({:.1}/s)",
                elapsed.as_secs_f64(),
                *writes as f64 / elapsed.as_secs_f64()
            ),
        );
    }
    Ok(())
}
