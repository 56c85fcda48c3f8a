//! `asmr serve`: the live page of the store the command opened.

use crate::args::ServeArgs;
use crate::out;
use anyhow::{Context, Result};
use shared::bus::{Bus, Topics};
use shared::live::{self, Feed, Live};
use shared::store::Store;
use shared::store::tenants::Scope;
use std::sync::Arc;

pub async fn run(
    store: &Store,
    bus: Arc<dyn Bus>,
    topics: Topics,
    scope: Scope,
    args: &ServeArgs,
) -> Result<()> {
    let listener = live::bind(args.host, args.port)
        .await
        .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
    let url = format!("http://{}/ui", listener.local_addr()?);
    let feed = Feed::start(store.clone(), scope, live::READ_EVERY);
    // The first line on stdout is the address, for people and for scripts.
    out::line(format_args!(
        "asmr: the live page is at {url} (Ctrl-C stops it)"
    ))?;
    if args.open {
        open_in_browser(&url);
    }
    live::serve(listener, Live::new(feed, bus, topics)).await?;
    Ok(())
}

/// Asks the desktop to open `url`; says so when it cannot.
fn open_in_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    let opened = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = opened {
        out::note(format_args!(
            "asmr: could not open a browser ({opener}: {e}); open {url} yourself"
        ));
    }
}
