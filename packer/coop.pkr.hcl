# One role group's image (support, builder, web, postgres: the role catalogue, salt/roles.yaml,
# each role's `image`), with the group's salt
# states baked in by `salt-call --local` (scripts/bake.sh, salt from PyPI into /opt/salt pinned
# by salt-requirements.txt). Two sources, the same provisioners:
#
#   openstack.role  on OpenStack, from a Debian cloud image:
#     packer build -only=openstack.role -var group=web -var image_name=coop-web-20261130-0300 \
#       -var-file=clouds/catalyst.pkrvars.hcl coop.pkr.hcl        (run from this folder)
#   docker.lab      the lab (this machine as a cloud): Packer's docker builder driving podman
#                   (Debian's podman-docker shim first on PATH, the project's CONTAINERS_* config)
#                   from the lab base image, committed and tagged localhost/coop-<group>:lab;
#                   salt from a wheelhouse made on the machine (salt_wheelhouse).
#
# The PackerResource (resources/packer.py) runs it for the `images/<group>` assets, with the
# manifest post-processor's file telling it the new image's id. Credentials come from clouds.yaml
# (`cloud`) and the environment (OS_PASSWORD), never from this folder.

packer {
  required_version = ">= 1.6.6"
}

variable "group" {
  type        = string
  description = "The image's role group: a key of the role catalogue's images (salt/roles.yaml)."
}

variable "image_name" {
  type        = string
  description = "The new image's name, coop-<group>-<UTC timestamp> (the resource sets it)."
}

variable "cloud" {
  type        = string
  default     = ""
  description = "The clouds.yaml entry (empty: $OS_CLOUD)."
}

variable "region" {
  type    = string
  default = ""
}

variable "source_image_name" {
  type        = string
  description = "The Debian cloud image to start from (the cloud's own, e.g. debian-12-x86_64)."
}

variable "flavor" {
  type        = string
  description = "The build instance's flavor."
}

variable "networks" {
  type        = list(string)
  default     = []
  description = "Network ids for the build instance (empty: found by network_discovery_cidrs, else the project's default)."
}

variable "network_discovery_cidrs" {
  type        = list(string)
  default     = []
  description = "With no networks: the build instance joins the network whose subnet is in one of these (a location's 10.N.0.0/16)."
}

variable "floating_ip_network" {
  type        = string
  default     = ""
  description = "Where to take a floating IP from to reach the build instance by ssh."
}

variable "security_groups" {
  type        = list(string)
  default     = []
  description = "Security groups of the build instance (one that lets Packer in by ssh)."
}

variable "ssh_username" {
  type    = string
  default = "debian"
}

variable "salt_tree" {
  type        = string
  default     = ""
  description = "The salt state tree to bake (empty: the repo's salt/)."
}

variable "salt_version" {
  type    = string
  default = "3008.4"
}

variable "git_commit" {
  type        = string
  default     = ""
  description = "The commit of this repository the image is built from (image metadata)."
}

variable "states_sha256" {
  type        = string
  default     = ""
  description = "A hash of the salt tree's content (image metadata)."
}

variable "template_sha256" {
  type        = string
  default     = ""
  description = "A hash of this template, the bake script and the cloud's settings (image metadata)."
}

variable "roles" {
  type        = list(string)
  default     = []
  description = "The roles to bake (empty: the group's in the role catalogue; a lab bakes only those its hosts have)."
}

variable "lab_ca_bundle" {
  type        = string
  default     = ""
  description = "docker.lab: this machine's CA bundle, trusted by the bake only (HTTPS is intercepted here); never kept in the image."
}

variable "lab_base_image" {
  type        = string
  default     = "localhost/coop-lab-base:bookworm"
  description = "docker.lab: the image it starts from (resources/lab_images.py makes it; never pulled)."
}

variable "salt_wheelhouse" {
  type        = string
  default     = ""
  description = "docker.lab: a folder on this machine with a wheel for each line of salt-requirements.txt."
}

variable "lab_inputs_sha256" {
  type        = string
  default     = ""
  description = "docker.lab: a hash of what the image is made of (a label: unchanged inputs, no rebuild)."
}

variable "manifest" {
  type        = string
  default     = "manifest.json"
  description = "Where the manifest post-processor writes the artifacts (the resource reads it)."
}

locals {
  catalogue = yamldecode(file("${path.root}/../salt/roles.yaml"))
  roles = length(var.roles) > 0 ? var.roles : [
    for role, spec in local.catalogue.roles : role if spec.image == var.group
  ]
  salt_tree = var.salt_tree != "" ? var.salt_tree : "${path.root}/../salt"
  lab_tag   = "localhost/coop-${var.group}"
  # docker.lab's read-only mounts (host path, container path), those that are set
  lab_mounts = [
    for mount in [
      [var.salt_wheelhouse, "/run/coop-wheelhouse:ro"],
      [var.lab_ca_bundle, "/run/coop-host-ca.crt:ro"],
    ] : mount if mount[0] != ""
  ]
}

source "openstack" "role" {
  cloud                   = var.cloud
  region                  = var.region
  source_image_name       = var.source_image_name
  flavor                  = var.flavor
  networks                = var.networks
  network_discovery_cidrs = var.network_discovery_cidrs
  floating_ip_network     = var.floating_ip_network
  security_groups         = var.security_groups
  ssh_username            = var.ssh_username
  image_name              = var.image_name
  image_visibility        = "private"
  metadata = {
    coop_image_group     = var.group
    coop_roles           = join(",", local.roles)
    coop_git_commit      = var.git_commit
    coop_states_sha256   = var.states_sha256
    coop_template_sha256 = var.template_sha256
  }
}

# The lab: a container from the lab base, its /sbin/init not started while baking (the entrypoint
# is a shell), on the machine's network (no bridge, no firewall rules made for a build), with the
# wheelhouse and the machine's CA bundle mounted read-only (mounts are not committed); committed
# with systemd as its command, then tagged.
source "docker" "lab" {
  image       = var.lab_base_image
  pull        = false
  commit      = true
  run_command = ["-d", "-i", "-t", "--network=host", "--entrypoint=/bin/sh", "--", "{{.Image}}"]
  volumes     = { for mount in local.lab_mounts : mount[0] => mount[1] }
  changes = [
    "ENTRYPOINT []",
    "CMD [\"/sbin/init\"]",
    "LABEL org.coop-infra.group=${var.group}",
    "LABEL org.coop-infra.roles=${join(",", local.roles)}",
    "LABEL org.coop-infra.inputs=${var.lab_inputs_sha256}",
    "LABEL org.coop-infra.git_commit=${var.git_commit}",
  ]
}

build {
  sources = ["source.openstack.role", "source.docker.lab"]

  provisioner "file" {
    source      = "${local.salt_tree}/"
    destination = "/tmp/coop-salt"
  }

  provisioner "file" {
    source      = "${path.root}/salt-requirements.txt"
    destination = "/tmp/coop-salt-requirements.txt"
  }

  provisioner "file" {
    source      = "${path.root}/salt-build-requirements.txt"
    destination = "/tmp/coop-salt-build-requirements.txt"
  }

  provisioner "shell" {
    script = "${path.root}/scripts/bake.sh"
    environment_vars = [
      "SALT_TREE=/tmp/coop-salt",
      "IMAGE_ROLES=${join(",", local.roles)}",
      "IMAGE_GROUP=${var.group}",
      "SALT_VERSION=${var.salt_version}",
      "SALT_REQUIREMENTS=/tmp/coop-salt-requirements.txt",
      "SALT_BUILD_REQUIREMENTS=/tmp/coop-salt-build-requirements.txt",
      "SALT_WHEELHOUSE=${var.salt_wheelhouse != "" ? "/run/coop-wheelhouse" : ""}",
      "BAKE_CA_BUNDLE=${var.lab_ca_bundle != "" ? "/run/coop-host-ca.crt" : ""}",
      "IMAGE_CLEANUP=1",
    ]
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    override = {
      lab = {
        # the build container's shell is root's, and has no sudo
        execute_command = "chmod +x {{ .Path }}; env {{ .Vars }} {{ .Path }}"
      }
    }
  }

  post-processor "docker-tag" {
    only       = ["docker.lab"]
    repository = local.lab_tag
    tags       = ["lab"]
  }

  post-processor "manifest" {
    output     = var.manifest
    strip_path = true
    custom_data = {
      group      = var.group
      image_name = var.image_name
      roles      = join(",", local.roles)
    }
  }
}
