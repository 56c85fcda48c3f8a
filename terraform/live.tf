# The live page in the cloud (README, "The live page"): `intake ui`, the
# intake binary of the release image serving the page and nothing else, as a
# Cloud Run service of its own with Identity-Aware Proxy turned on. People
# open it at its run.app address (output live_page_url) and sign in with
# Google; IAP lets in only live_page_viewers.
#
# Why not on intake's own service: IAP checks every request to a service it
# is on before Cloud Run's IAM, and Pub/Sub's pushes and API Gateway's calls
# carry no IAP sign-in, so intake would stop taking them (Google's "Configure
# IAP for Cloud Run" names Pub/Sub among the integrations that may stop).
# Why not through API Gateway: it does not stream, and the page's figures
# are a stream of server-sent events. So intake's service stays as it is and
# serves no page, and this one serves only the page, to people.
#
# Behind IAP, the service still checks IAP's signed assertion on every
# request (IAP_AUDIENCE): a request that reached it another way is answered
# 401, never with the page. Its account is intake's, which already holds
# what the page's review actions need: Firestore (reading the figures,
# recording verdicts, creating the video of a promotion) and publishing to
# the job topics and job events.
#
# Nothing here exists until live_page_viewers names someone.

locals {
  live_enabled      = length(var.live_page_viewers) > 0
  live_service_name = "${var.prefix}live"

  # The audience IAP signs its assertions for when it is on a Cloud Run
  # service itself (Google's "Securing your app with signed headers"): the
  # project's number, the region and the service's name.
  live_iap_audience = (
    local.live_enabled
    ? "/projects/${data.google_project.live[0].number}/locations/${var.region}/services/${local.live_service_name}"
    : ""
  )

  # The service, described as the stages are (run.tf), so that the tests
  # check its command line and environment against `intake ui --help`. One
  # open page holds one request (its stream of events) for up to timeout_s,
  # when Cloud Run ends it and the browser reconnects; the CPU is needed
  # only while a request is open, which is whenever a page is.
  live = {
    binary        = "intake"
    args          = ["ui"]
    timeout_s     = 3600
    memory        = "512Mi"
    concurrency   = 200
    max_instances = 2
    env = merge(local.env_store, {
      IAP_AUDIENCE = local.live_iap_audience
    })
  }
}

# The project's number, which the audience names.
data "google_project" "live" {
  count = local.live_enabled ? 1 : 0

  project_id = var.project

  depends_on = [time_sleep.apis]
}

# IAP's service agent: it calls the service, with an identity token of its
# own, for each request a person makes.
resource "google_project_service_identity" "iap" {
  count = local.live_enabled ? 1 : 0

  provider = google-beta
  service  = "iap.googleapis.com"

  depends_on = [time_sleep.apis]
}

resource "google_cloud_run_v2_service" "live" {
  count = local.live_enabled ? 1 : 0

  name                = local.live_service_name
  location            = var.region
  deletion_protection = var.deletion_protection
  # People come from anywhere; IAP stands in front of every way in,
  # run.app included.
  ingress     = "INGRESS_TRAFFIC_ALL"
  iap_enabled = true

  template {
    service_account                  = google_service_account.function[local.live.binary].email
    timeout                          = "${local.live.timeout_s}s"
    max_instance_request_concurrency = local.live.concurrency
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"

    scaling {
      min_instance_count = 0
      max_instance_count = local.live.max_instances
    }

    containers {
      image   = local.image
      command = ["/usr/local/bin/${local.live.binary}"]
      args    = local.live.args

      resources {
        limits = {
          cpu    = "1"
          memory = local.live.memory
        }
        # The figures are read only while a page's stream is open, which
        # is a request in progress: no CPU is needed between requests.
        cpu_idle = true
      }

      dynamic "env" {
        for_each = merge(local.live.env, lookup(var.env_overrides, "live", {}))
        content {
          name  = env.key
          value = env.value
        }
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  depends_on = [time_sleep.apis]
}

# Cloud Run's IAM check still runs after IAP's, on IAP's own identity.
resource "google_cloud_run_v2_service_iam_member" "live_iap_invoker" {
  count = local.live_enabled ? 1 : 0

  name     = google_cloud_run_v2_service.live[0].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_project_service_identity.iap[0].email}"
}

# Who may open the page: IAP lets them through.
resource "google_iap_web_cloud_run_service_iam_member" "live_viewer" {
  for_each = toset(var.live_page_viewers)

  project                = var.project
  location               = var.region
  cloud_run_service_name = google_cloud_run_v2_service.live[0].name
  role                   = "roles/iap.httpsResourceAccessor"
  member                 = each.key
}
