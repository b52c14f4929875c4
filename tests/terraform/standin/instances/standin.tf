# A STAND-IN for terraform/instances (see ../network/standin.tf): a null_resource per port and per
# server, with the real configuration's variables (location.tf and variables.tf are copied beside
# this file by the fixture), the real layout module and the same outputs.

terraform {
  required_providers {
    null = {
      source = "hashicorp/null"
    }
  }
  backend "local" {}
}

module "layout" {
  source          = "../modules/layout"
  location_number = var.location_number
  bastion_cidr    = var.bastion_cidr
  hosts           = var.hosts
}

resource "null_resource" "port" {
  for_each = module.layout.ports
  triggers = {
    network   = var.network_id
    fixed_ips = join(",", each.value.fixed_ips)
    groups    = join(",", [for group in each.value.security_groups : var.security_group_ids[group]])
  }
}

resource "null_resource" "server" {
  for_each = var.hosts
  triggers = {
    name    = each.key
    network = var.network_id
    image   = var.images[each.value.image_group]
  }
  lifecycle {
    # as the real server: a newer image is for new servers only
    ignore_changes = [triggers["image"]]
  }
}

output "servers" {
  value = {
    for name, server in null_resource.server : name => {
      id        = server.id
      addresses = module.layout.ports[name].fixed_ips
      image_id  = server.triggers.image
    }
  }
}
