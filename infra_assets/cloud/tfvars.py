"""The Terraform stacks' variables, derived from the topology (plain data, written to a tfvars
JSON file for each plan). The location's other settings (bastion, external network) are in
`terraform/locations/<location>.tfvars`.

Stacks, in apply order: `network` (network, subnet, router, security groups), then `instances`
(ports with the address plan's fixed addresses, servers from the role images).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra_assets.cloud.groups import CATALOGUE_FILE, group_of_host
from infra_assets.configuration.salt_keys import KeyStore
from infra_assets.topology.model import Topology, address_plan

STACKS = ("network", "instances")


def cloud_locations(topo: Topology) -> list[str]:
    """Locations whose hosts live on an OpenStack cloud (not the `lab`), in file order."""
    return [name for name, loc in topo.locations.items() if loc.site_kind == "cloud"]


def lab_locations(topo: Topology) -> list[str]:
    """Locations on `cloud: lab` (this machine as a cloud: `lab/`), in file order."""
    return [name for name, loc in topo.locations.items() if loc.is_lab]


def stack_hosts(topo: Topology, location: str, *, images_file=CATALOGUE_FILE) -> dict[str, dict]:
    """The location's hosts as the stacks take them: every role (primary first), every address
    (primary first, then service addresses), flavor ("" for the default), image group."""
    plan = address_plan(topo)
    hosts = {}
    for name, host in topo.hosts.items():
        if host.location != location:
            continue
        hosts[name] = {
            "roles": list(host.roles),
            "addresses": [a.address for a in plan.for_host(name)],
            "flavor": host.flavor or "",
            "image_group": group_of_host(topo, name, host, images_file),
        }
    return hosts


def network_vars(topo: Topology, location: str, *, images_file=CATALOGUE_FILE) -> dict[str, Any]:
    loc = topo.locations[location]
    return {
        "location": location,
        "location_number": loc.number,
        "cloud": loc.cloud,
        "hosts": stack_hosts(topo, location, images_file=images_file),
    }


def instances_vars(
    topo: Topology,
    location: str,
    *,
    network_outputs: Mapping[str, Any],
    images: Mapping[str, str],
    images_file=CATALOGUE_FILE,
) -> dict[str, Any]:
    """`network_outputs`: the network stack's `terraform output -json`; `images`: image group ->
    image id (the newest of each group, from openstacksdk)."""
    missing = [
        k for k in ("network_id", "subnet_id", "security_group_ids") if k not in network_outputs
    ]
    if missing:
        raise ValueError(
            f"the network stack of {location} has no output {', '.join(missing)}: apply"
            f" network/{location} first"
        )
    master = topo.salt_master()
    data = network_vars(topo, location, images_file=images_file)
    wanted = sorted({h["image_group"] for h in data["hosts"].values()})
    absent = [g for g in wanted if g not in images]
    if absent:
        raise ValueError(
            f"no image for group {', '.join(absent)} on cloud {data['cloud']}: materialise"
            f" {', '.join('images/' + g for g in absent)} first"
        )
    data.update(
        network_id=network_outputs["network_id"]["value"],
        subnet_id=network_outputs["subnet_id"]["value"],
        security_group_ids=network_outputs["security_group_ids"]["value"],
        images={g: images[g] for g in wanted},
        salt_master_address=address_plan(topo).primary(master).address,
        domain=topo.domain,
    )
    return data


def salt_key_vars(
    topo: Topology, location: str, store: KeyStore | None, *, private: bool
) -> dict[str, Any]:
    """The instances stack's salt key variables, from `minion_keys`' pairs: the master's
    fingerprint (minions pin it) and every declared host's public key (the master's server
    accepts them from its first boot); with `private`, the location's hosts' pairs and the
    master's (a plan made to be applied: the servers it creates get them in their user-data).
    A preview plan (`private=False`: pull requests, the nightly drift check) holds no secret."""
    master = topo.salt_master()
    if store is None or store.get("master") is None:
        if private:
            raise ValueError(
                "no salt key pairs: materialise `minion_keys` first (the apply job does), with"
                " $INFRA_SALT_KEYS_DIR set"
            )
        return {"salt_master_host": master}
    pairs = {host: store.get(host) for host in sorted(topo.hosts)}
    missing = [host for host, pair in pairs.items() if pair is None]
    if missing and private:
        raise ValueError(
            f"no salt key pair for {', '.join(missing)} in {store.folder}: materialise"
            " `minion_keys` first (the apply job does)"
        )
    master_pair = store.master()
    data: dict[str, Any] = {
        "salt_master_host": master,
        "salt_master_finger": master_pair.finger,
        "salt_accepted_keys": {h: p.public_pem for h, p in pairs.items() if p is not None},
    }
    if private:
        # the master's private key only in the plan of the location its server is in
        here = topo.hosts[master].location == location
        data["salt_master_key"] = {
            "pem": master_pair.private_pem if here else "",
            "pub": master_pair.public_pem,
        }
        data["salt_minion_keys"] = {
            host: {"pem": pair.private_pem, "pub": pair.public_pem}
            for host, pair in pairs.items()
            if topo.hosts[host].location == location
        }
    return data
