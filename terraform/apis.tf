# The APIs everything below uses, and the wait after turning them on. Left
# enabled on destroy: other things in the project may use them too.
#
# Every resource depends on time_sleep.apis, directly or through what it
# references (tests/tests/suites/terraform.rs holds the table of resource type to
# API and checks it), so one apply works on a fresh project. A new project has
# only a few APIs on (Service Usage, which terraform/deploy's first steps turn
# on, and not IAM among them), and a call right after enabling its API can
# still be refused while the enablement propagates: the provider's guide to
# google_project_service recommends a time_sleep for this.

locals {
  apis = toset([
    "aiplatform.googleapis.com",
    "apigateway.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iap.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "servicecontrol.googleapis.com",
    "servicemanagement.googleapis.com",
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "api" {
  for_each = local.apis

  service            = each.key
  disable_on_destroy = false
}

# Waits once after an API is first turned on; the triggers make a newly
# added API wait again, and leave later applies alone.
resource "time_sleep" "apis" {
  create_duration = "60s"
  triggers        = { apis = join(",", sort(local.apis)) }

  depends_on = [google_project_service.api]
}
