# Catalyst Cloud: where the role images are built. No secret here (clouds.yaml + OS_PASSWORD).
# Check the names against the cloud before the first build:
#   openstack image list --public | grep -i debian;  openstack flavor list;  openstack network list
cloud               = "catalyst"
source_image_name   = "debian-12-x86_64"
flavor              = "c1.c1r2"
floating_ip_network = "public-net"
ssh_username        = "debian"
