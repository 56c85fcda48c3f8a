//! Downloader throughput: the same object in fake-gcs-server copied to a
//! local directory by the downloader binary (a storage-event push, its
//! production path), by `gcloud storage cp` and by `curl`, side by side,
//! at each size; and the downloader's peak RSS.

use crate::common::{self, Context, encode, median};
use crate::table::{Report, mib, size};
use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine;
use serde_json::{Value, json};
use shared::bus::Topics;
use shared::domain::Lease;
use shared::domain::job::NewJob;
use shared::domain::values::{JobKind, JobStatus};
use shared::objects::ObjectStore;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const GROUP: &str = "Downloader";
const MIB: u64 = 1024 * 1024;
/// The downloader's memory goal.
const RSS_GOAL_KIB: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Copier {
    Downloader,
    Gcloud,
    Curl,
    /// No copy: the same number of bytes written, then fsynced: what a naive
    /// durable copy costs on this disk.
    Disk,
}

/// One object under test.
struct Object {
    bucket: String,
    name: String,
    size: u64,
    crc: u32,
    /// The object resource, as a bucket notification carries it.
    resource: Value,
    generation: String,
    /// The request id its job is created with in every run, so that the job
    /// id (part of the object name) is the same in each.
    request_id: String,
    job_id: String,
}

/// Figures of one size.
#[derive(Default)]
struct Measured {
    downloader: Vec<f64>,
    gcloud: Vec<f64>,
    curl: Vec<f64>,
    disk: Vec<f64>,
    peak_kib: Vec<u64>,
}

/// Measures each size in `sizes_mib`, `rounds` times per copier.
pub async fn run(
    ctx: &Context,
    sizes_mib: &[u64],
    rounds: usize,
    report: &mut Report,
) -> Result<()> {
    let gcloud = gcloud_available();
    if !gcloud {
        report.unmeasured(
            "`gcloud storage cp`: the `gcloud` command was not found (install the google-cloud-cli), so the downloader ÷ gcloud ratio is missing",
        );
    }
    let objects = tests::harness::gcs().await;
    let bucket = common::unique_bucket();
    objects
        .ensure_bucket(&bucket)
        .await
        .context("creating the benchmark bucket")?;
    let mut results = Vec::new();
    let mut outcome = Ok(());
    for &mib_count in sizes_mib {
        match measure_size(ctx, &objects, &bucket, mib_count * MIB, rounds, gcloud).await {
            Ok(measured) => results.push((mib_count * MIB, measured)),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    common::delete_bucket(ctx, &bucket).await;
    outcome?;
    tabulate(&results, rounds, gcloud, report);
    Ok(())
}

async fn measure_size(
    ctx: &Context,
    objects: &shared::objects::gcs::GcsObjectStore,
    bucket: &str,
    bytes: u64,
    rounds: usize,
    gcloud: bool,
) -> Result<Measured> {
    common::detail(&format!("uploading a {} object", size(bytes)));
    let object = upload(ctx, objects, bucket, bytes).await?;
    let mut measured = Measured::default();
    let copiers = [
        Copier::Downloader,
        Copier::Gcloud,
        Copier::Curl,
        Copier::Disk,
    ];
    let mut outcome = Ok(());
    'rounds: for round in 0..rounds {
        // Each round starts with another copier, so none always runs on a
        // warmer (or more crowded) machine than the others.
        for i in 0..copiers.len() {
            let copier = copiers[(round + i) % copiers.len()];
            // Every copier starts on a quiet disk: what the upload or the
            // copier before wrote is flushed first, so no copy waits behind
            // another's writeback.
            settle_disk().await;
            let result = match copier {
                Copier::Downloader => downloader_once(ctx, &object).await.map(|(s, peak)| {
                    measured.peak_kib.push(peak);
                    s
                }),
                Copier::Gcloud if gcloud => gcloud_once(ctx, &object).await,
                Copier::Gcloud => continue,
                Copier::Curl => curl_once(ctx, &object).await,
                Copier::Disk => disk_once(ctx, bytes).await,
            };
            if let Ok(seconds) = result {
                match copier {
                    Copier::Downloader => measured.downloader.push(seconds),
                    Copier::Gcloud => measured.gcloud.push(seconds),
                    Copier::Curl => measured.curl.push(seconds),
                    Copier::Disk => measured.disk.push(seconds),
                }
            }
            match result {
                Ok(seconds) => common::detail(&format!(
                    "{} round {}: {copier:?} {:.0} MB/s ({seconds:.2} s)",
                    size(bytes),
                    round + 1,
                    mb_per_s(bytes, seconds)
                )),
                Err(e) => {
                    outcome = Err(e.context(format!("{copier:?} copying {}", size(bytes))));
                    break 'rounds;
                }
            }
        }
    }
    // Frees fake-gcs-server's memory before the next size.
    let _ = objects.delete(bucket, &object.name).await;
    outcome.map(|()| measured)
}

/// Flushes every dirty page to disk (`sync`) and lets the disk go idle.
async fn settle_disk() {
    let _ = tokio::task::spawn_blocking(|| Command::new("sync").status()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Uploads `bytes` of a pattern; returns the object as a notification
/// describes it.
async fn upload(
    ctx: &Context,
    objects: &shared::objects::gcs::GcsObjectStore,
    bucket: &str,
    bytes: u64,
) -> Result<Object> {
    let request_id = format!("bench-copy-{bucket}-{bytes}");
    // The job id follows from the request id alone, whatever the collections.
    let job_id = {
        let prefix = common::unique_prefix();
        let store = ctx.store(&prefix).await;
        let mut new = NewJob::new("a benchmark copy", JobKind::Video);
        new.request_id = Some(request_id.clone());
        store.create_job(new).await?.record.id().to_string()
    };
    let name = format!("videos/{job_id}/bench/sample_0.mp4");
    let len = usize::try_from(bytes)?;
    let data = bytes::Bytes::from(tests::objects::pattern(len));
    let crc = crc32c::crc32c(&data);
    // The adapter's resumable upload takes about 90 s for 1 GiB into
    // fake-gcs-server, which would dominate the run.
    let resource = common::upload_media(ctx, bucket, &name, "video/mp4", data).await?;
    let meta = objects
        .metadata(bucket, &name)
        .await?
        .with_context(|| format!("gs://{bucket}/{name} is not there after its upload"))?;
    ensure!(
        meta.size == bytes && meta.crc32c.0 == crc,
        "fake-gcs-server stored {} bytes with CRC32C {:08x}, not {bytes} with {crc:08x}",
        meta.size,
        meta.crc32c
    );
    Ok(Object {
        bucket: bucket.to_string(),
        name,
        size: bytes,
        crc,
        resource,
        generation: meta.generation.to_string(),
        request_id,
        job_id,
    })
}

/// The Pub/Sub push of the bucket notification for `object`, as the
/// subscription on a notification config delivers it.
fn finalize_push(object: &Object, message_id: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(object.resource.to_string());
    json!({
        "message": {
            "data": data,
            "attributes": {
                "eventType": "OBJECT_FINALIZE",
                "payloadFormat": "JSON_API_V1",
                "bucketId": object.bucket,
                "objectId": object.name,
                "objectGeneration": object.generation,
                "notificationConfig": format!("projects/_/buckets/{}/notificationConfigs/1", object.bucket),
            },
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": chrono::Utc::now().to_rfc3339(),
        },
        "subscription": "projects/asmr-bench/subscriptions/gcs-events-downloader",
    })
    .to_string()
}

/// One copy by a fresh downloader: its job completed in fresh collections,
/// then the finalize push, timed until the answer (the file is in place,
/// size and CRC32C checked, fsynced and renamed, the job delivered).
/// Returns the seconds and the process's peak RSS in KiB.
async fn downloader_once(ctx: &Context, object: &Object) -> Result<(f64, u64)> {
    let prefix = common::unique_prefix();
    let topics: Vec<String> = Topics::new(prefix.clone()).all().to_vec();
    for topic in &topics {
        ctx.pubsub.topic(topic).await?;
    }
    let outcome = downloader_copy(ctx, object, &prefix).await;
    ctx.pubsub.remove(&[], &topics).await;
    outcome
}

async fn downloader_copy(ctx: &Context, object: &Object, prefix: &str) -> Result<(f64, u64)> {
    let store = ctx.store(prefix).await;
    let mut new = NewJob::new("a benchmark copy", JobKind::Video);
    new.request_id = Some(object.request_id.clone());
    let job = store.create_job(new).await?.record;
    ensure!(
        job.id() == object.job_id,
        "the job id changed with the collections"
    );
    let lease = Lease::new("bench", Duration::from_secs(600));
    store.claim_job(job.id(), &lease).await?;
    store
        .complete_job(
            job.id(),
            "bench",
            vec![shared::domain::gs_uri::GsUri {
                bucket: object.bucket.clone(),
                name: object.name.clone(),
            }],
        )
        .await?;
    let destination = ctx.dir("downloader")?;
    let mut env = ctx.stage_env(prefix, &object.bucket);
    env.push((
        "DOWNLOAD_DESTINATION".into(),
        destination.display().to_string(),
    ));
    let mut service = ctx.spawn("downloader", &env)?;
    service.healthy(&ctx.http).await?;
    let body = finalize_push(object, &format!("{prefix}1"));
    let started = Instant::now();
    let response = ctx
        .http
        .post(format!("{}/", service.url))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(600))
        .send()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status();
    if !status.is_success() {
        bail!(
            "the downloader answered {status}: {}\n{}",
            response.text().await.unwrap_or_default(),
            common::tail(&service.log)
        );
    }
    let peak = service.memory_kib("VmHWM")?;
    drop(service);
    let target = destination.join(&object.name);
    let len = std::fs::metadata(&target)
        .with_context(|| format!("{} is not there", target.display()))?
        .len();
    ensure!(len == object.size, "{} has {len} bytes", target.display());
    let job = store.job(job.id()).await?;
    ensure!(
        job.status() == JobStatus::Delivered,
        "the job is {}, not delivered",
        job.status()
    );
    std::fs::remove_dir_all(&destination)?;
    Ok((seconds, peak))
}

fn gcloud_available() -> bool {
    Command::new("gcloud")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `gcloud storage cp gs://BUCKET/NAME FILE` pointed at fake-gcs-server;
/// gcloud checks the CRC32C itself.
async fn gcloud_once(ctx: &Context, object: &Object) -> Result<f64> {
    let destination = ctx.dir("gcloud")?;
    let file = destination.join("copy");
    let mut command = Command::new("gcloud");
    command
        .args(["storage", "cp", "--no-user-output-enabled"])
        .arg(format!("gs://{}/{}", object.bucket, object.name))
        .arg(&file)
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE",
            format!("{}/storage/v1/", ctx.env.storage),
        )
        .env("CLOUDSDK_AUTH_DISABLE_CREDENTIALS", "true")
        .env("CLOUDSDK_CORE_PROJECT", &ctx.env.project)
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1");
    let seconds = timed(command).await?;
    verify(&file, object)?;
    std::fs::remove_dir_all(&destination)?;
    Ok(seconds)
}

/// `curl -o FILE` of the object's media download URL; the file is checked
/// afterwards, outside the time.
async fn curl_once(ctx: &Context, object: &Object) -> Result<f64> {
    let destination = ctx.dir("curl")?;
    let file = destination.join("copy");
    let mut command = Command::new("curl");
    command.args(["-sS", "-f", "-o"]).arg(&file).arg(format!(
        "{}/storage/v1/b/{}/o/{}?alt=media",
        ctx.env.storage,
        object.bucket,
        encode(&object.name)
    ));
    let seconds = timed(command).await?;
    verify(&file, object)?;
    std::fs::remove_dir_all(&destination)?;
    Ok(seconds)
}

/// Runs a command to its end; its wall time in seconds.
async fn timed(mut command: Command) -> Result<f64> {
    let program = command.get_program().to_string_lossy().into_owned();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = command
            .output()
            .with_context(|| format!("running {program}"))?;
        let seconds = started.elapsed().as_secs_f64();
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(seconds)
    })
    .await?
}

/// Checks size and CRC32C of a copied file.
fn verify(file: &Path, object: &Object) -> Result<()> {
    let mut reader =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut buffer = vec![0u8; 8 * 1024 * 1024];
    let (mut crc, mut len) = (0u32, 0u64);
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
        len += n as u64;
    }
    ensure!(
        len == object.size && crc == object.crc,
        "{}: {len} bytes with CRC32C {crc:08x}, expected {} with {:08x}",
        file.display(),
        object.size,
        object.crc
    );
    Ok(())
}

/// Writes and fsyncs `bytes` on the bench's disk, timed.
async fn disk_once(ctx: &Context, bytes: u64) -> Result<f64> {
    let path = ctx.dir("disk")?.join("object");
    let started = Instant::now();
    let written = path.clone();
    tokio::task::spawn_blocking(move || common::write_durably(&written, bytes)).await??;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(seconds)
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds
}

fn tabulate(results: &[(u64, Measured)], rounds: usize, gcloud: bool, report: &mut Report) {
    let largest = results.iter().map(|(bytes, _)| *bytes).max().unwrap_or(0);
    for (bytes, m) in results {
        let downloader = mb_per_s(*bytes, median(&m.downloader));
        let curl = mb_per_s(*bytes, median(&m.curl));
        let gcloud_rate = gcloud.then(|| mb_per_s(*bytes, median(&m.gcloud)));
        let label = size(*bytes);
        report.figure(
            GROUP,
            format!("{label}: downloader / gcloud / curl"),
            format!(
                "{downloader:.0} / {} / {curl:.0} MB/s",
                gcloud_rate.map_or("–".to_string(), |g| format!("{g:.0}"))
            ),
        );
        // The medians hide how much a copy that fsyncs depends on the disk.
        let spread = |times: &[f64]| {
            let slowest = times.iter().copied().fold(0.0, f64::max);
            let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
            format!(
                "{:.0}–{:.0}",
                mb_per_s(*bytes, slowest),
                mb_per_s(*bytes, fastest)
            )
        };
        report.figure(
            GROUP,
            format!("{label}: slowest–fastest of the rounds"),
            format!(
                "{} / {} / {} MB/s",
                spread(&m.downloader),
                if gcloud {
                    spread(&m.gcloud)
                } else {
                    "–".to_string()
                },
                spread(&m.curl)
            ),
        );
        // The goals are about the large copies; at small sizes the fixed
        // costs (gcloud's interpreter start, the job bookkeeping) dominate.
        let is_goal = *bytes == largest;
        if let Some(g) = gcloud_rate {
            let ratio = downloader / g;
            if is_goal {
                report.goal(
                    GROUP,
                    format!("{label}: downloader ÷ gcloud"),
                    format!("{ratio:.2}×"),
                    "≥ 1.0×",
                    ratio >= 1.0,
                );
            } else {
                report.figure(
                    GROUP,
                    format!("{label}: downloader ÷ gcloud"),
                    format!("{ratio:.2}×"),
                );
            }
        }
        if !m.disk.is_empty() {
            let disk = mb_per_s(*bytes, median(&m.disk));
            report.figure(
                GROUP,
                format!("{label}: write then fsync, no network / downloader ÷ that"),
                format!("{disk:.0} MB/s / {:.2}×", downloader / disk),
            );
        }
        let ratio = downloader / curl;
        if is_goal {
            report.goal(
                GROUP,
                format!("{label}: downloader ÷ curl"),
                format!("{ratio:.2}×"),
                "≥ 0.8×",
                ratio >= 0.8,
            );
        } else {
            report.figure(
                GROUP,
                format!("{label}: downloader ÷ curl"),
                format!("{ratio:.2}×"),
            );
        }
        let peak = m.peak_kib.iter().copied().max().unwrap_or(0);
        report.goal(
            GROUP,
            format!("{label}: downloader peak RSS"),
            mib(peak),
            "≤ 64 MiB",
            peak <= RSS_GOAL_KIB,
        );
    }
    let peaks: Vec<u64> = results
        .iter()
        .map(|(_, m)| m.peak_kib.iter().copied().max().unwrap_or(0))
        .collect();
    if let (Some(low), Some(high)) = (peaks.iter().min(), peaks.iter().max())
        && peaks.len() > 1
    {
        let spread = high - low;
        report.goal(
            GROUP,
            "peak RSS spread across sizes",
            format!("{} ({} to {})", mib(spread), mib(*low), mib(*high)),
            "flat: ≤ 8 MiB",
            spread <= 8 * 1024,
        );
    }
    report.note(format!(
        "Downloader: one object per size in fake-gcs-server, uploaded in one JSON API media request; {rounds} rounds, each copier once per round in a rotating order, each copy after a `sync` and half a second of quiet so none waits behind another's writeback; the median counts; MB = 10⁶ bytes. The downloader is a fresh release process per copy, sent the object's finalize notification as a Pub/Sub push (its production path); the time runs from the push to the answer, by which the copy is streamed, its size and CRC32C checked, fsynced, renamed into place and recorded in Firestore (download completed, job delivered). Its peak RSS is `VmHWM` of that process. `gcloud storage cp` (which checks the CRC32C itself, and slices large downloads over parallel connections) and `curl -o` (no check, no fsync) of the JSON API media URL are timed from exec to exit; their files are checked afterwards. Write then fsync: the same number of bytes written in 1 MiB pieces to a new file and fsynced once at the end, no network: what a naive durable copy costs on this disk (the downloader flushes every 32 MiB while it copies, so on large objects it can beat this), while curl's file is still in the page cache when it exits."
    ));
}
