//! `video-generator`: the Cloud Run service that takes pushed video job
//! messages (`POST /`), claims each job and submits a Veo long-running
//! operation writing to `gs://$GCS_OUTPUT_BUCKET/videos/{job}/` (or, in dry
//! run, writes placeholder clips there). `video-generator drain` runs the
//! same work as a Cloud Run job. `video-generator --help` lists the environment.

use clap::Parser;
use shared::config::StageArgs;
use shared::domain::values::JobKind;
use shared::generate::service::{self, Mode};

#[derive(Parser)]
#[command(
    name = "video-generator",
    version,
    about = "Submits the videos of video jobs"
)]
struct Cli {
    #[command(flatten)]
    args: StageArgs,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::telemetry::init();
    let cli = Cli::parse();
    shared::server::exit_code(
        service::generator(JobKind::Video, cli.args, cli.mode.unwrap_or(Mode::Serve)).await,
    )
}
