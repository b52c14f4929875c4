"""The sensors, wired to the jobs they start: the one place that says which sensor runs which job.

    git_push_sensor        a new head of an app's branch -> `deliver_<app>` (else `build_<app>`);
                           the fallback for a push whose webhook never came (git_push.py)
    registry_image_sensor  a new image at an app's branch tag -> `release_staging_<app>`;
                           woken by the registry's notifications (registry_images.py)
    infra_main             a new commit of the infra repo -> `plan`, `apply`, `images`, where
                           there is a cloud (infra_repo.py)
    notifications          failed runs, releases and checks -> the co-op's chat (notifications.py)

`infra_assets/definitions.py` asks for these with the jobs the parts defined, by name, so that a
sensor and the code location share one definition of each job.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from infra_assets.cloud.tfvars import cloud_locations
from infra_assets.delivery.app_images import build_job_name, deliver_job_name, partitions_def_name
from infra_assets.delivery.jobs import push_job_name
from infra_assets.delivery.releases import release_op_name, staging_job_name
from infra_assets.topology.model import Topology
from sensors import git_push, infra_repo, notifications, registry_images

# git_push_sensor is the fallback now that pushes call the webhook endpoint: it catches a push
# whose hook could not reach Dagster (Dagster down, the hook not installed).
FALLBACK_POLL_S = 30
# registry_image_sensor's fallback poll: the registry's notifications wake it
# (webhooks/registry.py).
REGISTRY_POLL_S = 30

# The parts' jobs by name (`define_asset_job`'s, resolved when the code location loads).
Jobs = Mapping[str, Any]


def definitions(topo: Topology | None, jobs: Jobs) -> dg.Definitions:
    """Every sensor for `topo` (None: the topology is broken, only the notices run), each given
    the job definitions it starts from `jobs` (the parts' jobs by name)."""
    sensors = list(notifications.SENSORS)
    if topo is not None and topo.apps:
        sensors += [_git_push(topo, jobs), _registry_images(topo, jobs)]
    if topo is not None and cloud_locations(topo):
        sensors.append(infra_repo.infra_main_sensor)
    return dg.Definitions(sensors=sensors)


def _git_push(topo: Topology, jobs: Jobs) -> dg.SensorDefinition:
    targets = {
        name: git_push.AppTarget(push_job_name(topo, name), partitions_def_name(name))
        for name in topo.apps
    }
    names = [build_job_name(app) for app in topo.apps]
    names += [deliver_job_name(app) for app in topo.apps if deliver_job_name(app) in jobs]
    return git_push.build_git_push_sensor(
        apps=topo.apps,
        targets=targets,
        jobs=[jobs[name] for name in names],
        minimum_interval_seconds=FALLBACK_POLL_S,
    )


def _registry_images(topo: Topology, jobs: Jobs) -> dg.SensorDefinition:
    def run_config(image: registry_images.NewImage) -> dict:
        config = {"digest": image.digest, "sha": image.sha or ""}
        return {"ops": {release_op_name("staging", image.app): {"config": config}}}

    job_for_app = {name: staging_job_name(name) for name in topo.apps}
    return registry_images.build_registry_image_sensor(
        apps=topo.apps,
        job_for_app=job_for_app,
        jobs=[jobs[name] for name in job_for_app.values()],
        run_config_for=run_config,
        deliver_job_for_app={name: deliver_job_name(name) for name in topo.apps},
        minimum_interval_seconds=REGISTRY_POLL_S,
    )
