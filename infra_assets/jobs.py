"""Jobs: what CI and people run, `dagster job execute -m infra_assets.definitions -j <job>`."""

from __future__ import annotations

import dagster as dg

# Validate the topology and derive the address plan: what a pull request to topology.yaml runs.
topology_job = dg.define_asset_job(
    "topology",
    selection=dg.AssetSelection.groups("topology"),
    description="Validate topology.yaml and derive the address plan.",
)

# The whole pipeline, on the site that the topology names (`make demo`: the lab).
# App images are built per commit (a partition each), by their own jobs (`build_<app>`) that
# git_push_sensor launches: a job cannot span several partitionings, so they stay out of `main`.
# Releases follow new images (registry_image_sensor) and people (`promote`, `rollback`): not `main`.
# Health and backups have their schedules and jobs (infra_assets/health.py, backups.py): not
# `main` either.
main_job = dg.define_asset_job(
    "main",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.groups("app_images", "releases", "health", "backups"),
    description="Everything: the topology, then every part of the site it describes.",
)

# Configuration management, for CI: the topology, the salt pillar, the minions' keys, and every
# role's states (highstate/<role>). The dry run is `configure_dry_run` (infra_assets/highstate.py).
configure_job = dg.define_asset_job(
    "configure",
    selection=dg.AssetSelection.groups("topology", "salt"),
    description="Gate the salt minions' keys by the topology, write the pillar and apply every"
    " role's salt states.",
)

# The cloud part's jobs (plan, apply, images): infra_assets/cloud_jobs.py.
from infra_assets.cloud_jobs import CLOUD_JOBS  # noqa: E402

JOBS = [topology_job, main_job, configure_job, *CLOUD_JOBS]
