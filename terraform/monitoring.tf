# Log-based metrics, a dashboard and alerts. The stages log JSON lines through
# tracing-stackdriver (jsonPayload, keys camelCased); every job transition
# has one `job_transition` line (stable `event` field), which the metrics
# filter on.

locals {
  # Only this deployment's services and jobs (the prefix), when several
  # share the project.
  log_scope = join(" OR ", [
    "(resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^${var.prefix}\")",
    "(resource.type=\"cloud_run_job\" AND resource.labels.job_name=~\"^${var.prefix}\")",
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
      labels      = { kind = "EXTRACT(jsonPayload.kind)" }
    }
    jobs_failed = {
      event       = "job_transition"
      to          = "failed"
      description = "Jobs that failed, by kind and reason (error code: filtered, timed_out, invalid_argument, attempts_exhausted, dead_lettered...)."
      labels      = { kind = "EXTRACT(jsonPayload.kind)", reason = "EXTRACT(jsonPayload.code)" }
    }
    jobs_delivered = {
      event       = "job_transition"
      to          = "delivered"
      description = "Jobs whose every output reached the destination."
      labels      = { kind = "EXTRACT(jsonPayload.kind)" }
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
    job_events_lost = {
      event       = "job_event.lost"
      to          = null
      description = "Job events that could not be published to asmr-job-events."
      labels      = {}
    }
    budget_exhausted = {
      event       = "budget_exhausted"
      to          = null
      description = "Claims refused because the day's budget (BUDGET_USD_PER_DAY) is spent; the jobs wait as pending."
      labels      = {}
    }
    requests_rejected = {
      event       = "request.rejected"
      to          = null
      description = "Requests intake could not turn into jobs (kept in the rejected collection)."
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

  depends_on = [google_project_service.api]
}

# The Vertex client logs every 429 / RESOURCE_EXHAUSTED it retries, and the
# error it gives up with, with code = "rate_limited".
resource "google_logging_metric" "model_rate_limited" {
  name        = "${var.prefix}asmr/model_rate_limited"
  description = "Vertex AI answers of 429 / RESOURCE_EXHAUSTED (model quota), by model."
  filter      = "(${local.log_scope}) AND jsonPayload.code=\"rate_limited\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key        = "model"
      value_type = "STRING"
    }
  }

  label_extractors = { model = "EXTRACT(jsonPayload.model)" }

  depends_on = [google_project_service.api]
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

  depends_on = [google_project_service.api]
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

  depends_on = [google_project_service.api]
}

locals {
  # The PromQL name of a log-based metric: logging.googleapis.com/user/NAME
  # becomes logging_googleapis_com:user_NAME, other characters underscores.
  cost_spent_promql = "logging_googleapis_com:user_${replace(replace(google_logging_metric.cost_spent.name, "/", "_"), "-", "_")}"

  metric_type = { for name, m in google_logging_metric.event : name => "logging.googleapis.com/user/${m.name}" }

  # One chart per metric; counters as a rate per minute.
  dashboard_charts = [
    { title = "Jobs completed (per minute, by kind)", metric = local.metric_type["jobs_completed"], group_by = ["metric.label.kind"] },
    { title = "Jobs failed (per minute, by reason)", metric = local.metric_type["jobs_failed"], group_by = ["metric.label.reason"] },
    { title = "Jobs delivered (per minute, by kind)", metric = local.metric_type["jobs_delivered"], group_by = ["metric.label.kind"] },
    { title = "Model 429s (per minute, by model)", metric = "logging.googleapis.com/user/${google_logging_metric.model_rate_limited.name}", group_by = ["metric.label.model"] },
    { title = "Downloads failed (per minute)", metric = local.metric_type["downloads_failed"], group_by = [] },
    { title = "Dead letters handled (per minute)", metric = local.metric_type["dead_letters"], group_by = [] },
    { title = "Claims refused by the budget (per minute)", metric = local.metric_type["budget_exhausted"], group_by = [] },
    { title = "Requests rejected (per minute)", metric = local.metric_type["requests_rejected"], group_by = [] },
    { title = "Job events lost (per minute)", metric = local.metric_type["job_events_lost"], group_by = [] },
  ]
}

resource "google_monitoring_dashboard" "asmr" {
  dashboard_json = jsonencode({
    displayName = "${var.prefix}asmr"
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
                    timeSeriesFilter = {
                      filter = "metric.type=\"${chart.metric}\""
                      aggregation = {
                        alignmentPeriod    = "60s"
                        perSeriesAligner   = "ALIGN_RATE"
                        crossSeriesReducer = "REDUCE_SUM"
                        groupByFields      = chart.group_by
                      }
                    }
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
              title = "Bytes delivered (distribution of copy sizes)"
              xyChart = {
                dataSets = [{
                  plotType = "HEATMAP"
                  timeSeriesQuery = {
                    timeSeriesFilter = {
                      filter = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.bytes_delivered.name}\""
                      aggregation = {
                        alignmentPeriod    = "300s"
                        perSeriesAligner   = "ALIGN_DELTA"
                        crossSeriesReducer = "REDUCE_SUM"
                      }
                    }
                  }
                }]
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
                    prometheusQuery = "sum(increase(${local.cost_spent_promql}_sum[1d]))"
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
      )
    }
  })
}

resource "google_monitoring_notification_channel" "email" {
  for_each = toset(var.alert_emails)

  display_name = "asmr alerts to ${each.key}"
  type         = "email"
  labels = {
    email_address = each.key
  }
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
}

# More failed jobs than completed ones (times the threshold) over an hour.
resource "google_monitoring_alert_policy" "failure_rate" {
  display_name          = "${var.prefix}asmr: job failure rate"
  combiner              = "OR"
  notification_channels = [for c in google_monitoring_notification_channel.email : c.id]

  conditions {
    display_name = "failed per completed job over 1 h above ${var.failure_ratio_threshold}"

    condition_threshold {
      filter             = "metric.type=\"${local.metric_type["jobs_failed"]}\" AND resource.type=\"cloud_run_revision\""
      denominator_filter = "metric.type=\"${local.metric_type["jobs_completed"]}\" AND resource.type=\"cloud_run_revision\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.failure_ratio_threshold
      duration           = "0s"

      aggregations {
        alignment_period     = "3600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }

      denominator_aggregations {
        alignment_period     = "3600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Jobs are failing. The `job_failed` log lines carry the job id and the reason; `asmr list --status failed` shows the jobs and their errors."
  }
}
