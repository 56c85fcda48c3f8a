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
use shared::domain::values::{JobKind, JobStatus};
use shared::error::Error;
use shared::local_run::{Live, Progress, RunReport, RunSettings, SpendCap};
use shared::vertex::RetryPolicy;
use std::time::Duration;

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

/// One bar per stage; drawn only on a terminal.
struct Bars {
    _multi: MultiProgress,
    generated: ProgressBar,
    delivered: ProgressBar,
}

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
            _multi: multi,
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
    }

    fn finish(&self) {
        self.generated.finish();
        self.delivered.finish();
    }
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
        "out_dir": report.out_dir,
        "report": report.sheet,
        "state_dir": report.state_dir,
    })
}
