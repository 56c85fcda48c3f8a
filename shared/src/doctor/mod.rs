//! `asmr doctor`: checks a deployed project against what `terraform/`
//! deploys (README, "What the first real deployment must verify"), one
//! line per check, each with the fix of what is wrong.
//!
//! What is checked, all of it read-only and free: the APIs terraform turns
//! on are enabled (Service Usage); each function's account holds its
//! project roles (the project's IAM policy); each push subscription pushes
//! to its service with an OIDC token of the push account and the service's
//! audience, a retry policy and the dead-letter topic (Pub/Sub); the output
//! bucket notifies the gcs-events topic of finalized outputs (Cloud
//! Storage); every index of `store::indexes` is READY (Firestore's admin
//! API); the scheduler jobs are enabled (Cloud Scheduler); the caller holds
//! what these reads and the models need (Resource Manager's
//! `testIamPermissions`); each model answers a free read of its publisher
//! model (Vertex AI); neither model has a quota of 0 in the region (Cloud
//! Quotas); and today's budget has room left (the store, as `asmr stats`).
//!
//! The checks run at once, each within its time-out; an endpoint that
//! cannot be reached is a failed check with its error, never a hang.

pub mod expected;
mod google;
mod infra;
mod runtime;

use crate::redact::Secret;
use clap::Args;
use expected::{Names, PUSH_SUBSCRIPTIONS};
use futures::future::{BoxFuture, FutureExt, join_all};
use google::Google;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One checked thing: what, whether it is right, what was found, and what
/// to run when it is not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`apis`, `subscription asmr-requests-intake`...).
    pub check: String,
    /// Whether it is as terraform makes it.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// The gcloud command or terraform step that fixes it; `None` when ok.
    pub fix: Option<String>,
}

impl Check {
    /// A check that passed.
    pub fn pass(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A check that failed, with its fix.
    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            check: check.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    /// `✓ name: detail`, or `✗ name: detail — fix: FIX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.fix, self.ok) {
            (Some(fix), false) => write!(f, "✗ {}: {} — fix: {fix}", self.check, self.detail),
            (_, ok) => write!(
                f,
                "{} {}: {}",
                if ok { "✓" } else { "✗" },
                self.check,
                self.detail
            ),
        }
    }
}

/// Where Google's APIs are; each can be pointed elsewhere (an emulator, a
/// test's fake). Resource Manager, OAuth 2.0, Cloud Storage and Vertex AI
/// come with the Vertex AI options (RESOURCE_MANAGER_BASE_URL,
/// OAUTH2_BASE_URL, STORAGE_BASE_URL, VERTEX_BASE_URL).
#[derive(Clone, Debug, Args)]
pub struct EndpointArgs {
    /// Service Usage base URL, asked which APIs are enabled.
    #[arg(
        long,
        env = "SERVICE_USAGE_BASE_URL",
        default_value = "https://serviceusage.googleapis.com",
        hide = true
    )]
    pub service_usage_base_url: String,
    /// Pub/Sub REST base URL [default: http://PUBSUB_EMULATOR_HOST when
    /// set, else https://pubsub.googleapis.com].
    #[arg(long, env = "PUBSUB_BASE_URL", hide = true)]
    pub pubsub_base_url: Option<String>,
    /// Firestore admin base URL, asked for the indexes.
    #[arg(
        long,
        env = "FIRESTORE_BASE_URL",
        default_value = "https://firestore.googleapis.com",
        hide = true
    )]
    pub firestore_base_url: String,
    /// Cloud Scheduler base URL.
    #[arg(
        long,
        env = "CLOUD_SCHEDULER_BASE_URL",
        default_value = "https://cloudscheduler.googleapis.com",
        hide = true
    )]
    pub cloud_scheduler_base_url: String,
    /// Cloud Quotas base URL, asked for the models' quotas.
    #[arg(
        long,
        env = "CLOUD_QUOTAS_BASE_URL",
        default_value = "https://cloudquotas.googleapis.com",
        hide = true
    )]
    pub cloud_quotas_base_url: String,
}

/// Where every API is, base URLs without a trailing slash.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub service_usage: String,
    pub resource_manager: String,
    pub oauth2: String,
    pub pubsub: String,
    pub storage: String,
    pub firestore: String,
    pub scheduler: String,
    pub quotas: String,
    pub vertex: String,
}

impl EndpointArgs {
    /// The endpoints, with those of the Vertex AI options and the Pub/Sub
    /// emulator.
    pub fn endpoints(
        &self,
        vertex: &crate::vertex::VertexConfig,
        pubsub_emulator_host: Option<&str>,
    ) -> Endpoints {
        let trim = |url: &str| url.trim().trim_end_matches('/').to_string();
        let pubsub = match (&self.pubsub_base_url, pubsub_emulator_host) {
            (Some(url), _) => trim(url),
            (None, Some(host)) if host.contains("://") => trim(host),
            (None, Some(host)) => format!("http://{}", host.trim()),
            (None, None) => "https://pubsub.googleapis.com".into(),
        };
        Endpoints {
            service_usage: trim(&self.service_usage_base_url),
            resource_manager: trim(&vertex.resource_manager_url),
            oauth2: trim(&vertex.oauth2_url),
            pubsub,
            storage: trim(&vertex.storage_url),
            firestore: trim(&self.firestore_base_url),
            scheduler: trim(&self.cloud_scheduler_base_url),
            quotas: trim(&self.cloud_quotas_base_url),
            vertex: trim(&vertex.base_url),
        }
    }
}

/// What to check, and where.
#[derive(Clone, Debug)]
pub struct Doctor {
    /// The deployment's names: project, prefix, database.
    pub names: Names,
    /// Region of Cloud Run and Cloud Scheduler (terraform's `region`).
    pub region: String,
    /// Region of the models (terraform's `vertex_location`).
    pub location: String,
    /// The image model and the video model.
    pub models: [String; 2],
    /// Where the APIs are.
    pub endpoints: Endpoints,
    /// The token to send instead of Application Default Credentials'.
    pub token: Option<Secret>,
    /// The longest each check may take.
    pub timeout: Duration,
}

/// What every check shares.
struct Context {
    doctor: Doctor,
    google: Google,
}

type Pending = BoxFuture<'static, Check>;

/// What a check gives: its line, or the line of the call it could not
/// make (`Err`, so that `?` ends it).
type Outcome = Result<Check, Check>;

/// A check under its name, to run: `check` over the shared context.
fn pending<F, Fut>(context: &Arc<Context>, name: impl Into<String>, check: F) -> (String, Pending)
where
    F: FnOnce(Arc<Context>) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let outcome = check(context.clone());
    (
        name.into(),
        async move { outcome.await.unwrap_or_else(|failed| failed) }.boxed(),
    )
}

/// Runs every check at once and returns their lines in a fixed order.
pub async fn run(doctor: Doctor) -> Vec<Check> {
    let timeout = doctor.timeout;
    let google = match google::Google::new(doctor.token.as_ref(), timeout) {
        Ok(google) => google,
        Err(e) => {
            return vec![Check::fail(
                "doctor",
                format!("no HTTP client: {e}"),
                "report this as a bug",
            )];
        }
    };
    let c = &Arc::new(Context { doctor, google });
    let mut checks = vec![
        pending(c, "apis", infra::apis),
        pending(c, "service accounts", infra::accounts),
    ];
    for subscription in PUSH_SUBSCRIPTIONS {
        let name = format!(
            "subscription {}",
            c.doctor.names.subscription(&subscription)
        );
        checks.push(pending(c, name, move |c| async move {
            infra::subscription(&c, &subscription).await
        }));
    }
    checks.extend([
        pending(c, "bucket notification", infra::notification),
        pending(c, "firestore indexes", infra::indexes),
        pending(c, "scheduler jobs", infra::scheduler),
        pending(c, "caller", runtime::caller),
    ]);
    for model in c.doctor.models.clone() {
        let name = format!("model {model}");
        checks.push(pending(c, name, move |c| async move {
            runtime::model(&c, &model).await
        }));
    }
    checks.extend([
        pending(c, "quota", runtime::quota),
        pending(c, "budget", runtime::budget),
    ]);
    join_all(checks.into_iter().map(|(name, check)| async move {
        match tokio::time::timeout(timeout, check).await {
            Ok(check) => check,
            Err(_) => Check::fail(
                name,
                format!("no answer within {timeout:?}"),
                "check the network and the endpoint, then run asmr doctor again (--timeout waits longer)",
            ),
        }
    }))
    .await
}

/// The line of a check whose call failed: the error, and its fix.
fn call_failed(check: &str, what: &str, error: &google::CallError) -> Check {
    Check::fail(
        check,
        format!("{what}: {error}"),
        google::generic_fix(error),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_what_is_wrong_and_how_to_fix_it() {
        assert_eq!(
            Check::pass("apis", "16 enabled").to_string(),
            "✓ apis: 16 enabled"
        );
        assert_eq!(
            Check::fail(
                "apis",
                "run.googleapis.com is off",
                "gcloud services enable run.googleapis.com"
            )
            .to_string(),
            "✗ apis: run.googleapis.com is off — fix: gcloud services enable run.googleapis.com"
        );
        let json = serde_json::to_value(Check::pass("apis", "ok")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"check": "apis", "ok": true, "detail": "ok", "fix": null})
        );
    }
}
