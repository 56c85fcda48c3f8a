# The stages: Cloud Run services (pushed to by Pub/Sub or Eventarc) and Cloud
# Run jobs (started by Cloud Scheduler), each described once below and
# created with for_each. Every stage runs its function's own service account
# (iam.tf) and the one image of the release, which holds every stage binary:
# `command` picks the binary. The environment is the whole configuration of
# a stage: `<binary> --help` lists what each binary reads, and
# tests/tests/suites/terraform.rs checks that every variable a binary reads is set
# here.

locals {
  registry = var.image_registry != "" ? var.image_registry : "${var.region}-docker.pkg.dev/${var.project}/asmr"
  image    = "${local.registry}/asmr:${var.image_tag}"

  # The image's unprivileged user (the Dockerfile's USER), which owns what
  # the downloader writes into a mounted bucket.
  image_uid = 10001

  archive_mount = "/mnt/archive"
  download_destination = (
    var.download_destination.kind == "bucket"
    ? join("/", compact(["gs://${google_storage_bucket.archive.name}", var.download_destination.prefix]))
    : join("/", compact([local.archive_mount, var.download_destination.prefix]))
  )

  # Where the state is: every stage but none of the local-run settings.
  env_store = {
    ASMR_BACKEND           = "firestore"
    GOOGLE_CLOUD_PROJECT   = var.project
    FIRESTORE_DATABASE     = var.firestore_database
    ASMR_COLLECTION_PREFIX = var.prefix
    ASMR_TOPIC_PREFIX      = var.prefix
    ASMR_JOB_EVENTS        = "true"
  }

  # The model settings of the generators and the poller, the binaries' own
  # defaults written out; env_overrides changes them per stage.
  env_models = {
    GOOGLE_CLOUD_LOCATION = var.vertex_location
    GCS_OUTPUT_BUCKET     = google_storage_bucket.output.name
    IMAGE_MODEL           = var.image_model
    VIDEO_MODEL           = var.video_model
    DRY_RUN               = tostring(var.dry_run)
    MAX_RETRIES           = "3"
    BASE_DELAY            = "5"
    MAX_DELAY             = "60"
    QUOTA_WAIT            = "75"
    VERTEX_TIMEOUT        = "120"
    OPERATION_TIMEOUT     = "1800"
    LEASE_TTL             = "900"
    POLLING_INTERVAL      = "15"
  }

  # The cost guard: the generators reserve the estimated cost of every paid
  # call with its claim, the poller settles what a video cost. Unset: no
  # daily limit, and the built-in list prices.
  env_cost = merge(
    var.budget_usd_per_day == null ? {} : { BUDGET_USD_PER_DAY = tostring(var.budget_usd_per_day) },
    var.model_prices == null ? {} : { MODEL_PRICES = var.model_prices },
  )

  # Who may push to each service, and the audience their tokens carry; the
  # services check both (PUSH_IDENTITY, PUSH_AUDIENCE): Cloud Run's own check
  # covers only the token in X-Serverless-Authorization when a caller sends
  # one, so a service cannot take the Authorization header's account on
  # trust. The audience is a custom audience of the service (below), which
  # the push subscriptions set (pubsub.tf); Eventarc's tokens carry the
  # service's URL instead, so with Eventarc the downloader takes any
  # audience of the two accounts' signed tokens. GOOGLE_CERTS_URL keeps the
  # binaries' default, Google's own keys.
  push_audiences = {
    for name in ["intake", "image-generator", "video-generator", "downloader", "notifier"] :
    name => "${var.project}/${var.prefix}asmr-${name}"
  }
  pushers = join(",", concat([google_service_account.push.email], google_service_account.eventarc[*].email))

  env_downloader = {
    GCS_OUTPUT_BUCKET       = google_storage_bucket.output.name
    DOWNLOAD_DESTINATION    = local.download_destination
    DOWNLOAD_CONCURRENCY    = "5"
    DOWNLOAD_TIMEOUT        = "300"
    DOWNLOAD_LEASE          = "60"
    DOWNLOAD_PRIORITY_IMAGE = "10"
    DOWNLOAD_PRIORITY_VIDEO = "0"
  }

  # Only Pub/Sub and Eventarc call these; intake also takes operators' calls.
  pushed_ingress = var.internal_ingress ? "INGRESS_TRAFFIC_INTERNAL_ONLY" : "INGRESS_TRAFFIC_ALL"

  # Cloud Run services. handler_timeout_s is the time limit the service sets
  # itself on one request (intake's REQUEST_TIMEOUT, the generators' and the
  # downloader's PUSH_TIMEOUT); timeout_s, Cloud Run's request timeout and the
  # push subscription's ack deadline (pubsub.tf), leaves a margin over it, so
  # the service answers before Cloud Run cuts the request and Pub/Sub never
  # redelivers a message whose first delivery is still being handled.
  services = {
    intake = {
      binary            = "intake"
      args              = []
      handler_timeout_s = 120
      timeout_s         = 150
      memory            = "512Mi"
      ingress           = "INGRESS_TRAFFIC_ALL"
      env = merge(local.env_store, {
        DRY_RUN                  = tostring(var.dry_run)
        AUTO_PROMOTE             = var.auto_promote
        PUSH_IDENTITY            = google_service_account.push.email
        PUSH_AUDIENCE            = local.push_audiences["intake"]
        TENANT_WRITES_PER_MINUTE = tostring(var.tenant_requests_per_minute.writes)
        TENANT_READS_PER_MINUTE  = tostring(var.tenant_requests_per_minute.reads)
        # A deployment's webhooks are https:// to public addresses only.
        WEBHOOK_ALLOW_PRIVATE_NETWORKS = "false"
      }, local.env_gateway)
    }
    image-generator = {
      binary            = "image-generator"
      args              = ["serve"]
      handler_timeout_s = 540
      timeout_s         = 600
      memory            = "1Gi"
      ingress           = local.pushed_ingress
      env = merge(local.env_store, local.env_models, local.env_cost, {
        PUSH_IDENTITY = google_service_account.push.email
        PUSH_AUDIENCE = local.push_audiences["image-generator"]
      })
    }
    video-generator = {
      binary            = "video-generator"
      args              = ["serve"]
      handler_timeout_s = 540
      timeout_s         = 600
      memory            = "512Mi"
      ingress           = local.pushed_ingress
      env = merge(local.env_store, local.env_models, local.env_cost, {
        PUSH_IDENTITY = google_service_account.push.email
        PUSH_AUDIENCE = local.push_audiences["video-generator"]
      })
    }
    downloader = {
      binary            = "downloader"
      args              = ["serve"]
      handler_timeout_s = 590
      timeout_s         = 600
      memory            = "1Gi"
      ingress           = local.pushed_ingress
      env = merge(
        local.env_store,
        local.env_downloader,
        { PUSH_IDENTITY = local.pushers },
        var.storage_events == "eventarc" ? {} : { PUSH_AUDIENCE = local.push_audiences["downloader"] },
      )
    }
    # Sends webhooks beside the pushes it acknowledges, so its CPU stays on
    # between requests (cpu_idle below); PUSH_TIMEOUT is 60 s.
    notifier = {
      binary            = "notifier"
      args              = []
      handler_timeout_s = 60
      timeout_s         = 90
      memory            = "512Mi"
      ingress           = local.pushed_ingress
      env = merge(local.env_store, {
        PUSH_IDENTITY                  = join(",", [google_service_account.push.email, google_service_account.scheduler.email])
        PUSH_AUDIENCE                  = local.push_audiences["notifier"]
        WEBHOOK_ALLOW_PRIVATE_NETWORKS = "false"
        WEBHOOK_TIMEOUT                = "10"
        WEBHOOK_RETRY_DELAYS           = "5s,5m,30m,2h,5h,10h"
        WEBHOOK_RETRY_FOR              = "24h"
        WEBHOOK_CONCURRENCY_PER_TENANT = "8"
        WEBHOOK_SWEEP_EVERY            = "10"
      })
    }
  }

  # Cloud Run jobs. The poller runs every minute and stops before the next
  # run starts; the drains stop claiming before their task timeout.
  jobs = {
    video-poller = {
      binary      = "video-poller"
      args        = []
      timeout_s   = 300
      max_retries = 0
      memory      = "512Mi"
      env         = merge(local.env_store, local.env_models, local.env_cost, { POLLER_MAX_RUNTIME = "50s" })
    }
    janitor = {
      binary      = "janitor"
      args        = []
      timeout_s   = 1800
      max_retries = 1
      memory      = "512Mi"
      env = merge(local.env_store, {
        DEAD_LETTER_SUBSCRIPTION = google_pubsub_subscription.dead_letter.name
        DEAD_LETTER_WAIT         = "10"
        DEAD_LETTER_MAX          = "1000"
        LOST_AFTER               = "15m"
      })
    }
    image-drain = {
      binary      = "image-generator"
      args        = ["drain", "--max-seconds", "3000"]
      timeout_s   = 3600
      max_retries = 1
      memory      = "1Gi"
      env         = merge(local.env_store, local.env_models, local.env_cost)
    }
    video-drain = {
      binary      = "video-generator"
      args        = ["drain", "--max-seconds", "3000"]
      timeout_s   = 3600
      max_retries = 1
      memory      = "512Mi"
      env         = merge(local.env_store, local.env_models, local.env_cost)
    }
    download-drain = {
      binary      = "downloader"
      args        = ["drain"]
      timeout_s   = 3600
      max_retries = 1
      memory      = "1Gi"
      env         = merge(local.env_store, local.env_downloader)
    }
  }

  # Scaling to the quota (README): at the quota, a generator has
  # rate × latency calls in flight (Little's law), one per request; an
  # instance takes up to 4 at once, and no more instances start than those
  # calls fill, so Cloud Run does not start instances that only collect 429s.
  model_of_generator = { "image-generator" = "image", "video-generator" = "video" }
  calls_in_flight = {
    for stage, model in local.model_of_generator :
    stage => max(1, ceil(var.model_quota[model].requests_per_minute * var.model_quota[model].latency_s / 60))
  }
  generator_concurrency = { for stage, calls in local.calls_in_flight : stage => min(4, calls) }
  generator_instances = {
    for stage, calls in local.calls_in_flight :
    stage => min(100, ceil(calls / local.generator_concurrency[stage]))
  }

  max_instances = merge({
    intake     = 5
    downloader = 10
    notifier   = 3
  }, local.generator_instances, var.max_instances)

  concurrency = merge({
    intake     = 80
    downloader = 5
    notifier   = 80
  }, local.generator_concurrency, var.concurrency)

  # The downloader writes into the mounted archive bucket when the
  # destination is a volume.
  mounts_archive = var.download_destination.kind == "volume"

  # Cloud Storage FUSE gives every file and directory to the user that
  # mounted it (root) with modes 644/755, so the image's user could not
  # create anything: uid/gid hand the tree to it. implicit-dirs shows the
  # folders of objects written by other means (an earlier bucket-mode
  # delivery, an upload by hand) as directories. The downloader's rename is
  # of one closed file within its folder, which gcsfuse does without
  # options (rename-dir-limit is for directories); what it guarantees is in
  # the README (Deploy, "Volume mode").
  archive_mount_options = [
    "uid=${local.image_uid}",
    "gid=${local.image_uid}",
    "implicit-dirs",
  ]
}

resource "google_cloud_run_v2_service" "stage" {
  for_each = local.services

  name                = "${var.prefix}${each.key}"
  location            = var.region
  ingress             = each.value.ingress
  deletion_protection = var.deletion_protection
  # The audience the push subscriptions' tokens carry (PUSH_AUDIENCE).
  custom_audiences = [local.push_audiences[each.key]]

  template {
    service_account                  = google_service_account.function[each.value.binary].email
    timeout                          = "${each.value.timeout_s}s"
    max_instance_request_concurrency = local.concurrency[each.key]
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"

    scaling {
      min_instance_count = 0
      max_instance_count = local.max_instances[each.key]
    }

    containers {
      image   = local.image
      command = ["/usr/local/bin/${each.value.binary}"]
      args    = each.value.args

      resources {
        limits = {
          cpu    = "1"
          memory = each.value.memory
        }
        # The notifier sends after it has answered the push.
        cpu_idle = each.key != "notifier"
      }

      dynamic "env" {
        for_each = merge(each.value.env, lookup(var.env_overrides, each.key, {}))
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

      dynamic "volume_mounts" {
        for_each = each.key == "downloader" && local.mounts_archive ? [local.archive_mount] : []
        content {
          name       = "archive"
          mount_path = volume_mounts.value
        }
      }
    }

    dynamic "volumes" {
      for_each = each.key == "downloader" && local.mounts_archive ? [google_storage_bucket.archive.name] : []
      content {
        name = "archive"
        gcs {
          bucket        = volumes.value
          read_only     = false
          mount_options = local.archive_mount_options
        }
      }
    }
  }

  depends_on = [time_sleep.apis]

  lifecycle {
    # Paid mode is never uncapped: the cost guard reserves every paid
    # call against the daily budget.
    precondition {
      condition     = var.dry_run || var.budget_usd_per_day != null
      error_message = "dry_run = false calls Vertex AI and pays for every call: set budget_usd_per_day (the US dollars the model calls may spend per UTC day) in the deployment's settings; jobs wait as pending once it is spent."
    }
  }
}

resource "google_cloud_run_v2_job" "stage" {
  for_each = local.jobs

  name                = "${var.prefix}${each.key}"
  location            = var.region
  deletion_protection = var.deletion_protection

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.function[each.value.binary].email
      timeout         = "${each.value.timeout_s}s"
      max_retries     = each.value.max_retries

      containers {
        image   = local.image
        command = ["/usr/local/bin/${each.value.binary}"]
        args    = each.value.args

        resources {
          limits = {
            cpu    = "1"
            memory = each.value.memory
          }
        }

        dynamic "env" {
          for_each = merge(each.value.env, lookup(var.env_overrides, each.key, {}))
          content {
            name  = env.key
            value = env.value
          }
        }

        dynamic "volume_mounts" {
          for_each = each.value.binary == "downloader" && local.mounts_archive ? [local.archive_mount] : []
          content {
            name       = "archive"
            mount_path = volume_mounts.value
          }
        }
      }

      dynamic "volumes" {
        for_each = each.value.binary == "downloader" && local.mounts_archive ? [google_storage_bucket.archive.name] : []
        content {
          name = "archive"
          gcs {
            bucket        = volumes.value
            read_only     = false
            mount_options = local.archive_mount_options
          }
        }
      }
    }
  }

  depends_on = [time_sleep.apis]
}
