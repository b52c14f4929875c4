"""The resources Dagster gets on each kind of site: the tools from the environment (a cloud, a
Dagster that runs on a host of the topology), or the lab's, reached through its link from this
machine."""

import os

import dagster as dg

from infra_assets.cloud.tfvars import lab_locations
from infra_assets.configuration.pillar import SALT_API_USER
from infra_assets.delivery.app_images import REGISTRY_ACCOUNT
from infra_assets.topology.model import Topology
from infra_assets.topology.sites import RUNS_ON_ENV, LabSite
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


def site_resources(topo: Topology | None) -> dict[str, dg.ConfigurableResource]:
    """The resources for `topo`'s site (None: a broken topology gets the environment's)."""
    chosen = resources()
    # A lab is reached through its link, from this machine; a Dagster that runs on a host of the
    # topology (the dagster role sets $INFRA_RUNS_ON) is inside it and takes its settings from
    # the environment, as on a cloud.
    if topo is not None and lab_locations(topo):
        if os.environ.get(RUNS_ON_ENV):
            # The lab's containers are this machine's to make: no podman there.
            chosen["lab"] = LabResource(podman_env={})
        else:
            chosen.update(lab_resources(LabSite(topo)))
    return chosen
