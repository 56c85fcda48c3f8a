//! `image-generator`: the Cloud Run service that takes pushed image job
//! messages (`POST /`), claims each job, generates its images (or dry-run
//! placeholders) and writes them to `gs://$GCS_OUTPUT_BUCKET/images/{job}/`.
//! `image-generator drain` runs the same work as a Cloud Run job over every
//! pending image job. `image-generator --help` lists the environment.

use clap::Parser;
use shared::config::StageArgs;
use shared::domain::values::JobKind;
use shared::generate::service::{self, Mode};

#[derive(Parser)]
#[command(
    name = "image-generator",
    version,
    about = "Generates the images of image jobs"
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
        service::generator(JobKind::Image, cli.args, cli.mode.unwrap_or(Mode::Serve)).await,
    )
}
