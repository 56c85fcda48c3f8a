//! `asmr rejected`: the requests intake could not turn into jobs (no kind,
//! bad JSON, a blank prompt...), newest first, with the reason each was
//! refused. Intake acknowledges them so Pub/Sub stops sending them; this is
//! where an operator sees them.

use crate::args::RejectedArgs;
use crate::out::{self, Table};
use anyhow::Result;
use shared::store::Store;
use shared::store::rejected::Rejected;
use shared::store::tenants::Scope;

/// Width of the reason column.
const REASON_WIDTH: usize = 100;

pub async fn list(store: &Store, scope: &Scope, args: &RejectedArgs) -> Result<()> {
    let (rejected, more) = store.first_rejected(scope, args.limit as usize).await?;

    if args.json {
        out::json_pretty(&rejected)?;
    } else if !rejected.is_empty() {
        out::text(&table(&rejected))?;
    }
    let shown = out::count(rejected.len(), "rejected request", "rejected requests");
    match (rejected.is_empty(), more) {
        (true, _) => out::note("no rejected requests"),
        (false, true) => out::note(format_args!(
            "{shown}, newest first; there are more (raise --limit)"
        )),
        (false, false) => out::note(format_args!("{shown}, newest first")),
    }
    Ok(())
}

fn table(rejected: &[Rejected]) -> String {
    let mut table = Table::new(&["received (UTC)", "message id", "reason"]);
    for record in rejected {
        table.row(vec![
            out::short_time(record.received_at),
            record.message_id.clone().unwrap_or_else(|| "-".into()),
            out::one_line(&record.reason, REASON_WIDTH),
        ]);
    }
    table.render()
}
