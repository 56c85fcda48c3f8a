//! The command line as clap sees it: global store options and the commands.
//!
//! Syntax (numbers, durations, booleans, which backend) is checked here and a
//! mistake is a usage error (exit 2). Domain values (kinds, statuses, model
//! parameters, prompts) are checked by `shared` in the commands, so they get
//! the same messages as every other entry point, and exit 1.

use clap::{ArgGroup, Args, Parser, Subcommand};
use shared::config::{DryRunArgs, StoreArgs, VertexArgs};
use shared::domain::tenant::TenantName;
use std::path::PathBuf;
use std::time::Duration;

/// Operate the asmr pipeline: add prompts, watch jobs and downloads, repair stuck or
/// failed ones.
#[derive(Debug, Parser)]
#[command(name = "asmr", version)]
// The services default to Firestore; an operator's laptop to the embedded store.
#[command(mut_arg("backend", |arg| arg.default_value("embedded")))]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The tenant the command acts for: its jobs, downloads, figures and
    /// requests; another tenant's job is not found.
    #[arg(long, global = true, env = "ASMR_TENANT", default_value = "default", value_parser = parse_tenant)]
    pub tenant: TenantName,
    #[command(subcommand)]
    pub command: Command,
}

fn parse_tenant(text: &str) -> Result<TenantName, String> {
    text.parse()
        .map_err(|e: shared::domain::invalid::ValidationError| e.message)
}

/// `--all-tenants`: an operator's view of every tenant at once.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct AllTenants {
    /// Every tenant's, not only --tenant's (an operator's view).
    #[arg(long)]
    pub all_tenants: bool,
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
    /// Approve completed or delivered images: keep them (and `promote --approved` them).
    Approve(ReviewArgs),
    /// Reject completed or delivered images.
    Reject(RejectArgs),
    /// Make a video of each image, starting from it (Veo image-to-video): one video
    /// job per image, linked both ways; promoting an image again makes nothing new
    /// unless --again.
    Promote(PromoteArgs),
    /// Write a batch's contact sheet: one self-contained HTML page with every job,
    /// its thumbnails, state and cost.
    Report(ReportArgs),
    /// Write manifest.jsonl (one line per delivered file) from the store.
    Manifest(ManifestArgs),
    /// Add, look at and change the tenants sharing the deployment, and their keys.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// List webhook deliveries (newest first) with their last answer, or send one again.
    Webhooks(WebhooksArgs),
    /// Serve the live page: the figures of `asmr stats`, updated within seconds
    /// of every change in the store, at http://HOST:PORT/ui until Ctrl-C. Other
    /// commands on the same store keep working meanwhile.
    Serve(ServeArgs),
    /// Check a deployed project against what terraform/ deploys: APIs,
    /// the accounts' roles, push subscriptions, the bucket notification,
    /// Firestore indexes, scheduler jobs, the models, quota and budget. One
    /// line per check, with the fix of what is wrong; exit code 1 when
    /// something is.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The deployment's name prefix (terraform's `prefix`: `dev-` gives
    /// `dev-asmr-requests`) [default: ASMR_TOPIC_PREFIX, or none].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Region of Cloud Run and Cloud Scheduler (terraform's `region`).
    #[arg(long, default_value = "us-central1")]
    pub region: String,
    /// Print a JSON array of {check, ok, detail, fix}.
    #[arg(long)]
    pub json: bool,
    /// The longest each check may take.
    #[arg(long, default_value = "20s", value_parser = shared::config::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    #[command(next_help_heading = "Vertex AI options")]
    pub vertex: VertexArgs,
    #[command(flatten)]
    pub endpoints: shared::doctor::EndpointArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Port to listen on (0 picks a free one; the URL is printed).
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// Address to listen on; the default lets in only this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Open the page in the default browser.
    #[arg(long)]
    pub open: bool,
    #[command(flatten)]
    pub scope: AllTenants,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WebhooksArgs {
    #[command(subcommand)]
    pub command: Option<WebhooksCommand>,
    /// Only deliveries given up on (refused or unreachable for their whole window).
    #[arg(long)]
    pub failed: bool,
    /// At most this many deliveries.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print a JSON array of the delivery records.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scope: AllTenants,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Send a delivery again now, whatever became of it, and print the answer
    /// (a URL stopped by a 410 is resumed).
    Redeliver(RedeliverArgs),
}

#[derive(Debug, Args)]
pub struct RedeliverArgs {
    /// The delivery's id (its webhook-id, `msg_...`).
    pub id: String,
    #[command(flatten)]
    pub network: shared::config::WebhookNetworkArgs,
    /// The longest the attempt may take.
    #[arg(long, default_value = "10s", value_parser = shared::config::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Add a tenant; prints its API key, once.
    Add(TenantAddArgs),
    /// List the tenants.
    List(TenantListArgs),
    /// Show one tenant.
    Show(TenantShowArgs),
    /// Change a tenant's settings (the default tenant is stored by its first change).
    Set(TenantSetArgs),
    /// Disable a tenant: its keys get 403 and its Pub/Sub requests are rejected.
    Disable(TenantNameArg),
    /// Enable a disabled tenant again.
    Enable(TenantNameArg),
    /// Make a new API key and print it, once; the old one keeps working for --grace.
    Key(TenantKeyArgs),
    /// Print the secrets that sign a tenant's webhooks (making one if it has
    /// none), or --rotate: a new one, the old signing beside it for --grace.
    WebhookSecret(TenantWebhookSecretArgs),
}

#[derive(Debug, Args)]
pub struct TenantWebhookSecretArgs {
    /// The tenant.
    #[arg(value_parser = parse_tenant)]
    pub name: TenantName,
    /// Make a new secret.
    #[arg(long)]
    pub rotate: bool,
    /// How long the secrets it replaces keep signing (`0s`: stop them now).
    #[arg(long, default_value = "24h", value_parser = shared::config::parse_duration)]
    pub grace: Duration,
}

#[derive(Debug, Args)]
pub struct TenantNameArg {
    /// The tenant.
    #[arg(value_parser = parse_tenant)]
    pub name: TenantName,
}

#[derive(Debug, Args)]
pub struct TenantSettingsArgs {
    /// Its own daily budget in US dollars, on top of the deployment's (`none`: no limit of its own).
    #[arg(long, value_name = "USD", value_parser = parse_budget)]
    pub budget: Option<OrNone<u64>>,
    /// Its share of each model's quota, relative to the other tenants' (1 to 1000).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Where its files are delivered: gs://bucket/prefix or a folder (`default`:
    /// the deployment's destination plus /NAME).
    #[arg(long, value_parser = parse_destination)]
    pub destination: Option<OrNone<String>>,
    /// A name for people.
    #[arg(long)]
    pub display_name: Option<String>,
    /// The webhook of its jobs that name none: an https:// URL (`none`: no default).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Which events the default webhook gets: start, output, completed
    /// (comma-separated; output and completed when left out).
    #[arg(long, value_delimiter = ',', requires = "webhook")]
    pub webhook_events: Option<Vec<String>>,
    #[command(flatten)]
    pub network: shared::config::WebhookNetworkArgs,
}

/// A setting's new value, or `None` to remove it (`--budget none`,
/// `--destination default`).
#[derive(Clone, Debug)]
pub struct OrNone<T>(pub Option<T>);

fn parse_budget(text: &str) -> Result<OrNone<u64>, String> {
    match text {
        "none" => Ok(OrNone(None)),
        text => shared::cost::parse_usd(text).map(|usd| OrNone(Some(usd))),
    }
}

fn parse_destination(text: &str) -> Result<OrNone<String>, String> {
    Ok(OrNone((text != "default").then(|| text.to_string())))
}

#[derive(Debug, Args)]
pub struct TenantAddArgs {
    /// The new tenant: lowercase letters, digits and dashes.
    #[arg(value_parser = parse_tenant)]
    pub name: TenantName,
    #[command(flatten)]
    pub settings: TenantSettingsArgs,
    /// Print the tenant and its key as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TenantListArgs {
    /// Print a JSON array of the tenant records (key hashes, never keys).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TenantShowArgs {
    /// The tenant.
    #[arg(value_parser = parse_tenant)]
    pub name: TenantName,
    /// Print the tenant record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TenantSetArgs {
    /// The tenant.
    #[arg(value_parser = parse_tenant)]
    pub name: TenantName,
    #[command(flatten)]
    pub settings: TenantSettingsArgs,
}

#[derive(Debug, Args)]
pub struct TenantKeyArgs {
    /// The tenant.
    #[arg(value_parser = parse_tenant)]
    pub name: TenantName,
    /// Make a new key (required: a key is never shown again).
    #[arg(long, required = true)]
    pub rotate: bool,
    /// How long the keys it replaces keep working (`0s`: stop them now).
    #[arg(long, default_value = "24h", value_parser = shared::config::parse_duration)]
    pub grace: Duration,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Image job ids.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    /// Image job ids.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Why, shown on the contact sheet.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("images").required(true).args(["ids", "approved"])))]
pub struct PromoteArgs {
    /// Image job ids.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Every approved image.
    #[arg(long)]
    pub approved: bool,
    /// Length of each video in seconds.
    #[arg(long, value_parser = ["4", "6", "8"])]
    pub duration: Option<String>,
    /// A model parameter of the videos, e.g. aspect_ratio=9:16; repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Make another video of an image that has one already.
    #[arg(long)]
    pub again: bool,
    /// Print the video jobs and their estimated cost; create nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Only jobs in this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs created since: an RFC 3339 time, or a duration ago (`2h`, `3d`... in s, m, h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only approved images.
    #[arg(long)]
    pub approved: bool,
    /// Where the page is written; delivered files are linked relative to its folder.
    #[arg(long, value_name = "FILE", default_value = "report.html")]
    pub out: PathBuf,
    #[command(flatten)]
    pub scope: AllTenants,
}

#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// The folder manifest.jsonl is written to.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The destination the files were delivered to (gs://bucket/prefix or a
    /// folder), whose paths the lines are relative to [default: --out].
    #[arg(long)]
    pub destination: Option<String>,
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
    #[command(flatten)]
    pub dry_run: DryRunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A prompts file: one prompt per line, `#` starts a comment line; `-` reads stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// image or video (IMAGE_TEST and VIDEO_PROD are accepted).
    #[arg(long, default_value = "image")]
    pub kind: String,
    /// Where the files are delivered: each run in its own folder under DIR,
    /// named after the prompts file (a rerun of the same file resumes into
    /// the same folder), with its manifest.jsonl and report.html.
    #[arg(long, value_name = "DIR", default_value = "asmr-output")]
    pub out: PathBuf,
    /// Make a video of every image once it is delivered, starting from it
    /// (image-to-video); the report shows the pairs.
    #[arg(long)]
    pub chain: bool,
    /// Call Vertex AI (paid) instead of writing placeholders; needs Application
    /// Default Credentials and --project. State stays local.
    #[arg(long)]
    pub live: bool,
    /// With --live: a Cloud Storage bucket for the outputs (required for video:
    /// Veo writes its videos to Cloud Storage).
    #[arg(long, requires = "live")]
    pub bucket: Option<String>,
    /// With --live: the most paid calls may spend today, in US dollars (like
    /// a deployment's BUDGET_USD_PER_DAY). Without it a live run spends at
    /// most its own jobs once each at list prices, and says how much that is.
    #[arg(long, requires = "live", value_name = "USD", value_parser = shared::cost::parse_usd)]
    pub budget: Option<u64>,
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
    #[command(next_help_heading = "Vertex AI options (with --live)")]
    pub vertex: VertexArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scope: AllTenants,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only approved images.
    #[arg(long)]
    pub approved: bool,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print a JSON array of the job documents.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scope: AllTenants,
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
    #[arg(long, default_value = "1h", value_parser = shared::config::parse_duration)]
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
    #[command(flatten)]
    pub scope: AllTenants,
}

#[derive(Debug, Args)]
pub struct RejectedArgs {
    /// At most this many requests.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print a JSON array of the rejected records.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scope: AllTenants,
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
