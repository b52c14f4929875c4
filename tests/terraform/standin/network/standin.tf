# A STAND-IN for terraform/network, for tests and the benchmark: no OpenStack provider can be had
# here, so each OpenStack resource is a null_resource of the same name, as many as the real
# configuration makes. It reads the real configuration's variables (the fixture copies the real
# location.tf beside this file) and the real layout module, and has the same outputs.

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

resource "null_resource" "network" {
  triggers = { name = "coop-${var.location}", cidr = module.layout.cidr }
}

resource "null_resource" "subnet" {
  triggers = { network = null_resource.network.id, cidr = module.layout.cidr }
}

resource "null_resource" "router" {
  triggers = { external = var.external_network }
}

resource "null_resource" "router_interface" {
  triggers = { router = null_resource.router.id, subnet = null_resource.subnet.id }
}

resource "null_resource" "secgroup" {
  for_each = module.layout.security_groups
  triggers = { name = "coop-${var.location}-${each.key}" }
}

resource "null_resource" "ingress" {
  for_each = module.layout.security_rules
  triggers = {
    group = null_resource.secgroup[each.value.group].id
    rule  = jsonencode(each.value)
  }
}

resource "null_resource" "egress" {
  triggers = { group = null_resource.secgroup["base"].id }
}

# Tests only: an apply that takes a while and leaves a trace (start and end times), to see two
# applies to one location one after the other.
variable "apply_seconds" {
  type    = number
  default = 0
}

variable "trace_file" {
  type    = string
  default = "/dev/null"
}

resource "null_resource" "slow" {
  count    = var.apply_seconds > 0 ? 1 : 0
  triggers = { always = timestamp() }
  provisioner "local-exec" {
    command = "echo start $(date +%s.%N) >> ${var.trace_file}; sleep ${var.apply_seconds}; echo end $(date +%s.%N) >> ${var.trace_file}"
  }
}

# Tests only: what reached Terraform's environment from the openstack resource (the cloud, the
# clouds.yaml, the password's length, never the password), as the OpenStack provider would read it.
variable "env_trace_file" {
  type    = string
  default = ""
}

resource "null_resource" "env_trace" {
  count = var.env_trace_file != "" ? 1 : 0
  provisioner "local-exec" {
    command = "echo \"$OS_CLOUD $OS_CLIENT_CONFIG_FILE $${#OS_PASSWORD}\" > ${var.env_trace_file}"
  }
}

output "network_id" {
  value = null_resource.network.id
}

output "subnet_id" {
  value = null_resource.subnet.id
}

output "cidr" {
  value = module.layout.cidr
}

output "router_id" {
  value = null_resource.router.id
}

output "security_group_ids" {
  value = { for name, group in null_resource.secgroup : name => group.id }
}
