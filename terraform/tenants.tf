# The tenants of var.tenants: one tenants/{name} record each, in the shape
# the store reads (budgets in millionths of a dollar). Created once, then
# owned by `asmr tenant` (later keys are made there), so a later apply does
# not overwrite them.
#
# Each record is created with a first API key, so that a new tenant is an
# entry in the settings file, one deploy, and a read of its key: terraform
# makes the key as `asmr tenant` does ("asmr_" and 32 random bytes in
# base64url), keeps it in Secret Manager (asmr-tenant-NAME-key) and stores
# only its SHA-256 and its first characters in the record. The key is also
# in the terraform state, which the state bucket keeps private. A record
# that existed before its secret did keeps its own keys: the secret's key
# then opens nothing (README, "Onboarding a tenant in three steps").

resource "random_bytes" "tenant_key" {
  for_each = var.tenants

  length = 32
}

resource "time_static" "tenant_key" {
  for_each = var.tenants
}

resource "google_secret_manager_secret" "tenant_key" {
  for_each = var.tenants

  secret_id = "${var.prefix}asmr-tenant-${each.key}-key"
  labels    = { tenant = each.key }

  replication {
    auto {}
  }

  depends_on = [time_sleep.apis]
}

resource "google_secret_manager_secret_version" "tenant_key" {
  for_each = var.tenants

  secret      = google_secret_manager_secret.tenant_key[each.key].id
  secret_data = local.tenant_keys[each.key]
}

locals {
  # base64url without padding, as the API's keys are written.
  tenant_keys = {
    for name, bytes in random_bytes.tenant_key :
    name => "asmr_${replace(replace(trimsuffix(bytes.base64, "="), "+", "-"), "/", "_")}"
  }

  # A key as the record keeps it: its SHA-256 in hex and its first
  # characters (what `asmr tenant show` tells keys apart by), never the key.
  tenant_first_keys = {
    for name, key in local.tenant_keys : name => {
      mapValue = {
        fields = {
          hash       = { stringValue = nonsensitive(sha256(key)) }
          hint       = { stringValue = nonsensitive(substr(key, 0, 9)) }
          created_at = { stringValue = time_static.tenant_key[name].rfc3339 }
        }
      }
    }
  }

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
      keys         = { arrayValue = { values = [local.tenant_first_keys[each.key]] } }
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
