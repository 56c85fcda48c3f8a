//! `asmr doctor`, the real binary, against a deployment made as terraform
//! makes it: its push subscriptions and topics in the Pub/Sub emulator,
//! which keeps every field the check reads (push endpoint, OIDC account and
//! audience, retry and dead-letter policies, filter); its budget in the
//! Firestore emulator; and the APIs no emulator speaks faked in their
//! documented shapes: Service Usage, Firestore's admin API, Cloud
//! Scheduler, Cloud Quotas and Cloud Storage's notifications in
//! `tests::fake_google` (fake-gcs-server answers 404 to
//! `notificationConfigs`), Resource Manager's `getIamPolicy` and
//! `testIamPermissions`, `tokeninfo` and Vertex AI's publisher models in
//! `tests::fake_vertex`; each fake names the reference page of its shapes.
//!
//! A healthy deployment passes every check with exit code 0; each fault
//! (an API off, a subscription without dead letter, an index still
//! building, a paused scheduler job, an account without its role, a
//! caller without a permission, a model refused or unknown, a spent
//! budget, an API that cannot be reached or never answers) is its own ✗
//! line with its fix, and exit code 1.

#![cfg(feature = "emulators")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use shared::doctor::expected::{
    APIS, FUNCTIONS, NOTIFIED_FOLDERS, Names, PUSH_SUBSCRIPTIONS, SCHEDULER_JOBS, Topic,
};
use shared::store::backend::Dir;
use shared::store::indexes::INDEXES;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tests::fake_google::{self, FakeGoogle, Listings};
use tests::fake_vertex::{FAKE_PRINCIPAL, FakeOptions, FakeVertex};
use tests::harness::{self, emulator_project};

const REGION: &str = "us-central1";
const IMAGE_MODEL: &str = "gemini-2.5-flash-image";
const VIDEO_MODEL: &str = "veo-3.1-generate-001";

/// A deployment's project, as the emulators and the fakes hold it.
struct Deployment {
    names: Names,
    google: FakeGoogle,
    vertex: FakeVertex,
    pubsub: String,
}

/// What `asmr doctor` printed, and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The line of `check`; panics with the whole output when there is none.
    fn line(&self, check: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l[4..].starts_with(&format!("{check}:")))
            .unwrap_or_else(|| panic!("no line for {check}:\n{}{}", self.stdout, self.stderr))
    }

    /// The lines that failed.
    fn failed(&self) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.starts_with('✗')).collect()
    }

    /// Exactly `check` failed, its line holds every one of `words`, and
    /// the run ended with exit code 1.
    fn fails_only(&self, check: &str, words: &[&str]) {
        let line = self.line(check);
        assert!(line.starts_with("✗ "), "{line}\n{}", self.stdout);
        for word in words {
            assert!(line.contains(word), "{word:?} not in {line}");
        }
        assert!(line.contains(" — fix: "), "{line}");
        assert_eq!(self.failed(), [line], "{}", self.stdout);
        assert_eq!(self.code, Some(1), "{}", self.stderr);
        assert!(self.stderr.contains("error: 1 of "), "{}", self.stderr);
    }
}

/// The fields of an index as the fake lists them.
fn fields(index: &shared::store::indexes::Index) -> Vec<(&'static str, &'static str)> {
    index
        .fields
        .iter()
        .map(|f| {
            let order = match f.dir {
                Dir::Asc => "ASCENDING",
                Dir::Desc => "DESCENDING",
            };
            (f.path, order)
        })
        .collect()
}

/// The project policy terraform leaves: each function's account with its
/// roles, datastore.user conditioned on the database, and an owner.
fn healthy_policy(names: &Names) -> Value {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (function, roles) in FUNCTIONS {
        for role in roles.iter() {
            members
                .entry(names.role(*role))
                .or_default()
                .push(format!("serviceAccount:{}", names.account(function)));
        }
    }
    let mut bindings: Vec<Value> = members
        .into_iter()
        .map(|(role, members)| {
            let mut binding = json!({"role": role, "members": members});
            if role == "roles/datastore.user" {
                binding["condition"] = json!({"title": format!("{}asmr database only", names.prefix),
                    "expression": format!("resource.name == \"projects/{0}/databases/(default)\" || resource.name.startsWith(\"projects/{0}/databases/(default)/\")", names.project)});
            }
            binding
        })
        .collect();
    bindings.push(json!({"role": "roles/owner", "members": ["user:owner@example.com"]}));
    json!({"version": 3, "etag": "BwYAAAAAAAA=", "bindings": bindings})
}

/// What the admin APIs list for a healthy deployment.
fn healthy_listings(names: &Names) -> Listings {
    let project = &names.project;
    let mut services: Vec<Value> = APIS.iter().map(|api| fake_google::service(api)).collect();
    // Enabled APIs terraform does not need are listed too.
    services.push(fake_google::service("bigquery.googleapis.com"));
    services.push(fake_google::service("cloudquotas.googleapis.com"));
    let indexes = INDEXES
        .iter()
        .enumerate()
        .map(|(i, index)| {
            let collection = format!("{}{}", names.prefix, index.collection.name());
            fake_google::index(
                project,
                "(default)",
                &collection,
                &fields(index),
                "READY",
                i,
            )
        })
        .collect();
    let jobs = SCHEDULER_JOBS
        .iter()
        .filter(|(_, by_default)| *by_default)
        .map(|(job, _)| {
            fake_google::scheduler_job(project, REGION, &names.scheduler_job(job), "ENABLED")
        })
        .collect();
    let quota = fake_google::quota_info(
        "OnlinePredictionRequestsPerMinutePerProjectPerBaseModel",
        &[
            (REGION, "veo-3.1-generate", 10),
            ("europe-west4", "veo-3.1-generate", 0),
        ],
    );
    let topic = names.topic_path(Topic::GcsEvents);
    let notifications = NOTIFIED_FOLDERS
        .iter()
        .enumerate()
        .map(|(i, folder)| fake_google::notification(i + 1, &topic, folder))
        .collect();
    Listings {
        services,
        indexes,
        jobs,
        quota_infos: vec![quota],
        notifications: BTreeMap::from([(names.output_bucket(), notifications)]),
        stalled: Default::default(),
    }
}

impl Deployment {
    /// A deployment with everything as terraform makes it, under a prefix
    /// of its own.
    async fn healthy() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let names = Names {
            project: emulator_project(),
            prefix: format!("d{}-", &id[..8]),
            database: "(default)".into(),
        };
        let emulator = tests::pubsub::Emulator::new();
        for topic in Topic::ALL {
            emulator.topic(&topic.name(&names.topics())).await;
        }
        let deployment = Self {
            google: FakeGoogle::start(healthy_listings(&names)).await,
            vertex: FakeVertex::start(FakeOptions::default()).await,
            pubsub: format!(
                "http://{}/v1/projects/{}",
                harness::emulator_host("PUBSUB_EMULATOR_HOST"),
                names.project
            ),
            names,
        };
        deployment
            .vertex
            .set_iam_policy(healthy_policy(&deployment.names));
        for subscription in PUSH_SUBSCRIPTIONS {
            let body = deployment.subscription_body(&subscription);
            deployment
                .put_subscription(&deployment.names.subscription(&subscription), body)
                .await;
        }
        deployment
    }

    /// A push subscription as pubsub.tf declares it.
    fn subscription_body(
        &self,
        subscription: &shared::doctor::expected::PushSubscription,
    ) -> Value {
        let names = &self.names;
        let path = subscription.path.trim_end_matches('/');
        let mut body = json!({
            "topic": names.topic_path(subscription.topic),
            "ackDeadlineSeconds": 600,
            "pushConfig": {
                "pushEndpoint": format!("https://{}-x7kq2mzl4a-uc.a.run.app{path}", names.service(subscription.service)),
                "oidcToken": {
                    "serviceAccountEmail": names.account("push"),
                    "audience": names.audience(subscription.service),
                },
            },
            "retryPolicy": {"minimumBackoff": "10s", "maximumBackoff": "600s"},
            "deadLetterPolicy": {
                "deadLetterTopic": names.topic_path(Topic::DeadLetter),
                "maxDeliveryAttempts": 10,
            },
        });
        if let Some(filter) = subscription.filter {
            body["filter"] = json!(filter);
        }
        body
    }

    async fn put_subscription(&self, name: &str, body: Value) {
        let http = reqwest::Client::new();
        let url = format!("{}/subscriptions/{name}", self.pubsub);
        let _ = http.delete(&url).send().await.unwrap();
        let response = http.put(&url).json(&body).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }

    /// Runs `asmr doctor --prefix P ARGS` with only the environment it
    /// documents: the project, the emulators, every API at its fake, and
    /// the fakes' token.
    async fn doctor(&self, args: &[&str]) -> Run {
        self.doctor_with(args, &[]).await
    }

    async fn doctor_with(&self, args: &[&str], env: &[(&str, String)]) -> Run {
        let google = self.google.base_url();
        let vertex = self.vertex.base_url();
        let mut command = std::process::Command::new(harness::binary("asmr"));
        command
            .env_clear()
            .envs([
                ("GOOGLE_CLOUD_PROJECT", self.names.project.clone()),
                (
                    "FIRESTORE_EMULATOR_HOST",
                    harness::emulator_host("FIRESTORE_EMULATOR_HOST"),
                ),
                (
                    "PUBSUB_EMULATOR_HOST",
                    harness::emulator_host("PUBSUB_EMULATOR_HOST"),
                ),
                ("SERVICE_USAGE_BASE_URL", google.clone()),
                ("STORAGE_BASE_URL", google.clone()),
                ("FIRESTORE_BASE_URL", google.clone()),
                ("CLOUD_SCHEDULER_BASE_URL", google.clone()),
                ("CLOUD_QUOTAS_BASE_URL", google),
                ("RESOURCE_MANAGER_BASE_URL", vertex.clone()),
                ("OAUTH2_BASE_URL", vertex.clone()),
                ("VERTEX_BASE_URL", vertex),
                ("VERTEX_ACCESS_TOKEN", self.vertex.token().to_string()),
            ])
            .envs(env.iter().map(|(k, v)| (*k, v.clone())))
            .args(["doctor", "--prefix", &self.names.prefix])
            .args(args);
        if !args.contains(&"--timeout") {
            command.args(["--timeout", "5s"]);
        }
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap();
        Run {
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

#[tokio::test]
async fn a_deployment_as_terraform_makes_it_passes_every_check() {
    let deployment = Deployment::healthy().await;
    let run = deployment.doctor(&[]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.failed().is_empty(), "{}", run.stdout);
    let names = &deployment.names;
    run.line("apis");
    run.line("service accounts");
    for subscription in PUSH_SUBSCRIPTIONS {
        let line = run.line(&format!(
            "subscription {}",
            names.subscription(&subscription)
        ));
        assert!(line.contains("dead-lettered"), "{line}");
    }
    assert!(
        run.line("bucket notification")
            .contains("images/ and videos/")
    );
    assert!(
        run.line("firestore indexes")
            .contains(&format!("{} indexes", INDEXES.len()))
    );
    let scheduler = run.line("scheduler jobs");
    assert!(
        scheduler.contains(&names.scheduler_job("video-poller")),
        "{scheduler}"
    );
    assert!(run.line("caller").contains(FAKE_PRINCIPAL));
    assert!(run.line(&format!("model {IMAGE_MODEL}")).contains("GA"));
    run.line(&format!("model {VIDEO_MODEL}"));
    let quota = run.line("quota");
    assert!(quota.contains(&format!("{VIDEO_MODEL}: 10")), "{quota}");
    assert!(
        quota.contains(&format!("{IMAGE_MODEL}: no quota of its own")),
        "{quota}"
    );
    run.line("budget");
    assert_eq!(run.stdout.lines().count(), 16, "{}", run.stdout);

    // Every listing was read to its last page.
    let requests = deployment.google.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/services?filter=state:ENABLED&pageSize=200&pageToken=")),
        "{requests:#?}"
    );
    assert!(
        requests.iter().any(|r| r.contains("/indexes?pageToken=")),
        "{requests:#?}"
    );
}

#[tokio::test]
async fn json_gives_each_check_whether_it_passed_what_was_found_and_the_fix() {
    let deployment = Deployment::healthy().await;
    deployment.google.change(|l| {
        l.services
            .retain(|s| s["config"]["name"] != "run.googleapis.com")
    });
    let run = deployment.doctor(&["--json"]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let checks: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(checks.len(), 16);
    for check in &checks {
        let keys: Vec<&String> = check.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["check", "detail", "fix", "ok"], "{check}");
        assert_eq!(
            check["ok"].as_bool().unwrap(),
            check["fix"].is_null(),
            "{check}"
        );
    }
    let apis = checks.iter().find(|c| c["check"] == "apis").unwrap();
    assert_eq!(apis["ok"], false);
    assert_eq!(apis["detail"], "not enabled: run.googleapis.com");
    assert_eq!(
        apis["fix"],
        format!(
            "gcloud services enable run.googleapis.com --project={}",
            deployment.names.project
        )
    );
    assert_eq!(checks.iter().filter(|c| c["ok"] == false).count(), 1);
}

#[tokio::test]
async fn an_api_turned_off_is_named_with_the_command_that_enables_it() {
    let deployment = Deployment::healthy().await;
    deployment.google.change(|l| {
        l.services.retain(|s| {
            !["eventarc.googleapis.com", "aiplatform.googleapis.com"]
                .contains(&s["config"]["name"].as_str().unwrap())
        })
    });
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        "apis",
        &[
            "not enabled: aiplatform.googleapis.com, eventarc.googleapis.com",
            "gcloud services enable aiplatform.googleapis.com eventarc.googleapis.com --project=",
        ],
    );
}

#[tokio::test]
async fn a_subscription_without_dead_letter_or_oidc_is_named_with_its_update() {
    let deployment = Deployment::healthy().await;
    let names = &deployment.names;
    let image_jobs = PUSH_SUBSCRIPTIONS
        .iter()
        .find(|s| s.key == "image-jobs")
        .unwrap();
    let name = names.subscription(image_jobs);
    let mut body = deployment.subscription_body(image_jobs);
    body.as_object_mut().unwrap().remove("deadLetterPolicy");
    deployment.put_subscription(&name, body).await;
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        &format!("subscription {name}"),
        &[
            "has no dead-letter policy",
            &format!("gcloud pubsub subscriptions update {name}"),
            &format!(
                "--dead-letter-topic={}",
                names.topic_path(Topic::DeadLetter)
            ),
        ],
    );

    // Without its token, and pushing to another service.
    let mut body = deployment.subscription_body(image_jobs);
    body["pushConfig"] = json!({"pushEndpoint": format!("https://{}-x7kq2mzl4a-uc.a.run.app", names.service("notifier"))});
    deployment.put_subscription(&name, body).await;
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        &format!("subscription {name}"),
        &[
            "pushes without an OIDC token",
            "not to / of the",
            "--push-auth-service-account=",
            "--push-endpoint=",
        ],
    );
}

#[tokio::test]
async fn a_missing_subscription_or_notification_says_terraform_makes_it() {
    let deployment = Deployment::healthy().await;
    let names = &deployment.names;
    let requests = names.subscription(&PUSH_SUBSCRIPTIONS[0]);
    let url = format!("{}/subscriptions/{requests}", deployment.pubsub);
    reqwest::Client::new().delete(&url).send().await.unwrap();
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        &format!("subscription {requests}"),
        &["does not exist", "terraform/deploy"],
    );

    let deployment = Deployment::healthy().await;
    let bucket = deployment.names.output_bucket();
    deployment.google.change(|l| {
        l.notifications
            .get_mut(&bucket)
            .unwrap()
            .retain(|n| n["object_name_prefix"] == "images/");
    });
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        "bucket notification",
        &[
            "under videos/",
            &format!("gcloud storage buckets notifications create gs://{bucket}"),
            "--object-prefix=videos/",
        ],
    );
}

#[tokio::test]
async fn an_index_still_building_is_named() {
    let deployment = Deployment::healthy().await;
    deployment
        .google
        .change(|l| l.indexes[0]["state"] = json!("CREATING"));
    let run = deployment.doctor(&[]).await;
    let first = &INDEXES[0];
    let collection = format!("{}{}", deployment.names.prefix, first.collection.name());
    run.fails_only(
        "firestore indexes",
        &[
            "still building",
            &format!("{collection}(status, kind, priority desc"),
            "gcloud firestore indexes composite list",
        ],
    );

    deployment.google.change(|l| {
        l.indexes.remove(0);
    });
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        "firestore indexes",
        &[
            "missing",
            &format!(
                "--collection-group={collection} --field-config=field-path=status,order=ascending"
            ),
        ],
    );
}

#[tokio::test]
async fn a_paused_scheduler_job_is_named_with_the_command_that_resumes_it() {
    let deployment = Deployment::healthy().await;
    let janitor = deployment.names.scheduler_job("janitor");
    deployment.google.change(|l| {
        for job in &mut l.jobs {
            if job["name"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{janitor}"))
            {
                job["state"] = json!("PAUSED");
            }
        }
    });
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        "scheduler jobs",
        &[
            &format!("{janitor} is PAUSED"),
            &format!("gcloud scheduler jobs resume {janitor} --location={REGION}"),
        ],
    );
}

#[tokio::test]
async fn an_account_without_its_role_and_a_caller_without_a_permission_are_named() {
    let deployment = Deployment::healthy().await;
    let names = &deployment.names;
    let mut policy = healthy_policy(names);
    let poller = format!("serviceAccount:{}", names.account("video-poller"));
    for binding in policy["bindings"].as_array_mut().unwrap() {
        binding["members"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m != &json!(poller));
    }
    deployment.vertex.set_iam_policy(policy);
    let run = deployment.doctor(&[]).await;
    let caller_role = names.role(shared::doctor::expected::ProjectRole::VertexCaller);
    run.fails_only(
        "service accounts",
        &[
            &format!(
                "{} lacks roles/datastore.user",
                names.account("video-poller")
            ),
            &format!("lacks {caller_role}"),
            &format!("--member={poller} --role={caller_role}"),
            "--condition='expression=resource.name == ",
        ],
    );

    let deployment = Deployment::healthy().await;
    deployment
        .vertex
        .withhold_permission("aiplatform.endpoints.predict");
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        "caller",
        &[
            &format!("{FAKE_PRINCIPAL} lacks aiplatform.endpoints.predict"),
            &format!(
                "--member=user:{FAKE_PRINCIPAL} --role={}",
                shared::vertex::client::MODEL_ROLE
            ),
        ],
    );
}

#[tokio::test]
async fn a_model_refused_or_unknown_is_named() {
    let deployment = Deployment::healthy().await;
    deployment.vertex.refuse_model(VIDEO_MODEL, 404);
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        &format!("model {VIDEO_MODEL}"),
        &["does not know it in us-central1", "HTTP 404", "video_model"],
    );

    deployment.vertex.refuse_model(VIDEO_MODEL, 403);
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        &format!("model {VIDEO_MODEL}"),
        &[
            "refused",
            "HTTP 403",
            "gcloud services enable aiplatform.googleapis.com",
        ],
    );
}

#[tokio::test]
async fn a_model_without_quota_in_the_region_is_named() {
    let deployment = Deployment::healthy().await;
    let run = deployment
        .doctor_with(&[], &[("GOOGLE_CLOUD_LOCATION", "europe-west4".into())])
        .await;
    run.fails_only(
        "quota",
        &[
            &format!("{VIDEO_MODEL} has a quota of 0"),
            "--quota-id=OnlinePredictionRequestsPerMinutePerProjectPerBaseModel",
            "region=europe-west4",
        ],
    );
}

#[tokio::test]
async fn a_spent_budget_is_named() {
    use shared::domain::job::NewJob;
    use shared::domain::values::JobKind;
    use shared::store::budget::{Budget, Budgeted};
    let deployment = Deployment::healthy().await;
    let backend = harness::firestore_backend_with_prefix(&deployment.names.prefix).await;
    let store = shared::store::Store::new(std::sync::Arc::new(backend));
    let mut job = NewJob::new("a paid image", JobKind::Image);
    job.dry_run = false;
    store.create_job(job).await.unwrap();
    let cost = |_: &shared::domain::job::Job| Some(40_000);
    let budget = Budget {
        limit_micros: Some(40_000),
        cost: &cost,
        model: None,
    };
    let lease = shared::domain::Lease::new("test", Duration::from_secs(600));
    let claimed = store
        .claim_next_job_within(JobKind::Image, &lease, &budget)
        .await
        .unwrap();
    assert!(matches!(claimed, Budgeted::Within(Some(_))));
    let run = deployment.doctor(&[]).await;
    run.fails_only(
        "budget",
        &[
            "today's budget is spent",
            "$0.04 held of $0.04",
            "budget_usd_per_day",
        ],
    );
}

#[tokio::test]
async fn an_api_that_cannot_be_reached_or_never_answers_is_a_failed_check_not_a_hang() {
    let deployment = Deployment::healthy().await;
    deployment.google.change(|l| {
        l.stalled.insert("cloudscheduler");
    });
    let closed = format!("http://127.0.0.1:{}", tests::process::free_port());
    let started = Instant::now();
    let run = deployment
        .doctor_with(&["--timeout", "1s"], &[("CLOUD_QUOTAS_BASE_URL", closed)])
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run.code, Some(1));
    let quota = run.line("quota");
    assert!(
        quota.starts_with("✗ quota: Cloud Quotas did not list the Vertex AI quotas: no answer"),
        "{quota}"
    );
    let scheduler = run.line("scheduler jobs");
    assert!(scheduler.starts_with("✗ scheduler jobs:"), "{scheduler}");
    assert!(scheduler.contains("no answer"), "{scheduler}");
    assert_eq!(run.failed().len(), 2, "{}", run.stdout);
}
