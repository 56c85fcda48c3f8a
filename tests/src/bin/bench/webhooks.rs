//! The `webhooks` group: how soon a job event reaches a tenant's receiver,
//! verified. A batch of dry-run image jobs, each with a webhook for its
//! start, its output and its end, through the release `intake`,
//! `image-generator`, `downloader` and `notifier` on the emulators, to
//! tests/webhook_receiver.py, which checks every signature with the
//! `standardwebhooks` library. The latency of one delivery is from the
//! job's write that raised the event (its `updated_at` in the body) to
//! the receiver's verified receipt.

use crate::common::{self, Context};
use crate::table::{Report, humanize};
use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use shared::bus::Topics;
use shared::domain::tenant::TenantName;
use shared::objects::ObjectStore;
use shared::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GROUP: &str = "Webhooks";
/// The longest the whole batch may take.
const LIMIT: Duration = Duration::from_secs(900);
/// Events per job: start, output, completed.
const EVENTS: usize = 3;

pub async fn run(ctx: &Context, jobs: usize, report: &mut Report) -> Result<()> {
    let objects = tests::harness::gcs().await;
    let prefix = common::unique_prefix();
    let bucket = common::unique_bucket();
    objects.ensure_bucket(&bucket).await?;
    let topics = Topics::new(prefix.clone());
    let topic_names: Vec<String> = topics.all().to_vec();
    for topic in &topic_names {
        ctx.pubsub.topic(topic).await?;
    }
    let subscriptions: Vec<String> = ["requests", "images", "objects", "events"]
        .iter()
        .map(|name| format!("{prefix}{name}"))
        .collect();
    let outcome = measure(ctx, &prefix, &bucket, &topics, &subscriptions, jobs).await;
    ctx.pubsub.remove(&subscriptions, &topic_names).await;
    if let Ok(listed) = objects.list(&bucket, "").await {
        for object in listed {
            let _ = objects.delete(&bucket, &object.name).await;
        }
    }
    common::delete_bucket(ctx, &bucket).await;
    let mut latencies = outcome?;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let ms = |s: f64| format!("{:.0} ms", s * 1000.0);
    report.figure(
        GROUP,
        format!("job event to verified receipt, {jobs} jobs × {EVENTS} events: p50 / p99 / max"),
        format!(
            "{} / {} / {} ({} deliveries, each once, all verified)",
            ms(at(0.5)),
            ms(at(0.99)),
            ms(at(1.0)),
            latencies.len()
        ),
    );
    report.note(format!(
        "Webhooks: one batch request of {jobs} dry-run image prompts, each with a webhook for start, output and completed, is published to the requests topic; the release `intake`, `image-generator`, `downloader` and `notifier` run on the emulators, wired by push subscriptions, to tests/webhook_receiver.py, which verifies every delivery with the standardwebhooks library (PyPI) and answers 204. A delivery's latency runs from the job's write that raised its event (the `updated_at` of the job in the body) to the receiver's verified receipt: the outbox publish, the Pub/Sub push to the notifier (the emulator pushes at most two messages of a subscription at a time), the delivery's record, and the signed POST. The run checks that every event arrived exactly once, verified."
    ));
    Ok(())
}

async fn measure(
    ctx: &Context,
    prefix: &str,
    bucket: &str,
    topics: &Topics,
    subscriptions: &[String],
    jobs: usize,
) -> Result<Vec<f64>> {
    let store = ctx.store(prefix).await;
    let tenant = store
        .tenant_with_webhook_secret(&TenantName::default())
        .await?;
    let secret = tenant.webhook_secrets(Timestamp::now())[0].secret.clone();
    let python = std::env::var("ASMR_TEST_API_PYTHON").context(
        "ASMR_TEST_API_PYTHON names the python with standardwebhooks (tests/run --serve writes it)",
    )?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhook_receiver.py");
    let mut receiver = tests::process::Running(
        Command::new(python)
            .arg(script)
            .arg("--secret")
            .arg(format!("default={secret}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the webhook receiver")?,
    );
    let stdout = receiver.0.stdout.take().context("the receiver's output")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().context("the receiver says its port")??;
    let port: u16 = first
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the receiver said {first:?}"))?;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(std::io::Result::ok) {
            if let Ok(record) = serde_json::from_str(&line) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(record);
            }
        }
    });

    let destination = ctx.dir("webhooks")?;
    let mut env = ctx.stage_env(prefix, bucket);
    env.push(("WEBHOOK_ALLOW_PRIVATE_NETWORKS".into(), "true".into()));
    let mut intake = ctx.spawn("intake", &env)?;
    let mut images = ctx.spawn("image-generator", &env)?;
    let mut downloader_env = env.clone();
    downloader_env.push((
        "DOWNLOAD_DESTINATION".into(),
        destination.display().to_string(),
    ));
    let mut downloader = ctx.spawn("downloader", &downloader_env)?;
    let mut notifier = ctx.spawn("notifier", &env)?;
    for service in [&mut intake, &mut images, &mut downloader, &mut notifier] {
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
        (&subscriptions[3], topics.job_events(), &notifier.url, 90),
    ];
    for (name, topic, url, ack) in wiring {
        ctx.pubsub
            .push(name, &topic, &format!("{url}/"), ack)
            .await?;
    }
    let prompts: Vec<String> = (0..jobs).map(crate::pipeline::prompt).collect();
    let request = json!({
        "kind": "image",
        "prompts": prompts,
        "webhook": format!("http://127.0.0.1:{port}/default/ok"),
        "webhook_events_filter": ["start", "output", "completed"],
    })
    .to_string();
    common::detail(&format!(
        "webhooks: publishing one request of {jobs} prompts"
    ));
    let started = Instant::now();
    ctx.pubsub
        .publish(
            &topics.requests(),
            &[(request.into_bytes(), BTreeMap::new())],
        )
        .await?;
    let expected = jobs * EVENTS;
    let mut last_report = Instant::now();
    loop {
        let received = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
        if received >= expected {
            break;
        }
        if started.elapsed() > LIMIT {
            bail!(
                "only {received} of {expected} webhooks arrived after {}; logs in {}",
                humanize(LIMIT),
                ctx.work.display()
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            common::detail(&format!("webhooks: {received} of {expected} received"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Anything more (a second delivery of an event) would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ids: BTreeSet<&str> = seen.iter().filter_map(|r| r["id"].as_str()).collect();
    ensure!(
        seen.len() == expected && ids.len() == expected,
        "{} requests, {} distinct webhook-ids, for {expected} events",
        seen.len(),
        ids.len()
    );
    let mut latencies = Vec::with_capacity(expected);
    for record in &seen {
        ensure!(record["verified"] == true, "not verified: {record}");
        let written = record["job_updated_at"]
            .as_str()
            .and_then(Timestamp::parse)
            .with_context(|| format!("no updated_at: {record}"))?;
        let (seconds, nanos) = written.unix_parts();
        let written = seconds as f64 + f64::from(nanos) / 1e9;
        let verified = record["verified_at"].as_f64().context("verified_at")?;
        latencies.push((verified - written).max(0.0));
    }
    std::fs::remove_dir_all(&destination)?;
    Ok(latencies)
}
