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
