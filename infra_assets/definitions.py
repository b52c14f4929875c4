"""The Dagster code location: assembles assets, checks, jobs, sensors and resources.

Nothing is defined here, and importing this module reads nothing: the definitions are built
when Dagster loads the code location (`@dg.definitions`), from the topology it works on
($INFRA_TOPOLOGY, else topology.yaml). Parts of the graph that exist once per location, role or
app (`network/<location>`, `release/staging/<app>`) are built from that topology by their
module's `definitions(topo)`. A broken topology still loads the `topology` asset and jobs, whose
run then fails with the file's problems listed; the other parts appear once it is fixed.
"""

import os
import warnings

import dagster as dg

from infra_assets import (
    app_images,
    backups,
    cloud_jobs,
    delivery,
    health,
    highstate,
    images,
    instances,
    lab_instances,
    minions,
    network,
    releases,
    topology,
)
from infra_assets.app_images import REGISTRY_ACCOUNT
from infra_assets.cloud.stacks import lab_locations
from infra_assets.jobs import JOBS
from infra_assets.model import Topology, TopologyError, load_topology
from infra_assets.paths import default_topology
from infra_assets.pillar import SALT_API_USER
from infra_assets.sites import RUNS_ON_ENV, LabSite
from resources.git import GitResource
from resources.infra_repo import InfraRepoResource
from resources.jenkins import JenkinsResource
from resources.lab import LabNetwork, LabResource
from resources.openstack import OpenStackResource
from resources.packer import PackerResource
from resources.podman import PodmanResource
from resources.registry import RegistryResource
from resources.salt import SaltResource
from resources.terraform import TerraformResource
from resources.topology import TopologyResource
from sensors import notifications

# Data versions on outputs (`topology` hashes its file) are beta in Dagster 1.13; we rely on them.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

# Modules with a `definitions(topo: Topology) -> dg.Definitions` for their part of the graph.
TOPOLOGY_PARTS: list = [
    images,
    network,
    instances,
    lab_instances,
    cloud_jobs,
    minions,
    highstate,
    app_images,
    releases,
    delivery,
    health,
    backups,
]


def resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "topology_file": TopologyResource(),
        # Cloud credentials come from the environment when used (OS_PASSWORD, PGPASSWORD,
        # TF_PG_CONN_STR): README, "Pointing it at a real cloud".
        "packer": PackerResource(),
        "terraform": TerraformResource(),
        "openstack": OpenStackResource(),
        "infra_repo": InfraRepoResource(),
        # App delivery (app_images.py): the registry and Jenkins from the environment
        # (INFRA_REGISTRY_*, INFRA_JENKINS_*; see README); the lab's: lab_resources below.
        "git": GitResource(),
        "podman": PodmanResource(),
        "registry": RegistryResource.from_env(),
        "jenkins": JenkinsResource.from_env(),
        # Configuration management (minions.py, highstate.py): salt-api when INFRA_SALT_API_URL
        # (and _USER, _PASSWORD, _CA_FILE) are set, else the master beside Dagster
        # (README, "Configuration management").
        "salt": SaltResource.from_env(),
    }


def lab_resources(site: LabSite) -> dict[str, dg.ConfigurableResource]:
    """The lab's container driver, on the project's podman (where Packer builds the images), and
    its salt master through salt-api, and its registry (the push account, the registry's own
    certificate), both reached only through the lab's link."""
    lab: dict[str, dg.ConfigurableResource] = {
        "lab": LabResource(podman_env=PodmanResource().env()),
        "salt": SaltResource(
            api_url=site.salt_api_url(),
            api_user=SALT_API_USER,
            api_password_file=str(site.salt_api_password_file()),
            api_ca_file=str(site.salt_api_ca_file()),
            api_route_device=LabNetwork(site.master_number()).machine_link,
        ),
    }
    registries = sorted(site.topo.hosts_with_role("docker-registry"))
    if registries:
        host = registries[0]
        lab["registry"] = RegistryResource(
            # the push door: Dagster pushes the project's base image for the agents
            url=f"https://{site.reach(host, 'docker-registry')}:{site.port(host, 'registry-push')}",
            username=REGISTRY_ACCOUNT,
            password_file=str(site.registry_password_file()),
            ca_file=str(site.registry_ca_file()),
            route_device=LabNetwork(site.number_of(host)).machine_link,
        )
    return lab


def build_definitions(
    topo: Topology | None, resource_overrides: dict[str, object] | None = None
) -> dg.Definitions:
    """The whole code location for `topo` (None: the topology is broken; its asset says why).
    `resource_overrides` replace resources by key (tests: a stand-in or a fake's client)."""
    site_resources = resources()
    # A lab is reached through its link, from this machine; a Dagster that runs on a host of the
    # topology (the dagster role sets $INFRA_RUNS_ON) is inside it and takes its settings from
    # the environment, as on a cloud.
    if topo is not None and lab_locations(topo):
        if os.environ.get(RUNS_ON_ENV):
            # The lab's containers are this machine's to make: no podman there.
            site_resources["lab"] = LabResource(podman_env={})
        else:
            site_resources.update(lab_resources(LabSite(topo)))
    base = dg.Definitions(
        assets=dg.load_assets_from_modules([topology]),
        asset_checks=dg.load_asset_checks_from_modules([topology]),
        jobs=JOBS,
        # Notices to the co-op's chat: failed runs, releases, checks (sensors/notifications.py).
        sensors=notifications.SENSORS,
        resources={**site_resources, **(resource_overrides or {})},
        # Steps run one after another in the run's process: a step in a subprocess of its own
        # costs 2-3 s of imports, and most of ours wait on a tool (salt, terraform), not the CPU.
        executor=dg.in_process_executor,
    )
    parts = [part.definitions(topo) for part in TOPOLOGY_PARTS] if topo is not None else []
    return dg.Definitions.merge(base, *parts)


@dg.definitions
def defs() -> dg.Definitions:
    try:
        topo = load_topology(default_topology())
    except TopologyError:
        topo = None
    return build_definitions(topo)
