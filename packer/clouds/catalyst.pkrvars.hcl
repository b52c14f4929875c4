# Catalyst Cloud: where the role images are built. No secret here (clouds.yaml + OS_PASSWORD).
# Check the names against the cloud before the first build:
#   openstack image list --public | grep -i debian;  openstack flavor list;  openstack network list
#
# The build instance joins nz-por-1's private network (terraform/network: coop-nz-por-1, found
# by its subnet, so no id is committed), takes a floating IP from public-net, and is in the
# security group coop-packer-build, which lets Packer in by ssh; the cloud's default group does
# not. Create that group once, open to the address Packer connects from (README, "Pointing it
# at a real cloud"):
#   openstack security group create coop-packer-build
#   openstack security group rule create --protocol tcp --dst-port 22 \
#     --remote-ip <the address Packer connects from>/32 coop-packer-build
cloud                   = "catalyst"
source_image_name       = "debian-12-x86_64"
flavor                  = "c1.c1r2"
floating_ip_network     = "public-net"
ssh_username            = "debian"
network_discovery_cidrs = ["10.100.0.0/16"]
security_groups         = ["coop-packer-build"]
