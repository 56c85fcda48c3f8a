//! Pipeline overhead in dry run: jobs per second end to end, for `asmr run`
//! (everything in one process on the embedded store) and for the emulator
//! topology (intake → image-generator → bucket notification → downloader,
//! each its release binary behind a Pub/Sub push subscription).

use crate::common::{self, Context};
use crate::table::{Report, humanize};
use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use shared::bus::Topics;
use shared::domain::values::JobStatus;
use shared::objects::ObjectStore;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const GROUP: &str = "Pipeline (dry run)";

/// Longest the topology may take to deliver every job.
const TOPOLOGY_LIMIT: Duration = Duration::from_secs(300);

/// Measures both.
pub async fn run(
    ctx: &Context,
    run_prompts: usize,
    topology_jobs: usize,
    report: &mut Report,
) -> Result<()> {
    local_run(ctx, run_prompts, report).await?;
    topology(ctx, topology_jobs, report).await
}

/// A prompt of the benchmark batches.
pub fn prompt(n: usize) -> String {
    format!("Benchmark prompt {n}: rain on a tin roof, close microphone")
}

async fn local_run(ctx: &Context, prompts: usize, report: &mut Report) -> Result<()> {
    let dir = ctx.dir("asmr-run")?;
    let file = dir.join("prompts.txt");
    let text: String = (0..prompts).map(|n| prompt(n) + "\n").collect();
    std::fs::write(&file, text)?;
    common::detail(&format!("asmr run over {prompts} prompts"));
    let mut command = Command::new(ctx.binary("asmr")?);
    command
        .env_clear()
        .current_dir(&dir)
        .arg("--state-dir")
        .arg(dir.join(".asmr"))
        .arg("run")
        .arg(&file)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--json");
    let (seconds, stdout) = tokio::task::spawn_blocking(move || -> Result<(f64, Vec<u8>)> {
        let started = Instant::now();
        let output = command.output().context("running asmr run")?;
        let seconds = started.elapsed().as_secs_f64();
        if !output.status.success() {
            bail!(
                "asmr run failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok((seconds, output.stdout))
    })
    .await??;
    let json: Value = serde_json::from_slice(&stdout).context("reading asmr run --json")?;
    let delivered = json["statuses"]["delivered"].as_u64().unwrap_or(0);
    ensure!(
        delivered == prompts as u64,
        "asmr run delivered {delivered} of {prompts} jobs: {json}"
    );
    let own = json["jobs_per_second"].as_f64().unwrap_or(f64::NAN);
    common::detail(&format!(
        "asmr run: {own:.1} jobs/s by its own report, {:.1} jobs/s exec to exit",
        prompts as f64 / seconds
    ));
    report.figure(
        GROUP,
        format!("`asmr run`, {prompts} image prompts, embedded"),
        format!(
            "{own:.1} jobs/s ({:.1} jobs/s exec to exit, {})",
            prompts as f64 / seconds,
            humanize(Duration::from_secs_f64(seconds))
        ),
    );
    std::fs::remove_dir_all(&dir)?;
    report.note(format!(
        "`asmr run`: the release `asmr run FILE --json` over {prompts} distinct image prompts in a fresh state directory (dry run: a placeholder PNG per job, CRC32C-checked copy, job delivered); the first figure is its own report (jobs brought to a terminal status per second of the run), the second counts the whole process from exec to exit."
    ));
    Ok(())
}

async fn topology(ctx: &Context, jobs: usize, report: &mut Report) -> Result<()> {
    let objects = tests::harness::gcs().await;
    let prefix = common::unique_prefix();
    let bucket = common::unique_bucket();
    objects.ensure_bucket(&bucket).await?;
    let topics = Topics::new(prefix.clone());
    let topic_names: Vec<String> = topics.all().to_vec();
    for topic in &topic_names {
        ctx.pubsub.topic(topic).await?;
    }
    let subscriptions = vec![
        format!("{prefix}requests"),
        format!("{prefix}images"),
        format!("{prefix}objects"),
    ];
    let outcome = topology_run(ctx, &prefix, &bucket, &topics, &subscriptions, jobs).await;
    ctx.pubsub.remove(&subscriptions, &topic_names).await;
    if let Ok(listed) = objects.list(&bucket, "").await {
        for object in listed {
            let _ = objects.delete(&bucket, &object.name).await;
        }
    }
    common::delete_bucket(ctx, &bucket).await;
    let (seconds, stages) = outcome?;
    let rate = jobs as f64 / seconds;
    common::detail(&format!(
        "topology: {jobs} jobs delivered in {seconds:.1} s"
    ));
    report.figure(
        GROUP,
        format!("emulator topology, {jobs} image prompts"),
        format!(
            "{rate:.1} jobs/s ({} from publish to the last job delivered)",
            humanize(Duration::from_secs_f64(seconds))
        ),
    );
    report.figure(
        GROUP,
        "emulator topology: every job created / generated / delivered after",
        {
            let steps = [
                ("intake", stages.created),
                (
                    "image-generator",
                    stages.generated.saturating_sub(stages.created),
                ),
                (
                    "downloader",
                    stages.delivered.saturating_sub(stages.generated),
                ),
            ];
            let (slowest, _) = steps
                .iter()
                .max_by_key(|(_, d)| *d)
                .copied()
                .unwrap_or(("-", Duration::ZERO));
            format!(
                "{:.1} / {:.1} / {:.1} s: the {slowest} sets the pace ({:.1} jobs/s through it)",
                stages.created.as_secs_f64(),
                stages.generated.as_secs_f64(),
                stages.delivered.as_secs_f64(),
                jobs as f64
                    / match slowest {
                        "intake" => stages.created,
                        "image-generator" => stages.generated,
                        _ => stages.delivered,
                    }
                    .as_secs_f64(),
            )
        },
    );
    report.note(format!(
        "Emulator topology: the release `intake`, `image-generator` and `downloader` (dry run) on the Firestore and Pub/Sub emulators and fake-gcs-server, wired by push subscriptions configured as terraform configures production's (ack deadline = request timeout, back-off 10–600 s) and by fake-gcs-server's own bucket notifications; one batch request of {jobs} prompts is published to the requests topic, and the time runs until the store counts every job delivered (polled every 250 ms). The same polls note when every job exists, when every job is generated and when every job is delivered; the stage that adds the most time sets the pace. The Pub/Sub emulator pushes at most two messages of a subscription at a time, so each stage here runs two jobs at once: the topology's rate is two over the slowest stage's time per job (Cloud Run and Pub/Sub run many at once)."
    ));
    Ok(())
}

async fn topology_run(
    ctx: &Context,
    prefix: &str,
    bucket: &str,
    topics: &Topics,
    subscriptions: &[String],
    jobs: usize,
) -> Result<(f64, StageTimes)> {
    let destination = ctx.dir("topology")?;
    let env = ctx.stage_env(prefix, bucket);
    let mut intake = ctx.spawn("intake", &env)?;
    let mut images = ctx.spawn("image-generator", &env)?;
    let mut downloader_env = env.clone();
    downloader_env.push((
        "DOWNLOAD_DESTINATION".into(),
        destination.display().to_string(),
    ));
    let mut downloader = ctx.spawn("downloader", &downloader_env)?;
    for service in [&mut intake, &mut images, &mut downloader] {
        service.healthy(&ctx.http).await?;
    }
    let wiring = [
        (&subscriptions[0], topics.requests(), &intake.url, 120),
        (&subscriptions[1], topics.image_jobs(), &images.url, 600),
        (
            &subscriptions[2],
            ctx.env.gcs_events_topic.clone(),
            &downloader.url,
            600,
        ),
    ];
    for (name, topic, url, ack) in wiring {
        ctx.pubsub
            .push(name, &topic, &format!("{url}/"), ack)
            .await?;
    }
    let store = ctx.store(prefix).await;
    let prompts: Vec<String> = (0..jobs).map(prompt).collect();
    let request = json!({"kind": "image", "prompts": prompts}).to_string();
    common::detail(&format!(
        "topology: publishing one request of {jobs} prompts"
    ));
    let started = Instant::now();
    ctx.pubsub
        .publish(
            &topics.requests(),
            &[(request.into_bytes(), BTreeMap::new())],
        )
        .await?;
    let mut last_report = Instant::now();
    let (mut all_created, mut all_generated) = (None, None);
    loop {
        let counts = store.job_counts().await?;
        let delivered = counts.status(JobStatus::Delivered);
        let failed = counts.status(JobStatus::Failed);
        if all_created.is_none() && counts.total() as usize >= jobs {
            all_created = Some(started.elapsed());
        }
        let generated = counts.status(JobStatus::Completed) + delivered;
        if all_generated.is_none() && generated as usize >= jobs {
            all_generated = Some(started.elapsed());
        }
        if delivered as usize >= jobs {
            break;
        }
        if failed > 0 {
            bail!(
                "{failed} jobs failed in the dry-run topology; logs in {}",
                ctx.work.display()
            );
        }
        if started.elapsed() > TOPOLOGY_LIMIT {
            bail!(
                "only {delivered} of {jobs} jobs were delivered after {}",
                humanize(TOPOLOGY_LIMIT)
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            common::detail(&format!(
                "topology: {} jobs, {delivered} delivered",
                counts.total()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();
    let seconds = elapsed.as_secs_f64();
    let stages = StageTimes {
        created: all_created.unwrap_or(elapsed),
        generated: all_generated.unwrap_or(elapsed),
        delivered: elapsed,
    };
    let files = walk_count(&destination);
    ensure!(
        files == jobs,
        "{files} files were delivered for {jobs} jobs"
    );
    std::fs::remove_dir_all(&destination)?;
    Ok((seconds, stages))
}

/// When each stage had done its part for every job, from the publish
/// (sampled with the counts, every 250 ms).
struct StageTimes {
    created: Duration,
    generated: Duration,
    delivered: Duration,
}

/// Files under a directory, its manifest left out.
fn walk_count(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk_count(&path)
            } else {
                usize::from(entry.file_name() != shared::manifest::MANIFEST_NAME)
            }
        })
        .sum()
}
