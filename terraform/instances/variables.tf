# What the instances stack takes beside the location's settings (location.tf): the network
# stack's outputs and the role images (the user-data's own: user_data.tf). The TerraformResource writes
# them for each plan, from `terraform output` of the network stack, the image lookups
# (openstacksdk) and the address plan.

variable "network_id" {
  description = "The private network (the network stack's output)."
  type        = string
}

variable "subnet_id" {
  description = "The private subnet (the network stack's output)."
  type        = string
}

variable "security_group_ids" {
  description = "Security group name -> id (the network stack's output)."
  type        = map(string)
}

variable "images" {
  description = "Image group (support, web, ...) -> the image id to boot new servers from."
  type        = map(string)
}
