# Buckets. The output bucket is where the generators (and Veo) write; the
# archive bucket is the delivery destination, copied into or mounted
# (download_destination). Both are private with uniform access.

resource "google_storage_bucket" "output" {
  #checkov:skip=CKV_GCP_62:Cloud Audit Logs record access; usage logs would need a third bucket that nothing reads.
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

  depends_on = [google_project_service.api]
}

resource "google_storage_bucket" "archive" {
  #checkov:skip=CKV_GCP_62:Cloud Audit Logs record access; usage logs would need a third bucket that nothing reads.
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

  depends_on = [google_project_service.api]
}
