# Topics and subscriptions. Every push subscription calls its service with
# an OIDC token of the push account, waits as long as the service's request
# timeout (which leaves a margin over the service's own), backs off exponentially
# when the service answers 429/503, and after max_delivery_attempts moves the
# message to the dead-letter topic, which the janitor drains.

locals {
  topics = {
    requests    = "${var.prefix}asmr-requests"
    image_jobs  = "${var.prefix}asmr-image-jobs"
    video_jobs  = "${var.prefix}asmr-video-jobs"
    job_events  = "${var.prefix}asmr-job-events"
    gcs_events  = "${var.prefix}asmr-gcs-events"
    dead_letter = "${var.prefix}asmr-dead-letter"
  }

  # The push subscriptions: each to a path of its service, only the
  # messages its filter lets through. The ack deadline is also the push
  # request's timeout, so it is the service's Cloud Run request timeout
  # (run.tf; Pub/Sub allows at most 600 s).
  push_subscriptions = {
    requests = {
      topic   = "requests"
      service = "intake"
      path    = "/"
      filter  = null
      enabled = true
    }
    # Auto-promotion (AUTO_PROMOTE): intake makes a video of an image on its
    # approval or chained delivery; only image events can ask for one.
    job-events = {
      topic   = "job_events"
      service = "intake"
      path    = "/v1/job-events"
      filter  = "attributes.kind = \"image\""
      enabled = var.auto_promote != "off"
    }
    image-jobs = {
      topic   = "image_jobs"
      service = "image-generator"
      path    = "/"
      filter  = null
      enabled = true
    }
    video-jobs = {
      topic   = "video_jobs"
      service = "video-generator"
      path    = "/"
      filter  = null
      enabled = true
    }
    # Webhooks: only the job events that carry a delivery.
    webhooks = {
      topic   = "job_events"
      service = "notifier"
      path    = "/"
      filter  = "attributes:webhook_events"
      enabled = true
    }
    gcs-events = {
      topic   = "gcs_events"
      service = "downloader"
      path    = "/"
      filter  = null
      enabled = var.storage_events == "notification"
    }
  }
}

resource "google_pubsub_topic" "topic" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough here: messages carry job ids, prompts and object names, no secrets, and a customer key would be one more thing to rotate and lose.
  for_each = local.topics

  name                       = each.value
  message_retention_duration = "604800s"

  depends_on = [time_sleep.apis]
}

resource "google_pubsub_subscription" "push" {
  for_each = { for key, s in local.push_subscriptions : key => s if s.enabled }

  name                       = "${var.prefix}asmr-${each.key}-${each.value.service}"
  topic                      = google_pubsub_topic.topic[each.value.topic].id
  ack_deadline_seconds       = min(600, local.services[each.value.service].timeout_s)
  message_retention_duration = "604800s"
  filter                     = each.value.filter

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.stage[each.value.service].uri}${trimsuffix(each.value.path, "/")}"

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.push_audiences[each.value.service]
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.topic["dead_letter"].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  # An idle subscription must not expire (the default is 31 days).
  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.push_invoker,
    google_service_account_iam_member.pubsub_token_creator,
    google_pubsub_topic_iam_member.pubsub_dead_letter,
  ]
}

# The janitor pulls this one (DEAD_LETTER_SUBSCRIPTION).
resource "google_pubsub_subscription" "dead_letter" {
  name                       = "${var.prefix}asmr-dead-letter-janitor"
  topic                      = google_pubsub_topic.topic["dead_letter"].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# --- finalized outputs to the downloader: a bucket notification, or Eventarc ---

resource "google_pubsub_topic_iam_member" "storage_gcs_events" {
  count = var.storage_events == "notification" ? 1 : 0

  topic  = google_pubsub_topic.topic["gcs_events"].name
  role   = "roles/pubsub.publisher"
  member = local.storage_agent
}

resource "google_storage_notification" "output_finalized" {
  for_each = var.storage_events == "notification" ? toset(["images/", "videos/"]) : toset([])

  bucket             = google_storage_bucket.output.name
  payload_format     = "JSON_API_V1"
  topic              = google_pubsub_topic.topic["gcs_events"].id
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = each.key

  depends_on = [time_sleep.agent_grants]
}

resource "google_service_account" "eventarc" {
  count = var.storage_events == "eventarc" ? 1 : 0

  account_id   = "${var.prefix}asmr-eventarc"
  display_name = "asmr Eventarc trigger"
  description  = "Identity of the Eventarc trigger that calls the asmr downloader."

  depends_on = [time_sleep.apis]
}

resource "google_project_iam_member" "eventarc_receiver" {
  count = var.storage_events == "eventarc" ? 1 : 0

  project = var.project
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.eventarc[0].member
}

resource "google_cloud_run_v2_service_iam_member" "eventarc_invoker" {
  count = var.storage_events == "eventarc" ? 1 : 0

  name     = google_cloud_run_v2_service.stage["downloader"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.eventarc[0].member
}

# Cloud Storage triggers publish through Pub/Sub as the storage service agent.
resource "google_project_iam_member" "storage_publisher" {
  count = var.storage_events == "eventarc" ? 1 : 0

  project = var.project
  role    = "roles/pubsub.publisher"
  member  = local.storage_agent
}

resource "google_eventarc_trigger" "output_finalized" {
  count = var.storage_events == "eventarc" ? 1 : 0

  name            = "${var.prefix}asmr-output-finalized"
  location        = var.region
  service_account = google_service_account.eventarc[0].email

  matching_criteria {
    attribute = "type"
    value     = "google.cloud.storage.object.v1.finalized"
  }

  matching_criteria {
    attribute = "bucket"
    value     = google_storage_bucket.output.name
  }

  destination {
    cloud_run_service {
      service = google_cloud_run_v2_service.stage["downloader"].name
      region  = var.region
      path    = "/"
    }
  }

  depends_on = [
    time_sleep.agent_grants,
    google_cloud_run_v2_service_iam_member.eventarc_invoker,
  ]
}
