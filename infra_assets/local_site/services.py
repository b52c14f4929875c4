"""The local site's services, in the order they start (and the reverse order they stop).

Each issue that adds a service to the local site adds it here.
"""

from __future__ import annotations

from infra_assets.local_site.site import LocalService


def services() -> list[LocalService]:
    from infra_assets.local_site.dagster import DagsterDaemonService
    from infra_assets.local_site.hosts import HostServices
    from infra_assets.local_site.registry import RegistryService
    from infra_assets.local_site.releases import ReleasesService
    from infra_assets.local_site.salt import SaltService

    # salt first: its `up` allocates the ports and writes the pillar; `down` runs in reverse, so
    # the Dagster daemon stops first (no new run), then the apps' containers, then the services
    # the states started (nginx, the registry, ...), then the minions and the master.
    return [
        SaltService(),
        RegistryService(),
        HostServices(),
        ReleasesService(),
        DagsterDaemonService(),
    ]
