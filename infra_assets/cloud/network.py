"""`network/<location>`: each OpenStack location's network, subnet 10.N.0.0/16, router and
security groups, planned and applied by Terraform (terraform/network). Locations on the `local`
cloud are this machine: they have no network to make, and get no assets here."""

import dagster as dg

from infra_assets.cloud.stacks import stack_definitions
from infra_assets.cloud.tfvars import cloud_locations, network_vars
from infra_assets.topology.model import Topology


def _variables(location: str):
    def variables(context: dg.AssetExecutionContext, topology: Topology) -> dict:
        return network_vars(topology, location)

    return variables


def definitions(topo: Topology) -> dg.Definitions:
    parts = [
        stack_definitions(
            "network",
            location,
            variables=_variables(location),
            deps=[],
            description="the private network 10.N.0.0/16, its router and the security groups.",
        )
        for location in cloud_locations(topo)
    ]
    return dg.Definitions.merge(*parts) if parts else dg.Definitions()
