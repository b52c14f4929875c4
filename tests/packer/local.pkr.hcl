# A template of the tests' own: a real Packer build of a local source (the file builder), baked
# with the real packer/scripts/bake.sh running `salt-call --local` on this machine against the
# tiny state tree beside this file (not the real role states), with a manifest post-processor.

variable "manifest" {
  type = string
}

variable "out_dir" {
  type = string
}

variable "image_name" {
  type = string
}

variable "roles" {
  type = string
}

variable "salt_call" {
  type = string
}

variable "bake_script" {
  type = string
}

source "file" "image" {
  content = "an image of ${var.roles}"
  target  = "${var.out_dir}/image.txt"
}

build {
  name    = "local"
  sources = ["source.file.image"]

  provisioner "shell-local" {
    script = var.bake_script
    environment_vars = [
      "SALT_TREE=${path.root}/salt",
      "IMAGE_ROLES=${var.roles}",
      "IMAGE_GROUP=test",
      "SALT_CALL=${var.salt_call}",
      "BAKE_OUT=${var.out_dir}",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest
    strip_path = false
    custom_data = {
      image_name = var.image_name
      roles      = var.roles
    }
  }
}
