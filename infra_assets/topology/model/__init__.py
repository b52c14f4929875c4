"""The topology model: plain Python (pydantic), importable and testable without Dagster.

from infra_assets.topology.model import load_topology, address_plan
topo = load_topology("topology.yaml")          # raises TopologyError listing every problem
plan = address_plan(topo)                      # every address and DNS name
"""

from infra_assets.topology.model.addresses import Address, AddressPlan, address_plan
from infra_assets.topology.model.errors import Problem, TopologyError
from infra_assets.topology.model.load import load_topology, parse_topology, read_topology
from infra_assets.topology.model.topology import (
    ENVIRONMENTS,
    UNTYPED_ROLES,
    Acme,
    App,
    Host,
    Location,
    Topology,
)

__all__ = [
    "ENVIRONMENTS",
    "UNTYPED_ROLES",
    "Address",
    "AddressPlan",
    "Acme",
    "App",
    "Host",
    "Location",
    "Problem",
    "Topology",
    "TopologyError",
    "address_plan",
    "load_topology",
    "parse_topology",
    "read_topology",
]
