# nz-por-1 (Catalyst Cloud, Porirua): the location's settings that the topology does not hold.
# No secret here: credentials come from clouds.yaml and the environment.

# The only source of ssh: the co-op's bastion. Set this to its real address before the first
# apply; the documentation range below reaches nothing.
bastion_cidr = "203.0.113.10/32"

# The cloud's external network, for the router's gateway (`openstack network list --external`).
external_network = "public-net"

# Resolvers that DHCP hands out until the network's own DNS (the dns role) answers: the
# cloud's resolvers for the region. Empty: none are handed out.
dns_nameservers = []

default_flavor = "c1.c1r2"
key_pair       = ""
