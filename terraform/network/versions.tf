terraform {
  required_version = ">= 1.0"
  required_providers {
    openstack = {
      source  = "terraform-provider-openstack/openstack"
      version = "~> 1.54"
    }
  }
  # Remote state with locking on the co-op's PostgreSQL. The connection string and one schema
  # per (location, stack) are given at `terraform init` by the TerraformResource
  # (-backend-config); the password comes from PGPASSWORD, never from a file.
  backend "pg" {}
}

# Credentials: the clouds.yaml entry named by the topology's location (`cloud`), with the
# password from the environment (OS_PASSWORD) or secure.yaml, never in this repository.
provider "openstack" {
  cloud = var.cloud
}
