output "network_id" {
  description = "The private network."
  value       = openstack_networking_network_v2.private.id
}

output "subnet_id" {
  description = "The private subnet, 10.N.0.0/16."
  value       = openstack_networking_subnet_v2.private.id
}

output "cidr" {
  description = "The private subnet's range."
  value       = openstack_networking_subnet_v2.private.cidr
}

output "router_id" {
  description = "The router to the external network."
  value       = openstack_networking_router_v2.router.id
}

output "security_group_ids" {
  description = "Security group name (base, web, ...) -> id."
  value       = { for name, group in openstack_networking_secgroup_v2.group : name => group.id }
}
