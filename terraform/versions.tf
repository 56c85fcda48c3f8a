# Terraform and provider versions. The providers are pinned exactly: the
# test command checks every resource and argument here against the schema of
# these very versions (tests/terraform_schema.py), so moving to another one is
# a deliberate edit of both. google-beta is only used for the service agents'
# identities (iam.tf) and API Gateway (gateway.tf), which the GA provider does
# not have; time waits where Google needs propagation time (apis.tf, iam.tf,
# monitoring.tf); random makes each tenant's first API key (tenants.tf).
#
# The state has no fixed path: each deployment (each `prefix`) keeps its own
# under asmr/<prefix, or "default">/ in the state bucket, beside the variables
# file it is applied with. terraform/deploy is the one way in: it chooses
# the path, fetches that file and refuses to apply without it.

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "7.46.1"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "7.46.1"
    }
    random = {
      source  = "hashicorp/random"
      version = "3.9.1"
    }
    time = {
      source  = "hashicorp/time"
      version = "0.14.2"
    }
  }

  backend "gcs" {}
}

provider "google" {
  project = var.project
  region  = var.region
}

provider "google-beta" {
  project = var.project
  region  = var.region
}
