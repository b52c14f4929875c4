# One location's network: a private network and subnet 10.N.0.0/16, a router to the cloud's
# external network, and the security groups. Hosts and their ports are the instances stack's.

module "layout" {
  source          = "../modules/layout"
  location_number = var.location_number
  bastion_cidr    = var.bastion_cidr
  hosts           = var.hosts
}

resource "openstack_networking_network_v2" "private" {
  name           = "coop-${var.location}"
  admin_state_up = true
}

resource "openstack_networking_subnet_v2" "private" {
  name            = "coop-${var.location}"
  network_id      = openstack_networking_network_v2.private.id
  cidr            = module.layout.cidr
  ip_version      = 4
  gateway_ip      = module.layout.gateway_ip
  dns_nameservers = var.dns_nameservers

  allocation_pool {
    start = module.layout.allocation_pool.start
    end   = module.layout.allocation_pool.end
  }
}

data "openstack_networking_network_v2" "external" {
  name     = var.external_network
  external = true
}

resource "openstack_networking_router_v2" "router" {
  name                = "coop-${var.location}"
  admin_state_up      = true
  external_network_id = data.openstack_networking_network_v2.external.id
}

resource "openstack_networking_router_interface_v2" "private" {
  router_id = openstack_networking_router_v2.router.id
  subnet_id = openstack_networking_subnet_v2.private.id
}

# The groups start empty (no default rules): every rule is one of the layout's, plus egress.
resource "openstack_networking_secgroup_v2" "group" {
  for_each             = module.layout.security_groups
  name                 = "coop-${var.location}-${each.key}"
  description          = each.value.description
  delete_default_rules = true
}

resource "openstack_networking_secgroup_rule_v2" "ingress" {
  for_each          = module.layout.security_rules
  security_group_id = openstack_networking_secgroup_v2.group[each.value.group].id
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = each.value.protocol
  port_range_min    = each.value.protocol == "icmp" ? null : each.value.port_min
  port_range_max    = each.value.protocol == "icmp" ? null : each.value.port_max
  remote_ip_prefix  = each.value.remote
}

# Hosts reach out (package mirrors, the registry's upstreams) through the router.
resource "openstack_networking_secgroup_rule_v2" "egress" {
  security_group_id = openstack_networking_secgroup_v2.group["base"].id
  direction         = "egress"
  ethertype         = "IPv4"
  remote_ip_prefix  = "0.0.0.0/0"
}
