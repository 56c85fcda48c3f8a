//! `asmr run FILE`: the whole pipeline in this process (see
//! [`shared::local_run`]), with a progress bar per stage and a report at the
//! end.

use crate::args::RunArgs;
use crate::out;
use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use shared::config::{Backend, StoreArgs};
use shared::cost::format_usd;
use shared::domain::tenant::TenantName;
use shared::domain::values::{JobKind, JobStatus, wait_advice};
use shared::error::Error;
use shared::local_run::{Live, Progress, RunReport, RunSettings, SpendCap, Waiting};
use shared::vertex::RetryPolicy;
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub async fn run(store: &StoreArgs, tenant: &TenantName, args: RunArgs) -> Result<()> {
    if store.backend != Backend::Embedded {
        bail!("`asmr run` keeps its state in --state-dir; it does not run on --backend firestore");
    }
    let kind: JobKind = args.kind.parse().map_err(Error::from)?;
    let prompts = super::read_input(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    if args.chain && kind != JobKind::Image {
        bail!("--chain makes videos of images; it needs --kind image");
    }
    let out_dir = shared::local_run::run_folder(&args.out, &args.file, &prompts, kind, args.chain);
    // Deliveries record where each file went: an absolute path still finds
    // it when a later command (`asmr report`, `asmr manifest`) runs from
    // another folder.
    let delivery_root =
        super::absolute(&out_dir).with_context(|| format!("resolving {}", out_dir.display()))?;
    let mut settings = RunSettings::dry_run(prompts, kind, delivery_root, store.state_dir.clone());
    settings.chain = args.chain;
    settings.tenant = tenant.clone();
    settings.image_workers = args.image_workers.into();
    settings.video_workers = args.video_workers.into();
    settings.download_workers = args.download_workers.into();
    settings.polling_interval = args.vertex.polling_interval;
    if args.live {
        // The list price depends on the live models, so they are set first.
        settings.live = Some(live(store, &args, SpendCap::Run(0))?);
        let cap = match args.budget {
            Some(budget) => {
                out::note(format_args!(
                    "asmr: paid calls may spend at most {} today (--budget)",
                    format_usd(budget)
                ));
                SpendCap::Daily(budget)
            }
            None => {
                let run = shared::local_run::list_price(&settings);
                out::note(format_args!(
                    "asmr: no --budget: this run may spend at most {} more today, its jobs once each at list prices; pass --budget USD to set a daily budget instead",
                    format_usd(run)
                ));
                SpendCap::Run(run)
            }
        };
        settings.live = Some(live(store, &args, cap)?);
    }
    out::note(format_args!(
        "asmr: local run of {} ({} jobs, {}), state in {}, files to {}",
        args.file.display(),
        kind,
        if args.live {
            "live: Vertex AI is called and billed"
        } else {
            "dry run: placeholders, no model calls"
        },
        store.state_dir.display(),
        out_dir.display(),
    ));

    let bars = Bars::new();
    let interrupt = || async {
        // If the handler cannot be installed, the run simply cannot be
        // interrupted gracefully; the next run still resumes it.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let report = shared::local_run::run(settings, |p| bars.update(p), interrupt).await?;
    bars.finish();
    if args.json {
        out::json_pretty(&report_json(&report))?;
    } else {
        out::text(&render(&report))?;
    }
    if report.interrupted {
        bail!(
            "interrupted; run the same command again to finish the unfinished jobs (state in {})",
            report.state_dir.display()
        );
    }
    if report.over_budget > 0 {
        bail!(
            "{} {} not made: paying for {} would pass the spending cap; run the same command again with a larger --budget USD (nothing is paid twice)",
            report.over_budget,
            if report.over_budget == 1 {
                "job was"
            } else {
                "jobs were"
            },
            if report.over_budget == 1 {
                "it"
            } else {
                "them"
            },
        );
    }
    Ok(())
}

fn live(store: &StoreArgs, args: &RunArgs, cap: SpendCap) -> Result<Live> {
    let Some(project) = store
        .project
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    else {
        bail!("--live calls Vertex AI in a project: pass --project or set GOOGLE_CLOUD_PROJECT");
    };
    Ok(Live {
        vertex: args.vertex.config(
            project.to_string(),
            RetryPolicy::default(),
            Duration::from_secs(120),
        ),
        bucket: args.bucket.clone(),
        cap,
    })
}

/// One bar per stage, and a line per reason jobs wait for, with the
/// count, the last error and what to do; drawn only on a terminal.
/// Elsewhere (a log, a pipe) each reason is written to stderr when it
/// appears and when its count changes, at most every [`WAIT_NOTE_EVERY`].
struct Bars {
    multi: MultiProgress,
    generated: ProgressBar,
    delivered: ProgressBar,
    waiting: Mutex<BTreeMap<String, Reason>>,
    drawn: bool,
}

/// The line of one reason jobs wait for.
struct Reason {
    bar: ProgressBar,
    noted: Option<(u64, Instant)>,
}

/// How often a changing count of waiting jobs is written again to a stderr
/// that is not a terminal.
const WAIT_NOTE_EVERY: Duration = Duration::from_secs(5);

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let bar = |name: &str| {
            let bar = multi.add(ProgressBar::new(0));
            if let Ok(style) = ProgressStyle::with_template(&format!(
                "{name:>9} {{bar:40}} {{pos}}/{{len}} {{msg}}"
            )) {
                bar.set_style(style);
            }
            bar
        };
        Self {
            generated: bar("generate"),
            delivered: bar("deliver"),
            drawn: !multi.is_hidden(),
            multi,
            waiting: Mutex::new(BTreeMap::new()),
        }
    }

    fn update(&self, p: &Progress) {
        for bar in [&self.generated, &self.delivered] {
            bar.set_length(p.total);
        }
        self.generated.set_position(p.generated);
        self.delivered.set_position(p.delivered);
        if p.failed > 0 {
            self.generated.set_message(format!("{} failed", p.failed));
        }
        self.show_waiting(&p.waiting);
    }

    fn show_waiting(&self, now: &BTreeMap<String, Waiting>) {
        let mut lines = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        lines.retain(|reason, line| {
            let still = now.contains_key(reason);
            if !still {
                line.bar.finish_and_clear();
            }
            still
        });
        for (reason, waiting) in now {
            let text = wait_line(reason, waiting.jobs, waiting.error.as_deref());
            let line = lines.entry(reason.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(0));
                if let Ok(style) = ProgressStyle::with_template("{msg}") {
                    bar.set_style(style);
                }
                Reason { bar, noted: None }
            });
            line.bar.set_message(text.clone());
            if self.drawn {
                continue;
            }
            let due = match line.noted {
                None => true,
                Some((jobs, at)) => jobs != waiting.jobs && at.elapsed() >= WAIT_NOTE_EVERY,
            };
            if due {
                out::note(format_args!("asmr: {}", text.trim_start()));
                line.noted = Some((waiting.jobs, Instant::now()));
            }
        }
    }

    fn finish(&self) {
        self.generated.finish();
        self.delivered.finish();
        let lines = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        for line in lines.values() {
            line.bar.finish_and_clear();
        }
    }
}

/// One reason jobs wait for, as the run shows it: `waiting (misconfigured):
/// 2 jobs; the model refused this caller...; last error: ...`.
fn wait_line(reason: &str, jobs: u64, error: Option<&str>) -> String {
    let mut line = format!(
        "{:>9} ({reason}): {jobs} {}; {}",
        "waiting",
        if jobs == 1 { "job" } else { "jobs" },
        wait_advice(reason)
    );
    if let Some(error) = error {
        line.push_str("; last error: ");
        line.push_str(&out::one_line(error, 400));
    }
    line
}

fn render(report: &RunReport) -> String {
    let mut table = out::Table::new(&["status", "jobs"]).right(&[1]);
    for status in JobStatus::ALL {
        if let Some(n) = report.statuses.get(&status) {
            table.row(vec![status.to_string(), n.to_string()]);
        }
    }
    table.row(vec!["total".into(), report.jobs().to_string()]);
    let mut text = table.render();
    for (reason, jobs) in &report.waiting {
        text.push_str(&wait_line(reason, *jobs, None));
        text.push('\n');
    }
    let created = format!(
        "\n{} created, {} already there from an earlier run, {} resumed after an interruption\n",
        report.created, report.existing, report.resumed
    );
    text.push_str(&created);
    for skipped in &report.skipped {
        text.push_str(&format!(
            "line {} skipped: {}\n",
            skipped.line, skipped.reason
        ));
    }
    for (id, reason) in &report.failures {
        text.push_str(&format!("job {id}: {}\n", out::one_line(reason, 160)));
    }
    if let Some(sheet) = &report.sheet {
        text.push_str(&format!("contact sheet: {}\n", sheet.display()));
    }
    text.push_str(&format!(
        "{} files in {}\n{:.1} s, {:.1} jobs/s, {} job events\n",
        report.files,
        report.out_dir.display(),
        report.elapsed.as_secs_f64(),
        report.jobs_per_second(),
        report.events,
    ));
    text
}

fn report_json(report: &RunReport) -> serde_json::Value {
    let statuses: serde_json::Map<String, serde_json::Value> = report
        .statuses
        .iter()
        .map(|(status, n)| (status.to_string(), json!(n)))
        .collect();
    json!({
        "jobs": report.jobs(),
        "statuses": statuses,
        "created": report.created,
        "existing": report.existing,
        "resumed": report.resumed,
        "skipped": report.skipped.iter().map(|s| json!({"line": s.line, "reason": s.reason})).collect::<Vec<_>>(),
        "failures": report.failures.iter().map(|(id, reason)| json!({"job_id": id, "reason": reason})).collect::<Vec<_>>(),
        "files": report.files,
        "events": report.events,
        "elapsed_seconds": report.elapsed.as_secs_f64(),
        "jobs_per_second": report.jobs_per_second(),
        "interrupted": report.interrupted,
        "over_budget": report.over_budget,
        "waiting": report.waiting,
        "out_dir": report.out_dir,
        "report": report.sheet,
        "state_dir": report.state_dir,
    })
}
