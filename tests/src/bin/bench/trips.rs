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
use shared::domain::tenant::{Tenant, TenantName, TenantSettings};
use shared::domain::values::JobKind;
use shared::events::{ObjectEvent, ObjectEventKind};
use shared::generate::images::{DryRunImages, ImageGenerator};
use shared::generate::{GeneratorSettings, handle};
use shared::job_events::BusJobEvents;
use shared::objects::ObjectStore;
use shared::store::Store;
use shared::store::budget::{BUDGET_SHARDS, budget_day_of};
use shared::store::budget::{Billed, Budget, Budgeted};
use shared::store::tenants::Scope;
use shared::time::Timestamp;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::counting::{Counting, CountingBus, Trips, WriteRate};

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

/// Paid jobs a minute, the load under which hot documents are measured.
const PER_MINUTE: u64 = 1000;
/// How long that load lasts.
const SECONDS: u64 = 60;
/// Tenants the jobs belong to, each with a budget of its own.
const TENANTS: usize = 4;
/// Instances claiming (stores over one backend, each with its own turn of
/// shards).
const INSTANCES: usize = 2;

/// What one run of the paid load measured.
struct Load {
    p50_ms: f64,
    p99_ms: f64,
    conflicts: u64,
    trips_per_job: f64,
    /// The hottest document by its busiest minute, and by its busiest 10 s.
    minute: WriteRate,
    ten_seconds: WriteRate,
}

/// Paid claims arriving at [`PER_MINUTE`] for [`SECONDS`] over
/// [`TENANTS`] tenants on [`INSTANCES`] instances, each reserving on the
/// deployment's budget and its tenant's in its claim and settling after its
/// "call", with each day's budget split over `shards` documents (one: as
/// before budgets had shards). The ledger is checked: the charges add up
/// to what the budgets say was spent, and nothing stays reserved.
async fn paid_load(ctx: &Context, shards: u32) -> Result<Load> {
    let prefix = common::unique_prefix();
    let wired = wire(ctx, &prefix).await?;
    let stores: Vec<Store> = (0..INSTANCES)
        .map(|_| {
            Store::new(wired.backend.clone() as Arc<dyn shared::store::backend::Backend>)
                .with_budget_shards(shards)
        })
        .collect();
    let mut tenants = Vec::new();
    for n in 0..TENANTS {
        let name: TenantName = format!("team-{n}").parse()?;
        let settings = TenantSettings {
            daily_budget_micros: Some(Some(2_500_000_000)),
            ..TenantSettings::default()
        };
        let tenant = Tenant::new(name.clone(), &settings, Timestamp::now())?;
        wired.store.add_tenant(tenant).await?;
        tenants.push(name);
    }
    let total = (PER_MINUTE * SECONDS / 60) as usize;
    let mut ids = Vec::with_capacity(total);
    for n in 0..total {
        let mut new = NewJob::new(format!("paid {n}"), JobKind::Image);
        new.dry_run = false;
        new.tenant = tenants[n % TENANTS].clone();
        ids.push(wired.store.create_job(new).await?.record.id().to_string());
    }
    let before = wired.backend.trips();
    let cost = |_: &shared::domain::job::Job| Some(40_000u64);
    let budget = Budget {
        limit_micros: Some(10_000_000_000),
        cost: &cost,
        model: None,
    };
    let interval = Duration::from_micros(60_000_000 / PER_MINUTE);
    let started = Instant::now();
    wired.backend.forget_writes();
    let latencies: Vec<Result<Duration>> = futures::stream::iter(ids.iter().enumerate())
        .map(|(n, id)| {
            let (store, budget) = (&stores[n % INSTANCES], &budget);
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
    let mut latencies: Vec<f64> = latencies
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let trips = wired.backend.trips().since(&before);
    let hottest = |window| {
        wired
            .backend
            .rates(window)
            .into_iter()
            .next()
            .context("no document was written")
    };
    let (minute, ten_seconds) = (
        hottest(Duration::from_secs(60))?,
        hottest(Duration::from_secs(10))?,
    );

    let today = budget_day_of(Timestamp::now());
    let day = wired.store.budget_day(&today).await?;
    let charges = wired.store.charges_on(&today).await?;
    let charged: u64 = charges.iter().map(|c| c.spent_micros).sum();
    anyhow::ensure!(
        charges.len() == total && charged == day.spent_micros && day.reserved_micros == 0,
        "the ledger does not add up: {} charges of {charged} µ$ for {total} jobs; the budget says {} spent, {} reserved",
        charges.len(),
        day.spent_micros,
        day.reserved_micros
    );
    for tenant in &tenants {
        let own = wired
            .store
            .budget_day_in(&today, &Scope::Tenant(tenant.clone()))
            .await?;
        let charged: u64 = charges
            .iter()
            .filter(|c| c.tenant == *tenant)
            .map(|c| c.spent_micros)
            .sum();
        anyhow::ensure!(
            own.spent_micros == charged,
            "{tenant}: {own:?} against {charged} charged"
        );
    }
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok(Load {
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        conflicts: trips.conflicts,
        trips_per_job: trips.total() as f64 / total as f64,
        minute,
        ten_seconds,
    })
}

/// The paid load with each budget in one document, then split: the hottest
/// document before and after.
async fn contention(ctx: &Context, report: &mut Report) -> Result<()> {
    report.note(format!(
        "Store round trips: the stage code runs in the bench process on the emulators, its store and bus ports wrapped by counters (reads, queries, writes, commits, refused conditional writes, publishes) over {JOBS} jobs per stage. Hot documents: {PER_MINUTE} paid image jobs a minute for {SECONDS} s, spread over {TENANTS} tenants (each with a daily budget of its own) and {INSTANCES} instances (stores over one Firestore emulator connection, each taking budget shards in its own turn), each job claimed with its reservation on the deployment's budget and its tenant's in one commit and settled after its \"call\" (one more commit, with its charge record); a meter around the store port times every write of every document, and a document's rate is its writes in its busiest minute (sustained) or busiest 10 s, over 60 or 10. Run with each day's budget in one document (every claim and settlement writes it, as before budgets had shards), then split over {BUDGET_SHARDS} shards, side by side; both runs check the ledger (the charges add up to what each budget says was spent, nothing left reserved)."
    ));
    let one = paid_load(ctx, 1).await?;
    let split = paid_load(ctx, BUDGET_SHARDS).await?;
    let load = format!(
        "{PER_MINUTE} paid jobs/min for {SECONDS} s, {TENANTS} tenants, {INSTANCES} instances"
    );
    let both = |f: &dyn Fn(&Load) -> String| format!("{} → {}", f(&one), f(&split));
    report.figure(
        GROUP,
        format!(
            "{load}: claim + settle latency p50 / p99, one budget document → {BUDGET_SHARDS} shards"
        ),
        both(&|l| format!("{:.0} / {:.0} ms", l.p50_ms, l.p99_ms)),
    );
    report.figure(
        GROUP,
        format!(
            "{load}: refused writes, round trips per job, one document → {BUDGET_SHARDS} shards"
        ),
        both(&|l| format!("{} refused, {:.1} trips", l.conflicts, l.trips_per_job)),
    );
    let rate = |r: &WriteRate| format!("{}: {:.2} writes/s", r.document, r.busiest_per_second);
    report.figure(
        GROUP,
        format!("{load}: hottest document, busiest minute, one budget document (before)"),
        rate(&one.minute),
    );
    report.goal(
        GROUP,
        format!("{load}: hottest document, busiest minute, {BUDGET_SHARDS} shards (after)"),
        rate(&split.minute),
        "≤ 1 write/s",
        split.minute.busiest_per_second <= 1.0,
    );
    report.figure(
        GROUP,
        format!("{load}: hottest document, busiest 10 s, one document → {BUDGET_SHARDS} shards"),
        both(&|l| rate(&l.ten_seconds)),
    );
    Ok(())
}
