//! Delivery at the real workload: many outputs of a few MiB (a 1024² PNG is
//! about 1.5 MiB) and some short videos, each of its own job, delivered by
//! the downloader binary through its production path, side by side with
//! `gcloud storage cp -r` and five parallel `curl`s of the same objects.
//!
//! The downloader is measured twice: behind a Pub/Sub push subscription (the
//! emulator pushes every finalize notification, as production's
//! subscription does) and with the pushes sent at Cloud Run-like
//! concurrency. A bucket destination (server-side rewrite) is measured
//! against `gcloud storage cp -r` between buckets.

use crate::common::{self, Context, encode, median};
use crate::table::{Report, size};
use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine;
use futures::StreamExt;
use serde_json::{Value, json};
use shared::domain::Lease;
use shared::domain::job::NewJob;
use shared::domain::values::{JobKind, JobStatus};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const GROUP: &str = "Delivery of many files";

/// Pushes in flight at once when the bench plays Cloud Run: the downloader's
/// per-instance request concurrency as terraform deploys it (the
/// `downloader` entry of `concurrency = merge({...})` in terraform/run.tf).
fn cloud_run_concurrency() -> Result<usize> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../terraform/run.tf");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let block = text
        .split("concurrency = merge({")
        .nth(1)
        .context("no `concurrency = merge({` in terraform/run.tf")?;
    block
        .lines()
        .take_while(|line| !line.contains("})"))
        .find_map(|line| {
            line.trim()
                .strip_prefix("downloader")?
                .trim()
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
        .context("no downloader entry in terraform/run.tf's concurrency")
}

/// One workload: `count` objects of `bytes` each, of jobs of `kind`.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub count: usize,
    pub bytes: u64,
    pub kind: JobKind,
}

impl Workload {
    fn label(&self) -> String {
        format!(
            "{} × {} {}",
            self.count,
            size(self.bytes),
            match self.kind {
                JobKind::Image => "images",
                JobKind::Video => "videos",
            }
        )
    }
}

/// One object of a workload, as its notification describes it.
struct Object {
    name: String,
    /// The object resource (JSON API), the notification's payload.
    resource: Value,
    generation: String,
    request_id: String,
}

/// The copiers measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Copier {
    /// The downloader behind a Pub/Sub push subscription.
    Subscription,
    /// The downloader, pushes sent at Cloud Run-like concurrency.
    Concurrent,
    /// `gcloud storage cp -r`.
    Gcloud,
    /// Five `curl`s at once.
    Curl,
    /// The downloader into a bucket (server-side rewrite).
    ToBucket,
    /// `gcloud storage rsync -r` between buckets (fake-gcs-server has no
    /// storage layout API, which `gcloud storage cp -r` asks for between
    /// buckets).
    GcloudToBucket,
    /// No copy: the same bytes written and fsynced, five files at once: what
    /// durable files cost on this disk.
    Disk,
}

const COPIERS: [Copier; 7] = [
    Copier::Subscription,
    Copier::Concurrent,
    Copier::Gcloud,
    Copier::Curl,
    Copier::ToBucket,
    Copier::GcloudToBucket,
    Copier::Disk,
];

pub async fn run(
    ctx: &Context,
    workloads: &[Workload],
    rounds: usize,
    report: &mut Report,
) -> Result<()> {
    let at_once = cloud_run_concurrency()?;
    for workload in workloads {
        let measured = measure(ctx, *workload, rounds).await?;
        tabulate(*workload, &measured, at_once, report);
    }
    report.note(format!(
        "Delivery of many files: each object is the output of its own job (completed in Firestore), uploaded to fake-gcs-server before the clock starts. Files/s is objects over the wall time of the whole set: for the downloader from the first push to the last job `delivered` (every file streamed, size and CRC32C checked, fsynced, renamed into place, the download and the job recorded, one job event each); for `gcloud storage cp -r` and `curl` (five at once, `xargs -P 5`, no check, no fsync) from exec to exit. \"Subscription\": a fresh release downloader (default settings) behind a Pub/Sub emulator push subscription configured as production's, to which the {} finalize notifications are published at once; the emulator pushes at most two messages of a subscription at a time (measured: a receiver that sleeps 20 or 50 ms never sees more than two requests in flight), so this figure is two copies' latency, not the downloader's throughput; Pub/Sub itself scales push deliveries with the acknowledgement rate. \"{at_once} at once\": the same pushes POSTed {at_once} at a time, the downloader's per-instance concurrency in terraform (Cloud Run sends an instance that many requests at once and starts more instances beyond). To a bucket: the downloader's server-side rewrite into another bucket, against `gcloud storage rsync -r` between the same buckets (fake-gcs-server lacks the storage layout API that `gcloud storage cp -r` asks for between buckets). Write + fsync: the same number of files of the same size written and fsynced five at once with no network or store, what durable files cost on this disk (`curl` does not fsync: its files are still in the page cache when it exits). Each copier runs on a quiet disk (`sync` first); {rounds} rounds in rotating order, the median counts.",
        workloads.iter().map(|w| w.count.to_string()).collect::<Vec<_>>().join(" or ")
    ));
    Ok(())
}

#[derive(Default)]
struct Measured {
    seconds: BTreeMap<&'static str, Vec<f64>>,
}

fn key(copier: Copier) -> &'static str {
    match copier {
        Copier::Subscription => "subscription",
        Copier::Concurrent => "concurrent",
        Copier::Gcloud => "gcloud",
        Copier::Curl => "curl",
        Copier::ToBucket => "to_bucket",
        Copier::GcloudToBucket => "gcloud_to_bucket",
        Copier::Disk => "disk",
    }
}

async fn measure(ctx: &Context, workload: Workload, rounds: usize) -> Result<Measured> {
    let bucket = common::unique_bucket();
    common::detail(&format!("uploading {}", workload.label()));
    let objects = upload(ctx, &bucket, workload).await?;
    let mut measured = Measured::default();
    let mut outcome = Ok(());
    'rounds: for round in 0..rounds {
        for i in 0..COPIERS.len() {
            let copier = COPIERS[(round + i) % COPIERS.len()];
            settle_disk().await;
            let result = match copier {
                Copier::Subscription | Copier::Concurrent | Copier::ToBucket => {
                    downloader_once(ctx, &bucket, &objects, workload, copier).await
                }
                Copier::Gcloud | Copier::GcloudToBucket => {
                    gcloud_once(ctx, &bucket, workload, copier).await
                }
                Copier::Curl => curl_once(ctx, &bucket, &objects).await,
                Copier::Disk => disk_once(ctx, workload).await,
            };
            match result {
                Ok(seconds) => {
                    common::detail(&format!(
                        "{} round {}: {copier:?} {:.1} files/s ({seconds:.2} s)",
                        workload.label(),
                        round + 1,
                        workload.count as f64 / seconds
                    ));
                    measured
                        .seconds
                        .entry(key(copier))
                        .or_default()
                        .push(seconds);
                }
                Err(e) => {
                    outcome = Err(e.context(format!("{copier:?}, {}", workload.label())));
                    break 'rounds;
                }
            }
        }
    }
    common::delete_bucket(ctx, &bucket).await;
    outcome.map(|()| measured)
}

/// Flushes every dirty page to disk and lets the disk go idle.
async fn settle_disk() {
    let _ = tokio::task::spawn_blocking(|| Command::new("sync").status()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn object_name(kind: JobKind, job_id: &str) -> String {
    match kind {
        JobKind::Image => format!("images/{job_id}/0.png"),
        JobKind::Video => format!("videos/{job_id}/bench/sample_0.mp4"),
    }
}

/// Uploads the workload's objects (distinct bytes each), named after jobs
/// whose ids follow from their request ids.
async fn upload(ctx: &Context, bucket: &str, workload: Workload) -> Result<Vec<Object>> {
    ctx.http
        .post(format!("{}/storage/v1/b", ctx.env.storage))
        .json(&json!({"name": bucket}))
        .send()
        .await?
        .error_for_status()
        .context("creating the bucket")?;
    let len = usize::try_from(workload.bytes)?;
    let pattern = tests::objects::pattern(len + 4096);
    let objects = futures::stream::iter(0..workload.count)
        .map(|n| {
            let pattern = &pattern;
            async move {
                let request_id = format!("bench-small-{bucket}-{n}");
                let job_id = shared::domain::job::Job::id_for_request(&request_id);
                let name = object_name(workload.kind, &job_id);
                // Distinct content per object: a window of the pattern.
                let offset = (n * 7) % 4096;
                let data = bytes::Bytes::copy_from_slice(&pattern[offset..offset + len]);
                let resource =
                    common::upload_media(ctx, bucket, &name, "application/octet-stream", data)
                        .await?;
                let generation = match &resource["generation"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Ok::<_, anyhow::Error>(Object {
                    name,
                    resource,
                    generation,
                    request_id,
                })
            }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(objects)
}

/// The finalize notification of `object`, as a bucket's notification
/// config publishes it: its payload and attributes.
fn notification(bucket: &str, object: &Object) -> (Vec<u8>, BTreeMap<String, String>) {
    let attributes = BTreeMap::from([
        ("eventType".to_string(), "OBJECT_FINALIZE".to_string()),
        ("payloadFormat".to_string(), "JSON_API_V1".to_string()),
        ("bucketId".to_string(), bucket.to_string()),
        ("objectId".to_string(), object.name.clone()),
        ("objectGeneration".to_string(), object.generation.clone()),
    ]);
    (object.resource.to_string().into_bytes(), attributes)
}

/// The same notification as the push subscription delivers it.
fn push_body(bucket: &str, object: &Object, message_id: &str) -> String {
    let (data, attributes) = notification(bucket, object);
    json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "attributes": attributes,
            "messageId": message_id,
            "publishTime": chrono::Utc::now().to_rfc3339(),
        },
        "subscription": "projects/asmr-bench/subscriptions/gcs-events-downloader",
    })
    .to_string()
}

/// Jobs of the workload in fresh collections, each completed with its
/// object as its output: what the generators leave behind.
async fn jobs(
    ctx: &Context,
    prefix: &str,
    bucket: &str,
    objects: &[Object],
    kind: JobKind,
) -> Result<shared::store::Store> {
    let store = ctx.store(prefix).await;
    futures::stream::iter(objects)
        .map(|object| {
            let store = &store;
            async move {
                let mut new = NewJob::new("a benchmark output", kind);
                new.request_id = Some(object.request_id.clone());
                let job = store.create_job(new).await?.record;
                let lease = Lease::new("bench", Duration::from_secs(600));
                store.claim_job(job.id(), &lease).await?;
                store
                    .complete_job(
                        job.id(),
                        "bench",
                        vec![shared::domain::gs_uri::GsUri {
                            bucket: bucket.to_string(),
                            name: object.name.clone(),
                        }],
                    )
                    .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(store)
}

/// One delivery of the whole set by a fresh downloader.
async fn downloader_once(
    ctx: &Context,
    bucket: &str,
    objects: &[Object],
    workload: Workload,
    copier: Copier,
) -> Result<f64> {
    let prefix = common::unique_prefix();
    let topics: Vec<String> = shared::bus::Topics::new(prefix.clone()).all().to_vec();
    for topic in &topics {
        ctx.pubsub.topic(topic).await?;
    }
    let events = format!("{prefix}gcs-events");
    ctx.pubsub.topic(&events).await?;
    let subscription = format!("{prefix}downloader");
    let archive = common::unique_bucket();
    let outcome = async {
        let store = jobs(ctx, &prefix, bucket, objects, workload.kind).await?;
        let destination = match copier {
            Copier::ToBucket => {
                ctx.http
                    .post(format!("{}/storage/v1/b", ctx.env.storage))
                    .json(&json!({"name": archive}))
                    .send()
                    .await?
                    .error_for_status()?;
                format!("gs://{archive}/")
            }
            _ => ctx.dir("downloader")?.display().to_string(),
        };
        let mut env = ctx.stage_env(&prefix, bucket);
        env.push(("DOWNLOAD_DESTINATION".into(), destination.clone()));
        let mut service = ctx.spawn("downloader", &env)?;
        service.healthy(&ctx.http).await?;
        let started = Instant::now();
        match copier {
            Copier::Concurrent => {
                let statuses: Vec<u16> = futures::stream::iter(objects.iter().enumerate())
                    .map(|(n, object)| {
                        let body = push_body(bucket, object, &format!("{prefix}{n}"));
                        let url = format!("{}/", service.url);
                        async move {
                            ctx.http
                                .post(url)
                                .header("content-type", "application/json")
                                .body(body)
                                .timeout(Duration::from_secs(600))
                                .send()
                                .await
                                .map(|r| r.status().as_u16())
                                .unwrap_or(0)
                        }
                    })
                    .buffer_unordered(cloud_run_concurrency()?)
                    .collect()
                    .await;
                let refused = statuses.iter().filter(|s| **s != 200).count();
                // A refused push is what Pub/Sub would redeliver; here it
                // stays undelivered and the run fails below.
                if refused > 0 {
                    common::detail(&format!("{refused} pushes not acknowledged"));
                }
            }
            _ => {
                ctx.pubsub
                    .push(&subscription, &events, &format!("{}/", service.url), 600)
                    .await?;
                let messages: Vec<_> = objects.iter().map(|o| notification(bucket, o)).collect();
                ctx.pubsub.publish(&events, &messages).await?;
            }
        }
        let limit = Duration::from_secs(600);
        loop {
            let delivered = store.job_counts().await?.status(JobStatus::Delivered);
            if delivered as usize == objects.len() {
                break;
            }
            if started.elapsed() > limit {
                bail!(
                    "{delivered} of {} delivered after {limit:?}\n{}",
                    objects.len(),
                    common::tail(&service.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        drop(service);
        if copier != Copier::ToBucket {
            let root = Path::new(&destination);
            for object in objects.iter().take(5) {
                let len = std::fs::metadata(root.join(&object.name))
                    .with_context(|| format!("{} is not delivered", object.name))?
                    .len();
                ensure!(len == workload.bytes, "{} has {len} bytes", object.name);
            }
            std::fs::remove_dir_all(root)?;
        }
        Ok(seconds)
    }
    .await;
    ctx.pubsub.remove(&[subscription], &topics).await;
    ctx.pubsub.remove(&[], &[events]).await;
    common::delete_bucket(ctx, &archive).await;
    outcome
}

fn gcloud(ctx: &Context, verb: &str) -> Command {
    let mut command = Command::new("gcloud");
    command
        .args(["storage", verb, "-r", "--no-user-output-enabled"])
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE",
            format!("{}/storage/v1/", ctx.env.storage),
        )
        .env("CLOUDSDK_AUTH_DISABLE_CREDENTIALS", "true")
        .env("CLOUDSDK_CORE_PROJECT", &ctx.env.project)
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1");
    command
}

/// `gcloud storage cp -r gs://BUCKET/images DIR` (or into a bucket).
async fn gcloud_once(
    ctx: &Context,
    bucket: &str,
    workload: Workload,
    copier: Copier,
) -> Result<f64> {
    let folder = match workload.kind {
        JobKind::Image => "images",
        JobKind::Video => "videos",
    };
    if copier == Copier::GcloudToBucket {
        let mut command = gcloud(ctx, "rsync");
        command.arg(format!("gs://{bucket}/{folder}"));
        let archive = common::unique_bucket();
        ctx.http
            .post(format!("{}/storage/v1/b", ctx.env.storage))
            .json(&json!({"name": archive}))
            .send()
            .await?
            .error_for_status()?;
        command.arg(format!("gs://{archive}/{folder}"));
        let seconds = timed(command).await;
        common::delete_bucket(ctx, &archive).await;
        return seconds;
    }
    let mut command = gcloud(ctx, "cp");
    command.arg(format!("gs://{bucket}/{folder}"));
    let destination = ctx.dir("gcloud")?;
    command.arg(&destination);
    let seconds = timed(command).await?;
    std::fs::remove_dir_all(&destination)?;
    Ok(seconds)
}

/// Five `curl -o` at once over the objects' media URLs (`xargs -P 5`).
async fn curl_once(ctx: &Context, bucket: &str, objects: &[Object]) -> Result<f64> {
    let destination = ctx.dir("curl")?;
    let list = destination.join("urls");
    let lines: String = objects
        .iter()
        .enumerate()
        .map(|(n, o)| {
            format!(
                "{}/storage/v1/b/{bucket}/o/{}?alt=media {}/{n}\n",
                ctx.env.storage,
                encode(&o.name),
                destination.display()
            )
        })
        .collect();
    std::fs::write(&list, lines)?;
    let mut command = Command::new("sh");
    command.arg("-c").arg(format!(
        "xargs -P 5 -n 2 sh -c 'curl -sSf -o \"$1\" \"$0\"' < {}",
        list.display()
    ));
    let seconds = timed(command).await?;
    std::fs::remove_dir_all(&destination)?;
    Ok(seconds)
}

/// Writes `workload.count` files of `workload.bytes` and fsyncs each, five
/// at once: what durable files cost on this disk, with no network or store.
async fn disk_once(ctx: &Context, workload: Workload) -> Result<f64> {
    let destination = ctx.dir("disk")?;
    let started = Instant::now();
    let written: Vec<Result<()>> = futures::stream::iter(0..workload.count)
        .map(|n| {
            let path = destination.join(n.to_string());
            async move {
                tokio::task::spawn_blocking(move || common::write_durably(&path, workload.bytes))
                    .await?
            }
        })
        .buffer_unordered(5)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    written.into_iter().collect::<Result<Vec<()>>>()?;
    std::fs::remove_dir_all(&destination)?;
    Ok(seconds)
}

async fn timed(mut command: Command) -> Result<f64> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = command.output().context("running a copier")?;
        let seconds = started.elapsed().as_secs_f64();
        if !output.status.success() {
            bail!(
                "{:?} failed ({}): {}",
                command.get_program(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(seconds)
    })
    .await?
}

fn tabulate(workload: Workload, measured: &Measured, at_once: usize, report: &mut Report) {
    let rate = |copier: Copier| {
        measured
            .seconds
            .get(key(copier))
            .map(|s| workload.count as f64 / median(s))
    };
    let show = |r: Option<f64>| r.map_or("–".to_string(), |r| format!("{r:.1}"));
    let label = workload.label();
    report.figure(
        GROUP,
        format!("{label}: files/s, downloader (subscription / {at_once} at once) / gcloud cp -r / 5 curls / write + fsync, no network"),
        format!(
            "{} / {} / {} / {} / {}",
            show(rate(Copier::Subscription)),
            show(rate(Copier::Concurrent)),
            show(rate(Copier::Gcloud)),
            show(rate(Copier::Curl)),
            show(rate(Copier::Disk))
        ),
    );
    if let (Some(ours), Some(disk)) = (rate(Copier::Concurrent), rate(Copier::Disk)) {
        report.figure(
            GROUP,
            format!("{label}: downloader ({at_once} at once) ÷ write + fsync"),
            format!("{:.2}×", ours / disk),
        );
    }
    for (copier, how) in [
        (Copier::Subscription, "subscription"),
        (Copier::Concurrent, "at once"),
    ] {
        if let (Some(ours), Some(gcloud)) = (rate(copier), rate(Copier::Gcloud)) {
            let ratio = ours / gcloud;
            report.goal(
                GROUP,
                format!("{label}: downloader ({how}) ÷ gcloud cp -r"),
                format!("{ratio:.2}×"),
                "≥ 1.0×",
                ratio >= 1.0,
            );
        }
        if let (Some(ours), Some(curl)) = (rate(copier), rate(Copier::Curl)) {
            let ratio = ours / curl;
            report.goal(
                GROUP,
                format!("{label}: downloader ({how}) ÷ 5 curls"),
                format!("{ratio:.2}×"),
                "≥ 0.5×",
                ratio >= 0.5,
            );
        }
    }
    if let (Some(ours), Some(gcloud)) = (rate(Copier::ToBucket), rate(Copier::GcloudToBucket)) {
        report.figure(
            GROUP,
            format!("{label}, to a bucket: files/s downloader / gcloud rsync -r"),
            format!("{ours:.1} / {gcloud:.1} ({:.2}×)", ours / gcloud),
        );
    }
}
