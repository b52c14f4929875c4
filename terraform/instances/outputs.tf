output "servers" {
  description = "Host -> {id, addresses (primary first), image_id}."
  value = {
    for name, server in openstack_compute_instance_v2.host : name => {
      id        = server.id
      addresses = [for ip in openstack_networking_port_v2.host[name].fixed_ip : ip.ip_address]
      image_id  = server.image_id
    }
  }
}

output "floating_ips" {
  description = "Web host -> its public (floating) address, for DNS."
  value       = { for name, ip in openstack_networking_floatingip_v2.public : name => ip.address }
}
