"""The delivery part: app images per commit, releases on staging and production, and the jobs a
push, a promotion and a rollback run."""

import dagster as dg

from infra_assets.delivery import app_images, jobs, releases
from infra_assets.topology.model import Topology


def definitions(topo: Topology | None) -> dg.Definitions:
    if topo is None:
        return dg.Definitions()
    parts = [module.definitions(topo) for module in (app_images, releases, jobs)]
    return dg.Definitions.merge(*parts)
