//! Logging: JSON lines for Cloud Logging (`severity`, `message`, span fields
//! such as `job_id` and `message_id`) through `tracing-stackdriver`, or a
//! readable format when stdout is a terminal. `RUST_LOG` filters (default
//! `info`).

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. Calling it twice is harmless.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if std::io::stdout().is_terminal() {
        registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init()
    } else {
        registry.with(tracing_stackdriver::layer()).try_init()
    };
}
