# A STAND-IN for packer/coop.pkr.hcl, for the images asset's tests: no OpenStack cloud can build
# an image here. It takes the same variables, and "builds" by registering an image in the FAKE
# OpenStack's Glance through openstacksdk, with the credentials the resource hands Packer in the
# environment (OS_CLIENT_CONFIG_FILE, OS_CLOUD, OS_PASSWORD), then writes the manifest.

variable "group" {
  type = string
}

variable "image_name" {
  type = string
}

variable "cloud" {
  type    = string
  default = ""
}

variable "salt_tree" {
  type = string
}

variable "git_commit" {
  type    = string
  default = ""
}

variable "states_sha256" {
  type    = string
  default = ""
}

variable "template_sha256" {
  type    = string
  default = ""
}

variable "manifest" {
  type = string
}

variable "python" {
  type = string
}

variable "out_dir" {
  type = string
}

source "file" "role" {
  content = "${var.group} image, states ${var.states_sha256}"
  target  = "${var.out_dir}/${var.image_name}.txt"
}

build {
  sources = ["source.file.role"]

  provisioner "shell-local" {
    environment_vars = [
      "IMAGE_NAME=${var.image_name}",
      "IMAGE_GROUP=${var.group}",
      "SALT_TREE=${var.salt_tree}",
      "STATES_SHA256=${var.states_sha256}",
      "TEMPLATE_SHA256=${var.template_sha256}",
    ]
    inline = [
      "test -d \"$SALT_TREE\"",
      "${var.python} ${path.root}/register_image.py",
    ]
  }

  post-processor "manifest" {
    output = var.manifest
    custom_data = {
      group      = var.group
      image_name = var.image_name
    }
  }
}
