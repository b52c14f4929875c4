"""The operations part: health probes and backups, with their jobs and schedules."""

import dagster as dg

from infra_assets.operations import backups, health
from infra_assets.topology.model import Topology


def definitions(topo: Topology | None) -> dg.Definitions:
    if topo is None:
        return dg.Definitions()
    return dg.Definitions.merge(health.definitions(topo), backups.definitions(topo))
