# Inputs. Only `project` and `image_tag` have no default.

variable "project" {
  type        = string
  description = "Google Cloud project id that hosts everything."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a project id: 6-30 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  type        = string
  description = "Region of Cloud Run, Scheduler, the buckets and the registry."
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a region name such as us-central1."
  }
}

variable "vertex_location" {
  type        = string
  description = "Vertex AI location the generators and the poller call (GOOGLE_CLOUD_LOCATION)."
  default     = "us-central1"

  validation {
    condition     = can(regex("^(global|[a-z]+-[a-z]+[0-9]+)$", var.vertex_location))
    error_message = "vertex_location must be a region name or global."
  }
}

variable "prefix" {
  type        = string
  description = "Put in front of every name (topics, subscriptions, collections, services, jobs, buckets, service accounts), so that several deployments can share a project. The code reads it as ASMR_TOPIC_PREFIX and ASMR_COLLECTION_PREFIX. Empty: the names of the design."
  default     = ""

  validation {
    condition     = can(regex("^([a-z][a-z0-9-]{0,9})?$", var.prefix))
    error_message = "prefix must be empty or at most 10 lowercase letters, digits and hyphens, starting with a letter (e.g. dev-)."
  }
}

variable "image_registry" {
  type        = string
  description = "Artifact Registry path the images were pushed to. Empty: REGION-docker.pkg.dev/PROJECT/asmr, where cloudbuild.yaml pushes."
  default     = ""

  validation {
    condition     = var.image_registry == "" || can(regex("^[a-z0-9.-]+(/[a-z0-9._-]+)+$", var.image_registry))
    error_message = "image_registry must look like us-central1-docker.pkg.dev/PROJECT/REPOSITORY."
  }
}

variable "image_tag" {
  type        = string
  description = "Tag of the release image (every stage binary in one image), the commit cloudbuild.yaml built ($COMMIT_SHA)."

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a Docker tag (letters, digits, _ . -, at most 128)."
  }
}

variable "build_service_account" {
  type        = string
  description = "Account id (the part before @) of the service account Cloud Build releases run as, which the README's first steps create: it gets iam.serviceAccountUser on each account below so that a release can deploy the stages as them. Empty: releases only from an operator's machine."
  default     = "asmr-build"

  validation {
    condition     = var.build_service_account == "" || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.build_service_account))
    error_message = "build_service_account must be empty or a service account id (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "dry_run" {
  type        = bool
  description = "Placeholders instead of paid model calls (DRY_RUN). Set false to call Vertex AI and pay for it."
  default     = true
}

variable "auto_promote" {
  type        = string
  description = "Which job events make a video of their image without an operator (AUTO_PROMOTE of intake): off, approved (an approval), or all (also the delivery of an image created with \"chain\": \"video\")."
  default     = "off"

  validation {
    condition     = contains(["off", "approved", "all"], var.auto_promote)
    error_message = "auto_promote is off, approved or all."
  }
}

variable "tenant_requests_per_minute" {
  type = object({
    writes = number
    reads  = number
  })
  description = "HTTP requests per minute each tenant may make (0: no limit): writes create jobs or act on them (TENANT_WRITES_PER_MINUTE of intake), reads get, list and count (TENANT_READS_PER_MINUTE). Beyond them intake answers 429 with Retry-After; the limits hold across intake instances."
  default = {
    writes = 600
    reads  = 6000
  }

  validation {
    condition = alltrue([
      for n in values(var.tenant_requests_per_minute) : n >= 0 && floor(n) == n
    ])
    error_message = "tenant_requests_per_minute holds whole numbers, 0 for no limit."
  }
}

variable "image_model" {
  type        = string
  description = "Image model (IMAGE_MODEL): gemini-* through :generateContent, imagen-* through :predict."
  default     = "gemini-2.5-flash-image"

  validation {
    condition     = can(regex("^(gemini|imagen)-[a-z0-9.@-]+$", var.image_model))
    error_message = "image_model must be a gemini-* or imagen-* model id."
  }
}

variable "video_model" {
  type        = string
  description = "Video model (VIDEO_MODEL), a Veo model id."
  default     = "veo-3.1-generate-001"

  validation {
    condition     = can(regex("^veo-[a-z0-9.-]+$", var.video_model))
    error_message = "video_model must be a veo-* model id."
  }
}

variable "budget_usd_per_day" {
  type        = number
  description = "Cost guard (BUDGET_USD_PER_DAY): the estimated model spend allowed per UTC day; jobs wait as pending once it is spent. Required when dry_run is false; null (dry runs only): no limit."
  default     = null

  validation {
    condition     = var.budget_usd_per_day == null || try(var.budget_usd_per_day > 0, false)
    error_message = "budget_usd_per_day must be null or a positive amount of US dollars."
  }
}

variable "storage_audit_logs" {
  type        = bool
  description = "Turn on Cloud Storage's Data Access audit logs (every object read and write, with who made it) for the project. A project-wide setting: leave it true in one deployment of a project and false in the others."
  default     = true
}

variable "model_prices" {
  type        = string
  description = "Prices the cost guard uses over its built-in list (MODEL_PRICES), MODEL=USD per image or, for veo-*, WITH_AUDIO/WITHOUT_AUDIO per second; a trailing * names a family: \"imagen-4.0-generate-001=0.04,veo-3.1-fast-*=0.15/0.10\". null: the built-in list."
  default     = null

  validation {
    condition     = var.model_prices == null || can(regex("^[a-z0-9.@*-]+=[0-9.]+(/[0-9.]+)?(,[a-z0-9.@*-]+=[0-9.]+(/[0-9.]+)?)*$", var.model_prices))
    error_message = "model_prices must look like imagen-4.0-generate-001=0.04,veo-3.1-fast-*=0.15/0.10."
  }
}

variable "download_destination" {
  type = object({
    kind   = string
    prefix = optional(string, "")
  })
  description = "Where the downloader delivers every output (DOWNLOAD_DESTINATION). kind = \"bucket\": server-side copies into the archive bucket; kind = \"volume\": the archive bucket mounted into the downloader at /mnt/archive (Cloud Storage FUSE) and written as files. prefix: a folder under either."
  default     = { kind = "bucket" }

  validation {
    condition     = contains(["bucket", "volume"], var.download_destination.kind)
    error_message = "download_destination.kind must be \"bucket\" or \"volume\"."
  }

  validation {
    condition     = can(regex("^([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$", var.download_destination.prefix)) && !strcontains(var.download_destination.prefix, "..")
    error_message = "download_destination.prefix must be a relative folder such as asmr/outputs, without .. or a leading slash."
  }
}

variable "storage_events" {
  type        = string
  description = "How finalized outputs reach the downloader: \"notification\" (a bucket notification to the asmr-gcs-events topic, pushed with a dead-letter policy) or \"eventarc\" (an Eventarc trigger)."
  default     = "notification"

  validation {
    condition     = contains(["notification", "eventarc"], var.storage_events)
    error_message = "storage_events must be \"notification\" or \"eventarc\"."
  }
}

variable "output_retention_days" {
  type        = number
  description = "Days a generated output stays in the output bucket; the downloader has copied it long before. Matches the 30 days failed jobs are kept."
  default     = 30

  validation {
    condition     = var.output_retention_days >= 7 && floor(var.output_retention_days) == var.output_retention_days
    error_message = "output_retention_days must be a whole number of at least 7 (completed downloads are kept 7 days)."
  }
}

variable "schedules" {
  type = object({
    video_poller   = optional(string, "* * * * *")
    janitor        = optional(string, "0 * * * *")
    image_drain    = optional(string)
    video_drain    = optional(string)
    download_drain = optional(string)
    webhook_sweep  = optional(string, "* * * * *")
  })
  description = "Cloud Scheduler cron expressions (unix-cron, in time_zone) of the Cloud Run jobs; null leaves a job unscheduled (it can still be executed by hand). The drains are for large batches and are off by default."
  default     = {}

  validation {
    condition = alltrue([
      for cron in values(var.schedules) : cron == null || length(split(" ", trimspace(cron))) == 5
    ])
    error_message = "every schedule must be null or a five-field cron expression such as \"*/5 * * * *\"."
  }
}

variable "time_zone" {
  type        = string
  description = "Time zone of the schedules (tz database name)."
  default     = "Etc/UTC"
}

variable "model_quota" {
  type = object({
    image = optional(object({ requests_per_minute = number, latency_s = number }), { requests_per_minute = 60, latency_s = 10 })
    video = optional(object({ requests_per_minute = number, latency_s = number }), { requests_per_minute = 10, latency_s = 3 })
  })
  description = "The quota of the model each generator calls (image_model, video_model: requests per minute, from the model's Quotas page) and how long one call typically takes (seconds; for Veo, the submit, not the video). The generators' maximum instances and concurrency follow from it (README, \"Scaling to the quota\") unless max_instances or concurrency name them."
  default     = {}

  validation {
    condition = alltrue([
      for quota in [var.model_quota.image, var.model_quota.video] :
      quota.requests_per_minute >= 1 && quota.latency_s > 0
    ])
    error_message = "model_quota: requests_per_minute must be at least 1 and latency_s more than 0."
  }
}

variable "max_instances" {
  type        = map(number)
  description = "Most instances per service, over what model_quota gives the generators. Keys: intake, image-generator, video-generator, downloader, notifier."
  default     = {}

  validation {
    condition = alltrue([
      for name, n in var.max_instances :
      contains(["intake", "image-generator", "video-generator", "downloader", "notifier"], name) && n >= 1 && n <= 100 && floor(n) == n
    ])
    error_message = "max_instances keys must be intake, image-generator, video-generator, downloader or notifier, with whole values from 1 to 100."
  }
}

variable "concurrency" {
  type        = map(number)
  description = "Requests one instance of a service handles at once. Keys as in max_instances."
  default     = {}

  validation {
    condition = alltrue([
      for name, n in var.concurrency :
      contains(["intake", "image-generator", "video-generator", "downloader", "notifier"], name) && n >= 1 && n <= 1000 && floor(n) == n
    ])
    error_message = "concurrency keys must be intake, image-generator, video-generator, downloader or notifier, with whole values from 1 to 1000."
  }
}

variable "max_delivery_attempts" {
  type        = number
  description = "Deliveries of one message before Pub/Sub moves it to the dead-letter topic, where the janitor fails its job with the last error."
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "env_overrides" {
  type        = map(map(string))
  description = "Extra or changed environment per stage, e.g. { downloader = { DOWNLOAD_CONCURRENCY = \"8\" } }. Keys: intake, image-generator, video-generator, downloader, video-poller, janitor, image-drain, video-drain, download-drain, live."
  default     = {}

  validation {
    condition = alltrue(flatten([
      for stage, env in var.env_overrides : [
        for name in keys(env) :
        !contains(["PORT", "VERTEX_BASE_URL", "VERTEX_ACCESS_TOKEN", "ASMR_STATE_DIR", "ASMR_OBJECTS_DIR"], name) && !endswith(name, "_EMULATOR_HOST")
      ]
    ]))
    error_message = "env_overrides must not set PORT (Cloud Run sets it), emulator hosts, VERTEX_BASE_URL, VERTEX_ACCESS_TOKEN or the local-run directories."
  }
}

variable "internal_ingress" {
  type        = bool
  description = "Limit the services only Pub/Sub and Eventarc call (image-generator, video-generator, downloader) to internal ingress, on top of IAM. false: reachable from anywhere, still only with run.invoker."
  default     = true
}

variable "intake_invokers" {
  type        = list(string)
  description = "Principals allowed to call intake's HTTP API (POST /v1/jobs, GET /v1/jobs/{id}, /v1/stats) with an identity token, e.g. [\"group:media-ops@example.com\"]."
  default     = []

  validation {
    condition     = alltrue([for m in var.intake_invokers : can(regex("^(user|group|serviceAccount|domain):", m))])
    error_message = "intake_invokers must be user:, group:, serviceAccount: or domain: members; the service is never public."
  }
}

variable "live_page_viewers" {
  type        = list(string)
  description = "Who may open the live page in the cloud (live.tf, README \"The live page\"): members granted roles/iap.httpsResourceAccessor on its service, e.g. [\"group:media-ops@example.com\"]. Empty: no live page service. Google's documentation has required the project to be in an organization for Identity-Aware Proxy on Cloud Run."
  default     = []

  validation {
    condition     = alltrue([for m in var.live_page_viewers : can(regex("^(user|group|serviceAccount|domain):", m))])
    error_message = "live_page_viewers must be user:, group:, serviceAccount: or domain: members; the page is never public."
  }
}

variable "firestore_database" {
  type        = string
  description = "Firestore database id (FIRESTORE_DATABASE)."
  default     = "(default)"

  validation {
    condition     = var.firestore_database == "(default)" || can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore_database))
    error_message = "firestore_database must be (default) or a database id of 4-63 lowercase letters, digits and hyphens."
  }
}

variable "create_firestore_database" {
  type        = bool
  description = "Create the Firestore database. false when the project already has it (a project has one (default) database)."
  default     = true
}

variable "firestore_location" {
  type        = string
  description = "Location of a created Firestore database: a region, or a multi-region such as nam5. Empty: the region."
  default     = ""
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to destroy the Cloud Run services and jobs and the Firestore database. Set false before terraform destroy."
  default     = true
}

variable "alert_emails" {
  type        = list(string)
  description = "Addresses the alerts are sent to; empty: the alerts only show in Cloud Monitoring."
  default     = []

  validation {
    condition     = alltrue([for e in var.alert_emails : can(regex("^[^@ ]+@[^@ ]+\\.[^@ ]+$", e))])
    error_message = "alert_emails must be e-mail addresses."
  }
}

variable "failure_ratio_threshold" {
  type        = number
  description = "Alert when, over an hour, failed jobs per completed job exceed this."
  default     = 0.2

  validation {
    condition     = var.failure_ratio_threshold > 0
    error_message = "failure_ratio_threshold must be positive."
  }
}

variable "dead_letter_alert_after" {
  type        = string
  description = "Alert when the dead-letter subscription has had undelivered messages for this long (the janitor drains it hourly)."
  default     = "7200s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.dead_letter_alert_after))
    error_message = "dead_letter_alert_after must be a number of seconds such as 7200s."
  }
}

variable "tenants" {
  type = map(object({
    display_name = optional(string)
    budget_usd   = optional(number)
    weight       = optional(number, 1)
    destination  = optional(string)
  }))
  description = "The teams sharing the deployment, by name (lowercase letters, digits and dashes): each gets a tenants/{name} record with its own daily budget in US dollars, its weight (share of each model's quota) and its delivery destination (gs://bucket/prefix or a folder; default: the deployment's destination plus /{name}). A gs:// destination gets the IAM for the downloader to write there. The record is created here and then owned by `asmr tenant` (keys, later settings): terraform does not overwrite it. The default tenant always exists and needs no entry."
  default     = {}

  validation {
    condition     = alltrue([for name in keys(var.tenants) : can(regex("^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$", name)) && name != "default"])
    error_message = "tenant names are 1 to 30 lowercase letters, digits and dashes, starting with a letter and not ending with a dash, and not \"default\" (it always exists)."
  }

  validation {
    condition     = alltrue([for t in values(var.tenants) : t.weight >= 1 && t.weight <= 1000 && floor(t.weight) == t.weight])
    error_message = "a tenant's weight is a whole number from 1 to 1000."
  }

  validation {
    condition     = alltrue([for t in values(var.tenants) : t.budget_usd == null ? true : t.budget_usd >= 0])
    error_message = "a tenant's budget_usd is 0 or more US dollars."
  }
}

variable "api_gateway" {
  type = object({
    enabled             = optional(bool, false)
    region              = optional(string)
    requests_per_minute = optional(number, 6000)
    jwt = optional(object({
      issuer       = optional(string, "https://accounts.google.com")
      jwks_uri     = optional(string, "https://www.googleapis.com/oauth2/v3/certs")
      audiences    = list(string)
      tenant_claim = string
    }))
  })
  description = "API Gateway in front of intake (gateway.tf): off by default. region: where the gateway runs (not every region has API Gateway; default: region). requests_per_minute: the coarse ceiling of requests through the gateway, all tenants together (each tenant's own limits are intake's, tenant_requests_per_minute). jwt: the gateway also requires a Google-signed JWT of this issuer and one of these audiences on every call, and intake takes the tenant from the token's tenant_claim instead of x-api-key."
  default     = {}

  validation {
    condition     = var.api_gateway.region == null || can(regex("^[a-z]+-[a-z]+[0-9]+$", coalesce(var.api_gateway.region, "-")))
    error_message = "api_gateway.region must be a region name such as us-central1."
  }

  validation {
    condition     = var.api_gateway.requests_per_minute >= 1 && floor(var.api_gateway.requests_per_minute) == var.api_gateway.requests_per_minute
    error_message = "api_gateway.requests_per_minute is a whole number of at least 1."
  }

  validation {
    condition     = var.api_gateway.jwt == null || try(length(var.api_gateway.jwt.audiences) > 0 && can(regex("^[A-Za-z0-9_.:-]+$", var.api_gateway.jwt.tenant_claim)), false)
    error_message = "api_gateway.jwt needs at least one audience and a tenant_claim (a claim name such as tenant)."
  }
}
