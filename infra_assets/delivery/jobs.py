"""The push path's jobs: `deliver_<app>`, one run that builds a commit and releases it on
staging, started by the webhook endpoint or by git_push_sensor, the fallback when no webhook
did (sensors/git_push.py; wired in sensors/definitions.py).

A push reaches Dagster at once through the webhook endpoint (webhooks/: a git server's
post-receive hook, or a forge's webhook), which reads the branch head itself and launches
`deliver_<app>` for it with git_push_sensor's name and run key (`<app>:<sha>`): Dagster skips a
run key for the sensor that made it, so the sensor, polling every 30 s and asking for a head on
the tick after the one that first saw it, never starts the same commit again. Either way the
run is `app_image/<app>` at the commit (its partition), then `release/staging/<app>` of the image
that step recorded, unless the branch has moved on (the newer head's run releases that). Each
stage's seconds are in the release's metadata (`stages`).

`build_<app>`, also here, is a build alone: registry_image_sensor releases
what it pushes (releases.py), and never a digest a `deliver_<app>` run has released
or is releasing.
"""

import dagster as dg

from infra_assets.delivery.app_images import (
    asset_key,
    build_job_name,
    deliver_job_name,
)
from infra_assets.delivery.releases import release_key
from infra_assets.topology.model import Topology


def push_job_name(topo: Topology, app: str) -> str:
    """The job a push of `app` runs: `deliver_<app>`, or `build_<app>` where the topology has no
    staging web host to release on."""
    return deliver_job_name(app) if topo.hosts_with_role("web-staging") else build_job_name(app)


def definitions(topo: Topology) -> dg.Definitions:
    """Each app's `build_<app>` and (with a staging web host) `deliver_<app>` (git_push_sensor,
    which starts the job a push runs when no webhook did: sensors/git_push.py)."""
    if not topo.apps:
        return dg.Definitions()
    jobs = [
        dg.define_asset_job(
            build_job_name(name),
            selection=dg.AssetSelection.assets("topology", asset_key(name)),
            description=f"Build app {name!r} at one commit (the partition) and push its image,"
            " without releasing it (registry_image_sensor releases it on staging). A push runs"
            f" {push_job_name(topo, name)}.",
            tags={"coop/app": name},
        )
        for name in topo.apps
    ]
    if topo.hosts_with_role("web-staging"):
        jobs += [
            dg.define_asset_job(
                deliver_job_name(name),
                selection=dg.AssetSelection.assets(
                    "topology", asset_key(name), release_key("staging", name)
                ),
                description=f"Build app {name!r} at one commit (the partition) and release it on"
                " staging, in one run: what a push starts (the webhook endpoint, else"
                " git_push_sensor). The release is skipped when the commit is no longer the"
                " branch's head.",
                tags={"coop/app": name},
            )
            for name in topo.apps
        ]
    return dg.Definitions(jobs=jobs)
