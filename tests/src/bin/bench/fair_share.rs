//! Fair share of a model quota: two tenants' live image jobs through two
//! image-generator instances (a proxy taking turns between them, as Cloud
//! Run spreads requests over instances), against the fake Vertex AI
//! accepting N requests per rolling minute. A big tenant submits its batch;
//! a second later a small one submits a few jobs. Every job message is
//! pushed at once, as a push subscription does after a backlog, and pushed
//! again after a refusal with the subscription's back-off. (The Pub/Sub
//! emulator holds all but a few dozen messages back while those are
//! outstanding, which would measure its delivery order, not the share.)

use crate::common::{self, Context};
use crate::quota::{Proxy, Space, ideal_span, live_image_jobs};
use crate::table::{Report, humanize};
use anyhow::{Result, ensure};
use shared::domain::tenant::{Tenant, TenantName, TenantSettings};
use shared::domain::values::JobStatus;
use shared::store::Store;
use shared::store::tenants::Scope;
use shared::time::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const GROUP: &str = "Fair share";

/// How long a call waits behind a spent quota, as deployed.
const QUOTA_WAIT: Duration = Duration::from_secs(75);

/// Generator instances behind the push endpoint.
const INSTANCES: usize = 2;

/// The push subscription's back-off after a refusal, as deployed.
const PUSH_BACKOFF: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(600));

/// How long a push may take before it counts as refused (the
/// subscription's acknowledgement deadline, as deployed).
const ACK_DEADLINE: Duration = Duration::from_secs(600);

/// One tenant of a case: its name, jobs and weight.
#[derive(Clone, Copy)]
struct Side {
    name: &'static str,
    jobs: usize,
    weight: u32,
}

/// One measured case.
struct Case {
    label: &'static str,
    big: Side,
    small: Option<Side>,
}

/// What one case saw.
struct Run {
    /// Per tenant: its publish to its last job settled.
    done_after: BTreeMap<&'static str, Duration>,
    /// First to last accepted call.
    span: Duration,
    /// Pushes of job messages, redeliveries included.
    pushes: usize,
    accepted: usize,
    rejected: usize,
    /// Jobs whose prompt was accepted other than exactly once.
    not_once: usize,
    completed: u64,
    failed: u64,
    unfinished: u64,
    /// Of the first `rpm` calls accepted after the small tenant submitted,
    /// how many were its own.
    small_in_first_window: Option<usize>,
}

/// Runs the three cases at `rpm` requests per minute: equal weights, 3:1,
/// and the big tenant alone.
pub async fn run(ctx: &Context, rpm: u32, report: &mut Report) -> Result<()> {
    let (big, small) = (60, 6);
    let cases = [
        Case {
            label: "equal weights",
            big: Side {
                name: "alpha",
                jobs: big,
                weight: 1,
            },
            small: Some(Side {
                name: "beta",
                jobs: small,
                weight: 1,
            }),
        },
        Case {
            label: "weights 3:1",
            big: Side {
                name: "alpha",
                jobs: big,
                weight: 3,
            },
            small: Some(Side {
                name: "beta",
                jobs: small,
                weight: 1,
            }),
        },
        Case {
            label: "one tenant alone",
            big: Side {
                name: "alpha",
                jobs: big + small,
                weight: 1,
            },
            small: None,
        },
    ];
    for case in &cases {
        common::progress(&format!("fair share: {}", case.label));
        let run = run_case(ctx, rpm, case).await?;
        tabulate(case, &run, rpm, report);
    }
    report.note(format!(
        "Fair share: the fake Vertex AI accepts {rpm} requests in any rolling minute and answers 429 beyond; tenants `alpha` and `beta` are stored with their weights, their live image jobs (Gemini `generateContent`, one call each) created in Firestore; alpha's job messages are pushed at once, beta's one second later, to a proxy that takes turns between {INSTANCES} release `image-generator` processes (production retry settings, QUOTA_WAIT 75 s), and a refused push is pushed again with the production subscription's back-off (10 s doubling to 600 s), as a push subscription delivers a backlog (the Pub/Sub emulator holds all but a few dozen messages back while those are outstanding, so it would measure its own delivery order). A tenant is done when its last job settles, measured from its own publish; its ideal is its jobs at its weight's share of the quota; the goal is twice that plus one QUOTA_WAIT. Quota use is the ideal span of all accepted calls under a rolling minute over the measured span; a counting proxy in front of the fake reads each call's prompt, so every job's accepted calls are counted (one paid call per job)."
    ));
    Ok(())
}

async fn add_tenant(store: &Store, side: &Side) -> Result<TenantName> {
    let name: TenantName = side.name.parse()?;
    let settings = TenantSettings {
        weight: Some(side.weight),
        ..TenantSettings::default()
    };
    store
        .add_tenant(Tenant::new(name.clone(), &settings, Timestamp::now())?)
        .await?;
    Ok(name)
}

/// Pushes the message of each of `ids` to `url` at once, each again after a
/// refusal with the subscription's back-off, until it is accepted or
/// `stop` is set. Counts every push.
fn push_all(
    http: &reqwest::Client,
    url: &str,
    ids: &[String],
    pushes: &Arc<AtomicUsize>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    ids.iter()
        .map(|id| {
            let (http, url) = (http.clone(), url.to_string());
            let (pushes, stop) = (pushes.clone(), stop.clone());
            let data = serde_json::json!({ "job_id": id }).to_string();
            let message_id = format!("push-{id}");
            tokio::spawn(async move {
                let body =
                    tests::http::push_envelope(&message_id, data.as_bytes(), &BTreeMap::new());
                let mut backoff = PUSH_BACKOFF.0;
                while !stop.load(Ordering::Relaxed) {
                    pushes.fetch_add(1, Ordering::Relaxed);
                    let answer = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .timeout(ACK_DEADLINE)
                        .body(body.clone())
                        .send()
                        .await;
                    if answer.is_ok_and(|a| a.status().is_success()) {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(PUSH_BACKOFF.1);
                }
            })
        })
        .collect()
}

async fn run_case(ctx: &Context, rpm: u32, case: &Case) -> Result<Run> {
    let space = Space::open(ctx, rpm).await?;
    let outcome = measure(ctx, rpm, case, &space).await;
    space.close(ctx, &[]).await;
    outcome
}

async fn measure(ctx: &Context, rpm: u32, case: &Case, space: &Space) -> Result<Run> {
    let (prefix, vertex) = (&space.prefix, &*space.vertex.0);
    let store = ctx.store(prefix).await;
    let sides: Vec<Side> = std::iter::once(case.big).chain(case.small).collect();
    for side in &sides {
        add_tenant(&store, side).await?;
    }
    let env = space.live_env(ctx);
    let mut generators = Vec::new();
    for _ in 0..INSTANCES {
        let mut generator = ctx.spawn("image-generator", &env)?;
        generator.healthy(&ctx.http).await?;
        generators.push(generator);
    }
    let (_balancer, balancer_url) =
        Proxy::serve(generators.iter().map(|g| g.url.clone()).collect()).await;
    let endpoint = format!("{balancer_url}/");

    let mut batches = Vec::new();
    for side in &sides {
        batches.push(live_image_jobs(&store, side.jobs, &side.name.parse()?).await?);
    }
    let total: usize = sides.iter().map(|s| s.jobs).sum();
    let limit = ideal_span(rpm, total) * 4 + Duration::from_secs(180);
    common::detail(&format!(
        "{}: {}; giving up after {}",
        case.label,
        sides
            .iter()
            .map(|s| format!("{} submits {} jobs at weight {}", s.name, s.jobs, s.weight))
            .collect::<Vec<_>>()
            .join(", then "),
        humanize(limit)
    ));
    let started = Instant::now();
    let mut published: HashMap<&'static str, Instant> = HashMap::new();
    let (pushes, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut pushers = Vec::new();
    for (n, (side, ids)) in sides.iter().zip(&batches).enumerate() {
        if n > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        published.insert(side.name, Instant::now());
        pushers.extend(push_all(&ctx.http, &endpoint, ids, &pushes, &stop));
    }

    let mut done_after: BTreeMap<&'static str, Duration> = BTreeMap::new();
    let mut last_report = Instant::now();
    let (mut completed, mut failed) = (0, 0);
    while done_after.len() < sides.len() && started.elapsed() < limit {
        (completed, failed) = (0, 0);
        for side in &sides {
            let counts = store
                .job_counts_in(&Scope::Tenant(side.name.parse()?))
                .await?;
            let (ok, bad) = (
                counts.status(JobStatus::Completed),
                counts.status(JobStatus::Failed),
            );
            (completed, failed) = (completed + ok, failed + bad);
            if (ok + bad) as usize >= side.jobs && !done_after.contains_key(side.name) {
                done_after.insert(side.name, published[side.name].elapsed());
            }
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            common::detail(&format!(
                "{completed} completed, {failed} failed; done: {done_after:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for pusher in pushers {
        pusher.abort();
    }
    drop(generators);
    let seen = vertex.seen();
    let calls: String = seen
        .iter()
        .map(|(t, status, prompt)| {
            let tenant = prompt
                .as_deref()
                .and_then(|p| p.rsplit(" for ").next())
                .unwrap_or("");
            format!(
                "{:.3},{status},{tenant}\n",
                t.duration_since(started).as_secs_f64()
            )
        })
        .collect();
    std::fs::write(
        ctx.work
            .join(format!("fair-share-{}.csv", case.label.replace(' ', "-"))),
        format!("seconds,status,tenant\n{calls}"),
    )?;
    let accepted: Vec<&(Instant, u16, Option<String>)> =
        seen.iter().filter(|(_, s, _)| *s == 200).collect();
    ensure!(!accepted.is_empty(), "the fake accepted no call");
    let first = accepted.iter().map(|(t, _, _)| *t).min().unwrap_or(started);
    let last = accepted.iter().map(|(t, _, _)| *t).max().unwrap_or(started);
    let mut per_prompt: HashMap<&str, usize> = HashMap::new();
    for (_, _, prompt) in &accepted {
        *per_prompt
            .entry(prompt.as_deref().unwrap_or(""))
            .or_default() += 1;
    }
    let not_once =
        per_prompt.values().filter(|n| **n != 1).count() + total.saturating_sub(per_prompt.len());
    let small_in_first_window = case.small.map(|small| {
        let since = published[small.name];
        let suffix = format!(" for {}", small.name);
        let mut after: Vec<&&(Instant, u16, Option<String>)> =
            accepted.iter().filter(|(t, _, _)| *t >= since).collect();
        after.sort_by_key(|(t, _, _)| *t);
        after
            .iter()
            .take(rpm as usize)
            .filter(|(_, _, p)| p.as_deref().is_some_and(|p| p.ends_with(&suffix)))
            .count()
    });
    Ok(Run {
        done_after,
        span: last.duration_since(first),
        pushes: pushes.load(Ordering::Relaxed),
        accepted: accepted.len(),
        rejected: seen.iter().filter(|(_, s, _)| *s == 429).count(),
        not_once,
        completed,
        failed,
        unfinished: (total as u64).saturating_sub(completed + failed),
        small_in_first_window,
    })
}

fn tabulate(case: &Case, run: &Run, rpm: u32, report: &mut Report) {
    let sides: Vec<Side> = std::iter::once(case.big).chain(case.small).collect();
    let total: usize = sides.iter().map(|s| s.jobs).sum();
    let weights: u32 = sides.iter().map(|s| s.weight).sum();
    let label = case.label;
    for side in &sides {
        // Its jobs at its weight's share of the quota.
        let share = f64::from(side.weight) / f64::from(weights);
        let ideal = Duration::from_secs_f64(side.jobs as f64 * 60.0 / (f64::from(rpm) * share));
        let took = run.done_after.get(side.name).copied();
        let text = match took {
            Some(took) => format!(
                "{} for {} jobs (ideal at its share {}; weight {} of {weights})",
                humanize(took),
                side.jobs,
                humanize(ideal),
                side.weight
            ),
            None => format!("not done ({} jobs)", side.jobs),
        };
        if case.small.is_some_and(|small| small.name == side.name) {
            let bound = ideal * 2 + QUOTA_WAIT;
            report.goal(
                GROUP,
                format!("{label}: {} (the small tenant) done after", side.name),
                text,
                format!("≤ {}", humanize(bound)),
                took.is_some_and(|t| t <= bound),
            );
        } else {
            report.figure(GROUP, format!("{label}: {} done after", side.name), text);
        }
    }
    if let Some(mine) = run.small_in_first_window {
        report.figure(
            GROUP,
            format!("{label}: the small tenant's calls among the first {rpm} accepted after it submitted"),
            mine.to_string(),
        );
    }
    let ideal = ideal_span(rpm, total);
    let use_share = ideal.as_secs_f64() / run.span.as_secs_f64().max(1e-9);
    report.goal(
        GROUP,
        format!("{label}: quota use (ideal ÷ span of accepted calls)"),
        format!(
            "{:.0} % ({} for {} calls; ideal {}; {} answers 429; {} pushes)",
            use_share * 100.0,
            humanize(run.span),
            run.accepted,
            humanize(ideal),
            run.rejected,
            run.pushes
        ),
        "≥ 95 %",
        use_share >= 0.95,
    );
    report.goal(
        GROUP,
        format!("{label}: jobs failed or unfinished; jobs not paid exactly once"),
        format!(
            "{} failed, {} unfinished ({} completed); {} not paid exactly once",
            run.failed, run.unfinished, run.completed, run.not_once
        ),
        "0; 0",
        run.failed == 0 && run.unfinished == 0 && run.not_once == 0,
    );
}
