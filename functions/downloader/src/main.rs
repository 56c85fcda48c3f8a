//! `downloader`: the Cloud Run service that receives GCS object-finalize
//! events (`POST /`: a Pub/Sub push of a bucket notification, or an Eventarc
//! CloudEvent) and copies every output, verified, to DOWNLOAD_DESTINATION (a
//! bucket or a mounted directory). `downloader drain` copies what is pending
//! (retried downloads) as a Cloud Run job. `downloader --help` lists the
//! environment.

use clap::Parser;
use shared::deliver::service::{self, DownloaderArgs, Mode};

#[derive(Parser)]
#[command(
    name = "downloader",
    version,
    about = "Delivers every output to the destination"
)]
struct Cli {
    #[command(flatten)]
    args: DownloaderArgs,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::telemetry::init();
    let cli = Cli::parse();
    shared::server::exit_code(service::downloader(cli.args, cli.mode.unwrap_or(Mode::Serve)).await)
}
