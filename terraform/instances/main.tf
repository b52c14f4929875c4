# One location's servers: a port per host carrying its addresses from the topology's address
# plan (the primary first, then its service addresses), and a server booted from its role
# group's image, which cloud-init points at the salt master.

module "layout" {
  source          = "../modules/layout"
  location_number = var.location_number
  bastion_cidr    = var.bastion_cidr
  hosts           = var.hosts
}

resource "openstack_networking_port_v2" "host" {
  for_each           = module.layout.ports
  name               = "${each.key}.${var.location}"
  network_id         = var.network_id
  admin_state_up     = true
  security_group_ids = [for group in each.value.security_groups : var.security_group_ids[group]]

  dynamic "fixed_ip" {
    for_each = each.value.fixed_ips
    content {
      subnet_id  = var.subnet_id
      ip_address = fixed_ip.value
    }
  }
}

resource "openstack_compute_instance_v2" "host" {
  for_each    = var.hosts
  name        = each.key
  image_id    = var.images[each.value.image_group]
  flavor_name = each.value.flavor != "" ? each.value.flavor : var.default_flavor
  key_pair    = var.key_pair != "" ? var.key_pair : null
  user_data   = local.user_data[each.key]
  metadata = {
    coop_location = var.location
    coop_roles    = join(",", each.value.roles)
  }

  network {
    port = openstack_networking_port_v2.host[each.key].id
  }

  lifecycle {
    # A new image is for new servers: an existing one is not rebuilt because the weekly image
    # is newer (salt keeps it current). cloud-init runs at first boot only. Rebuild a server on
    # purpose with `terraform apply -replace` (the destroy gate then asks for the run's leave).
    ignore_changes = [image_id, user_data]
  }
}

# The web hosts' public addresses (80/443 from anywhere is their security group's): a floating IP
# from the location's external network, on the host's port. Other hosts have none.
resource "openstack_networking_floatingip_v2" "public" {
  for_each    = module.layout.public_hosts
  pool        = var.external_network
  description = "${each.key}.${var.location}"
}

resource "openstack_networking_floatingip_associate_v2" "public" {
  for_each    = module.layout.public_hosts
  floating_ip = openstack_networking_floatingip_v2.public[each.key].address
  port_id     = openstack_networking_port_v2.host[each.key].id
}
