//! `bench`: the benchmarks of the pipeline, run on the local emulators with
//! the release binaries, printed as one markdown table (and written to a
//! file with `--out`). `tests/bench` builds everything, starts the emulators
//! and runs this; see `bench --help`.
//!
//! The groups, each measured side by side within the same run:
//! - `small-files`: the real workload, hundreds of 1.5 MiB images and some
//!   20 MiB videos, each of its own job, delivered by the downloader behind
//!   a push subscription and at Cloud Run-like concurrency, against
//!   `gcloud storage cp -r` and five parallel `curl`s; also into a bucket;
//! - `download`: one object copied from fake-gcs-server by the downloader,
//!   by `gcloud storage cp` and by `curl`, at several sizes; MB/s, ratios,
//!   the downloader's peak RSS;
//! - `quota`: a batch of live image jobs through the image-generator binary
//!   behind a Pub/Sub push subscription, against the fake Vertex AI limited
//!   to N requests per minute;
//! - `fair-share`: two tenants' live image jobs through two image-generator
//!   instances behind one push subscription, at a small quota: how soon the
//!   small tenant is done, quota use, one paid call per job;
//! - `pipeline`: dry-run jobs per second of `asmr run` and of the emulator
//!   topology (intake → image-generator → bucket notification → downloader);
//! - `webhooks`: dry-run jobs with webhooks through intake, the generator,
//!   the downloader and the notifier to a receiver that verifies every
//!   signature; job event to verified receipt, p50/p99;
//! - `startup`: exec to first `/healthz` answer, idle RSS and stripped size
//!   of each service binary.

mod common;
mod download;
mod fair_share;
mod live;
mod pipeline;
mod quota;
mod small_files;
mod startup;
mod table;
mod trips;
mod webhooks;

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use table::Report;

const USAGE: &str = "\
bench: runs the asmr benchmarks on the local emulators and prints one markdown table.

Usage: bench [OPTIONS]

Options:
  --out FILE            also write the table and its notes to FILE
  --only LIST           comma-separated groups: small-files,trips,live,download,quota,fair-share,pipeline,webhooks,startup (default: all)
  --image-counts LIST   1.5 MiB images per small-files run (default: 200,1000)
  --video-count N       20 MiB videos of the small-files group (default: 50)
  --file-rounds N       runs of each copier per small-files workload (default: 3)
  --sizes-mib LIST      object sizes of the download group (default: 10,100,1024)
  --rounds N            runs of each copier per size; the median counts (default: 5)
  --quota-rpm N         requests per minute the fake Vertex AI accepts (default: 120)
  --quota-jobs N        live image jobs of the quota group (default: 200)
  --fair-rpm N          requests per minute of the fair-share group (default: 12)
  --run-prompts N       prompts of the `asmr run` measurement (default: 500)
  --topology-jobs N     prompts of the emulator topology measurement (default: 200)
  --webhook-jobs N      dry-run jobs of the webhooks group, three events each (default: 300)
  --startup-runs N      starts of each service; the median counts (default: 5)
  --keep                keep the work directory (every service's log) and print where it is
  -h, --help            this text

Needs the emulators' environment (tests/run --serve FILE writes it) and the
release binaries beside this one (cargo build --release --workspace --bins).
";

/// Figures measured by other means (the fault suite's long runs) live in
/// the same file from this heading on; a bench run keeps them as they are.
const KEPT_HEADING: &str = "\n## Measured by the fault suite";

/// The part of `out` from [`KEPT_HEADING`] on, or nothing.
fn kept_sections(out: &std::path::Path) -> String {
    std::fs::read_to_string(out)
        .ok()
        .and_then(|text| text.find(KEPT_HEADING).map(|at| text[at..].to_string()))
        .unwrap_or_default()
}

/// What to run, from the command line.
#[derive(Clone, Debug)]
struct Options {
    out: Option<PathBuf>,
    groups: Vec<String>,
    sizes_mib: Vec<u64>,
    rounds: usize,
    quota_rpm: u32,
    quota_jobs: usize,
    fair_rpm: u32,
    image_counts: Vec<usize>,
    video_count: usize,
    file_rounds: usize,
    run_prompts: usize,
    topology_jobs: usize,
    webhook_jobs: usize,
    startup_runs: usize,
    keep: bool,
}

const GROUPS: [&str; 9] = [
    "small-files",
    "trips",
    "live",
    "download",
    "quota",
    "fair-share",
    "pipeline",
    "webhooks",
    "startup",
];

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>> {
        let mut options = Options {
            out: None,
            groups: GROUPS.iter().map(|g| g.to_string()).collect(),
            sizes_mib: vec![10, 100, 1024],
            rounds: 5,
            quota_rpm: 120,
            quota_jobs: 200,
            fair_rpm: 12,
            image_counts: vec![200, 1000],
            video_count: 50,
            file_rounds: 3,
            run_prompts: 500,
            topology_jobs: 200,
            webhook_jobs: 300,
            startup_runs: 5,
            keep: false,
        };
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{arg} needs a value (see --help)"))
            };
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--keep" => options.keep = true,
                "--out" => options.out = Some(PathBuf::from(value()?)),
                "--only" => {
                    let groups: Vec<String> = value()?
                        .split(',')
                        .map(|g| g.trim().to_string())
                        .filter(|g| !g.is_empty())
                        .collect();
                    if let Some(bad) = groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                        bail!("--only: unknown group {bad:?}; the groups are {GROUPS:?}");
                    }
                    options.groups = groups;
                }
                "--sizes-mib" => {
                    options.sizes_mib = value()?
                        .split(',')
                        .map(|n| number::<u64>("--sizes-mib", n.trim()))
                        .collect::<Result<_>>()?;
                }
                "--rounds" => options.rounds = number("--rounds", &value()?)?,
                "--image-counts" => {
                    options.image_counts = value()?
                        .split(',')
                        .map(|n| number::<usize>("--image-counts", n.trim()))
                        .collect::<Result<_>>()?;
                }
                "--video-count" => options.video_count = number("--video-count", &value()?)?,
                "--file-rounds" => options.file_rounds = number("--file-rounds", &value()?)?,
                "--quota-rpm" => options.quota_rpm = number("--quota-rpm", &value()?)?,
                "--quota-jobs" => options.quota_jobs = number("--quota-jobs", &value()?)?,
                "--fair-rpm" => options.fair_rpm = number("--fair-rpm", &value()?)?,
                "--run-prompts" => options.run_prompts = number("--run-prompts", &value()?)?,
                "--topology-jobs" => options.topology_jobs = number("--topology-jobs", &value()?)?,
                "--webhook-jobs" => options.webhook_jobs = number("--webhook-jobs", &value()?)?,
                "--startup-runs" => options.startup_runs = number("--startup-runs", &value()?)?,
                other => bail!("unknown argument {other:?} (see --help)"),
            }
        }
        Ok(Some(options))
    }

    fn runs(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// A positive whole number.
fn number<T: std::str::FromStr + Default + PartialEq>(flag: &str, text: &str) -> Result<T> {
    match text.parse::<T>() {
        Ok(n) if n != T::default() => Ok(n),
        _ => bail!("{flag}: {text:?} is not a positive whole number"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Stopped by a signal, the run is dropped: its services are killed and
    // its work directory removed.
    let outcome = tokio::select! {
        outcome = run(&options) => outcome,
        () = shared::server::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options) -> Result<()> {
    let env = common::Env::from_process()?;
    let work = tempfile::Builder::new()
        .prefix("asmr-bench-")
        .tempdir()
        .context("creating a work directory")?;
    let ctx = common::Context::new(env, work.path().to_path_buf())?;
    let _work = if options.keep {
        common::progress(&format!(
            "keeping the work directory {}",
            work.path().display()
        ));
        let _ = work.keep();
        None
    } else {
        Some(work)
    };
    let mut report = Report::new();
    report.profile = ctx
        .bin_dir
        .file_name()
        .map_or_else(|| "unknown".into(), |n| n.to_string_lossy().into_owned());
    let started = std::time::Instant::now();
    if options.runs("startup") {
        common::progress("start-up and footprint");
        startup::run(&ctx, options.startup_runs, &mut report).await?;
    }
    if options.runs("small-files") {
        common::progress("delivery of many files");
        let mut workloads: Vec<small_files::Workload> = options
            .image_counts
            .iter()
            .map(|&count| small_files::Workload {
                count,
                bytes: 1536 * 1024,
                kind: shared::domain::values::JobKind::Image,
            })
            .collect();
        workloads.push(small_files::Workload {
            count: options.video_count,
            bytes: 20 * 1024 * 1024,
            kind: shared::domain::values::JobKind::Video,
        });
        small_files::run(&ctx, &workloads, options.file_rounds, &mut report).await?;
    }
    if options.runs("trips") {
        common::progress("store round trips per job, and hot documents");
        trips::run(&ctx, &mut report).await?;
    }
    if options.runs("live") {
        common::progress("the live page's store reads");
        live::run(&mut report).await?;
    }
    if options.runs("download") {
        common::progress("downloader throughput");
        download::run(&ctx, &options.sizes_mib, options.rounds, &mut report).await?;
    }
    if options.runs("pipeline") {
        common::progress("pipeline overhead (dry run)");
        pipeline::run(
            &ctx,
            options.run_prompts,
            options.topology_jobs,
            &mut report,
        )
        .await?;
    }
    if options.runs("webhooks") {
        common::progress("webhook delivery latency");
        webhooks::run(&ctx, options.webhook_jobs, &mut report).await?;
    }
    if options.runs("quota") {
        common::progress("quota use");
        quota::run(&ctx, options.quota_rpm, options.quota_jobs, &mut report).await?;
    }
    if options.runs("fair-share") {
        common::progress("fair share of a model quota");
        fair_share::run(&ctx, options.fair_rpm, &mut report).await?;
    }
    report.total = started.elapsed();
    let markdown = report.markdown();
    std::io::stdout()
        .write_all(markdown.as_bytes())
        .context("writing the table")?;
    if let Some(out) = &options.out {
        let kept = kept_sections(out);
        std::fs::write(out, format!("{markdown}{kept}"))
            .with_context(|| format!("writing {}", out.display()))?;
        common::progress(&format!("written to {}", out.display()));
    }
    match report.missed() {
        0 => common::progress("every goal met"),
        n => common::progress(&format!("{n} goal(s) missed: see the table")),
    }
    Ok(())
}
