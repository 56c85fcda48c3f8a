# What an operator needs after apply: names, URLs and commands to paste.

output "topics" {
  description = "Pub/Sub topic names."
  value       = local.topics
}

output "service_urls" {
  description = "Cloud Run service URLs (not public: callers need run.invoker and an identity token)."
  value       = { for name, s in google_cloud_run_v2_service.stage : name => s.uri }
}

output "live_page_url" {
  description = "The live page in the cloud, for the people live_page_viewers names (they sign in through Identity-Aware Proxy); null without live_page_viewers."
  value       = local.live_enabled ? "${google_cloud_run_v2_service.live[0].uri}/ui" : null
}

output "jobs" {
  description = "Cloud Run job names."
  value       = { for name, j in google_cloud_run_v2_job.stage : name => j.name }
}

output "buckets" {
  description = "The output bucket (generators write here) and the archive bucket (deliveries)."
  value = {
    output  = google_storage_bucket.output.name
    archive = google_storage_bucket.archive.name
  }
}

output "download_destination" {
  description = "Where the downloader delivers (DOWNLOAD_DESTINATION)."
  value       = local.download_destination
}

output "publish_request" {
  description = "Publishes one video request (a plain-text prompt with a kind attribute)."
  value       = "gcloud pubsub topics publish ${google_pubsub_topic.topic["requests"].name} --project=${var.project} --message='Rain on a tin roof, close microphone' --attribute=kind=video"
}

output "publish_batch" {
  description = "Publishes a batch of image requests as one JSON message."
  value       = "gcloud pubsub topics publish ${google_pubsub_topic.topic["requests"].name} --project=${var.project} --message='{\"kind\":\"image\",\"prompts\":[\"Soap being cut into cubes\",\"Kinetic sand sliced slowly\"]}'"
}

output "run_schedules" {
  description = "Runs a scheduled Cloud Run job now, through its Scheduler job."
  value = {
    for name, s in google_cloud_scheduler_job.run :
    name => "gcloud scheduler jobs run ${s.name} --project=${var.project} --location=${var.region}"
  }
}

output "execute_jobs" {
  description = "Executes a Cloud Run job directly (also the unscheduled drains) and waits for it."
  value = {
    for name, j in google_cloud_run_v2_job.stage :
    name => "gcloud run jobs execute ${j.name} --project=${var.project} --region=${var.region} --wait"
  }
}

output "dashboard" {
  description = "The Cloud Monitoring dashboard."
  value       = "https://console.cloud.google.com/monitoring/dashboards/builder/${element(split("/", google_monitoring_dashboard.asmr.id), length(split("/", google_monitoring_dashboard.asmr.id)) - 1)}?project=${var.project}"
}

output "gateway_url" {
  description = "The API's public address through API Gateway (api_gateway.enabled), null without it."
  value       = local.gateway_enabled ? "https://${google_api_gateway_gateway.api[0].default_hostname}" : null
}

output "tenant_keys" {
  description = "Prints each tenant's first API key, kept in Secret Manager (needs secretmanager.versions.access on the secret)."
  value = {
    for name, secret in google_secret_manager_secret.tenant_key :
    name => "gcloud secrets versions access latest --secret=${secret.secret_id} --project=${var.project}"
  }
}
