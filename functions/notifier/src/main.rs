//! `notifier`: the Cloud Run service that sends webhooks. Pushed every job
//! event of `asmr-job-events` (`POST /`), it records the delivery a job's
//! webhook asks for and sends it, signed per Standard Webhooks; what is
//! refused is sent again on a schedule for a day (`POST /sweep`, from Cloud
//! Scheduler, and a sweep of its own while it runs). `notifier --help`
//! lists the environment.

use clap::Parser;
use shared::webhooks::service::NotifierArgs;

#[derive(Parser)]
#[command(
    name = "notifier",
    version,
    about = "Sends job events to the tenants' webhooks, signed, at least once"
)]
struct Cli {
    #[command(flatten)]
    args: NotifierArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::telemetry::init();
    let cli = Cli::parse();
    shared::server::exit_code(shared::webhooks::service::run(cli.args).await)
}
