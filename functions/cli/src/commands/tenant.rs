//! `asmr tenant ...`: the teams sharing the deployment. A key is printed
//! once, when it is made; the store keeps its hash only.

use crate::args::{
    TenantAddArgs, TenantCommand, TenantKeyArgs, TenantListArgs, TenantSettingsArgs,
    TenantShowArgs, TenantWebhookSecretArgs,
};
use crate::out::{self, Table};
use anyhow::{Result, bail};
use shared::cost::format_usd;
use shared::domain::tenant::{Tenant, TenantName, TenantSettings};
use shared::domain::webhook::Webhook;
use shared::error::Error;
use shared::store::Store;
use shared::time::Timestamp;

pub async fn run(store: &Store, command: TenantCommand) -> Result<()> {
    match command {
        TenantCommand::Add(args) => add(store, args).await,
        TenantCommand::List(args) => list(store, &args).await,
        TenantCommand::Show(args) => show(store, &args).await,
        TenantCommand::Set(args) => {
            let settings = settings(&args.settings)?;
            let (tenant, ()) = store
                .change_tenant(&args.name, |tenant, now| tenant.set(&settings, now))
                .await?;
            out::line(tenant.name())?;
            out::note(format_args!("tenant {} changed", tenant.name()));
            Ok(())
        }
        TenantCommand::Disable(args) => disabled(store, &args.name, true).await,
        TenantCommand::Enable(args) => disabled(store, &args.name, false).await,
        TenantCommand::Key(args) => key(store, &args).await,
        TenantCommand::WebhookSecret(args) => webhook_secret(store, &args).await,
    }
}

fn settings(args: &TenantSettingsArgs) -> Result<TenantSettings> {
    let private = args.network.allow_private_networks;
    let webhook = match args.webhook.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(url) => Some(Some(
            Webhook::new(url, args.webhook_events.as_deref(), private).map_err(Error::from)?,
        )),
    };
    Ok(TenantSettings {
        display_name: args.display_name.clone(),
        daily_budget_micros: args.budget.as_ref().map(|b| b.0),
        weight: args.weight,
        destination: args.destination.as_ref().map(|d| d.0.clone()),
        webhook,
    })
}

/// Prints the tenant's signing secrets, newest first, making one first if
/// it has none (or a new one with --rotate).
async fn webhook_secret(store: &Store, args: &TenantWebhookSecretArgs) -> Result<()> {
    let tenant = match args.rotate {
        true => {
            let (tenant, _) = store
                .change_tenant(&args.name, |tenant, now| {
                    Ok(tenant.rotate_webhook_secret(args.grace, now))
                })
                .await?;
            tenant
        }
        false => store.tenant_with_webhook_secret(&args.name).await?,
    };
    let now = Timestamp::now();
    for secret in tenant.webhook_secrets(now) {
        out::line(&secret.secret)?;
    }
    out::note(format_args!(
        "{}: the secrets that sign its webhooks, newest first (Standard Webhooks, v1); during a rotation both sign",
        args.name
    ));
    Ok(())
}

async fn add(store: &Store, args: TenantAddArgs) -> Result<()> {
    if args.name.is_default() {
        bail!(
            "the default tenant always exists: `asmr tenant set default ...` changes it, `asmr tenant key default --rotate` gives it a key"
        );
    }
    let now = Timestamp::now();
    let mut tenant =
        Tenant::new(args.name.clone(), &settings(&args.settings)?, now).map_err(Error::from)?;
    tenant.rotate_webhook_secret(std::time::Duration::ZERO, now);
    let key = tenant.rotate_key(std::time::Duration::ZERO, now);
    let added = store.add_tenant(tenant).await?;
    if !added.created {
        bail!(
            "tenant {} exists already (`asmr tenant key {} --rotate` makes a new key)",
            args.name,
            args.name
        );
    }
    if args.json {
        out::json_pretty(&serde_json::json!({"tenant": added.record, "key": key.reveal()}))?;
    } else {
        out::line(key.reveal())?;
    }
    out::note(format_args!(
        "tenant {} added; its API key is printed above, once: keep it (callers send it as x-api-key)",
        args.name
    ));
    Ok(())
}

async fn list(store: &Store, args: &TenantListArgs) -> Result<()> {
    let tenants = store.tenants().await?;
    if args.json {
        let shown: Vec<Tenant> = tenants.iter().map(Tenant::without_secrets).collect();
        return out::json_pretty(&shown);
    }
    let mut table = Table::new(&[
        "tenant",
        "display name",
        "budget/day",
        "weight",
        "destination",
        "keys",
        "state",
    ])
    .right(&[3, 5]);
    let now = Timestamp::now();
    for tenant in &tenants {
        table.row(vec![
            tenant.name().to_string(),
            out::one_line(tenant.display_name(), 30),
            tenant
                .daily_budget_micros()
                .map_or_else(|| "-".into(), format_usd),
            tenant.weight().to_string(),
            tenant.destination().unwrap_or("(default)").to_string(),
            tenant
                .keys()
                .iter()
                .filter(|k| k.is_live(now))
                .count()
                .to_string(),
            state(tenant).to_string(),
        ]);
    }
    out::text(&table.render())?;
    out::note(out::count(tenants.len(), "tenant", "tenants"));
    Ok(())
}

fn state(tenant: &Tenant) -> &'static str {
    match (tenant.disabled(), tenant.created_at()) {
        (true, _) => "disabled",
        (false, None) => "implicit",
        (false, Some(_)) => "enabled",
    }
}

async fn show(store: &Store, args: &TenantShowArgs) -> Result<()> {
    if store.tenant(&args.name).await?.is_none() {
        bail!("tenant {} not found (`asmr tenant list`)", args.name);
    }
    let tenant = store.tenant_with_webhook_secret(&args.name).await?;
    if args.json {
        return out::json_pretty(&tenant);
    }
    let now = Timestamp::now();
    let mut table = Table::new(&["tenant", tenant.name().as_str()]);
    let mut row = |name: &str, value: String| table.row(vec![name.to_string(), value]);
    row("display name", tenant.display_name().to_string());
    row("state", state(&tenant).to_string());
    row(
        "budget/day",
        tenant
            .daily_budget_micros()
            .map_or_else(|| "none of its own".into(), format_usd),
    );
    row("weight", tenant.weight().to_string());
    row(
        "output prefix",
        match Tenant::output_prefix(tenant.name()) {
            prefix if prefix.is_empty() => "(none)".into(),
            prefix => prefix,
        },
    );
    row(
        "destination",
        tenant
            .destination()
            .map_or_else(|| "the deployment's (default)".into(), str::to_string),
    );
    row(
        "webhook",
        tenant.webhook().map_or_else(
            || "none (jobs name their own)".into(),
            |hook| {
                let events: Vec<&str> = hook.events.iter().map(|e| e.as_str()).collect();
                format!("{} ({})", hook.url, events.join(", "))
            },
        ),
    );
    for secret in tenant.webhook_secrets(now) {
        let until = secret.expires_at.map_or_else(
            || "current".to_string(),
            |end| format!("signs until {}", out::short_time(end)),
        );
        row("webhook secret", format!("{} ({until})", secret.secret));
    }
    for key in tenant.keys() {
        let until = match key.expires_at {
            None => "current".to_string(),
            Some(end) if end > now => format!("valid until {}", out::short_time(end)),
            Some(_) => "expired".to_string(),
        };
        row(
            "key",
            format!(
                "{}… made {}, {until}",
                key.hint,
                out::short_time(key.created_at)
            ),
        );
    }
    out::text(&table.render())?;
    Ok(())
}

async fn disabled(store: &Store, name: &TenantName, disabled: bool) -> Result<()> {
    let (tenant, ()) = store
        .change_tenant(name, |tenant, now| {
            tenant.set_disabled(disabled, now);
            Ok(())
        })
        .await?;
    out::line(tenant.name())?;
    out::note(format_args!(
        "tenant {} {}",
        tenant.name(),
        match disabled {
            true => "disabled: its keys get 403 and its requests are rejected",
            false => "enabled",
        }
    ));
    Ok(())
}

async fn key(store: &Store, args: &TenantKeyArgs) -> Result<()> {
    let (_, key) = store
        .change_tenant(&args.name, |tenant, now| {
            Ok(tenant.rotate_key(args.grace, now))
        })
        .await?;
    out::line(key.reveal())?;
    out::note(format_args!(
        "a new key for {}, printed above once; the keys it replaces work for {} more",
        args.name,
        humantime::format_duration(args.grace)
    ));
    Ok(())
}
