# Identities. One service account per function (binary) with only the roles
# it uses, granted on the narrowest resource that works; the push, scheduler
# and Eventarc identities get run.invoker on exactly their targets. Nothing
# is granted to allUsers or allAuthenticatedUsers.
#
# Service accounts and project grants wait for the APIs (the IAM API is off
# in a new project, and a role of a service is not grantable before that
# service is on); the grants Google checks when a resource is created (the
# service agents') get time to propagate before that resource is created.

locals {
  # Every function, the project roles it needs, and the topics it publishes
  # to. Firestore has no grant narrower than the project, so datastore.user
  # carries a condition on this deployment's database (database_condition).
  # Bucket and subscription grants are further down.
  functions = {
    intake = {
      project_roles = ["roles/datastore.user"]
      publishes     = ["image_jobs", "video_jobs", "job_events"]
    }
    image-generator = {
      project_roles = ["roles/datastore.user", local.vertex_caller]
      publishes     = ["job_events"]
    }
    video-generator = {
      project_roles = ["roles/datastore.user", local.vertex_caller]
      publishes     = ["job_events"]
    }
    video-poller = {
      project_roles = ["roles/datastore.user", local.vertex_caller]
      publishes     = ["job_events"]
    }
    downloader = {
      project_roles = ["roles/datastore.user"]
      publishes     = ["job_events"]
    }
    notifier = {
      # Reads tenants and jobs' deliveries, writes deliveries; sends
      # webhooks out, so it holds nothing else a receiver could reach.
      project_roles = ["roles/datastore.user"]
      publishes     = []
    }
    janitor = {
      project_roles = ["roles/datastore.user"]
      # Re-dispatches lost jobs; fails the jobs of dead letters.
      publishes = ["image_jobs", "video_jobs", "job_events"]
    }
  }

  # What the generators and the poller call of Vertex AI: :predict,
  # :generateContent, :predictLongRunning and :fetchPredictOperation on
  # publisher models, all methods of its prediction service, which checks
  # aiplatform.endpoints.predict. roles/aiplatform.user would add datasets,
  # training, deployments and every other Vertex AI resource in the project.
  vertex_caller_id = "${replace(var.prefix, "-", "_")}asmrVertexCaller"
  vertex_caller    = "projects/${var.project}/roles/${local.vertex_caller_id}"

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

  pubsub_agent   = "serviceAccount:${google_project_service_identity.pubsub.email}"
  vertex_agent   = "serviceAccount:${google_project_service_identity.aiplatform.email}"
  eventarc_agent = "serviceAccount:${google_project_service_identity.eventarc.email}"
  storage_agent  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"

  # datastore.user on the project reaches every Firestore database in it,
  # those of other deployments sharing the project included; the condition
  # keeps each stage to its own database (the database itself, and the
  # documents under it).
  database_name = "projects/${var.project}/databases/${var.firestore_database}"
  database_condition = {
    "roles/datastore.user" = {
      title      = "${var.prefix}asmr database only"
      expression = "resource.name == \"${local.database_name}\" || resource.name.startsWith(\"${local.database_name}/\")"
    }
  }

  # Every account terraform creates, for the release identity's actAs.
  runtime_accounts = merge(
    { for name, account in google_service_account.function : name => account.name },
    {
      push      = google_service_account.push.name
      scheduler = google_service_account.scheduler.name
    },
    { for account in google_service_account.eventarc : "eventarc" => account.name },
    { for account in google_service_account.gateway : "gateway" => account.name },
  )
}

resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = "${var.prefix}asmr-${each.key}"
  display_name = "asmr ${each.key}"
  description  = "Runs the ${each.key} stage of asmr."

  depends_on = [time_sleep.apis]
}

resource "google_project_iam_custom_role" "vertex_caller" {
  role_id     = local.vertex_caller_id
  title       = "asmr ${var.prefix}Vertex AI caller"
  description = "Calls Vertex AI's generative models (predict, generateContent, predictLongRunning, fetchPredictOperation) and nothing else."
  permissions = ["aiplatform.endpoints.predict"]

  depends_on = [time_sleep.apis]
}

resource "google_project_iam_member" "function" {
  for_each = local.function_project_roles

  project = var.project
  role    = each.value.role
  member  = google_service_account.function[each.value.function].member

  dynamic "condition" {
    for_each = contains(keys(local.database_condition), each.value.role) ? [local.database_condition[each.value.role]] : []
    content {
      title      = condition.value.title
      expression = condition.value.expression
    }
  }

  depends_on = [google_project_iam_custom_role.vertex_caller]
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

# Veo writes the videos to the request's storageUri itself, as the Vertex
# AI service agent, not as the caller: Google's Veo reference documents
# storageUri but not the identity, and Veo deployments that left this grant
# out had to add it (google-marketing-solutions/dreamboard#16). The grant is
# a confused-deputy path (anyone who may call Veo in this project can have
# the agent write here), so it is held to what Veo needs: creating objects,
# never replacing or deleting them, under videos/ only, where the generator
# points storageUri.
resource "google_storage_bucket_iam_member" "vertex_output" {
  bucket = google_storage_bucket.output.name
  role   = "roles/storage.objectCreator"
  member = local.vertex_agent

  condition {
    title      = "Veo outputs only"
    expression = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.output.name}/objects/videos/\")"
  }
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

  depends_on = [time_sleep.apis]
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

  depends_on = [time_sleep.apis]
}

# The scheduler's sweep of due webhooks (scheduler.tf).
resource "google_cloud_run_v2_service_iam_member" "scheduler_sweeps_webhooks" {
  count = var.schedules.webhook_sweep == null ? 0 : 1

  name     = google_cloud_run_v2_service.stage["notifier"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

resource "google_cloud_run_v2_job_iam_member" "scheduler_invoker" {
  for_each = local.schedules

  name     = google_cloud_run_v2_job.stage[each.key].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

# --- releases: the Cloud Build identity deploys as each runtime account ---

# Deploying a Cloud Run service or job, a push subscription with an OIDC
# identity, a Scheduler job or an Eventarc trigger that runs as an account
# needs actAs on that account. The release identity gets it on exactly the
# accounts below, not on the project.
resource "google_service_account_iam_member" "release_act_as" {
  for_each = var.build_service_account == "" ? {} : local.runtime_accounts

  service_account_id = each.value
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${var.build_service_account}@${var.project}.iam.gserviceaccount.com"
}

# Terraform manages these accounts (their descriptions, the grants on them):
# the release identity administers exactly these, not every account of the
# project (which would let it act as, or grant itself, any of them).
# Creating a new account is left to an owner's apply: the release identity
# holds no iam.serviceAccounts.create.
resource "google_service_account_iam_member" "release_admin" {
  for_each = var.build_service_account == "" ? {} : local.runtime_accounts

  service_account_id = each.value
  role               = "roles/iam.serviceAccountAdmin"
  member             = "serviceAccount:${var.build_service_account}@${var.project}.iam.gserviceaccount.com"
}

# --- service agents ---

# Created explicitly: Google creates some agents only on first use, and a
# resource that needs one fails until it exists.
resource "google_project_service_identity" "pubsub" {
  provider = google-beta
  service  = "pubsub.googleapis.com"

  depends_on = [time_sleep.apis]
}

resource "google_project_service_identity" "aiplatform" {
  provider = google-beta
  service  = "aiplatform.googleapis.com"

  depends_on = [time_sleep.apis]
}

# The Eventarc agent exists only once something asked for it, and a trigger
# created before it holds roles/eventarc.serviceAgent fails with "Permission
# denied while using the Eventarc Service Agent" on a fresh project
# (hashicorp/terraform-provider-google#25294, open; #14584).
resource "google_project_service_identity" "eventarc" {
  provider = google-beta
  service  = "eventarc.googleapis.com"

  depends_on = [time_sleep.apis]
}

resource "google_project_iam_member" "eventarc_agent" {
  count = var.storage_events == "eventarc" ? 1 : 0

  project = var.project
  role    = "roles/eventarc.serviceAgent"
  member  = local.eventarc_agent
}

data "google_storage_project_service_account" "gcs" {
  depends_on = [time_sleep.apis]
}

# Google checks the service agents' grants when a bucket notification or an
# Eventarc trigger is created, and a fresh grant takes up to a few minutes
# to be seen everywhere: those two wait for this. The triggers make a
# changed set of grants wait again.
resource "time_sleep" "agent_grants" {
  create_duration = "120s"
  triggers = {
    grants = join(",", sort(concat(
      [for g in google_pubsub_topic_iam_member.storage_gcs_events : "${g.topic} ${g.member}"],
      [for g in google_project_iam_member.storage_publisher : g.member],
      [for g in google_project_iam_member.eventarc_agent : g.member],
      [for g in google_project_iam_member.eventarc_receiver : g.member],
    )))
  }
}
