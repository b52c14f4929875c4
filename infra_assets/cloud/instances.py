"""`instances/<location>`: each OpenStack location's servers, one per host of the topology, on
ports carrying the address plan's addresses, booted from the role images and pointed at the salt
master by cloud-init; planned and applied by Terraform (terraform/instances).

The plan reads the network stack's outputs (`terraform output`) and the newest image of each
role group (openstacksdk), and both the plan and the apply observe the servers as the cloud
reports them (an AssetObservation on `instances/<location>`: status and addresses per host).
"""

import dagster as dg

from infra_assets.cloud.groups import CATALOGUE_FILE, ImageGroupError, group_of_host, image_groups
from infra_assets.cloud.stacks import MODE_TAG, NotReady, apply_key, stack_definitions, tool_env
from infra_assets.cloud.tfvars import cloud_locations, instances_vars, salt_key_vars
from infra_assets.configuration.salt_keys import KeyStore
from infra_assets.topology.model import Topology, address_plan
from infra_assets.topology.sites import SiteError, site_for
from resources.openstack import OpenStackError, OpenStackResource, Server
from resources.terraform import TerraformError, TerraformResource


def _variables(location: str):
    def variables(context: dg.AssetExecutionContext, topology: Topology) -> dict:
        terraform: TerraformResource = context.resources.terraform
        openstack: OpenStackResource = context.resources.openstack
        cloud = topology.locations[location].cloud
        try:
            network = terraform.output(
                stack="network", location=location, env=tool_env(context, topology, location)
            )
        except TerraformError as err:
            raise dg.Failure(description=str(err), allow_retries=False) from None
        if not network:
            # A location added by a pull request: its instances can be planned only once its
            # network exists. The plan job still succeeds (CI on that pull request).
            raise NotReady(
                f"network not applied yet: instances are planned after network/{location} is"
                " applied"
            )
        groups = sorted(
            {
                group_of_host(topology, name, host)
                for name, host in topology.hosts.items()
                if host.location == location
            }
        )
        try:
            latest = openstack.latest_images(cloud=cloud, groups=groups)
        except OpenStackError as err:
            raise dg.Failure(description=str(err), allow_retries=False) from None
        for group, image in latest.items():
            context.log.info(f"{location}: image group {group}: {image.name} ({image.id})")
        observe(context, openstack, topology, location)
        data = instances_vars(
            topology,
            location,
            network_outputs=network,
            images={group: image.id for group, image in latest.items()},
        )
        return data | _salt_keys(context, topology, location)

    return variables


def _salt_keys(context: dg.AssetExecutionContext, topology: Topology, location: str) -> dict:
    """The key pairs for the servers' user-data, in a plan made to be applied only; a preview
    (the plan job) carries the public keys alone."""
    private = context.run.tags.get(MODE_TAG) != "plan"
    try:
        store = KeyStore(site_for(topology).keys_dir())
    except SiteError as err:
        if private:
            raise dg.Failure(description=str(err), allow_retries=False) from None
        store = None
    try:
        data = salt_key_vars(topology, location, store, private=private)
    except ValueError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    if private:
        context.log.info(
            f"{location}: the servers' user-data carries their salt key pairs (from {store.folder})"
        )
    return data


def _after_apply(location: str):
    def after(context: dg.AssetExecutionContext, topology: Topology, outputs: dict) -> None:
        observe(context, context.resources.openstack, topology, location)

    return after


def observe(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    openstack: OpenStackResource,
    topology: Topology,
    location: str,
) -> list[Server]:
    """Record the location's servers as the cloud reports them, on `instances/<location>`."""
    cloud = topology.locations[location].cloud
    hosts = [n for n, h in topology.hosts.items() if h.location == location]
    try:
        servers = openstack.servers(cloud=cloud, names=hosts)
    except OpenStackError as err:
        context.log.warning(f"{location}: could not observe the servers: {err}")
        return []
    report = server_report(topology, location, servers)
    context.log_event(
        dg.AssetObservation(
            asset_key=apply_key("instances", location),
            metadata={
                "servers": dg.MetadataValue.md(report["table"]),
                "active": report["active"],
                "hosts": len(hosts),
                "missing": dg.MetadataValue.json(report["missing"]),
                "mismatched": dg.MetadataValue.json(report["mismatched"]),
                "observed": dg.MetadataValue.json(report["observed"]),
            },
        )
    )
    return servers


def server_report(topology: Topology, location: str, servers: list[Server]) -> dict:
    """Each host of the location beside its server: status, addresses seen and planned."""
    plan = address_plan(topology)
    by_name = {s.name: s for s in servers}
    rows = ["| host | status | addresses | planned | matches |", "|---|---|---|---|---|"]
    missing, mismatched, observed = [], [], {}
    active = 0
    for name, host in topology.hosts.items():
        if host.location != location:
            continue
        planned = [a.address for a in plan.for_host(name)]
        server = by_name.get(name)
        if server is None:
            missing.append(name)
            rows.append(f"| {name} | (no server) | | {', '.join(planned)} | no |")
            continue
        seen = server.all_addresses
        matches = sorted(seen) == sorted(planned)
        active += server.status == "ACTIVE"
        if not matches:
            mismatched.append(name)
        observed[name] = {"status": server.status, "addresses": seen, "image": server.image_id}
        rows.append(
            f"| {name} | {server.status} | {', '.join(seen)} | {', '.join(planned)} |"
            f" {'yes' if matches else 'NO'} |"
        )
    return {
        "table": "\n".join(rows),
        "missing": missing,
        "mismatched": mismatched,
        "active": active,
        "observed": observed,
    }


def _servers_check(location: str):
    @dg.asset_check(
        asset=apply_key("instances", location),
        name="servers_match_the_plan",
        additional_ins={"topology": dg.AssetIn(dg.AssetKey("topology"))},
        description="Every host of the location has a server, ACTIVE, carrying exactly its"
        " planned addresses (as the cloud reports them).",
    )
    def servers_match_the_plan(
        instances: dict, topology: Topology, openstack: OpenStackResource
    ) -> dg.AssetCheckResult:
        cloud = topology.locations[location].cloud
        hosts = [n for n, h in topology.hosts.items() if h.location == location]
        try:
            servers = openstack.servers(cloud=cloud, names=hosts)
        except OpenStackError as err:
            return dg.AssetCheckResult(passed=False, description=str(err))
        report = server_report(topology, location, servers)
        inactive = [n for n, o in report["observed"].items() if o["status"] != "ACTIVE"]
        problems = [f"- no server for {n}" for n in report["missing"]]
        problems += [f"- {n}: addresses differ from the plan" for n in report["mismatched"]]
        problems += [f"- {n}: {report['observed'][n]['status']}" for n in inactive]
        return dg.AssetCheckResult(
            passed=not problems,
            description="\n".join(problems) or None,
            metadata={"servers": dg.MetadataValue.md(report["table"])},
        )

    return servers_match_the_plan


def definitions(topo: Topology) -> dg.Definitions:
    parts = []
    try:
        groups = image_groups(CATALOGUE_FILE)
    except ImageGroupError:
        groups = {}  # the plan names the problem when it runs
    for location in cloud_locations(topo):
        used = set()
        for name, host in topo.hosts.items():
            if host.location == location:
                try:
                    used.add(group_of_host(topo, name, host))
                except ImageGroupError:
                    pass
        image_deps = [dg.AssetKey(["images", g]) for g in groups if g in used]
        stack = stack_definitions(
            "instances",
            location,
            variables=_variables(location),
            deps=[apply_key("network", location), dg.AssetKey("minion_keys"), *image_deps],
            description="a server per host, on ports with its planned addresses.",
            after_apply=_after_apply(location),
        )
        parts.append(
            dg.Definitions.merge(stack, dg.Definitions(asset_checks=[_servers_check(location)]))
        )
    return dg.Definitions.merge(*parts) if parts else dg.Definitions()
