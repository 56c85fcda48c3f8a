# Log-based metrics, a dashboard and alerts. The stages log JSON lines through
# tracing-stackdriver (jsonPayload, keys camelCased); the lines the metrics
# count carry a fixed `event` field. tests/tests/suites/terraform.rs evaluates every
# filter below against lines the binaries print and checks that each metric
# counts exactly its event.
#
# A metric counts lines of Cloud Run services (cloud_run_revision) and of
# Cloud Run jobs (cloud_run_job) alike: the poller, the janitor and the
# drains are jobs. Its time series then exist on two monitored resource
# types, so the charts and the alert read them in PromQL, where each type is
# selected by its monitored_resource label and the two are added.

locals {
  # Only this deployment's services and jobs, by their exact names, so that
  # deployments sharing the project (another prefix) never count each
  # other's lines.
  log_scope = join(" OR ", [
    "(resource.type=\"cloud_run_revision\" AND (${join(" OR ", [for name in keys(local.services) : "resource.labels.service_name=\"${var.prefix}${name}\""])}))",
    "(resource.type=\"cloud_run_job\" AND (${join(" OR ", [for name in keys(local.jobs) : "resource.labels.job_name=\"${var.prefix}${name}\""])}))",
  ])

  # Counters: one log line = one count.
  event_metrics = {
    # The store logs one `job_transition` line for every status change of
    # every job, whichever stage or command made it, with `from`, `to`,
    # `kind` and the error `code`.
    jobs_completed = {
      event       = "job_transition"
      to          = "completed"
      description = "Jobs whose outputs are all written (kind: image or video)."
      labels      = { kind = "EXTRACT(jsonPayload.kind)", tenant = "EXTRACT(jsonPayload.tenant)" }
    }
    jobs_failed = {
      event       = "job_transition"
      to          = "failed"
      description = "Jobs that failed, by kind and reason (error code: filtered, timed_out, invalid_argument, attempts_exhausted, dead_lettered...)."
      labels      = { kind = "EXTRACT(jsonPayload.kind)", reason = "EXTRACT(jsonPayload.code)", tenant = "EXTRACT(jsonPayload.tenant)" }
    }
    jobs_delivered = {
      event       = "job_transition"
      to          = "delivered"
      description = "Jobs whose every output reached the destination."
      labels      = { kind = "EXTRACT(jsonPayload.kind)", tenant = "EXTRACT(jsonPayload.tenant)" }
    }
    # The Vertex client logs one line for every 429 / RESOURCE_EXHAUSTED the
    # model answers, whatever the call does next.
    model_rate_limited = {
      event       = "model_rate_limited"
      to          = null
      description = "Vertex AI answers of 429 / RESOURCE_EXHAUSTED (model quota), by model."
      labels      = { model = "EXTRACT(jsonPayload.model)" }
    }
    downloads_failed = {
      event       = "download_failed"
      to          = null
      description = "Copies that failed for good (out of attempts or permanent)."
      labels      = {}
    }
    dead_letters = {
      event       = "janitor.dead_letter"
      to          = null
      description = "Dead-lettered messages the janitor handled."
      labels      = {}
    }
    job_events_deferred = {
      event       = "job_event.deferred"
      to          = null
      description = "Job events Pub/Sub did not take at once; each waits in the outbox until the janitor publishes it."
      labels      = {}
    }
    budget_exhausted = {
      event       = "budget_exhausted"
      to          = null
      description = "Claims refused because the day's budget (BUDGET_USD_PER_DAY, or the tenant's own) is spent; the jobs wait as pending."
      labels      = { tenant = "EXTRACT(jsonPayload.tenant)" }
    }
    requests_rejected = {
      event       = "request.rejected"
      to          = null
      description = "Requests intake could not turn into jobs (kept in the rejected collection), by tenant (- when the request named none that exists)."
      labels      = { tenant = "EXTRACT(jsonPayload.tenant)" }
    }
    # Every push endpoint logs its outcome through one place, with fixed
    # event names: push_poison is a push acknowledged without being
    # processed (it never could be).
    pushes_poisoned = {
      event       = "push_poison"
      to          = null
      description = "Pushes acknowledged as poison (undecodable, or refused for good), by any stage."
      labels      = {}
    }
  }
}

resource "google_logging_metric" "event" {
  for_each = local.event_metrics

  name        = "${var.prefix}asmr/${each.key}"
  description = each.value.description
  filter      = "(${local.log_scope}) AND jsonPayload.event=\"${each.value.event}\"${each.value.to == null ? "" : " AND jsonPayload.to=\"${each.value.to}\""}"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    dynamic "labels" {
      for_each = each.value.labels
      content {
        key        = labels.key
        value_type = "STRING"
      }
    }
  }

  label_extractors = each.value.labels

  depends_on = [time_sleep.apis]
}

# The 429 metric was a resource of its own; same name, no new history.
moved {
  from = google_logging_metric.model_rate_limited
  to   = google_logging_metric.event["model_rate_limited"]
}

resource "google_logging_metric" "bytes_delivered" {
  name            = "${var.prefix}asmr/bytes_delivered"
  description     = "Sizes of the delivered copies (the download_completed lines)."
  filter          = "(${local.log_scope}) AND jsonPayload.event=\"download_completed\""
  value_extractor = "EXTRACT(jsonPayload.bytes)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "By"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 32
      growth_factor      = 2
      scale              = 1024
    }
  }

  depends_on = [time_sleep.apis]
}

# What each paid call cost, as the cost guard settles it: the cost_settled
# lines carry `spent` as text such as "$0.40".
resource "google_logging_metric" "cost_spent" {
  name            = "${var.prefix}asmr/cost_spent"
  description     = "Estimated USD spent per paid model call (the cost guard's settled reservations)."
  filter          = "(${local.log_scope}) AND jsonPayload.event=\"cost_settled\""
  value_extractor = "REGEXP_EXTRACT(jsonPayload.spent, \"([0-9]+\\\\.[0-9]+)\")"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "{USD}"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 24
      growth_factor      = 2
      scale              = 0.001
    }
  }

  depends_on = [time_sleep.apis]
}

locals {
  # The PromQL name of a log-based metric: logging.googleapis.com/user/NAME
  # becomes logging_googleapis_com:user_NAME, other characters underscores.
  promql_name = merge(
    { for key, m in google_logging_metric.event : key => "logging_googleapis_com:user_${replace(replace(m.name, "/", "_"), "-", "_")}" },
    { cost_spent = "logging_googleapis_com:user_${replace(replace(google_logging_metric.cost_spent.name, "/", "_"), "-", "_")}" },
  )

  # One chart per counter, as a rate per minute.
  dashboard_charts = [
    { title = "Jobs completed (per minute, by kind)", metric = "jobs_completed", by = "kind" },
    { title = "Jobs failed (per minute, by reason)", metric = "jobs_failed", by = "reason" },
    { title = "Jobs delivered (per minute, by kind)", metric = "jobs_delivered", by = "kind" },
    { title = "Model 429s (per minute, by model)", metric = "model_rate_limited", by = "model" },
    { title = "Downloads failed (per minute)", metric = "downloads_failed", by = "" },
    { title = "Dead letters handled (per minute)", metric = "dead_letters", by = "" },
    { title = "Claims refused by the budget (per minute)", metric = "budget_exhausted", by = "" },
    { title = "Requests rejected (per minute)", metric = "requests_rejected", by = "" },
    { title = "Pushes acknowledged as poison (per minute)", metric = "pushes_poisoned", by = "" },
    { title = "Job events deferred to the outbox (per minute)", metric = "job_events_deferred", by = "" },
  ]

  # sum by (LABEL) (rate(M{services}[5m]) or rate(M{jobs}[5m])) * 60. The
  # selectors of a counter with a tenant label are narrowed by the
  # dashboard's tenant variable: Cloud Monitoring puts the variable's
  # matcher (tenant=~"...", nothing for all tenants) where ${tenant} stands.
  chart_query = {
    for chart in local.dashboard_charts : chart.metric => format(
      "sum%s(rate(%s{monitored_resource=\"cloud_run_revision\"%s}[5m]) or rate(%s{monitored_resource=\"cloud_run_job\"%s}[5m])) * 60",
      chart.by == "" ? "" : " by (${chart.by}) ",
      local.promql_name[chart.metric],
      local.tenant_matcher[chart.metric],
      local.promql_name[chart.metric],
      local.tenant_matcher[chart.metric],
    )
  }
  tenant_matcher = {
    for key, m in local.event_metrics : key => contains(keys(m.labels), "tenant") ? ",$${tenant}" : ""
  }

  # Failed jobs per completed job over the last hour, both resource types
  # added; no completed job at all makes the ratio infinite, so a
  # deployment where everything fails alerts too.
  failure_ratio_query = format(
    "sum(increase(%s{monitored_resource=\"cloud_run_revision\"}[1h]) or increase(%s{monitored_resource=\"cloud_run_job\"}[1h])) / (sum(increase(%s{monitored_resource=\"cloud_run_revision\"}[1h]) or increase(%s{monitored_resource=\"cloud_run_job\"}[1h])) or vector(0)) > %s",
    local.promql_name["jobs_failed"], local.promql_name["jobs_failed"],
    local.promql_name["jobs_completed"], local.promql_name["jobs_completed"],
    var.failure_ratio_threshold,
  )

  # What the dashboard watches beyond the counters: the queues, the
  # instances, and the two ratios the original system watched.
  our_subscriptions = "resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=starts_with(\"${var.prefix}asmr-\")"
  our_services      = "resource.type=\"cloud_run_revision\" AND resource.label.service_name=one_of(${join(",", [for s in google_cloud_run_v2_service.stage : "\"${s.name}\""])})"
  watch_filters = [
    { title = "Backlog per subscription (undelivered messages)", filter = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND ${local.our_subscriptions}", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", by = "resource.label.subscription_id" },
    { title = "Oldest unacknowledged message per subscription (s)", filter = "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND ${local.our_subscriptions}", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", by = "resource.label.subscription_id" },
    { title = "Instances per service", filter = "metric.type=\"run.googleapis.com/container/instance_count\" AND ${local.our_services}", aligner = "ALIGN_MAX", reducer = "REDUCE_SUM", by = "resource.label.service_name" },
    { title = "CPU use per service (p99 of instances)", filter = "metric.type=\"run.googleapis.com/container/cpu/utilizations\" AND ${local.our_services}", aligner = "ALIGN_PERCENTILE_99", reducer = "REDUCE_MAX", by = "resource.label.service_name" },
    { title = "Memory use per service (p99 of instances)", filter = "metric.type=\"run.googleapis.com/container/memory/utilizations\" AND ${local.our_services}", aligner = "ALIGN_PERCENTILE_99", reducer = "REDUCE_MAX", by = "resource.label.service_name" },
  ]

  # rate(M) over both resource types, per minute.
  rate_of = {
    for key in ["jobs_completed", "jobs_failed", "model_rate_limited", "jobs_delivered", "downloads_failed"] : key => format(
      "sum(rate(%s{monitored_resource=\"cloud_run_revision\"}[15m]) or rate(%s{monitored_resource=\"cloud_run_job\"}[15m]))",
      local.promql_name[key], local.promql_name[key],
    )
  }
  watch_ratios = [
    # Model calls that made a job (completed) over all that ended: made,
    # refused for good (failed) or refused by the quota (429).
    { title = "Model-call success ratio (15 min)", query = "${local.rate_of["jobs_completed"]} / (${local.rate_of["jobs_completed"]} + (${local.rate_of["jobs_failed"]} or vector(0)) + (${local.rate_of["model_rate_limited"]} or vector(0)))" },
    # Copies that delivered a job over all copies that ended.
    { title = "Download completion ratio (15 min)", query = "${local.rate_of["jobs_delivered"]} / (${local.rate_of["jobs_delivered"]} + (${local.rate_of["downloads_failed"]} or vector(0)))" },
  ]
  watch_top = ceil(length(local.dashboard_charts) / 2) * 16 + 32

  usd_spent_query = format(
    "sum(increase(%s_sum{monitored_resource=\"cloud_run_revision\"}[1d]) or increase(%s_sum{monitored_resource=\"cloud_run_job\"}[1d]))",
    local.promql_name["cost_spent"], local.promql_name["cost_spent"],
  )
}

resource "google_monitoring_dashboard" "asmr" {
  dashboard_json = jsonencode({
    displayName = "${var.prefix}asmr"
    # A tenant picker: the charts of per-tenant counters follow it.
    dashboardFilters = [{
      filterType       = "METRIC_LABEL"
      labelKey         = "tenant"
      templateVariable = "tenant"
    }]
    mosaicLayout = {
      columns = 48
      tiles = concat(
        [
          for i, chart in local.dashboard_charts : {
            xPos   = (i % 2) * 24
            yPos   = floor(i / 2) * 16
            width  = 24
            height = 16
            widget = {
              title = chart.title
              xyChart = {
                dataSets = [{
                  plotType = "LINE"
                  timeSeriesQuery = {
                    prometheusQuery = local.chart_query[chart.metric]
                  }
                }]
              }
            }
          }
        ],
        [
          {
            xPos   = 0
            yPos   = ceil(length(local.dashboard_charts) / 2) * 16
            width  = 24
            height = 16
            widget = {
              title = "Bytes delivered (distribution of copy sizes; services, then drains)"
              xyChart = {
                # One data set per monitored resource type: a filter reads
                # one type at a time.
                dataSets = [
                  for resource_type in ["cloud_run_revision", "cloud_run_job"] : {
                    plotType = "HEATMAP"
                    timeSeriesQuery = {
                      timeSeriesFilter = {
                        filter = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.bytes_delivered.name}\" AND resource.type=\"${resource_type}\""
                        aggregation = {
                          alignmentPeriod    = "300s"
                          perSeriesAligner   = "ALIGN_DELTA"
                          crossSeriesReducer = "REDUCE_SUM"
                        }
                      }
                    }
                  }
                ]
              }
            }
          },
          {
            xPos   = 0
            yPos   = ceil(length(local.dashboard_charts) / 2) * 16 + 16
            width  = 24
            height = 16
            widget = {
              title = "Estimated USD spent (rolling 24 h)"
              xyChart = {
                dataSets = [{
                  plotType = "LINE"
                  timeSeriesQuery = {
                    prometheusQuery = local.usd_spent_query
                  }
                }]
              }
            }
          },
          {
            xPos   = 24
            yPos   = ceil(length(local.dashboard_charts) / 2) * 16
            width  = 24
            height = 16
            widget = {
              title = "Dead-letter backlog (undelivered messages)"
              xyChart = {
                dataSets = [{
                  plotType = "LINE"
                  timeSeriesQuery = {
                    timeSeriesFilter = {
                      filter = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=\"${google_pubsub_subscription.dead_letter.name}\""
                      aggregation = {
                        alignmentPeriod  = "60s"
                        perSeriesAligner = "ALIGN_MAX"
                      }
                    }
                  }
                }]
              }
            }
          },
        ],
        [
          for i, chart in local.watch_filters : {
            xPos   = (i % 2) * 24
            yPos   = local.watch_top + floor(i / 2) * 16
            width  = 24
            height = 16
            widget = {
              title = chart.title
              xyChart = {
                dataSets = [{
                  plotType = "LINE"
                  timeSeriesQuery = {
                    timeSeriesFilter = {
                      filter = chart.filter
                      aggregation = {
                        alignmentPeriod    = "60s"
                        perSeriesAligner   = chart.aligner
                        crossSeriesReducer = chart.reducer
                        groupByFields      = [chart.by]
                      }
                    }
                  }
                }]
              }
            }
          }
        ],
        [
          for i, chart in local.watch_ratios : {
            xPos   = ((length(local.watch_filters) + i) % 2) * 24
            yPos   = local.watch_top + floor((length(local.watch_filters) + i) / 2) * 16
            width  = 24
            height = 16
            widget = {
              title = chart.title
              xyChart = {
                dataSets = [{
                  plotType = "LINE"
                  timeSeriesQuery = {
                    prometheusQuery = chart.query
                  }
                }]
              }
            }
          }
        ],
      )
    }
  })

  depends_on = [time_sleep.apis]
}

resource "google_monitoring_notification_channel" "email" {
  for_each = toset(var.alert_emails)

  display_name = "asmr alerts to ${each.key}"
  type         = "email"
  labels = {
    email_address = each.key
  }

  depends_on = [time_sleep.apis]
}

# The janitor drains the dead-letter subscription every hour; a backlog that
# outlives several runs means it is failing or cannot keep up.
resource "google_monitoring_alert_policy" "dead_letter_backlog" {
  display_name          = "${var.prefix}asmr: dead letters are piling up"
  combiner              = "OR"
  notification_channels = [for c in google_monitoring_notification_channel.email : c.id]

  conditions {
    display_name = "undelivered messages on ${google_pubsub_subscription.dead_letter.name}"

    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=\"${google_pubsub_subscription.dead_letter.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = var.dead_letter_alert_after

      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MIN"
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Messages in ${google_pubsub_subscription.dead_letter.name} are not being drained. Check the last executions of the ${google_cloud_run_v2_job.stage["janitor"].name} Cloud Run job and its `janitor.summary` / `janitor.sweep_failed` log lines."
  }

  depends_on = [time_sleep.apis]
}

# More failed jobs than completed ones (times the threshold) over an hour,
# from services and jobs alike. Monitoring refuses a condition on a
# log-based metric created minutes before ("Cannot find metric(s)... could
# take up to 10 minutes", hashicorp/terraform-provider-google#11102, open),
# which would fail every first apply: a PromQL condition can skip that check
# (disable_metric_validation), and the metric is then read once it exists.
resource "google_monitoring_alert_policy" "failure_rate" {
  display_name          = "${var.prefix}asmr: job failure rate"
  combiner              = "OR"
  notification_channels = [for c in google_monitoring_notification_channel.email : c.id]

  conditions {
    display_name = "failed per completed job over 1 h above ${var.failure_ratio_threshold}"

    condition_prometheus_query_language {
      query                     = local.failure_ratio_query
      duration                  = "0s"
      evaluation_interval       = "300s"
      disable_metric_validation = true
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Jobs are failing. The `job_transition` log lines with `to` = `failed` carry the job id and the reason (`code`); `asmr list --status failed` shows the jobs and their errors."
  }

  depends_on = [time_sleep.apis]
}
