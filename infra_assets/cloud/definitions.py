"""The cloud part: role images, networks and instances (OpenStack's or the lab's), the `plan`,
`apply` and `images` jobs (which exist whatever the topology says) and their schedules."""

import dagster as dg

from infra_assets.cloud import images, instances, jobs, lab_instances, network
from infra_assets.topology.model import Topology


def definitions(topo: Topology | None) -> dg.Definitions:
    always = dg.Definitions(jobs=jobs.CLOUD_JOBS)
    if topo is None:
        return always
    parts = [module.definitions(topo) for module in (images, network, instances, lab_instances)]
    return dg.Definitions.merge(always, *parts, jobs.definitions(topo))
