# Identities. One service account per function (binary) with only the roles
# it uses, granted on the narrowest resource that works; the push, scheduler
# and Eventarc identities get run.invoker on exactly their targets. Nothing
# is granted to allUsers or allAuthenticatedUsers.

locals {
  # Every function, the project roles it needs, and the topics it publishes
  # to. Store access is datastore.user on the project: Firestore has no
  # narrower grant. Bucket and subscription grants are further down.
  functions = {
    intake = {
      project_roles = ["roles/datastore.user"]
      publishes     = ["image_jobs", "video_jobs", "job_events"]
    }
    image-generator = {
      project_roles = ["roles/datastore.user", "roles/aiplatform.user"]
      publishes     = ["job_events"]
    }
    video-generator = {
      project_roles = ["roles/datastore.user", "roles/aiplatform.user"]
      publishes     = ["job_events"]
    }
    video-poller = {
      project_roles = ["roles/datastore.user", "roles/aiplatform.user"]
      publishes     = ["job_events"]
    }
    downloader = {
      project_roles = ["roles/datastore.user"]
      publishes     = ["job_events"]
    }
    janitor = {
      project_roles = ["roles/datastore.user"]
      # Re-dispatches lost jobs; fails the jobs of dead letters.
      publishes = ["image_jobs", "video_jobs", "job_events"]
    }
  }

  function_project_roles = merge([
    for name, f in local.functions : {
      for role in f.project_roles : "${name} ${role}" => { function = name, role = role }
    }
  ]...)

  function_publishes = merge([
    for name, f in local.functions : {
      for topic in f.publishes : "${name} ${topic}" => { function = name, topic = topic }
    }
  ]...)

  pubsub_agent  = "serviceAccount:${google_project_service_identity.pubsub.email}"
  vertex_agent  = "serviceAccount:${google_project_service_identity.aiplatform.email}"
  storage_agent = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = "${var.prefix}asmr-${each.key}"
  display_name = "asmr ${each.key}"
  description  = "Runs the ${each.key} stage of asmr."
}

resource "google_project_iam_member" "function" {
  for_each = local.function_project_roles

  project = var.project
  role    = each.value.role
  member  = google_service_account.function[each.value.function].member
}

resource "google_pubsub_topic_iam_member" "function_publisher" {
  for_each = local.function_publishes

  topic  = google_pubsub_topic.topic[each.value.topic].name
  role   = "roles/pubsub.publisher"
  member = google_service_account.function[each.value.function].member
}

# The janitor pulls and acknowledges dead letters.
resource "google_pubsub_subscription_iam_member" "janitor_dead_letter" {
  subscription = google_pubsub_subscription.dead_letter.name
  role         = "roles/pubsub.subscriber"
  member       = google_service_account.function["janitor"].member
}

# The generators write outputs (a retried attempt replaces its own objects,
# hence objectUser rather than objectCreator).
resource "google_storage_bucket_iam_member" "generator_output" {
  for_each = toset(["image-generator", "video-generator"])

  bucket = google_storage_bucket.output.name
  role   = "roles/storage.objectUser"
  member = google_service_account.function[each.key].member
}

# Veo writes its videos to storageUri as the Vertex AI service agent.
resource "google_storage_bucket_iam_member" "vertex_output" {
  bucket = google_storage_bucket.output.name
  role   = "roles/storage.objectCreator"
  member = local.vertex_agent
}

# The downloader reads outputs; the poller lists a job's prefix to find the
# video of a submit whose answer was lost.
resource "google_storage_bucket_iam_member" "reader_output" {
  for_each = toset(["downloader", "video-poller"])

  bucket = google_storage_bucket.output.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.function[each.key].member
}

resource "google_storage_bucket_iam_member" "downloader_archive" {
  bucket = google_storage_bucket.archive.name
  role   = "roles/storage.objectUser"
  member = google_service_account.function["downloader"].member
}

# --- push: Pub/Sub calls the services with an OIDC token of this account ---

resource "google_service_account" "push" {
  account_id   = "${var.prefix}asmr-push"
  display_name = "asmr Pub/Sub push"
  description  = "Identity of the Pub/Sub push subscriptions that call the asmr services."
}

resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  for_each = { for key, s in local.push_subscriptions : key => s if s.enabled }

  name     = google_cloud_run_v2_service.stage[each.value.service].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

# Pub/Sub signs the push tokens of the push account.
resource "google_service_account_iam_member" "pubsub_token_creator" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# Dead-lettering: the Pub/Sub service agent publishes to the dead-letter topic
# and acknowledges the message on the subscription it came from.
resource "google_pubsub_topic_iam_member" "pubsub_dead_letter" {
  topic  = google_pubsub_topic.topic["dead_letter"].name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_source" {
  for_each = google_pubsub_subscription.push

  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# --- intake's HTTP API for operators ---

resource "google_cloud_run_v2_service_iam_member" "intake_invoker" {
  for_each = toset(var.intake_invokers)

  name     = google_cloud_run_v2_service.stage["intake"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = each.key
}

# --- scheduler: starts the Cloud Run jobs ---

resource "google_service_account" "scheduler" {
  account_id   = "${var.prefix}asmr-scheduler"
  display_name = "asmr Cloud Scheduler"
  description  = "Identity of the Cloud Scheduler jobs that start the asmr Cloud Run jobs."
}

resource "google_cloud_run_v2_job_iam_member" "scheduler_invoker" {
  for_each = local.schedules

  name     = google_cloud_run_v2_job.stage[each.key].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

# --- service agents ---

resource "google_project_service_identity" "pubsub" {
  provider = google-beta
  service  = "pubsub.googleapis.com"

  depends_on = [google_project_service.api]
}

resource "google_project_service_identity" "aiplatform" {
  provider = google-beta
  service  = "aiplatform.googleapis.com"

  depends_on = [google_project_service.api]
}

data "google_storage_project_service_account" "gcs" {
  depends_on = [google_project_service.api]
}
