"""The cloud part's jobs and schedules.

Jobs (CLOUD_JOBS, so they exist whatever the topology):
- `plan`: Terraform plans of every OpenStack location, no apply: pull requests, CI, the nightly
  drift check;
- `apply`: plan, gate, apply: network then instances of every OpenStack location;
- `images`: rebuild the role images.

Schedules: `images_weekly` (Monday 03:00 NZ) and `drift_nightly` (02:30 NZ, the plan job, whose
`no_drift` checks report drift); with the sensor `infra_main` (sensors/infra_repo.py, which
starts these jobs for a new commit of the infra repo), they start stopped: turn them on in the UI
(Automation) where the cloud credentials are set.
"""

import dagster as dg

from infra_assets.cloud.images import FORCE_TAG
from infra_assets.cloud.stacks import MODE_TAG, ensure_location_pools
from infra_assets.cloud.tfvars import cloud_locations
from infra_assets.topology.model import Topology, TopologyError, read_topology
from resources.topology import TopologyResource

_BASE = dg.AssetSelection.assets("topology", "ip_plan")

plan_job = dg.define_asset_job(
    "plan",
    selection=_BASE | dg.AssetSelection.key_prefixes(["plan"]),
    description="Plan the network and instances of every OpenStack location; apply nothing."
    " For pull requests, CI and the nightly drift check.",
    tags={MODE_TAG: "plan"},
)

apply_job = dg.define_asset_job(
    "apply",
    selection=_BASE
    | dg.AssetSelection.assets("minion_keys")
    | dg.AssetSelection.key_prefixes(["plan"], ["network"], ["instances"]),
    description="Plan, gate and apply the network and instances of every OpenStack location"
    " (one location at a time: pool location/<name>).",
    tags={MODE_TAG: "apply"},
)

images_job = dg.define_asset_job(
    "images",
    selection=_BASE | dg.AssetSelection.key_prefixes(["images"]),
    description="Build the role images with Packer and prune the old ones.",
)

CLOUD_JOBS = [plan_job, apply_job, images_job]


def _locations(topology_file: TopologyResource) -> list[str]:
    try:
        return cloud_locations(read_topology(topology_file))
    except TopologyError:
        return []


def schedules() -> list[dg.ScheduleDefinition]:
    """Built when the code location loads, not at import (a timezone is read from disk)."""

    @dg.schedule(
        name="drift_nightly",
        cron_schedule="30 2 * * *",
        execution_timezone="Pacific/Auckland",
        job_name="plan",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Every night: plan every OpenStack location; a non-empty plan when nothing was"
        " merged is drift, reported by the plans' no_drift checks.",
    )
    def drift_nightly(context: dg.ScheduleEvaluationContext, topology_file: TopologyResource):
        ensure_location_pools(context.instance, _locations(topology_file))
        return dg.RunRequest(tags={"coop/trigger": "drift_nightly"})

    @dg.schedule(
        name="images_weekly",
        cron_schedule="0 3 * * 1",
        execution_timezone="Pacific/Auckland",
        job_name="images",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Every Monday: rebuild the role images (security updates) and prune old ones.",
    )
    def images_weekly(context: dg.ScheduleEvaluationContext):
        # weekly: build even when states and template are unchanged (the base image's updates)
        return dg.RunRequest(tags={"coop/trigger": "images_weekly", FORCE_TAG: "true"})

    return [drift_nightly, images_weekly]


def definitions(topo: Topology) -> dg.Definitions:
    """The schedules, where there is a cloud to act on (the `infra_main` sensor:
    sensors/infra_repo.py)."""
    if not cloud_locations(topo):
        return dg.Definitions()
    return dg.Definitions(schedules=schedules())
