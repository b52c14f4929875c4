output "cidr" {
  description = "The location's private network, 10.N.0.0/16."
  value       = local.cidr
}

output "gateway_ip" {
  description = "The subnet's gateway: 10.N.0.1 (type 0 is never a planned address type)."
  value       = cidrhost(local.cidr, 1)
}

output "allocation_pool" {
  description = "Where DHCP may allocate: 10.N.0.10-10.N.0.250, clear of every planned address."
  value       = { start = cidrhost(local.cidr, 10), end = cidrhost(local.cidr, 250) }
}

output "security_groups" {
  description = "Security group name -> {description, rules}."
  value       = local.security_groups
}

output "security_rules" {
  description = "Every ingress rule, keyed <group>/<n>: {group, protocol, port_min, port_max, remote}."
  value       = local.security_rules
}

output "ports" {
  description = "Host -> {fixed_ips (primary first), security_groups}."
  value       = local.ports
}

output "public_hosts" {
  description = "The hosts that get a floating IP from the external network (those in the web group)."
  value       = local.public_hosts
}
