"""The configuration part: the salt pillar, the minions' keys and their gate, each role's
states (`highstate/<role>`), and the `configure` job."""

import dagster as dg

from infra_assets.configuration import highstate, minions
from infra_assets.topology.model import Topology

# Configuration management, for CI: the topology, the salt pillar, the minions' keys, and every
# role's states (highstate/<role>). The dry run is `configure_dry_run` (highstate.py).
configure_job = dg.define_asset_job(
    "configure",
    selection=dg.AssetSelection.groups("topology", "salt"),
    description="Gate the salt minions' keys by the topology, write the pillar and apply every"
    " role's salt states.",
)


def definitions(topo: Topology | None) -> dg.Definitions:
    always = dg.Definitions(jobs=[configure_job])
    if topo is None:
        return always
    return dg.Definitions.merge(always, minions.definitions(topo), highstate.definitions(topo))
