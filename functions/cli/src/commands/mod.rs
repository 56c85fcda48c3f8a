//! One module per command. Each takes the open store and its parsed
//! arguments, writes data to stdout and messages to stderr (see [`crate::out`]).

mod add;
mod change;
mod downloads;
mod inspect;
mod local_run;
mod stats;

pub use local_run::run as local_run;

use crate::args::Command;
use crate::out;
use anyhow::{Context, Result};
use shared::store::{Store, StoreConfig};

/// How many store calls a bulk command keeps in flight. Firestore answers
/// each in tens of milliseconds, so one at a time would make a 10,000-line
/// file take minutes; the embedded store simply serialises them.
const IN_FLIGHT: usize = 32;

/// Opens the store, says which one it is, and runs `command` on it.
pub async fn run(config: &StoreConfig, command: Command) -> Result<()> {
    // Named before opening, so that a store that cannot be opened is still
    // named on the first line.
    out::note(format_args!("asmr: backend {}", config.describe()));
    let store = Store::open(config).await.context("opening the store")?;
    match command {
        Command::Add(args) => add::run(&store, args).await,
        Command::Stats(args) => stats::run(&store, &args).await,
        Command::List(args) => inspect::list(&store, &args).await,
        Command::Show(args) => inspect::show(&store, &args).await,
        Command::Reset(args) => change::reset(&store, &args).await,
        Command::Retry(args) => change::retry(&store, &args).await,
        Command::Cancel(args) => change::cancel(&store, &args.id).await,
        Command::Downloads(args) => downloads::list(&store, &args).await,
        Command::RetryDownload(args) => downloads::retry(&store, &args.id).await,
        Command::Run(_) => anyhow::bail!("`asmr run` opens its own store"),
    }
}
