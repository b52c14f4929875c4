# The location's own settings, from terraform/locations/<location>.tfvars (committed, no secret)
# and from the topology (written by the TerraformResource for each plan). This file is the same
# in every stack (each stack links to this one file), so one locations/<location>.tfvars serves
# them all.

variable "location" {
  description = "The location's name in the topology (nz-por-1)."
  type        = string
}

variable "location_number" {
  description = "The location's number: its addresses are 10.N.T.I."
  type        = number
}

variable "cloud" {
  description = "The clouds.yaml entry of the location's cloud (the topology's `cloud`)."
  type        = string
}

variable "bastion_cidr" {
  description = "The only address allowed to reach ssh, as a CIDR (203.0.113.10/32)."
  type        = string
}

variable "external_network" {
  description = "The cloud's external network, for the router's gateway (Catalyst Cloud: public-net)."
  type        = string
}

variable "dns_nameservers" {
  description = "Resolvers handed out by DHCP until the network's own DNS (the dns role) answers."
  type        = list(string)
  default     = []
}

variable "key_pair" {
  description = "The OpenStack key pair installed for the image's default user (break-glass access)."
  type        = string
  default     = ""
}

variable "default_flavor" {
  description = "The flavor of a host whose topology entry names none."
  type        = string
  default     = "c1.c1r2"
}

variable "hosts" {
  description = "The location's hosts from the topology: roles, addresses (primary first), flavor, image group."
  type = map(object({
    roles       = list(string)
    addresses   = list(string)
    flavor      = string
    image_group = string
  }))
  default = {}
}
