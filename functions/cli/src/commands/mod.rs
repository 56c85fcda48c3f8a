//! One module per command. Each takes the open store and its parsed
//! arguments, writes data to stdout and messages to stderr (see [`crate::out`]).

mod add;
mod change;
pub mod doctor;
mod downloads;
mod inspect;
pub mod local_run;
mod rejected;
mod report;
mod review;
mod serve;
mod stats;
mod tenant;
mod webhooks;

use crate::args::{AllTenants, Command};
use crate::out;
use anyhow::{Context, Result};
use shared::config::{Adapters, StoreArgs};
use shared::domain::job::Job;
use shared::domain::paths::absolute;
use shared::domain::tenant::TenantName;
use shared::error::Error;
use shared::store::Store;
use shared::store::tenants::Scope;
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

/// The tenant a command acts for (`--tenant`): its jobs and downloads are
/// the only ones it finds by id, as if no other tenant's existed.
pub struct Tenancy {
    tenant: TenantName,
}

impl Tenancy {
    /// Whose records a view covers: --tenant's, or everyone's with
    /// --all-tenants.
    fn scope(&self, all: AllTenants) -> Scope {
        match all.all_tenants {
            true => Scope::Everyone,
            false => Scope::Tenant(self.tenant.clone()),
        }
    }

    /// Whether `tenant` is the one acted for.
    fn owns(&self, tenant: &TenantName) -> bool {
        *tenant == self.tenant
    }

    /// The job `id` of the tenant, or not found.
    async fn job(&self, store: &Store, id: &str) -> Result<Job> {
        match store.get_job(id).await? {
            Some(job) if self.owns(job.tenant()) => Ok(job),
            _ => Err(Error::NotFound {
                kind: "job",
                id: id.to_string(),
            }
            .into()),
        }
    }

    /// The tenant acted for, if it exists and is enabled: what new jobs
    /// are made for.
    async fn usable(&self, store: &Store) -> Result<TenantName> {
        match store.tenant(&self.tenant).await? {
            None => anyhow::bail!(
                "tenant {} does not exist (`asmr tenant list`, `asmr tenant add {}`)",
                self.tenant,
                self.tenant
            ),
            Some(tenant) if tenant.disabled() => anyhow::bail!(
                "tenant {} is disabled (`asmr tenant enable {}`)",
                self.tenant,
                self.tenant
            ),
            Some(_) => Ok(self.tenant.clone()),
        }
    }
}

/// How many store calls a bulk command keeps in flight. Firestore answers
/// each in tens of milliseconds, so one at a time would make a 10,000-line
/// file take minutes; the embedded store simply serialises them.
const IN_FLIGHT: usize = 32;

/// Opens the store (and, for a command that creates or ends jobs, Pub/Sub),
/// says which store it is, and runs `command` on it.
pub async fn run(args: &StoreArgs, tenant: &TenantName, command: Command) -> Result<()> {
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
            | Command::Serve(_)
    );
    let Adapters { store, bus, topics } = args
        .connect_with(changes_jobs)
        .await
        .context("opening the store")?;
    let queue = change::Queue {
        bus: bus.as_ref(),
        topics: &topics,
    };
    let tenancy = Tenancy {
        tenant: tenant.clone(),
    };
    let outcome = match command {
        Command::Add(args) => {
            let tenant = tenancy.usable(&store).await?;
            add::run(&store, bus.as_ref(), topics.clone(), &tenant, args).await
        }
        Command::Stats(args) => stats::run(&store, &tenancy.scope(args.scope), &args).await,
        Command::List(args) => inspect::list(&store, &tenancy.scope(args.scope), &args).await,
        Command::Show(args) => inspect::show(&store, &tenancy, &args).await,
        Command::Reset(args) => change::reset(&store, &queue, &args).await,
        Command::Retry(args) => change::retry(&store, &queue, &tenancy, &args).await,
        Command::Cancel(args) => change::cancel(&store, &tenancy, &args.id).await,
        Command::Downloads(args) => {
            downloads::list(&store, &tenancy.scope(args.scope), &args).await
        }
        Command::RetryDownload(args) => downloads::retry(&store, &tenancy, &args.id).await,
        Command::Rejected(args) => rejected::list(&store, &tenancy.scope(args.scope), &args).await,
        Command::Approve(args) => review::approve(&store, &tenancy, &args).await,
        Command::Reject(args) => review::reject(&store, &tenancy, &args).await,
        Command::Promote(args) => review::promote(&store, &queue, &tenancy, &args).await,
        Command::Report(args) => report::report(&store, &tenancy.scope(args.scope), &args).await,
        Command::Manifest(args) => report::manifest(&store, &tenancy, &args).await,
        Command::Tenant(command) => tenant::run(&store, command).await,
        Command::Webhooks(args) => match &args.command {
            Some(crate::args::WebhooksCommand::Redeliver(redeliver)) => {
                webhooks::redeliver(&store, &tenancy.scope(args.scope), redeliver).await
            }
            None => webhooks::list(&store, &tenancy.scope(args.scope), &args).await,
        },
        Command::Serve(args) => {
            let scope = tenancy.scope(args.scope);
            serve::run(&store, bus.clone(), topics.clone(), scope, &args).await
        }
        Command::Run(_) => anyhow::bail!("`asmr run` opens its own store"),
        Command::Doctor(_) => anyhow::bail!("`asmr doctor` opens its own store"),
    };
    store.flush_events().await;
    outcome
}
