//! One module per command. Each takes the open store and its parsed
//! arguments, writes data to stdout and messages to stderr (see [`crate::out`]).

mod add;
mod change;
mod downloads;
mod inspect;
pub mod local_run;
mod rejected;
mod report;
mod review;
mod stats;

use crate::args::Command;
use crate::out;
use anyhow::{Context, Result};
use shared::config::{Adapters, StoreArgs};
use shared::domain::paths::absolute;
use std::io::Read;
use std::path::Path;

/// The bytes of a file named on the command line, or of standard input
/// when it is `-`.
fn read_input(path: &Path) -> std::io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().lock().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(path)
    }
}

/// An optional value of the command line (`--status`, `--kind`), checked
/// by `shared` so that a mistake reads as at every other entry point.
fn parsed<T>(text: Option<&str>) -> Result<Option<T>>
where
    T: std::str::FromStr<Err = shared::domain::invalid::ValidationError>,
{
    Ok(text
        .map(str::parse::<T>)
        .transpose()
        .map_err(shared::error::Error::from)?)
}

/// How many store calls a bulk command keeps in flight. Firestore answers
/// each in tens of milliseconds, so one at a time would make a 10,000-line
/// file take minutes; the embedded store simply serialises them.
const IN_FLIGHT: usize = 32;

/// Opens the store (and, for a command that creates or ends jobs, Pub/Sub),
/// says which store it is, and runs `command` on it.
pub async fn run(args: &StoreArgs, command: Command) -> Result<()> {
    let config = args.store_config()?;
    // Named before opening, so that a store that cannot be opened is still
    // named on the first line.
    out::note(format_args!("asmr: backend {}", config.describe()));
    // Only commands that create or end jobs announce them, and only on
    // Firestore; the embedded store has no Pub/Sub. Connected before
    // anything is written, so that a bus that cannot be reached leaves
    // nothing half done.
    let changes_jobs = matches!(
        command,
        Command::Add(_)
            | Command::Cancel(_)
            | Command::Reset(_)
            | Command::Retry(_)
            | Command::Promote(_)
            | Command::Approve(_)
            | Command::Reject(_)
    );
    let Adapters { store, bus, topics } = args
        .connect_with(changes_jobs)
        .await
        .context("opening the store")?;
    let queue = change::Queue {
        bus: bus.as_ref(),
        topics: &topics,
    };
    let outcome = match command {
        Command::Add(args) => add::run(&store, bus.as_ref(), topics.clone(), args).await,
        Command::Stats(args) => stats::run(&store, &args).await,
        Command::List(args) => inspect::list(&store, &args).await,
        Command::Show(args) => inspect::show(&store, &args).await,
        Command::Reset(args) => change::reset(&store, &queue, &args).await,
        Command::Retry(args) => change::retry(&store, &queue, &args).await,
        Command::Cancel(args) => change::cancel(&store, &args.id).await,
        Command::Downloads(args) => downloads::list(&store, &args).await,
        Command::RetryDownload(args) => downloads::retry(&store, &args.id).await,
        Command::Rejected(args) => rejected::list(&store, &args).await,
        Command::Approve(args) => review::approve(&store, &args).await,
        Command::Reject(args) => review::reject(&store, &args).await,
        Command::Promote(args) => review::promote(&store, &queue, &args).await,
        Command::Report(args) => report::report(&store, &args).await,
        Command::Manifest(args) => report::manifest(&store, &args).await,
        Command::Run(_) => anyhow::bail!("`asmr run` opens its own store"),
    };
    store.flush_events().await;
    outcome
}
