"""The topology part: the `topology` and `ip_plan` assets with their checks, and the `topology`
job. They exist whatever the file says: a broken topology's run lists its problems."""

import dagster as dg

from infra_assets.topology import assets

# Validate the topology and derive the address plan: what a pull request to topology.yaml runs.
topology_job = dg.define_asset_job(
    "topology",
    selection=dg.AssetSelection.groups("topology"),
    description="Validate topology.yaml and derive the address plan.",
)


def definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules([assets]),
        asset_checks=dg.load_asset_checks_from_modules([assets]),
        jobs=[topology_job],
    )
