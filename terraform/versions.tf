# Terraform and provider versions. The google provider is pinned to one major
# version: a new major changes defaults, so moving to it is a deliberate edit.
# google-beta is only used for the service agents' identities (iam.tf).
#
# State lives in a Cloud Storage bucket named at init time:
#   terraform init -backend-config="bucket=PROJECT-tfstate"

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 7.0"
    }
  }

  backend "gcs" {
    prefix = "asmr"
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

provider "google-beta" {
  project = var.project
  region  = var.region
}
