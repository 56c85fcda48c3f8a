# Firestore: the database, a composite index for every query the store runs,
# and TTL on expire_at.
#
# firestore_indexes mirrors shared::store::indexes::INDEXES, which a unit
# test keeps in step with the store's queries; tests/tests/suites/terraform.rs checks
# that every index there is declared here. Collection names get the prefix,
# as the code's ASMR_COLLECTION_PREFIX does.

locals {
  firestore_location = var.firestore_location != "" ? var.firestore_location : var.region

  firestore_indexes = {
    jobs_claim = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "kind", order = "ASCENDING" },
        { path = "priority", order = "DESCENDING" },
        { path = "created_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    jobs_newest = {
      collection = "jobs"
      fields = [
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    jobs_status_newest = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    jobs_kind_newest = {
      collection = "jobs"
      fields = [
        { path = "kind", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    jobs_status_kind_newest = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "kind", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    jobs_verdict_newest = {
      collection = "jobs"
      fields = [
        { path = "verdict", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    jobs_status_verdict_newest = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "verdict", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    jobs_kind_verdict_newest = {
      collection = "jobs"
      fields = [
        { path = "kind", order = "ASCENDING" },
        { path = "verdict", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    jobs_status_kind_verdict_newest = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "kind", order = "ASCENDING" },
        { path = "verdict", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    jobs_status_updated = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "updated_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    jobs_status_lease = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "lease_expires_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    downloads_copy_order = {
      collection = "downloads"
      fields = [
        { path = "priority", order = "DESCENDING" },
        { path = "created_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    downloads_status_copy_order = {
      collection = "downloads"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "priority", order = "DESCENDING" },
        { path = "created_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    # A tenant's jobs, downloads and rejected requests; Firestore merges
    # these with the indexes above for a tenant's jobs by status, kind or
    # verdict.
    jobs_tenant_newest = {
      collection = "jobs"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    downloads_tenant_claim = {
      collection = "downloads"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "priority", order = "DESCENDING" },
        { path = "created_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    rejected_tenant_newest = {
      collection = "rejected"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "received_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    rejected_newest = {
      collection = "rejected"
      fields = [
        { path = "received_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    jobs_expired = {
      collection = "jobs"
      fields = [
        { path = "expire_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    downloads_expired = {
      collection = "downloads"
      fields = [
        { path = "expire_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    rejected_expired = {
      collection = "rejected"
      fields = [
        { path = "expire_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    budgets_expired = {
      collection = "budgets"
      fields = [
        { path = "expire_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    held_expired = {
      collection = "held"
      fields = [
        { path = "expire_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    limits_expired = {
      collection = "limits"
      fields = [
        { path = "expire_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    charges_expired = {
      collection = "charges"
      fields = [
        { path = "expire_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    # A day's budget as a whole: its main document's shards.
    budgets_shards = {
      collection = "budgets"
      fields = [
        { path = "budget", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    # The charges (one per settled paid attempt) of a day.
    charges_of_day = {
      collection = "charges"
      fields = [
        { path = "day", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    webhooks_expired = {
      collection = "webhooks"
      fields = [
        { path = "expire_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    # The notifier's sweep of due webhook deliveries.
    webhooks_due = {
      collection = "webhooks"
      fields = [
        { path = "state", order = "ASCENDING" },
        { path = "next_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    # asmr webhooks [--failed] [--tenant T]
    webhooks_newest = {
      collection = "webhooks"
      fields = [
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    webhooks_newest_of_tenant = {
      collection = "webhooks"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    webhooks_newest_in_state = {
      collection = "webhooks"
      fields = [
        { path = "state", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    webhooks_newest_of_tenant_in_state = {
      collection = "webhooks"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "state", order = "ASCENDING" },
        { path = "created_at", order = "DESCENDING" },
        { path = "id", order = "DESCENDING" },
      ]
    }
    # The live page's last hour: records per minute of one tenant,
    # failures since a time (counted, and read in order), the oldest
    # pending job.
    jobs_tenant_created = {
      collection = "jobs"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "created_at", order = "ASCENDING" },
      ]
    }
    jobs_tenant_completed = {
      collection = "jobs"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "completed_at", order = "ASCENDING" },
      ]
    }
    downloads_tenant_completed = {
      collection = "downloads"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "completed_at", order = "ASCENDING" },
      ]
    }
    jobs_status_failed_since = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "updated_at", order = "ASCENDING" },
      ]
    }
    jobs_tenant_status_failed_since = {
      collection = "jobs"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "status", order = "ASCENDING" },
        { path = "updated_at", order = "ASCENDING" },
      ]
    }
    jobs_tenant_status_failures = {
      collection = "jobs"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "status", order = "ASCENDING" },
        { path = "updated_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    downloads_status_failed_since = {
      collection = "downloads"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "updated_at", order = "ASCENDING" },
      ]
    }
    downloads_tenant_status_failed_since = {
      collection = "downloads"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "status", order = "ASCENDING" },
        { path = "updated_at", order = "ASCENDING" },
      ]
    }
    jobs_status_oldest = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "created_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    jobs_tenant_status_oldest = {
      collection = "jobs"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "status", order = "ASCENDING" },
        { path = "created_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    # A model's calls that ended in the last minute (its quota in use).
    jobs_model_completed = {
      collection = "jobs"
      fields = [
        { path = "model", order = "ASCENDING" },
        { path = "completed_at", order = "ASCENDING" },
      ]
    }
    jobs_tenant_model_completed = {
      collection = "jobs"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "model", order = "ASCENDING" },
        { path = "completed_at", order = "ASCENDING" },
      ]
    }
    jobs_status_model_updated = {
      collection = "jobs"
      fields = [
        { path = "status", order = "ASCENDING" },
        { path = "model", order = "ASCENDING" },
        { path = "updated_at", order = "ASCENDING" },
      ]
    }
    jobs_tenant_status_model_updated = {
      collection = "jobs"
      fields = [
        { path = "tenant", order = "ASCENDING" },
        { path = "status", order = "ASCENDING" },
        { path = "model", order = "ASCENDING" },
        { path = "updated_at", order = "ASCENDING" },
      ]
    }
    # The models jobs ran on, one after another (jobs per model).
    jobs_models = {
      collection = "jobs"
      fields = [
        { path = "model", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
    # The janitor's sweep of job events left in the outbox.
    outbox_oldest = {
      collection = "outbox"
      fields = [
        { path = "created_at", order = "ASCENDING" },
        { path = "id", order = "ASCENDING" },
      ]
    }
  }

  # Every collection whose records carry expire_at (retention). Outbox
  # entries have none: each stays until it is published.
  ttl_collections = toset(["jobs", "downloads", "rejected", "budgets", "held", "charges", "limits", "webhooks"])
}

resource "google_firestore_database" "db" {
  count = var.create_firestore_database ? 1 : 0

  name                              = var.firestore_database
  location_id                       = local.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = var.deletion_protection ? "ABANDON" : "DELETE"

  depends_on = [time_sleep.apis]
}

resource "google_firestore_index" "query" {
  for_each = local.firestore_indexes

  database    = var.firestore_database
  collection  = "${var.prefix}${each.value.collection}"
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.path
      order      = fields.value.order
    }
  }

  depends_on = [google_firestore_database.db]
}

# TTL deletes a record within about a day after expire_at; the janitor's
# retention sweep deletes what is already due. expire_at is exempt from
# single-field indexing: only the composite indexes above order by it, and an
# indexed timestamp that grows with time makes a write hot spot.
resource "google_firestore_field" "expire_at" {
  for_each = local.ttl_collections

  database   = var.firestore_database
  collection = "${var.prefix}${each.key}"
  field      = "expire_at"

  ttl_config {}

  index_config {}

  depends_on = [google_firestore_database.db]
}
