//! `asmr`, the operator command line of the asmr pipeline: add prompts (one,
//! or a file of them), look at jobs, downloads and their counts, and repair
//! stuck, failed or unwanted jobs and failed downloads. It talks to the same
//! store as the stages: the embedded one under `.asmr/` by default, or
//! Firestore with `--backend firestore --project P` (every option also reads
//! an environment variable; see `asmr --help`). Run it with
//! `cargo run -p cli -- stats`.
//!
//! Data (ids, tables, JSON) goes to stdout and messages to stderr, whose
//! first line names the backend in use; any failure is one `error:` line and
//! exit code 1 (usage mistakes: 2).

mod args;
mod commands;
mod out;

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let outcome = match cli.command {
        // The local run opens its own embedded store under --state-dir.
        args::Command::Run(run) => commands::local_run::run(&cli.store, &cli.tenant, run).await,
        // The doctor opens the deployment's Firestore store itself.
        args::Command::Doctor(doctor) => commands::doctor::run(&cli.store, doctor).await,
        command => commands::run(&cli.store, &cli.tenant, command).await,
    };
    out::exit_code(outcome)
}
