//! The `janitor` binary: its settings from the environment, and one run.

use super::{DEAD_LETTER_SUBSCRIPTION, Janitor, JanitorSettings, run_once};
use crate::bus::dead_letters::{DeadLetters, NoDeadLetters, PubSubDeadLetters};
use crate::config::{Adapters, StoreArgs, parse_duration};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

/// Everything the `janitor` binary reads from the environment.
#[derive(Clone, Debug, clap::Args)]
pub struct JanitorArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Dead-letter subscription to drain [default: {ASMR_TOPIC_PREFIX}asmr-dead-letter-janitor].
    #[arg(long, env = "DEAD_LETTER_SUBSCRIPTION")]
    pub dead_letter_subscription: Option<String>,
    /// How long to wait for the first message of each dead-letter pull.
    #[arg(long, env = "DEAD_LETTER_WAIT", default_value = "10", value_parser = parse_duration)]
    pub dead_letter_wait: Duration,
    /// The most dead letters handled in one run.
    #[arg(long, env = "DEAD_LETTER_MAX", default_value = "1000")]
    pub dead_letter_max: usize,
    /// A pending job untouched for this long is published again.
    #[arg(long, env = "LOST_AFTER", default_value = "15m", value_parser = parse_duration)]
    pub lost_after: Duration,
}

impl JanitorArgs {
    /// The dead-letter subscription's name.
    pub fn dead_letter_subscription(&self) -> String {
        self.dead_letter_subscription
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| format!("{}{DEAD_LETTER_SUBSCRIPTION}", self.store.topic_prefix))
    }

    /// The run's settings.
    pub fn settings(&self) -> JanitorSettings {
        JanitorSettings {
            lost_after: self.lost_after,
            dead_letter_max: self.dead_letter_max,
        }
    }

    /// One line for the start-up log.
    pub fn summary(&self) -> String {
        format!(
            "backend={:?} project={} prefix={:?} topic_prefix={:?} dead_letters={} dead_letter_wait={:?} dead_letter_max={} lost_after={:?}",
            self.store.backend,
            self.store.project.as_deref().unwrap_or("-"),
            self.store.collection_prefix,
            self.store.topic_prefix,
            self.dead_letter_subscription(),
            self.dead_letter_wait,
            self.dead_letter_max,
            self.lost_after,
        )
    }
}

/// The `janitor` binary: one run, its summary logged and printed as one JSON
/// line on stdout; an error when any sweep failed.
pub async fn run(args: JanitorArgs) -> anyhow::Result<()> {
    tracing::info!(config = %args.summary(), "janitor starting");
    let Adapters { store, bus, topics } = args.store.connect().await?;
    tracing::info!(store = %store.describe(), "store opened");
    let dead_letters: Arc<dyn DeadLetters> = match args.store.pubsub()? {
        Some(config) => {
            let letters = PubSubDeadLetters::new(
                config,
                &args.dead_letter_subscription(),
                args.dead_letter_wait,
            )
            .await?;
            tracing::info!(dead_letters = %letters.describe(), "dead letters from");
            Arc::new(letters)
        }
        None => {
            tracing::info!(
                "no Pub/Sub on this store: requeued jobs are not published and dead letters are not drained"
            );
            Arc::new(NoDeadLetters)
        }
    };
    let janitor = Janitor {
        store,
        bus,
        topics,
        dead_letters,
    };
    let report = run_once(&janitor, &args.settings()).await?;
    report.log();
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", report.to_json()).context("printing the summary")?;
        stdout.flush().context("printing the summary")?;
    }
    if !report.is_clean() {
        anyhow::bail!(
            "{} failure(s) in: {}",
            report.errors,
            report.failed_sweeps.join(", ")
        );
    }
    Ok(())
}
