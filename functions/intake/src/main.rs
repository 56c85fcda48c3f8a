//! `intake`: the Cloud Run service where jobs enter the pipeline. `POST /`
//! takes the Pub/Sub push of `asmr-requests` (a JSON request, a batch, or a
//! plain-text prompt with a `kind` attribute); `POST /v1/jobs`,
//! `GET /v1/jobs/{id}` and `GET /v1/stats` are the same over plain HTTP.
//! Each new job is created once in Firestore and published to
//! `asmr-image-jobs` or `asmr-video-jobs`; a request that can never be a job
//! is acknowledged and kept in `rejected`. `intake ui` serves the live page
//! instead, and only that, to people Identity-Aware Proxy let through.
//! `intake --help` and `intake ui --help` list the environment.

use clap::Parser;
use shared::intake::page::{self, Mode};
use shared::intake::service::{self, IntakeArgs};

#[derive(Parser)]
#[command(
    name = "intake",
    version,
    about = "Turns requests into jobs and queues them for the generators"
)]
struct Cli {
    #[command(flatten)]
    args: IntakeArgs,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::telemetry::init();
    let cli = Cli::parse();
    let outcome = match cli.mode.unwrap_or(Mode::Api) {
        Mode::Api => service::intake(cli.args).await,
        Mode::Ui(ui) => page::ui(&cli.args.store, cli.args.serve.port, ui).await,
    };
    shared::server::exit_code(outcome)
}
