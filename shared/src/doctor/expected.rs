//! What a deployment made by `terraform/` holds, as `asmr doctor` expects
//! it. Where the code names a thing already (the topics of
//! [`Topics`], the indexes of `store::indexes`, what calling the models
//! needs) that name is used; what only terraform knows is listed here, and
//! `tests/tests/suites/terraform.rs` checks each list against the `.tf`
//! files, so the two cannot drift apart.

use crate::bus::Topics;

/// The APIs terraform turns on (`local.apis` in `terraform/apis.tf`).
pub const APIS: [&str; 17] = [
    "aiplatform.googleapis.com",
    "apigateway.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "iap.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "servicecontrol.googleapis.com",
    "servicemanagement.googleapis.com",
    "storage.googleapis.com",
];

/// A role terraform grants a function's account on the project.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectRole {
    /// `roles/datastore.user`, conditioned on the deployment's database.
    DatastoreUser,
    /// The deployment's custom role that calls the models
    /// (`local.vertex_caller`).
    VertexCaller,
}

/// Every function, whose account is `{prefix}asmr-{function}`, and the
/// project roles terraform grants it (`local.functions` in
/// `terraform/iam.tf`).
pub const FUNCTIONS: [(&str, &[ProjectRole]); 7] = {
    use ProjectRole::{DatastoreUser, VertexCaller};
    [
        ("intake", &[DatastoreUser]),
        ("image-generator", &[DatastoreUser, VertexCaller]),
        ("video-generator", &[DatastoreUser, VertexCaller]),
        ("video-poller", &[DatastoreUser, VertexCaller]),
        ("downloader", &[DatastoreUser]),
        ("notifier", &[DatastoreUser]),
        ("janitor", &[DatastoreUser]),
    ]
};

/// A topic of the deployment, by its key in terraform's `local.topics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    Requests,
    ImageJobs,
    VideoJobs,
    JobEvents,
    GcsEvents,
    DeadLetter,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 6] = [
        Topic::Requests,
        Topic::ImageJobs,
        Topic::VideoJobs,
        Topic::JobEvents,
        Topic::GcsEvents,
        Topic::DeadLetter,
    ];

    /// Its key in `local.topics`.
    pub fn key(self) -> &'static str {
        match self {
            Topic::Requests => "requests",
            Topic::ImageJobs => "image_jobs",
            Topic::VideoJobs => "video_jobs",
            Topic::JobEvents => "job_events",
            Topic::GcsEvents => "gcs_events",
            Topic::DeadLetter => "dead_letter",
        }
    }

    /// Its short name. The code publishes to the first four and names
    /// them in [`Topics`]; the last two only Google publishes to.
    pub fn name(self, topics: &Topics) -> String {
        match self {
            Topic::Requests => topics.requests(),
            Topic::ImageJobs => topics.image_jobs(),
            Topic::VideoJobs => topics.video_jobs(),
            Topic::JobEvents => topics.job_events(),
            Topic::GcsEvents => format!("{}asmr-gcs-events", topics.prefix()),
            Topic::DeadLetter => format!("{}asmr-dead-letter", topics.prefix()),
        }
    }
}

/// A push subscription (`local.push_subscriptions` in
/// `terraform/pubsub.tf`), named `{prefix}asmr-{key}-{service}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushSubscription {
    /// Its key in terraform.
    pub key: &'static str,
    /// The topic it reads.
    pub topic: Topic,
    /// The Cloud Run service it pushes to (`{prefix}{service}`).
    pub service: &'static str,
    /// The path of the service it pushes to.
    pub path: &'static str,
    /// Its filter, if any.
    pub filter: Option<&'static str>,
    /// The setting without which terraform leaves it out; `None`: always
    /// there.
    pub only_with: Option<&'static str>,
}

/// Every push subscription.
pub const PUSH_SUBSCRIPTIONS: [PushSubscription; 6] = [
    PushSubscription {
        key: "requests",
        topic: Topic::Requests,
        service: "intake",
        path: "/",
        filter: None,
        only_with: None,
    },
    PushSubscription {
        key: "job-events",
        topic: Topic::JobEvents,
        service: "intake",
        path: "/v1/job-events",
        filter: Some("attributes.kind = \"image\""),
        only_with: Some("auto_promote other than \"off\""),
    },
    PushSubscription {
        key: "image-jobs",
        topic: Topic::ImageJobs,
        service: "image-generator",
        path: "/",
        filter: None,
        only_with: None,
    },
    PushSubscription {
        key: "video-jobs",
        topic: Topic::VideoJobs,
        service: "video-generator",
        path: "/",
        filter: None,
        only_with: None,
    },
    PushSubscription {
        key: "webhooks",
        topic: Topic::JobEvents,
        service: "notifier",
        path: "/",
        filter: Some("attributes:webhook_events"),
        only_with: None,
    },
    PushSubscription {
        key: "gcs-events",
        topic: Topic::GcsEvents,
        service: "downloader",
        path: "/",
        filter: None,
        only_with: None,
    },
];

/// The Cloud Scheduler jobs (`terraform/scheduler.tf`), named
/// `{prefix}asmr-{job}`, and whether the default `schedules` turn each on.
pub const SCHEDULER_JOBS: [(&str, bool); 6] = [
    ("video-poller", true),
    ("janitor", true),
    ("image-drain", false),
    ("video-drain", false),
    ("download-drain", false),
    ("webhook-sweep", true),
];

/// The folders of the output bucket whose finalized objects reach the
/// downloader through a bucket notification
/// (`google_storage_notification.output_finalized`).
pub const NOTIFIED_FOLDERS: [&str; 2] = ["images/", "videos/"];

/// The names a deployment with `prefix` (terraform's `var.prefix`) gives
/// its resources in `project`.
#[derive(Clone, Debug)]
pub struct Names {
    /// The project.
    pub project: String,
    /// The prefix.
    pub prefix: String,
    /// The Firestore database.
    pub database: String,
}

impl Names {
    /// The topic names of the code.
    pub fn topics(&self) -> Topics {
        Topics::new(self.prefix.clone())
    }

    /// `projects/P/topics/NAME` of a topic.
    pub fn topic_path(&self, topic: Topic) -> String {
        format!(
            "projects/{}/topics/{}",
            self.project,
            topic.name(&self.topics())
        )
    }

    /// The email of a service account terraform creates (`push`,
    /// `scheduler` or a function).
    pub fn account(&self, name: &str) -> String {
        format!(
            "{}asmr-{name}@{}.iam.gserviceaccount.com",
            self.prefix, self.project
        )
    }

    /// The full name of a project role.
    pub fn role(&self, role: ProjectRole) -> String {
        match role {
            ProjectRole::DatastoreUser => "roles/datastore.user".into(),
            ProjectRole::VertexCaller => format!(
                "projects/{}/roles/{}asmrVertexCaller",
                self.project,
                self.prefix.replace('-', "_")
            ),
        }
    }

    /// The IAM condition terraform puts on `roles/datastore.user`, as
    /// `gcloud --condition` takes it.
    pub fn database_condition(&self) -> String {
        let database = format!("projects/{}/databases/{}", self.project, self.database);
        format!(
            "expression=resource.name == \"{database}\" || resource.name.startsWith(\"{database}/\"),title={}asmr database only",
            self.prefix
        )
    }

    /// The name of a push subscription.
    pub fn subscription(&self, subscription: &PushSubscription) -> String {
        format!(
            "{}asmr-{}-{}",
            self.prefix, subscription.key, subscription.service
        )
    }

    /// The Cloud Run service of a stage.
    pub fn service(&self, stage: &str) -> String {
        format!("{}{stage}", self.prefix)
    }

    /// The audience of the push tokens of a service (`local.push_audiences`).
    pub fn audience(&self, stage: &str) -> String {
        format!("{}/{}asmr-{stage}", self.project, self.prefix)
    }

    /// The name of a Cloud Scheduler job.
    pub fn scheduler_job(&self, job: &str) -> String {
        format!("{}asmr-{job}", self.prefix)
    }

    /// The output bucket.
    pub fn output_bucket(&self) -> String {
        format!("{}-{}asmr-output", self.project, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str) -> Names {
        Names {
            project: "p".into(),
            prefix: prefix.into(),
            database: "(default)".into(),
        }
    }

    #[test]
    fn names_are_terraforms_with_the_prefix_in_front() {
        let plain = names("");
        assert_eq!(
            plain.topic_path(Topic::GcsEvents),
            "projects/p/topics/asmr-gcs-events"
        );
        assert_eq!(plain.account("push"), "asmr-push@p.iam.gserviceaccount.com");
        assert_eq!(plain.output_bucket(), "p-asmr-output");
        let dev = names("dev-");
        assert_eq!(
            dev.role(ProjectRole::VertexCaller),
            "projects/p/roles/dev_asmrVertexCaller"
        );
        assert_eq!(
            dev.subscription(&PUSH_SUBSCRIPTIONS[1]),
            "dev-asmr-job-events-intake"
        );
        assert_eq!(dev.audience("downloader"), "p/dev-asmr-downloader");
        assert_eq!(dev.service("intake"), "dev-intake");
        assert_eq!(dev.scheduler_job("janitor"), "dev-asmr-janitor");
        assert_eq!(
            dev.topic_path(Topic::Requests),
            "projects/p/topics/dev-asmr-requests"
        );
    }
}
