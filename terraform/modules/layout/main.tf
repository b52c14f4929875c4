# The location's layout as data, with no provider: its address range, its security groups and
# their rules, and each host's port (fixed addresses, security groups). The network and
# instances stacks turn it into OpenStack resources; the tests evaluate it with a real Terraform
# (tests/cloud/test_terraform_config.py), so the rules below are checked as Terraform reads them.

locals {
  cidr    = "10.${var.location_number}.0.0/16"
  private = local.cidr

  # Every security group and its ingress rules. `remote` is a CIDR. Nothing is open to the
  # world but 80/443 on web hosts; ssh only from the bastion; the ports the role catalogue
  # guards (salt/roles.yaml `only_from`) only from the hosts it names (their primary
  # addresses, /32; Dagster runs on the salt master's host, whose own traffic no group sees);
  # the rest only from the private network.
  security_groups = {
    base = {
      description = "Every host: ssh from the bastion only, ICMP from the private network"
      rules = [
        { protocol = "tcp", port_min = 22, port_max = 22, remote = var.bastion_cidr },
        { protocol = "icmp", port_min = 0, port_max = 0, remote = local.private },
      ]
    }
    salt-master = {
      description = "The salt master: publish and return ports, from every host of the location"
      rules = [
        for remote in local.every_host : { protocol = "tcp", port_min = 4505, port_max = 4506, remote = remote }
      ]
    }
    docker-registry = {
      description = "The private docker registry: its read-only door from the web hosts and build agents, its push door from the build agents only"
      rules = concat(
        [for remote in local.pullers : { protocol = "tcp", port_min = var.registry_port, port_max = var.registry_port, remote = remote }],
        [for remote in local.agents_and_dagster : { protocol = "tcp", port_min = var.registry_push_port, port_max = var.registry_push_port, remote = remote }],
      )
    }
    npm-cache = {
      description = "The npm cache, from the build agents"
      rules = [
        for remote in local.with_role["jenkins-agent"] : { protocol = "tcp", port_min = var.npm_cache_port, port_max = var.npm_cache_port, remote = remote }
      ]
    }
    pypi-cache = {
      description = "The PyPI cache, from the build agents"
      rules = [
        for remote in local.with_role["jenkins-agent"] : { protocol = "tcp", port_min = var.pypi_cache_port, port_max = var.pypi_cache_port, remote = remote }
      ]
    }
    dns = {
      description = "DNS for the network, from the private network"
      rules = [
        { protocol = "udp", port_min = 53, port_max = 53, remote = local.private },
        { protocol = "tcp", port_min = 53, port_max = 53, remote = local.private },
      ]
    }
    jenkins-master = {
      description = "The Jenkins master's web UI and agent connections, from the build agents"
      rules = [
        for remote in local.agents_and_dagster : { protocol = "tcp", port_min = var.jenkins_port, port_max = var.jenkins_port, remote = remote }
      ]
    }
    web = {
      description = "Web hosts: HTTP and HTTPS from anywhere"
      rules = [
        { protocol = "tcp", port_min = 80, port_max = 80, remote = "0.0.0.0/0" },
        { protocol = "tcp", port_min = 443, port_max = 443, remote = "0.0.0.0/0" },
      ]
    }
    postgres-staging = {
      description = "PostgreSQL of staging, from the staging web hosts"
      rules = [
        for remote in local.with_role["web-staging"] : { protocol = "tcp", port_min = 5432, port_max = 5432, remote = remote }
      ]
    }
    postgres-production = {
      description = "PostgreSQL of production, from the production web hosts and Dagster's hosts (its instance's database)"
      rules = [
        for remote in sort(distinct(concat(local.with_role["web-production"], local.with_role["dagster"]))) : { protocol = "tcp", port_min = 5432, port_max = 5432, remote = remote }
      ]
    }
    dagster = {
      description = "Dagster's UI (nginx, TLS and a login) from the co-op's hosts (a chat-ops bot's web host); people reach it through the bastion"
      rules = [
        for remote in local.every_host : { protocol = "tcp", port_min = 443, port_max = 443, remote = remote }
      ]
    }
  }

  # Each host's primary address as a /32, and those of the hosts of each role a guarded port
  # is opened to (the catalogue's `only_from`).
  primary    = { for name, host in var.hosts : name => "${host.addresses[0]}/32" }
  every_host = sort(values(local.primary))
  with_role = {
    for role in ["jenkins-agent", "web-staging", "web-production", "salt-master", "dagster"] : role => sort([
      for name, host in var.hosts : local.primary[name] if contains(host.roles, role)
    ])
  }
  # `dagster` in the catalogue: Dagster runs on the salt master's host (README, "Pointing it at
  # a real cloud"); its traffic to a service on that same host crosses no security group
  agents_and_dagster = sort(distinct(concat(local.with_role["jenkins-agent"], local.with_role["salt-master"])))
  # The registry's read-only door: the web hosts pull releases; the agents and Dagster read.
  pullers = sort(distinct(concat(local.with_role["web-staging"], local.with_role["web-production"], local.agents_and_dagster)))

  # The security groups each role brings (every host also has `base`).
  role_security_groups = {
    salt-master         = ["salt-master"]
    docker-registry     = ["docker-registry"]
    npm-cache           = ["npm-cache"]
    pypi-cache          = ["pypi-cache"]
    dns                 = ["dns"]
    jenkins-master      = ["jenkins-master"]
    web-staging         = ["web"]
    web-production      = ["web"]
    postgres-staging    = ["postgres-staging"]
    postgres-production = ["postgres-production"]
    dagster             = ["dagster"]
  }

  # One entry per rule, keyed by what it lets in ("<group>/<protocol>/<ports>/<remote>"), for
  # for_each: a host added or removed adds or removes its own rules and leaves the others.
  security_rules = merge([
    for group, spec in local.security_groups : {
      for rule in spec.rules : "${group}/${rule.protocol}/${rule.port_min}-${rule.port_max}/${rule.remote}" => merge(rule, { group = group })
    }
  ]...)

  # Hosts reached from the internet (the web group: 80/443 from anywhere) get a floating IP
  # from the location's external network; no other host has a public address.
  public_groups = ["web"]
  public_hosts = toset([
    for name, port in local.ports : name if length(setintersection(port.security_groups, local.public_groups)) > 0
  ])

  ports = {
    for name, host in var.hosts : name => {
      fixed_ips = host.addresses
      security_groups = distinct(concat(["base"], flatten([
        for role in host.roles : lookup(local.role_security_groups, role, [])
      ])))
    }
  }
}
