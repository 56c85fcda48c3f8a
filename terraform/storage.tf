# Buckets. The output bucket is where the generators (and Veo) write; the
# archive bucket is the delivery destination, copied into or mounted
# (download_destination). Both are private with uniform access.

locals {
  # The suffix of the downloader's temporary files (shared::paths).
  partial_suffix = ".asmr-partial"
}

resource "google_storage_bucket" "output" {
  #checkov:skip=CKV_GCP_62:Object reads and writes are recorded by the Data Access audit logs of Cloud Storage, which storage_audit_logs turns on (storage.tf); usage logs would need a third bucket that nothing reads.
  name                        = "${var.project}-${var.prefix}asmr-output"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # Each overwrite is a new generation, which the downloader copies once.
  versioning {
    enabled = true
  }

  # Outputs are copies waiting for the downloader; they go with the
  # retention of the jobs they belong to.
  lifecycle_rule {
    condition {
      age = var.output_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [time_sleep.apis]
}

resource "google_storage_bucket" "archive" {
  #checkov:skip=CKV_GCP_62:Object reads and writes are recorded by the Data Access audit logs of Cloud Storage, which storage_audit_logs turns on (storage.tf); usage logs would need a third bucket that nothing reads.
  name                        = "${var.project}-${var.prefix}asmr-archive"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # The delivered files are the point of the pipeline: kept until someone
  # deletes them, and a deletion or overwrite can be undone for 30 days.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # In volume mode the downloader writes each file as a hidden
  # .NAME.GENERATION.asmr-partial beside its target and renames it when it
  # is complete. A rename is a new object and a deleted one, so every
  # delivery would keep a noncurrent copy of its partial for 30 days, and an
  # abandoned partial (a copy that failed for good) would stay for ever.
  lifecycle_rule {
    condition {
      matches_suffix             = [local.partial_suffix]
      days_since_noncurrent_time = 1
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      matches_suffix = [local.partial_suffix]
      age            = 7
      with_state     = "LIVE"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [time_sleep.apis]
}

# Who read or wrote which object: Cloud Storage's Data Access audit logs,
# which are off in a project until turned on. The setting is the project's,
# not the bucket's: one deployment per project should own it
# (storage_audit_logs = false in the others, or two applies fight over it).
resource "google_project_iam_audit_config" "storage" {
  count = var.storage_audit_logs ? 1 : 0

  project = var.project
  service = "storage.googleapis.com"

  audit_log_config {
    log_type = "ADMIN_READ"
  }
  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }

  depends_on = [time_sleep.apis]
}
