# Each server's first-boot user-data (cloud-init), from cloud-init.yaml.tftpl: its name, the
# salt master to follow (pinned by its key's fingerprint), its roles, and its salt key pair; the
# master's server also gets the master's pair and every declared minion's public key as
# accepted. Sensitive (the key pairs): Terraform shows it as such, and the OpenStack provider
# keeps only its SHA-1 in the state. The pairs are set only in a plan made to be applied (the
# apply job's); a preview plan (the plan job's) carries the public keys alone.
#
# This file needs only `hosts` and `location` (location.tf) besides its own variables: the lab
# evaluates it with `terraform console` (no init, offline) for its containers' user-data.

variable "salt_master_address" {
  description = "The salt master's primary address: every minion's `master`."
  type        = string
}

variable "salt_master_finger" {
  description = "The salt master's key fingerprint (minion_keys): minions pin it (master_finger)."
  type        = string
  default     = ""
}

variable "salt_master_host" {
  description = "The salt master's host name: its server gets the master's key pair."
  type        = string
  default     = ""
}

variable "salt_minion_keys" {
  description = "Host -> its salt key pair (minion_keys), PEM: handed to the server in its user-data. Set only in a plan made to be applied."
  type = map(object({
    pem = string
    pub = string
  }))
  default   = {}
  sensitive = true
}

variable "salt_accepted_keys" {
  description = "Every declared host -> its salt public key (PEM), accepted on the master's server from its first boot."
  type        = map(string)
  default     = {}
}

variable "salt_master_key" {
  description = "The salt master's key pair (minion_keys), PEM: its host gets both halves, every other host the public one (pinned). Set only in a plan made to be applied."
  type = object({
    pem = string
    pub = string
  })
  default   = null
  sensitive = true
}

variable "domain" {
  description = "The private DNS domain: hosts are <host>.<location>.<domain>."
  type        = string
  default     = "coop.internal"
}

locals {
  user_data = {
    for name, host in var.hosts : name => templatefile("${path.module}/cloud-init.yaml.tftpl", {
      hostname      = name
      fqdn          = "${name}.${var.location}.${var.domain}"
      master        = var.salt_master_address
      master_finger = var.salt_master_finger
      roles         = host.roles
      minion_key    = lookup(var.salt_minion_keys, name, null)
      master_key = var.salt_master_key == null ? null : {
        pub = var.salt_master_key.pub
        pem = name == var.salt_master_host ? var.salt_master_key.pem : ""
      }
      accepted = name == var.salt_master_host ? var.salt_accepted_keys : tomap({})
    })
  }
}
