//! `asmr webhooks`: the webhook deliveries, newest first, each with its
//! last answer; `asmr webhooks redeliver ID` sends one again now.

use crate::args::{RedeliverArgs, WebhooksArgs};
use crate::out::{self, Table};
use anyhow::{Result, bail};
use shared::domain::webhook_delivery::{Delivery, DeliveryState, RetrySchedule};
use shared::store::Store;
use shared::store::tenants::Scope;
use shared::store::webhooks::DeliveryFilter;
use shared::webhooks::notifier::{Notifier, NotifierSettings};
use shared::webhooks::send::Sender;

/// Width of the answer column.
const ANSWER_WIDTH: usize = 60;

pub async fn list(store: &Store, scope: &Scope, args: &WebhooksArgs) -> Result<()> {
    let filter = DeliveryFilter {
        tenant: scope.tenant(),
        state: args.failed.then_some(DeliveryState::Failed),
    };
    let page = store.list_webhooks(&filter, args.limit, None).await?;
    if args.json {
        out::json_pretty(&page.items)?;
    } else if !page.items.is_empty() {
        out::text(&table(&page.items))?;
    }
    let shown = out::count(page.items.len(), "delivery", "deliveries");
    match (page.items.is_empty(), page.next.is_some()) {
        (true, _) => out::note("no webhook deliveries"),
        (false, true) => out::note(format_args!(
            "{shown}, newest first; there are more (raise --limit)"
        )),
        (false, false) => out::note(format_args!("{shown}, newest first")),
    }
    Ok(())
}

fn table(deliveries: &[Delivery]) -> String {
    let mut table = Table::new(&[
        "created (UTC)",
        "webhook id",
        "job",
        "tenant",
        "event",
        "state",
        "tries",
        "last answer",
        "url",
    ])
    .right(&[6]);
    for d in deliveries {
        table.row(vec![
            out::short_time(d.created_at),
            d.id.clone(),
            d.job_id.clone(),
            d.tenant.to_string(),
            d.event.as_str().to_string(),
            d.state.as_str().to_string(),
            d.attempts.to_string(),
            out::one_line(d.last_answer.as_deref().unwrap_or("-"), ANSWER_WIDTH),
            d.url.clone(),
        ]);
    }
    table.render()
}

/// Makes delivery `id` due again and sends it from here, once.
pub async fn redeliver(store: &Store, scope: &Scope, args: &RedeliverArgs) -> Result<()> {
    let Some(delivery) = store.get_webhook(&args.id).await? else {
        bail!("webhook delivery {} not found (`asmr webhooks`)", args.id);
    };
    if !scope.covers(&delivery.tenant) {
        bail!("webhook delivery {} not found (`asmr webhooks`)", args.id);
    }
    // The operator's word that the receiver listens again.
    store
        .change_tenant(&delivery.tenant, |tenant, now| {
            if tenant.is_gone(&delivery.url) {
                tenant.set_gone(&delivery.url, false, now);
            }
            Ok(())
        })
        .await?;
    let schedule = RetrySchedule::default();
    let sender = Sender::new(args.network.allow_private_networks, args.timeout)?;
    let notifier = Notifier::new(
        store.clone(),
        sender,
        NotifierSettings {
            schedule,
            ..NotifierSettings::default()
        },
    );
    let Some(sent) = notifier.redeliver(&args.id).await? else {
        bail!(
            "webhook delivery {} is being sent by the notifier right now; see `asmr webhooks`",
            args.id
        );
    };
    out::line(format_args!(
        "{} {}",
        sent.state.as_str(),
        sent.last_answer.as_deref().unwrap_or("-")
    ))?;
    match sent.state {
        DeliveryState::Delivered => out::note(format_args!("webhook {} delivered", sent.id)),
        DeliveryState::Pending => out::note(format_args!(
            "webhook {} not accepted; the notifier sends it again on its schedule for a day",
            sent.id
        )),
        _ => out::note(format_args!("webhook {} {}", sent.id, sent.state.as_str())),
    }
    Ok(())
}
