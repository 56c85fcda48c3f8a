//! The checks of what terraform creates: APIs, the accounts' project
//! roles, the push subscriptions, the bucket notification, the Firestore
//! indexes and the scheduler jobs.

use super::expected::{
    APIS, FUNCTIONS, NOTIFIED_FOLDERS, ProjectRole, PushSubscription, SCHEDULER_JOBS, Topic,
};
use super::{Check, Context, Outcome, call_failed};
use crate::store::backend::Dir;
use crate::store::indexes::{INDEXES, Index};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The step that puts back whatever terraform made.
const DEPLOY: &str = "run terraform/deploy";

/// Every API terraform turns on is enabled (Service Usage
/// `services.list`, enabled ones only, page after page).
pub(super) async fn apis(c: Arc<Context>) -> Outcome {
    let project = &c.doctor.names.project;
    let url = format!(
        "{}/v1/projects/{project}/services?filter=state:ENABLED&pageSize=200",
        c.doctor.endpoints.service_usage
    );
    let services = c
        .google
        .list(&url, "services")
        .await
        .map_err(|e| call_failed("apis", "Service Usage did not list the APIs", &e))?;
    let enabled: BTreeSet<&str> = services
        .iter()
        .filter_map(|s| {
            s["config"]["name"]
                .as_str()
                .or_else(|| last_segment(&s["name"]))
        })
        .collect();
    let off: Vec<&str> = APIS
        .into_iter()
        .filter(|api| !enabled.contains(api))
        .collect();
    if off.is_empty() {
        return Ok(Check::pass(
            "apis",
            format!("the {} APIs terraform turns on are enabled", APIS.len()),
        ));
    }
    Ok(Check::fail(
        "apis",
        format!("not enabled: {}", off.join(", ")),
        format!(
            "gcloud services enable {} --project={project}",
            off.join(" ")
        ),
    ))
}

/// Each function's account holds the project roles terraform grants it,
/// read from the project's IAM policy (version 3, so that conditional
/// bindings come whole; a conditional binding counts as held).
pub(super) async fn accounts(c: Arc<Context>) -> Outcome {
    let names = &c.doctor.names;
    let url = format!(
        "{}/v1/projects/{}:getIamPolicy",
        c.doctor.endpoints.resource_manager, names.project
    );
    let body = json!({"options": {"requestedPolicyVersion": 3}});
    let policy = c.google.post(&url, &body).await.map_err(|e| {
        call_failed(
            "service accounts",
            "Resource Manager did not give the project's IAM policy",
            &e,
        )
    })?;
    let empty = Vec::new();
    let bindings = policy["bindings"].as_array().unwrap_or(&empty);
    let holds = |member: &str, role: &str| {
        bindings.iter().any(|b| {
            b["role"].as_str() == Some(role)
                && b["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m.as_str() == Some(member)))
        })
    };
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    for (function, roles) in FUNCTIONS {
        let member = format!("serviceAccount:{}", names.account(function));
        for role in roles.iter().copied() {
            let role_name = names.role(role);
            if holds(&member, &role_name) {
                continue;
            }
            missing.push(format!("{} lacks {role_name}", names.account(function)));
            let condition = match role {
                ProjectRole::DatastoreUser => {
                    format!(" --condition='{}'", names.database_condition())
                }
                ProjectRole::VertexCaller => String::new(),
            };
            fixes.push(format!(
                "gcloud projects add-iam-policy-binding {} --member={member} --role={role_name}{condition}",
                names.project
            ));
        }
    }
    if missing.is_empty() {
        return Ok(Check::pass(
            "service accounts",
            format!(
                "the {} function accounts hold their project roles",
                FUNCTIONS.len()
            ),
        ));
    }
    Ok(Check::fail(
        "service accounts",
        missing.join("; "),
        format!("{DEPLOY} (iam.tf grants them), or: {}", fixes.join("; ")),
    ))
}

/// A push subscription pushes to its service's path with an OIDC token
/// of the push account for the service's audience, backs off, and
/// dead-letters (Pub/Sub `subscriptions.get`).
pub(super) async fn subscription(c: &Context, expected: &PushSubscription) -> Outcome {
    let names = &c.doctor.names;
    let project = &names.project;
    let name = names.subscription(expected);
    let check = format!("subscription {name}");
    let url = format!(
        "{}/v1/projects/{project}/subscriptions/{name}",
        c.doctor.endpoints.pubsub
    );
    let found = match c.google.get(&url).await {
        Ok(found) => found,
        Err(e) if e.status() == Some(404) => {
            return Ok(match expected.only_with {
                Some(setting) => Check::pass(
                    check,
                    format!("not deployed, as terraform leaves it without {setting}"),
                ),
                None => Check::fail(
                    check,
                    "does not exist",
                    format!("{DEPLOY} (pubsub.tf creates it)"),
                ),
            });
        }
        Err(e) => return Err(call_failed(&check, "Pub/Sub did not give it", &e)),
    };
    let mut wrong = Vec::new();
    let mut flags = Vec::new();
    let mut recreate = false;
    let topic = names.topic_path(expected.topic);
    if found["topic"].as_str() != Some(topic.as_str()) {
        wrong.push(format!("reads {}, not {topic}", text(&found["topic"])));
        recreate = true;
    }
    if found["filter"].as_str().filter(|f| !f.is_empty()) != expected.filter {
        wrong.push(format!(
            "filter {}, not {}",
            text(&found["filter"]),
            expected.filter.unwrap_or("none")
        ));
        recreate = true;
    }
    let push = &found["pushConfig"];
    let endpoint = push["pushEndpoint"].as_str().unwrap_or_default();
    let service = names.service(expected.service);
    if !pushes_to(endpoint, &service, expected.path) {
        let shown = if endpoint.is_empty() {
            "nowhere (a pull subscription)"
        } else {
            endpoint
        };
        wrong.push(format!(
            "pushes to {shown}, not to {} of the {service} service",
            expected.path
        ));
        flags.push(format!(
            "--push-endpoint=$(gcloud run services describe {service} --region={} --project={project} --format='value(status.url)'){}",
            c.doctor.region,
            expected.path.trim_end_matches('/')
        ));
    }
    let pusher = names.account("push");
    let audience = names.audience(expected.service);
    let oidc = &push["oidcToken"];
    let signer = oidc["serviceAccountEmail"].as_str().unwrap_or_default();
    let token_audience = oidc["audience"].as_str().unwrap_or_default();
    if signer != pusher || token_audience != audience {
        wrong.push(match signer {
            "" => "pushes without an OIDC token".to_string(),
            _ => format!(
                "pushes tokens of {signer} for {token_audience:?}, not of {pusher} for {audience:?}"
            ),
        });
        flags.push(format!(
            "--push-auth-service-account={pusher} --push-auth-token-audience={audience}"
        ));
    }
    if !found["retryPolicy"].is_object() {
        wrong.push("has no retry policy (a refused push comes back at once)".into());
        flags.push("--min-retry-delay=10s --max-retry-delay=600s".into());
    }
    let dead_letter = names.topic_path(Topic::DeadLetter);
    match found["deadLetterPolicy"]["deadLetterTopic"].as_str() {
        Some(topic) if topic == dead_letter => {}
        Some(other) => wrong.push(format!("dead-letters to {other}, not {dead_letter}")),
        None => {
            wrong.push("has no dead-letter policy (a poison message is pushed for ever)".into())
        }
    }
    if found["deadLetterPolicy"]["deadLetterTopic"].as_str() != Some(dead_letter.as_str()) {
        flags.push(format!(
            "--dead-letter-topic={dead_letter} --max-delivery-attempts=10"
        ));
    }
    if wrong.is_empty() {
        return Ok(Check::pass(
            check,
            format!(
                "pushes to {endpoint} as {pusher}, retried, dead-lettered to {}",
                Topic::DeadLetter.name(&names.topics())
            ),
        ));
    }
    let fix = match (recreate, flags.is_empty()) {
        (true, _) | (false, true) => format!(
            "{DEPLOY} (pubsub.tf makes it; its topic and filter cannot be changed in place)"
        ),
        (false, false) => format!(
            "{DEPLOY}, or: gcloud pubsub subscriptions update {name} --project={project} {}",
            flags.join(" ")
        ),
    };
    Ok(Check::fail(check, wrong.join("; "), fix))
}

/// Whether `endpoint` is `path` of the Cloud Run service `service`:
/// `https://SERVICE-….run.app` (either form of its URL), then the path.
fn pushes_to(endpoint: &str, service: &str, path: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("https://") else {
        return false;
    };
    let (host, tail) = rest.split_once('/').map_or((rest, ""), |(h, t)| (h, t));
    let wanted = path.trim_matches('/');
    host.starts_with(&format!("{service}-"))
        && host.ends_with(".run.app")
        && tail.trim_end_matches('/') == wanted
}

/// The output bucket notifies the gcs-events topic of objects finalized
/// in each folder the downloader delivers from (Cloud Storage
/// `notifications.list`).
pub(super) async fn notification(c: Arc<Context>) -> Outcome {
    let names = &c.doctor.names;
    let bucket = names.output_bucket();
    let url = format!(
        "{}/storage/v1/b/{bucket}/notificationConfigs",
        c.doctor.endpoints.storage
    );
    let items = match c.google.get(&url).await {
        Ok(list) => list["items"].as_array().cloned().unwrap_or_default(),
        Err(e) if e.status() == Some(404) => {
            return Ok(Check::fail(
                "bucket notification",
                format!("the output bucket gs://{bucket} does not exist"),
                format!("{DEPLOY} (storage.tf creates it)"),
            ));
        }
        Err(e) => {
            return Err(call_failed(
                "bucket notification",
                "Cloud Storage did not list the notifications",
                &e,
            ));
        }
    };
    let topic_name = Topic::GcsEvents.name(&names.topics());
    let topic = format!(
        "//pubsub.googleapis.com/{}",
        names.topic_path(Topic::GcsEvents)
    );
    let covers = |item: &Value, folder: &str| {
        let finalize = match item["event_types"].as_array() {
            Some(types) => types.iter().any(|t| t.as_str() == Some("OBJECT_FINALIZE")),
            None => true,
        };
        let prefix = item["object_name_prefix"].as_str().unwrap_or_default();
        item["topic"].as_str() == Some(topic.as_str()) && finalize && folder.starts_with(prefix)
    };
    let missing: Vec<&str> = NOTIFIED_FOLDERS
        .into_iter()
        .filter(|folder| !items.iter().any(|item| covers(item, folder)))
        .collect();
    if missing.is_empty() {
        return Ok(Check::pass(
            "bucket notification",
            format!(
                "gs://{bucket} sends OBJECT_FINALIZE of {} to {topic_name}",
                NOTIFIED_FOLDERS.join(" and ")
            ),
        ));
    }
    let fixes: Vec<String> = missing
        .iter()
        .map(|folder| {
            format!(
                "gcloud storage buckets notifications create gs://{bucket} --topic={} --event-types=OBJECT_FINALIZE --payload-format=json --object-prefix={folder}",
                names.topic_path(Topic::GcsEvents)
            )
        })
        .collect();
    Ok(Check::fail(
        "bucket notification",
        format!(
            "no notification of gs://{bucket} sends OBJECT_FINALIZE under {} to {topic_name} ({} found; a deployment with storage_events = \"eventarc\" has none)",
            missing.join(" and "),
            items.len()
        ),
        format!("{DEPLOY} (pubsub.tf makes them), or: {}", fixes.join("; ")),
    ))
}

/// Every index the store's queries need is READY (Firestore admin
/// `indexes.list` over every collection group).
pub(super) async fn indexes(c: Arc<Context>) -> Outcome {
    let names = &c.doctor.names;
    let url = format!(
        "{}/v1/projects/{}/databases/{}/collectionGroups/-/indexes",
        c.doctor.endpoints.firestore, names.project, names.database
    );
    let found = c.google.list(&url, "indexes").await.map_err(|e| {
        call_failed(
            "firestore indexes",
            "Firestore did not list the indexes",
            &e,
        )
    })?;
    let mut building = Vec::new();
    let mut broken = Vec::new();
    let mut missing = Vec::new();
    for index in INDEXES {
        let collection = format!("{}{}", names.prefix, index.collection.name());
        let state = found
            .iter()
            .find(|f| {
                collection_of(f) == Some(collection.as_str())
                    && fields_of(f) == wanted_fields(index)
            })
            .map(|f| f["state"].as_str().unwrap_or("STATE_UNSPECIFIED"));
        let shown = describe(&collection, index);
        match state {
            Some("READY") => {}
            Some("CREATING") => building.push(shown),
            Some(other) => broken.push(format!("{shown} is {other}")),
            None => missing.push((collection, index)),
        }
    }
    if building.is_empty() && broken.is_empty() && missing.is_empty() {
        return Ok(Check::pass(
            "firestore indexes",
            format!("the {} indexes the store needs are READY", INDEXES.len()),
        ));
    }
    let mut wrong = Vec::new();
    let mut fixes = Vec::new();
    if !building.is_empty() {
        wrong.push(format!("still building: {}", building.join(", ")));
        fixes.push(format!(
            "wait a few minutes for Firestore to build them (gcloud firestore indexes composite list --project={} --database={} shows their state)",
            names.project, names.database
        ));
    }
    if !broken.is_empty() {
        wrong.push(broken.join(", "));
        fixes.push(format!(
            "delete the broken ones (gcloud firestore indexes composite delete) and {DEPLOY}"
        ));
    }
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().map(|(c, i)| describe(c, i)).collect();
        wrong.push(format!("missing: {}", shown.join(", ")));
        fixes.push(format!("{DEPLOY} (firestore.tf declares every index)"));
        for (collection, index) in &missing {
            let fields: Vec<String> = index
                .fields
                .iter()
                .map(|f| {
                    format!(
                        "--field-config=field-path={},order={}",
                        f.path,
                        order(f.dir).to_lowercase()
                    )
                })
                .collect();
            fixes.push(format!(
                "gcloud firestore indexes composite create --project={} --database={} --collection-group={collection} {}",
                names.project,
                names.database,
                fields.join(" ")
            ));
        }
    }
    Ok(Check::fail(
        "firestore indexes",
        wrong.join("; "),
        fixes.join("; "),
    ))
}

fn order(dir: Dir) -> &'static str {
    match dir {
        Dir::Asc => "ASCENDING",
        Dir::Desc => "DESCENDING",
    }
}

/// `jobs(status, priority desc, ...)`.
fn describe(collection: &str, index: &Index) -> String {
    let fields: Vec<String> = index
        .fields
        .iter()
        .map(|f| match f.dir {
            Dir::Asc => f.path.to_string(),
            Dir::Desc => format!("{} desc", f.path),
        })
        .collect();
    format!("{collection}({})", fields.join(", "))
}

/// The collection group of a listed index, from its name
/// (`projects/P/databases/D/collectionGroups/C/indexes/ID`).
fn collection_of(index: &Value) -> Option<&str> {
    let name = index["name"].as_str()?;
    let (_, rest) = name.split_once("/collectionGroups/")?;
    rest.split('/').next()
}

/// The fields of a listed index, without the `__name__` Firestore adds
/// at the end of every composite index.
fn fields_of(index: &Value) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = index["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| (text(&f["fieldPath"]), text(&f["order"])))
        .collect();
    if fields.last().is_some_and(|(path, _)| path == "__name__") {
        fields.pop();
    }
    fields
}

fn wanted_fields(index: &Index) -> Vec<(String, String)> {
    index
        .fields
        .iter()
        .map(|f| (f.path.to_string(), order(f.dir).to_string()))
        .collect()
}

/// Every scheduler job terraform makes by default exists, and every one
/// that exists is ENABLED (Cloud Scheduler `jobs.list` in the region).
pub(super) async fn scheduler(c: Arc<Context>) -> Outcome {
    let names = &c.doctor.names;
    let (project, region) = (&names.project, &c.doctor.region);
    let url = format!(
        "{}/v1/projects/{project}/locations/{region}/jobs",
        c.doctor.endpoints.scheduler
    );
    let jobs = c.google.list(&url, "jobs").await.map_err(|e| {
        call_failed(
            "scheduler jobs",
            "Cloud Scheduler did not list the jobs",
            &e,
        )
    })?;
    let mut enabled = Vec::new();
    let mut wrong = Vec::new();
    let mut fixes = Vec::new();
    for (job, by_default) in SCHEDULER_JOBS {
        let name = names.scheduler_job(job);
        let found = jobs
            .iter()
            .find(|j| last_segment(&j["name"]) == Some(name.as_str()));
        match found.map(|j| j["state"].as_str().unwrap_or("STATE_UNSPECIFIED")) {
            Some("ENABLED") => enabled.push(name),
            Some(state) => {
                wrong.push(format!("{name} is {state}"));
                fixes.push(format!(
                    "gcloud scheduler jobs resume {name} --location={region} --project={project}"
                ));
            }
            None if by_default => {
                wrong.push(format!("{name} does not exist"));
                fixes.push(format!(
                    "{DEPLOY} (scheduler.tf creates it unless its schedule is null)"
                ));
            }
            None => {}
        }
    }
    if wrong.is_empty() {
        return Ok(Check::pass(
            "scheduler jobs",
            format!("enabled: {}", enabled.join(", ")),
        ));
    }
    Ok(Check::fail(
        "scheduler jobs",
        wrong.join("; "),
        fixes.join("; "),
    ))
}

/// The last `/` segment of a resource name.
fn last_segment(name: &Value) -> Option<&str> {
    name.as_str().and_then(|n| n.rsplit('/').next())
}

/// A JSON value for a message: a string as it is, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_endpoint_is_the_services_url_then_its_path() {
        let url = "https://intake-abc123-uc.a.run.app";
        assert!(pushes_to(url, "intake", "/"));
        assert!(pushes_to(
            "https://intake-123456789.us-central1.run.app/",
            "intake",
            "/"
        ));
        assert!(pushes_to(
            &format!("{url}/v1/job-events"),
            "intake",
            "/v1/job-events"
        ));
        assert!(!pushes_to(url, "intake", "/v1/job-events"));
        assert!(!pushes_to(
            "https://notifier-abc-uc.a.run.app",
            "intake",
            "/"
        ));
        assert!(!pushes_to("http://intake-abc-uc.a.run.app", "intake", "/"));
        assert!(!pushes_to("https://intake-abc.example.com", "intake", "/"));
    }

    #[test]
    fn firestores_own_name_field_is_left_out() {
        let index = json!({
            "name": "projects/p/databases/(default)/collectionGroups/t_jobs/indexes/CICAgJim14AK",
            "fields": [
                {"fieldPath": "expire_at", "order": "ASCENDING"},
                {"fieldPath": "id", "order": "ASCENDING"},
                {"fieldPath": "__name__", "order": "ASCENDING"}
            ],
            "state": "READY"
        });
        assert_eq!(collection_of(&index), Some("t_jobs"));
        assert_eq!(
            fields_of(&index),
            [
                ("expire_at".to_string(), "ASCENDING".to_string()),
                ("id".into(), "ASCENDING".into())
            ]
        );
    }
}
