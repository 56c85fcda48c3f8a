//! The command line as clap sees it: global store options and the commands.
//!
//! Syntax (numbers, durations, booleans, which backend) is checked here and a
//! mistake is a usage error (exit 2). Domain values (kinds, statuses, model
//! parameters, prompts) are checked by `shared` in the commands, so they get
//! the same messages as every other entry point, and exit 1.

use anyhow::{Result, bail};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand, ValueEnum};
use shared::store::StoreConfig;
use shared::store::firestore::FirestoreConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Operate the asmr pipeline: add prompts, watch jobs and downloads, repair stuck or
/// failed ones.
#[derive(Debug, Parser)]
#[command(name = "asmr", version)]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the jobs are.
#[derive(Debug, Args)]
#[command(next_help_heading = "Store options")]
pub struct StoreArgs {
    /// Which store holds the jobs.
    #[arg(long, global = true, env = "ASMR_BACKEND", value_enum, default_value_t = Backend::Embedded)]
    pub backend: Backend,
    /// State directory of the embedded store.
    #[arg(long, global = true, env = "ASMR_STATE_DIR", default_value = ".asmr")]
    pub state_dir: PathBuf,
    /// Google Cloud project (required with --backend firestore).
    #[arg(long, global = true, env = "GOOGLE_CLOUD_PROJECT")]
    pub project: Option<String>,
    /// Prefix of the Firestore collection names (`test42_` gives `test42_jobs`).
    #[arg(long, global = true, env = "ASMR_COLLECTION_PREFIX")]
    pub collection_prefix: Option<String>,
    /// Firestore database id.
    #[arg(
        long,
        global = true,
        env = "FIRESTORE_DATABASE",
        default_value = "(default)"
    )]
    pub database: String,
    /// Prefix of the Pub/Sub topic names (`dev-` gives `dev-asmr-image-jobs`):
    /// new jobs are published to their kind's topic, and job events to
    /// `asmr-job-events`.
    #[arg(
        long,
        global = true,
        env = "ASMR_TOPIC_PREFIX",
        default_value = "",
        help_heading = "Pub/Sub options (firestore backend)"
    )]
    pub topic_prefix: String,
    /// The Pub/Sub emulator (host:port) instead of Cloud Pub/Sub.
    #[arg(
        long,
        global = true,
        env = "PUBSUB_EMULATOR_HOST",
        help_heading = "Pub/Sub options (firestore backend)"
    )]
    pub pubsub_emulator_host: Option<String>,
    /// Publish a job event when a command ends a job (cancel, reset).
    #[arg(long, global = true, env = "ASMR_JOB_EVENTS", default_value_t = true,
          action = ArgAction::Set, value_parser = BoolishValueParser::new(),
          value_name = "true|false", help_heading = "Pub/Sub options (firestore backend)")]
    pub job_events: bool,
}

/// The store adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// SQLite under --state-dir.
    Embedded,
    /// Firestore in --project (or the emulator at FIRESTORE_EMULATOR_HOST).
    Firestore,
}

impl StoreArgs {
    /// The store these options name.
    pub fn config(&self) -> Result<StoreConfig> {
        match self.backend {
            Backend::Embedded => Ok(StoreConfig::Embedded {
                state_dir: self.state_dir.clone(),
            }),
            Backend::Firestore => {
                let Some(project) = self
                    .project
                    .as_deref()
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                else {
                    bail!(
                        "the firestore backend needs a project: pass --project or set GOOGLE_CLOUD_PROJECT"
                    );
                };
                Ok(StoreConfig::Firestore(FirestoreConfig {
                    project: project.to_string(),
                    database: self.database.clone(),
                    prefix: self.collection_prefix.clone().unwrap_or_default(),
                }))
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline here, in one process, over a prompts file: jobs,
    /// generation (placeholders unless --live), delivery to --out. State lives in
    /// --state-dir; run it again after an interruption to finish the work.
    Run(RunArgs),
    /// Add one job (--prompt) or one job per line of a file (--file); prints the new ids.
    Add(AddArgs),
    /// Count jobs and downloads per status.
    Stats(StatsArgs),
    /// List jobs, newest first.
    List(ListArgs),
    /// Show one job.
    Show(ShowArgs),
    /// Put jobs stuck in processing or generating back to pending (or fail them
    /// when no attempt is left).
    Reset(ResetArgs),
    /// Requeue a failed or cancelled job, or every failed job.
    Retry(RetryArgs),
    /// Cancel an unfinished job.
    Cancel(CancelArgs),
    /// List the download queue in copy order (highest priority, then oldest),
    /// with progress and the last error.
    Downloads(DownloadsArgs),
    /// Requeue a failed download with fresh attempts (the copier resumes a partial copy).
    RetryDownload(RetryDownloadArgs),
    /// List the requests intake refused (newest first, kept 30 days), with the reason.
    Rejected(RejectedArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["prompt", "file"])))]
pub struct AddArgs {
    /// The prompt of one job.
    #[arg(long)]
    pub prompt: Option<String>,
    /// A prompts file: one prompt per line, `#` starts a comment line; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// image or video (IMAGE_TEST and VIDEO_PROD are accepted).
    #[arg(long)]
    pub kind: String,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i64,
    /// A model parameter, e.g. aspect_ratio=16:9 or duration_seconds=8; repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Idempotency key: adding the same request id again returns the existing job.
    #[arg(long, conflicts_with = "file")]
    pub request_id: Option<String>,
    /// Write placeholder outputs instead of calling (and paying for) the model.
    #[arg(long, env = "DRY_RUN", default_value_t = true, action = ArgAction::Set,
          value_parser = BoolishValueParser::new(), value_name = "true|false")]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A prompts file: one prompt per line, `#` starts a comment line; `-` reads stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// image or video (IMAGE_TEST and VIDEO_PROD are accepted).
    #[arg(long, default_value = "image")]
    pub kind: String,
    /// Where the files are delivered.
    #[arg(long, value_name = "DIR", default_value = "asmr-output")]
    pub out: PathBuf,
    /// Call Vertex AI (paid) instead of writing placeholders; needs Application
    /// Default Credentials and --project. State stays local.
    #[arg(long)]
    pub live: bool,
    /// With --live: a Cloud Storage bucket for the outputs (required for video:
    /// Veo writes its videos to Cloud Storage).
    #[arg(long, requires = "live")]
    pub bucket: Option<String>,
    /// Image jobs generated at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub image_workers: u16,
    /// Video jobs submitted at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub video_workers: u16,
    /// Files copied at once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub download_workers: u16,
    /// Print the final report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub vertex: VertexArgs,
}

/// Vertex AI settings of a live run.
#[derive(Debug, Args)]
#[command(next_help_heading = "Vertex AI options (with --live)")]
pub struct VertexArgs {
    /// Region of the Vertex AI endpoint.
    #[arg(long, env = "GOOGLE_CLOUD_LOCATION", default_value = "us-central1")]
    pub location: String,
    /// Image model (imagen-* or gemini-*-image).
    #[arg(long, env = "IMAGE_MODEL", default_value = shared::vertex::DEFAULT_IMAGE_MODEL)]
    pub image_model: String,
    /// Video model (veo-*).
    #[arg(long, env = "VIDEO_MODEL", default_value = shared::vertex::DEFAULT_VIDEO_MODEL)]
    pub video_model: String,
    /// Vertex AI base URL [default: https://{location}-aiplatform.googleapis.com].
    #[arg(long, env = "VERTEX_BASE_URL")]
    pub vertex_base_url: Option<String>,
    /// A static bearer token instead of Application Default Credentials.
    #[arg(long, env = "VERTEX_ACCESS_TOKEN", hide_env_values = true)]
    pub vertex_access_token: Option<String>,
    /// Pause between polls of running video operations.
    #[arg(long, env = "POLLING_INTERVAL", default_value = "15s", value_parser = shared::config::parse_duration)]
    pub polling_interval: Duration,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print a JSON array of the job documents.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The job id.
    pub id: String,
    /// Print the job document as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Reset jobs with no update for this long (e.g. 30m, 2h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["id", "failed"])))]
pub struct RetryArgs {
    /// The job to requeue.
    pub id: Option<String>,
    /// Requeue every failed job.
    #[arg(long)]
    pub failed: bool,
    /// Also requeue jobs the model's safety filters stopped (they may be refused
    /// again, and billed again).
    #[arg(long)]
    pub include_filtered: bool,
    /// Also requeue jobs whose last paid request has an unknown outcome
    /// (submit_unknown): it may already have been billed, and the retry pays
    /// again.
    #[arg(long)]
    pub resubmit: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job to cancel.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct DownloadsArgs {
    /// Only downloads in this status: pending, downloading, completed or failed.
    #[arg(long)]
    pub status: Option<String>,
    /// At most this many downloads.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print a JSON array of the download records.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RejectedArgs {
    /// At most this many requests.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print a JSON array of the rejected records.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryDownloadArgs {
    /// The download to requeue.
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
