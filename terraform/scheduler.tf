# Cloud Scheduler starts the Cloud Run jobs through the Run Admin API
# (jobs/NAME:run, OAuth token of the scheduler account). A missed tick is not
# retried: the next one runs the same job again.

locals {
  schedules = {
    for job, cron in {
      video-poller   = var.schedules.video_poller
      janitor        = var.schedules.janitor
      image-drain    = var.schedules.image_drain
      video-drain    = var.schedules.video_drain
      download-drain = var.schedules.download_drain
    } : job => cron if cron != null
  }
}

resource "google_cloud_scheduler_job" "run" {
  for_each = local.schedules

  name             = "${var.prefix}asmr-${each.key}"
  description      = "Starts the ${google_cloud_run_v2_job.stage[each.key].name} Cloud Run job."
  region           = var.region
  schedule         = each.value
  time_zone        = var.time_zone
  attempt_deadline = "60s"

  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/projects/${var.project}/locations/${var.region}/jobs/${google_cloud_run_v2_job.stage[each.key].name}:run"

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.scheduler_invoker]
}

# Wakes the notifier to send webhooks that are due again (a refused or
# unreachable receiver's), with an OIDC token of the scheduler account,
# which the notifier takes (PUSH_IDENTITY); an instance that is up also
# sweeps by itself (WEBHOOK_SWEEP_EVERY).
resource "google_cloud_scheduler_job" "webhook_sweep" {
  count = var.schedules.webhook_sweep == null ? 0 : 1

  name             = "${var.prefix}asmr-webhook-sweep"
  description      = "Sends the webhooks that are due again."
  region           = var.region
  schedule         = var.schedules.webhook_sweep
  time_zone        = var.time_zone
  attempt_deadline = "60s"

  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "${google_cloud_run_v2_service.stage["notifier"].uri}/sweep"

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.push_audiences["notifier"]
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.scheduler_sweeps_webhooks]
}
