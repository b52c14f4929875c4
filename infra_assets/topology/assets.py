"""The root of the graph: the topology file, and the address plan derived from it."""

import ipaddress

import dagster as dg

from infra_assets.topology.model import (
    AddressPlan,
    Topology,
    TopologyError,
    address_plan,
    read_topology,
)
from resources.topology import TopologyResource

GROUP = "topology"


# The op is named apart from the asset: the CI job is called `topology` too, and Dagster keeps
# op and job names in one namespace.
@dg.multi_asset(
    name="read_topology",
    outs={
        "topology": dg.AssetOut(
            group_name=GROUP,
            kinds={"yaml"},
            description="topology.yaml, read and validated: locations, address types, hosts"
            " and apps.",
        )
    },
)
def topology(context: dg.AssetExecutionContext, topology_file: TopologyResource) -> dg.Output:
    try:
        topo = read_topology(topology_file)
    except TopologyError as err:
        raise dg.Failure(
            description=err.render(),
            metadata={"problems": dg.MetadataValue.json(err.as_json())},
            allow_retries=False,
        ) from None
    source = topology_file.source()
    context.log.info(f"{source.path}: {len(topo.hosts)} hosts, {len(topo.apps)} apps")
    return dg.Output(
        topo,
        output_name="topology",
        data_version=dg.DataVersion(source.sha256[:16]),
        metadata={
            "file": dg.MetadataValue.path(str(source.path)),
            "git_commit": source.commit or "(not in git)",
            "uncommitted_changes": source.dirty,
            "locations": len(topo.locations),
            "types": len(topo.types),
            "hosts": len(topo.hosts),
            "apps": len(topo.apps),
            "hosts_table": dg.MetadataValue.md(_hosts_table(topo)),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"dns"},
    description="Every address 10.{location}.{type}.{instance} and DNS name, "
    "and the dnsmasq hosts file that the DNS role serves.",
)
def ip_plan(topology: Topology) -> dg.Output[AddressPlan]:
    plan = address_plan(topology)
    hosts_file = plan.dnsmasq_hosts()
    return dg.Output(
        plan,
        metadata={
            "addresses": len(plan.addresses),
            "plan": dg.MetadataValue.md(plan.markdown()),
            "dnsmasq_hosts": dg.MetadataValue.md(f"```\n{hosts_file}```"),
        },
    )


@dg.asset_check(
    asset=ip_plan,
    additional_ins={"topology": dg.AssetIn("topology")},
    blocking=True,
    description="No two hosts or services share an address, and each address lies in its "
    "location's 10.{location}.0.0/16.",
)
def ip_plan_has_no_collisions(ip_plan: AddressPlan, topology: Topology) -> dg.AssetCheckResult:
    return check_plan(ip_plan, topology)


def check_plan(plan: AddressPlan, topo: Topology) -> dg.AssetCheckResult:
    collisions = plan.collisions()
    outside = [
        f"{a.address} ({a.host}/{a.role})"
        for a in plan.addresses
        if ipaddress.IPv4Address(a.address)
        not in ipaddress.IPv4Network(f"10.{topo.locations[a.location].number}.0.0/16")
    ]
    lines = [f"- {ip}: {', '.join(owners)}" for ip, owners in collisions.items()]
    lines += [f"- outside its location's network: {o}" for o in outside]
    return dg.AssetCheckResult(
        passed=not collisions and not outside,
        severity=dg.AssetCheckSeverity.ERROR,
        description="\n".join(lines) or None,
        metadata={
            "collisions": len(collisions),
            "outside_location": len(outside),
            "addresses": len(plan.addresses),
        },
    )


def _hosts_table(topo: Topology) -> str:
    plan = address_plan(topo)
    rows = ["| host | location | roles | address | flavor |", "|---|---|---|---|---|"]
    for name, host in topo.hosts.items():
        primary = plan.primary(name).address
        rows.append(
            f"| {name} | {host.location} | {', '.join(host.roles)} | {primary} |"
            f" {host.flavor or ''} |"
        )
    return "\n".join(rows)
