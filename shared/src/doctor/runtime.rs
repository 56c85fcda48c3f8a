//! The checks of what the deployment runs on: what the caller may do,
//! whether the models answer, their quotas, and today's budget.

use super::google::CallError;
use super::{Check, Context, Outcome, call_failed};
use crate::store::firestore::FirestoreConfig;
use crate::store::{Store, StoreConfig};
use crate::vertex::client::{MODEL_PERMISSIONS, MODEL_ROLE, iam_member, lacking};
use serde_json::{Value, json};
use std::sync::Arc;

/// What the checks read, by permission: each call's own, as its
/// reference page names it. `roles/viewer` holds them all.
pub const READS: [&str; 9] = [
    "serviceusage.services.list",
    "resourcemanager.projects.getIamPolicy",
    "pubsub.subscriptions.get",
    "storage.buckets.get",
    "datastore.indexes.list",
    "datastore.entities.get",
    "datastore.entities.list",
    "cloudscheduler.jobs.list",
    "cloudquotas.quotas.get",
];

/// The role that holds [`READS`].
const READS_ROLE: &str = "roles/viewer";

/// The caller holds what the checks read and what calling the models
/// needs: Resource Manager's `testIamPermissions`, which tests the
/// caller's own permissions only, needs none itself and costs nothing.
/// The deployment's accounts are checked from the policy instead (the
/// `service accounts` line): no call can test another principal's.
pub(super) async fn caller(c: Arc<Context>) -> Outcome {
    let project = &c.doctor.names.project;
    let url = format!(
        "{}/v1/projects/{project}:testIamPermissions",
        c.doctor.endpoints.resource_manager
    );
    let asked: Vec<&str> = READS
        .iter()
        .chain(MODEL_PERMISSIONS.iter())
        .copied()
        .collect();
    let answer = match c.google.post(&url, &json!({ "permissions": asked })).await {
        Ok(answer) => answer,
        Err(e) => {
            return Err(call_failed(
                "caller",
                "Resource Manager did not test your permissions",
                &e,
            ));
        }
    };
    let lacking = lacking(&asked, &answer);
    let who = principal(&c).await;
    if lacking.is_empty() {
        return Ok(Check::pass(
            "caller",
            format!(
                "{} holds what these checks read and {}",
                who.as_deref().unwrap_or("you"),
                MODEL_PERMISSIONS.join(", ")
            ),
        ));
    }
    let member = iam_member(who.as_deref());
    let mut roles = Vec::new();
    if lacking.iter().any(|p| READS.contains(p)) {
        roles.push(READS_ROLE);
    }
    if lacking.iter().any(|p| MODEL_PERMISSIONS.contains(p)) {
        roles.push(MODEL_ROLE);
    }
    let fixes: Vec<String> = roles
        .iter()
        .map(|role| {
            format!(
                "gcloud projects add-iam-policy-binding {project} --member={member} --role={role}"
            )
        })
        .collect();
    Ok(Check::fail(
        "caller",
        format!(
            "{} lacks {} on project {project}",
            who.as_deref().unwrap_or("this caller"),
            lacking.join(", ")
        ),
        fixes.join("; "),
    ))
}

/// The email of the caller's token, when Google says (`tokeninfo`).
async fn principal(c: &Context) -> Option<String> {
    let base = &c.doctor.endpoints.oauth2;
    let token = c.google.token_for(base).await.ok()??;
    let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let info = c
        .google
        .get(&format!("{base}/tokeninfo?access_token={encoded}"))
        .await
        .ok()?;
    info["email"].as_str().map(str::to_string)
}

/// A model answers a free read of its publisher model in the region
/// (Vertex AI `publishers.models.get`): the API is on, the caller's token
/// is taken and the model exists there, without a paid call.
pub(super) async fn model(c: &Context, model: &str) -> Outcome {
    let check = format!("model {model}");
    let (project, location) = (&c.doctor.names.project, &c.doctor.location);
    let url = format!(
        "{}/v1/publishers/google/models/{model}",
        c.doctor.endpoints.vertex
    );
    Ok(match c.google.get(&url).await {
        Ok(found) => Check::pass(
            check,
            format!(
                "answers in {location} ({}, version {})",
                found["launchStage"]
                    .as_str()
                    .unwrap_or("launch stage not given"),
                found["versionId"].as_str().unwrap_or("-")
            ),
        ),
        Err(e @ CallError::Status { status: 404, .. }) => Check::fail(
            check,
            format!("Vertex AI does not know it in {location} ({e})"),
            "set image_model / video_model in the deployment's settings to a model of https://cloud.google.com/vertex-ai/generative-ai/docs/models available in vertex_location, then run terraform/deploy",
        ),
        Err(e @ CallError::Status { status: 403, .. }) => Check::fail(
            check,
            format!("refused ({e})"),
            format!(
                "gcloud services enable aiplatform.googleapis.com --project={project}; gcloud projects add-iam-policy-binding {project} --member=user:YOU@example.com --role={MODEL_ROLE}"
            ),
        ),
        Err(e) => call_failed(&check, "Vertex AI did not answer", &e),
    })
}

/// Neither model has a quota of 0 in the region (Cloud Quotas
/// `quotaInfos.list` of aiplatform.googleapis.com). What a call uses of
/// its quota is not read: the generators scale to `model_quota` (README,
/// "Scaling to the quota") and wait behind a spent one.
pub(super) async fn quota(c: Arc<Context>) -> Outcome {
    let (project, location) = (&c.doctor.names.project, &c.doctor.location);
    let url = format!(
        "{}/v1/projects/{project}/locations/global/services/aiplatform.googleapis.com/quotaInfos?pageSize=500",
        c.doctor.endpoints.quotas
    );
    let infos = match c.google.list(&url, "quotaInfos").await {
        Ok(infos) => infos,
        Err(e @ CallError::Status { status: 403, .. }) if e.to_string().contains("cloudquotas") => {
            return Ok(Check::fail(
                "quota",
                format!("the Cloud Quotas API is off ({e})"),
                format!("gcloud services enable cloudquotas.googleapis.com --project={project}"),
            ));
        }
        Err(e) => {
            return Err(call_failed(
                "quota",
                "Cloud Quotas did not list the Vertex AI quotas",
                &e,
            ));
        }
    };
    let mut seen = Vec::new();
    let mut empty = Vec::new();
    for model in &c.doctor.models {
        let limits = limits_of(&infos, model, location);
        match limits.iter().min_by_key(|(_, value)| *value) {
            Some((quota_id, 0)) => empty.push((model.clone(), quota_id.clone())),
            Some((quota_id, value)) if *value < 0 => {
                seen.push(format!("{model}: no limit ({quota_id})"))
            }
            Some((quota_id, value)) => seen.push(format!("{model}: {value} ({quota_id})")),
            None => seen.push(format!("{model}: no quota of its own (a shared pool)")),
        }
    }
    if empty.is_empty() {
        return Ok(Check::pass(
            "quota",
            format!("in {location}: {}", seen.join("; ")),
        ));
    }
    let shown: Vec<String> = empty
        .iter()
        .map(|(m, q)| format!("{m} has a quota of 0 ({q})"))
        .collect();
    let fixes: Vec<String> = empty
        .iter()
        .map(|(model, quota_id)| {
            format!(
                "gcloud beta quotas preferences create --service=aiplatform.googleapis.com --quota-id={quota_id} --preferred-value=N --dimensions=region={location},base_model={model} --project={project} (or the Quotas page of the console)"
            )
        })
        .collect();
    Ok(Check::fail(
        "quota",
        format!("in {location}: {}", shown.join("; ")),
        fixes.join("; "),
    ))
}

/// The limits `(quotaId, value)` that apply to `model` in `location`:
/// every dimensions-info whose `base_model` is the model (or the family
/// the model id starts with) and whose `region`, if it names one, is
/// `location`. -1 is no limit.
fn limits_of(infos: &[Value], model: &str, location: &str) -> Vec<(String, i64)> {
    let mut limits = Vec::new();
    for info in infos {
        let quota_id = info["quotaId"].as_str().unwrap_or("?");
        for dims in info["dimensionsInfos"].as_array().into_iter().flatten() {
            let dimensions = &dims["dimensions"];
            let Some(base) = dimensions["base_model"].as_str() else {
                continue;
            };
            let region_matches = dimensions["region"].as_str().is_none_or(|r| r == location);
            if (model == base || model.starts_with(&format!("{base}-"))) && region_matches {
                let value = dims["details"]["value"]
                    .as_str()
                    .and_then(|v| v.parse().ok());
                let value = value.or_else(|| dims["details"]["value"].as_i64());
                if let Some(value) = value {
                    limits.push((quota_id.to_string(), value));
                }
            }
        }
    }
    limits
}

/// Today's budget has room left, as `asmr stats` counts it from the store.
pub(super) async fn budget(c: Arc<Context>) -> Outcome {
    let names = &c.doctor.names;
    let config = StoreConfig::Firestore(FirestoreConfig {
        project: names.project.clone(),
        database: names.database.clone(),
        prefix: names.prefix.clone(),
    });
    let stats = match Store::open(&config).await {
        Ok(store) => store.stats().await,
        Err(e) => Err(e),
    };
    let budget = match stats {
        Ok(stats) => stats.budget,
        Err(e) => {
            return Ok(Check::fail(
                "budget",
                format!("the store did not give today's figures: {e}"),
                "gcloud auth application-default login, and see the `caller` line",
            ));
        }
    };
    let Some(day) = budget else {
        return Ok(Check::pass("budget", "no figures for today yet"));
    };
    let Some(limit) = day.budget_usd else {
        return Ok(Check::pass(
            "budget",
            format!(
                "no daily limit in force today ({}): ${:.2} spent",
                day.day, day.spent_usd
            ),
        ));
    };
    let left = limit - day.spent_usd - day.reserved_usd;
    if left > 0.0 && day.waiting_jobs == 0 {
        return Ok(Check::pass(
            "budget",
            format!(
                "${left:.2} of ${limit:.2} left today ({}): ${:.2} spent, ${:.2} held by running calls",
                day.day, day.spent_usd, day.reserved_usd
            ),
        ));
    }
    Ok(Check::fail(
        "budget",
        format!(
            "today's budget is spent ({}): ${:.2} spent and ${:.2} held of ${limit:.2}; {} jobs wait for it",
            day.day, day.spent_usd, day.reserved_usd, day.waiting_jobs
        ),
        "raise budget_usd_per_day in the deployment's settings and run terraform/deploy, or wait for 00:00 UTC",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_limits_are_those_of_its_base_model_in_the_region() {
        let infos = vec![json!({
            "quotaId": "OnlinePredictionRequestsPerMinutePerProjectPerBaseModel",
            "refreshInterval": "minute",
            "dimensions": ["region", "base_model"],
            "dimensionsInfos": [
                {"dimensions": {"region": "us-central1", "base_model": "veo-3.1-generate"}, "details": {"value": "10"}},
                {"dimensions": {"region": "europe-west4", "base_model": "veo-3.1-generate"}, "details": {"value": "0"}},
                {"dimensions": {"region": "us-central1", "base_model": "imagen-4.0-generate"}, "details": {"value": "0"}},
                {"dimensions": {}, "details": {"value": "600"}}
            ]
        })];
        let id = "OnlinePredictionRequestsPerMinutePerProjectPerBaseModel".to_string();
        assert_eq!(
            limits_of(&infos, "veo-3.1-generate-001", "us-central1"),
            [(id.clone(), 10)]
        );
        assert_eq!(
            limits_of(&infos, "veo-3.1-generate-001", "europe-west4"),
            [(id.clone(), 0)]
        );
        assert_eq!(
            limits_of(&infos, "imagen-4.0-generate-001", "us-central1"),
            [(id, 0)]
        );
        assert!(limits_of(&infos, "gemini-2.5-flash-image", "us-central1").is_empty());
    }
}
