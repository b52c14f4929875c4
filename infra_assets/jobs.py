"""The job across every part: `main`. Each part's own jobs are in its `definitions.py` or
`jobs.py`; CI and people run any of them with
`dagster job execute -m infra_assets.definitions -j <job>`."""

import dagster as dg

# The whole pipeline, on the site that the topology names (`make demo`: the lab).
# App images are built per commit (a partition each), by their own jobs (`build_<app>`) that
# git_push_sensor launches: a job cannot span several partitionings, so they stay out of `main`.
# Releases follow new images (registry_image_sensor) and people (`promote`, `rollback`): not `main`.
# Health and backups have their schedules and jobs (infra_assets/operations/): not `main` either.
main_job = dg.define_asset_job(
    "main",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.groups("app_images", "releases", "health", "backups"),
    description="Everything: the topology, then every part of the site it describes.",
)
