# The public front door: API Gateway in front of intake, off unless
# api_gateway.enabled (variables.tf). What it is for and what it is not
# (README, "The front door"): the gateway answers unknown routes itself, holds
# every tenant together to a coarse ceiling of requests per minute, and can
# require a consumer's Google-signed JWT; each tenant's identity and limits
# stay in intake (its hashed keys, its per-minute windows, its budget),
# because the gateway's quotas count per consumer Google Cloud project, not
# per key or tenant.
#
# The gateway's config is built from the API's one OpenAPI document
# (api/openapi.json, which intake also serves) and the Google extensions in
# api/gateway.json; only what is known at apply time is filled in here: the
# backend's address and audience, the deadline, the ceiling and the JWT
# issuer. tests/gateway_rules.py renders the config the same way and checks
# it against the rules Google documents for a gateway config.
#
# Configs are immutable: a change of the document is a new config
# (create_before_destroy, a new id from the prefix), the gateway moves to
# it, and the old one is deleted after. There is one config resource, so one
# apply creates at most one config at a time (Google warns that configs
# created concurrently can be corrupted); two applies of one deployment never
# run at once, as the state's lock serializes them.
#
# The gateway calls intake with an ID token of its own service account, the
# only account the gateway adds to intake's invokers; intake stays private
# otherwise (run.invoker, intake_invokers). The live page's event stream
# does not go through the gateway, which does not stream.

locals {
  gateway_enabled = var.api_gateway.enabled
  gateway_region  = coalesce(var.api_gateway.region, var.region)
  gateway_jwt     = var.api_gateway.jwt != null

  api_document    = jsondecode(file("${path.module}/../api/openapi.json"))
  gateway_overlay = jsondecode(file("${path.module}/../api/gateway.json"))

  # The audience of the gateway's tokens: intake's own custom audience,
  # which Cloud Run accepts and intake checks (GATEWAY_AUDIENCE).
  gateway_audience = local.push_audiences["intake"]

  # Every operation of intake may take longer than the gateway's default
  # deadline of 15 s (a batch's jobs, or a store that retries): intake bounds
  # a request by its own time limit, and the gateway waits as long as Cloud
  # Run does, so the caller gets intake's answer rather than the gateway's.
  gateway_deadline = local.services.intake.timeout_s

  gateway_backend = merge(local.gateway_overlay.operation["x-google-backend"], {
    address      = google_cloud_run_v2_service.stage["intake"].uri
    jwt_audience = local.gateway_audience
    deadline     = local.gateway_deadline
  })

  # Without JWTs, the overlay's optional Google API key (in a header of its
  # own, so that the gateway never takes a tenant's x-api-key for one); with
  # them, the JWT on every operation (an API key cannot be an alternative to
  # a JWT at the gateway). Encoded, as the two have different shapes.
  gateway_security = jsondecode(local.gateway_jwt ? jsonencode([{ google_id_token = [] }]) : jsonencode(local.gateway_overlay.operation.security))

  gateway_definitions = merge(
    local.gateway_overlay.document.securityDefinitions,
    jsondecode(local.gateway_jwt ? jsonencode({
      google_id_token = {
        type                 = "oauth2"
        authorizationUrl     = ""
        flow                 = "implicit"
        "x-google-issuer"    = try(var.api_gateway.jwt.issuer, "")
        "x-google-jwks_uri"  = try(var.api_gateway.jwt.jwks_uri, "")
        "x-google-audiences" = join(",", try(var.api_gateway.jwt.audiences, []))
      }
    }) : "{}"),
  )

  gateway_management = merge(local.gateway_overlay.document["x-google-management"], {
    quota = {
      limits = [
        for limit in local.gateway_overlay.document["x-google-management"].quota.limits :
        merge(limit, { values = { STANDARD = var.api_gateway.requests_per_minute } })
      ]
    }
  })

  gateway_document = jsonencode(merge(local.api_document, {
    paths = {
      for path, item in local.api_document.paths : path => {
        for method, operation in item : method => merge(operation, {
          "x-google-backend" = local.gateway_backend
          "x-google-quota"   = local.gateway_overlay.operation["x-google-quota"]
          security           = local.gateway_security
        })
      }
    }
    securityDefinitions   = local.gateway_definitions
    "x-google-management" = local.gateway_management
  }))

  # Intake takes the tenant from the forwarded claims only with JWTs, and
  # only from calls bearing the gateway's own token (README, "The front
  # door").
  env_gateway = local.gateway_enabled && local.gateway_jwt ? {
    GATEWAY_IDENTITY     = try(google_service_account.gateway[0].email, "")
    GATEWAY_AUDIENCE     = local.gateway_audience
    GATEWAY_TENANT_CLAIM = try(var.api_gateway.jwt.tenant_claim, "")
  } : {}
}

resource "google_service_account" "gateway" {
  count = local.gateway_enabled ? 1 : 0

  account_id   = "${var.prefix}asmr-gateway"
  display_name = "asmr API Gateway"
  description  = "Identity the API Gateway calls intake with."

  depends_on = [time_sleep.apis]
}

# The gateway's account is the one invoker the gateway adds to intake.
resource "google_cloud_run_v2_service_iam_member" "gateway_invoker" {
  count = local.gateway_enabled ? 1 : 0

  name     = google_cloud_run_v2_service.stage["intake"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.gateway[0].member
}

resource "google_api_gateway_api" "api" {
  provider = google-beta
  count    = local.gateway_enabled ? 1 : 0

  api_id       = "${var.prefix}asmr"
  display_name = "asmr ${var.prefix}API"

  depends_on = [time_sleep.apis]
}

resource "google_api_gateway_api_config" "api" {
  provider = google-beta
  count    = local.gateway_enabled ? 1 : 0

  api                  = google_api_gateway_api.api[0].api_id
  api_config_id_prefix = "${var.prefix}asmr-"
  display_name         = "asmr ${substr(sha256(local.gateway_document), 0, 12)}"

  openapi_documents {
    document {
      path     = "openapi.json"
      contents = base64encode(local.gateway_document)
    }
  }

  gateway_config {
    backend_config {
      google_service_account = google_service_account.gateway[0].email
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_api_gateway_gateway" "api" {
  provider = google-beta
  count    = local.gateway_enabled ? 1 : 0

  gateway_id   = "${var.prefix}asmr"
  display_name = "asmr ${var.prefix}API"
  region       = local.gateway_region
  api_config   = google_api_gateway_api_config.api[0].id
}
