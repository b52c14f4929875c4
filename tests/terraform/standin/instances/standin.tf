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
    # what the OpenStack provider keeps of a server's user-data in the state: its SHA-1
    user_data = sha1(local.user_data[each.key])
  }
  lifecycle {
    # as the real server: a newer image is for new servers only, and the user-data is the
    # first boot's
    ignore_changes = [triggers["image"], triggers["user_data"]]
  }
}

resource "null_resource" "floatingip" {
  for_each = module.layout.public_hosts
  triggers = { pool = var.external_network, description = "${each.key}.${var.location}" }
}

resource "null_resource" "floatingip_associate" {
  for_each = module.layout.public_hosts
  triggers = {
    floating_ip = null_resource.floatingip[each.key].id
    port        = null_resource.port[each.key].id
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

output "floating_ips" {
  # a documentation address (TEST-NET-3) per web host, in host order, where the cloud would give
  # one from its external network
  value = {
    for index, name in sort(keys(null_resource.floatingip)) : name => cidrhost("203.0.113.0/24", index + 10)
  }
}

output "user_data" {
  # the SHA-1 of each server's user-data (user_data.tf, copied beside this file) as the state
  # holds it, for the tests to compare; the real stack has no such output
  value     = { for name, server in null_resource.server : name => server.triggers.user_data }
  sensitive = true # a hash of sensitive values is sensitive to Terraform
}
