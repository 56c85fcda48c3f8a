# The tenants of var.tenants: one tenants/{name} record each, in the shape
# the store reads (budgets in millionths of a dollar). Created once, then
# owned by `asmr tenant` (keys are added there, never here), so a later
# apply does not overwrite them.

locals {
  tenant_buckets = {
    for name, tenant in var.tenants :
    name => split("/", trimprefix(tenant.destination, "gs://"))[0]
    if tenant.destination != null && startswith(coalesce(tenant.destination, "-"), "gs://")
  }
}

resource "google_firestore_document" "tenant" {
  for_each = var.tenants

  database    = var.firestore_database
  collection  = "${var.prefix}tenants"
  document_id = each.key
  fields = jsonencode(merge(
    {
      id           = { stringValue = each.key }
      display_name = { stringValue = coalesce(each.value.display_name, each.key) }
      weight       = { integerValue = tostring(each.value.weight) }
      keys         = { arrayValue = {} }
      disabled     = { booleanValue = false }
    },
    each.value.budget_usd == null ? {} : {
      daily_budget_micros = { integerValue = tostring(floor(each.value.budget_usd * 1000000)) }
    },
    each.value.destination == null ? {} : {
      destination = { stringValue = each.value.destination }
    },
  ))

  lifecycle {
    ignore_changes = [fields]
  }

  depends_on = [google_firestore_database.db]
}

# A tenant whose files go to a bucket of its own: the downloader writes there.
resource "google_storage_bucket_iam_member" "downloader_tenant" {
  for_each = local.tenant_buckets

  bucket = each.value
  role   = "roles/storage.objectUser"
  member = google_service_account.function["downloader"].member
}
