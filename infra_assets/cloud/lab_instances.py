"""The lab's part of the graph: `network/<location>`, `plan/instances/<location>` and
`instances/<location>` for locations on `cloud: lab` (this machine as a cloud).

They do for containers what the Terraform stacks do for servers (infra_assets/cloud/stacks.py):

- `network/<location>`: the lab's network namespace, its podman bridge for 10.N.0.0/16, the link
  the machine reaches it through, and the `unreachable` route that keeps 10.N.x off the wire.
- `plan/instances/<location>`: which containers to create and delete (a plan, recorded in the
  metadata, as `terraform plan` shows it). A host whose image is newer keeps its container: a
  new image is for new hosts, as `ignore_changes = [image_id]` makes it on the cloud; naming a
  host in `replace` rebuilds it on purpose. An unchanged lab plans nothing.
- `instances/<location>`: applies the plan (the destroy gate first: deleting a host's container
  needs `allow_destroy`), then waits until every container's systemd is up.

Each host is a container booted from its role group's image (`images/<group>`, Packer's
artifact), at its primary planned address, with what a cloud server gets at creation: the
user-data of terraform/instances (user_data.tf, evaluated by `terraform console`, offline, with
the values the apply job's plan gives it), run at first boot by the lab's stand-in for
cloud-init (lab/guest/). It carries the host's salt key pair from `minion_keys` (the master's
host also the master's pair and the minions' public keys as accepted). The master's host also
gets its own pillar for the masterless bootstrap of `salt.master`.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from infra_assets.cloud.groups import CATALOGUE_FILE, ImageGroupError, group_of_host
from infra_assets.cloud.tfvars import lab_locations, salt_key_vars
from infra_assets.configuration.pillar import host_pillar
from infra_assets.configuration.salt_keys import KeyStore
from infra_assets.topology.model import Topology
from infra_assets.topology.roles import role_catalogue
from infra_assets.topology.secrets import SecretsError, load_secrets, self_signed_certificate
from infra_assets.topology.sites import LabSite, SiteError, site_for
from resources.lab import HostSpec, LabError, LabNetwork, LabPlan, LabResource
from resources.lab_acme import LabAcmeError
from resources.lab_egress import LabEgressError
from resources.lab_git import LabGitError
from resources.paths import REPO_ROOT
from resources.terraform import TerraformError, TerraformResource

GUEST = REPO_ROOT / "lab" / "guest"
LAB_IMAGE = "localhost/coop-{group}:lab"
# This machine's CA bundle (the one the lab's image builds trust too: resources/packer.py).
MACHINE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class LabPlanConfig(dg.Config):
    replace: list[str] = Field(
        default=[],
        description="Hosts whose containers are rebuilt from the current image on purpose"
        " (like `terraform apply -replace`): their disks start over.",
    )


class LabApplyConfig(dg.Config):
    allow_destroy: list[str] = Field(
        default=[],
        description="Hosts whose containers this apply may delete or rebuild (the destroy gate).",
    )
    boot_timeout_s: float = Field(default=120.0, description="How long systemd may take to boot.")


def network_key(location: str) -> dg.AssetKey:
    return dg.AssetKey(["network", location])


def plan_key(location: str) -> dg.AssetKey:
    return dg.AssetKey(["plan", "instances", location])


def instances_key(location: str) -> dg.AssetKey:
    return dg.AssetKey(["instances", location])


def _lab_site(topology: Topology) -> LabSite:
    site = site_for(topology)
    if not isinstance(site, LabSite):
        raise dg.Failure(description="this topology's locations are not on `cloud: lab`")
    return site


def mac_of(address: str) -> str:
    """A fixed MAC for a planned address: 02:00 (locally administered) and its four octets."""
    return "02:00:" + ":".join(f"{int(o):02x}" for o in address.split("."))


def user_data(
    terraform: TerraformResource, site: LabSite, location: str, keys: KeyStore
) -> dict[str, str]:
    """Each of the location's hosts' first-boot user-data, as terraform/instances renders it
    for a cloud server (`user_data.tf`, with the variables the apply job's plan gives it): the
    host's key pair, the master's public key pinned, and on the master's host the master's pair
    and the minions' public keys as accepted."""
    topo = site.topo
    hosts = {h: {"roles": list(s.roles)} for h, s in topo.hosts.items() if s.location == location}
    variables = {
        "hosts": hosts,
        "location": location,
        "domain": topo.domain,
        "salt_master_address": site.reach(site.master_host(), "salt-master"),
        **salt_key_vars(topo, location, keys, private=True),
    }
    return terraform.user_data(stack="instances", variables=variables)


def host_files(
    site: LabSite, host: str, user_data_text: str, master_pillar: dict | None
) -> dict[str, tuple[bytes, int]]:
    """What is written into `host`'s container before its first boot: path -> (content, mode).
    The salt key pairs come in the user-data, as on a cloud."""
    files: dict[str, tuple[bytes, int]] = {
        "/var/lib/coop/user-data": (user_data_text.encode(), 0o600),
        "/usr/local/sbin/coop-first-boot": ((GUEST / "coop-first-boot").read_bytes(), 0o755),
        "/etc/systemd/system/coop-first-boot.service": (
            (GUEST / "coop-first-boot.service").read_bytes(),
            0o644,
        ),
    }
    if site.egress_proxy(host) and MACHINE_CA_BUNDLE.is_file():
        # A cache host reaches its registries through the lab's egress proxy, whose tunnels go
        # out through this machine's network, where HTTPS may be re-signed by a CA that only the
        # machine trusts: the caches (verdaccio's node, proxpi's requests) trust the machine's
        # bundle too. A server in a cloud needs none of this.
        files["/etc/coop-lab/machine-ca.pem"] = (MACHINE_CA_BUNDLE.read_bytes(), 0o644)
        for unit, variable in (("verdaccio", "NODE_EXTRA_CA_CERTS"),
                               ("proxpi", "REQUESTS_CA_BUNDLE")):  # fmt: skip
            files[f"/etc/systemd/system/{unit}.service.d/50-coop-lab-egress.conf"] = (
                b"# Written by the coop-infra lab (infra_assets/cloud/lab_instances.py)\n"
                + f"[Service]\nEnvironment={variable}=/etc/coop-lab/machine-ca.pem\n".encode(),
                0o644,
            )
    if master_pillar is not None:
        files["/etc/systemd/system/coop-master-bootstrap.service"] = (
            (GUEST / "coop-master-bootstrap.service").read_bytes(),
            0o644,
        )
        files["/var/lib/coop/bootstrap/pillar/top.sls"] = (
            b"base:\n  '*':\n    - bootstrap\n",
            0o600,
        )
        files["/var/lib/coop/bootstrap/pillar/bootstrap.sls"] = (
            json.dumps(master_pillar).encode(),
            0o600,
        )
    return files


ENABLE = {
    "coop-first-boot.service": "multi-user.target",
    "coop-master-bootstrap.service": "multi-user.target",
}


def host_specs(
    site: LabSite,
    location: str,
    *,
    images: dict[str, str],
    keys: KeyStore,
    terraform: TerraformResource,
    secrets: Any,
) -> list[HostSpec]:
    """The containers the location's hosts are, as the driver takes them."""
    topo, plan = site.topo, site.plan
    dns_hosts = list(topo.hosts_with_role("dns"))
    dns = plan.primary(dns_hosts[0]).address if dns_hosts else None
    master = site.master_host()
    catalogue = role_catalogue().roles
    texts = user_data(terraform, site, location, keys)
    specs = []
    for host, spec in topo.hosts.items():
        if spec.location != location:
            continue
        group = group_of_host(topo, host, spec, CATALOGUE_FILE)
        pillar = host_pillar(site, secrets, host) if host == master else None
        files = host_files(site, host, texts[host], pillar)
        enable = [u for u in ENABLE if f"/etc/systemd/system/{u}" in files]
        # Roles whose hosts run containers themselves (the catalogue's `privileged`: app
        # releases, image builds): podman inside needs a privileged container (mounts, cgroups,
        # its own network namespaces). The others get only NET_ADMIN, for `common.addresses`,
        # which adds the host's service addresses inside the guest.
        privileged = any(catalogue[r].privileged for r in spec.roles if r in catalogue)
        specs.append(
            HostSpec(
                name=f"lab{topo.locations[location].number}-{host}",
                host=host,
                image=images[group],
                address=plan.primary(host).address,
                mac=mac_of(plan.primary(host).address),
                dns=dns,
                privileged=privileged,
                files=files,
                enable_units={u: ENABLE[u] for u in enable},
                # The master serves the repo's salt/ (on a server: a checkout of this repo).
                binds=[(str(REPO_ROOT / "salt"), LabSite.STATE_TREE)] if host == master else [],
            )
        )
    return specs


def plan_table(plan: LabPlan) -> str:
    rows = ["| host | action | image |", "|---|---|---|"]
    for action in ("create", "replace", "delete", "keep"):
        for item in getattr(plan, action):
            rows.append(f"| {item.host} | {action} | {item.image} |")
    return "\n".join(rows)


def _start_acme(site: LabSite, number: int) -> dict[str, Any] | None:
    """Start lab `number`'s ACME server (pebble on its link) when the lab has web hosts there,
    asking the lab's DNS (dnsmasq, which serves the apps' domains) where a domain is. None when
    there is no web host on this network."""
    hosts = [h for h in site.topo.hosts if site.number_of(h) == number]
    if not any(r.startswith("web-") for h in hosts for r in site.topo.hosts[h].roles):
        return None
    dns_hosts = sorted(h for h in site.topo.hosts_with_role("dns") if site.number_of(h) == number)
    if not dns_hosts:
        raise LabAcmeError(
            f"lab {number}: no host of this location has the `dns` role, and the lab's ACME"
            " server asks the location's DNS where the apps' domains are: give one of its"
            " support hosts the `dns` role"
        )
    server = site.acme_server(number)
    server.write_key_pair(*self_signed_certificate([server.address]))
    dns = f"{site.reach(dns_hosts[0], 'dns')}:{site.port(dns_hosts[0], 'dns')}"
    # In the lab's namespace, whose only routes lead into the lab (resources/lab_acme.py).
    server.start(dns_server=dns, netns=LabNetwork(number).netns_path)
    return server.status()


def _start_git_daemon(site: LabSite, number: int) -> dict | None:
    """The read-only git daemon on the link, when the lab clones from this machine: the apps'
    repos that are paths here, and this repository for the dagster role's checkout."""
    daemon = site.serve_git(number, site.topo.source_file().parent)
    return daemon.status() if daemon else None


def _location_image_groups(topo: Topology, location: str) -> set[str]:
    """The role groups of the location's hosts (a host of no group is left out)."""
    groups = set()
    for host, spec in topo.hosts.items():
        if spec.location == location:
            try:
                groups.add(group_of_host(topo, host, spec, CATALOGUE_FILE))
            except ImageGroupError:
                pass
    return groups


def _up_network(
    context: dg.AssetExecutionContext,
    lab: LabResource,
    topo: Topology,
    location: str,
    number: int,
) -> dg.MaterializeResult:
    """`network/<location>`: the lab's network, its egress proxy, ACME server and git daemon."""
    site = _lab_site(topo)
    egress = site.egress(number)
    try:
        report = lab.up_network(number, log=context.log.info)
        egress.allow(site.egress_allow(number))
        egress.start()
        acme = _start_acme(site, number)
        git = _start_git_daemon(site, number)
    except (LabError, LabEgressError, LabAcmeError, LabGitError) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    made = report.get("made") or []
    context.log.info(f"lab network {location}: {', '.join(made) or 'unchanged'}")
    status = egress.status()
    context.log.info(f"egress proxy {status['url']}: {status['allow'] or 'nobody allowed'}")
    context.log.info(
        f"ACME server {acme['directory']}" if acme else "no ACME server: no web host here"
    )
    context.log.info(
        f"git daemon {git['url']}: {', '.join(git['repos'])}" if git else "no git daemon"
    )
    return dg.MaterializeResult(
        metadata={
            "number": number,
            "network": dg.MetadataValue.json(report),
            "egress": dg.MetadataValue.json(status),
            "acme": dg.MetadataValue.json(acme or {}),
            "git_daemon": dg.MetadataValue.json(git or {}),
        }
    )


def _plan_instances(
    context: dg.AssetExecutionContext,
    config: LabPlanConfig,
    topology: Topology,
    lab: LabResource,
    terraform: TerraformResource,
    location: str,
    number: int,
    image_keys: dict[str, dg.AssetKey],
) -> dg.MaterializeResult:
    """`plan/instances/<location>`: the lab's plan for the location's containers, saved."""
    site = _lab_site(topology)
    try:
        secrets = load_secrets(site.secrets_file(), topology)
        images = {g: lab.image_id(LAB_IMAGE.format(group=g)) for g in image_keys}
        missing = [g for g, i in images.items() if not i]
        if missing:
            raise LabError(
                f"no lab image for {', '.join(missing)}: materialise"
                f" {', '.join('images/' + g for g in missing)} first"
            )
        specs = host_specs(
            site,
            location,
            images=images,
            keys=KeyStore(site.keys_dir()),
            terraform=terraform,
            secrets=secrets,
        )
        plan = lab.plan(specs, number, replace=config.replace, log=context.log.info)
    except (LabError, SiteError, SecretsError, TerraformError, FileNotFoundError) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    plan_file = lab.save_plan(plan, site.root / "plans" / f"{location}.json")
    context.log.info(plan.summary())
    return dg.MaterializeResult(
        metadata={
            "summary": plan.summary(),
            "changes": plan.has_changes,
            "plan": dg.MetadataValue.md(plan_table(plan)),
            "plan_file": dg.MetadataValue.path(str(plan_file)),
        }
    )


def _apply_instances(
    context: dg.AssetExecutionContext,
    config: LabApplyConfig,
    topology: Topology,
    lab: LabResource,
    *,
    location: str,
    number: int,
) -> dg.MaterializeResult:
    """`instances/<location>`: the saved plan applied (the destroy gate first), booted."""
    site = _lab_site(topology)
    try:
        plan = lab.load_plan(site.root / "plans" / f"{location}.json")
        blocked = [i.host for i in [*plan.delete, *plan.replace]]
        blocked = [h for h in blocked if h not in config.allow_destroy]
        if blocked:
            raise LabError(
                f"the plan deletes or rebuilds {', '.join(blocked)}: name them in"
                " allow_destroy to let this apply do it (their disks are lost)"
            )
        applied = lab.apply(plan, boot_timeout_s=config.boot_timeout_s, log=context.log.info)
        hosts = lab.wait_booted(number, timeout_s=config.boot_timeout_s)
    except LabError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    rows = ["| host | address | image | running | systemd |", "|---|---|---|---|---|"]
    for h in hosts:
        rows.append(f"| {h.host} | {h.address} | {h.image_id[:19]} | {h.running} | {h.systemd} |")
    return dg.MaterializeResult(
        metadata={
            "applied": dg.MetadataValue.json(applied.as_dict()),
            "hosts": dg.MetadataValue.md("\n".join(rows)),
            "containers": len(hosts),
        }
    )


def _location_definitions(topo: Topology, location: str) -> dg.Definitions:
    number = topo.locations[location].number
    groups = _location_image_groups(topo, location)
    image_keys = {g: dg.AssetKey(["images", g]) for g in sorted(groups)}

    @dg.asset(
        key=network_key(location),
        group_name="network",
        kinds={"podman"},
        deps=["topology"],
        pool=f"location:{location}",
        description=f"The lab's network for {location}: a namespace of the project's own with a"
        f" podman bridge for 10.{number}.0.0/16, the link into it, the `unreachable` route"
        " that keeps the lab's addresses off the machine's network, and the lab's only way out:"
        " the egress proxy on the link, for the cache hosts' registries and the chat's clients"
        " alone. On the link too:"
        " the lab's ACME server (pebble), Let's Encrypt's stand-in for the web hosts, and the"
        " read-only git daemon (the apps' repos that are paths here, this repository).",
    )
    def network_asset(context: dg.AssetExecutionContext, lab: LabResource):
        return _up_network(context, lab, topo, location, number)

    @dg.asset(
        key=plan_key(location),
        group_name="instances",
        kinds={"podman"},
        deps=[network_key(location), "minion_keys", *image_keys.values()],
        pool=f"location:{location}",
        description=f"What `instances/{location}` would create and delete (the lab's plan).",
    )
    def plan_asset(
        context: dg.AssetExecutionContext,
        config: LabPlanConfig,
        topology: Topology,
        lab: LabResource,
        terraform: TerraformResource,
    ):
        return _plan_instances(
            context, config, topology, lab, terraform, location, number, image_keys
        )

    @dg.asset(
        key=instances_key(location),
        group_name="instances",
        kinds={"podman"},
        deps=[plan_key(location)],
        pool=f"location:{location}",
        description=f"The lab's containers for {location}, one per host, booted with systemd.",
    )
    def instances_asset(
        context: dg.AssetExecutionContext,
        config: LabApplyConfig,
        topology: Topology,
        lab: LabResource,
    ):
        return _apply_instances(context, config, topology, lab, location=location, number=number)

    return dg.Definitions(assets=[network_asset, plan_asset, instances_asset])


def definitions(topo: Topology) -> dg.Definitions:
    parts = [_location_definitions(topo, location) for location in lab_locations(topo)]
    return dg.Definitions.merge(*parts) if parts else dg.Definitions()


def instance_keys(topo: Topology) -> list[dg.AssetKey]:
    """`instances/<location>` of every lab location (what `minions` comes after)."""
    return [instances_key(location) for location in lab_locations(topo)]
