//! `janitor`: the Cloud Run job (Cloud Scheduler, hourly) that requeues jobs
//! whose lease ran out, publishes again pending jobs that lost their
//! message, fails the jobs whose messages were dead-lettered and deletes
//! records past their retention. Prints one JSON summary line; exits
//! non-zero when a sweep failed. `janitor --help` lists the environment.

use clap::Parser;
use shared::janitor::service::JanitorArgs;

#[derive(Parser)]
#[command(
    name = "janitor",
    version,
    about = "Requeues expired leases, re-dispatches lost work, drains dead letters, applies retention"
)]
struct Cli {
    #[command(flatten)]
    args: JanitorArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::telemetry::init();
    let cli = Cli::parse();
    shared::server::exit_code(shared::janitor::service::run(cli.args).await)
}
