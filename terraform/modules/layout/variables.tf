variable "location_number" {
  description = "The location's number: the second octet of its addresses (10.N.0.0/16)."
  type        = number
  validation {
    condition     = var.location_number >= 1 && var.location_number <= 254 && floor(var.location_number) == var.location_number
    error_message = "The location_number must be a whole number from 1 to 254."
  }
}

variable "bastion_cidr" {
  description = "The only source allowed to reach ssh, as a CIDR (a single address is x.x.x.x/32)."
  type        = string
  validation {
    # An IPv4 CIDR of at least /8: 0.0.0.0/0, 0.0.0.0/1 ... are the world, or half of it.
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+/[0-9]+$", var.bastion_cidr)) && can(cidrhost(var.bastion_cidr, 0)) && try(tonumber(split("/", var.bastion_cidr)[1]) >= 8, false)
    error_message = "The bastion_cidr must be an IPv4 CIDR with a prefix length of at least /8, such as 203.0.113.10/32 (one address): ssh is never open to the world (0.0.0.0/0) or to a large part of it."
  }
}

variable "hosts" {
  description = "The location's hosts from the topology: roles (primary first) and addresses (primary first)."
  type = map(object({
    roles       = list(string)
    addresses   = list(string)
    flavor      = string
    image_group = string
  }))
  default = {}
}

variable "registry_port" {
  description = "The private docker registry's port."
  type        = number
  default     = 5000
}

variable "registry_push_port" {
  description = "The docker registry's push door (the build agents' only)."
  type        = number
  default     = 5001
}

variable "npm_cache_port" {
  description = "The npm cache's port (verdaccio)."
  type        = number
  default     = 4873
}

variable "pypi_cache_port" {
  description = "The PyPI cache's port (proxpi)."
  type        = number
  default     = 3141
}

variable "jenkins_port" {
  description = "The Jenkins master's port (its UI and the agents' connections)."
  type        = number
  default     = 8080
}
