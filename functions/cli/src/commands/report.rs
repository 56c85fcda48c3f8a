//! `asmr report` and `asmr manifest`: what a batch produced, as a contact
//! sheet to look at and as a manifest to build on.

use crate::args::{ManifestArgs, ReportArgs};
use crate::out;
use anyhow::{Context, Result, bail};
use shared::cost::PriceTable;
use shared::domain::destination::Destination;
use shared::report::build::{self, Selection};
use shared::store::tenants::Scope;
use shared::time::Timestamp;

pub async fn report(store: &shared::store::Store, scope: &Scope, args: &ReportArgs) -> Result<()> {
    let selection = Selection {
        tenant: scope.tenant(),
        status: super::parsed(args.status.as_deref())?,
        kind: super::parsed(args.kind.as_deref())?,
        since: args.since.as_deref().map(since).transpose()?,
        approved: args.approved.then_some(true),
    };
    let jobs = build::select(store, &selection).await?;
    let folder = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let parents = build::parents_outside(store, &jobs).await?;
    let title = format!("asmr: {}", count(jobs.len() as u64, "job", "jobs"));
    let sheet = build::sheet(&title, &jobs, &parents, folder, &PriceTable::list_prices());
    let bytes = build::write(&sheet, &args.out)?;
    out::line(args.out.display())?;
    out::note(format_args!(
        "contact sheet of {} ({}) written to {} ({} KiB)",
        count(jobs.len() as u64, "job", "jobs"),
        count(sheet.totals.files, "file", "files"),
        args.out.display(),
        bytes.div_ceil(1024)
    ));
    Ok(())
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `--since`: an RFC 3339 time, or how long ago (`90m`, `2h`, `3d`).
fn since(text: &str) -> Result<Timestamp> {
    if let Some(at) = Timestamp::parse(text) {
        return Ok(at);
    }
    let ago = shared::config::parse_duration(text);
    match ago {
        Ok(ago) => Ok(Timestamp::now().minus(ago)),
        Err(e) => bail!(
            "--since {text:?} is neither an RFC 3339 time nor a duration ago (90m, 2h, 3d): {e}"
        ),
    }
}

pub async fn manifest(
    store: &shared::store::Store,
    tenancy: &super::Tenancy,
    args: &ManifestArgs,
) -> Result<()> {
    // Deliveries to a folder record absolute paths; a folder given relative
    // to here is compared as the absolute path it names.
    let destination: Destination = match &args.destination {
        Some(text) => match text
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--destination: {e}"))?
        {
            Destination::Directory(dir) => {
                Destination::Directory(super::absolute(&dir).context("--destination")?)
            }
            bucket => bucket,
        },
        None => Destination::Directory(super::absolute(&args.out).context("--out")?),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let scope = tenancy.scope(crate::args::AllTenants::default());
    let written =
        shared::manifest::rebuild::rebuild(store, &scope, &destination, &args.out).await?;
    out::line(written.path.display())?;
    out::note(format_args!(
        "{} for {} written to {}",
        count(written.lines, "line", "lines"),
        count(written.jobs, "job", "jobs"),
        written.path.display()
    ));
    for why in written.skipped.iter().take(10) {
        out::note(format_args!("left out: {why}"));
    }
    if written.skipped.len() > 10 {
        out::note(format_args!(
            "... and {} more left out",
            written.skipped.len() - 10
        ));
    }
    Ok(())
}
