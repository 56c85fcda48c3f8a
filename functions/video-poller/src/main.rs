//! `video-poller`: the Cloud Run job (Cloud Scheduler, every minute) that
//! polls the Veo operation of every generating job, completes or fails it,
//! and repeats every POLLING_INTERVAL until nothing is generating or its time
//! budget is spent. `video-poller --help` lists the environment.

use clap::Parser;
use shared::config::{StageArgs, parse_duration};
use shared::generate::service;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "video-poller",
    version,
    about = "Finishes the videos of generating jobs"
)]
struct Cli {
    #[command(flatten)]
    args: StageArgs,
    /// Stop after this long (seconds, or 5m...).
    #[arg(long, env = "POLLER_MAX_RUNTIME", default_value = "3300", value_parser = parse_duration)]
    max_runtime: Duration,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::telemetry::init();
    let cli = Cli::parse();
    shared::server::exit_code(service::video_poller(cli.args, cli.max_runtime).await)
}
