//! Quota use: a batch of live image jobs through the image-generator binary
//! behind a Pub/Sub push subscription, against the fake Vertex AI accepting
//! N requests per rolling minute and answering 429 beyond. A counting proxy
//! in front of the fake sees every answer.

use crate::common::{self, Context};
use crate::table::{Report, humanize};
use anyhow::{Result, bail, ensure};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use futures::StreamExt;
use shared::bus::Topics;
use shared::domain::job::NewJob;
use shared::domain::tenant::TenantName;
use shared::domain::values::{JobKind, JobStatus};
use shared::store::JobFilter;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tests::fake_vertex::{FakeOptions, FakeVertex};

const GROUP: &str = "Quota use";

/// One answer an upstream gave, when the proxy passed it on, and the
/// prompt of the request when it was a Gemini `generateContent`.
pub(crate) type Seen = (Instant, u16, Option<String>);

/// A proxy in front of one upstream (recording every answer) or several
/// (taking turns, as a load balancer spreads pushes over instances).
pub(crate) struct Proxy {
    upstreams: Vec<String>,
    next: AtomicUsize,
    http: reqwest::Client,
    seen: Mutex<Vec<Seen>>,
}

impl Proxy {
    /// A proxy to `upstreams`, served on a local port: its URL.
    pub(crate) async fn serve(upstreams: Vec<String>) -> (Arc<Self>, String) {
        let proxy = Arc::new(Self {
            upstreams,
            next: AtomicUsize::new(0),
            http: reqwest::Client::new(),
            seen: Mutex::new(Vec::new()),
        });
        let url =
            tests::stages::serve(Router::new().fallback(forward).with_state(proxy.clone())).await;
        (proxy, url)
    }

    /// Every answer so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The prompt of a Gemini `generateContent` body.
fn prompt_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .pointer("/contents/0/parts/0/text")?
        .as_str()
        .map(str::to_string)
}

/// Passes every request to the next upstream and records its answer.
async fn forward(
    State(state): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let turn = state.next.fetch_add(1, Ordering::Relaxed) % state.upstreams.len().max(1);
    let prompt = prompt_of(&body);
    let mut request = state
        .http
        .request(method, format!("{}{path}", state.upstreams[turn]))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = async {
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, body))
    }
    .await;
    match answer {
        Ok((status, headers, body)) => {
            state
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((Instant::now(), status.as_u16(), prompt));
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            for (name, value) in &headers {
                if name != "content-length" && name != "transfer-encoding" {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        Err(e) => {
            let mut response = Response::new(Body::from(format!("proxy: {e}")));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

/// What a quota measurement runs in: the fake Vertex AI at `rpm` behind a
/// counting proxy, a bucket, and this run's topics.
pub(crate) struct Space {
    pub(crate) fake: FakeVertex,
    /// The counting proxy and its URL.
    pub(crate) vertex: (Arc<Proxy>, String),
    objects: shared::objects::gcs::GcsObjectStore,
    pub(crate) prefix: String,
    pub(crate) bucket: String,
    pub(crate) topics: Topics,
}

impl Space {
    pub(crate) async fn open(ctx: &Context, rpm: u32) -> Result<Self> {
        let fake = FakeVertex::start(FakeOptions {
            requests_per_minute: Some(rpm),
            ..FakeOptions::default()
        })
        .await;
        let vertex = Proxy::serve(vec![fake.base_url()]).await;
        let objects = tests::harness::gcs().await;
        let prefix = common::unique_prefix();
        let bucket = common::unique_bucket();
        shared::objects::ObjectStore::ensure_bucket(&objects, &bucket).await?;
        let topics = Topics::new(prefix.clone());
        for topic in topics.all().iter() {
            ctx.pubsub.topic(topic).await?;
        }
        Ok(Self {
            fake,
            vertex,
            objects,
            prefix,
            bucket,
            topics,
        })
    }

    /// The environment of a live `image-generator` here: the stages' own,
    /// calling the fake through the counting proxy.
    pub(crate) fn live_env(&self, ctx: &Context) -> Vec<(String, String)> {
        let mut env = ctx.stage_env(&self.prefix, &self.bucket);
        env.extend(
            [
                ("VERTEX_BASE_URL", self.vertex.1.as_str()),
                ("VERTEX_ACCESS_TOKEN", self.fake.token()),
                ("DRY_RUN", "false"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env
    }

    /// Removes `subscriptions`, the topics, the bucket and its objects.
    pub(crate) async fn close(self, ctx: &Context, subscriptions: &[String]) {
        let topic_names: Vec<String> = self.topics.all().to_vec();
        ctx.pubsub.remove(subscriptions, &topic_names).await;
        let objects = &self.objects;
        if let Ok(listed) = shared::objects::ObjectStore::list(objects, &self.bucket, "").await {
            for object in listed {
                let _ =
                    shared::objects::ObjectStore::delete(objects, &self.bucket, &object.name).await;
            }
        }
        common::delete_bucket(ctx, &self.bucket).await;
    }
}

/// Runs `jobs` live image jobs at `rpm` requests per minute.
pub async fn run(ctx: &Context, rpm: u32, jobs: usize, report: &mut Report) -> Result<()> {
    ensure!(
        jobs > rpm as usize,
        "--quota-jobs ({jobs}) must be more than --quota-rpm ({rpm}), or the quota never binds"
    );
    let space = Space::open(ctx, rpm).await?;
    let subscription = format!("{}images", space.prefix);
    let outcome = measure(ctx, &space, &subscription, rpm, jobs).await;
    space.close(ctx, &[subscription]).await;
    let run = outcome?;
    tabulate(&run, rpm, jobs, report);
    Ok(())
}

/// What one quota run saw.
struct Run {
    /// Publish to the last job settled.
    completion: Duration,
    /// Publish to the first accepted call.
    first_call: Duration,
    /// First to last accepted call.
    span: Duration,
    accepted: usize,
    rejected: usize,
    completed: u64,
    failed: Vec<(String, String)>,
    unfinished: u64,
}

async fn measure(
    ctx: &Context,
    space: &Space,
    subscription: &str,
    rpm: u32,
    jobs: usize,
) -> Result<Run> {
    let (prefix, bucket, topics, state) = (
        &space.prefix,
        &space.bucket,
        &space.topics,
        &*space.vertex.0,
    );
    let env = space.live_env(ctx);
    let mut generator = ctx.spawn("image-generator", &env)?;
    generator.healthy(&ctx.http).await?;
    ctx.pubsub
        .push(
            subscription,
            &topics.image_jobs(),
            &format!("{}/", generator.url),
            600,
        )
        .await?;

    let store = ctx.store(prefix).await;
    common::detail(&format!("creating {jobs} live image jobs"));
    let ids = live_image_jobs(&store, jobs, &TenantName::default()).await?;
    let messages: Vec<(Vec<u8>, BTreeMap<String, String>)> = ids
        .iter()
        .map(|id| {
            (
                serde_json::json!({ "job_id": id }).to_string().into_bytes(),
                BTreeMap::new(),
            )
        })
        .collect();
    let ideal = ideal_span(rpm, jobs);
    let limit = ideal * 4 + Duration::from_secs(180);
    common::detail(&format!(
        "publishing {jobs} job messages; the quota allows it in {} at best, giving up after {}",
        humanize(ideal),
        humanize(limit)
    ));
    let started = Instant::now();
    ctx.pubsub.publish(&topics.image_jobs(), &messages).await?;
    let mut last_report = Instant::now();
    let mut last_janitor = Instant::now();
    let (completed, failed_count) = loop {
        let counts = store.job_counts().await?;
        let completed = counts.status(JobStatus::Completed);
        let failed = counts.status(JobStatus::Failed);
        if (completed + failed) as usize >= jobs || started.elapsed() > limit {
            break (completed, failed);
        }
        // The janitor, every minute: the Pub/Sub emulator stops redelivering
        // a message after three refusals (real Pub/Sub keeps redelivering
        // with back-off, then dead-letters), so waiting jobs come back
        // through the janitor's re-publish of pending jobs idle for
        // LOST_AFTER.
        if last_janitor.elapsed() > Duration::from_secs(60) {
            last_janitor = Instant::now();
            run_janitor(ctx, prefix, bucket).await?;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            let seen = state.seen();
            common::detail(&format!(
                "quota: {completed} completed, {failed} failed; the fake answered {} calls, {} with 429",
                seen.len(),
                seen.iter().filter(|(_, s, _)| *s == 429).count()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let completion = started.elapsed();
    let log = generator.log.clone();
    drop(generator);
    let seen = state.seen();
    // Every answer, for a look at how the retries spread (with --keep).
    let calls: String = seen
        .iter()
        .map(|(t, status, _)| format!("{:.3},{status}\n", t.duration_since(started).as_secs_f64()))
        .collect();
    std::fs::write(
        ctx.work.join("quota-calls.csv"),
        format!("seconds,status\n{calls}"),
    )?;
    let ok: Vec<Instant> = seen
        .iter()
        .filter(|(_, s, _)| *s == 200)
        .map(|(t, _, _)| *t)
        .collect();
    let (Some(first), Some(last)) = (ok.iter().min(), ok.iter().max()) else {
        bail!("the fake accepted no call; {}", common::tail(&log));
    };
    let failed = if failed_count > 0 {
        store
            .list_jobs(
                &JobFilter {
                    status: Some(JobStatus::Failed),
                    ..JobFilter::default()
                },
                1000,
                None,
            )
            .await?
            .items
            .into_iter()
            .map(|job| {
                let error = job
                    .error()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_default();
                (job.id().to_string(), error)
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Run {
        completion,
        first_call: first.duration_since(started),
        span: last.duration_since(*first),
        accepted: ok.len(),
        rejected: seen.iter().filter(|(_, s, _)| *s == 429).count(),
        completed,
        failed,
        unfinished: jobs as u64 - completed - failed_count,
    })
}

/// Creates `jobs` live image jobs of `tenant`, 16 at a time; their ids.
pub(crate) async fn live_image_jobs(
    store: &shared::store::Store,
    jobs: usize,
    tenant: &TenantName,
) -> Result<Vec<String>> {
    Ok(futures::stream::iter(0..jobs)
        .map(|n| async move {
            let prompt = crate::pipeline::prompt(n);
            let mut new = match tenant.is_default() {
                true => NewJob::new(prompt, JobKind::Image),
                false => NewJob::new(format!("{prompt} for {tenant}"), JobKind::Image),
            };
            new.dry_run = false;
            new.tenant = tenant.clone();
            store
                .create_job(new)
                .await
                .map(|created| created.record.id().to_string())
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<shared::error::Result<_>>()?)
}

/// One run of the release `janitor` binary on this run's collections.
pub(crate) async fn run_janitor(ctx: &Context, prefix: &str, bucket: &str) -> Result<()> {
    let mut command = std::process::Command::new(ctx.binary("janitor")?);
    command
        .env_clear()
        .envs(ctx.stage_env(prefix, bucket))
        .env("LOST_AFTER", "60s")
        .env("DEAD_LETTER_MAX", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let status = tokio::task::spawn_blocking(move || command.status()).await??;
    ensure!(status.success(), "the janitor failed");
    Ok(())
}

/// The shortest time from the first accepted call to the last under a quota
/// of `rpm` calls in any rolling minute: the first `rpm` calls at once, the
/// next `rpm` a minute later, and so on.
pub(crate) fn ideal_span(rpm: u32, jobs: usize) -> Duration {
    let windows = jobs.div_ceil(rpm as usize).saturating_sub(1);
    Duration::from_secs(60 * windows as u64)
}

fn tabulate(run: &Run, rpm: u32, jobs: usize, report: &mut Report) {
    let ideal = ideal_span(rpm, jobs);
    let use_share = ideal.as_secs_f64() / run.span.as_secs_f64().max(1e-9);
    let by_rate = Duration::from_secs_f64(jobs as f64 * 60.0 / f64::from(rpm));
    report.figure(
        GROUP,
        format!("{jobs} live image jobs at {rpm} requests/min: completion"),
        format!(
            "{} (ideal {}; first call after {})",
            humanize(run.completion),
            humanize(ideal + run.first_call),
            humanize(run.first_call)
        ),
    );
    report.goal(
        GROUP,
        "quota use: ideal ÷ actual span of accepted calls",
        format!(
            "{:.0} % ({} for {} calls; ideal {})",
            use_share * 100.0,
            humanize(run.span),
            run.accepted,
            humanize(ideal)
        ),
        "≥ 90 %",
        use_share >= 0.9,
    );
    report.figure(
        GROUP,
        "429s answered by the fake",
        format!(
            "{} ({} calls in all; {:.1} per completed job)",
            run.rejected,
            run.rejected + run.accepted,
            run.rejected as f64 / (run.completed.max(1) as f64)
        ),
    );
    let by_quota = run
        .failed
        .iter()
        .filter(|(_, e)| {
            e.contains("rate_limited") || e.contains("429") || e.contains("RESOURCE_EXHAUSTED")
        })
        .count();
    report.goal(
        GROUP,
        "jobs failed (by 429, or any reason)",
        format!(
            "{by_quota} by 429, {} in all ({} completed, {} unfinished)",
            run.failed.len(),
            run.completed,
            run.unfinished
        ),
        "0",
        run.failed.is_empty() && run.unfinished == 0,
    );
    for (id, error) in run.failed.iter().take(3) {
        report.note(format!("A failed quota job: {id}: {error}"));
    }
    report.note(format!(
        "Quota use: the fake Vertex AI accepts {rpm} requests in any rolling minute and answers 429 `RESOURCE_EXHAUSTED` (no `Retry-After`) beyond; {jobs} live image jobs (Gemini `generateContent`) are created in Firestore and their messages published at once to the image topic, pushed to one release `image-generator` (production retry settings: MAX_RETRIES 3, BASE_DELAY 5 s, MAX_DELAY 60 s, QUOTA_WAIT 75 s) by a subscription configured as production's (back-off 10–600 s), with the release `janitor` run every minute (LOST_AFTER 60 s), since the emulator stops redelivering a refused message after three tries. Under a rolling minute the quota lets the calls through in {} at best ({rpm} at once, the rest a minute later); quota use is that ideal over the measured time from the first to the last accepted call, as a counting proxy in front of the fake saw them (at the steady rate of {rpm}/min the batch would take {}).",
        humanize(ideal),
        humanize(by_rate)
    ));
}
